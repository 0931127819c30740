//! Keeping the kernel's unwind maps in step with the processes being sampled, on a
//! thread of its own (building a table takes milliseconds; the sample reader must not wait).
//!
//! For every sampled process it is told about (by the sample reader, which reads
//! `/proc/PID/maps` at first sight, on exec, pid reuse and when the program asks), it
//! maps each executable mapping to its executable's table id and loads the table if
//! needed; the process's address ranges go into the mapping index. Executables are
//! keyed by GNU build ID (else a hash of their first and last 4 KiB and length) together
//! with the file's identity (device, inode, size, change time), so a library shared by
//! many processes has one table, and a file that claims another's build ID has its own. Tables are evicted least recently
//! used first to stay within `unwind.max_memory`.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::os::fd::AsFd;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Instant;

use aya::maps::lpm_trie::Key;
use metrics::{Counter, Gauge, Histogram};

use super::rules::{Chunk, MappingInfo};
use super::table::{Table, bias};
use crate::host::elf::{Segment, segments, segments_in};
use crate::host::proc::MapEntry;
use crate::receivers::ebpf_profiler::bpf::loader::TableMaps;
use crate::receivers::ebpf_profiler::bpf::{pod, sys};
use crate::receivers::ebpf_profiler::process::{Listener, ProcessEvent};
use crate::receivers::ebpf_profiler::shared::{MAPPING_KEY_BITS, MappingKeyData};
use crate::telemetry::names;

/// What the manager is told: by the process model (through [`Handle`]'s [`Listener`]),
/// and by its builder thread.
pub enum Msg {
    /// A process's current executable mappings (at first sight, exec, pid reuse, or refresh).
    Process { pid: u32, maps: Vec<MapEntry> },
    /// The process is gone: its ranges can go.
    Gone(u32),
    /// A report interval ended; these processes were sampled in it.
    Interval(Vec<u32>),
    /// From the builder: an executable's table (or why it has none), and how long it took.
    Built {
        id: u64,
        table: Result<Table, super::table::TableError>,
        took: std::time::Duration,
    },
    /// The reader dropped its handle: stop (the builder holds a sender too, so the
    /// channel alone would never close, and the two threads would keep the maps open).
    Stop,
}

/// The manager's end the reader holds. Dropping it stops the manager.
pub struct Handle {
    tx: SyncSender<Msg>,
    dropped: Counter,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Waits for room: the manager is draining, and must see this.
        let _ = self.tx.send(Msg::Stop);
    }
}

impl Handle {
    /// Sends without waiting: if the manager is behind, the message is dropped and
    /// counted (the process is re-sent at the next refresh or request).
    pub fn send(&self, msg: Msg) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(msg) {
            self.dropped.increment(1);
        }
    }
}

/// The manager follows the process model: tables for what is mapped, ranges dropped for
/// what is gone, and each interval's sampled processes to rank what to keep.
impl Listener for Handle {
    fn on(&mut self, event: &ProcessEvent<'_>) {
        self.send(match *event {
            ProcessEvent::Mapped { pid, maps } => Msg::Process {
                pid,
                maps: maps.to_vec(),
            },
            ProcessEvent::Gone { pid } => Msg::Gone(pid),
            ProcessEvent::Interval { sampled } => Msg::Interval(sampled.to_vec()),
        });
    }
}

/// Starts the manager thread, and the builder thread it hands table builds to (so a
/// large executable's build never delays the mapping index of other processes).
pub fn spawn(maps: TableMaps, max_memory: u64) -> std::io::Result<Handle> {
    let (tx, rx) = sync_channel(1024);
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<(u64, Source)>();
    let built = tx.clone();
    std::thread::Builder::new()
        .name("unwind-build".into())
        .spawn(move || build_loop(jobs_rx, built, super::table::Bounds::for_budget(max_memory)))?;
    let mut m = Manager::new(maps, max_memory, jobs_tx);
    std::thread::Builder::new()
        .name("unwind-tables".into())
        .spawn(move || {
            m.run(rx);
            // The maps' fds close here, so a reloaded receiver does not keep the old
            // programs' maps in the kernel.
            drop(m);
            tracing::debug!("unwind table manager stopped");
        })?;
    Ok(Handle {
        tx,
        dropped: metrics::counter!(names::EBPF_SAMPLES_LOST, "reason" => "unwind_request_dropped"),
    })
}

