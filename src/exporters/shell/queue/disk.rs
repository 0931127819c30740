//! The queue on disk: records in a redb file (each with its CRC and sequence number),
//! the numbers held and reserved, appends, reads, removals and syncs.

use super::super::journal::Journal;
use super::super::record::{self, HEADER, TABLE};
use super::super::salvage::Marks;
use super::super::{Encoded, StorageConfig};
use super::*;
use crate::telemetry::names;
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// The queue's redb file.
pub(super) struct Disk {
    /// None while it is being reopened after an I/O error.
    pub(super) db: std::sync::RwLock<Option<Database>>,
    /// An I/O error was met: redb refuses every call after one (`PreviousIo`) until the
    /// file is opened again, which a background thread does, with backoff.
    pub(super) broken: Arc<AtomicBool>,
    /// Itself, for the reopen thread (set once it is in its Arc).
    pub(super) me: std::sync::OnceLock<std::sync::Weak<Disk>>,
    pub(super) path: PathBuf,
    /// With `sync_interval` > 0: appends since the last sync, so that they survive
    /// SIGKILL (see `journal.rs`). Its lock also orders appends against syncs.
    pub(super) journal: Option<std::sync::Mutex<Journal>>,
    pub(super) held: std::sync::Mutex<Held>,
    /// Beside the file, for a salvage: the smallest sequence number still held, and the
    /// reservation above every number handed out.
    pub(super) marks: Marks,
    pub(super) bytes: AtomicU64,
    pub(super) max_bytes: u64,
    /// fsync every append (sync_interval 0), or leave it to the syncer.
    pub(super) sync_each: bool,
    pub(super) dirty: Arc<AtomicBool>,
    pub(super) room: Arc<Notify>,
    pub(super) replay: std::sync::Mutex<Vec<u64>>,
    pub(super) replayed: AtomicU64,
    pub(super) corrupt: metrics::Counter,
    pub(super) bytes_gauge: metrics::Gauge,
}

/// The sequence numbers the queue holds (appended and not yet settled).
pub(super) struct Held {
    pub(super) next: u64,
    /// `marks` says durably that no number at or above this was handed out; `next`
    /// reaching it reserves the next block first.
    pub(super) reserved: u64,
    pub(super) seqs: std::collections::BTreeSet<u64>,
    /// The floor may not rise above this (`u64::MAX`: no pin): the floor found at start
    /// when records past an unreadable page could not be seen.
    pub(super) pin: u64,
}

/// Sequence numbers reserved at a time (one fsync of the marks file each).
pub(super) const RESERVE_BLOCK: u64 = 1 << 16;

impl Held {
    /// Every sequence number below this is settled.
    pub(super) fn floor(&self) -> u64 {
        self.seqs
            .first()
            .copied()
            .unwrap_or(self.next)
            .min(self.pin)
    }
}

impl Disk {
    pub(super) fn open(cfg: &StorageConfig, exporter: &str) -> Result<Disk, String> {
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

    pub(super) fn err(&self, what: &str, e: impl std::fmt::Display) -> String {
        format!("{what} the queue {}: {e}", self.path.display())
    }

    /// Reads what the file holds at start: valid records are replayed in order,
    /// damaged ones removed and counted.
    pub(super) fn scan(&self, exporter: &str) -> Result<(), String> {
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

    pub(super) fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `seq` is settled (delivered, given up, or never written): it no longer holds
    /// the floor down.
    pub(super) fn settled(&self, seq: u64) {
        let mut held = self.held();
        held.seqs.remove(&seq);
        self.marks.set_floor(held.floor());
    }

    pub(super) fn replay_seqs(&self) -> Vec<u64> {
        std::mem::take(&mut *self.replay.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(super) fn has_room(&self, len: usize) -> bool {
        self.bytes.load(Ordering::Relaxed) + (HEADER + len) as u64 <= self.max_bytes
    }

    /// Runs `f` on the open file. An I/O error (or redb's `PreviousIo`, its answer to
    /// every call after one) marks the queue broken and starts reopening it.
    pub(super) fn with_db<T>(
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

    /// Commits `item`; with `sync_interval: 0s` it is fsync'd before this returns,
    /// otherwise written to the journal first. Either way it survives SIGKILL once this
    /// returns.
    pub(super) fn append(&self, item: &Encoded) -> Result<u64, String> {
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

    pub(super) fn write(&self, seq: u64, rec: &[u8]) -> Result<u64, String> {
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
    pub(super) fn read(&self, seq: u64) -> Result<Option<Encoded>, Fault> {
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
    pub(super) fn remove(&self, seq: u64) {
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
    pub(super) fn sync(&self) -> Result<(), String> {
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
    pub(super) fn start_syncer(disk: std::sync::Weak<Disk>, every: Duration) {
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
    pub(super) fn finish(&self) -> u64 {
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
