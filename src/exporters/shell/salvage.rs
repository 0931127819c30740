//! What a queue file redb refuses to open still holds.
//!
//! A file redb says is corrupt is read back ([`replace_damaged`]): each record describes itself
//! (`record.rs`), so the requests it still holds are found by scanning the file's bytes,
//! without redb's structures, and put into a new file, which then takes its place.
//!
//! A scan also finds the copies redb left in freed pages, of records settled long ago
//! (redb copies on write). So the queue keeps two marks beside its file (`.floor`):
//! - the *floor*, the smallest sequence number it still holds, rewritten as deliveries
//!   raise it: every record below it was settled, and is not replayed;
//! - the *reservation*, above every sequence number ever handed out for this queue,
//!   made durable before a number at or above the old one is used: so numbers are never
//!   used twice, even across restarts with records still held, and a candidate at or
//!   above it is not one of the queue's records (it is counted as foreign and skipped).
//!
//! A record above the floor that was delivered out of turn (by another consumer, or
//! while an older one was retried) may be delivered again: a salvage is at least once,
//! where the queue is otherwise exactly once.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use redb::Database;

use super::record::{self, TABLE};

/// The marks file. Each mark is `value (8) | crc32 (4)`; one that fails its CRC reads
/// as 0. The floor (at 0) is written in place without fsync: after a crash it holds the
/// value written last or an earlier one, or 0, and a floor too low replays settled
/// records again (duplicates), never loses one. The reservation is written with fsync,
/// alternately at two places in other disk sectors, so that a write torn by a crash
/// leaves the previous reservation whole; the larger valid one counts.
pub(super) struct Marks {
    file: File,
    path: PathBuf,
    floor: AtomicU64,
    /// The next reservation slot to write (0 or 1).
    slot: AtomicU64,
}

const RESERVED_AT: [u64; 2] = [4096, 8192];

/// What the marks file held when it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Held {
    /// Every sequence number below it was settled.
    pub floor: u64,
    /// No sequence number at or above it was handed out (0: not known).
    pub reserved: u64,
}

fn read_mark(file: &File, at: u64) -> u64 {
    let mut b = [0u8; 12];
    match file.read_exact_at(&mut b, at) {
        Ok(()) if crc32fast::hash(&b[..8]).to_le_bytes() == b[8..] => {
            u64::from_le_bytes(b[..8].try_into().unwrap_or_default())
        }
        _ => 0,
    }
}

fn write_mark(file: &File, at: u64, value: u64) -> io::Result<()> {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&value.to_le_bytes());
    let crc = crc32fast::hash(&b[..8]);
    b[8..].copy_from_slice(&crc.to_le_bytes());
    file.write_all_at(&b, at)
}

impl Marks {
    /// Opens (creating) the marks beside the queue file `queue`; returns them with the
    /// values they hold (0 for each one missing or damaged).
    pub fn open(queue: &Path) -> io::Result<(Marks, Held)> {
        let path = queue.with_extension("floor");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let [r0, r1] = RESERVED_AT.map(|at| read_mark(&file, at));
        let held = Held {
            floor: read_mark(&file, 0),
            reserved: r0.max(r1),
        };
        let m = Marks {
            file,
            path,
            floor: AtomicU64::new(held.floor),
            // The smaller (older) slot is written next.
            slot: AtomicU64::new(u64::from(r0 > r1)),
        };
        Ok((m, held))
    }

    /// The floor last written (or read at open).
    pub fn floor(&self) -> u64 {
        self.floor.load(Ordering::Relaxed)
    }

    /// Records that every sequence number below `floor` is settled.
    pub fn set_floor(&self, floor: u64) {
        if self.floor.load(Ordering::Relaxed) == floor {
            return;
        }
        match write_mark(&self.file, 0, floor) {
            Ok(()) => self.floor.store(floor, Ordering::Relaxed),
            // Only a salvage reads it: a stale floor there means duplicates, not loss.
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot write the queue's floor")
            }
        }
    }

    /// Durably records that no sequence number at or above `upto` is handed out yet.
    /// Called with the numbers' lock held, before the first number of a new block.
    pub fn reserve(&self, upto: u64) -> io::Result<()> {
        // The slot flips only once a write is durable: a retry after a failure goes over
        // the same slot, never over the one holding the newest good reservation.
        let slot = self.slot.load(Ordering::Relaxed) as usize;
        write_mark(&self.file, RESERVED_AT[slot], upto)?;
        self.file.sync_data()?;
        self.slot.store(slot as u64 ^ 1, Ordering::Relaxed);
        Ok(())
    }
}

