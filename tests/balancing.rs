//! `endpoint: dns:///NAME:PORT` spreads an agent's requests over every gateway the name
//! resolves to, as a Kubernetes headless Service does: several real gateway processes on
//! 127.0.0.x behind one name in /etc/hosts (the system resolver's own source).

use stackline_testkit as common;

use std::time::Duration;

use common::*;
use stackline::otlp::synth::request;

const NAME: &str = "stackline-balancing-test.invalid";

/// Adds `ip NAME` lines to /etc/hosts, and removes exactly those lines when dropped.
struct Hosts {
    lines: Vec<String>,
}

impl Hosts {
    fn add(&mut self, ip: &str) {
        let line = format!("{ip} {NAME}");
        let mut text = std::fs::read_to_string("/etc/hosts").unwrap();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&line);
        text.push('\n');
        std::fs::write("/etc/hosts", text).unwrap();
        self.lines.push(line);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if let Ok(text) = std::fs::read_to_string("/etc/hosts") {
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| !self.lines.iter().any(|x| x == l))
                .collect();
            let _ = std::fs::write("/etc/hosts", kept.join("\n") + "\n");
        }
    }
}

fn gateway(dir: &std::path::Path, ip: &str, port: u16) -> Stackline {
    Stackline::start(
        dir,
        &format!(
            r#"
receivers:
  otlp: {{ protocols: {{ grpc: {{ endpoint: "{{OTLP}}" }} }} }}
  otlp/lb: {{ protocols: {{ grpc: {{ endpoint: "{ip}:{port}" }} }} }}
exporters:
  file: {{ path: "{{DIR}}/out.jsonl", format: json, flush_interval: 100ms }}
service:
  pipelines: {{ profiles: {{ receivers: [otlp, otlp/lb], exporters: [file] }} }}
  telemetry: {{ metrics: {{ address: "{{METRICS}}" }} }}
"#
        ),
    )
}

async fn received(g: &Stackline) -> f64 {
    g.metric(
        "otelcol_receiver_accepted_profile_samples_total",
        &[("receiver", "otlp/lb")],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(missing = "root", ignore = "needs root")]
async fn requests_are_spread_over_every_gateway_a_dns_name_resolves_to() {
    if !stackline::testing::root_or_skip("dns:/// balancing", "the test adds a name to /etc/hosts")
    {
        return;
    }
    let mut hosts = Hosts { lines: Vec::new() };
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let ips = ["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"];
    // The first gateway takes any free port; the others listen on the same port of
    // their own addresses, which nothing else binds.
    let first = gateway(dirs[0].path(), ips[0], 0);
    let port = first
        .listener("receivers.otlp/lb.protocols.grpc.endpoint")
        .port();
    let mut gws = vec![first];
    gws.extend((1..3).map(|i| gateway(dirs[i].path(), ips[i], port)));
    for ip in &ips[..3] {
        hosts.add(ip);
    }
    let adir = tempfile::tempdir().unwrap();
    let agent = Stackline::start(
        adir.path(),
        &format!(
            r#"
receivers: {{ otlp: {{ protocols: {{ grpc: {{ endpoint: "{{OTLP}}" }} }} }} }}
exporters:
  otlp:
    endpoint: dns:///{NAME}:{port}
    tls: {{ insecure: true }}
    resolve_interval: 1s
    retry_on_failure: {{ initial_interval: 50ms, max_interval: 200ms }}
service:
  pipelines: {{ profiles: {{ receivers: [otlp], exporters: [otlp] }} }}
  telemetry: {{ metrics: {{ address: "{{METRICS}}" }} }}
"#
        ),
    );
    let mut c = client(agent.endpoint()).await;
    let sent = async |c: &mut _, from: u64, n: u64| {
        for i in from..from + n {
            let c: &mut stackline::otlp::collector::profiles_service_client::ProfilesServiceClient<
                _,
            > = c;
            c.export(request("agent", i * 10, 10, 4)).await.unwrap();
        }
    };

    // Three gateways: each gets a third.
    sent(&mut c, 0, 30).await;
    let total = async |gws: &[Stackline]| {
        let mut t = 0.0;
        for g in gws {
            t += received(g).await;
        }
        t
    };
    assert!(
        eventually(Duration::from_secs(20), async || total(&gws).await == 300.0).await,
        "{}",
        agent.logs()
    );
    let mut shares = Vec::new();
    for g in &gws {
        shares.push(received(g).await);
    }
    println!("samples per gateway, 3 up: {shares:?}");
    for s in &shares {
        assert!(*s >= 60.0, "uneven spread: {shares:?}");
    }
    assert_eq!(
        agent
            .metric("stackline_exporter_endpoints", &[("state", "healthy")])
            .await,
        3.0
    );

    // One gateway dies: the others take everything, nothing is lost.
    let before_kill = shares[1];
    gws[1].sigkill();
    sent(&mut c, 30, 30).await;
    assert!(
        eventually(Duration::from_secs(30), async || {
            received(&gws[0]).await + received(&gws[2]).await + before_kill == 600.0
        })
        .await,
        "{}",
        agent.logs()
    );
    assert_eq!(
        agent
            .metric("stackline_exporter_endpoints", &[("state", "down")])
            .await,
        1.0
    );

    // A new gateway appears under the name: it is found by the next lookup and gets a share.
    gws.push(gateway(dirs[3].path(), ips[3], port));
    hosts.add(ips[3]);
    assert!(
        eventually(Duration::from_secs(10), async || {
            agent
                .metric("stackline_exporter_endpoints", &[("state", "healthy")])
                .await
                + agent
                    .metric("stackline_exporter_endpoints", &[("state", "down")])
                    .await
                == 4.0
        })
        .await
    );
    sent(&mut c, 60, 30).await;
    assert!(
        eventually(Duration::from_secs(20), async || received(&gws[3]).await
            >= 50.0)
        .await,
        "the new gateway got {} samples",
        received(&gws[3]).await
    );

    agent.sigterm();
    let mut agent = agent;
    assert!(agent.wait(Duration::from_secs(30)).success());
    let s = &agent.exporter_summaries()["exporter/otlp"];
    assert_eq!(s["accepted"], 900);
    assert_eq!(s["sent"], 900, "{s:?}");
}
