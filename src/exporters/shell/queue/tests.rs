//! The disk queue's sequence numbers and its replacement of a damaged file, on real
//! files, through the queue's own API.

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Queue, Settled, Taken, queue_file};
use crate::config::units::ByteSize;
use crate::exporters::shell::{Encoded, QueueConfig, StorageConfig};

const EXPORTER: &str = "otlp/x";

fn cfg(dir: &Path) -> QueueConfig {
    QueueConfig {
        storage: Some(StorageConfig {
            directory: dir.into(),
            max_size: ByteSize::mib(64),
            sync_interval: Duration::ZERO,
        }),
        ..Default::default()
    }
}

/// Request `id`: `id` samples, so what is replayed says which requests came back.
fn item(id: u64) -> Encoded {
    Encoded {
        samples: id,
        profiles: 1,
        bytes: bytes::Bytes::from(vec![id as u8; 3000]),
    }
}

async fn open(dir: &Path) -> Queue {
    Queue::open(&cfg(dir), EXPORTER).await.unwrap()
}

async fn push(q: &Queue, ids: impl IntoIterator<Item = u64>) {
    for id in ids {
        q.push(item(id), &CancellationToken::new()).await.unwrap();
    }
}

async fn take(q: &Queue, n: usize) -> Vec<Taken> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(q.take().await.unwrap());
    }
    v
}

/// Overwrites redb's magic number: redb then refuses the file ("not a redb database").
fn damage_header(dir: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(queue_file(dir, EXPORTER))
        .unwrap();
    f.write_all_at(&[0; 8], 0).unwrap();
}

fn aside_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            n.to_string_lossy().contains(".redb.corrupt-")
        })
        .count()
}

#[tokio::test]
async fn numbers_are_not_reused_after_out_of_turn_deliveries_and_a_salvage_replays_only_what_is_pending()
 {
    let dir = tempfile::tempdir().unwrap();
    // Run 1: ten requests; the first is still being retried when the other nine are
    // delivered, out of turn, and the process stops.
    let q = open(dir.path()).await;
    push(&q, 1..=10).await;
    let mut taken = take(&q, 10).await;
    let first = taken.remove(0);
    let run1_max = taken.iter().filter_map(|t| t.seq).max().unwrap();
    for t in taken {
        q.settle(t, Settled::Done).await;
    }
    q.settle(first, Settled::Unfinished).await;
    assert_eq!(q.persist_remaining().await, 1);
    drop(q);

    // Run 2: request 1 is replayed; five new ones get numbers none of run 1 had (the
    // old copies of run 1's delivered records are still in the file's freed pages).
    let q = open(dir.path()).await;
    assert_eq!(q.replayed_samples(), 1);
    push(&q, 101..=105).await;
    let mut taken = take(&q, 6).await;
    let new: Vec<u64> = taken[1..].iter().filter_map(|t| t.seq).collect();
    assert!(
        new.iter().all(|&s| s > run1_max),
        "numbers {new:?} reuse run 1's (up to {run1_max})"
    );
    let pending = taken.split_off(3);
    for t in taken {
        q.settle(t, Settled::Done).await;
    }
    for t in pending {
        q.settle(t, Settled::Unfinished).await;
    }
    assert_eq!(q.persist_remaining().await, 103 + 104 + 105);
    drop(q);

    // Run 3, after the header is damaged: exactly the three pending requests come back.
    damage_header(dir.path());
    let q = open(dir.path()).await;
    assert_eq!(q.replayed_samples(), 103 + 104 + 105);
    let mut got: Vec<u64> = take(&q, 3).await.iter().map(|t| t.item.samples).collect();
    got.sort();
    assert_eq!(got, [103, 104, 105]);
    assert!(q.is_empty());
    assert_eq!(aside_files(dir.path()), 1);
}

#[tokio::test]
async fn a_replacement_cut_short_by_a_crash_is_finished_or_done_again() {
    // A crash while the requests were being read back: the damaged file is still in
    // place, beside a half-written read-back file, and is read again.
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path()).await;
    push(&q, 1..=4).await;
    drop(q);
    damage_header(dir.path());
    let path = queue_file(dir.path(), EXPORTER);
    std::fs::write(path.with_extension("redb.salvage"), b"half a database").unwrap();
    let q = open(dir.path()).await;
    assert_eq!(q.replayed_samples(), 1 + 2 + 3 + 4);
    assert!(!path.with_extension("redb.salvage").exists());
    drop(q);

    // A crash after the damaged file was moved aside, before the read-back file took
    // its place: the read-back file is put in place.
    std::fs::rename(&path, path.with_extension("redb.salvage")).unwrap();
    let q = open(dir.path()).await;
    assert_eq!(q.replayed_samples(), 1 + 2 + 3 + 4);
    assert!(path.exists() && !path.with_extension("redb.salvage").exists());
}
