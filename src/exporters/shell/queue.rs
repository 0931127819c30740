//! The sending queue: bounded, in memory or on disk.
//!
//! In memory it holds the encoded requests. On disk (`sending_queue.storage`) it is a
//! write-ahead queue in an embedded redb database, one file per exporter: a request is
//! committed there before `push` returns, memory holds only its sequence number, and it
//! is read back when a worker takes it. It is deleted once delivered or given up on;
//! whatever is on disk at start was not, and is queued again (replayed) first.
//!
//! With `sync_interval` > 0 an append is committed without fsync and also written to a
//! journal file (see `journal.rs`), so that it survives SIGKILL as soon as it is
//! acknowledged; a power loss may lose at most the last `sync_interval`.
//!
//! Why redb: transactions make a torn write invisible (a crash mid-commit rolls back to
//! the last commit), it reuses freed pages so the file does not grow with churn, and
//! its durability switch gives the fsync policy directly. Each record also carries a
//! CRC32 of its contents, so a record damaged on disk is detected, skipped and counted
//! rather than sent as garbage; and it names its own sequence number, so that a file
//! redb can no longer open is not lost with what it held (see `salvage.rs`).

use super::{Encoded, QueueConfig};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

mod disk;
mod open;
use disk::*;
pub use open::queue_file;
use open::*;

/// One request taken from the queue by a worker; give it back to [`Queue::settle`].
pub struct Taken {
    pub item: Encoded,
    seq: Option<u64>,
}

/// What happened to a taken request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Delivered or given up on: remove it.
    Done,
    /// Not finished at the shutdown deadline: a disk queue keeps it for the next start.
    Unfinished,
}

enum Slot {
    Memory(Encoded),
    Disk { seq: u64 },
}

/// Why `push` did not queue a request.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("the sending queue is full")]
    Full(Encoded),
    #[error("writing the request to the queue on disk failed: {error}")]
    Disk { item: Encoded, error: String },
}

pub struct Queue {
    tx: async_channel::Sender<Slot>,
    rx: async_channel::Receiver<Slot>,
    disk: Option<Arc<Disk>>,
    block: bool,
}

