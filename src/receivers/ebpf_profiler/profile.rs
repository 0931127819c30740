//! Turning raw samples into one OTLP profile per report interval.
//!
//! Every frame becomes a Location whose address lies inside its Mapping's
//! `[memory_start, memory_limit)`, with the Mapping's file offset, file name and GNU
//! build ID (`process.executable.build_id.gnu`). Kernel frames map to
//! `[kernel.kallsyms]` or their module. Processes are read at first sight and cached,
//! so short-lived ones still resolve after they exit.

use crate::otlp::semconv;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use metrics::Counter;

use super::shared::{COMM_LEN, FRAME_BY_FP, MAX_KERNEL_FRAMES, MAX_USER_FRAMES, RecordHeader};
use super::sys;
use super::unwind::manager::{self, Msg};
use super::unwind::rules::stop;
use crate::host::proc::{BuildIds, KernelMaps, MapEntry, ProcessInfo};
use crate::otlp::common::{AnyValue, InstrumentationScope, KeyValue, any_value};
use crate::otlp::profiles::{
    KeyValueAndUnit, Location, Mapping, Profile, Sample, Stack, ValueType,
};
use crate::otlp::resource::Resource;
use crate::otlp::{DictionaryBuilder, ProfilesRequest};
use crate::telemetry::names;

/// A sample decoded from the ring buffer. The reader keeps one and decodes every
/// record into it, so its buffers are reused rather than allocated per sample.
#[derive(Debug, Clone, Default)]
pub struct DecodedSample {
    pub tgid: u32,
    pub tid: u32,
    pub cpu: u32,
    pub ktime_ns: u64,
    pub comm: String,
    /// The raw `comm` bytes, NUL-padded (a cheap key for the thread).
    pub comm_raw: [u8; COMM_LEN],
    /// User frames, leaf first (return addresses after the first).
    pub user: Vec<u64>,
    /// Bit i set: user frame i was reached by frame pointer (its code had no table).
    pub user_by_fp: u128,
    pub user_error: Option<i64>,
    pub kernel: Vec<u64>,
    pub kernel_error: Option<i64>,
    /// Why the native walk ended (`unwind::stop`; 0 in frame-pointer mode).
    pub stop: u8,
}

const HEADER: usize = std::mem::size_of::<RecordHeader>();

impl DecodedSample {
    /// Decodes one ring-buffer record (a header, then its frames) into `self`, reusing
    /// its buffers; false (and `self` left unspecified) if the record is cut short.
    pub fn decode_from(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() < HEADER {
            return false;
        }
        // SAFETY: the length is checked; RecordHeader is #[repr(C)] plain integers,
        // valid for any bit pattern; the read is unaligned-safe.
        let h: RecordHeader =
            unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const RecordHeader) };
        let (k, u) = (h.kernel_len as usize, h.user_len as usize);
        if k > MAX_KERNEL_FRAMES || u > MAX_USER_FRAMES {
            return false;
        }
        let Some(frames) = bytes.get(HEADER..HEADER + (k + u) * 8) else {
            return false;
        };
        let mut words = frames
            .chunks_exact(8)
            .map(|w| u64::from_ne_bytes(w.try_into().unwrap_or_default()));
        self.kernel.clear();
        self.kernel
            .extend(words.by_ref().take(k).filter(|&a| a != 0));
        self.user.clear();
        self.user_by_fp = 0;
        for a in words {
            if a & FRAME_BY_FP != 0 && self.user.len() < 128 {
                self.user_by_fp |= 1 << self.user.len();
            }
            let a = a & !FRAME_BY_FP;
            if a != 0 {
                self.user.push(a);
            }
        }
        let comm_end = h.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        if self.comm_raw != h.comm {
            self.comm_raw = h.comm;
            self.comm.clear();
            self.comm
                .push_str(&String::from_utf8_lossy(&h.comm[..comm_end]));
        }
        self.tgid = h.tgid;
        self.tid = h.tid;
        self.cpu = h.cpu;
        self.ktime_ns = h.ktime_ns;
        self.user_error = (h.user_error < 0).then_some(h.user_error as i64);
        self.kernel_error = (h.kernel_error < 0).then_some(h.kernel_error as i64);
        self.stop = h.stop;
        true
    }
}