/// A file's identity on its device.
type FileKey = (String, u64);

/// What a mapped file gave: its table id (0 = none) and its load segments (for the bias).
/// The file itself is not kept open: it is opened again when its table must be built.
#[derive(Clone)]
struct FileInfo {
    exe_id: u64,
    segments: std::sync::Arc<[Segment]>,
}

/// What the builder reads a table from: a file (through `pread`, only the sections it
/// needs; never mapped, so its owner truncating it cannot hurt), or bytes (the vDSO).
#[derive(Clone)]
enum Source {
    File(std::sync::Arc<std::fs::File>),
    Bytes(std::sync::Arc<[u8]>),
}

impl Source {
    fn len(&self) -> u64 {
        match self {
            Source::File(f) => f.metadata().map_or(u64::MAX, |m| m.len()),
            Source::Bytes(b) => b.len() as u64,
        }
    }

    fn build(&self, bounds: super::table::Bounds) -> Result<Table, super::table::TableError> {
        match self {
            Source::File(f) => super::table::build_within(&object::ReadCache::new(&**f), bounds),
            Source::Bytes(b) => super::table::build_within(&b[..], bounds),
        }
    }
}

struct Loaded {
    bytes: u64,
    last_used: u64,
}

/// One range of a process in the mapping index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Range {
    start: u64,
    end: u64,
    exe_id: u64,
    bias: u64,
}

/// Entries of the mapping index (an LPM trie of 2^20) one process may hold.
const MAX_PREFIXES_PER_PROCESS: usize = 16 << 10;

struct Meters {
    refused_cap: Counter,
    refused_full: Counter,
    bytes: Gauge,
    tables: Gauge,
    pending: Gauge,
    build: Histogram,
    evictions: Counter,
}

fn build_result(result: &'static str) -> Counter {
    metrics::counter!(names::EBPF_UNWIND_TABLE_BUILDS, "result" => result)
}

struct Manager {
    maps: TableMaps,
    max_memory: u64,
    used: u64,
    interval: u64,
    files: HashMap<FileKey, Option<FileInfo>>,
    loaded: HashMap<u64, Loaded>,
    /// Executables without a usable table (no .eh_frame, or larger than the budget).
    no_table: HashSet<u64>,
    procs: HashMap<u32, Vec<Range>>,
    vdso: Option<Option<(FileInfo, std::sync::Arc<[u8]>)>>,
    /// Tables handed to the builder and not back yet.
    pending: HashSet<u64>,
    jobs: std::sync::mpsc::Sender<(u64, Source)>,
    meters: Meters,
}

/// Builds tables as they are asked for, smallest file first among those waiting.
fn build_loop(jobs: Receiver<(u64, Source)>, done: SyncSender<Msg>, bounds: super::table::Bounds) {
    let mut waiting: Vec<(u64, Source)> = Vec::new();
    loop {
        if waiting.is_empty() {
            match jobs.recv() {
                Ok(j) => waiting.push(j),
                Err(_) => return,
            }
        }
        while let Ok(j) = jobs.try_recv() {
            waiting.push(j);
        }
        let Some(i) = (0..waiting.len()).min_by_key(|&i| waiting[i].1.len()) else {
            continue;
        };
        let (id, f) = waiting.swap_remove(i);
        let t0 = Instant::now();
        let table =
            crate::pipeline::catch("receiver/ebpf_profiler/unwind-build", || f.build(bounds))
                .unwrap_or(Err(super::table::TableError::Frames(
                    "the table build panicked".into(),
                )));
        let msg = Msg::Built {
            id,
            table,
            took: t0.elapsed(),
        };
        if done.send(msg).is_err() {
            return;
        }
    }
}

