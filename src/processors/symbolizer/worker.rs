//! Symbolizing the locations of one request, on a thread that owns a blazesym
//! `Symbolizer` (which is neither Send nor Sync).
//!
//! Per request: find each location's file (or the kernel), look its offset up in the
//! LRU cache, symbolize what is missing in one blazesym call per file, and write the
//! result into the location's `lines`, innermost inlined function first, with the
//! mangled name as the function's `system_name`. A frame that cannot be resolved keeps
//! its address and mapping and is counted with a reason; it is never dropped.

use crate::otlp::semconv;
use std::collections::{HashMap, HashSet};
use std::fs::File;

use std::hash::BuildHasher;

use foldhash::fast::RandomState as Fast;
use std::rc::Rc;
use std::time::Instant;

use super::config::SymbolSource;

use blazesym::MaybeDefault;
use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{CodeInfo, Input, Reason, Symbolized, Symbolizer};
use lru::LruCache;
use metrics::{Counter, Histogram};

use super::SymbolizerConfig;
use super::debuglink;
use super::files::{BuildIdIndex, ElfFile, host_candidates};
use crate::host::elf::BuildId;
use crate::host::open::open_regular;
use crate::otlp::ProfilesRequest;
use crate::otlp::common::any_value;
use crate::otlp::profiles::{Function, Line, ProfilesDictionary};
use crate::otlp::view::Dict;
use crate::telemetry::names;

/// A function as it goes into the dictionary. Interned per worker, so lines of the
/// same function share one `Rc`, and a request writes each function once: its index
/// in the request being written is kept beside it.
#[derive(Debug, Clone)]
pub struct Func {
    pub name: String,
    pub system_name: String,
    pub file: String,
    /// The three strings' hashes under the worker's hasher, so writing a function into
    /// each request's string table does not hash its (often long, mangled) names again.
    hashes: [u64; 3],
    /// (request number, function index in that request's dictionary).
    written: std::cell::Cell<(u64, i32)>,
}

impl PartialEq for Func {
    fn eq(&self, other: &Func) -> bool {
        (&self.name, &self.system_name, &self.file)
            == (&other.name, &other.system_name, &other.file)
    }
}

impl Eq for Func {}

impl std::hash::Hash for Func {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.hashes.hash(state);
    }
}

impl Func {
    fn new(name: String, system_name: String, file: String, hasher: &Fast) -> Func {
        let hashes = [
            hasher.hash_one(name.as_str()),
            hasher.hash_one(system_name.as_str()),
            hasher.hash_one(file.as_str()),
        ];
        Func {
            name,
            system_name,
            file,
            hashes,
            written: std::cell::Cell::new((0, 0)),
        }
    }
}

/// One resolved line of a location (innermost first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedLine {
    pub func: Rc<Func>,
    pub line: i64,
    pub column: i64,
}

/// What the cache holds for one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Lines(Vec<ResolvedLine>),
    Unknown(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// (file id, virtual address in that file)
    File(u32, u64),
    Kernel(u64),
}

/// Whether blazesym reads a file's DWARF, and with it may follow the file's debug links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dwarf {
    /// ELF symbols only: the file names other files (a sampled process chose them).
    Off,
    /// Its DWARF, with no directory to search: the file names no other file (see
    /// [`debuglink::names_other_files`]).
    Own,
    /// A debug file from `debug_dirs` (the operator's): its DWARF, and the supplementary
    /// (dwz) files it names, looked for in `debug_dirs` as distributions lay them out.
    Trusted,
}