struct Cached {
    info: Option<ProcessInfo>,
    /// The main thread's comm when last seen: it changes exactly when the process execs.
    main_comm: Option<String>,
    refreshed: Instant,
    /// Least time before the program's next request re-reads the maps: short while
    /// re-reads find new mappings (a process starting, a library loaded), doubling up
    /// to REQUEST_REFRESH_MAX while they find nothing (code with no table: JIT, …).
    request_wait: Duration,
    /// CLOCK_MONOTONIC (the samples' clock) when the maps were last read: a sample taken
    /// after it may be in a mapping made since.
    read_ns: u64,
    /// The last re-read for an address in no mapping did not find it either (anonymous
    /// code, memory unmapped since): such misses re-read at most every REFRESH_EVERY.
    futile: bool,
    seen: Instant,
    /// Report interval in which the start time was last compared.
    checked: u64,
}

/// Counters for frames and samples that could not be fully resolved.
struct Meters {
    process_gone: Counter,
    no_mapping: Counter,
    user_stack: Counter,
    kernel_stack: Counter,
}

/// Reads processes, and tells the unwind-table manager (in the native modes) what it
/// read, so the program can walk them.
#[derive(Default)]
struct Reader {
    tables: Option<manager::Handle>,
}

impl Reader {
    fn read(&self, pid: u32) -> std::io::Result<ProcessInfo> {
        let info = ProcessInfo::read(pid)?;
        if let Some(t) = &self.tables {
            t.send(Msg::Process {
                pid,
                maps: info.maps.clone(),
            });
        }
        Ok(info)
    }
}

/// Process, build-ID and kernel-range lookups, cached.
pub struct Resolver {
    procs: HashMap<u32, Cached>,
    reader: Reader,
    /// Processes sampled in the current interval (their tables count as used).
    sampled: std::collections::HashSet<u32>,
    /// Current report interval: each process's start time is compared once per interval,
    /// so a reused pid is never resolved against the maps of the process it replaced.
    interval: u64,
    build_ids: BuildIds,
    kernel: KernelMaps,
    meters: Meters,
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new()
    }
}

/// How long a process may go unsampled before its cache entry is dropped.
const EVICT_AFTER: Duration = Duration::from_secs(120);
/// How long an exited process's entry is kept after its last sample.
const EXITED_AFTER: Duration = Duration::from_secs(1);
/// Least time between two re-reads of one process's maps.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// The same, when the eBPF program asks (it asks at most every 20 ms per process):
/// at first, and again once a re-read found new mappings.
const REQUEST_REFRESH_MIN: Duration = Duration::from_millis(20);
/// The most it waits once re-reads keep finding nothing new.
const REQUEST_REFRESH_MAX: Duration = Duration::from_secs(1);

impl Resolver {
    pub fn new() -> Self {
        let lost =
            |reason: &'static str| metrics::counter!(names::EBPF_SAMPLES_LOST, "reason" => reason);
        Resolver {
            procs: HashMap::new(),
            reader: Reader::default(),
            sampled: Default::default(),
            interval: 0,
            build_ids: BuildIds::default(),
            kernel: KernelMaps::read(),
            meters: Meters {
                process_gone: lost("process_exited_before_maps_read"),
                no_mapping: lost("frame_outside_any_mapping"),
                user_stack: lost("user_stack_unreadable"),
                kernel_stack: lost("kernel_stack_unreadable"),
            },
        }
    }

    /// Feeds the unwind-table manager from now on.
    pub fn set_tables(&mut self, tables: manager::Handle) {
        self.reader.tables = Some(tables);
    }