impl Queue {
    /// A queue per `cfg`; a disk queue is opened (its directory created) and what it
    /// holds is queued first. `exporter` names the file and labels the metrics.
    pub async fn open(cfg: &QueueConfig, exporter: &str) -> Result<Queue, String> {
        let disk = match &cfg.storage {
            None => None,
            Some(s) => {
                let (s, e) = (s.clone(), exporter.to_owned());
                let d = tokio::task::spawn_blocking(move || Disk::open(&s, &e))
                    .await
                    .map_err(|e| format!("opening the queue on disk panicked: {e}"))??;
                let d = Arc::new(d);
                let _ = d.me.set(Arc::downgrade(&d));
                if let Some(every) = s_interval(cfg) {
                    Disk::start_syncer(Arc::downgrade(&d), every);
                }
                Some(d)
            }
        };
        // A disk queue replays what it holds even past queue_size: nothing on disk is dropped.
        let replay = disk.as_ref().map(|d| d.replay_seqs()).unwrap_or_default();
        let capacity = cfg.queue_size.max(1) + replay.len();
        let (tx, rx) = async_channel::bounded(capacity);
        for seq in replay {
            let _ = tx.try_send(Slot::Disk { seq });
        }
        Ok(Queue {
            tx,
            rx,
            disk,
            block: cfg.block_on_overflow,
        })
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Bytes on disk (0 for a memory queue).
    pub fn disk_bytes(&self) -> u64 {
        self.disk
            .as_ref()
            .map_or(0, |d| d.bytes.load(Ordering::Relaxed))
    }

    pub fn is_persistent(&self) -> bool {
        self.disk.is_some()
    }

    /// Samples found on disk at start (queued again first).
    pub fn replayed_samples(&self) -> u64 {
        self.disk
            .as_ref()
            .map_or(0, |d| d.replayed.load(Ordering::Relaxed))
    }

    fn has_room(&self, len: usize) -> bool {
        !self.tx.is_full() && self.disk.as_ref().is_none_or(|d| d.has_room(len))
    }

    /// Queues `item`, on disk first for a disk queue. When full: waits for room with
    /// `block_on_overflow` (until `cancel` fires), else refuses at once.
    pub async fn push(
        &self,
        item: Encoded,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<(), PushError> {
        while !self.has_room(item.bytes.len()) {
            if !self.block || cancel.is_cancelled() {
                return Err(PushError::Full(item));
            }
            // Room is made by workers taking items (memory) or settling them (disk).
            let room = self.disk.as_ref().map(|d| d.room.clone());
            tokio::select! {
                _ = async { match &room { Some(r) => r.notified().await, None => tokio::time::sleep(Duration::from_millis(20)).await } } => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = cancel.cancelled() => {}
            }
        }
        let slot = match &self.disk {
            None => Slot::Memory(item),
            Some(d) => {
                let d2 = d.clone();
                let it = item.clone();
                match tokio::task::spawn_blocking(move || d2.append(&it)).await {
                    Ok(Ok(seq)) => Slot::Disk { seq },
                    Ok(Err(error)) => return Err(PushError::Disk { item, error }),
                    Err(e) => {
                        return Err(PushError::Disk {
                            item,
                            error: e.to_string(),
                        });
                    }
                }
            }
        };
        // Room was checked above and this is the only producer: this does not wait.
        let _ = self.tx.send(slot).await;
        Ok(())
    }

    /// Ends input: workers drain what is queued, then `take` returns `None`.
    pub fn close(&self) {
        self.tx.close();
    }

    /// The next request, or `None` once the queue is closed and empty.
    pub async fn take(&self) -> Option<Taken> {
        loop {
            match self.rx.recv().await.ok()? {
                Slot::Memory(item) => return Some(Taken { item, seq: None }),
                Slot::Disk { seq } => {
                    let Some(d) = self.disk.clone() else { continue };
                    match tokio::task::spawn_blocking(move || d.read(seq)).await {
                        Ok(Ok(Some(item))) => {
                            return Some(Taken {
                                item,
                                seq: Some(seq),
                            });
                        }
                        // Damaged or missing: counted and removed by `read`.
                        Ok(Ok(None)) => {}
                        // The disk failed, not the record: it waits its turn again
                        // while the queue is reopened (on a closed queue it stays on
                        // disk for the next start).
                        Ok(Err(_)) | Err(_) => {
                            if self.tx.try_send(Slot::Disk { seq }).is_err() {
                                return None;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
        }
    }

    /// A request taken but not to be sent (e.g. past the deadline), without waiting.
    pub fn try_take_slot(&self) -> Option<u64> {
        match self.rx.try_recv().ok()? {
            Slot::Memory(item) => Some(item.samples),
            // A disk queue keeps it; it is not given up.
            Slot::Disk { .. } => Some(0),
        }
    }

    /// Removes a finished request from the disk (a memory queue has nothing to do).
    pub async fn settle(&self, taken: Taken, how: Settled) {
        if let (Some(d), Some(seq), Settled::Done) = (&self.disk, taken.seq, how) {
            let d = d.clone();
            let _ = tokio::task::spawn_blocking(move || d.remove(seq)).await;
        }
    }

    /// Samples left on disk, made durable: what the next start will replay.
    pub async fn persist_remaining(&self) -> u64 {
        let Some(d) = self.disk.clone() else { return 0 };
        tokio::task::spawn_blocking(move || d.finish())
            .await
            .unwrap_or(0)
    }
}

fn s_interval(cfg: &QueueConfig) -> Option<Duration> {
    cfg.storage
        .as_ref()
        .map(|s| s.sync_interval)
        .filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests;
