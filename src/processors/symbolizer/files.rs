//! Finding the ELF file to symbolize a mapping with: the file behind the mapping on this
//! host (through `/proc/PID/map_files` or `/proc/PID/root`, so containers resolve), or
//! by GNU build ID in the debug directories (`.build-id/ab/cdef….debug`, or a flat
//! directory indexed by the build IDs of the files in it).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::receivers::ebpf_profiler::procfs::{map_file, read_build_id};

/// Whether an ELF file carries DWARF (a stripped binary does not; its debug file does).
pub fn has_dwarf(path: &Path) -> bool {
    use object::{Object, ObjectSection, SectionKind};
    let Ok(data) = map_file(path) else {
        return false;
    };
    object::File::parse(&*data).is_ok_and(|f| {
        f.section_by_name(".debug_info")
            .is_some_and(|s| s.kind() != SectionKind::UninitializedData && s.size() > 0)
    })
}

/// A PT_LOAD segment.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    pub offset: u64,
    pub filesz: u64,
    pub vaddr: u64,
    pub executable: bool,
}

/// An ELF file chosen to symbolize a mapping with, and the segments that turn the
/// mapping's file offsets into the file's virtual addresses.
#[derive(Debug, Clone)]
pub struct ElfFile {
    pub path: PathBuf,
    pub segments: Vec<Segment>,
}

const PAGE: u64 = 4096;

/// The PT_LOAD segments of an ELF file.
pub fn segments(path: &Path) -> Option<Vec<Segment>> {
    use object::read::elf::{ElfFile64, ProgramHeader};
    let data = map_file(path).ok()?;
    let elf = ElfFile64::<object::Endianness>::parse(&*data).ok()?;
    let e = elf.endian();
    Some(
        elf.elf_program_headers()
            .iter()
            .filter(|p| p.p_type(e) == object::elf::PT_LOAD)
            .map(|p| Segment {
                offset: p.p_offset(e),
                filesz: p.p_filesz(e),
                vaddr: p.p_vaddr(e),
                executable: p.p_flags(e) & object::elf::PF_X != 0,
            })
            .collect(),
    )
}

impl ElfFile {
    /// `path` is symbolized; `layout` (the binary the process ran, when on this host)
    /// gives the segments. Separate debug files keep segment addresses but zero their
    /// file offsets and sizes, so they cannot translate offsets on their own.
    pub fn open(path: &Path, layout: Option<&Path>) -> Option<ElfFile> {
        let segments = segments(layout.unwrap_or(path))?;
        Some(ElfFile {
            path: path.to_path_buf(),
            segments,
        })
    }

    /// The virtual address of `file_offset`, which lies in a mapping that starts at
    /// `mapping_offset` in the file.
    pub fn vaddr(&self, file_offset: u64, mapping_offset: u64) -> Option<u64> {
        if let Some(s) = self
            .segments
            .iter()
            .find(|s| s.filesz > 0 && s.offset <= file_offset && file_offset < s.offset + s.filesz)
        {
            return Some(file_offset - s.offset + s.vaddr);
        }
        // Only a debug file's headers: the kernel mapped the executable segment from its
        // page-aligned offset at its page-aligned address, so count from there.
        let mut exec = self.segments.iter().filter(|s| s.executable);
        match (exec.next(), exec.next()) {
            (Some(s), None) => Some(file_offset - mapping_offset + (s.vaddr & !(PAGE - 1))),
            _ => None,
        }
    }
}

/// Build ID → file, for flat debug directories; rebuilt when a directory changes.
pub struct BuildIdIndex {
    dirs: Vec<PathBuf>,
    by_id: HashMap<String, PathBuf>,
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
                if p.is_file()
                    && let Ok(Some(id)) = read_build_id(&p)
                {
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
    /// then the flat index.
    pub fn find(&self, build_id: &str) -> Option<PathBuf> {
        if build_id.len() < 3 {
            return None;
        }
        let (head, tail) = build_id.split_at(2);
        for dir in &self.dirs {
            for name in [format!("{tail}.debug"), tail.to_owned()] {
                let p = dir.join(".build-id").join(head).join(name);
                if p.is_file() {
                    return Some(p);
                }
            }
        }
        self.by_id.get(build_id).cloned()
    }
}

/// Candidate paths of a mapped file on this host, most specific first.
pub fn host_candidates(pid: Option<u32>, path: &str, start: u64, limit: u64) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(pid) = pid {
        v.push(PathBuf::from(format!(
            "/proc/{pid}/map_files/{start:x}-{limit:x}"
        )));
        if path.starts_with('/') {
            v.push(PathBuf::from(format!("/proc/{pid}/root{path}")));
        }
    }
    if path.starts_with('/') {
        v.push(PathBuf::from(path));
    }
    v
}
