//! Every exporter accounts for every sample when its backend fails abruptly; liveness stays up while readiness fails.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exporter_accounts_for_every_sample_after_an_abrupt_backend_failure() {
    let dir = tempfile::tempdir().unwrap();
    let backend_port = ReservedPort::new();
    let backend_addr = backend_port.addr().to_string();
    let backend = Backend::default();
    // Slow answers keep requests in flight when the backend goes away.
    *backend.delay.lock().unwrap() = Duration::from_millis(50);
    let stop = backend.serve(backend_port).await;
    let config = format!(
        r#"
receivers:
  otlp: {{ protocols: {{ grpc: {{ endpoint: "{{OTLP}}" }} }} }}
processors:
  batch: {{ send_batch_size: 200, timeout: 50ms }}
exporters:
  otlp/backend:
    endpoint: {backend_addr}
    tls: {{ insecure: true }}
    timeout: 1s
    retry_on_failure: {{ initial_interval: 100ms, max_interval: 200ms, max_elapsed_time: 60s }}
    sending_queue: {{ num_consumers: 2, queue_size: 20 }}
  file: {{ path: "{{DIR}}/out/profiles.binpb", format: proto }}
  pprof: {{ directory: "{{DIR}}/out/pprof", max_files: 0 }}
  flamegraph: {{ directory: "{{DIR}}/out/flame", max_files: 0 }}
  debug: {{}}
service:
  pipelines:
    profiles: {{ receivers: [otlp], processors: [batch], exporters: [otlp/backend, file, pprof, flamegraph, debug] }}
  telemetry: {{ metrics: {{ address: "{{METRICS}}" }} }}
  shutdown_timeout: 2s
"#
    );
    let mut s = Stackline::start(dir.path(), &config);
    let first = send_all(s.endpoint(), 0, 3_000, 50).await;
    // The backend fails every call, then disappears mid-stream.
    backend.fail_next.store(usize::MAX / 2, Ordering::SeqCst);
    let second = send_all(s.endpoint(), 3_000, 3_000, 50).await;
    drop(stop);
    let third = send_all(s.endpoint(), 6_000, 3_000, 50).await;
    // OK means every exporter has the data safe: while the backend fails, clients are
    // told to retry when its queue is full, but every exporter still got the data.
    let acked = (first.len() + second.len() + third.len()) as f64;
    assert!(acked >= 3_000.0, "acked {acked}");
    assert_eq!(
        s.metric("otelcol_receiver_accepted_profile_samples_total", &[])
            .await,
        acked
    );
    let accepted = 9_000;
    s.sigterm();
    assert!(s.wait(Duration::from_secs(30)).success(), "{}", s.logs());

    let sums = s.exporter_summaries();
    for name in [
        "exporter/otlp/backend",
        "exporter/file",
        "exporter/pprof",
        "exporter/flamegraph",
        "exporter/debug",
    ] {
        let f = sums
            .get(name)
            .unwrap_or_else(|| panic!("no summary for {name}:\n{}", s.logs()));
        eprintln!("{name}: {f:?}");
        assert_accounted(name, f);
        // The batch processor drained everything to every exporter before they ended.
        assert_eq!(f["accepted"], accepted, "{name}: {f:?}");
    }
    let otlp = &sums["exporter/otlp/backend"];
    assert_eq!(
        otlp["sent"],
        backend.samples().len() as i64,
        "sent must be what the backend stored"
    );
    assert!(
        otlp["failed"] + otlp["dropped"] > 0,
        "the backend failed, yet nothing failed: {otlp:?}"
    );
    for local in [
        "exporter/file",
        "exporter/pprof",
        "exporter/flamegraph",
        "exporter/debug",
    ] {
        assert_eq!(sums[local]["sent"], accepted, "{local}: {:?}", sums[local]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_stays_up_during_a_backend_outage_while_readiness_fails() {
    let dir = tempfile::tempdir().unwrap();
    let backend_port = ReservedPort::new();
    let backend_addr = backend_port.addr().to_string();
    let mut s = Stackline::start(dir.path(), &persistent_gateway(&backend_addr, "0s"));
    send_all(s.endpoint(), 0, 500, 100).await;
    let not_ready = eventually(Duration::from_secs(10), async || {
        let (code, body) = s.get("/health/ready").await;
        code == 503 && body.contains("exporter/otlp/backend")
    })
    .await;
    assert!(not_ready, "{:?}", s.get("/health/ready").await);
    assert_eq!(s.get("/health").await.0, 503, "/health keeps its meaning");
    let (code, body) = s.get("/health/live").await;
    assert_eq!(code, 200, "{body}");
    let backend = Backend::default();
    let _stop = backend.serve(backend_port).await;
    assert!(
        eventually(Duration::from_secs(20), async || s
            .get("/health/ready")
            .await
            .0
            == 200)
        .await
    );
    s.sigterm();
    assert!(s.wait(Duration::from_secs(30)).success());
}
