//! Samples arrive exactly once through a failing or absent backend and across SIGTERM.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_samples_arrive_exactly_once_despite_a_failing_backend() {
    let dir = tempfile::tempdir().unwrap();
    let backend_port = ReservedPort::new();
    let backend_addr = backend_port.addr().to_string();
    let backend = Backend::default();
    backend.fail_next.store(3, Ordering::SeqCst);
    let _stop = backend.serve(backend_port).await;
    let mut s = Stackline::start(dir.path(), &gateway_config(&backend_addr, ""));

    let acked = send(s.endpoint(), 0, 10_000, 50, 4).await;
    assert_eq!(acked.len(), 10_000);
    let file = dir.path().join("out/profiles.jsonl");
    let done = eventually(Duration::from_secs(60), async || {
        backend.samples().len() >= 10_000
            && read_json_lines(&file).iter().map(sample_count).sum::<u64>() >= 10_000
    })
    .await;
    assert!(
        done,
        "not everything arrived; backend {} samples\n{}",
        backend.samples().len(),
        s.logs()
    );
    assert_exactly_once("backend", &backend.requests(), &acked, true);
    assert_exactly_once("file", &read_json_lines(&file), &acked, true);
    assert!(
        backend.calls.load(Ordering::SeqCst) > 3,
        "the failed calls were retried"
    );
    // Batching merged 200 requests into far fewer. Each client waits for its answer,
    // which comes once the batch is queued, so a batch holds about one request per client.
    assert!(
        backend.requests().len() <= 60,
        "{} requests",
        backend.requests().len()
    );

    let m = |n: &'static str, l: &'static [(&'static str, &'static str)]| s.metric(n, l);
    assert_eq!(
        m(
            "otelcol_receiver_accepted_profile_samples_total",
            &[("receiver", "otlp"), ("transport", "grpc")]
        )
        .await,
        10_000.0
    );
    assert_eq!(
        m("otelcol_receiver_refused_profile_samples_total", &[]).await,
        0.0
    );
    assert_eq!(
        m(
            "otelcol_processor_incoming_items_total",
            &[("processor", "batch")]
        )
        .await,
        10_000.0
    );
    assert_eq!(
        m(
            "otelcol_processor_outgoing_items_total",
            &[("processor", "batch")]
        )
        .await,
        10_000.0
    );
    assert_eq!(
        m(
            "otelcol_exporter_sent_profile_samples_total",
            &[("exporter", "otlp/backend")]
        )
        .await,
        10_000.0
    );
    assert_eq!(
        m(
            "otelcol_exporter_sent_profile_samples_total",
            &[("exporter", "file")]
        )
        .await,
        10_000.0
    );
    assert_eq!(
        m("otelcol_exporter_send_failed_profile_samples_total", &[]).await,
        0.0
    );
    assert_eq!(
        m("otelcol_exporter_enqueue_failed_profile_samples_total", &[]).await,
        0.0
    );
    assert_eq!(
        m(
            "otelcol_exporter_queue_capacity",
            &[("exporter", "otlp/backend")]
        )
        .await,
        200.0
    );
    assert_eq!(
        m(
            "stackline_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        )
        .await,
        1.0
    );
    let (code, body) = s.get("/health").await;
    assert_eq!(code, 200, "{body}");

    s.sigterm();
    assert!(s.wait(Duration::from_secs(30)).success(), "{}", s.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_for_seconds_delays_but_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let backend_port = ReservedPort::new();
    let backend_addr = backend_port.addr().to_string();
    let mut s = Stackline::start(dir.path(), &gateway_config(&backend_addr, ""));
    let acked = send(s.endpoint(), 0, 2_000, 40, 2).await;

    // While the backend is down the exporter retries and /health names it.
    let unhealthy = eventually(Duration::from_secs(10), async || {
        let (code, body) = s.get("/health").await;
        code == 503 && body.contains("exporter/otlp/backend")
    })
    .await;
    assert!(unhealthy, "{:?}", s.get("/health").await);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let backend = Backend::default();
    let _stop = backend.serve(backend_port).await;
    let done = eventually(Duration::from_secs(30), async || {
        backend.samples().len() >= 2_000
    })
    .await;
    assert!(
        done,
        "backend got {} samples\n{}",
        backend.samples().len(),
        s.logs()
    );
    assert_exactly_once("backend", &backend.requests(), &acked, true);
    assert!(
        eventually(Duration::from_secs(5), async || s.get("/health").await.0
            == 200)
        .await
    );
    assert_eq!(
        s.metric("otelcol_exporter_send_failed_profile_samples_total", &[])
            .await,
        0.0
    );
    s.sigterm();
    assert!(s.wait(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_delivers_everything_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let backend_port = ReservedPort::new();
    let backend_addr = backend_port.addr().to_string();
    let backend = Backend::default();
    // A slow backend keeps requests queued and in flight when the signal comes.
    *backend.delay.lock().unwrap() = Duration::from_millis(150);
    let _stop = backend.serve(backend_port).await;
    let mut s = Stackline::start(
        dir.path(),
        &gateway_config(&backend_addr, "").replace("timeout: 100ms", "timeout: 1s"),
    );

    // Concurrent clients: each waits for its answer, which comes once its data is
    // queued, so several keep requests in the batch and in flight at the signal.
    let mut senders = Vec::new();
    for c in 0..16u64 {
        let endpoint = s.endpoint();
        senders.push(tokio::spawn(async move {
            let mut client = client(endpoint).await;
            let (mut acked, mut sent) = (Vec::new(), Vec::new());
            for i in 0..100_000u64 {
                let first = (i * 16 + c) * 20;
                sent.extend(first..first + 20);
                match client.export(request("svc", first, 20, POOL)).await {
                    Ok(_) => acked.extend(first..first + 20),
                    Err(_) => break,
                }
            }
            (acked, sent)
        }));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.sigterm();
    let (mut acked, mut sent) = (Vec::new(), Vec::new());
    for t in senders {
        let (a, x) = t.await.unwrap();
        acked.extend(a);
        sent.extend(x);
    }
    let sent: std::collections::BTreeSet<u64> = sent.into_iter().collect();
    assert!(s.wait(Duration::from_secs(40)).success(), "{}", s.logs());
    assert!(
        acked.len() > 100,
        "only {} samples were accepted",
        acked.len()
    );

    for (what, reqs) in [
        ("backend", backend.requests()),
        (
            "file",
            read_json_lines(&dir.path().join("out/profiles.jsonl")),
        ),
    ] {
        let got: Vec<u64> = reqs.iter().flat_map(decode_samples).map(|s| s.0).collect();
        let set: std::collections::BTreeSet<u64> = got.iter().copied().collect();
        assert_eq!(set.len(), got.len(), "{what}: duplicates");
        let missing: Vec<_> = acked.iter().filter(|a| !set.contains(a)).collect();
        assert!(
            missing.is_empty(),
            "{what}: {} accepted samples lost, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        assert!(
            set.iter().all(|x| sent.contains(x)),
            "{what}: samples nobody sent"
        );
    }
    assert!(
        s.logs().contains("all data in flight was drained"),
        "{}",
        s.logs()
    );
}