/// A file's identity on this host: device, inode, size and change time. Two files
/// that declare the same build ID are still two files: a process that runs an ELF
/// carrying libc's build ID must not change how every other process's libc is unwound.
fn identity(f: &std::fs::File) -> Option<(u64, u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata().ok()?;
    Some((m.dev(), m.ino(), m.size(), m.ctime(), m.ctime_nsec()))
}

/// The table id of an executable: a hash of its build ID (else of its first and last
/// 4 KiB and its length) and of the file's identity where there is one (not for the
/// vDSO). Never 0 (which means "no table").
fn exe_id<'d, R: object::ReadRef<'d>>(data: R, file: Option<(u64, u64, u64, i64, i64)>) -> u64 {
    let from_id = crate::host::elf::build_id_in(data)
        .filter(|id| id.as_str().len() >= 16)
        .map(|id| id.prefix_u64());
    let id = from_id.unwrap_or_else(|| {
        let len = data.len().unwrap_or(0);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        data.read_bytes_at(0, len.min(4096))
            .unwrap_or(&[])
            .hash(&mut h);
        data.read_bytes_at(len.saturating_sub(4096), len.min(4096))
            .unwrap_or(&[])
            .hash(&mut h);
        len.hash(&mut h);
        h.finish()
    });
    let id = match file {
        None => id,
        Some(ident) => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (id, ident).hash(&mut h);
            h.finish()
        }
    };
    id.max(1)
}

/// The LPM prefixes covering `[start, end)`: (address, prefix bits of the address).
pub fn prefixes(start: u64, end: u64) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    let mut a = start;
    while a < end {
        let mut bits = if a == 0 {
            63
        } else {
            a.trailing_zeros().min(63)
        };
        while bits > 0 && a.checked_add(1u64 << bits).is_none_or(|e| e > end) {
            bits -= 1;
        }
        out.push((a, 64 - bits));
        match a.checked_add(1u64 << bits) {
            Some(n) => a = n,
            None => break,
        }
    }
    out
}

impl Manager {
    fn new(maps: TableMaps, max_memory: u64, jobs: std::sync::mpsc::Sender<(u64, Source)>) -> Self {
        Manager {
            maps,
            max_memory,
            used: 0,
            interval: 0,
            files: HashMap::new(),
            loaded: HashMap::new(),
            no_table: HashSet::new(),
            procs: HashMap::new(),
            vdso: None,
            pending: HashSet::new(),
            jobs,
            meters: Meters {
                refused_cap: metrics::counter!(names::EBPF_UNWIND_MAPPINGS_REFUSED, "reason" => "process_cap"),
                refused_full: metrics::counter!(names::EBPF_UNWIND_MAPPINGS_REFUSED, "reason" => "index_full"),
                bytes: metrics::gauge!(names::EBPF_UNWIND_TABLE_BYTES),
                tables: metrics::gauge!(names::EBPF_UNWIND_TABLES),
                pending: metrics::gauge!(names::EBPF_UNWIND_TABLES_PENDING),
                build: metrics::histogram!(names::EBPF_UNWIND_TABLE_BUILD_SECONDS),
                evictions: metrics::counter!(names::EBPF_UNWIND_TABLE_EVICTIONS),
            },
        }
    }