/// How a mapping's file was found, cached per mapping identity.
#[derive(Debug, Clone)]
enum FileChoice {
    Found {
        id: u32,
        file: Rc<ElfFile>,
        dwarf: Dwarf,
    },
    Missing(&'static str),
}

struct Meters {
    resolved: Counter,
    hits: Counter,
    misses: Counter,
    duration: Histogram,
    copied: Counter,
}

pub struct Worker {
    cfg: SymbolizerConfig,
    sym: Symbolizer,
    /// For debug files from `debug_dirs` (see [`Dwarf::Trusted`]).
    sym_trusted: Symbolizer,
    /// Files handed to `sym` since it was made, and the bytes of those that had to be
    /// copied: blazesym keeps every file it opened, so past a bound it is made anew.
    handed: usize,
    copied: u64,
    cache: LruCache<Key, Rc<Resolved>, Fast>,
    files: HashMap<(Option<BuildId>, Option<u32>, String, u64), FileChoice>,
    /// Build ID (or path) → the id cache keys use, stable for the worker's life.
    file_ids: HashMap<Rc<str>, u32>,
    funcs: std::cell::RefCell<HashMap<Func, Rc<Func>>>,
    /// Hashes the strings of `funcs` and of every request's string table alike.
    hasher: Fast,
    /// Requests written so far.
    requests: u64,
    index: BuildIdIndex,
    meters: Meters,
    /// Decompressed copies (see [`super::unpack`]) by build ID, so a file is
    /// decompressed once while blazesym holds it.
    unpacked: HashMap<BuildId, File>,
    /// Bytes of copies made since blazesym was made anew (disk held until then).
    unpacked_bytes: u64,
    /// Kinds of failed copies logged so far (each once; later ones are only counted).
    unpack_warned: HashSet<&'static str>,
}

fn reason_label(r: Reason) -> &'static str {
    match r {
        Reason::Unmapped => "unmapped",
        Reason::InvalidFileOffset => "invalid_file_offset",
        Reason::MissingComponent => "missing_component",
        Reason::MissingSyms => "missing_symbols",
        Reason::Unsupported => "unsupported",
        Reason::UnknownAddr => "unknown_address",
        Reason::IgnoredError => "ignored_error",
        _ => "other",
    }
}

fn frame_counter(result: &'static str, reason: &'static str) -> Counter {
    metrics::counter!(names::SYMBOLIZER_FRAMES, "result" => result, "reason" => reason)
}

/// Demangles Rust (legacy and v0) and C++ names; others are returned as they are.
pub fn demangle(raw: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(raw) {
        return format!("{d:#}");
    }
    if raw.starts_with("_Z")
        && let Ok(sym) = cpp_demangle::Symbol::new(raw)
        && let Ok(d) = sym.demangle()
    {
        return d;
    }
    raw.to_owned()
}

impl Worker {
    pub fn new(cfg: SymbolizerConfig) -> Self {
        Worker {
            index: BuildIdIndex::new(
                if cfg.uses(SymbolSource::DebugDirs) {
                    cfg.debug_dirs.clone()
                } else {
                    Vec::new()
                },
                cfg.rescan_interval,
            ),
            // Grown as entries come and bounded by hand: a bounded LruCache allocates its
            // whole table up front (9 MB at the default size), and as entries land in it
            // at random they touch nearly every page of it (anon grew 9 MiB in a minute
            // on a node with many short-lived processes).
            cache: LruCache::unbounded_with_hasher(Fast::default()),
            files: HashMap::new(),
            sym: make_symbolizer(&cfg, false),
            sym_trusted: make_symbolizer(&cfg, true),
            handed: 0,
            copied: 0,
            file_ids: HashMap::new(),
            funcs: Default::default(),
            hasher: Fast::default(),
            requests: 0,
            meters: Meters {
                resolved: frame_counter("resolved", ""),
                hits: metrics::counter!(names::SYMBOLIZER_CACHE_HITS),
                misses: metrics::counter!(names::SYMBOLIZER_CACHE_MISSES),
                duration: metrics::histogram!(names::SYMBOLIZER_DURATION),
                copied: metrics::counter!(names::SYMBOLIZER_COPIED_BYTES),
            },
            unpacked: HashMap::new(),
            unpacked_bytes: 0,
            unpack_warned: HashSet::new(),
            cfg,
        }
    }
}

/// Files blazesym may hold open, and bytes of copies it may keep mapped, before the
/// symbolizer is made anew (which closes them; resolved frames stay cached).
const MAX_HANDED_FILES: usize = 256;
const MAX_COPIED_BYTES: u64 = 256 << 20;
/// Decompressed copies kept for reuse (each holds disk, not memory).
const MAX_UNPACKED: usize = 64;
/// Largest decompressed copy; a larger file is decompressed in memory by blazesym.
const MAX_UNPACK: u64 = 512 << 20;
/// Disk that copies may hold before blazesym is made anew, which closes them.
const MAX_UNPACKED_BYTES: u64 = 1 << 30;
/// A file larger than this that has to be copied (see `host::open::mappable`) is not
/// symbolized.
const MAX_COPY: u64 = 1 << 30;

