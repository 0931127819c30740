//! Loading the profiler's eBPF object: aya-obj parses it and fills the read-only globals,
//! aya creates its maps, we create the one aya cannot (the unwind tables' map-of-maps),
//! aya-obj relocates the programs' instructions against them, and
//! [`verifier_log`](super::verifier_log) loads each program (aya's own load path cannot
//! size or keep the verifier log). The mode's walker (the unwinder, or the frame-pointer
//! walker) goes into the program array the entry program tail-calls; then one cpu-clock
//! perf event per CPU gets the entry attached.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use aya::maps::{Array, HashMap as BpfHash, LpmTrie, Map, MapData, PerCpuArray, RingBuf};
use aya_obj::generated::{bpf_map_type, bpf_prog_type};
use aya_obj::obj::{EbpfSectionKind, ProgramSection};

use super::super::shared::{self, Bucket, Config, MappingKeyData, SelectConfig, Verdict};
use super::super::unwind::rules::{Chunk, MappingInfo};
use super::kernel::TaskOffsets;
use super::sys::{self, ProgLoad};
use super::verifier_log::{self, LogSettings, VerifierLog};

/// The entry program's name in the object.
pub const PROGRAM: &str = "stackline_sample";
/// The unwinder's name (tail-called by the entry program in the native modes).
pub const UNWINDER: &str = "stackline_unwind";
/// The frame-pointer walker's name (tail-called in `frame_pointer` mode).
pub const FP_WALKER: &str = "stackline_fp_walk";
/// The raw tracepoint programs that note process changes (exec, a rename, a process's
/// end, a move to another cgroup), each with the tracepoint it is attached to.
pub const PROC_PROGRAMS: [(&str, &str); 4] = [
    ("stackline_exec", "sched_process_exec"),
    ("stackline_rename", "task_rename"),
    ("stackline_exit", "sched_process_exit"),
    ("stackline_cgroup", "cgroup_attach_task"),
];
/// Executables whose tables can be loaded at once (entries of the map-of-maps).
pub const MAX_TABLES: u32 = 4096;

/// The profiler object built from `ebpf/` (see scripts/build-ebpf.sh).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../../../../ebpf/prebuilt/stackline.bpf.o");

/// The maps user space fills so the unwinder can walk stacks without frame pointers.
pub struct TableMaps {
    /// The program's settings, whose `generation` tells it to forget cached mappings.
    pub config: Array<MapData, Config>,
    pub settings: Config,
    /// (pid, address) → mapping (an LPM trie).
    pub mappings: LpmTrie<MapData, MappingKeyData, MappingInfo>,
    /// Executable id → its array of chunks (a hash of maps).
    pub tables: OwnedFd,
}

/// The maps of process selection, which user space rewrites while the program runs.
pub struct SelectMaps {
    pub select: Array<MapData, SelectConfig>,
    pub cgroups: BpfHash<MapData, u64, u64>,
    pub uids: BpfHash<MapData, u32, u64>,
    pub pids: BpfHash<MapData, u32, u64>,
    /// An LRU hash: tgid → verdict.
    pub verdicts: BpfHash<MapData, u32, Verdict>,
    /// Per-rule sample counts (`2 * rule` taken, `+ 1` skipped).
    pub rules: PerCpuArray<MapData, u64>,
    /// An LRU hash: target → budget.
    pub budgets: BpfHash<MapData, u64, Bucket>,
}

pub use super::error::LoadError;
use super::error::map_io;

/// A loaded, attached profiler.
pub struct Profiler {
    /// Keeps the maps the reader does not use (among them the program array) alive.
    _maps: Vec<MapData>,
    pub program_fd: OwnedFd,
    pub log: VerifierLog,
    /// The mode's walker: the unwinder, or the frame-pointer walker.
    pub walker_fd: OwnedFd,
    pub samples: RingBuf<MapData>,
    pub counters: PerCpuArray<MapData, u64>,
    /// Requests for unwind information, in the native modes.
    pub events: Option<RingBuf<MapData>>,
    /// The unwind tables' maps, in the native modes.
    pub tables: Option<TableMaps>,
    /// Process selection's maps (taken by the reader).
    pub select: Option<SelectMaps>,
    /// [`PROC_PROGRAMS`], loaded, each with its raw tracepoint's fd (closing it
    /// detaches the program).
    pub proc_programs: Vec<(&'static str, OwnedFd, OwnedFd)>,
    /// One enabled perf event per sampled CPU; closing them detaches the program.
    _events: Vec<OwnedFd>,
}

/// Names of the capabilities this process has that matter here, from /proc/self/status.
fn capabilities() -> (bool, String) {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    let has = |c: u32| eff & (1u64 << c) != 0;
    let names: Vec<&str> = [
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
    ]
    .iter()
    .filter(|(c, _)| has(*c))
    .map(|(_, n)| *n)
    .collect();
    let enough = has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
    let desc = if names.is_empty() {
        "none of them".to_owned()
    } else {
        format!("only {}", names.join(", "))
    };
    (enough, desc)
}

/// What to load and how.
pub struct LoadRequest<'a> {
    pub object: &'a [u8],
    pub log: LogSettings,
    pub config: Config,
    pub cpus: &'a [u32],
    pub frequency: u64,
    /// Where a task's user registers are; None leaves samples taken in the kernel
    /// without a user stack in the native modes, and to the kernel's walk in
    /// `frame_pointer` mode.
    pub offsets: Option<TaskOffsets>,
    /// Writes the selection rules into their maps, before the program is attached.
    pub select: &'a (dyn Fn(&mut SelectMaps) -> std::io::Result<()> + Sync),
}

