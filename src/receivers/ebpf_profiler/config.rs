//! Settings of the `ebpf_profiler` receiver.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::bpf::verifier_log::{KERNEL_MAX_LOG_SIZE, KERNEL_MIN_LOG_SIZE, LogSettings};
use crate::config::units::{ByteSize, byte_size};
use crate::config::{ConfigError, Validate};

/// `receivers.ebpf_profiler`: whole-system CPU sampling with eBPF.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EbpfProfilerConfig {
    /// Samples per second per CPU. Default 20 (1 to 10000).
    pub sampling_frequency: u64,
    /// How often a profile is sent. Default `5s`.
    #[serde(with = "crate::config::units::duration")]
    pub report_interval: Duration,
    /// Also sample the idle task (pid 0). Default false.
    pub include_idle: bool,
    /// CPUs to sample. Default: every online CPU.
    pub cpus: Option<Vec<u32>>,
    /// Capture kernel stacks. Default true.
    pub kernel_stacks: bool,
    pub verifier_log: VerifierLogConfig,
    /// Retry of a failed load or attach.
    pub load_retry: LoadRetryConfig,
    /// How user stacks are walked.
    pub unwind: UnwindConfig,
    /// Load this eBPF object file instead of the one built into the binary (for
    /// developing the eBPF program and for tests). Default: the built-in object.
    pub object_path: Option<PathBuf>,
    /// Which processes are sampled, and how much (see [`SelectionConfig`]). Changes
    /// take effect on SIGHUP without reloading the eBPF programs.
    pub selection: SelectionConfig,
    /// Sampling on for a random fraction of report intervals (see [`ProbabilisticConfig`]).
    pub probabilistic: ProbabilisticConfig,
    /// `host.name` of the profiles. Default (empty): the hostname the agent sees. In a
    /// Kubernetes pod that is the pod's name, so the DaemonSet sets the node's name here
    /// (`host_name: ${env:NODE_NAME:-}` with NODE_NAME from `spec.nodeName`).
    pub host_name: String,
}

impl Default for EbpfProfilerConfig {
    fn default() -> Self {
        EbpfProfilerConfig {
            sampling_frequency: 20,
            report_interval: Duration::from_secs(5),
            include_idle: false,
            cpus: None,
            kernel_stacks: true,
            verifier_log: VerifierLogConfig::default(),
            load_retry: LoadRetryConfig::default(),
            unwind: UnwindConfig::default(),
            object_path: None,
            selection: SelectionConfig::default(),
            probabilistic: ProbabilisticConfig::default(),
            host_name: String::new(),
        }
    }
}

/// `verifier_log`: what the kernel's verifier reports when the program loads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifierLogConfig {
    /// `0`/`off` (default), `1`/`branch`, `2`/`instruction` (the upstream `-bpf-log-level`).
    /// With a level set, the log is kept for programs that load, too.
    #[serde(deserialize_with = "log_level")]
    pub level: u32,
    /// Add the verifier's statistics (`BPF_LOG_STATS`). Default false.
    pub stats: bool,
    /// First log buffer. Default `64KiB`; it grows by itself when the log needs more.
    #[serde(deserialize_with = "byte_size")]
    pub size: ByteSize,
    /// Largest log buffer. Default `512MiB`; never above the kernel's limit (`UINT_MAX >> 2` bytes).
    /// Past it the program loads without a log and the truncated log is kept with a warning.
    #[serde(deserialize_with = "byte_size")]
    pub max_size: ByteSize,
    /// A directory: each load writes `<program>.log` there. Empty (default): the log
    /// goes to the process log at debug level.
    pub output: String,
}

impl Default for VerifierLogConfig {
    fn default() -> Self {
        VerifierLogConfig {
            level: 0,
            stats: false,
            size: ByteSize::kib(64),
            max_size: ByteSize::mib(512),
            output: String::new(),
        }
    }
}

impl VerifierLogConfig {
    pub fn settings(&self) -> LogSettings {
        LogSettings {
            level: self.level,
            stats: self.stats,
            size: self.size.as_u64().min(KERNEL_MAX_LOG_SIZE as u64) as u32,
            max_size: self.max_size.as_u64().min(KERNEL_MAX_LOG_SIZE as u64) as u32,
        }
    }
}

fn log_level<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(u64),
        Text(String),
    }
    let bad = |v: &dyn std::fmt::Display| {
        serde::de::Error::custom(format!(
            "invalid verifier log level `{v}`; use 0|off, 1|branch or 2|instruction"
        ))
    };
    match Raw::deserialize(d)? {
        Raw::Num(n @ 0..=2) => Ok(n as u32),
        Raw::Num(n) => Err(bad(&n)),
        Raw::Text(t) => match t.as_str() {
            "0" | "off" => Ok(0),
            "1" | "branch" => Ok(1),
            "2" | "instruction" => Ok(2),
            _ => Err(bad(&t)),
        },
    }
}

