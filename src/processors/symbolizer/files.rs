//! Finding the ELF file to symbolize a mapping with: the file behind the mapping on this
//! host (through `/proc/PID/map_files` or `/proc/PID/root`, so containers resolve), or
//! by GNU build ID in the debug directories (`.build-id/ab/cdef….debug`, or a flat
//! directory indexed by the build IDs of the files in it).

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::host::elf::BuildId;
use crate::host::open::open_regular;

pub use crate::host::elf::Segment;

/// An ELF file chosen to symbolize a mapping with, open, and the segments that turn the
/// mapping's file offsets into the file's virtual addresses.
///
/// blazesym is given `path`, `/proc/self/fd/N` of the file held here, never the path a
/// process named: what it opens is what was checked, however the process changes its
/// files afterwards. And the file is one safe to memory-map (see
/// [`mappable`](crate::host::open::mappable)).
#[derive(Debug)]
pub struct ElfFile {
    pub path: PathBuf,
    pub segments: Vec<Segment>,
    _file: File,
}

const PAGE: u64 = 4096;

/// The PT_LOAD segments of the ELF file at `path`.
pub fn segments(path: &Path) -> Option<Vec<Segment>> {
    crate::host::elf::segments(&open_regular(path).ok()?)
}

impl ElfFile {
    /// `file` is symbolized; `layout` (the binary the process ran, when on this host)
    /// gives the segments. Separate debug files keep segment addresses but zero their
    /// file offsets and sizes, so they cannot translate offsets on their own.
    pub fn new(file: File, layout: Option<&File>) -> Option<ElfFile> {
        let segments = crate::host::elf::segments(layout.unwrap_or(&file))?;
        Some(ElfFile {
            path: PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())),
            segments,
            _file: file,
        })
    }

    /// The virtual address of `file_offset`, which lies in a mapping that starts at
    /// `mapping_offset` in the file.
    pub fn vaddr(&self, file_offset: u64, mapping_offset: u64) -> Option<u64> {
        if let Some(s) = self
            .segments
            .iter()
            .find(|s| s.filesz > 0 && s.offset <= file_offset && file_offset - s.offset < s.filesz)
        {
            return (file_offset - s.offset).checked_add(s.vaddr);
        }
        // Only a debug file's headers: the kernel mapped the executable segment from its
        // page-aligned offset at its page-aligned address, so count from there.
        let mut exec = self.segments.iter().filter(|s| s.executable);
        match (exec.next(), exec.next()) {
            (Some(s), None) => file_offset
                .checked_sub(mapping_offset)?
                .checked_add(s.vaddr & !(PAGE - 1)),
            _ => None,
        }
    }
}

/// Build ID → file, for flat debug directories; rebuilt when a directory changes.
pub struct BuildIdIndex {
    dirs: Vec<PathBuf>,
    by_id: HashMap<BuildId, PathBuf>,
    stamps: Vec<Option<SystemTime>>,
    checked: Instant,
    every: Duration,
}

impl BuildIdIndex {
    pub fn new(dirs: Vec<PathBuf>, every: Duration) -> Self {
        let mut idx = BuildIdIndex {
            stamps: vec![None; dirs.len()],
            dirs,
            by_id: HashMap::new(),
            checked: Instant::now(),
            every,
        };
        idx.rebuild();
        idx
    }

    fn stamp(dir: &Path) -> Option<SystemTime> {
        fs::metadata(dir).and_then(|m| m.modified()).ok()
    }

    fn rebuild(&mut self) {
        self.by_id.clear();
        for (i, dir) in self.dirs.iter().enumerate() {
            self.stamps[i] = Self::stamp(dir);
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if let Ok(Some(id)) = crate::host::elf::build_id_at(&p) {
                    // A debug file beats a binary with the same build ID: it has the DWARF.
                    let is_debug = p.extension().is_some_and(|x| x == "debug");
                    if is_debug || !self.by_id.contains_key(&id) {
                        self.by_id.insert(id, p);
                    }
                }
            }
        }
    }

    /// Re-indexes if a directory's modification time changed since the last look.
    pub fn refresh(&mut self) {
        if self.checked.elapsed() < self.every {
            return;
        }
        self.checked = Instant::now();
        let changed = self
            .dirs
            .iter()
            .zip(&self.stamps)
            .any(|(d, s)| Self::stamp(d) != *s);
        if changed {
            self.rebuild();
        }
    }

    /// A file with this build ID: `.build-id/ab/cdef….debug`, `.build-id/ab/cdef…`,
    /// then the flat index. The path is built from hex digits only, so it stays under
    /// its directory.
    pub fn find(&self, build_id: &BuildId) -> Option<PathBuf> {
        if let Some((head, tail)) = build_id.build_id_dir() {
            for dir in &self.dirs {
                for name in [format!("{tail}.debug"), tail.to_owned()] {
                    let p = dir.join(".build-id").join(head).join(name);
                    if p.is_file() {
                        return Some(p);
                    }
                }
            }
        }
        self.by_id.get(build_id).cloned()
    }
}

/// Where a mapped file may be found on this host.
#[derive(Debug, Clone, PartialEq)]
pub enum Candidate {
    /// `/proc/PID/map_files/START-LIMIT`: the very file mapped, across mount namespaces.
    MapFiles { pid: u32, start: u64, limit: u64 },
    /// The mapping's path inside the process's root (symlinks cannot leave it).
    InRoot { pid: u32, path: String },
    /// The mapping's path on the host.
    Host(PathBuf),
}

impl Candidate {
    /// Opens the candidate without following it out of its root, without blocking, and
    /// only if it is a regular file (see [`crate::host::open`]).
    pub fn open(&self) -> std::io::Result<File> {
        match self {
            Candidate::MapFiles { pid, start, limit } => open_regular(Path::new(&format!(
                "/proc/{pid}/map_files/{start:x}-{limit:x}"
            ))),
            Candidate::InRoot { pid, path } => crate::host::open::open_in_root(*pid, path),
            Candidate::Host(p) => open_regular(p),
        }
    }
}

/// Candidate places of a mapped file on this host, most specific first.
pub fn host_candidates(pid: Option<u32>, path: &str, start: u64, limit: u64) -> Vec<Candidate> {
    let mut v = Vec::new();
    if let Some(pid) = pid {
        v.push(Candidate::MapFiles { pid, start, limit });
        if path.starts_with('/') {
            v.push(Candidate::InRoot {
                pid,
                path: path.to_owned(),
            });
        }
    }
    if path.starts_with('/') {
        v.push(Candidate::Host(PathBuf::from(path)));
    }
    v
}
