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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use tokio::sync::Notify;

use super::journal::Journal;
use super::record::{self, HEADER, TABLE};
use super::salvage::{self, Marks};
use super::{Encoded, QueueConfig, StorageConfig};
use crate::telemetry::names;

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

/// The queue's redb file.
struct Disk {
    /// None while it is being reopened after an I/O error.
    db: std::sync::RwLock<Option<Database>>,
    /// An I/O error was met: redb refuses every call after one (`PreviousIo`) until the
    /// file is opened again, which a background thread does, with backoff.
    broken: Arc<AtomicBool>,
    /// Itself, for the reopen thread (set once it is in its Arc).
    me: std::sync::OnceLock<std::sync::Weak<Disk>>,
    path: PathBuf,
    /// With `sync_interval` > 0: appends since the last sync, so that they survive
    /// SIGKILL (see `journal.rs`). Its lock also orders appends against syncs.
    journal: Option<std::sync::Mutex<Journal>>,
    held: std::sync::Mutex<Held>,
    /// Beside the file, for a salvage: the smallest sequence number still held, and the
    /// reservation above every number handed out.
    marks: Marks,
    bytes: AtomicU64,
    max_bytes: u64,
    /// fsync every append (sync_interval 0), or leave it to the syncer.
    sync_each: bool,
    dirty: Arc<AtomicBool>,
    room: Arc<Notify>,
    replay: std::sync::Mutex<Vec<u64>>,
    replayed: AtomicU64,
    corrupt: metrics::Counter,
    bytes_gauge: metrics::Gauge,
}

/// The sequence numbers the queue holds (appended and not yet settled).
struct Held {
    next: u64,
    /// `marks` says durably that no number at or above this was handed out; `next`
    /// reaching it reserves the next block first.
    reserved: u64,
    seqs: std::collections::BTreeSet<u64>,
    /// The floor may not rise above this (`u64::MAX`: no pin): the floor found at start
    /// when records past an unreadable page could not be seen.
    pin: u64,
}

/// Sequence numbers reserved at a time (one fsync of the marks file each).
const RESERVE_BLOCK: u64 = 1 << 16;

impl Held {
    /// Every sequence number below this is settled.
    fn floor(&self) -> u64 {
        self.seqs
            .first()
            .copied()
            .unwrap_or(self.next)
            .min(self.pin)
    }
}

