//! What a queue file redb refuses to open still holds.
//!
//! A file redb says is corrupt is moved aside (`queue.rs`), and the requests it can
//! still read are replayed from it: each record describes itself (`record.rs`), so
//! they are found by scanning the file's bytes, without redb's structures.
//!
//! A scan also finds the copies redb left in freed pages, of records settled long ago
//! (redb copies on write). So the queue keeps a *floor* beside its file: the smallest
//! sequence number it still held, rewritten as deliveries raise it. Every record below
//! it was settled, and is not replayed. A record above it that was delivered out of
//! turn (by another consumer, or while an older one was retried) may be delivered
//! again: a salvage is at least once, where the queue is otherwise exactly once.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::record;

/// The floor file: `floor (8) | crc32 (4)`. Written in place without fsync: after a
/// crash it holds the value written last or an earlier one, or fails its CRC and reads
/// as 0. A floor that is too low replays settled records again (duplicates), never
/// loses one, so none of that costs data.
pub(super) struct Floor {
    file: File,
    path: PathBuf,
    written: AtomicU64,
}

impl Floor {
    /// Opens (creating) the floor beside the queue file `queue`; returns it with the
    /// value it holds (0 if none).
    pub fn open(queue: &Path) -> io::Result<(Floor, u64)> {
        let path = queue.with_extension("floor");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut b = [0u8; 12];
        let value = match file.read_exact_at(&mut b, 0) {
            Ok(()) if crc32fast::hash(&b[..8]).to_le_bytes() == b[8..] => {
                u64::from_le_bytes(b[..8].try_into().unwrap_or_default())
            }
            _ => 0,
        };
        let f = Floor {
            file,
            path,
            written: AtomicU64::new(value),
        };
        Ok((f, value))
    }

    /// Records that every sequence number below `floor` is settled.
    pub fn set(&self, floor: u64) {
        if self.written.swap(floor, Ordering::Relaxed) == floor {
            return;
        }
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&floor.to_le_bytes());
        let crc = crc32fast::hash(&b[..8]);
        b[8..].copy_from_slice(&crc.to_le_bytes());
        if let Err(e) = self.file.write_all_at(&b, 0) {
            // Only a salvage reads it: a stale floor there means duplicates, not loss.
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the queue's floor");
        }
    }
}

/// What a scan found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Found {
    /// Whole records at or above the floor, each sequence number once.
    pub records: u64,
    /// Whole records below the floor (settled before the file was damaged).
    pub settled: u64,
    /// The scan stopped early, having read `WORK` times the file's size.
    pub cut_short: bool,
}

const CHUNK: usize = 4 << 20;
/// Bytes read to check candidates, at most, as a multiple of the file's size: each
/// candidate costs its whole length to check, so payloads full of forged headers
/// cannot make a scan quadratic.
const WORK: u64 = 4;

/// Scans `path` for records with a sequence number of at least `floor`, and hands each
/// (first copy of each sequence number) to `keep` with its bytes.
pub(super) fn scan(
    path: &Path,
    floor: u64,
    mut keep: impl FnMut(u64, Vec<u8>) -> io::Result<()>,
) -> io::Result<Found> {
    let f = File::open(path)?;
    let size = f.metadata()?.len();
    let mut found = Found::default();
    let mut seen = HashSet::new();
    let mut budget = size.saturating_mul(WORK).max(1 << 20);
    let mut buf = vec![0u8; CHUNK + record::MAGIC.len() - 1];
    let mut head = [0u8; record::HEADER];
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
            f.read_exact_at(&mut head, at)?;
            let Some(h) = record::header(&head) else {
                continue;
            };
            if at + h.len > size {
                continue;
            }
            if h.len > budget {
                found.cut_short = true;
                return Ok(found);
            }
            budget -= h.len;
            let mut rec = vec![0u8; h.len as usize];
            f.read_exact_at(&mut rec, at)?;
            if record::decode(&rec).is_none() {
                continue;
            }
            skip_to = at + h.len;
            if h.seq < floor {
                found.settled += 1;
            } else if seen.insert(h.seq) {
                found.records += 1;
                keep(h.seq, rec)?;
            }
        }
        pos += CHUNK as u64;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exporters::shell::Encoded;

    fn rec(seq: u64) -> Vec<u8> {
        record::encode(
            seq,
            &Encoded {
                samples: seq,
                profiles: 1,
                bytes: bytes::Bytes::from(vec![seq as u8; 1000 + seq as usize]),
            },
        )
    }

    #[test]
    fn finds_whole_records_at_or_above_the_floor_once_each_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.redb");
        let mut file = vec![0x55u8; 300];
        // Settled records, a damaged one, two copies of one, one over a chunk boundary.
        for s in [1, 2, 10, 11, 11] {
            file.extend_from_slice(&rec(s));
            file.extend_from_slice(&[0; 17]);
        }
        let mut damaged = rec(12);
        damaged[500] ^= 1;
        file.extend_from_slice(&damaged);
        file.resize(CHUNK - 20, 0);
        file.extend_from_slice(&rec(13));
        let mut torn = rec(14);
        torn.truncate(200);
        file.extend_from_slice(&torn);
        std::fs::write(&path, &file).unwrap();

        let mut got = Vec::new();
        let found = scan(&path, 10, |s, r| {
            got.push((s, record::decode(&r).unwrap().samples));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, [(10, 10), (11, 11), (13, 13)]);
        assert_eq!(
            found,
            Found {
                records: 3,
                settled: 2,
                cut_short: false
            }
        );
    }

    #[test]
    fn a_record_inside_another_records_payload_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.redb");
        let inner = rec(99);
        let outer = record::encode(
            5,
            &Encoded {
                samples: 1,
                profiles: 1,
                bytes: bytes::Bytes::from(inner),
            },
        );
        std::fs::write(&path, &outer).unwrap();
        let mut got = Vec::new();
        scan(&path, 0, |s, _| {
            got.push(s);
            Ok(())
        })
        .unwrap();
        assert_eq!(got, [5]);
    }

    #[test]
    fn the_floor_reads_back_and_a_damaged_one_reads_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("q.redb");
        let (f, v) = Floor::open(&q).unwrap();
        assert_eq!(v, 0);
        f.set(1234);
        drop(f);
        assert_eq!(Floor::open(&q).unwrap().1, 1234);
        let p = q.with_extension("floor");
        let mut b = std::fs::read(&p).unwrap();
        b[0] ^= 1;
        std::fs::write(&p, b).unwrap();
        assert_eq!(Floor::open(&q).unwrap().1, 0);
    }
}
