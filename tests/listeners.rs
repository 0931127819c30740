//! The receivers' listeners hold up against clients that hold connections open, stall
//! or send more than the receiver can hold: each bound is a setting, and each is tried
//! here with a real client.

use stackline_testkit as common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;

fn gateway(grpc_extra: &str, receiver_extra: &str) -> String {
    format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "{{OTLP}}" {grpc_extra} }}
      http: {{ endpoint: "{{HTTP}}", read_timeout: 1s }}
    {receiver_extra}
exporters: {{ debug: {{}} }}
service:
  pipelines: {{ profiles: {{ receivers: [otlp], exporters: [debug] }} }}
  telemetry: {{ metrics: {{ address: "{{METRICS}}" }} }}
  shutdown_timeout: 5s
"#
    )
}

async fn refused(s: &Stackline, reason: &str) -> f64 {
    s.metric(
        "stackline_http_connections_refused_total",
        &[("listener", "otlp/grpc"), ("reason", reason)],
    )
    .await
}

/// Waits until the server closes `c` (a read returns 0 or an error); how long that took.
fn closed_after(mut c: std::net::TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    c.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 64];
    loop {
        match c.read(&mut b) {
            Ok(0) => return Some(t.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return None,
            Err(_) => return Some(t.elapsed()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connections_past_max_connections_are_closed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Stackline::start(dir.path(), &gateway(", max_connections: 2", ""));
    let req = || stackline::otlp::synth::request("svc", 0, 5, 3);
    let mut a = client(s.endpoint()).await;
    let mut b = client(s.endpoint()).await;
    a.export(req()).await.unwrap();
    b.export(req()).await.unwrap();
    // A third connection is closed on accept: the client cannot get a request through.
    let third = async {
        let mut c =
            stackline::otlp::collector::profiles_service_client::ProfilesServiceClient::connect(
                s.endpoint(),
            )
            .await?;
        c.export(req())
            .await
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error>)?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(10), third)
            .await
            .is_ok_and(|r| r.is_err()),
        "a third connection got through"
    );
    assert!(refused(&s, "too_many_connections").await >= 1.0);
    // Once one closes, a new one is served.
    drop(a);
    let ok = eventually(Duration::from_secs(10), async || {
        match stackline::otlp::collector::profiles_service_client::ProfilesServiceClient::connect(
            s.endpoint(),
        )
        .await
        {
            Ok(mut c) => c.export(req()).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(ok, "a slot freed by a closed connection was not reused");
    b.export(req()).await.unwrap();
    s.sigterm();
    assert!(s.wait(Duration::from_secs(10)).success(), "{}", s.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_that_connects_and_stalls_is_cut_off_at_the_handshake_timeout() {
    // Plaintext: a connection that sends nothing.
    let dir = tempfile::tempdir().unwrap();
    let s = Stackline::start(
        dir.path(),
        &gateway(", handshake_timeout: 1s, max_connections: 4", ""),
    );
    let silent: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(s.otlp).unwrap())
        .collect();
    for c in silent {
        let t = closed_after(c, Duration::from_secs(10)).expect("a silent connection stayed open");
        assert!(t < Duration::from_secs(5), "closed only after {t:?}");
    }
    assert!(refused(&s, "silent").await >= 4.0);
    // The four slots they held are free again.
    client(s.endpoint())
        .await
        .export(stackline::otlp::synth::request("svc", 0, 5, 3))
        .await
        .unwrap();

    // TLS: a connection that never finishes the handshake.
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let tls = format!(
        r#", handshake_timeout: 1s, tls: {{ cert_file: "{}", key_file: "{}" }}"#,
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let s = Stackline::start(dir.path(), &gateway(&tls, ""));
    let mut c = std::net::TcpStream::connect(s.otlp).unwrap();
    // The start of a ClientHello, and then nothing.
    c.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    let t = closed_after(c, Duration::from_secs(10)).expect("a stalled handshake stayed open");
    assert!(t < Duration::from_secs(5), "closed only after {t:?}");
    assert!(refused(&s, "tls_handshake").await >= 1.0);
}

/// The receiver's budget of requests in flight (`max_in_flight_mib`): while it is spent,
/// a request is refused at once for a retry; one larger than the whole budget (within
/// the limits) takes all of it and runs alone rather than never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_in_flight_budget_are_refused_for_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    // A slow backend and no sending queue: a request stays in flight until the backend
    // answers, 3 s after it arrives.
    let backend = Backend::default();
    *backend.delay.lock().unwrap() = Duration::from_secs(3);
    let port = ReservedPort::new();
    let cfg = format!(
        r#"
receivers:
  otlp:
    protocols: {{ grpc: {{ endpoint: "{{OTLP}}" }} }}
    max_in_flight_mib: 1
exporters:
  otlp: {{ endpoint: "{}", tls: {{ insecure: true }}, timeout: 10s, sending_queue: {{ enabled: false }} }}
service:
  pipelines: {{ profiles: {{ receivers: [otlp], exporters: [otlp] }} }}
  telemetry: {{ metrics: {{ address: "{{METRICS}}" }} }}
  shutdown_timeout: 5s
"#,
        port.addr()
    );
    let _stop = backend.serve(port).await;
    let mut s = Stackline::start(dir.path(), &cfg);
    // About 2 MiB once decoded: more than the whole budget, so it takes all of it.
    let big = stackline::otlp::synth::request("svc", 0, 20_000, 4);
    let mut c = client(s.endpoint()).await;
    let first = tokio::spawn(async move { c.export(big).await });
    let at_backend = eventually(Duration::from_secs(30), async || {
        backend.calls.load(std::sync::atomic::Ordering::SeqCst) >= 1
    })
    .await;
    assert!(at_backend, "the large request never reached the backend");
    // Meanwhile the budget is spent: a small request is refused at once.
    let mut c = client(s.endpoint()).await;
    let small = |i: u64| stackline::otlp::synth::request("svc", 100_000 + i * 100, 100, 4);
    let e = c.export(small(0)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_in_flight_mib"), "{e:?}");
    first
        .await
        .unwrap()
        .expect("a request larger than the budget runs once it has all of it");
    // Then the budget is back: a small one fits.
    c.export(small(1)).await.unwrap();
    assert!(
        s.metric(
            "otelcol_receiver_refused_profile_samples_total",
            &[("reason", "over_budget")]
        )
        .await
            >= 100.0
    );
    s.sigterm();
    assert!(s.wait(Duration::from_secs(10)).success(), "{}", s.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_body_that_trickles_in_is_answered_408_at_the_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let s = Stackline::start(dir.path(), &gateway("", ""));
    let mut c = std::net::TcpStream::connect(s.http).unwrap();
    write!(
        c,
        "POST /v1development/profiles HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 1000\r\n\r\n"
    )
    .unwrap();
    c.write_all(&[0u8; 10]).unwrap();
    let t = Instant::now();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = vec![0u8; 256];
    let n = c.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

/// Connections held open and idle, up to the listener's cap (64), once HTTP/1.1 with
/// keep-alive and once HTTP/2, plus as many that connect and say nothing: a liveness
/// probe on a new connection is still answered at once (the connection idle the longest
/// is closed to make room), and a pull request in flight on the pprof endpoint is not
/// the one closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_lock_out_health_probes_or_cut_a_request_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"
receivers:
  otlp: { protocols: { grpc: { endpoint: "{OTLP}" } } }
exporters:
  pprof: { directory: "", endpoint: "127.0.0.1:0" }
service:
  pipelines: { profiles: { receivers: [otlp], exporters: [pprof] } }
  telemetry: { metrics: { address: "{METRICS}" } }
  shutdown_timeout: 5s
"#;
    let s = Stackline::start(dir.path(), cfg);
    let metrics = s.listener("service.telemetry.metrics.address");
    let pprof = s.listener("exporters.pprof.endpoint");

    // A pull in flight for 3 s.
    let pull = tokio::spawn(async move {
        reqwest::get(format!("http://{pprof}/debug/pprof/profile?seconds=3"))
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Held until the end of the test.
    let (mut tcp, mut h2s) = (Vec::new(), Vec::new());
    for target in [metrics, pprof] {
        for i in 0..64 {
            // HTTP/1.1 keep-alive after one request, HTTP/2 after one request, or silent.
            let mut c = std::net::TcpStream::connect(target).unwrap();
            match i % 3 {
                0 => {
                    c.write_all(b"GET /debug/pprof/symbol HTTP/1.1\r\nhost: x\r\n\r\n")
                        .unwrap();
                    tcp.push(c);
                }
                1 => {
                    let h2 = reqwest::Client::builder()
                        .http2_prior_knowledge()
                        .build()
                        .unwrap();
                    let _ = h2
                        .get(format!("http://{target}/debug/pprof/symbol"))
                        .send()
                        .await;
                    h2s.push(h2);
                    tcp.push(c);
                }
                _ => tcp.push(c),
            }
        }
    }
    for _ in 0..5 {
        let t = Instant::now();
        let r = reqwest::Client::new()
            .get(format!("http://{metrics}/health/live"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("the liveness probe got no answer");
        assert_eq!(r.status().as_u16(), 200);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the probe took {:?}",
            t.elapsed()
        );
    }
    assert_eq!(
        pull.await.unwrap().expect("the pull in flight was cut"),
        200,
        "the pull in flight was cut"
    );
    let evicted = s
        .metric(
            "stackline_http_connections_refused_total",
            &[("listener", "telemetry"), ("reason", "idle_evicted")],
        )
        .await;
    assert!(evicted >= 1.0, "no idle connection was closed to make room");
    drop((tcp, h2s));
}

/// A client in the middle of connecting (silent, or mid-TLS handshake) when the process
/// is told to stop does not hold the stop up for the handshake time (10 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_does_not_delay_the_stop() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"
receivers:
  otlp: { protocols: { http: { endpoint: "{HTTP}", read_header_timeout: 10s } } }
exporters: { debug: {} }
service:
  pipelines: { profiles: { receivers: [otlp], exporters: [debug] } }
  telemetry: { metrics: { address: "{METRICS}" } }
  shutdown_timeout: 20s
"#;
    let mut s = Stackline::start(dir.path(), cfg);
    let _silent: Vec<_> = [s.http, s.metrics]
        .iter()
        .map(|a| std::net::TcpStream::connect(a).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    s.sigterm();
    assert!(s.wait(Duration::from_secs(30)).success(), "{}", s.logs());
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "stopped {took:?} after SIGTERM with silent connections open"
    );
}