/// What a scan found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Found {
    /// Whole records at or above the floor, each sequence number once.
    pub records: u64,
    /// Whole records below the floor (settled before the file was damaged).
    pub settled: u64,
    /// Headers whole but with a sequence number the queue never handed out (at or
    /// above the reservation): bytes of a payload that look like a record.
    pub foreign: u64,
    /// Candidates not checked, once `WORK` times the file's size had been read.
    pub cut_short: bool,
}

const CHUNK: usize = 4 << 20;
/// Bytes read to check candidates' payloads, at most, as a multiple of the file's
/// size: each candidate costs its length to check, so payloads full of forged headers
/// cannot make a scan quadratic. Past it, candidates are skipped (and the scan says so).
const WORK: u64 = 4;

/// Scans `path` for records with a sequence number in `[held.floor, held.reserved)`
/// (no upper bound if the reservation is not known), and hands each (first copy of
/// each sequence number) to `keep` with its bytes.
pub(super) fn scan(
    path: &Path,
    held: Held,
    mut keep: impl FnMut(u64, Vec<u8>) -> io::Result<()>,
) -> io::Result<Found> {
    let f = File::open(path)?;
    let size = f.metadata()?.len();
    let mut found = Found::default();
    let mut seen = HashSet::new();
    let mut budget = size.saturating_mul(WORK).max(1 << 20);
    let mut buf = vec![0u8; CHUNK + record::MAGIC.len() - 1];
    let mut head = [0u8; record::HEADER];
    let mut piece = Vec::new();
    let upper = if held.reserved == 0 {
        u64::MAX
    } else {
        held.reserved
    };
    // Candidates inside a whole record just read (its payload) are not records.
    let mut skip_to = 0u64;
    let mut pos = 0u64;
    while pos < size {
        let n = (size - pos).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], pos)?;
        for i in memchr::memmem::find_iter(&buf[..n], &record::MAGIC) {
            let at = pos + i as u64;
            if i >= CHUNK || at < skip_to {
                continue;
            }
            if at + record::HEADER as u64 > size {
                break;
            }
            // Most headers are in the chunk already read.
            let h = match buf[..n].get(i..i + record::HEADER) {
                Some(h) => record::header(h),
                None => {
                    f.read_exact_at(&mut head, at)?;
                    record::header(&head)
                }
            };
            let Some(h) = h else { continue };
            if at + h.len > size {
                continue;
            }
            if h.seq >= upper {
                found.foreign += 1;
                continue;
            }
            if h.len > budget {
                found.cut_short = true;
                continue;
            }
            budget -= h.len;
            // The payload's CRC is checked as it streams by; memory is taken only for
            // a record that is whole.
            if !payload_matches(&f, at, &h, &mut piece)? {
                continue;
            }
            skip_to = at + h.len;
            if h.seq < held.floor {
                found.settled += 1;
            } else if seen.insert(h.seq) {
                let mut rec = vec![0u8; h.len as usize];
                f.read_exact_at(&mut rec, at)?;
                if record::decode(&rec).is_some() {
                    found.records += 1;
                    keep(h.seq, rec)?;
                }
            }
        }
        pos += CHUNK as u64;
    }
    Ok(found)
}

/// Whether the payload after the header at `at` has the CRC the header gives.
fn payload_matches(f: &File, at: u64, h: &record::Header, piece: &mut Vec<u8>) -> io::Result<bool> {
    const PIECE: u64 = 1 << 20;
    let mut hasher = crc32fast::Hasher::new();
    let (mut from, end) = (at + record::HEADER as u64, at + h.len);
    while from < end {
        let n = (end - from).min(PIECE) as usize;
        piece.resize(n, 0);
        f.read_exact_at(piece, from)?;
        hasher.update(piece);
        from += n as u64;
    }
    Ok(hasher.finalize() == h.payload_crc)
}

/// Where the requests of a damaged queue file are read back into.
fn salvage_file(path: &Path) -> PathBuf {
    path.with_extension("redb.salvage")
}

