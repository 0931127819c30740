//! Full and failing disks: no torn record, refusals while the disk fails, recovery without loss once it works again.

use super::*;

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
