//! Symbolizing the locations of one request, on a thread that owns a blazesym
//! `Symbolizer` (which is neither Send nor Sync).
//!
//! Per request: find each location's file (or the kernel), look its offset up in the
//! LRU cache, symbolize what is missing in one blazesym call per file, and write the
//! result into the location's `lines`, innermost inlined function first, with the
//! mangled name as the function's `system_name`. A frame that cannot be resolved keeps
//! its address and mapping and is counted with a reason; it is never dropped.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use blazesym::MaybeDefault;
use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{CodeInfo, Input, Reason, Symbolized, Symbolizer};
use lru::LruCache;
use metrics::{Counter, Histogram};

use super::SymbolizerConfig;
use super::files::{BuildIdIndex, ElfFile, host_candidates};
use crate::otlp::ProfilesRequest;
use crate::otlp::common::any_value;
use crate::otlp::profiles::{Function, Line, ProfilesDictionary};
use crate::receivers::ebpf_profiler::procfs::read_build_id;
use crate::telemetry::names;

/// One resolved line of a location (innermost first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedLine {
    pub name: String,
    pub system_name: String,
    pub file: String,
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
    /// (build ID, or path when there is none; virtual address in that file)
    File(Rc<str>, u64),
    Kernel(u64),
}

/// How a mapping's file was found, cached per mapping identity.
#[derive(Debug, Clone)]
enum FileChoice {
    Found { key: Rc<str>, file: Rc<ElfFile> },
    Missing(&'static str),
}

struct Meters {
    hits: Counter,
    misses: Counter,
    duration: Histogram,
}

pub struct Worker {
    cfg: SymbolizerConfig,
    sym: Symbolizer,
    cache: LruCache<Key, Rc<Resolved>>,
    files: HashMap<(Option<String>, Option<u32>, String, u64), FileChoice>,
    index: BuildIdIndex,
    meters: Meters,
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

fn has_dwarf(path: &std::path::Path) -> bool {
    use object::{Object, ObjectSection, SectionKind};
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    object::File::parse(&*data).is_ok_and(|f| {
        f.section_by_name(".debug_info")
            .is_some_and(|s| s.kind() != SectionKind::UninitializedData && s.size() > 0)
    })
}

impl Worker {
    pub fn new(cfg: SymbolizerConfig) -> Self {
        let sym = Symbolizer::builder()
            .enable_code_info(cfg.code_info)
            .enable_inlined_fns(cfg.inlines)
            // Names are demangled here, so the mangled name stays available as system_name.
            .enable_demangling(false)
            .set_debug_dirs(Some(cfg.debug_dirs.clone()))
            .build();
        let cap = NonZeroUsize::new(cfg.cache_size.max(1)).unwrap_or(NonZeroUsize::MIN);
        Worker {
            index: BuildIdIndex::new(cfg.debug_dirs.clone(), cfg.rescan_interval),
            cache: LruCache::new(cap),
            files: HashMap::new(),
            sym,
            meters: Meters {
                hits: metrics::counter!(names::SYMBOLIZER_CACHE_HITS),
                misses: metrics::counter!(names::SYMBOLIZER_CACHE_MISSES),
                duration: metrics::histogram!(names::SYMBOLIZER_DURATION),
            },
            cfg,
        }
    }