/// A symbolizer; `trusted` ones search `debug_dirs` for the files a debug file links to.
fn make_symbolizer(cfg: &SymbolizerConfig, trusted: bool) -> Symbolizer {
    Symbolizer::builder()
        .enable_code_info(cfg.code_info)
        .enable_inlined_fns(cfg.inlines)
        // Names are demangled here, so the mangled name stays available as system_name.
        .enable_demangling(false)
        // blazesym searches no directory of its own (None would mean its defaults).
        // That alone does not stop it following links: it still looks next to the file
        // and takes absolute names as they are. So every file it gets whose links it
        // would follow is given with `debug_syms` off, and `.gnu_debuglink` is resolved
        // here instead (see `debuglink`).
        // Only the trusted one, for files from debug_dirs, searches those.
        .set_debug_dirs(Some(if trusted && cfg.uses(SymbolSource::DebugDirs) {
            cfg.debug_dirs.clone()
        } else {
            Vec::new()
        }))
        .build()
}

impl Worker {
    /// Resolved frames held in the cache.
    #[cfg(test)]
    pub(super) fn cached_frames(&self) -> usize {
        self.cache.len()
    }

    /// Decompressed copies held.
    #[cfg(test)]
    pub(super) fn unpacked_files(&self) -> usize {
        self.unpacked.len()
    }

