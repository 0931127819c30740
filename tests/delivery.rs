//! Delivery guarantees, end to end with the real binary: every exporter accounts for
//! every sample at shutdown, a persistent queue survives SIGKILL, a full disk tears no
//! record, and health tells liveness from readiness.

use stackline_testkit as common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use stackline::otlp::synth::{decode_samples, request};

const POOL: u64 = 40;

/// Sends samples `first..first+total` in requests of `per`; returns the acknowledged seqs.
async fn send_all(endpoint: String, first: u64, total: u64, per: u64) -> Vec<u64> {
    let mut c = client(endpoint).await;
    let mut acked = Vec::new();
    let mut start = first;
    while start < first + total {
        let n = per.min(first + total - start);
        if c.export(request("svc", start, n, POOL)).await.is_ok() {
            acked.extend(start..start + n);
        }
        start += n;
    }
    acked
}

/// Checks `accepted + replayed = sent + failed + dropped + kept` for one exporter.
fn assert_accounted(name: &str, f: &BTreeMap<String, i64>) {
    let get = |k: &str| {
        f.get(k)
            .copied()
            .unwrap_or_else(|| panic!("{name}: no `{k}` in {f:?}"))
    };
    assert_eq!(
        get("accepted") + get("replayed"),
        get("sent") + get("failed") + get("dropped") + get("kept"),
        "{name}: samples unaccounted for: {f:?}"
    );
    assert_eq!(get("unaccounted"), 0, "{name}: {f:?}");
}

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

/// Gateway config with a persistent queue under `{DIR}/queue`.
fn persistent_gateway(backend: &str, sync_interval: &str) -> String {
    format!(
        r#"
receivers:
  otlp: {{ protocols: {{ grpc: {{ endpoint: "{{OTLP}}" }} }} }}
processors:
  batch: {{ send_batch_size: 500, timeout: 50ms }}
exporters:
  otlp/backend:
    endpoint: {backend}
    tls: {{ insecure: true }}
    timeout: 1s
    retry_on_failure: {{ initial_interval: 100ms, max_interval: 300ms, max_elapsed_time: 0s }}
    sending_queue:
      num_consumers: 2
      queue_size: 1000
      storage: {{ directory: "{{DIR}}/queue", max_size: 64MiB, sync_interval: {sync_interval} }}
service:
  pipelines:
    profiles: {{ receivers: [otlp], processors: [batch], exporters: [otlp/backend] }}
  telemetry: {{ metrics: {{ address: "{{METRICS}}" }} }}
  shutdown_timeout: 5s
"#
    )
}

/// Records the exporter counted as damaged.
async fn corrupt_records(s: &Stackline) -> f64 {
    s.metric(
        "stackline_exporter_queue_corrupt_records_total",
        &[("exporter", "otlp/backend")],
    )
    .await
}

