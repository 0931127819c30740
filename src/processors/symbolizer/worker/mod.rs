//! Symbolizing the locations of one request, on a thread that owns a blazesym
//! `Symbolizer` (which is neither Send nor Sync).
//!
//! Per request: find each location's file (or the kernel), look its offset up in the
//! LRU cache, symbolize what is missing in one blazesym call per file, and write the
//! result into the location's `lines`, innermost inlined function first, with the
//! mangled name as the function's `system_name`. A frame that cannot be resolved keeps
//! its address and mapping and is counted with a reason; it is never dropped.

use super::SymbolizerConfig;
use super::config::SymbolSource;
use super::debuglink;
use super::files::{BuildIdIndex, ElfFile, host_candidates};
use crate::host::elf::BuildId;
use crate::host::open::open_regular;
use crate::otlp::ProfilesRequest;
use crate::otlp::common::any_value;
use crate::otlp::profiles::{Function, Line, ProfilesDictionary};
use crate::otlp::semconv;
use crate::otlp::view::Dict;
use crate::telemetry::names;
use blazesym::MaybeDefault;
use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{CodeInfo, Input, Reason, Symbolized, Symbolizer};
use foldhash::fast::RandomState as Fast;
use lru::LruCache;
use metrics::{Counter, Histogram};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::hash::BuildHasher;
use std::rc::Rc;
use std::time::Instant;

mod blaze;
mod choose;
mod dict;
mod plan;
use dict::*;
use plan::*;

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