    /// The program could not unwind through an address of `pid`: re-read the process
    /// (at most every `request_wait`), so its new mappings (exec, dlopen) get tables.
    pub fn requested(&mut self, pid: u32, now: Instant) {
        match self.procs.get_mut(&pid) {
            Some(c) if now.duration_since(c.refreshed) >= c.request_wait => {
                c.refreshed = now;
                c.read_ns = sys::monotonic_ns();
                if let Ok(fresh) = self.reader.read(pid) {
                    let same = c.info.as_ref().is_some_and(|old| old.maps == fresh.maps);
                    c.request_wait = if same {
                        (c.request_wait * 2).min(REQUEST_REFRESH_MAX)
                    } else {
                        REQUEST_REFRESH_MIN
                    };
                    c.info = Some(fresh);
                }
            }
            Some(_) => {}
            None => {
                self.cached(pid, now);
            }
        }
    }

    /// The cache entry of a process: read at first sight, its start time compared once
    /// per interval.
    fn cached(&mut self, pid: u32, now: Instant) -> &mut Cached {
        let interval = self.interval;
        let reader = &self.reader;
        let entry = self.procs.entry(pid).or_insert_with(|| Cached {
            read_ns: sys::monotonic_ns(),
            info: reader.read(pid).ok(),
            main_comm: None,
            futile: false,
            refreshed: now,
            request_wait: REQUEST_REFRESH_MIN,
            seen: now,
            checked: interval,
        });
        entry.seen = now;
        if entry.checked != interval {
            entry.checked = interval;
            let cached_start = entry.info.as_ref().map(|i| i.start_time);
            // A different start time (or none, after a failed read) means another process
            // now has this pid. If the pid is gone, keep what was read at first sight.
            let read_ns = sys::monotonic_ns();
            if let Ok(start) = crate::host::proc::start_time(pid)
                && cached_start != Some(start)
                && let Ok(fresh) = reader.read(pid)
            {
                entry.info = Some(fresh);
                entry.refreshed = now;
                entry.read_ns = read_ns;
                entry.futile = false;
            }
        }
        entry
    }

    fn process(&mut self, pid: u32, now: Instant) -> Option<&ProcessInfo> {
        self.cached(pid, now).info.as_ref()
    }

    /// The process a sample came from. A new comm on the main thread means the process
    /// exec'd (its pid and start time stay the same), so it is read again at once.
    fn sampled(&mut self, pid: u32, tid: u32, comm: &str, now: Instant) -> Option<&ProcessInfo> {
        self.sampled.insert(pid);
        self.cached(pid, now);
        let reader = &self.reader;
        let c = self.procs.get_mut(&pid)?;
        if pid == tid {
            match &c.main_comm {
                Some(old) if old != comm => {
                    let read_ns = sys::monotonic_ns();
                    if let Ok(fresh) = reader.read(pid) {
                        c.info = Some(fresh);
                        c.refreshed = now;
                        c.read_ns = read_ns;
                        c.futile = false;
                    }
                    c.main_comm = Some(comm.to_owned());
                }
                Some(_) => {}
                None => c.main_comm = Some(comm.to_owned()),
            }
        }
        c.info.as_ref()
    }

    /// The mapping of a user address taken at `ktime_ns`, re-reading the maps when the
    /// address is in none of them: the process exec'd, its loader mapped a library, it
    /// called dlopen, or its pid was reused. A sample taken after the last read is
    /// re-read for at once: the address was mapped when it was taken, so the maps read
    /// now have it unless it was unmapped since. On a busy machine a new process's first
    /// read often lands between exec and its loader mapping libc. Once such a re-read
    /// has not found its address either, misses wait REFRESH_EVERY.
    fn user_mapping(
        &mut self,
        pid: u32,
        addr: u64,
        ktime_ns: u64,
        now: Instant,
    ) -> Option<MapEntry> {
        if let Some(m) = self.process(pid, now).and_then(|p| p.mapping_for(addr)) {
            return Some(m.clone());
        }
        let c = self.procs.get_mut(&pid)?;
        let newer = ktime_ns > c.read_ns && !c.futile;
        if newer || now.duration_since(c.refreshed) >= REFRESH_EVERY {
            c.refreshed = now;
            c.read_ns = sys::monotonic_ns();
            if let Ok(fresh) = self.reader.read(pid) {
                c.info = Some(fresh);
            }
            let found = c.info.as_ref()?.mapping_for(addr).cloned();
            c.futile = found.is_none();
            return found;
        }
        c.info.as_ref()?.mapping_for(addr).cloned()
    }

