//! Turning raw samples into one OTLP profile per report interval.
//!
//! Every frame becomes a Location whose address lies inside its Mapping's
//! `[memory_start, memory_limit)`, with the Mapping's file offset, file name and GNU
//! build ID (`process.executable.build_id.gnu`). Kernel frames map to
//! `[kernel.kallsyms]` or their module. Processes come from the [process model](super::process).
//!
//! - [`decode`]: the ring buffer's records.

use crate::otlp::semconv;
use std::collections::HashMap;
use std::time::Instant;

use metrics::Counter;

use super::process::Processes;
use super::shared::COMM_LEN;
use super::unwind::rules::stop;
use crate::host::proc::{BuildIds, KernelMaps, MapEntry};
use crate::otlp::common::{AnyValue, InstrumentationScope, KeyValue, any_value};
use crate::otlp::profiles::{
    KeyValueAndUnit, Location, Mapping, Profile, Sample, Stack, ValueType,
};
use crate::otlp::resource::Resource;
use crate::otlp::{DictionaryBuilder, ProfilesRequest};
use crate::telemetry::names;

mod decode;
mod finish;

pub use decode::DecodedSample;

/// Counters for frames and samples that could not be fully resolved.
struct Meters {
    process_gone: Counter,
    no_mapping: Counter,
    user_stack: Counter,
    kernel_stack: Counter,
}

/// What building a profile looks up: processes (the model), build IDs and kernel
/// ranges, and the counters of what could not be resolved.
pub struct Resolver {
    pub processes: Processes,
    build_ids: BuildIds,
    kernel: KernelMaps,
    meters: Meters,
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new()
    }
}

impl Resolver {
    pub fn new() -> Self {
        let lost =
            |reason: &'static str| metrics::counter!(names::EBPF_SAMPLES_LOST, "reason" => reason);
        Resolver {
            processes: Processes::default(),
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
    /// The fraction of intervals sampled, when probabilistic profiling is on: an
    /// attribute of the profile.
    pub sampling_fraction: Option<f64>,
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
            sampling_fraction: None,
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
            r.processes.sampled(s.tgid, s.tid, &s.comm, now)
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
        let (mapping, mapped) = match r.processes.user_mapping(pid, addr, ktime_ns, now) {
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
