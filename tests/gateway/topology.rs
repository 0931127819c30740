//! One receiver feeding two pipelines, and connection lifetimes (GOAWAY, grace).

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_feeds_two_pipelines_and_an_exporter_serves_both() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Stackline::start(
        dir.path(),
        r#"
receivers:
  otlp: { protocols: { grpc: { endpoint: "{OTLP}" } } }
processors:
  batch: { timeout: 50ms }
exporters:
  file/shared: { path: "{DIR}/shared.jsonl", flush_interval: 50ms }
  file/only_b: { path: "{DIR}/b.jsonl", flush_interval: 50ms }
  debug: { verbosity: detailed, top_stacks: 3 }
service:
  pipelines:
    profiles/a: { receivers: [otlp], processors: [batch], exporters: [file/shared] }
    profiles/b: { receivers: [otlp], exporters: [file/shared, file/only_b, debug] }
  telemetry: { metrics: { address: "{METRICS}" } }
"#,
    );
    let acked = send(s.endpoint(), 0, 300, 30, 1).await;
    let shared = dir.path().join("shared.jsonl");
    let only_b = dir.path().join("b.jsonl");
    assert!(
        eventually(Duration::from_secs(20), async || {
            read_json_lines(&shared)
                .iter()
                .map(sample_count)
                .sum::<u64>()
                == 600
                && read_json_lines(&only_b)
                    .iter()
                    .map(sample_count)
                    .sum::<u64>()
                    == 300
        })
        .await
    );
    // No batch processor in pipeline b: requests pass through as the client sent them.
    assert_exactly_once("file/only_b", &read_json_lines(&only_b), &acked, false);
    let mut counts = BTreeMap::new();
    for (seq, _, _) in read_json_lines(&shared).iter().flat_map(decode_samples) {
        *counts.entry(seq).or_insert(0) += 1;
    }
    assert!(counts.values().all(|&n| n == 2) && counts.len() == 300);
    s.sigterm();
    assert!(s.wait(Duration::from_secs(20)).success());
    let logs = s.logs();
    assert!(
        logs.contains("app::module"),
        "debug exporter printed no stacks:\n{logs}"
    );
}

/// Opens a raw HTTP/2 connection to `endpoint`; with `in_flight`, starts an Export whose
/// body never ends. Returns when the server closed the connection, and how long after the
/// connect that was.
async fn connection_lifetime(endpoint: &str, in_flight: bool) -> Duration {
    let t0 = std::time::Instant::now();
    let tcp = tokio::net::TcpStream::connect(endpoint.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut _stream = None;
    if in_flight {
        let req = http::Request::post(format!(
            "{endpoint}/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
        h2 = h2.ready().await.unwrap();
        let (_response, send) = h2.send_request(req, false).unwrap();
        _stream = Some(send);
    }
    // Ends (Ok or Err) once the server has closed the TCP connection.
    let _ = driver.await;
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connection_age_sends_goaway_and_the_grace_bounds_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let backend_port = ReservedPort::new();
    let backend_addr = backend_port.addr().to_string();
    let backend = Backend::default();
    let _stop = backend.serve(backend_port).await;
    let cfg = gateway_config(&backend_addr, "").replace(
        "max_recv_msg_size_mib: 4",
        "max_recv_msg_size_mib: 4, keepalive: { server_parameters: { max_connection_age: 1s, max_connection_age_grace: 6s } }",
    );
    let s = Stackline::start(dir.path(), &cfg);
    let endpoint = s.endpoint();
    // Idle at its age: GOAWAY, and the connection closes at once, long before the grace
    // is over (tonic's own grace handling kept it to age + grace, then dropped it).
    let (idle, busy) = tokio::join!(
        connection_lifetime(&endpoint, false),
        connection_lifetime(&endpoint, true)
    );
    assert!(
        idle < Duration::from_secs(5),
        "idle connection lived {idle:?}"
    );
    // A request still open at the age keeps the connection for the grace, not longer.
    assert!(
        busy >= Duration::from_secs(7) && busy < Duration::from_secs(20),
        "a connection with a request in flight lived {busy:?}"
    );
    // New connections are served meanwhile and after.
    let mut c = client(endpoint).await;
    c.export(request("svc", 0, 10, POOL)).await.unwrap();
}