/// Takes map `name` out of `maps` as the reader's wrapper `T`. The map is wrapped as the
/// kind the object declared it, so `T::try_from` refuses a map of another kind (and, for
/// arrays, of other key or value sizes).
fn take<T: TryFrom<Map, Error = aya::maps::MapError>>(
    maps: &mut HashMap<String, MapData>,
    declared: &HashMap<String, aya_obj::Map>,
    name: &str,
) -> Result<T, LoadError> {
    let data = maps
        .remove(name)
        .ok_or_else(|| LoadError::object(format!("map `{name}` missing")))?;
    let kind = declared.get(name).map_or(0, |m| m.map_type());
    let map = match kind {
        k if k == bpf_map_type::BPF_MAP_TYPE_ARRAY as u32 => Map::Array(data),
        k if k == bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY as u32 => Map::PerCpuArray(data),
        k if k == bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32 => Map::RingBuf(data),
        k if k == bpf_map_type::BPF_MAP_TYPE_LPM_TRIE as u32 => Map::LpmTrie(data),
        k if k == bpf_map_type::BPF_MAP_TYPE_HASH as u32 => Map::HashMap(data),
        k if k == bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32 => Map::LruHashMap(data),
        _ => {
            return Err(LoadError::object(format!(
                "map `{name}` is of type {kind}, which the reader does not use"
            )));
        }
    };
    T::try_from(map).map_err(|e| LoadError::object_because(format!("map `{name}`"), e))
}