/// How user stacks are walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnwindMode {
    /// Unwind tables from `.eh_frame`, and frame pointers through code without one
    /// (JIT, anonymous code, tables not loaded yet). The default.
    Auto,
    /// Frame pointers only (RBP chains, walked by the program): cheapest, but stacks
    /// end at the first function built without them.
    FramePointer,
    /// Unwind tables only: a frame without one ends the walk.
    EhFrame,
}

/// `unwind`: walking user stacks without frame pointers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnwindConfig {
    /// `auto` (default), `frame_pointer` or `eh_frame`.
    pub mode: UnwindMode,
    /// Kernel memory the executables' unwind tables may take; past it the least
    /// recently used are evicted. It is charged to the agent's cgroup, so keep it well
    /// under the agent's memory limit (the DaemonSet's is 256Mi). A table whose frame
    /// section is larger than this, or whose rows would take more than it before
    /// packing, is refused before it is built. Default `64MiB` (27 executables took
    /// 4.2 MB here).
    #[serde(deserialize_with = "byte_size")]
    pub max_memory: ByteSize,
    /// User frames per stack, at most (1 to 128). Default 128.
    pub max_frames: u32,
}

impl Default for UnwindConfig {
    fn default() -> Self {
        UnwindConfig {
            mode: UnwindMode::Auto,
            max_memory: ByteSize::mib(64),
            max_frames: 128,
        }
    }
}

impl UnwindConfig {
    /// The mode as the program's setting.
    pub fn program_mode(&self) -> u32 {
        use super::shared::mode;
        match self.mode {
            UnwindMode::Auto => mode::AUTO,
            UnwindMode::FramePointer => mode::FRAME_POINTER,
            UnwindMode::EhFrame => mode::EH_FRAME,
        }
    }

    /// The settings the program reads from its `CONFIG` map.
    pub fn program_config(&self, include_idle: bool, kernel_stacks: bool) -> super::shared::Config {
        super::shared::Config {
            include_idle: include_idle as u32,
            kernel_stacks: kernel_stacks as u32,
            mode: self.program_mode(),
            max_frames: self.max_frames,
            generation: 0,
            _pad: 0,
        }
    }
}

/// `selection`: which processes are sampled. With no rules, every process is (the
/// default). A process is sampled if it matches an `include` rule (or there are none)
/// and no `exclude` rule: exclude wins. Rules on cgroup, pid and uid are evaluated in
/// the eBPF program before it walks a stack; the others (executable, build ID, process
/// name, container id) in user space, once per process, and the verdict is pushed into
/// the program, so an excluded process costs a map lookup per sample.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SelectionConfig {
    pub include: Vec<Rule>,
    pub exclude: Vec<Rule>,
    /// Where `cgroup` rules' paths are looked up: the host's cgroup v2 tree as mounted
    /// in the agent. Default: the agent's own cgroup2 mount. In a container (whose
    /// `/sys/fs/cgroup` shows only its own cgroup), mount the host's `/sys/fs/cgroup`
    /// read-only and give its path, e.g. `/host/sys/fs/cgroup`.
    pub cgroup_root: Option<PathBuf>,
    /// A cap on samples per second per target, enforced in the eBPF program.
    pub budget: Option<BudgetConfig>,
}

/// One selection rule: exactly one matcher, and an optional name.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Rule {
    /// The `rule` label of the selection metrics. Default: `include/N` or `exclude/N`.
    pub name: Option<String>,
    /// A cgroup v2 path, as under the agent's cgroup2 mount (`/sys/fs/cgroup`, or
    /// `/sys/fs/cgroup/unified` on a hybrid host), e.g. `/system.slice/nginx.service` or
    /// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID_>.slice`.
    /// Matches the cgroup and everything below it. Evaluated in the kernel.
    pub cgroup: Option<String>,
    /// A container id (64 hex digits, or a prefix of at least 12, as `docker ps` and
    /// `crictl ps` print them), read from the process's cgroup path.
    pub container_id: Option<String>,
    /// A glob on the executable's path (`*` does not cross `/`; `**` does), e.g.
    /// `/usr/bin/python3*` or `**/java`.
    pub executable: Option<String>,
    /// The executable's GNU build ID, in hex.
    pub build_id: Option<String>,
    /// A glob on the process's name (`/proc/PID/comm`, what `ps` and `top` show).
    pub process_name: Option<String>,
    /// A process id. Evaluated in the kernel.
    pub pid: Option<u32>,
    /// A real user id. Evaluated in the kernel.
    pub uid: Option<u32>,
}

