//! The queue's journal: what makes an acknowledged request survive SIGKILL when the
//! queue is synced every `sync_interval` rather than at every append.
//!
//! redb makes a commit visible after a restart only once a durable (fsync'd) commit
//! follows it: with `Durability::None` alone, a SIGKILL loses every request since the
//! last sync. So each such append is also written (`write(2)`, no fsync) to this plain
//! append-only file before the request is acknowledged. A write that returned is in the
//! kernel's page cache and survives the process: only a power loss or a kernel crash
//! can lose it, and only until the next sync. Each sync makes redb durable and then
//! empties the journal; at start the journal's entries are put back into redb.
//!
//! An entry is `crc32 (4) | length (4) | seq (8) | record`, the CRC over all after it,
//! so a torn last entry (the process killed mid-write) is recognised and ignored: its
//! request was never acknowledged.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const ENTRY_HEADER: usize = 16;

pub struct Journal {
    file: File,
    path: PathBuf,
}

/// What the journal held at start.
pub struct Recovered {
    pub entries: Vec<(u64, Vec<u8>)>,
    /// Bytes at the end that do not make a whole, valid entry (a torn write).
    pub torn_bytes: u64,
}

impl Journal {
    /// Opens (creating) the journal at `path` and reads what it holds.
    pub fn open(path: &Path) -> std::io::Result<(Journal, Recovered)> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let recovered = parse(&bytes);
        Ok((
            Journal {
                file,
                path: path.to_owned(),
            },
            recovered,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry in a single write.
    pub fn append(&mut self, seq: u64, record: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(record.len())
            .map_err(|_| std::io::Error::other("a queue record over 4 GiB"))?;
        let mut e = Vec::with_capacity(ENTRY_HEADER + record.len());
        e.extend_from_slice(&[0; 4]);
        e.extend_from_slice(&len.to_le_bytes());
        e.extend_from_slice(&seq.to_le_bytes());
        e.extend_from_slice(record);
        let crc = crc32fast::hash(&e[4..]);
        e[..4].copy_from_slice(&crc.to_le_bytes());
        self.file.write_all(&e)
    }

    /// Empties the journal: call only once everything in it is durable elsewhere.
    pub fn clear(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)
    }
}

fn parse(bytes: &[u8]) -> Recovered {
    let mut entries = Vec::new();
    let mut at = 0;
    while let Some(h) = bytes.get(at..at + ENTRY_HEADER) {
        let crc = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        let seq = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
        let Some(whole) = bytes.get(at + 4..at + ENTRY_HEADER + len) else {
            break;
        };
        if crc32fast::hash(whole) != crc {
            break;
        }
        entries.push((seq, whole[ENTRY_HEADER - 4..].to_vec()));
        at += ENTRY_HEADER + len;
    }
    Recovered {
        entries,
        torn_bytes: (bytes.len() - at) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_back_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.journal");
        {
            let (mut j, r) = Journal::open(&path).unwrap();
            assert!(r.entries.is_empty());
            j.append(7, b"seven").unwrap();
            j.append(8, b"").unwrap();
            j.append(9, b"nine").unwrap();
        }
        // Cut the last entry short, as a process killed mid-write would.
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 2).unwrap();
        let (mut j, r) = Journal::open(&path).unwrap();
        assert_eq!(r.entries, vec![(7, b"seven".to_vec()), (8, Vec::new())]);
        assert_eq!(r.torn_bytes, (ENTRY_HEADER + 4 - 2) as u64);
        j.clear().unwrap();
        let (_, r) = Journal::open(&path).unwrap();
        assert!(r.entries.is_empty() && r.torn_bytes == 0);
    }

    #[test]
    fn a_damaged_entry_ends_the_journal_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.journal");
        let (mut j, _) = Journal::open(&path).unwrap();
        j.append(1, b"one").unwrap();
        j.append(2, b"two").unwrap();
        drop(j);
        let mut b = std::fs::read(&path).unwrap();
        b[ENTRY_HEADER + 1] ^= 0xff;
        std::fs::write(&path, &b).unwrap();
        let (_, r) = Journal::open(&path).unwrap();
        assert!(r.entries.is_empty());
        assert_eq!(r.torn_bytes, b.len() as u64);
    }
}