/// Replaces the damaged queue file `path` by one holding the requests still readable
/// in it (those `held` says may be pending: see `salvage.rs`), in steps that a crash
/// at any point leaves safe: the requests are read into `….redb.salvage` and committed
/// durably; then the damaged file is moved aside (`….redb.corrupt-<time>`, kept for
/// inspection) and the new one put in its place. Until the first rename the damaged
/// file is where it was, and is read again at the next start; after it,
/// [`finish_replacement`] completes the second. If the requests cannot be read back
/// (a full disk), the damaged file stays in place and the error says so.
pub(super) fn replace_damaged(
    path: &Path,
    why: &redb::DatabaseError,
    held: Held,
) -> Result<(), String> {
    let into = salvage_file(path);
    tracing::error!(path = %path.display(), error = %why, "the sending queue on disk is corrupt and cannot be opened; the requests still readable in it are read into a new file, which takes its place, and the old one is kept aside");
    let _ = std::fs::remove_file(&into);
    let read_back = Database::create(&into)
        .map_err(|e| e.to_string())
        .and_then(|db| salvage_into(&db, path, held));
    let (found, samples) = read_back.map_err(|e| {
        let _ = std::fs::remove_file(&into);
        format!(
            "cannot read the requests in the corrupt queue {} back into {}: {e}; it is left in place and read again at the next start (if the disk is full, free space in sending_queue.storage.directory)",
            path.display(),
            into.display()
        )
    })?;
    let aside = aside_name(path);
    // The read-back file's name is durable before the damaged file leaves its place.
    let moved = sync_dir(path)
        .and_then(|_| std::fs::rename(path, &aside))
        .and_then(|_| {
            std::fs::rename(&into, path).inspect_err(|_| {
                // Back where it was, so that nothing creates an empty queue in its place.
                let _ = std::fs::rename(&aside, path);
            })
        })
        .and_then(|_| sync_dir(path));
    moved.map_err(|e| {
        format!(
            "cannot put the read-back queue {} in place of the corrupt one: {e}",
            into.display()
        )
    })?;
    tracing::warn!(path = %path.display(), aside = %aside.display(), requests = found.records, samples, settled_before = found.settled, foreign = found.foreign, floor = held.floor, reserved = held.reserved, "requests read back from the corrupt sending queue; they are replayed (those delivered out of turn before the damage may be delivered again)");
    if found.cut_short {
        tracing::error!(aside = %aside.display(), "reading the corrupt sending queue back skipped candidate records: it holds more of them than it can hold real ones");
    }
    Ok(())
}

/// `<queue>.redb.corrupt-<unix seconds>`, with `-N` added if that name is taken.
fn aside_name(path: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = path.with_extension(format!("redb.corrupt-{secs}"));
    let mut p = base.clone();
    let mut n = 0;
    while p.exists() {
        n += 1;
        p = PathBuf::from(format!("{}-{n}", base.display()));
    }
    p
}

/// Completes a replacement a crash interrupted: a read-back file with the damaged one
/// already moved aside takes its place; one beside the damaged file is unfinished, and
/// is removed (the damaged file is read again).
pub(super) fn finish_replacement(path: &Path) -> Result<(), String> {
    let into = salvage_file(path);
    if !into.exists() {
        return Ok(());
    }
    let done = if path.exists() {
        std::fs::remove_file(&into)
    } else {
        tracing::warn!(path = %path.display(), "putting the read-back sending queue in place of the corrupt one (a replacement cut short by a crash)");
        std::fs::rename(&into, path).and_then(|_| sync_dir(path))
    };
    done.map_err(|e| {
        format!(
            "cannot finish replacing the corrupt queue {}: {e}",
            path.display()
        )
    })
}

/// fsyncs the directory holding `path`, so renames in it survive a power loss.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// Puts the whole records found in the corrupt file `old` that may be pending into the
/// new queue `db`, durably; returns what was found and the samples put back.
fn salvage_into(db: &Database, old: &Path, held: Held) -> Result<(Found, u64), String> {
    let mut samples = 0u64;
    let w = db.begin_write().map_err(|e| e.to_string())?;
    let found = {
        let mut t = w.open_table(TABLE).map_err(|e| e.to_string())?;
        scan(old, held, |seq, rec| {
            samples += record::decode(&rec).map_or(0, |i| i.samples);
            t.insert(seq, rec.as_slice())
                .map(|_| ())
                .map_err(std::io::Error::other)
        })
        .map_err(|e| e.to_string())?
    };
    w.commit().map_err(|e| e.to_string())?;
    Ok((found, samples))
}

#[cfg(test)]
mod tests;
