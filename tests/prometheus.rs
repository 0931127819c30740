//! Stackline's metrics as Prometheus itself reads them: `promtool check metrics` on a
//! busy instance's /metrics, and a real Prometheus server evaluating the shipped
//! alerting rules against an agent whose eBPF program cannot load.

use stackline_testkit as common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use stackline::otlp::synth::request;

fn have(tool: &str, test: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        stackline::testing::skip(
            test,
            &format!("{tool} is not installed (Debian package prometheus; .ci/run installs it)"),
        );
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    missing = "prometheus",
    ignore = "needs prometheus and promtool (Debian prometheus)"
)]
async fn promtool_finds_nothing_to_say_about_the_metrics() {
    if !have("promtool", "promtool check metrics") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Many components, so that most metrics exist: receivers, processors, every exporter
    // kind, a persistent queue, a failing backend.
    // Refuses connections for as long as the test runs.
    let down = ReservedPort::new();
    let s = Stackline::start(
        dir.path(),
        &format!(
            r#"
receivers: {{ otlp: {{ protocols: {{ grpc: {{ endpoint: "{{OTLP}}" }}, http: {{ endpoint: "{{HTTP}}" }} }} }} }}
processors: {{ batch: {{ timeout: 100ms }}, symbolizer: {{}} }}
exporters:
  file: {{ path: "{{DIR}}/out.pb", flush_interval: 100ms }}
  pprof: {{ directory: "{{DIR}}/pprof" }}
  flamegraph: {{ directory: "{{DIR}}/svg" }}
  otlp/down: {{ endpoint: "127.0.0.1:{down}", tls: {{ insecure: true }},
               retry_on_failure: {{ initial_interval: 50ms, max_elapsed_time: 200ms }},
               sending_queue: {{ storage: {{ directory: "{{DIR}}/queue" }} }} }}
  otlphttp/down: {{ endpoint: "http://127.0.0.1:{down}", retry_on_failure: {{ enabled: false }} }}
  debug: {{}}
service:
  pipelines: {{ profiles: {{ receivers: [otlp], processors: [symbolizer, batch],
                exporters: [file, pprof, flamegraph, otlp/down, otlphttp/down, debug] }} }}
  telemetry: {{ metrics: {{ address: "{{METRICS}}" }} }}
"#,
            down = down.addr().port()
        ),
    );
    let mut c = client(s.endpoint()).await;
    for i in 0..5 {
        c.export(request("svc", i * 10, 10, 4)).await.unwrap();
    }
    // A refused request, so refusal counters exist too.
    let mut bad = request("bad", 0, 3, 2);
    bad.resource_profiles[0].scope_profiles[0].profiles[0].samples[0].stack_index = 999;
    let _ = c.export(bad).await;
    assert!(
        eventually(Duration::from_secs(20), async || {
            s.metric(
                "otelcol_exporter_send_failed_profile_samples_total",
                &[("exporter", "otlp/down")],
            )
            .await
                > 0.0
        })
        .await,
        "{}",
        s.logs()
    );
    let (_, text) = s.get("/metrics").await;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}"
    );
    // Every family shown has its help text, and every name in names.rs that appears is described.
    let families = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
    let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
    assert!(families >= 20, "only {families} metric families:\n{text}");
    assert_eq!(families, helps);
    for (name, _, help) in stackline::telemetry::names::ALL {
        assert!(!help.trim().is_empty(), "{name} has no help text");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    any(missing = "root", missing = "prometheus"),
    ignore = "needs root, prometheus and promtool (Debian prometheus)"
)]
async fn a_real_prometheus_fires_the_load_alert_for_an_agent_whose_program_is_rejected() {
    if !bpf_available("load alert in Prometheus") || !have("prometheus", "load alert in Prometheus")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let invalid = root.join("ebpf/prebuilt/stackline-invalid.bpf.o");
    let agent = Stackline::start(
        dir.path(),
        &format!(
            r#"
receivers:
  otlp: {{ protocols: {{ grpc: {{ endpoint: "{{OTLP}}" }} }} }}
  ebpf_profiler: {{ object_path: "{}", load_retry: {{ initial_interval: 1s, max_interval: 5s }} }}
exporters: {{ debug: {{}} }}
service:
  pipelines: {{ profiles: {{ receivers: [ebpf_profiler, otlp], exporters: [debug] }} }}
  telemetry: {{ metrics: {{ address: "{{METRICS}}" }} }}
"#,
            invalid.display()
        ),
    );
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            r#"
global: {{ scrape_interval: 1s, evaluation_interval: 1s }}
rule_files: ["{}"]
scrape_configs:
  - job_name: stackline-agent
    static_configs: [{{ targets: ["{}"] }}]
"#,
            root.join("deploy/prometheus/stackline-rules.yaml")
                .display(),
            agent.metrics
        ),
    )
    .unwrap();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = prom.id();
    let _prom = Kill(&mut prom);
    // Prometheus was given port 0: ask the kernel which port it listens on.
    let port = eventually(Duration::from_secs(30), async || {
        !listening_ports(pid).is_empty()
    })
    .await
    .then(|| listening_ports(pid)[0])
    .expect("prometheus did not start listening");
    let http = reqwest::Client::new();
    let mut last = String::new();
    let firing = eventually(Duration::from_secs(90), async || {
        let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/api/v1/alerts"))
            .send()
            .await
        else {
            return false;
        };
        last = r.text().await.unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&last).unwrap_or_default();
        v["data"]["alerts"].as_array().is_some_and(|a| {
            a.iter().any(|x| {
                x["labels"]["alertname"] == "StacklineEbpfProgramLoadFailed"
                    && x["state"] == "firing"
                    && x["labels"]["program"] == "stackline_sample"
                    && x["labels"]["reason"] == "verifier_rejected"
            })
        })
    })
    .await;
    assert!(
        firing,
        "the alert did not fire; last /api/v1/alerts: {last}\nprometheus log:\n{}",
        std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
    );
    // The receiver is unhealthy meanwhile, which the health gauge shows too.
    assert_eq!(
        agent
            .metric(
                "stackline_component_healthy",
                &[("component", "receiver/ebpf_profiler")]
            )
            .await,
        0.0
    );
}