/// Checks privileges, loads and attaches. On failure the error says what to do;
/// `on_loaded` sees the verifier log of each program that loaded, even if a later step fails.
pub fn load(
    req: &LoadRequest<'_>,
    on_loaded: &mut dyn FnMut(&str, &VerifierLog),
) -> Result<Profiler, LoadError> {
    let (enough, have) = capabilities();
    if !enough {
        return Err(LoadError::Capabilities { have });
    }
    sys::raise_memlock_rlimit();
    let native = req.config.mode != shared::mode::FRAME_POINTER;

    // Enough ring buffer for ~50 ms of samples on every CPU at 1 kHz, within 4–64 MiB.
    let ring = ((req.cpus.len().max(1) * 128 * 1024) as u32)
        .next_power_of_two()
        .clamp(4 << 20, 64 << 20);
    let offsets = req.offsets.unwrap_or(TaskOffsets {
        task_stack: 0,
        pt_regs: 0,
        task_mm: 0,
        task_exec_id: 0,
    });
    let mut obj = aya_obj::Object::parse(req.object)
        .map_err(|e| LoadError::object_because("parsing it", e))?;
    let (task_stack, pt_regs, task_mm, task_exec_id) = (
        offsets.task_stack.to_ne_bytes(),
        offsets.pt_regs.to_ne_bytes(),
        offsets.task_mm.to_ne_bytes(),
        offsets.task_exec_id.to_ne_bytes(),
    );
    obj.patch_map_data(HashMap::from([
        ("TASK_STACK_OFFSET", (&task_stack[..], false)),
        ("PT_REGS_OFFSET", (&pt_regs[..], false)),
        ("TASK_MM_OFFSET", (&task_mm[..], false)),
        ("TASK_EXEC_ID_OFFSET", (&task_exec_id[..], false)),
    ]))
    .map_err(|e| LoadError::object_because("setting its task offsets", e))?;
    // The tables' map-of-maps: arrays of chunks, each sized for its executable.
    let tables = if native && obj.maps.contains_key("TABLES") {
        let template = sys::map_create(
            bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
            4,
            std::mem::size_of::<Chunk>() as u32,
            1,
            sys::BPF_F_INNER_MAP,
            None,
            "unwind_tmpl",
        )
        .map_err(|e| LoadError::map("creating the unwind table template", e))?;
        Some(
            sys::map_create(
                bpf_map_type::BPF_MAP_TYPE_HASH_OF_MAPS as u32,
                8,
                4,
                MAX_TABLES,
                0,
                Some(template.as_fd()),
                "TABLES",
            )
            .map_err(|e| {
                LoadError::map(
                    "creating the unwind tables' map-of-maps (BPF_F_INNER_MAP needs Linux 5.10+)",
                    e,
                )
            })?,
        )
    } else {
        None
    };
    // The object's maps, created here rather than by aya's `EbpfLoader`: its constructor
    // parses the kernel's whole BTF (30-70 ms of every start), which this object does not
    // use (rustc emits no CO-RE relocations, and the object carries no BTF of its own).
    // What follows is what its `load` does for the kinds of maps this object declares.
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    let obj_maps: HashMap<String, aya_obj::Map> = obj.maps.drain().collect();
    let mut maps: HashMap<String, MapData> = HashMap::new();
    for (name, def) in &obj_maps {
        if name == "TABLES" && tables.is_some() {
            continue;
        }
        let mut def = def.clone();
        if def.map_type() == bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32 {
            // A ring buffer has no values; its size is its entry count, which the kernel
            // wants a power-of-two multiple of the page size.
            def.set_value_size(0);
            if name == "SAMPLES" {
                def.set_max_entries(ring);
            }
            let size = def.max_entries();
            if !size.is_power_of_two() || size < 4096 {
                return Err(LoadError::object(format!(
                    "ring buffer `{name}` is {size} bytes; it must be a power of two of at least 4 KiB"
                )));
            }
        }
        let data = def.data().to_vec();
        if !data.is_empty() && data.len() != def.value_size() as usize {
            return Err(LoadError::object(format!(
                "global data map `{name}` holds {} bytes for a {}-byte value",
                data.len(),
                def.value_size()
            )));
        }
        let rodata = matches!(def.section_kind(), EbpfSectionKind::Rodata);
        let map = MapData::create(def, name, None)
            .map_err(|e| LoadError::map(format!("creating map `{name}`"), map_io(e)))?;
        // Global data (`.rodata`, `.data`, `.bss`) is one value at key 0; read-only data is
        // frozen so that the verifier may treat it as constant (aya's `MapData::finalize`
        // does the same, but is not public).
        if !data.is_empty() {
            sys::map_update(map.fd().as_fd(), &0u32.to_ne_bytes(), Some(&data))
                .map_err(|e| LoadError::map(format!("filling map `{name}`"), e))?;
        }
        if rodata {
            sys::map_freeze(map.fd().as_fd())
                .map_err(|e| LoadError::map(format!("freezing map `{name}`"), e))?;
        }
        maps.insert(name.clone(), map);
    }
    let mut fds: Vec<(String, i32)> = maps
        .iter()
        .map(|(name, m)| (name.clone(), m.fd().as_fd().as_raw_fd()))
        .collect();
    if let Some(t) = &tables {
        fds.push(("TABLES".to_owned(), t.as_raw_fd()));
    }
    obj.relocate_maps(
        fds.iter().map(|(n, fd)| (n.as_str(), *fd, &obj_maps[n])),
        &text_sections,
    )
    .map_err(|e| LoadError::object_because("relocating its map references", e))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| LoadError::object_because("relocating its calls", e))?;
    obj.sanitize_functions(aya::features());

    let load_one = |name: &str| -> Result<verifier_log::Loaded, LoadError> {
        let prog = obj
            .programs
            .get(name)
            .ok_or_else(|| LoadError::object(format!("no program `{name}` in the object")))?;
        let prog_type = match prog.section {
            ProgramSection::PerfEvent => bpf_prog_type::BPF_PROG_TYPE_PERF_EVENT,
            ProgramSection::RawTracePoint => bpf_prog_type::BPF_PROG_TYPE_RAW_TRACEPOINT,
            _ => {
                return Err(LoadError::object(format!(
                    "`{name}` is neither a perf_event nor a raw tracepoint program"
                )));
            }
        };
        let function = obj
            .functions
            .get(&prog.function_key())
            .ok_or_else(|| LoadError::object(format!("no code for `{name}`")))?;
        verifier_log::load(
            &ProgLoad {
                prog_type: prog_type as u32,
                name,
                insns: &function.instructions,
                license: &obj.license,
                kern_version: obj.kernel_version.unwrap_or(0),
            },
            &req.log,
        )
        .map_err(|failure| LoadError::Program {
            program: name.to_owned(),
            failure,
        })
    };
    let loaded = load_one(PROGRAM)?;
    on_loaded(PROGRAM, &loaded.log);
    let (walker, index) = if native {
        (UNWINDER, shared::prog::UNWINDER)
    } else {
        (FP_WALKER, shared::prog::FP_WALKER)
    };
    // The entry program tail-calls the walker from PROGS.
    let walker_fd = {
        let u = load_one(walker)?;
        on_loaded(walker, &u.log);
        let progs = maps
            .get("PROGS")
            .ok_or_else(|| LoadError::object("map `PROGS` missing"))?;
        sys::map_update(
            progs.fd().as_fd(),
            &index.to_ne_bytes(),
            Some(&(u.fd.as_raw_fd() as u32).to_ne_bytes()),
        )
        .map_err(|e| LoadError::map(format!("installing `{walker}` in `PROGS`"), e))?;
        u.fd
    };

    // Process changes are followed from before the first sample: a verdict cached per
    // CPU is trusted only while they say no process has changed (`select::verdict`).
    let mut proc_programs = Vec::with_capacity(PROC_PROGRAMS.len());
    for (name, tracepoint) in PROC_PROGRAMS {
        let p = load_one(name)?;
        on_loaded(name, &p.log);
        let link = sys::raw_tracepoint_open(tracepoint, p.fd.as_fd()).map_err(|source| {
            LoadError::Attach {
                program: name.to_owned(),
                target: format!("the raw tracepoint `{tracepoint}`"),
                hint: match source.raw_os_error() {
                    Some(libc::EPERM) | Some(libc::EACCES) => "needs CAP_BPF and CAP_PERFMON",
                    _ => "the kernel refused the raw tracepoint; see `stackline ebpf-check`",
                },
                source,
            }
        })?;
        proc_programs.push((name, p.fd, link));
    }

    let mut config: Array<MapData, Config> = take(&mut maps, &obj_maps, "CONFIG")?;
    config
        .set(0, req.config, 0)
        .map_err(|e| LoadError::map("writing the settings into `CONFIG`", map_io(e)))?;
    let samples: RingBuf<MapData> = take(&mut maps, &obj_maps, "SAMPLES")?;
    let counters: PerCpuArray<MapData, u64> = take(&mut maps, &obj_maps, "COUNTERS")?;
    let mut select = SelectMaps {
        select: take(&mut maps, &obj_maps, "SELECT")?,
        cgroups: take(&mut maps, &obj_maps, "SEL_CGROUPS")?,
        uids: take(&mut maps, &obj_maps, "SEL_UIDS")?,
        pids: take(&mut maps, &obj_maps, "SEL_PIDS")?,
        verdicts: take(&mut maps, &obj_maps, "VERDICTS")?,
        rules: take(&mut maps, &obj_maps, "SEL_RULES")?,
        budgets: take(&mut maps, &obj_maps, "BUDGETS")?,
    };
    // Before the program is attached: the first samples already see the rules.
    (req.select)(&mut select).map_err(|e| LoadError::map("writing the selection rules", e))?;
    let (events, table_maps) = match tables {
        Some(tables) => {
            let events: RingBuf<MapData> = take(&mut maps, &obj_maps, "EVENTS")?;
            let mappings = take(&mut maps, &obj_maps, "MAPPINGS")?;
            (
                Some(events),
                Some(TableMaps {
                    config,
                    settings: req.config,
                    mappings,
                    tables,
                }),
            )
        }
        None => {
            drop(config);
            (None, None)
        }
    };

    let mut events_fds = Vec::with_capacity(req.cpus.len());
    for &cpu in req.cpus {
        let attach_err = |e: std::io::Error| {
            let errno = e.raw_os_error().unwrap_or(0);
            LoadError::Attach {
                program: PROGRAM.to_owned(),
                target: format!("the cpu-clock event of CPU {cpu}"),
                source: e,
                hint: match errno {
                    libc::EACCES | libc::EPERM => {
                        "needs CAP_PERFMON (or kernel.perf_event_paranoid <= -1)"
                    }
                    libc::ENODEV | libc::ENOENT => {
                        "the CPU is offline or does not exist; check `cpus`"
                    }
                    libc::EMFILE => "too many open files; raise the file descriptor limit",
                    _ => "see the kernel's perf_event_open documentation for this errno",
                },
            }
        };
        let ev = sys::perf_event_open_cpu_clock(cpu, req.frequency, req.config.include_idle == 0)
            .map_err(attach_err)?;
        sys::perf_event_attach(ev.as_fd(), loaded.fd.as_fd()).map_err(attach_err)?;
        events_fds.push(ev);
    }
    Ok(Profiler {
        _maps: maps.into_values().collect(),
        program_fd: loaded.fd,
        log: loaded.log,
        walker_fd,
        samples,
        counters,
        events,
        tables: table_maps,
        select: Some(select),
        proc_programs,
        _events: events_fds,
    })
}

/// Sums a per-CPU counter.
pub fn counter(counters: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
    counters
        .get(&index, 0)
        .map(|per_cpu| per_cpu.iter().sum())
        .unwrap_or(0)
}
