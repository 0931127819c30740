//! The persistent queue and SIGKILL: what was acknowledged is delivered after a restart, at each sync_interval the docs name.

use super::*;

/// The README's promise for every `sync_interval`: an acknowledged request survives
/// SIGKILL. Killed at once after the last acknowledgement (no wait for the queue), so
/// an acknowledgement that came before the data was held would show as a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_queue_survives_sigkill_and_delivers_everything_after_restart() {
    sigkill_after_acknowledgement_loses_nothing("0s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sync_interval_1s_an_acknowledged_request_survives_sigkill() {
    sigkill_after_acknowledgement_loses_nothing("1s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sync_interval_10s_an_acknowledged_request_survives_sigkill() {
    sigkill_after_acknowledgement_loses_nothing("10s").await;
}

/// SIGKILL at random moments under steady load, ten times, while the backend first fails
/// (UNAVAILABLE) and then recovers: every acknowledged sample reaches the backend in the
/// end, nothing arrives that was not sent, and the last run's exporter accounts for
/// every sample it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_under_load_lose_no_acknowledged_sample_at_sync_interval_0s() {
    sigkills_under_load_lose_nothing("0s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_under_load_lose_no_acknowledged_sample_at_sync_interval_1s() {
    sigkills_under_load_lose_nothing("1s").await;
}

async fn sigkills_under_load_lose_nothing(sync_interval: &str) {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::default();
    backend.fail_next.store(usize::MAX, Ordering::SeqCst);
    let port = ReservedPort::new();
    let cfg = persistent_gateway(&port.addr().to_string(), sync_interval);
    let _stop = backend.serve(port).await;
    // The moments: a seed printed, so a failure can be replayed.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = seed | 1;
    let mut next = move |lo: u64, hi: u64| {
        // xorshift64
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        lo + rng % (hi - lo)
    };
    let endpoint = Arc::new(std::sync::Mutex::new(String::new()));
    let acked = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    // Steady load: requests of 50 samples, one after another, to whichever gateway runs.
    let sender = {
        let (endpoint, acked, stop) = (endpoint.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seq = 0u64;
            let mut conn: Option<(String, _)> = None;
            while !stop.load(Ordering::SeqCst) {
                let target = endpoint.lock().unwrap().clone();
                if conn.as_ref().is_none_or(|(e, _)| *e != target) {
                    conn = match tokio::time::timeout(
                        Duration::from_secs(1),
                        stackline::otlp::collector::profiles_service_client::ProfilesServiceClient::connect(target.clone()),
                    )
                    .await
                    {
                        Ok(Ok(c)) => Some((target, c)),
                        _ => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                }
                let c = &mut conn.as_mut().unwrap().1;
                let r = tokio::time::timeout(
                    Duration::from_secs(5),
                    c.export(request("svc", seq, 50, POOL)),
                )
                .await;
                match r {
                    Ok(Ok(_)) => acked.lock().unwrap().extend(seq..seq + 50),
                    // Not acknowledged (killed mid-request, refused): may or may not arrive.
                    _ => conn = None,
                }
                seq += 50;
            }
        })
    };
    for kill in 0..10 {
        let s = Stackline::start(dir.path(), &cfg);
        *endpoint.lock().unwrap() = s.endpoint();
        if kill == 5 {
            // The backend recovers: the queue drains while the kills go on.
            backend.fail_next.store(0, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(next(200, 1500))).await;
        let mut s = s;
        s.sigkill();
    }
    let mut s = Stackline::start(dir.path(), &cfg);
    *endpoint.lock().unwrap() = s.endpoint();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    sender.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    let sent_max = acked.iter().max().copied().unwrap_or(0) + 50;
    let done = eventually(Duration::from_secs(60), async || {
        let got: BTreeSet<u64> = backend.samples().iter().map(|x| x.0).collect();
        acked.iter().all(|a| got.contains(a))
    })
    .await;
    let got: BTreeSet<u64> = backend.samples().iter().map(|x| x.0).collect();
    let missing = acked.iter().filter(|a| !got.contains(a)).count();
    eprintln!(
        "sync_interval {sync_interval}, seed {seed}: 10 SIGKILLs, {} samples acknowledged, {} distinct delivered, {missing} acknowledged missing",
        acked.len(),
        got.len()
    );
    assert!(
        done,
        "sync_interval {sync_interval} (seed {seed}): {missing} of {} acknowledged samples never arrived\n{}",
        acked.len(),
        s.logs()
    );
    assert!(acked.len() >= 1000, "too little load: {}", acked.len());
    assert!(
        got.iter().all(|x| *x < sent_max + 50),
        "samples nobody sent"
    );
    // Everything delivered leaves the queue; a clean stop accounts for every sample.
    assert!(
        eventually(Duration::from_secs(20), async || s
            .metric(
                "stackline_exporter_queue_bytes",
                &[("exporter", "otlp/backend")]
            )
            .await
            == 0.0)
        .await,
        "{}",
        s.logs()
    );
    s.sigterm();
    assert!(s.wait(Duration::from_secs(30)).success(), "{}", s.logs());
    let f = &s.exporter_summaries()["exporter/otlp/backend"];
    assert_accounted("otlp/backend", f);
    assert_eq!(f["kept"], 0);
}

async fn sigkill_after_acknowledgement_loses_nothing(sync_interval: &str) {
    let dir = tempfile::tempdir().unwrap();
    let backend_port = ReservedPort::new();
    let backend_addr = backend_port.addr().to_string();
    // The backend is down: everything accepted waits in the queue.
    let cfg = persistent_gateway(&backend_addr, sync_interval);
    let mut s = Stackline::start(dir.path(), &cfg);
    let acked = send_all(s.endpoint(), 0, 10_000, 100).await;
    assert_eq!(acked.len(), 10_000);
    s.sigkill();

    let backend = Backend::default();
    let _stop = backend.serve(backend_port).await;
    let mut s = Stackline::start(dir.path(), &cfg);
    let done = eventually(Duration::from_secs(60), async || {
        let got: BTreeSet<u64> = backend.samples().iter().map(|x| x.0).collect();
        acked.iter().all(|a| got.contains(a))
    })
    .await;
    let seqs: Vec<u64> = backend.samples().iter().map(|x| x.0).collect();
    let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
    assert!(
        done,
        "sync_interval {sync_interval}: after the restart the backend has {} of 10000 samples\n{}",
        distinct.len(),
        s.logs()
    );
    let duplicates = seqs.len() - distinct.len();
    eprintln!(
        "persistent queue, sync_interval {sync_interval}: 10000 accepted before SIGKILL, {} delivered after restart, {duplicates} duplicates",
        distinct.len()
    );
    assert!(distinct.iter().all(|x| *x < 10_000), "samples nobody sent");
    let replayed = s
        .metric(
            "stackline_exporter_queue_replayed_samples_total",
            &[("exporter", "otlp/backend")],
        )
        .await;
    assert_eq!(replayed, 10_000.0, "{}", s.logs());
    // Delivered requests leave the queue; a clean stop keeps nothing.
    assert!(
        eventually(Duration::from_secs(10), async || s
            .metric(
                "stackline_exporter_queue_bytes",
                &[("exporter", "otlp/backend")]
            )
            .await
            == 0.0)
        .await
    );
    s.sigterm();
    assert!(s.wait(Duration::from_secs(30)).success(), "{}", s.logs());
    let f = &s.exporter_summaries()["exporter/otlp/backend"];
    assert_accounted("otlp/backend", f);
    assert_eq!(f["kept"], 0);
}
