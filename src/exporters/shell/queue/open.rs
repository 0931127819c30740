//! Opening the queue's file, and reopening it after a disk fault: a damaged file is
//! salvaged into a new one, the journal recovered, the bytes held counted again.

use super::super::journal::Journal;
use super::super::record::TABLE;
use super::super::salvage::{self};
use super::*;
use redb::{Database, ReadableDatabase, ReadableTable};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Opens (creating) the queue file. An I/O error is tried again for up to
/// OPEN_RETRY_FOR (a disk that is briefly full or failing at start); a file redb says
/// is corrupt is counted and replaced by one holding the requests still readable in it
/// ([`salvage::replace_damaged`]); anything else stops the exporter with a message saying what
/// to do.
pub(super) fn open_db(
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
pub(super) fn damaged(e: &redb::DatabaseError) -> bool {
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
pub(super) const OPEN_RETRY_FOR: Duration = Duration::from_secs(30);

/// What went wrong with the queue file.
#[derive(Debug)]
pub(super) enum Fault {
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
pub(super) fn recover_journal(db: &Database, path: &Path) -> Result<Journal, String> {
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
pub(super) fn stored_bytes(db: &Database) -> Result<u64, redb::Error> {
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

impl Disk {
    /// Reopens the file in the background, once per failure, with backoff.
    pub(super) fn start_reopen(&self) {
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

    pub(super) fn reopen(me: std::sync::Weak<Disk>) {
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
}
