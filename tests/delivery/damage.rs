//! A damaged queue file: a bad record is skipped and counted, a file redb cannot open is moved aside and its requests replayed.

use super::*;

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
