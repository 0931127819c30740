//! Why loading the profiler failed: [`LoadError`], with its cause and the kernel's
//! errno where the kernel said no.

use super::verifier_log::LoadFailure;

/// Why the profiler could not start. Each kind keeps its cause ([`std::error::Error::source`]),
/// and [`LoadError::errno`] gives the kernel's errno where the kernel said no.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "the ebpf_profiler receiver needs root, or CAP_BPF and CAP_PERFMON (plus CAP_SYS_PTRACE to read other processes' memory maps); this process has {have}. Run it as root, or grant them, e.g. `setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep stackline`"
    )]
    Capabilities { have: String },
    /// The object does not parse, or lacks what the loader needs (not the kernel's doing).
    #[error("the eBPF object is unusable: {what}")]
    Object {
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The kernel refused to create, fill or freeze a map.
    #[error("{what} failed (hint: check capabilities, and RLIMIT_MEMLOCK on kernels before 5.11)")]
    Map {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", .failure.describe(.program))]
    Program {
        program: String,
        failure: LoadFailure,
    },
    #[error("attaching `{program}` to {target} failed ({hint})")]
    Attach {
        program: String,
        /// What it was attached to: "the cpu-clock event of CPU 3", "the raw tracepoint …".
        target: String,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The receiver's settings could not be turned into what the program needs.
    #[error("the receiver's settings are unusable: {0}")]
    Config(String),
    /// The load ran on a blocking thread that panicked (a bug).
    #[error("the load attempt panicked: {0}")]
    Panicked(String),
}

impl LoadError {
    /// A structural problem of the object, with its cause where there is one.
    pub(super) fn object(what: impl Into<String>) -> Self {
        LoadError::Object {
            what: what.into(),
            source: None,
        }
    }

    pub(super) fn object_because(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        LoadError::Object {
            what: what.into(),
            source: Some(Box::new(source)),
        }
    }

    pub(super) fn map(what: impl Into<String>, source: std::io::Error) -> Self {
        LoadError::Map {
            what: what.into(),
            source,
        }
    }

    /// The errno the kernel answered with, if the kernel refused something.
    pub fn errno(&self) -> Option<i32> {
        match self {
            LoadError::Capabilities { .. } => Some(libc::EPERM),
            LoadError::Map { source, .. } | LoadError::Attach { source, .. } => {
                source.raw_os_error()
            }
            LoadError::Program { failure, .. } => Some(failure.errno),
            LoadError::Object { .. } | LoadError::Panicked(_) | LoadError::Config(_) => None,
        }
    }

    /// The failure's kind, as the `reason` label of the load-failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            LoadError::Capabilities { .. } => "missing_capabilities",
            LoadError::Object { .. } | LoadError::Panicked(_) => "object",
            LoadError::Config(_) => "config",
            LoadError::Map { .. } => "maps",
            LoadError::Program { failure, .. } => failure.reason(),
            LoadError::Attach { .. } => "attach",
        }
    }
}

/// An aya map error as its io::Error where it has one (the kernel's errno), or as one
/// that says what it was.
pub(super) fn map_io(e: aya::maps::MapError) -> std::io::Error {
    match e {
        aya::maps::MapError::CreateError { io_error, .. } => io_error,
        aya::maps::MapError::SyscallError(s) => s.io_error,
        other => std::io::Error::other(other),
    }
}