    fn choose_file(
        &mut self,
        build_id: Option<&str>,
        pid: Option<u32>,
        path: &str,
        start: u64,
        limit: u64,
    ) -> FileChoice {
        let key = (
            build_id.map(str::to_owned),
            if build_id.is_some() { None } else { pid },
            path.to_owned(),
            if build_id.is_some() { 0 } else { start },
        );
        if let Some(c) = self.files.get(&key) {
            return c.clone();
        }
        // Bound the table: mappings come and go with processes.
        if self.files.len() > 65_536 {
            self.files.clear();
        }
        let by_id = build_id.and_then(|id| self.index.find(id));
        let mut host = None;
        for c in host_candidates(pid, path, start, limit) {
            if !c.is_file() {
                continue;
            }
            match build_id {
                // Only the file the samples came from: an upgraded binary at the same path would give wrong names.
                Some(id) => {
                    if read_build_id(&c).ok().flatten().as_deref() == Some(id) {
                        host = Some(c);
                        break;
                    }
                }
                None => {
                    host = Some(c);
                    break;
                }
            }
        }
        // The host file first; a stripped one yields to a debug file with the same build ID.
        let chosen: Option<PathBuf> = match (&host, by_id) {
            (Some(h), Some(d)) => Some(if has_dwarf(h) { h.clone() } else { d }),
            (Some(h), None) => Some(h.clone()),
            (None, Some(d)) => Some(d),
            (None, None) => None,
        };
        let choice = match chosen
            .as_deref()
            .and_then(|c| ElfFile::open(c, host.as_deref()))
        {
            Some(f) => FileChoice::Found {
                key: Rc::from(build_id.unwrap_or(path)),
                file: Rc::new(f),
            },
            None if chosen.is_some() => FileChoice::Missing("unreadable_file"),
            None => FileChoice::Missing("file_not_found"),
        };
        self.files.insert(key, choice.clone());
        choice
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
        let mut out = Vec::with_capacity(sym.inlined.len() + 1);
        for f in sym.inlined.iter().rev() {
            let (file, line, column) = code(f.code_info.as_ref());
            out.push(ResolvedLine {
                name: name(&f.name),
                system_name: f.name.to_string(),
                file,
                line,
                column,
            });
        }
        let (file, line, column) = code(sym.code_info.as_deref());
        out.push(ResolvedLine {
            name: name(&sym.name),
            system_name: sym.name.to_string(),
            file,
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

    /// Symbolizes addresses of one ELF file (virtual addresses in that file).
    pub fn symbolize_elf(&self, path: &std::path::Path, vaddrs: &[u64]) -> Vec<Resolved> {
        let src = Source::Elf(Elf::new(path));
        self.convert(
            self.sym.symbolize(&src, Input::VirtOffset(vaddrs)),
            vaddrs.len(),
        )
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

    /// Fills in the `lines` of every location of `req` that has none.
    pub fn symbolize(&mut self, req: &mut ProfilesRequest) {
        let started = Instant::now();
        self.index.refresh();
        let pids = mapping_pids(req);
        let Some(dict) = req.dictionary.as_mut() else {
            return;
        };
        let leaves = leaf_locations(dict);
        let frame_type_key = dict
            .string_table
            .iter()
            .position(|s| s == "profile.frame.type");

        // Pass 1: a cache key for each location to symbolize; collect what is missing.
        let mut keys: Vec<(usize, Key)> = Vec::new();
        let mut missing_files: HashMap<Rc<str>, (Rc<ElfFile>, Vec<u64>)> = HashMap::new();
        let mut missing_kernel: Vec<u64> = Vec::new();
        let mut queued: HashSet<Key> = HashSet::new();
        for li in 1..dict.location_table.len() {
            let loc = &dict.location_table[li];
            if !loc.lines.is_empty() {
                continue;
            }
            // Return addresses point after the call; the byte before is in the calling line.
            let addr = if leaves.contains(&li) {
                loc.address
            } else {
                loc.address.saturating_sub(1)
            };
            let Some(m) = dict
                .mapping_table
                .get(loc.mapping_index as usize)
                .filter(|_| loc.mapping_index > 0)
            else {
                frame_counter("unresolved", "no_mapping").increment(1);
                continue;
            };
            let filename = dict
                .string_table
                .get(m.filename_strindex as usize)
                .map_or("", String::as_str);
            let is_kernel = frame_type_key.is_some_and(|k| {
                loc.attribute_indices.iter().any(|&a| {
                    dict.attribute_table.get(a as usize).is_some_and(|kv| {
                        kv.key_strindex as usize == k
                            && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()), Some(any_value::Value::StringValue(s)) if s == "kernel")
                    })
                })
            }) || filename == "[kernel.kallsyms]";
            let key = if is_kernel {
                if !self.cfg.kernel {
                    continue;
                }
                Key::Kernel(addr)
            } else {
                if !(m.memory_start <= loc.address && loc.address < m.memory_limit) {
                    frame_counter("unresolved", "address_outside_mapping").increment(1);
                    continue;
                }
                let build_id = m.attribute_indices.iter().find_map(|&a| {
                    let kv = dict.attribute_table.get(a as usize)?;
                    (dict.string_table.get(kv.key_strindex as usize)?
                        == "process.executable.build_id.gnu")
                        .then(|| match kv.value.as_ref()?.value.as_ref()? {
                            any_value::Value::StringValue(s) => Some(s.clone()),
                            _ => None,
                        })
                        .flatten()
                });
                let pid = pids.get(&(loc.mapping_index as usize)).copied();
                let file_offset = addr - m.memory_start + m.file_offset;
                match self.choose_file(
                    build_id.as_deref(),
                    pid,
                    filename,
                    m.memory_start,
                    m.memory_limit,
                ) {
                    FileChoice::Found { key, file } => match file.vaddr(file_offset, m.file_offset)
                    {
                        Some(vaddr) => {
                            let k = Key::File(key.clone(), vaddr);
                            if !self.cache.contains(&k) && queued.insert(k.clone()) {
                                missing_files
                                    .entry(key)
                                    .or_insert_with(|| (file.clone(), Vec::new()))
                                    .1
                                    .push(vaddr);
                            }
                            k
                        }
                        None => {
                            frame_counter("unresolved", "offset_outside_file_segments")
                                .increment(1);
                            continue;
                        }
                    },
                    FileChoice::Missing(reason) => {
                        frame_counter("unresolved", reason).increment(1);
                        continue;
                    }
                }
            };
            if let Key::Kernel(a) = key
                && !self.cache.contains(&key)
                && queued.insert(key.clone())
            {
                missing_kernel.push(a);
            }
            keys.push((li, key));
        }

        // Pass 2: one blazesym call per file, and one for the kernel.
        for (key, (file, vaddrs)) in missing_files {
            let results = self.symbolize_elf(&file.path, &vaddrs);
            for (v, r) in vaddrs.into_iter().zip(results) {
                self.cache.put(Key::File(key.clone(), v), Rc::new(r));
            }
        }
        if !missing_kernel.is_empty() {
            let results = self.symbolize_kernel(&missing_kernel);
            for (a, r) in missing_kernel.into_iter().zip(results) {
                self.cache.put(Key::Kernel(a), Rc::new(r));
            }
        }

        // Pass 3: write the lines.
        let mut writer = LineWriter::new(dict);
        for (li, key) in keys {
            let Some(r) = self.cache.get(&key).cloned() else {
                continue;
            };
            if queued.contains(&key) {
                self.meters.misses.increment(1);
            } else {
                self.meters.hits.increment(1);
            }
            match &*r {
                Resolved::Lines(lines) => {
                    writer.write(li, lines);
                    frame_counter("resolved", "").increment(1);
                }
                Resolved::Unknown(reason) => frame_counter("unresolved", reason).increment(1),
            }
        }
        self.meters.duration.record(started.elapsed().as_secs_f64());
    }
}

/// Appends strings and functions to a dictionary without duplicating entries.
struct LineWriter<'a> {
    dict: &'a mut ProfilesDictionary,
    strings: HashMap<String, i32>,
    functions: HashMap<(i32, i32, i32, i64), i32>,
}

impl<'a> LineWriter<'a> {
    fn new(dict: &'a mut ProfilesDictionary) -> Self {
        if dict.string_table.is_empty() {
            dict.string_table.push(String::new());
        }
        if dict.function_table.is_empty() {
            dict.function_table.push(Function::default());
        }
        let strings = dict
            .string_table
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as i32))
            .collect();
        let functions = dict
            .function_table
            .iter()
            .enumerate()
            .map(|(i, f)| {
                (
                    (
                        f.name_strindex,
                        f.system_name_strindex,
                        f.filename_strindex,
                        f.start_line,
                    ),
                    i as i32,
                )
            })
            .collect();
        LineWriter {
            dict,
            strings,
            functions,
        }
    }