    fn run(&mut self, rx: Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            if matches!(msg, Msg::Stop) {
                // Dropping `self.jobs` with the manager ends the builder after its build.
                return;
            }
            // A bug here must not take unwinding down for good: the message is dropped.
            let r = crate::pipeline::catch("receiver/ebpf_profiler/unwind-tables", || match msg {
                Msg::Stop => {}
                Msg::Process { pid, maps } => self.process(pid, &maps),
                Msg::Gone(pid) => self.gone(pid),
                Msg::Interval(pids) => self.next_interval(&pids),
                Msg::Built { id, table, took } => self.built(id, table, took),
            });
            if r.is_err() {
                self.files.clear();
            }
        }
    }

    /// The file behind mapping `m` of `pid`, read at most once per file; with it, when
    /// just opened, the source to build its table from.
    fn file(&mut self, pid: u32, m: &MapEntry) -> Option<(FileInfo, Option<Source>)> {
        if m.path == "[vdso]" {
            if self.vdso.is_none() {
                self.vdso = Some(own_vdso().and_then(|data| {
                    let data: std::sync::Arc<[u8]> = data.into();
                    let info = FileInfo {
                        exe_id: exe_id(&data[..], None),
                        segments: segments_in(&data[..])?.into(),
                    };
                    Some((info, data))
                }));
            }
            let (info, data) = self.vdso.clone().flatten()?;
            return Some((info, Some(Source::Bytes(data))));
        }
        let key = (m.dev.clone(), m.inode);
        if let Some(f) = self.files.get(&key) {
            return f.clone().map(|f| (f, None));
        }
        let file = crate::host::open::open_mapped(pid, m.start, m.end, &m.path).ok()?;
        let info = segments(&file).map(|segs| FileInfo {
            exe_id: exe_id(&object::ReadCache::new(&file), identity(&file)),
            segments: segs.into(),
        });
        // Bound the cache: files come and go with processes.
        if self.files.len() > 8192 {
            self.files.clear();
        }
        self.files.insert(key, info.clone());
        info.map(|i| (i, Some(Source::File(std::sync::Arc::new(file)))))
    }

    /// The id the mapping index should carry for `f`: its table's, handed to the
    /// builder if need be (until it is loaded, the program falls back to frame pointers
    /// and asks again); 0 if it can have none. `open` gives the file when the table
    /// must be built (it was just opened, or is opened again).
    fn table_id(
        &mut self,
        f: &FileInfo,
        source: Option<Source>,
        open: impl FnOnce() -> Option<Source>,
    ) -> u64 {
        let id = f.exe_id;
        if let Some(l) = self.loaded.get_mut(&id) {
            l.last_used = self.interval;
            return id;
        }
        if self.no_table.contains(&id) {
            return 0;
        }
        if !self.pending.contains(&id) {
            let Some(src) = source.or_else(open) else {
                return 0;
            };
            self.pending.insert(id);
            if self.jobs.send((id, src)).is_err() {
                self.pending.remove(&id);
            }
        }
        self.meters.pending.set(self.pending.len() as f64);
        id
    }

    /// A table is built: loaded within the budget, or remembered as impossible.
    fn built(
        &mut self,
        id: u64,
        table: Result<Table, super::table::TableError>,
        took: std::time::Duration,
    ) {
        self.pending.remove(&id);
        self.meters.pending.set(self.pending.len() as f64);
        self.meters.build.record(took.as_secs_f64());
        let table = match table {
            Ok(t) => t,
            Err(e @ super::table::TableError::TooLarge { .. }) => {
                tracing::warn!(exe_id = format!("{id:x}"), error = %e, "an unwind table was refused before it was built; its frames fall back to frame pointers");
                build_result("too_large").increment(1);
                self.no_table.insert(id);
                return;
            }
            Err(e) => {
                tracing::debug!(exe_id = format!("{id:x}"), error = %e, "no unwind table");
                build_result("no_frames").increment(1);
                self.no_table.insert(id);
                return;
            }
        };
        let bytes = table.bytes();
        if bytes > self.max_memory {
            build_result("too_large").increment(1);
            self.no_table.insert(id);
            return;
        }
        self.make_room(bytes);
        match self.load(id, &table) {
            Ok(()) => {
                build_result("loaded").increment(1);
                self.used += bytes;
                self.loaded.insert(
                    id,
                    Loaded {
                        bytes,
                        last_used: self.interval,
                    },
                );
                self.meters.bytes.set(self.used as f64);
                self.meters.tables.set(self.loaded.len() as f64);
            }
            Err(e) => {
                tracing::warn!(exe_id = format!("{id:x}"), error = %e, "cannot load an unwind table; its frames fall back to frame pointers");
                build_result("map_full").increment(1);
                self.unload(id);
            }
        }
    }

    /// Evicts least recently used tables until `bytes` more fit the budget.
    fn make_room(&mut self, bytes: u64) {
        while self.used + bytes > self.max_memory {
            let Some((&victim, _)) = self.loaded.iter().min_by_key(|(_, l)| l.last_used) else {
                return;
            };
            if let Some(l) = self.loaded.remove(&victim) {
                self.unload(victim);
                self.used -= l.bytes;
                self.meters.evictions.increment(1);
            }
        }
        self.meters.bytes.set(self.used as f64);
        self.meters.tables.set(self.loaded.len() as f64);
    }

    /// Writes a table into the kernel: its chunks (directory, then rows) into a new
    /// array sized for it, then the array into the map-of-maps.
    fn load(&mut self, id: u64, t: &Table) -> std::io::Result<()> {
        let inner = sys::map_create(
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
            4,
            std::mem::size_of::<Chunk>() as u32,
            t.chunks.len().max(1) as u32,
            sys::BPF_F_INNER_MAP,
            None,
            "unwind_rows",
        )?;
        for (i, c) in t.chunks.iter().enumerate() {
            sys::map_update(
                inner.as_fd(),
                &(i as u32).to_ne_bytes(),
                Some(pod::bytes_of(c)),
            )?;
        }
        sys::map_update(
            self.maps.tables.as_fd(),
            &id.to_ne_bytes(),
            Some(&(std::os::fd::AsRawFd::as_raw_fd(&inner) as u32).to_ne_bytes()),
        )
    }

    fn unload(&mut self, id: u64) {
        let _ = sys::map_update(self.maps.tables.as_fd(), &id.to_ne_bytes(), None);
    }

    /// Tells the program to forget the mappings its CPUs remember: one was removed or changed.
    fn bump_generation(&mut self) {
        self.maps.settings.generation = self.maps.settings.generation.wrapping_add(1);
        if let Err(e) = self.maps.config.set(0, self.maps.settings, 0) {
            tracing::debug!(error = %e, "cannot update the program's settings");
        }
    }

    /// Inserts (or removes) a range's prefixes; an insert that fails part-way (the
    /// index is full) is undone and reported as false, so it is tried again later.
    fn set_range(&mut self, pid: u32, r: &Range, insert: bool) -> bool {
        let all = prefixes(r.start, r.end);
        for (i, &(addr, bits)) in all.iter().enumerate() {
            // The pid's 32 bits, then the address's `bits`.
            let key = Key::new(
                MAPPING_KEY_BITS - 64 + bits,
                MappingKeyData {
                    pid_be: pid.to_be(),
                    addr_be: addr.to_be(),
                },
            );
            let res = if insert {
                let info = MappingInfo {
                    exe_id: r.exe_id,
                    bias: r.bias,
                    start: r.start,
                    end: r.end,
                };
                self.maps.mappings.insert(&key, info, 0)
            } else {
                self.maps.mappings.remove(&key)
            };
            if let Err(e) = res
                && insert
            {
                tracing::debug!(pid, error = %e, "cannot add a mapping to the unwind index");
                let done = all[..i].to_vec();
                for (addr, bits) in done {
                    let key = Key::new(
                        MAPPING_KEY_BITS - 64 + bits,
                        MappingKeyData {
                            pid_be: pid.to_be(),
                            addr_be: addr.to_be(),
                        },
                    );
                    let _ = self.maps.mappings.remove(&key);
                }
                return false;
            }
        }
        true
    }

    fn process(&mut self, pid: u32, maps: &[MapEntry]) {
        let mut want = Vec::new();
        for m in maps.iter().filter(|m| m.executable) {
            let anon = m.path.is_empty() || (m.path.starts_with('[') && m.path != "[vdso]");
            let (exe_id, bias) = if anon || m.inode == 0 && m.path != "[vdso]" {
                // JIT or other anonymous code: frame pointers only, without asking again.
                (0, 0)
            } else {
                match self.file(pid, m) {
                    Some((f, source)) => {
                        let id = self.table_id(&f, source, || {
                            crate::host::open::open_mapped(pid, m.start, m.end, &m.path)
                                .ok()
                                .map(|f| Source::File(std::sync::Arc::new(f)))
                        });
                        let offset = if m.path == "[vdso]" { 0 } else { m.offset };
                        match bias(&f.segments, m.start, offset) {
                            Some(b) if id != 0 => (id, b),
                            _ => (0, 0),
                        }
                    }
                    None => (0, 0),
                }
            };
            want.push(Range {
                start: m.start,
                end: m.end,
                exe_id,
                bias,
            });
        }
        // Sets, not Vec::contains: a process may have tens of thousands of ranges, and
        // a quadratic diff kept this thread (and every other process's ranges) waiting
        // for seconds on each re-read of such a process.
        let old: HashSet<Range> = self
            .procs
            .remove(&pid)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let wanted: HashSet<Range> = want.iter().copied().collect();
        let mut removed = false;
        for r in old.iter().filter(|r| !wanted.contains(r)) {
            self.set_range(pid, r, false);
            removed = true;
        }
        if removed {
            self.bump_generation();
        }
        // One process may hold at most MAX_PREFIXES_PER_PROCESS entries of the index,
        // so that one with tens of thousands of executable mappings cannot fill it for
        // everyone. Ranges left out (past the cap, or refused by a full index) are not
        // remembered as in the index, so the next read of the process tries them again.
        let mut kept = Vec::with_capacity(want.len());
        let mut used = 0;
        for r in want {
            let n = prefixes(r.start, r.end).len();
            if used + n > MAX_PREFIXES_PER_PROCESS {
                self.meters.refused_cap.increment(1);
                continue;
            }
            if old.contains(&r) || self.set_range(pid, &r, true) {
                used += n;
                kept.push(r);
            } else {
                self.meters.refused_full.increment(1);
            }
        }
        self.procs.insert(pid, kept);
    }

    fn gone(&mut self, pid: u32) {
        if let Some(ranges) = self.procs.remove(&pid) {
            for r in &ranges {
                self.set_range(pid, r, false);
            }
            self.bump_generation();
        }
    }

    fn next_interval(&mut self, pids: &[u32]) {
        for pid in pids {
            if let Some(ranges) = self.procs.get(pid) {
                for r in ranges {
                    if let Some(l) = self.loaded.get_mut(&r.exe_id) {
                        l.last_used = self.interval;
                    }
                }
            }
        }
        self.interval += 1;
    }
}

/// This process's vDSO image (the same in every process of this kernel).
fn own_vdso() -> Option<Vec<u8>> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let m = crate::host::proc::parse_maps(&maps)
        .into_iter()
        .find(|m| m.path == "[vdso]")?;
    let mut data = vec![0u8; (m.end - m.start) as usize];
    let f = std::fs::File::open("/proc/self/mem").ok()?;
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut data, m.start).ok()?;
    Some(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_cover_a_range_exactly() {
        for (start, end) in [
            (0x55d0c0a21000u64, 0x55d0c0b00000u64),
            (0x7f0000001000, 0x7f0000001000 + 0x1d5000),
            (0x1000, 0x2000),
            (0, 0x10),
        ] {
            let p = prefixes(start, end);
            let mut a = start;
            for &(addr, bits) in &p {
                assert_eq!(addr, a, "contiguous");
                let size = 1u64 << (64 - bits);
                assert_eq!(addr % size, 0, "aligned");
                a += size;
            }
            assert_eq!(a, end);
            assert!(p.len() <= 2 * 64);
        }
    }
}