    fn choose_file(
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
    fn unpack(&mut self, f: File, build_id: Option<&BuildId>) -> (File, bool) {
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
        match super::unpack::decompressed(&f, dir, MAX_UNPACK) {
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

    fn lines_of(&self, sym: &blazesym::symbolize::Sym<'_>) -> Vec<ResolvedLine> {
        let code = |c: Option<&CodeInfo<'_>>| -> (String, i64, i64) {
            match c {
                Some(c) => (
                    c.to_path().to_string_lossy().into_owned(),
                    c.line.map_or(0, i64::from),
                    c.column.map_or(0, i64::from),
                ),
                None => (String::new(), 0, 0),
            }
        };
        let name = |raw: &str| {
            if self.cfg.demangle {
                demangle(raw)
            } else {
                raw.to_owned()
            }
        };
        let intern = |f: Func| -> Rc<Func> {
            let mut funcs = self.funcs.borrow_mut();
            // Bounded: entries still held by cached lines stay valid after a clear.
            if funcs.len() > self.cfg.cache_size {
                funcs.clear();
            }
            funcs.entry(f.clone()).or_insert_with(|| Rc::new(f)).clone()
        };
        let mut out = Vec::with_capacity(sym.inlined.len() + 1);
        for f in sym.inlined.iter().rev() {
            let (file, line, column) = code(f.code_info.as_ref());
            out.push(ResolvedLine {
                func: intern(Func::new(
                    name(&f.name),
                    f.name.to_string(),
                    file,
                    &self.hasher,
                )),
                line,
                column,
            });
        }
        let (file, line, column) = code(sym.code_info.as_deref());
        out.push(ResolvedLine {
            func: intern(Func::new(
                name(&sym.name),
                sym.name.to_string(),
                file,
                &self.hasher,
            )),
            line,
            column,
        });
        out
    }

    fn convert(&self, r: Result<Vec<Symbolized<'_>>, blazesym::Error>, n: usize) -> Vec<Resolved> {
        match r {
            Ok(v) => v
                .iter()
                .map(|s| match s {
                    Symbolized::Sym(sym) => Resolved::Lines(self.lines_of(sym)),
                    Symbolized::Unknown(reason) => Resolved::Unknown(reason_label(*reason)),
                })
                .collect(),
            Err(_) => vec![Resolved::Unknown("symbolizer_error"); n],
        }
    }

    /// Symbolizes addresses of one ELF file (virtual addresses in that file), reading
    /// its DWARF as `dwarf` says.
    fn symbolize_elf(&self, path: &std::path::Path, vaddrs: &[u64], dwarf: Dwarf) -> Vec<Resolved> {
        let mut elf = Elf::new(path);
        elf.debug_syms = dwarf != Dwarf::Off;
        let src = Source::Elf(elf);
        let sym = if dwarf == Dwarf::Trusted {
            &self.sym_trusted
        } else {
            &self.sym
        };
        self.convert(sym.symbolize(&src, Input::VirtOffset(vaddrs)), vaddrs.len())
    }

    /// Symbolizes kernel addresses.
    pub fn symbolize_kernel(&self, addrs: &[u64]) -> Vec<Resolved> {
        let k = Kernel {
            vmlinux: match &self.cfg.vmlinux {
                Some(p) => MaybeDefault::Some(p.clone()),
                None => MaybeDefault::None,
            },
            ..Default::default()
        };
        let src = Source::Kernel(k);
        self.convert(self.sym.symbolize(&src, Input::AbsAddr(addrs)), addrs.len())
    }

    /// How the locations of one mapping are symbolized, worked out once per request.
    fn plan(
        &mut self,
        dict: &ProfilesDictionary,
        mapping_index: i32,
        pids: &HashMap<usize, u32>,
    ) -> Plan {
        let Some(m) = dict
            .mapping_table
            .get(mapping_index as usize)
            .filter(|_| mapping_index > 0)
        else {
            return Plan::Skip("no_mapping");
        };
        let filename = dict
            .string_table
            .get(m.filename_strindex as usize)
            .map_or("", String::as_str);
        // Kernel text and modules live in the upper half of the address space.
        if filename == "[kernel.kallsyms]" || m.memory_start >= 0xffff_8000_0000_0000 {
            return if self.cfg.kernel_on() {
                Plan::Kernel
            } else {
                Plan::Skip("kernel_disabled")
            };
        }
        let build_id = match Dict(dict).build_id(m) {
            None => None,
            Some(Ok(id)) => Some(id),
            // The receiver's checks refuse these; a request from elsewhere is not trusted either.
            Some(Err(_)) => return Plan::Skip("invalid_build_id"),
        };
        let pid = pids.get(&(mapping_index as usize)).copied();
        if pid == Some(std::process::id())
            && self.cfg.uses(SymbolSource::Host)
            && !self.cfg.symbolize_self
        {
            return Plan::Skip("own_process");
        }
        match self.choose_file(
            build_id.as_ref(),
            pid,
            filename,
            m.memory_start,
            m.memory_limit,
        ) {
            FileChoice::Found { id, file, dwarf } => Plan::File {
                id,
                file,
                dwarf,
                memory_start: m.memory_start,
                memory_limit: m.memory_limit,
                file_offset: m.file_offset,
            },
            FileChoice::Missing(reason) => Plan::Skip(reason),
        }
    }

    /// Fills in the `lines` of every location of `req` that has none.
    pub fn symbolize(&mut self, req: &mut ProfilesRequest) {
        let started = Instant::now();
        self.index.refresh();
        let pids = mapping_pids(req);
        let Some(dict) = req.dictionary.as_mut() else {
            return;
        };
        let leaves = leaf_locations(dict);
        let mut plans: Vec<Option<Plan>> = vec![None; dict.mapping_table.len()];
        let mut unresolved: HashMap<&'static str, u64> = HashMap::new();

        // Pass 1: the cache answers what it can; the rest is grouped per file.
        let mut ready: Vec<(usize, Rc<Resolved>)> = Vec::new();
        let mut pending: Vec<(usize, Key)> = Vec::new();
        let mut missing_files: HashMap<u32, (Rc<ElfFile>, Dwarf, Vec<u64>)> = HashMap::new();
        let mut missing_kernel: Vec<u64> = Vec::new();
        let mut queued: HashSet<Key, Fast> = HashSet::default();
        for li in 1..dict.location_table.len() {
            let loc = &dict.location_table[li];
            if !loc.lines.is_empty() {
                continue;
            }
            let mi = loc.mapping_index;
            let plan = match plans.get(mi as usize).and_then(Option::as_ref) {
                Some(p) => p.clone(),
                None => {
                    let p = self.plan(dict, mi, &pids);
                    if let Some(slot) = plans.get_mut(mi as usize) {
                        *slot = Some(p.clone());
                    }
                    p
                }
            };
            // Return addresses point after the call; the byte before is in the calling line.
            let addr = if leaves.contains(&li) {
                loc.address
            } else {
                loc.address.saturating_sub(1)
            };
            let kernel_frame =
                matches!(plan, Plan::Kernel) || Dict(dict).is_kernel_frame(&loc.attribute_indices);
            let key = match &plan {
                _ if kernel_frame && !self.cfg.kernel_on() => continue,
                Plan::Kernel => Key::Kernel(addr),
                _ if kernel_frame => Key::Kernel(addr),
                Plan::Skip(reason) => {
                    *unresolved.entry(reason).or_default() += 1;
                    continue;
                }
                &Plan::File {
                    id,
                    ref file,
                    memory_start,
                    memory_limit,
                    file_offset,
                    ..
                } => {
                    if !(memory_start <= loc.address && loc.address < memory_limit) {
                        *unresolved.entry("address_outside_mapping").or_default() += 1;
                        continue;
                    }
                    // Offsets come from the request: an offset past the end of the
                    // address space is one no file has. A return address at the very
                    // start of a mapping called from below it: no byte of this file.
                    let vaddr = addr
                        .checked_sub(memory_start)
                        .and_then(|a| a.checked_add(file_offset))
                        .and_then(|off| file.vaddr(off, file_offset));
                    match vaddr {
                        Some(vaddr) => Key::File(id, vaddr),
                        None => {
                            *unresolved
                                .entry("offset_outside_file_segments")
                                .or_default() += 1;
                            continue;
                        }
                    }
                }
            };
            if let Some(r) = self.cache.get(&key) {
                ready.push((li, r.clone()));
                continue;
            }
            if queued.insert(key.clone()) {
                match (&key, &plan) {
                    (Key::File(id, vaddr), Plan::File { file, dwarf, .. }) => missing_files
                        .entry(*id)
                        .or_insert_with(|| (file.clone(), *dwarf, Vec::new()))
                        .2
                        .push(*vaddr),
                    (Key::Kernel(a), _) => missing_kernel.push(*a),
                    _ => {}
                }
            }
            pending.push((li, key));
        }
        let hits = ready.len() as u64;

        // Pass 2: one blazesym call per file, and one for the kernel. Fresh results are
        // kept here too, so a cache smaller than one request cannot lose them.
        let mut fresh: HashMap<Key, Rc<Resolved>, Fast> = HashMap::default();
        for (id, (file, dwarf, vaddrs)) in missing_files {
            let results = self.symbolize_elf(&file.path, &vaddrs, dwarf);
            for (v, r) in vaddrs.into_iter().zip(results) {
                fresh.insert(Key::File(id, v), Rc::new(r));
            }
        }
        if !missing_kernel.is_empty() {
            let results = self.symbolize_kernel(&missing_kernel);
            for (a, r) in missing_kernel.into_iter().zip(results) {
                fresh.insert(Key::Kernel(a), Rc::new(r));
            }
        }
        for (k, r) in &fresh {
            self.cache.put(k.clone(), r.clone());
            if self.cache.len() > self.cfg.cache_size {
                self.cache.pop_lru();
            }
        }
        ready.extend(
            pending
                .iter()
                .filter_map(|(li, k)| fresh.get(k).map(|r| (*li, r.clone()))),
        );

        // Pass 3: write the lines.
        self.requests += 1;
        let mut writer = LineWriter::new(dict, self.hasher.clone(), self.requests, ready.len());
        let mut resolved = 0u64;
        for (li, r) in ready {
            match &*r {
                Resolved::Lines(lines) => {
                    writer.write(li, lines);
                    resolved += 1;
                }
                Resolved::Unknown(reason) => *unresolved.entry(reason).or_default() += 1,
            }
        }
        self.meters.hits.increment(hits);
        self.meters.misses.increment(pending.len() as u64);
        self.meters.resolved.increment(resolved);
        for (reason, n) in unresolved {
            frame_counter("unresolved", reason).increment(n);
        }
        self.meters.duration.record(started.elapsed().as_secs_f64());
    }
}

/// What every location of one mapping shares.
#[derive(Debug, Clone)]
enum Plan {
    Kernel,
    File {
        id: u32,
        file: Rc<ElfFile>,
        dwarf: Dwarf,
        memory_start: u64,
        memory_limit: u64,
        file_offset: u64,
    },
    Skip(&'static str),
}

/// Appends strings and functions to a dictionary without duplicating entries.
struct LineWriter<'a> {
    dict: &'a mut ProfilesDictionary,
    /// String-table indices, hashed by the strings they point at (no second copy).
    strings: hashbrown::HashTable<i32>,
    hasher: Fast,
    functions: HashMap<(i32, i32, i32, i64), i32, Fast>,
    /// This request's number (from 1): a `Func` written under it knows its index.
    request: u64,
}

impl<'a> LineWriter<'a> {
    /// A writer for about `locations` locations (tables are sized for a new function
    /// each, so they are not rehashed as they grow).
    fn new(dict: &'a mut ProfilesDictionary, hasher: Fast, request: u64, locations: usize) -> Self {
        if dict.string_table.is_empty() {
            dict.string_table.push(String::new());
        }
        if dict.function_table.is_empty() {
            dict.function_table.push(Function::default());
        }
        let mut strings =
            hashbrown::HashTable::with_capacity(dict.string_table.len() + 2 * locations);
        for (i, s) in dict.string_table.iter().enumerate() {
            let h = hasher.hash_one(s.as_str());
            // Keep the first of any duplicates the input already had.
            if strings
                .find(h, |&j: &i32| dict.string_table[j as usize] == *s)
                .is_none()
            {
                strings.insert_unique(h, i as i32, |&j| {
                    hasher.hash_one(dict.string_table[j as usize].as_str())
                });
            }
        }
        let mut functions = HashMap::with_capacity_and_hasher(
            dict.function_table.len() + locations,
            Fast::default(),
        );
        functions.extend(dict.function_table.iter().enumerate().map(|(i, f)| {
            (
                (
                    f.name_strindex,
                    f.system_name_strindex,
                    f.filename_strindex,
                    f.start_line,
                ),
                i as i32,
            )
        }));
        LineWriter {
            dict,
            strings,
            hasher,
            functions,
            request,
        }
    }

    /// The index of `s`, whose hash under `self.hasher` is `h`.
    fn string(&mut self, s: &str, h: u64) -> i32 {
        let table = &mut self.dict.string_table;
        if let Some(&i) = self.strings.find(h, |&j| table[j as usize] == s) {
            return i;
        }
        let i = table.len() as i32;
        table.push(s.to_owned());
        let hasher = &self.hasher;
        self.strings
            .insert_unique(h, i, |&j| hasher.hash_one(table[j as usize].as_str()));
        i
    }

    fn function(&mut self, func: &Rc<Func>) -> i32 {
        let (request, index) = func.written.get();
        if request == self.request {
            return index;
        }
        let key = (
            self.string(&func.name, func.hashes[0]),
            self.string(&func.system_name, func.hashes[1]),
            self.string(&func.file, func.hashes[2]),
            0,
        );
        let f = match self.functions.get(&key) {
            Some(&f) => f,
            None => {
                let f = self.dict.function_table.len() as i32;
                self.dict.function_table.push(Function {
                    name_strindex: key.0,
                    system_name_strindex: key.1,
                    filename_strindex: key.2,
                    start_line: 0,
                });
                self.functions.insert(key, f);
                f
            }
        };
        func.written.set((self.request, f));
        f
    }

    fn write(&mut self, location: usize, lines: &[ResolvedLine]) {
        let out = lines
            .iter()
            .map(|l| Line {
                function_index: self.function(&l.func),
                line: l.line,
                column: l.column,
            })
            .collect();
        self.dict.location_table[location].lines = out;
    }
}

/// Locations that are the first (leaf) frame of some stack.
fn leaf_locations(dict: &ProfilesDictionary) -> HashSet<usize, Fast> {
    dict.stack_table
        .iter()
        .filter_map(|s| s.location_indices.first().map(|&l| l as usize))
        .collect()
}

/// A pid that sampled each mapping, from the samples' `process.pid` attribute, so the
/// mapped file can be found through that process's `/proc` entries.
fn mapping_pids(req: &ProfilesRequest) -> HashMap<usize, u32> {
    let d = Dict::of(req);
    let mut out = HashMap::new();
    // Many samples share one stack: each stack is walked once (the first pid that
    // reaches a mapping wins anyway), so the work is linear in the request, not
    // samples × stack depth.
    let mut walked = std::collections::HashSet::new();
    for s in crate::otlp::view::profiles(req).flat_map(|p| &p.samples) {
        let pid = match d
            .find_attribute(&s.attribute_indices, semconv::PROCESS_PID)
            .and_then(|v| v.value.as_ref())
        {
            Some(any_value::Value::IntValue(v)) => u32::try_from(*v).ok(),
            _ => None,
        };
        let Some(pid) = pid else { continue };
        if !walked.insert(s.stack_index) {
            continue;
        }
        for &l in d.stack(s.stack_index) {
            if let Some(loc) = d.location(l) {
                out.entry(loc.mapping_index as usize).or_insert(pid);
            }
        }
    }
    out
}