    fn string(&mut self, s: &str) -> i32 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.dict.string_table.len() as i32;
        self.dict.string_table.push(s.to_owned());
        self.strings.insert(s.to_owned(), i);
        i
    }

    fn write(&mut self, location: usize, lines: &[ResolvedLine]) {
        let mut out = Vec::with_capacity(lines.len());
        for l in lines {
            let key = (
                self.string(&l.name),
                self.string(&l.system_name),
                self.string(&l.file),
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
            out.push(Line {
                function_index: f,
                line: l.line,
                column: l.column,
            });
        }
        self.dict.location_table[location].lines = out;
    }
}

/// Locations that are the first (leaf) frame of some stack.
fn leaf_locations(dict: &ProfilesDictionary) -> HashSet<usize> {
    dict.stack_table
        .iter()
        .filter_map(|s| s.location_indices.first().map(|&l| l as usize))
        .collect()
}

/// A pid that sampled each mapping, from the samples' `process.pid` attribute, so the
/// mapped file can be found through that process's `/proc` entries.
fn mapping_pids(req: &ProfilesRequest) -> HashMap<usize, u32> {
    let mut out = HashMap::new();
    let Some(d) = req.dictionary.as_ref() else {
        return out;
    };
    let Some(pid_key) = d.string_table.iter().position(|s| s == "process.pid") else {
        return out;
    };
    for s in req
        .resource_profiles
        .iter()
        .flat_map(|r| &r.scope_profiles)
        .flat_map(|s| &s.profiles)
        .flat_map(|p| &p.samples)
    {
        let pid = s.attribute_indices.iter().find_map(|&a| {
            let kv = d.attribute_table.get(a as usize)?;
            if kv.key_strindex as usize != pid_key {
                return None;
            }
            match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::IntValue(v) => u32::try_from(*v).ok(),
                _ => None,
            }
        });
        let (Some(pid), Some(stack)) = (pid, d.stack_table.get(s.stack_index as usize)) else {
            continue;
        };
        for &l in &stack.location_indices {
            if let Some(loc) = d.location_table.get(l as usize) {
                out.entry(loc.mapping_index as usize).or_insert(pid);
            }
        }
    }
    out
}
