//! Which file to read a mapping's symbols from: the process's own view of it, a debug file by build ID or debuglink, and compressed sections unpacked within bounds.

use super::*;

/// Files blazesym may hold open, and bytes of copies it may keep mapped, before the
/// symbolizer is made anew (which closes them; resolved frames stay cached).
pub(super) const MAX_HANDED_FILES: usize = 256;

pub(super) const MAX_COPIED_BYTES: u64 = 256 << 20;

/// Decompressed copies kept for reuse (each holds disk, not memory).
pub(super) const MAX_UNPACKED: usize = 64;

/// Largest decompressed copy; a larger file is decompressed in memory by blazesym.
pub(super) const MAX_UNPACK: u64 = 512 << 20;

/// Disk that copies may hold before blazesym is made anew, which closes them.
pub(super) const MAX_UNPACKED_BYTES: u64 = 1 << 30;

/// A file larger than this that has to be copied (see `host::open::mappable`) is not
/// symbolized.
pub(super) const MAX_COPY: u64 = 1 << 30;

impl Worker {
    pub(super) fn choose_file(
        &mut self,
        build_id: Option<&BuildId>,
        pid: Option<u32>,
        path: &str,
        start: u64,
        limit: u64,
    ) -> FileChoice {
        // Per process when files are looked up on this host: two processes may map
        // different files at one path that declare one build ID (containers, or a
        // forged ELF), and each must get its own. Debug directories are not per process.
        let key = (
            build_id.cloned(),
            if build_id.is_some() && !self.cfg.uses(SymbolSource::Host) {
                None
            } else {
                pid
            },
            path.to_owned(),
            if build_id.is_some() { 0 } else { start },
        );
        if let Some(c) = self.files.get(&key) {
            // The file is held open: it stays readable after its process exits.
            return c.clone();
        }
        // Bound the table (mappings come and go with processes), and what blazesym holds.
        if self.files.len() > 65_536
            || self.handed >= MAX_HANDED_FILES
            || self.copied >= MAX_COPIED_BYTES
            || self.unpacked_bytes >= MAX_UNPACKED_BYTES
        {
            self.files.clear();
            self.sym = make_symbolizer(&self.cfg, false);
            self.sym_trusted = make_symbolizer(&self.cfg, true);
            self.handed = 0;
            self.copied = 0;
            // The copies close with blazesym's handles and these: their disk is freed.
            self.unpacked.clear();
            self.unpacked_bytes = 0;
        }
        let by_id = build_id
            .filter(|_| self.cfg.uses(SymbolSource::DebugDirs))
            .and_then(|id| self.index.find(id));
        // Without the host source no path or pid from the request reaches the filesystem.
        let mut candidates = if self.cfg.uses(SymbolSource::Host) {
            host_candidates(pid, path, start, limit)
        } else {
            Vec::new()
        };
        if build_id.is_some() && !candidates.is_empty() {
            // With a build ID to check against, the host path goes first: unlike the
            // /proc/PID paths it outlives the process, and many processes share it.
            candidates.rotate_right(1);
        }
        let mut host = None;
        for c in candidates {
            let Ok(f) = c.open() else { continue };
            match build_id {
                // Only the file the samples came from: an upgraded binary at the same path would give wrong names.
                Some(id) => {
                    if crate::host::elf::build_id(&f).as_ref() == Some(id) {
                        host = Some(f);
                        break;
                    }
                }
                None => {
                    host = Some(f);
                    break;
                }
            }
        }
        let mut debug = by_id.and_then(|p| open_regular(&p).ok());
        // A debug file is only ever found in debug_dirs (so `debug` is None without them).
        let stripped = host.as_ref().is_some_and(|h| {
            self.cfg.uses(SymbolSource::DebugDirs) && !crate::host::elf::has_dwarf(h)
        });
        if let Some(h) = host.as_ref().filter(|_| stripped && debug.is_none()) {
            let found = debuglink::find(h, path, &self.cfg.debug_dirs, MAX_COPY);
            if let Some(result) = found.result() {
                metrics::counter!(names::SYMBOLIZER_DEBUGLINKS, "result" => result).increment(1);
            }
            if let debuglink::Lookup::Found(d) = found {
                debug = Some(d);
            }
        }
        // The host file first; a stripped one yields to a debug file with the same build
        // ID (or the one its .gnu_debuglink names), and then gives the layout.
        let from_debug_dirs = match (&host, &debug) {
            (Some(_), Some(_)) => stripped,
            (None, d) => d.is_some(),
            _ => false,
        };
        let (chosen, layout) = match (host, debug) {
            (Some(h), Some(d)) if stripped => (Some(d), Some(h)),
            (Some(h), _) => (Some(h), None),
            (None, d) => (d, None),
        };
        // The chosen file's identity names it in the cache, with its build ID: two files
        // that declare one build ID (a process can run an ELF carrying libc's) are still
        // two files, and one's names must never be given to the other's frames.
        let ident = chosen.as_ref().and_then(|f| f.metadata().ok()).map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        });
        let chosen = chosen.map(|f| self.unpack(f, build_id));
        let choice = match chosen.map(|(f, private)| {
            if private {
                Ok((f, 0))
            } else {
                crate::host::open::mappable(f, MAX_COPY)
            }
        }) {
            Some(Ok((f, copied))) => match (
                if from_debug_dirs {
                    Dwarf::Trusted
                } else if debuglink::names_other_files(&f) {
                    Dwarf::Off
                } else {
                    Dwarf::Own
                },
                ElfFile::new(f, layout.as_ref()),
            ) {
                (dwarf, Some(f)) => {
                    self.handed += 1;
                    self.copied += copied;
                    self.meters.copied.increment(copied);
                    let name: Rc<str> = match (build_id, ident) {
                        (Some(b), Some((dev, ino))) => {
                            Rc::from(format!("{}@{dev}:{ino}", b.as_str()))
                        }
                        (Some(b), None) => Rc::from(b.as_str()),
                        (None, _) => Rc::from(path),
                    };
                    let next = self.file_ids.len() as u32;
                    let id = *self.file_ids.entry(name).or_insert(next);
                    FileChoice::Found {
                        id,
                        file: Rc::new(f),
                        dwarf,
                    }
                }
                (_, None) => FileChoice::Missing("unreadable_file"),
            },
            Some(Err(e)) if e.kind() == std::io::ErrorKind::FileTooLarge => {
                FileChoice::Missing("file_too_large_to_copy")
            }
            Some(Err(_)) => FileChoice::Missing("unreadable_file"),
            None => FileChoice::Missing("file_not_found"),
        };
        self.files.insert(key, choice.clone());
        choice
    }

    /// `f`, or a copy of it with its compressed sections decompressed when it has any
    /// and line or inline information is wanted (only DWARF sections come compressed);
    /// true for a copy, which only this process can reach (so it is mapped as it is).
    pub(super) fn unpack(&mut self, f: File, build_id: Option<&BuildId>) -> (File, bool) {
        let Some(dir) = self.cfg.decompress_dir.as_deref() else {
            return (f, false);
        };
        if !(self.cfg.code_info || self.cfg.inlines) {
            return (f, false);
        }
        if let Some(c) = build_id
            .and_then(|id| self.unpacked.get(id))
            .and_then(|c| c.try_clone().ok())
        {
            return (c, true);
        }
        match super::super::unpack::decompressed(&f, dir, MAX_UNPACK) {
            Ok(None) => (f, false),
            Ok(Some(copy)) => {
                self.unpacked_bytes += copy.metadata().map_or(0, |m| m.len());
                metrics::counter!(names::SYMBOLIZER_UNPACKED, "result" => "ok").increment(1);
                if let Some(id) = build_id
                    && let Ok(c) = copy.try_clone()
                {
                    if self.unpacked.len() >= MAX_UNPACKED {
                        self.unpacked.clear();
                    }
                    self.unpacked.insert(id.clone(), c);
                }
                (copy, true)
            }
            Err(e) => {
                let result = match e.kind() {
                    std::io::ErrorKind::FileTooLarge => "too_large",
                    std::io::ErrorKind::InvalidData => "invalid",
                    _ => "unwritable",
                };
                metrics::counter!(names::SYMBOLIZER_UNPACKED, "result" => result).increment(1);
                // Once per kind of failure: one odd file must not hide a directory that
                // cannot be written.
                if self.unpack_warned.insert(result) {
                    let what = match result {
                        "unwritable" => {
                            "set processors.symbolizer.decompress_dir to a writable directory on disk"
                        }
                        // The error says by how much (the bound is MAX_UNPACK).
                        "too_large" => "the copy would be too large",
                        _ => "its compressed sections are malformed",
                    };
                    tracing::warn!(
                        decompress_dir = %dir.display(),
                        build_id = build_id.map_or("", BuildId::as_str),
                        error = %e,
                        "no decompressed copy of a file's debug sections ({what}); blazesym decompresses them in memory instead (later failures of this kind are only counted)"
                    );
                }
                (f, false)
            }
        }
    }
}