impl Disk {
    fn open(cfg: &StorageConfig, exporter: &str) -> Result<Disk, String> {
        std::fs::create_dir_all(&cfg.directory).map_err(|e| {
            format!(
                "cannot create sending_queue.storage.directory {}: {e}",
                cfg.directory.display()
            )
        })?;
        let path = queue_file(&cfg.directory, exporter);
        let corrupt =
            metrics::counter!(names::EXPORTER_QUEUE_CORRUPT, "exporter" => exporter.to_owned());
        let (marks, was) = Marks::open(&path).map_err(|e| {
            format!(
                "cannot open the queue's marks file (.floor) beside {}: {e}",
                path.display()
            )
        })?;
        let db = open_db(&path, &corrupt, was)?;
        let journal = if cfg.sync_interval.is_zero() {
            None
        } else {
            Some(std::sync::Mutex::new(recover_journal(&db, &path)?))
        };
        let d = Disk {
            db: std::sync::RwLock::new(Some(db)),
            broken: Arc::new(AtomicBool::new(false)),
            me: std::sync::OnceLock::new(),
            journal,
            path,
            held: std::sync::Mutex::new(Held {
                // Numbers are never used twice, even with records of the last run still
                // held (some settled out of turn above them) or the file lost.
                next: was.floor.max(was.reserved).max(1),
                reserved: was.reserved,
                seqs: Default::default(),
                pin: u64::MAX,
            }),
            marks,
            bytes: AtomicU64::new(0),
            max_bytes: cfg.max_size.as_u64(),
            sync_each: cfg.sync_interval.is_zero(),
            dirty: Arc::new(AtomicBool::new(false)),
            room: Arc::new(Notify::new()),
            replay: std::sync::Mutex::new(Vec::new()),
            replayed: AtomicU64::new(0),
            corrupt,
            bytes_gauge: metrics::gauge!(names::EXPORTER_QUEUE_BYTES, "exporter" => exporter.to_owned()),
        };
        metrics::gauge!(names::EXPORTER_QUEUE_CAPACITY_BYTES, "exporter" => exporter.to_owned())
            .set(d.max_bytes as f64);
        d.scan(exporter)?;
        Ok(d)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> String {
        format!("{what} the queue {}: {e}", self.path.display())
    }

    /// Reads what the file holds at start: valid records are replayed in order,
    /// damaged ones removed and counted.
    fn scan(&self, exporter: &str) -> Result<(), String> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        let (mut bytes, mut samples, mut last) = (0u64, 0u64, 0u64);
        let mut whole = true;
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        let db = guard
            .as_ref()
            .ok_or_else(|| self.err("reading", "it is not open"))?;
        {
            let r = db.begin_read().map_err(|e| self.err("reading", e))?;
            match r.open_table(TABLE) {
                Ok(t) => {
                    for entry in t.iter().map_err(|e| self.err("reading", e))? {
                        let Ok((k, v)) = entry else {
                            // An unreadable page ends the scan; what was read is kept.
                            self.corrupt.increment(1);
                            whole = false;
                            break;
                        };
                        let seq = k.value();
                        last = last.max(seq);
                        match record::decode(v.value()) {
                            Some(item) => {
                                bytes += v.value().len() as u64;
                                samples += item.samples;
                                good.push(seq);
                            }
                            None => bad.push(seq),
                        }
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(self.err("reading", e)),
            }
        }
        if !bad.is_empty() {
            tracing::error!(path = %self.path.display(), records = bad.len(), "damaged records in the sending queue on disk are skipped (counted in {})", names::EXPORTER_QUEUE_CORRUPT);
            self.corrupt.increment(bad.len() as u64);
            let w = db.begin_write().map_err(|e| self.err("repairing", e))?;
            {
                let mut t = w.open_table(TABLE).map_err(|e| self.err("repairing", e))?;
                for seq in &bad {
                    let _ = t.remove(seq);
                }
            }
            w.commit().map_err(|e| self.err("repairing", e))?;
        }
        if !good.is_empty() {
            tracing::info!(path = %self.path.display(), requests = good.len(), samples, "replaying the sending queue kept on disk");
            metrics::counter!(names::EXPORTER_QUEUE_REPLAYED, "exporter" => exporter.to_owned())
                .increment(samples);
        }
        self.replayed.store(samples, Ordering::Relaxed);
        {
            let mut held = self.held();
            held.next = held.next.max(last.saturating_add(1));
            held.seqs = good.iter().copied().collect();
            // Records past an unreadable page were not seen: the floor stays where it
            // was, so that a salvage does not take them for settled.
            if !whole {
                held.pin = self.marks.floor();
            }
            self.marks.set_floor(held.floor());
        }
        self.bytes.store(bytes, Ordering::Relaxed);
        self.bytes_gauge.set(bytes as f64);
        *self.replay.lock().unwrap_or_else(|p| p.into_inner()) = good;
        Ok(())
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `seq` is settled (delivered, given up, or never written): it no longer holds
    /// the floor down.
    fn settled(&self, seq: u64) {
        let mut held = self.held();
        held.seqs.remove(&seq);
        self.marks.set_floor(held.floor());
    }

    fn replay_seqs(&self) -> Vec<u64> {
        std::mem::take(&mut *self.replay.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn has_room(&self, len: usize) -> bool {
        self.bytes.load(Ordering::Relaxed) + (HEADER + len) as u64 <= self.max_bytes
    }

    /// Runs `f` on the open file. An I/O error (or redb's `PreviousIo`, its answer to
    /// every call after one) marks the queue broken and starts reopening it.
    fn with_db<T>(
        &self,
        what: &str,
        f: impl FnOnce(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, Fault> {
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        let Some(db) = guard.as_ref() else {
            return Err(Fault::Io(
                self.err(what, "it is being reopened after an I/O error"),
            ));
        };
        match f(db) {
            Ok(v) => Ok(v),
            Err(e @ (redb::Error::Io(_) | redb::Error::PreviousIo)) => {
                drop(guard);
                self.start_reopen();
                Err(Fault::Io(self.err(what, e)))
            }
            Err(e) => Err(Fault::Other(self.err(what, e))),
        }
    }

    /// Reopens the file in the background, once per failure, with backoff.
    fn start_reopen(&self) {
        if self.broken.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(me) = self.me.get().cloned() else {
            return;
        };
        tracing::error!(path = %self.path.display(), "the sending queue on disk failed; reopening it (requests are refused meanwhile, and clients retry them)");
        let spawned = std::thread::Builder::new()
            .name("queue-reopen".into())
            .spawn(move || Disk::reopen(me));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the queue's reopen thread");
        }
    }

    fn reopen(me: std::sync::Weak<Disk>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
            let Some(d) = me.upgrade() else { return };
            // The journal first, then the database, as `append` and `sync` take them:
            // taken the other way round, a request being appended (holding the journal,
            // waiting for the database) and this (holding the database, waiting for the
            // journal) waited for each other for ever.
            let mut jg = d
                .journal
                .as_ref()
                .map(|j| j.lock().unwrap_or_else(|p| p.into_inner()));
            let mut g = d.db.write().unwrap_or_else(|p| p.into_inner());
            // Closing releases redb's lock on the file, so it can be opened again.
            *g = None;
            // A replacement that failed half-way (the read-back file not yet in place)
            // is finished first: creating the file now would start an empty queue.
            if let Err(e) = salvage::finish_replacement(&d.path) {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot reopen the sending queue yet");
                continue;
            }
            let db = match Database::create(&d.path) {
                Ok(db) => db,
                Err(e) if damaged(&e) => {
                    d.corrupt.increment(1);
                    let held = {
                        let h = d.held();
                        salvage::Held {
                            floor: h.floor(),
                            reserved: h.reserved,
                        }
                    };
                    if let Err(e) = salvage::replace_damaged(&d.path, &e, held) {
                        tracing::error!(error = %e, retry_in = ?backoff, "cannot reopen the sending queue yet");
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(path = %d.path.display(), error = %e, retry_in = ?backoff, "cannot reopen the sending queue yet");
                    continue;
                }
            };
            // What was acknowledged since the last sync goes back in from the journal.
            if let Some(j) = jg.as_mut() {
                match recover_journal(&db, &d.path) {
                    Ok(fresh) => **j = fresh,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "cannot restore the queue's journal yet");
                        continue;
                    }
                }
            }
            // A salvage or the journal changed what the file holds: count it again.
            match stored_bytes(&db) {
                Ok(b) => {
                    d.bytes.store(b, Ordering::Relaxed);
                    d.bytes_gauge.set(b as f64);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot read the reopened sending queue yet");
                    continue;
                }
            }
            *g = Some(db);
            d.broken.store(false, Ordering::SeqCst);
            d.room.notify_waiters();
            tracing::info!(path = %d.path.display(), "the sending queue on disk is open again");
            return;
        }
    }

    /// Commits `item`; with `sync_interval: 0s` it is fsync'd before this returns,
    /// otherwise written to the journal first. Either way it survives SIGKILL once this
    /// returns.
    fn append(&self, item: &Encoded) -> Result<u64, String> {
        let seq = {
            let mut held = self.held();
            let seq = held.next;
            if seq >= held.reserved {
                let upto = seq.saturating_add(RESERVE_BLOCK);
                self.marks
                    .reserve(upto)
                    .map_err(|e| self.err("reserving sequence numbers (.floor) beside", e))?;
                held.reserved = upto;
            }
            held.next = seq
                .checked_add(1)
                .ok_or_else(|| self.err("writing", "its sequence numbers are used up"))?;
            // Held from before it is written, so the floor never passes it.
            held.seqs.insert(seq);
            seq
        };
        let rec = record::encode(seq, item);
        let written = self.write(seq, &rec);
        if written.is_err() {
            self.settled(seq);
        }
        written
    }

    fn write(&self, seq: u64, rec: &[u8]) -> Result<u64, String> {
        let mut journal = self
            .journal
            .as_ref()
            .map(|j| j.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(j) = journal.as_mut() {
            j.append(seq, rec)
                .map_err(|e| format!("writing the queue's journal {}: {e}", j.path().display()))?;
        }
        let durability = if self.sync_each {
            Durability::Immediate
        } else {
            Durability::None
        };
        self.with_db("writing", |db| {
            let mut w = db.begin_write()?;
            w.set_durability(durability)?;
            {
                let mut t = w.open_table(TABLE)?;
                t.insert(seq, rec)?;
            }
            w.commit()?;
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        if !self.sync_each {
            self.dirty.store(true, Ordering::Relaxed);
        }
        let b = self.bytes.fetch_add(rec.len() as u64, Ordering::Relaxed) + rec.len() as u64;
        self.bytes_gauge.set(b as f64);
        Ok(seq)
    }

    /// The record `seq`: `Ok(None)` if it is damaged or missing (counted and removed),
    /// an error if the disk failed (the record may be fine: it is read again later).
    fn read(&self, seq: u64) -> Result<Option<Encoded>, Fault> {
        let got = self.with_db("reading", |db| {
            let r = db.begin_read()?;
            let t = match r.open_table(TABLE) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            Ok(t.get(seq)?.map(|v| v.value().to_vec()))
        });
        let bytes = match got {
            Ok(b) => b,
            Err(Fault::Other(e)) => {
                tracing::error!(path = %self.path.display(), seq, error = %e, "a request in the sending queue on disk cannot be read; skipped (counted)");
                None
            }
            Err(e) => return Err(e),
        };
        let item = bytes.as_deref().and_then(record::decode);
        if item.is_none() {
            tracing::error!(path = %self.path.display(), seq, "a request in the sending queue on disk is damaged or missing; skipped (counted)");
            self.corrupt.increment(1);
            self.remove(seq);
        }
        Ok(item)
    }

    /// Deletes a settled record. Not fsync'd: if the process dies before the next
    /// durable commit, the record is sent again (a duplicate, never a loss).
    fn remove(&self, seq: u64) {
        let r = self.with_db("updating", |db| {
            let mut w = db.begin_write()?;
            w.set_durability(Durability::None)?;
            let n = {
                let mut t = w.open_table(TABLE)?;
                let old = t.remove(seq)?;
                old.map_or(0, |v| v.value().len() as u64)
            };
            w.commit()?;
            Ok(n)
        });
        match r {
            Ok(n) => {
                self.dirty.store(true, Ordering::Relaxed);
                let b = self
                    .bytes
                    .fetch_sub(n.min(self.bytes.load(Ordering::Relaxed)), Ordering::Relaxed)
                    .saturating_sub(n);
                self.bytes_gauge.set(b as f64);
            }
            Err(e) => {
                tracing::error!(error = %e, "a delivered request could not be removed from the queue; it will be sent again after a restart")
            }
        }
        self.settled(seq);
        self.room.notify_waiters();
    }

    /// A durable, empty commit: makes every earlier non-durable commit durable, and then
    /// empties the journal, which held them until now.
    fn sync(&self) -> Result<(), String> {
        let mut journal = self
            .journal
            .as_ref()
            .map(|j| j.lock().unwrap_or_else(|p| p.into_inner()));
        self.with_db("syncing", |db| {
            let mut w = db.begin_write()?;
            w.set_durability(Durability::Immediate)?;
            w.commit()?;
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        if let Some(j) = journal.as_mut() {
            // Left as it is on failure: its entries are put back at the next start
            // (duplicates of what redb holds are skipped there).
            j.clear()
                .map_err(|e| format!("emptying the queue's journal {}: {e}", j.path().display()))?;
        }
        Ok(())
    }

    /// Makes non-durable commits durable every `every`, while the queue exists.
    fn start_syncer(disk: std::sync::Weak<Disk>, every: Duration) {
        let spawned = std::thread::Builder::new()
            .name("queue-sync".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let Some(d) = disk.upgrade() else { return };
                    if d.dirty.swap(false, Ordering::Relaxed)
                        && let Err(e) = d.sync()
                    {
                        tracing::error!(error = %e, "the sending queue could not be synced to disk");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the queue's sync thread; only shutdown will sync it");
        }
    }

    /// Makes the removals durable and returns the samples still held.
    fn finish(&self) -> u64 {
        if let Err(e) = self.sync() {
            tracing::error!(error = %e, "the sending queue could not be synced at shutdown");
        }
        self.with_db("reading", |db| {
            let r = db.begin_read()?;
            let t = match r.open_table(TABLE) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
                Err(e) => return Err(e.into()),
            };
            Ok(t.iter()?
                .flatten()
                .filter_map(|(_, v)| record::decode(v.value()))
                .map(|i| i.samples)
                .sum())
        })
        .unwrap_or(0)
    }
}

/// Opens (creating) the queue file. An I/O error is tried again for up to
/// OPEN_RETRY_FOR (a disk that is briefly full or failing at start); a file redb says
/// is corrupt is counted and replaced by one holding the requests still readable in it
/// ([`salvage::replace_damaged`]); anything else stops the exporter with a message saying what
/// to do.
fn open_db(
    path: &Path,
    corrupt: &metrics::Counter,
    held: salvage::Held,
) -> Result<Database, String> {
    salvage::finish_replacement(path)?;
    let until = std::time::Instant::now() + OPEN_RETRY_FOR;
    let mut backoff = Duration::from_millis(100);
    let mut replaced = false;
    loop {
        let e = match Database::create(path) {
            Ok(db) => return Ok(db),
            Err(e) => e,
        };
        match &e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                return Err(format!(
                    "the queue file {} is in use by another process ({e}); give each stackline its own sending_queue.storage.directory",
                    path.display()
                ));
            }
            _ if damaged(&e) && !replaced => {
                corrupt.increment(1);
                salvage::replace_damaged(path, &e, held)?;
                replaced = true;
            }
            redb::DatabaseError::Storage(redb::StorageError::Io(_))
                if std::time::Instant::now() < until =>
            {
                tracing::warn!(path = %path.display(), error = %e, retry_in = ?backoff, "cannot open the sending queue on disk; trying again");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            _ => {
                return Err(format!(
                    "cannot open the queue {}: {e}; check the disk and the permissions of sending_queue.storage.directory",
                    path.display()
                ));
            }
        }
    }
}

/// redb says the file is damaged. A header without redb's magic number comes back as
/// "not a redb database", an I/O error of kind InvalidData: the file is ours, so that
/// is damage too.
fn damaged(e: &redb::DatabaseError) -> bool {
    match e {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(_))
        | redb::DatabaseError::RepairAborted => true,
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => {
            io.kind() == std::io::ErrorKind::InvalidData
        }
        _ => false,
    }
}

/// How long opening a queue file is retried at start after an I/O error.
const OPEN_RETRY_FOR: Duration = Duration::from_secs(30);

/// What went wrong with the queue file.
#[derive(Debug)]
enum Fault {
    /// The disk failed (or failed before: redb's `PreviousIo`); the file is reopened.
    Io(String),
    /// Anything else, e.g. a record redb says is corrupt.
    Other(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Io(m) | Fault::Other(m) => f.write_str(m),
        }
    }
}

/// Opens the journal beside the queue file `path` and puts what it holds (requests
/// acknowledged since the last sync before the process ended) back into `db`, durably;
/// then empties it.
fn recover_journal(db: &Database, path: &Path) -> Result<Journal, String> {
    let jpath = path.with_extension("journal");
    let (mut journal, recovered) = Journal::open(&jpath)
        .map_err(|e| format!("cannot open the queue's journal {}: {e}", jpath.display()))?;
    if recovered.torn_bytes > 0 {
        tracing::warn!(path = %jpath.display(), bytes = recovered.torn_bytes, "the queue's journal ends in a write cut short (its request was never acknowledged); ignored");
    }
    if !recovered.entries.is_empty() {
        let err = |e: &dyn std::fmt::Display| {
            format!(
                "putting the journal {} back into the queue: {e}",
                jpath.display()
            )
        };
        let w = db.begin_write().map_err(|e| err(&e))?;
        let mut restored = 0;
        {
            let mut t = w.open_table(TABLE).map_err(|e| err(&e))?;
            for (seq, rec) in &recovered.entries {
                if t.get(*seq).map_err(|e| err(&e))?.is_none() {
                    t.insert(*seq, rec.as_slice()).map_err(|e| err(&e))?;
                    restored += 1;
                }
            }
        }
        w.commit().map_err(|e| err(&e))?;
        tracing::info!(path = %jpath.display(), requests = restored, "requests acknowledged since the queue's last sync were restored from its journal");
    }
    journal
        .clear()
        .map_err(|e| format!("emptying the queue's journal {}: {e}", jpath.display()))?;
    Ok(journal)
}

/// Bytes of the records `db` holds.
fn stored_bytes(db: &Database) -> Result<u64, redb::Error> {
    let r = db.begin_read()?;
    let t = match r.open_table(TABLE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut n = 0;
    for entry in t.iter()? {
        n += entry?.1.value().len() as u64;
    }
    Ok(n)
}

/// The queue file of an exporter (for tests and tools).
pub fn queue_file(directory: &Path, exporter: &str) -> PathBuf {
    let name: String = exporter
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    directory.join(format!("{name}.redb"))
}

#[cfg(test)]
mod tests;