    /// Starts a new report interval: drops processes not sampled for a while (and
    /// their entries in the unwind index), and tells the table manager what was used.
    pub fn next_interval(&mut self, now: Instant) {
        self.interval += 1;
        let tables = &self.reader.tables;
        self.procs.retain(|&pid, c| {
            let idle = now.duration_since(c.seen);
            // An exited process goes once its last samples are surely read (they were
            // taken over a second ago, and the ring was drained just before this): on a
            // node that starts many short-lived processes, keeping each for
            // EVICT_AFTER held tens of MiB of maps.
            let keep = idle < EVICT_AFTER
                && (idle < EXITED_AFTER || std::fs::exists(format!("/proc/{pid}")).unwrap_or(true));
            if !keep && let Some(t) = tables {
                t.send(Msg::Gone(pid));
            }
            keep
        });
        let sampled: Vec<u32> = self.sampled.drain().collect();
        if let Some(t) = tables {
            t.send(Msg::Interval(sampled));
        }
    }
}

/// The profile of one report interval, built as samples arrive.
pub struct IntervalProfile {
    b: DictionaryBuilder,
    samples: Vec<Sample>,
    start_unix_ns: u64,
    /// Earliest and latest sample times: a sample taken just before the interval
    /// started can be read just after, and the profile's time range must cover it.
    first_ts: u64,
    last_ts: u64,
    period_ns: i64,
    /// (pid, mapping start) → mapping index, and (mapping index, address, reached by
    /// frame pointer) → location index.
    mapping_idx: HashMap<(u32, u64), i32>,
    location_idx: HashMap<(i32, u64, bool), i32>,
    kernel_idx: HashMap<u64, i32>,
    frame_native: i32,
    frame_kernel: i32,
    /// `stackline.unwind.method: frame_pointer`, on frames reached by frame pointer in a native mode.
    by_fp: i32,
    /// `stackline.unwind.stop` attributes by stop reason, made on first use.
    stops: [i32; stop::COUNT as usize],
    /// Raw stacks seen this interval → their stack: a repeated stack (the common case
    /// for a busy thread) skips all per-frame work. Keyed by a hash of the raw words,
    /// compared in full on a hit.
    raw_stacks: FastMap<u64, Vec<RawStack>>,
    /// The raw words of the sample being added (reused, no allocation per sample).
    scratch: Vec<u64>,
    /// (pid, tid, comm) → index in `thread_list` of that thread's attributes this interval.
    threads: FastMap<(u32, u32, [u8; COMM_LEN]), u32>,
    thread_list: Vec<ThreadAttrs>,
    /// (thread, stack, stop reason) → index in `samples`: a thread's samples with the same
    /// stack are one Sample with a timestamp each, the shape the OTLP profiles spec asks
    /// for, so everything downstream works per distinct stack rather than per event.
    sample_idx: FastMap<(u32, i32, u8), u32>,
    /// (pid, address, reached by frame pointer) → location, for user frames.
    user_frames: FastMap<(u32, u64, bool), UserFrame>,
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

struct RawStack {
    words: Box<[u64]>,
    stack_index: i32,
    /// User frames in no mapping (counted again on every repeat).
    unmapped: u64,
}

struct ThreadAttrs {
    attrs: Vec<i32>,
    known: bool,
    user_process: bool,
}

#[derive(Clone, Copy)]
struct UserFrame {
    location: i32,
    mapped: bool,
}

impl IntervalProfile {
    pub fn new(start_unix_ns: u64, frequency: u64) -> Self {
        let mut b = DictionaryBuilder::new();
        let frame_native = str_attr(&mut b, semconv::PROFILE_FRAME_TYPE, "native");
        let frame_kernel = str_attr(&mut b, semconv::PROFILE_FRAME_TYPE, "kernel");
        let by_fp = str_attr(&mut b, semconv::STACKLINE_UNWIND_METHOD, "frame_pointer");
        IntervalProfile {
            b,
            samples: Vec::new(),
            start_unix_ns,
            first_ts: u64::MAX,
            last_ts: 0,
            period_ns: 1_000_000_000 / frequency.max(1) as i64,
            mapping_idx: HashMap::new(),
            location_idx: HashMap::new(),
            kernel_idx: HashMap::new(),
            frame_native,
            frame_kernel,
            by_fp,
            stops: [0; stop::COUNT as usize],
            raw_stacks: FastMap::default(),
            scratch: Vec::new(),
            threads: FastMap::default(),
            thread_list: Vec::new(),
            sample_idx: FastMap::default(),
            user_frames: FastMap::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    fn location(&mut self, mapping: i32, addr: u64, frame_type: i32, fp: bool) -> i32 {
        if let Some(&l) = self.location_idx.get(&(mapping, addr, fp)) {
            return l;
        }
        let mut attribute_indices = vec![frame_type];
        if fp {
            attribute_indices.push(self.by_fp);
        }
        let l = self.b.intern_location(Location {
            mapping_index: mapping,
            address: addr,
            lines: Vec::new(),
            attribute_indices,
        });
        self.location_idx.insert((mapping, addr, fp), l);
        l
    }

    fn user_mapping(&mut self, pid: u32, m: &MapEntry, r: &mut Resolver) -> i32 {
        if let Some(&i) = self.mapping_idx.get(&(pid, m.start)) {
            return i;
        }
        let mut attrs = Vec::new();
        if let Some(id) = r.build_ids.get(pid, m) {
            attrs.push(str_attr(
                &mut self.b,
                semconv::PROCESS_EXECUTABLE_BUILD_ID_GNU,
                id.as_str(),
            ));
        }
        let filename = self.b.intern_string(&m.path);
        let i = self.b.intern_mapping(Mapping {
            memory_start: m.start,
            memory_limit: m.end,
            file_offset: m.offset,
            filename_strindex: filename,
            attribute_indices: attrs,
        });
        self.mapping_idx.insert((pid, m.start), i);
        i
    }

    fn kernel_mapping(&mut self, addr: u64, r: &Resolver) -> i32 {
        let range = r.kernel.find(addr);
        let key = range.map_or(0, |k| k.start);
        if let Some(&i) = self.kernel_idx.get(&key) {
            return i;
        }
        let (start, end, name) = match range {
            Some(k) => (k.start, k.end, k.name.as_str()),
            None => (0, u64::MAX, "[kernel.kallsyms]"),
        };
        let filename = self.b.intern_string(name);
        let i = self.b.intern_mapping(Mapping {
            memory_start: start,
            memory_limit: end,
            file_offset: 0,
            filename_strindex: filename,
            attribute_indices: Vec::new(),
        });
        self.kernel_idx.insert(key, i);
        i
    }

    /// Adds one sample taken at `unix_ns`.
    pub fn add(&mut self, s: &DecodedSample, unix_ns: u64, r: &mut Resolver, now: Instant) {
        if s.kernel_error.is_some() {
            r.meters.kernel_stack.increment(1);
        }
        let thread = self.thread(s, r, now);
        let t = &self.thread_list[thread as usize];
        let (known, user_process) = (t.known, t.user_process);
        if s.tgid != 0 && !known {
            r.meters.process_gone.increment(1);
        }
        // Kernel threads have no user stack; only a user process's failure is a loss.
        if s.user_error.is_some() && user_process {
            r.meters.user_stack.increment(1);
        }
        let (stack_index, unmapped) = self.stack(s, known, r, now);
        if unmapped > 0 {
            r.meters.no_mapping.increment(unmapped);
        }
        let stop = if s.stop > stop::COMPLETE && (s.stop as usize) < self.stops.len() {
            s.stop
        } else {
            0
        };
        self.first_ts = self.first_ts.min(unix_ns);
        self.last_ts = self.last_ts.max(unix_ns);
        let next = self.samples.len() as u32;
        let i = *self
            .sample_idx
            .entry((thread, stack_index, stop))
            .or_insert(next);
        if i != next {
            self.samples[i as usize].timestamps_unix_nano.push(unix_ns);
            return;
        }
        let mut attrs = self.thread_list[thread as usize].attrs.clone();
        if stop != 0 {
            let i = stop as usize;
            if self.stops[i] == 0 {
                self.stops[i] =
                    str_attr(&mut self.b, semconv::STACKLINE_UNWIND_STOP, stop::NAMES[i]);
            }
            attrs.push(self.stops[i]);
        }
        // No values: one event per timestamp, each of weight one.
        self.samples.push(Sample {
            stack_index,
            attribute_indices: attrs,
            link_index: 0,
            values: Vec::new(),
            timestamps_unix_nano: vec![unix_ns],
        });
    }

    /// The index of the sample's thread attributes, made once per thread and interval.
    /// The process is looked up (and told it was sampled) only then: within an interval a
    /// thread's process is the same, unless it exec'd under a new comm (a new key).
    fn thread(&mut self, s: &DecodedSample, r: &mut Resolver, now: Instant) -> u32 {
        if let Some(&t) = self.threads.get(&(s.tgid, s.tid, s.comm_raw)) {
            return t;
        }
        // Process attributes first, borrowing the cached process (no copy per sample).
        let mut attrs = vec![
            int_attr(&mut self.b, semconv::PROCESS_PID, s.tgid as i64),
            int_attr(&mut self.b, semconv::THREAD_ID, s.tid as i64),
            str_attr(&mut self.b, semconv::THREAD_NAME, &s.comm),
        ];
        let idle = s.tgid == 0;
        let info = if idle {
            None
        } else {
            r.sampled(s.tgid, s.tid, &s.comm, now)
        };
        let (known, user_process) = match (idle, info) {
            (true, _) | (false, None) => (false, false),
            (false, Some(info)) => {
                if !info.exe_name.is_empty() {
                    attrs.push(str_attr(
                        &mut self.b,
                        semconv::PROCESS_EXECUTABLE_NAME,
                        &info.exe_name,
                    ));
                    attrs.push(str_attr(
                        &mut self.b,
                        semconv::PROCESS_EXECUTABLE_PATH,
                        &info.exe_path,
                    ));
                }
                if let Some(c) = &info.cgroup.container_id {
                    attrs.push(str_attr(&mut self.b, semconv::CONTAINER_ID, c));
                }
                if let Some(u) = &info.cgroup.pod_uid {
                    attrs.push(str_attr(&mut self.b, semconv::K8S_POD_UID, u));
                }
                (true, !info.exe_path.is_empty())
            }
        };
        let t = self.thread_list.len() as u32;
        self.thread_list.push(ThreadAttrs {
            attrs,
            known,
            user_process,
        });
        self.threads.insert((s.tgid, s.tid, s.comm_raw), t);
        t
    }

    /// The sample's stack, and how many of its user frames are in no mapping. A raw
    /// stack seen before this interval is found by its hash, with no per-frame work.
    fn stack(
        &mut self,
        s: &DecodedSample,
        known: bool,
        r: &mut Resolver,
        now: Instant,
    ) -> (i32, u64) {
        use std::hash::BuildHasher;
        let mut words = std::mem::take(&mut self.scratch);
        words.clear();
        words.extend([
            s.tgid as u64,
            s.user_by_fp as u64,
            (s.user_by_fp >> 64) as u64,
            s.kernel.len() as u64,
        ]);
        words.extend_from_slice(&s.kernel);
        words.extend_from_slice(&s.user);
        let h = self.raw_stacks.hasher().hash_one(&words[..]);
        if let Some(hit) = self
            .raw_stacks
            .get(&h)
            .and_then(|v| v.iter().find(|x| *x.words == words[..]))
        {
            let found = (hit.stack_index, hit.unmapped);
            self.scratch = words;
            return found;
        }
        let mut locations = Vec::with_capacity(s.kernel.len() + s.user.len());
        for &addr in &s.kernel {
            let m = self.kernel_mapping(addr, r);
            locations.push(self.location(m, addr, self.frame_kernel, false));
        }
        let mut unmapped = 0;
        for (i, &addr) in s.user.iter().enumerate() {
            let fp = i < 128 && s.user_by_fp & (1 << i) != 0;
            let f = self.user_frame(s.tgid, addr, fp, s.ktime_ns, r, now);
            if !f.mapped && known {
                // In no mapping even though the maps were read after the sample was
                // taken: not an address of the process as it is (a sample taken inside
                // execve carries the old image's user registers), and what was walked
                // from it is no better. The stack is cut here and the frames counted,
                // rather than sent as locations that belong to no mapping.
                unmapped += (s.user.len() - i) as u64;
                break;
            }
            locations.push(f.location);
        }
        let stack_index = self.b.intern_stack(Stack {
            location_indices: locations,
        });
        // A stack with a frame in no known mapping is not remembered: the lookup below
        // re-reads the process's maps (rate-limited), which also tells the unwinder about
        // a library mapped since, and must keep happening.
        if unmapped == 0 {
            self.raw_stacks.entry(h).or_default().push(RawStack {
                words: words[..].into(),
                stack_index,
                unmapped,
            });
        }
        self.scratch = words;
        (stack_index, unmapped)
    }

    /// The location of a user frame, made once per (pid, address) and interval.
    fn user_frame(
        &mut self,
        pid: u32,
        addr: u64,
        fp: bool,
        ktime_ns: u64,
        r: &mut Resolver,
        now: Instant,
    ) -> UserFrame {
        if let Some(&f) = self.user_frames.get(&(pid, addr, fp)) {
            return f;
        }
        let (mapping, mapped) = match r.user_mapping(pid, addr, ktime_ns, now) {
            Some(m) => (self.user_mapping(pid, &m, r), true),
            None => (0, false),
        };
        let f = UserFrame {
            location: self.location(mapping, addr, self.frame_native, fp),
            mapped,
        };
        if mapped {
            self.user_frames.insert((pid, addr, fp), f);
        }
        f
    }

    /// The interval's request: one profile of `samples/count` sampled on `cpu/nanoseconds`.
    pub fn finish(mut self, end_unix_ns: u64, host: &str) -> ProfilesRequest {
        let sample_type = ValueType {
            type_strindex: self.b.intern_string("samples"),
            unit_strindex: self.b.intern_string("count"),
        };
        let period_type = ValueType {
            type_strindex: self.b.intern_string("cpu"),
            unit_strindex: self.b.intern_string("nanoseconds"),
        };
        let resource = Resource {
            attributes: vec![KeyValue {
                key: semconv::HOST_NAME.into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(host.to_owned())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let scope = InstrumentationScope {
            name: "stackline.ebpf_profiler".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let start = self.start_unix_ns.min(self.first_ts);
        // The range is half-open: it must end after the last sample.
        let end = end_unix_ns.max(self.last_ts.saturating_add(1));
        let profile = Profile {
            sample_type: Some(sample_type),
            samples: std::mem::take(&mut self.samples),
            time_unix_nano: start,
            duration_nano: end - start,
            period_type: Some(period_type),
            period: self.period_ns,
            ..Default::default()
        };
        self.b.push_profile(Some(resource), Some(scope), profile);
        self.b.finish()
    }
}

fn str_attr(b: &mut DictionaryBuilder, key: &str, value: &str) -> i32 {
    let key_strindex = b.intern_string(key);
    b.intern_attribute(KeyValueAndUnit {
        key_strindex,
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        unit_strindex: 0,
    })
}

fn int_attr(b: &mut DictionaryBuilder, key: &str, value: i64) -> i32 {
    let key_strindex = b.intern_string(key);
    b.intern_attribute(KeyValueAndUnit {
        key_strindex,
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        unit_strindex: 0,
    })
}