/// Whom a budget applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPer {
    /// Each process (the default).
    #[default]
    Process,
    /// Each cgroup (the process's own, innermost one: a container, a systemd unit).
    Cgroup,
}

/// `selection.budget`: at most `samples_per_second` per target; the rest are skipped in
/// the kernel before any walk and counted per target
/// (`stackline_ebpf_selection_budget_skipped_total`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    pub samples_per_second: u32,
    #[serde(default)]
    pub per: BudgetPer,
}

/// `probabilistic`: sampling is on for a random `fraction` of report intervals, chosen
/// independently on each node and interval, so a large fleet costs that fraction while
/// each interval it samples is complete. Each profile carries the fraction
/// (`stackline.probabilistic.fraction`) so a backend can scale.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProbabilisticConfig {
    /// 0 < fraction <= 1. Default 1 (every interval).
    pub fraction: f64,
}

impl Default for ProbabilisticConfig {
    fn default() -> Self {
        ProbabilisticConfig { fraction: 1.0 }
    }
}

/// `load_retry`: backoff between failed load or attach attempts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadRetryConfig {
    /// Wait after the first failure. Default `5s`.
    #[serde(with = "crate::config::units::duration")]
    pub initial_interval: Duration,
    /// Longest wait; the wait doubles up to it. Default `5m`.
    #[serde(with = "crate::config::units::duration")]
    pub max_interval: Duration,
}

impl Default for LoadRetryConfig {
    fn default() -> Self {
        LoadRetryConfig {
            initial_interval: Duration::from_secs(5),
            max_interval: Duration::from_secs(300),
        }
    }
}

impl Validate for EbpfProfilerConfig {
    fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        if !(1..=10_000).contains(&self.sampling_frequency) {
            errs.push(ConfigError::new(
                "sampling_frequency",
                format!(
                    "{} Hz is out of range; use 1 to 10000",
                    self.sampling_frequency
                ),
            ));
        }
        if self.report_interval < Duration::from_millis(100) {
            errs.push(ConfigError::new(
                "report_interval",
                "must be at least 100ms, e.g. `5s`",
            ));
        }
        if self.cpus.as_ref().is_some_and(|c| c.is_empty()) {
            errs.push(ConfigError::new(
                "cpus",
                "is empty; leave it out to sample every online CPU",
            ));
        }
        let v = &self.verifier_log;
        if v.size.as_u64() < KERNEL_MIN_LOG_SIZE as u64 {
            errs.push(ConfigError::new(
                "verifier_log.size",
                format!("must be at least {KERNEL_MIN_LOG_SIZE} bytes (the kernel's minimum)"),
            ));
        }
        if v.max_size.as_u64() > KERNEL_MAX_LOG_SIZE as u64 {
            errs.push(ConfigError::new(
                "verifier_log.max_size",
                format!(
                    "{} is above the kernel's limit of {KERNEL_MAX_LOG_SIZE} bytes (UINT_MAX >> 2)",
                    v.max_size
                ),
            ));
        }
        if v.max_size < v.size {
            errs.push(ConfigError::new(
                "verifier_log.max_size",
                format!("{} is less than verifier_log.size ({})", v.max_size, v.size),
            ));
        }
        let u = &self.unwind;
        if !(1..=super::shared::MAX_USER_FRAMES as u32).contains(&u.max_frames) {
            errs.push(ConfigError::new(
                "unwind.max_frames",
                format!(
                    "{} is out of range; use 1 to {}",
                    u.max_frames,
                    super::shared::MAX_USER_FRAMES
                ),
            ));
        }
        if u.max_memory.as_u64() < 1 << 20 {
            errs.push(ConfigError::new(
                "unwind.max_memory",
                format!(
                    "{} is too small for any table; use at least 1MiB",
                    u.max_memory
                ),
            ));
        }
        errs.extend(self.selection.validate());
        let f = self.probabilistic.fraction;
        if !(f > 0.0 && f <= 1.0) {
            errs.push(ConfigError::new(
                "probabilistic.fraction",
                format!(
                    "{f} is out of range; use more than 0 and at most 1 (1 samples every interval)"
                ),
            ));
        }
        let r = &self.load_retry;
        if r.initial_interval.is_zero() || r.max_interval < r.initial_interval {
            errs.push(ConfigError::new(
                "load_retry",
                "initial_interval must be > 0 and max_interval >= initial_interval",
            ));
        }
        errs
    }
}
