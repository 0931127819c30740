//! Settings of the `symbolizer` processor.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, Validate};

/// `processors.symbolizer`: native and kernel frames to function, file, line and inlined frames.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SymbolizerConfig {
    /// Where separate debug files and binaries are found by GNU build ID, laid out as
    /// `.build-id/ab/cdef….debug`, or as a flat directory of ELF files (indexed at start
    /// and again when the directory changes). Also where a stripped binary's
    /// `.gnu_debuglink` name is looked up (`DIR/<the binary's directory>/NAME`, then
    /// `DIR/NAME`; never next to the binary), its CRC checked.
    /// Default `[/usr/lib/debug]`.
    pub debug_dirs: Vec<PathBuf>,
    /// Resolved frames kept, by (file or build ID, offset). Default 262144.
    pub cache_size: usize,
    /// Threads symbolizing in parallel (blazesym's symbolizer is not thread-safe, so each
    /// worker owns one). Default 1.
    pub workers: usize,
    /// Report inlined functions as extra lines of a location. Default true.
    pub inlines: bool,
    /// Report file and line numbers (needs DWARF). Default true.
    pub code_info: bool,
    /// Demangle Rust and C++ names (the mangled name is kept as the function's system name). Default true.
    pub demangle: bool,
    /// Symbolize kernel frames with `/proc/kallsyms` (or `vmlinux`). Default true.
    pub kernel: bool,
    /// Symbolize the agent's own user frames (with the `host` source). Default false:
    /// its binary is large and its stacks vary, so naming them costs the agent more
    /// than the rest of its work; they keep their addresses and build ID, and a
    /// gateway (or `symbolize_self: true`) can name them.
    pub symbolize_self: bool,
    /// A vmlinux with symbols for kernel frames; default: `/proc/kallsyms` only.
    pub vmlinux: Option<PathBuf>,
    /// Where files with compressed debug sections (as Debian's debug packages ship them)
    /// get a decompressed copy for blazesym to map, instead of decompressing them onto
    /// the heap (10–15 MB for libc's debug file alone). The copies have no name
    /// (`O_TMPFILE`) and are gone when closed. Must be on a disk, not tmpfs; when it cannot
    /// be written (e.g. a read-only root filesystem) the sections are decompressed in
    /// memory, with a warning and `stackline_symbolizer_unpacked_files_total{result="unwritable"}`.
    /// A copy takes at most 512 MiB, all copies held at most 1 GiB. `null`: always in
    /// memory. Default `/var/tmp`.
    pub decompress_dir: Option<PathBuf>,
    /// How often flat `debug_dirs` are checked for changes. Default `30s`.
    #[serde(with = "crate::config::units::duration")]
    pub rescan_interval: Duration,
    /// Where symbols may come from: `host` (the sampled process's files on this
    /// machine, through `/proc/PID` or the mapped path), `debug_dirs` (by build ID),
    /// `kernel` (this machine's kallsyms). Default all three, for an agent. A gateway
    /// lists only `debug_dirs`: requests come from other machines, so their paths and
    /// pids name nothing here (or something a sender chose) and the kernel is not theirs.
    pub sources: Vec<SymbolSource>,
}

/// One place symbols come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SymbolSource {
    Host,
    DebugDirs,
    Kernel,
}

impl SymbolizerConfig {
    pub fn uses(&self, s: SymbolSource) -> bool {
        self.sources.contains(&s)
    }
    /// Kernel frames are symbolized: the `kernel` source is listed and not switched off.
    pub fn kernel_on(&self) -> bool {
        self.kernel && self.uses(SymbolSource::Kernel)
    }
}

impl Default for SymbolizerConfig {
    fn default() -> Self {
        SymbolizerConfig {
            debug_dirs: vec![PathBuf::from("/usr/lib/debug")],
            cache_size: 262_144,
            workers: 1,
            inlines: true,
            code_info: true,
            demangle: true,
            kernel: true,
            symbolize_self: false,
            vmlinux: None,
            decompress_dir: Some(PathBuf::from("/var/tmp")),
            rescan_interval: Duration::from_secs(30),
            sources: vec![
                SymbolSource::Host,
                SymbolSource::DebugDirs,
                SymbolSource::Kernel,
            ],
        }
    }
}

impl Validate for SymbolizerConfig {
    fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        if self.workers == 0 || self.workers > 64 {
            errs.push(ConfigError::new(
                "workers",
                format!("{} is out of range; use 1 to 64", self.workers),
            ));
        }
        if self.cache_size == 0 {
            errs.push(ConfigError::new("cache_size", "must be at least 1 entry"));
        }
        if self.sources.is_empty() {
            errs.push(ConfigError::new(
                "sources",
                "lists nothing to symbolize from; use host, debug_dirs and/or kernel",
            ));
        }
        if self.rescan_interval.is_zero() {
            errs.push(ConfigError::new(
                "rescan_interval",
                "must be greater than 0",
            ));
        }
        errs
    }
}