/// Waits until the exporter has queued `n` samples (they are on disk by then).
async fn wait_queued(s: &Stackline, n: f64) {
    let ok = eventually(Duration::from_secs(30), async || {
        s.metric(
            "stackline_exporter_accepted_profile_samples_total",
            &[("exporter", "otlp/backend")],
        )
        .await
            >= n
    })
    .await;
    assert!(ok, "the exporter did not take {n} samples:\n{}", s.logs());
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_in_the_queue_is_skipped_and_counted_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let backend_port = ReservedPort::new();
    let backend_addr = backend_port.addr().to_string();
    let mut s = Stackline::start(dir.path(), &persistent_gateway(&backend_addr, "200ms"));
    let acked = send_all(s.endpoint(), 0, 2_000, 100).await;
    wait_queued(&s, 2_000.0).await;
    // SIGTERM: the queue is kept on disk, synced.
    s.sigterm();
    assert!(s.wait(Duration::from_secs(30)).success(), "{}", s.logs());
    let kept = s.exporter_summaries()["exporter/otlp/backend"]["kept"];
    assert_eq!(kept, 2_000, "{}", s.logs());

    // Damage the payload of one record on disk, as a bad sector would.
    let file =
        stackline::exporters::shell::queue::queue_file(&dir.path().join("queue"), "otlp/backend");
    let damaged_samples = {
        let db = redb::Database::create(&file).unwrap();
        let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("requests");
        let w = db.begin_write().unwrap();
        let samples;
        {
            let mut t = w.open_table(table).unwrap();
            let (k, mut v) = {
                use redb::ReadableTable;
                let first = t.first().unwrap().unwrap();
                (first.0.value(), first.1.value().to_vec())
            };
            // The record names its samples after magic, CRC and sequence number (record.rs).
            samples = u64::from_le_bytes(v[16..24].try_into().unwrap());
            let last = v.len() - 1;
            v[last] ^= 0xff;
            t.insert(k, v.as_slice()).unwrap();
        }
        w.commit().unwrap();
        samples
    };

    let backend = Backend::default();
    let _stop = backend.serve(backend_port).await;
    let mut s = Stackline::start(dir.path(), &persistent_gateway(&backend_addr, "200ms"));
    let want = acked.len() - damaged_samples as usize;
    let done = eventually(Duration::from_secs(30), async || {
        backend.samples().len() >= want
    })
    .await;
    assert!(done, "{} of {want}\n{}", backend.samples().len(), s.logs());
    assert_eq!(corrupt_records(&s).await, 1.0);
    // New data still flows.
    send_all(s.endpoint(), 50_000, 100, 100).await;
    assert!(
        eventually(Duration::from_secs(10), async || backend
            .samples()
            .iter()
            .any(|x| x.0 == 50_000))
        .await
    );
    s.sigterm();
    assert!(s.wait(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_file_without_its_magic_number_is_moved_aside_and_its_requests_replayed_at_sync_0s()
{
    queue_file_redb_cannot_open("0s", Damage::Magic).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_file_redb_calls_corrupt_is_moved_aside_and_its_requests_replayed_at_sync_1s() {
    queue_file_redb_cannot_open("1s", Damage::PageSize).await
}

/// Two ways redb refuses a file: "not a redb database" (an I/O error) and "corrupted".
enum Damage {
    /// The magic number at its start overwritten.
    Magic,
    /// The page size in its header changed.
    PageSize,
}

/// A queue file whose header is damaged is moved aside and what it still held is
/// delivered, exactly: not the requests delivered before the damage, whose old copies
/// are still in the file's freed pages.
async fn queue_file_redb_cannot_open(sync_interval: &str, damage: Damage) {
    let dir = tempfile::tempdir().unwrap();
    // First run: 6,000 samples are queued while the backend is down, then delivered.
    // The pages that held them are free, and hold old copies of them, more than the
    // second run overwrites.
    let first = Backend::default();
    let first_port = ReservedPort::new();
    let first_addr = first_port.addr().to_string();
    let mut s = Stackline::start(dir.path(), &persistent_gateway(&first_addr, sync_interval));
    send_all(s.endpoint(), 0, 6_000, 100).await;
    wait_queued(&s, 6_000.0).await;
    let _stop_first = first.serve(first_port).await;
    let done = eventually(Duration::from_secs(30), async || {
        first.samples().len() >= 6_000
    })
    .await;
    assert!(done, "{}", s.logs());
    s.sigterm();
    assert!(s.wait(Duration::from_secs(30)).success(), "{}", s.logs());

    // Second run: the backend is down; 2,000 samples are kept on disk.
    let backend_port = ReservedPort::new();
    let backend_addr = backend_port.addr().to_string();
    let mut s = Stackline::start(
        dir.path(),
        &persistent_gateway(&backend_addr, sync_interval),
    );
    let acked = send_all(s.endpoint(), 10_000, 2_000, 100).await;
    assert_eq!(acked.len(), 2_000, "{}", s.logs());
    wait_queued(&s, 2_000.0).await;
    s.sigterm();
    assert!(s.wait(Duration::from_secs(30)).success(), "{}", s.logs());
    assert_eq!(
        s.exporter_summaries()["exporter/otlp/backend"]["kept"],
        2_000,
        "{}",
        s.logs()
    );

    // The header is damaged: redb refuses the file.
    let queue = dir.path().join("queue");
    let file = stackline::exporters::shell::queue::queue_file(&queue, "otlp/backend");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        match damage {
            Damage::Magic => f.write_all_at(&[0; 9], 0).unwrap(),
            Damage::PageSize => f.write_all_at(&1234u32.to_le_bytes(), 12).unwrap(),
        }
    }
    let refused = redb::Database::create(&file).err();
    assert!(
        matches!(
            (&damage, &refused),
            (
                Damage::Magic,
                Some(redb::DatabaseError::Storage(redb::StorageError::Io(_)))
            ) | (
                Damage::PageSize,
                Some(redb::DatabaseError::Storage(redb::StorageError::Corrupted(
                    _
                )))
            )
        ),
        "redb's answer is not the one this test is for: {refused:?}"
    );

    let backend = Backend::default();
    let _stop = backend.serve(backend_port).await;
    let mut s = Stackline::start(
        dir.path(),
        &persistent_gateway(&backend_addr, sync_interval),
    );
    let done = eventually(Duration::from_secs(30), async || {
        backend.samples().len() >= acked.len()
    })
    .await;
    assert!(
        done,
        "{} of {}\n{}",
        backend.samples().len(),
        acked.len(),
        s.logs()
    );
    // Time for anything replayed twice, or from the first run, to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut got: Vec<u64> = backend.samples().iter().map(|x| x.0).collect();
    got.sort_unstable();
    assert_eq!(got, acked, "delivered after the salvage\n{}", s.logs());
    assert_eq!(corrupt_records(&s).await, 1.0);
    let aside = std::fs::read_dir(&queue)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".redb.corrupt-"))
        .count();
    assert_eq!(aside, 1, "the damaged file is kept for inspection");
    s.sigterm();
    assert!(s.wait(Duration::from_secs(30)).success(), "{}", s.logs());
    assert_accounted(
        "otlp/backend",
        &s.exporter_summaries()["exporter/otlp/backend"],
    );
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

/// Mounts a tmpfs of `size` at `dir` until dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Reads `<u32 BE length><protobuf>` records; panics on a torn one.
fn read_records(bytes: &[u8]) -> Vec<stackline::otlp::ProfilesRequest> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        assert!(
            rest.len() >= 4,
            "a torn length prefix at the end of the file"
        );
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        assert!(
            rest.len() >= 4 + len,
            "a torn record at the end of the file"
        );
        out.push(prost::Message::decode(&rest[4..4 + len]).expect("a whole record decodes"));
        rest = &rest[4 + len..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(missing = "root", ignore = "needs root")]
async fn a_full_filesystem_tears_no_record_counts_failures_and_writing_resumes() {
    if !stackline::testing::root_or_skip("full filesystem", "mounting a small tmpfs needs root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    let _fs = Tmpfs::mount(&small, "2m");
    // Most of the disk is taken by another file.
    let filler = small.join("filler");
    std::fs::write(&filler, vec![0u8; 1600 << 10]).unwrap();
    let config = r#"
receivers:
  otlp: { protocols: { grpc: { endpoint: "{OTLP}" } } }
exporters:
  file: { path: "{DIR}/small/profiles.binpb", format: proto }
service:
  pipelines:
    profiles: { receivers: [otlp], exporters: [file] }
  telemetry: { metrics: { address: "{METRICS}" } }
"#;
    let mut s = Stackline::start(dir.path(), config);
    // Fill the disk: each request is tens of KB; the space left runs out part-way through one.
    let mut c = client(s.endpoint()).await;
    let mut refused = 0;
    for i in 0..60u64 {
        // A request the file could not take is refused, so the client can retry it.
        if c.export(request("svc", i * 400, 400, 400)).await.is_err() {
            refused += 1;
        }
    }
    assert!(
        refused > 0,
        "no request was refused although the disk is full"
    );
    let failed = eventually(Duration::from_secs(10), async || {
        s.metric(
            "otelcol_exporter_send_failed_profile_samples_total",
            &[("exporter", "file")],
        )
        .await
            > 0.0
    })
    .await;
    assert!(failed, "the disk never filled:\n{}", s.logs());
    let (code, body) = s.get("/health/ready").await;
    assert_eq!(code, 503, "{body}");
    let path = small.join("profiles.binpb");
    let before = read_records(&std::fs::read(&path).unwrap());
    let sent = s
        .metric(
            "otelcol_exporter_sent_profile_samples_total",
            &[("exporter", "file")],
        )
        .await;
    let in_file: u64 = before.iter().map(stackline::otlp::sample_count).sum();
    assert_eq!(
        sent as u64, in_file,
        "sent must be exactly what is in the file"
    );

    // Space returns: writing resumes, after the last whole record.
    std::fs::remove_file(&filler).unwrap();
    c.export(request("svc", 1_000_000, 10, POOL)).await.unwrap();
    let resumed = eventually(Duration::from_secs(10), async || {
        std::fs::read(&path)
            .map(|b| {
                read_records(&b)
                    .iter()
                    .flat_map(decode_samples)
                    .any(|x| x.0 == 1_000_000)
            })
            .unwrap_or(false)
    })
    .await;
    assert!(resumed, "writing did not resume:\n{}", s.logs());
    assert!(
        eventually(Duration::from_secs(5), async || s
            .get("/health/ready")
            .await
            .0
            == 200)
        .await
    );
    s.sigterm();
    assert!(s.wait(Duration::from_secs(30)).success());
    assert_accounted("file", &s.exporter_summaries()["exporter/file"]);
}

/// A disk that fills up under the queue and is freed again: requests are refused (the
/// clients retry them) while it is full, the process stays live but not ready, the
/// queue is reopened without a restart, nothing is counted corrupt, and every
/// acknowledged sample is delivered once the backend is up. For each `sync_interval`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(missing = "root", ignore = "needs root")]
async fn a_queue_on_a_full_disk_refuses_recovers_when_freed_and_loses_nothing() {
    if !stackline::testing::root_or_skip("full queue disk", "mounting a small tmpfs needs root") {
        return;
    }
    for sync in ["0s", "1s"] {
        disk_fault_under_the_queue(sync, DiskFault::Full).await;
    }
}

/// The same with a disk that answers EIO (an in-memory FUSE file system that fails on
/// demand): the queue is reopened with back-off while the disk fails, readiness is
/// false and liveness true, and nothing acknowledged is lost or counted corrupt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(missing = "root", ignore = "needs root")]
async fn a_queue_on_a_disk_that_answers_eio_refuses_recovers_and_loses_nothing() {
    if !stackline::testing::root_or_skip("EIO queue disk", "mounting a FUSE file system needs root")
    {
        return;
    }
    for sync in ["0s", "1s"] {
        disk_fault_under_the_queue(sync, DiskFault::Eio).await;
    }
}

#[derive(Clone, Copy, Debug)]
enum DiskFault {
    /// A small tmpfs, filled: ENOSPC.
    Full,
    /// A FUSE file system that fails writes and syncs: EIO.
    Eio,
}

async fn disk_fault_under_the_queue(sync_interval: &str, fault: DiskFault) {
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    let (_tmpfs, faulty) = match fault {
        DiskFault::Full => (Some(Tmpfs::mount(&queue, "8m")), None),
        DiskFault::Eio => (None, Some(faulty_fs::FaultyFs::mount(&queue))),
    };
    let backend_port = ReservedPort::new();
    let backend_addr = backend_port.addr().to_string();
    let cfg = persistent_gateway(&backend_addr, sync_interval);
    let mut s = Stackline::start(dir.path(), &cfg);
    let mut acked = send_all(s.endpoint(), 0, 2_000, 100).await;
    assert_eq!(acked.len(), 2_000, "{}", s.logs());
    // Fill what is left of the disk, or make it fail.
    let filler = queue.join("filler");
    match &faulty {
        None => {
            let mut f = std::fs::File::create(&filler).unwrap();
            let block = vec![0u8; 64 << 10];
            while std::io::Write::write_all(&mut f, &block).is_ok() {}
        }
        Some(fs) => fs.fail(true),
    }
    let mut c = client(s.endpoint()).await;
    let mut refused = 0;
    let mut next = 2_000u64;
    for _ in 0..200 {
        // Bounded: a request never answered (a queue wedged by the fault) fails the
        // test instead of hanging it.
        let sent = tokio::time::timeout(
            Duration::from_secs(30),
            c.export(request("svc", next, 100, POOL)),
        )
        .await;
        assert!(
            sent.is_ok(),
            "sync {sync_interval}, {fault:?}: a request was never answered\n{}",
            s.logs()
        );
        if sent.is_ok_and(|r| r.is_ok()) {
            acked.extend(next..next + 100);
        } else {
            refused += 1;
        }
        next += 100;
    }
    assert!(
        refused > 0,
        "sync {sync_interval}, {fault:?}: nothing was refused on a failing disk"
    );
    let (ready, _) = s.get("/health/ready").await;
    assert_eq!(
        ready, 503,
        "sync {sync_interval}: ready while the queue cannot write"
    );
    assert_eq!(s.get("/health/live").await.0, 200, "liveness must hold");
    // Freed: the queue reopens and takes requests again, without a restart.
    match &faulty {
        None => std::fs::remove_file(&filler).unwrap(),
        Some(fs) => fs.fail(false),
    }
    let recovered = eventually(Duration::from_secs(30), async || {
        let ok = tokio::time::timeout(
            Duration::from_secs(30),
            c.export(request("svc", next, 100, POOL)),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if ok {
            acked.extend(next..next + 100);
        }
        next += 100;
        ok
    })
    .await;
    assert!(
        recovered,
        "sync {sync_interval}: the queue did not recover:\n{}",
        s.logs()
    );
    // The backend comes up: everything acknowledged arrives, nothing was corrupt.
    let backend = Backend::default();
    let _stop = backend.serve(backend_port).await;
    let done = eventually(Duration::from_secs(60), async || {
        let got: BTreeSet<u64> = backend.samples().iter().map(|x| x.0).collect();
        acked.iter().all(|a| got.contains(a))
    })
    .await;
    let got: BTreeSet<u64> = backend.samples().iter().map(|x| x.0).collect();
    assert!(
        done,
        "sync {sync_interval}: {} of {} acknowledged samples arrived\n{}",
        acked.iter().filter(|a| got.contains(a)).count(),
        acked.len(),
        s.logs()
    );
    assert_eq!(
        corrupt_records(&s).await,
        0.0,
        "sync {sync_interval}: records counted corrupt"
    );
    eprintln!(
        "sync {sync_interval}, {fault:?}: {refused} requests refused while the disk failed; {} acknowledged, all delivered",
        acked.len()
    );
    s.sigterm();
    assert!(s.wait(Duration::from_secs(30)).success(), "{}", s.logs());
}
