//! Loading the profiler's eBPF object: aya creates the maps, aya-obj relocates the
//! program's instructions against them, and [`verifier_log`](super::verifier_log)
//! loads the program (aya's own load path cannot size or keep the verifier log).
//! Then one cpu-clock perf event per CPU gets the program attached.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};
use aya::{Ebpf, EbpfLoader, Pod};
use aya_obj::generated::bpf_prog_type;
use aya_obj::obj::ProgramSection;

use super::shared::{self, Config};
use super::sys::{self, ProgLoad, errno_name};
use super::verifier_log::{self, LoadFailure, LogSettings, VerifierLog};

/// The program's name in the object.
pub const PROGRAM: &str = "stackline_sample";

/// The profiler object built from `ebpf/` (see scripts/build-ebpf.sh).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../../../ebpf/prebuilt/stackline.bpf.o");

#[derive(Clone, Copy)]
#[repr(transparent)]
struct PodConfig(Config);
// SAFETY: Config is #[repr(C)] and holds only integers.
unsafe impl Pod for PodConfig {}

/// Why the profiler could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "the ebpf_profiler receiver needs root, or CAP_BPF and CAP_PERFMON (plus CAP_SYS_PTRACE to read other processes' memory maps); this process has {have}. Run it as root, or grant them, e.g. `setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep stackline`"
    )]
    Capabilities { have: String },
    #[error("cannot read the eBPF object {path}: {source}")]
    ReadObject {
        path: String,
        source: std::io::Error,
    },
    #[error("the eBPF object is unusable: {0}")]
    Object(String),
    #[error(
        "creating the eBPF maps failed: {0}; hint: check capabilities and RLIMIT_MEMLOCK (kernels before 5.11)"
    )]
    Maps(String),
    #[error("{}", .failure.describe(.program))]
    Program {
        program: String,
        failure: LoadFailure,
    },
    #[error(
        "attaching `{program}` to the cpu-clock event of CPU {cpu} failed: {}; hint: {hint}",
        errno_name(*.errno)
    )]
    Attach {
        program: String,
        cpu: u32,
        errno: i32,
        hint: &'static str,
    },
}

/// A loaded, attached profiler.
pub struct Profiler {
    /// Keeps the maps alive.
    _ebpf: Ebpf,
    pub program_fd: OwnedFd,
    pub log: VerifierLog,
    pub samples: RingBuf<MapData>,
    pub counters: PerCpuArray<MapData, u64>,
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
}

/// Checks privileges, loads and attaches. On failure the error says what to do;
/// `on_loaded` sees the verifier log of a program that loaded even if attaching fails.
pub fn load(
    req: &LoadRequest<'_>,
    on_loaded: &mut dyn FnMut(&VerifierLog),
) -> Result<Profiler, LoadError> {
    let (enough, have) = capabilities();
    if !enough {
        return Err(LoadError::Capabilities { have });
    }
    sys::raise_memlock_rlimit();

    // Enough ring buffer for ~50 ms of samples on every CPU at 1 kHz, within 4–64 MiB.
    let ring = ((req.cpus.len().max(1) * 128 * 1024) as u32)
        .next_power_of_two()
        .clamp(4 << 20, 64 << 20);
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("SAMPLES", ring)
        .load(req.object)
        .map_err(|e| LoadError::Maps(e.to_string()))?;

    let mut obj =
        aya_obj::Object::parse(req.object).map_err(|e| LoadError::Object(e.to_string()))?;
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    let obj_maps: HashMap<String, aya_obj::Map> = obj.maps.drain().collect();
    let mut fds = Vec::new();
    for name in obj_maps.keys() {
        let data = match ebpf.map(name) {
            Some(Map::RingBuf(d) | Map::PerCpuArray(d) | Map::Array(d)) => d,
            Some(_) => {
                return Err(LoadError::Object(format!(
                    "map `{name}` has a type the profiler does not use"
                )));
            }
            // Global-data sections aya skips on kernels without support.
            None => continue,
        };
        fds.push((name.clone(), data.fd().as_fd().as_raw_fd()));
    }
    obj.relocate_maps(
        fds.iter().map(|(n, fd)| (n.as_str(), *fd, &obj_maps[n])),
        &text_sections,
    )
    .map_err(|e| LoadError::Object(e.to_string()))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| LoadError::Object(e.to_string()))?;
    obj.sanitize_functions(aya::features());

    let prog = obj
        .programs
        .get(PROGRAM)
        .ok_or_else(|| LoadError::Object(format!("no program `{PROGRAM}` in the object")))?;
    if !matches!(prog.section, ProgramSection::PerfEvent) {
        return Err(LoadError::Object(format!(
            "`{PROGRAM}` is not a perf_event program"
        )));
    }
    let function = obj
        .functions
        .get(&prog.function_key())
        .ok_or_else(|| LoadError::Object(format!("no code for `{PROGRAM}`")))?;
    let loaded = verifier_log::load(
        &ProgLoad {
            prog_type: bpf_prog_type::BPF_PROG_TYPE_PERF_EVENT as u32,
            name: PROGRAM,
            insns: &function.instructions,
            license: &obj.license,
            kern_version: obj.kernel_version.unwrap_or(0),
        },
        &req.log,
    )
    .map_err(|failure| LoadError::Program {
        program: PROGRAM.to_owned(),
        failure,
    })?;
    on_loaded(&loaded.log);

    let take = |ebpf: &mut Ebpf, name: &str| {
        ebpf.take_map(name)
            .ok_or_else(|| LoadError::Object(format!("map `{name}` missing")))
    };
    let mut config: Array<MapData, PodConfig> = Array::try_from(take(&mut ebpf, "CONFIG")?)
        .map_err(|e| LoadError::Object(e.to_string()))?;
    config
        .set(0, PodConfig(req.config), 0)
        .map_err(|e| LoadError::Maps(e.to_string()))?;
    let samples = RingBuf::try_from(take(&mut ebpf, "SAMPLES")?)
        .map_err(|e| LoadError::Object(e.to_string()))?;
    let counters = PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?)
        .map_err(|e| LoadError::Object(e.to_string()))?;

    let mut events = Vec::with_capacity(req.cpus.len());
    for &cpu in req.cpus {
        let attach_err = |e: std::io::Error| {
            let errno = e.raw_os_error().unwrap_or(0);
            LoadError::Attach {
                program: PROGRAM.to_owned(),
                cpu,
                errno,
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
        let ev = sys::perf_event_open_cpu_clock(cpu, req.frequency).map_err(attach_err)?;
        sys::perf_event_attach(ev.as_fd(), loaded.fd.as_fd()).map_err(attach_err)?;
        events.push(ev);
    }
    drop(config);
    Ok(Profiler {
        _ebpf: ebpf,
        program_fd: loaded.fd,
        log: loaded.log,
        samples,
        counters,
        _events: events,
    })
}

/// Sums a per-CPU counter.
pub fn counter(counters: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
    counters
        .get(&index, 0)
        .map(|per_cpu| per_cpu.iter().sum())
        .unwrap_or(0)
}

/// Re-exported for the reader.
pub use shared::counter as counters_index;
