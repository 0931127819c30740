//! `stackline ebpf-check`: loads the profiler's programs, attaching nothing, and
//! reports how it went.

use super::loader::{self, LoadError, LoadRequest, PROGRAM};
use super::outcome::record_log;
use super::verifier_log::VerifierLog;
use crate::receivers::ebpf_profiler::{UnwindConfig, VerifierLogConfig};

/// What `stackline ebpf-check` reports: how loading the profiler's programs went. The
/// top-level fields are the entry program's; `programs` has each program that loaded.
#[derive(Debug, serde::Serialize)]
pub struct CheckReport {
    pub kernel: String,
    pub loaded: bool,
    pub error: Option<String>,
    pub attempts: u32,
    pub log_bytes: usize,
    pub buffer_bytes: u32,
    /// Bytes the whole log needed, where the kernel says (6.4+).
    pub needed_bytes: Option<u32>,
    pub truncated: bool,
    pub insns_processed: Option<u64>,
    pub programs: Vec<ProgramReport>,
}

/// One program's load, in `ebpf-check`'s report.
#[derive(Debug, serde::Serialize)]
pub struct ProgramReport {
    pub name: String,
    /// False for the program the kernel refused (its log is the one that says why).
    pub loaded: bool,
    pub attempts: u32,
    pub log_bytes: usize,
    pub truncated: bool,
    /// Instructions the verifier processed (with `--stats` or a level), of its limit of 1,000,000.
    pub insns_processed: Option<u64>,
}

/// Loads the built-in profiler programs (entry and the mode's walker) with `log` settings,
/// attaching nothing, and reports what happened: a quick way to see whether a node's
/// kernel runs the agent.
pub fn check(log: &VerifierLogConfig, unwind: &UnwindConfig) -> CheckReport {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let mut seen: Vec<(String, VerifierLog, bool)> = Vec::new();
    let r = loader::load(
        &LoadRequest {
            object: loader::OBJECT,
            log: log.settings(),
            config: unwind.program_config(false, true),
            cpus: &[],
            frequency: 1,
            offsets: None,
            // Nothing selected: every process, as without rules.
            select: &|_| Ok(()),
        },
        &mut |name, l| {
            record_log(log, name, l);
            seen.push((name.to_owned(), l.clone(), true))
        },
    );
    // The program the kernel refused, with its log (written where the user asked).
    if let Err(LoadError::Program { failure, program }) = &r {
        record_log(log, program, &failure.log);
        seen.push((program.to_string(), failure.log.clone(), false));
    }
    let error = r
        .as_ref()
        .err()
        .map(|e| crate::telemetry::chain(e).to_string());
    let entry = seen
        .iter()
        .find(|(n, _, _)| n == PROGRAM)
        .map(|(_, l, _)| l.clone());
    let log = match (&r, entry) {
        (Err(LoadError::Program { failure, program }), _) if program == PROGRAM => {
            Some(failure.log.clone())
        }
        (_, s) => s,
    }
    .unwrap_or_default();
    CheckReport {
        kernel,
        loaded: r.is_ok(),
        error,
        attempts: log.attempts,
        log_bytes: log.text.len(),
        buffer_bytes: log.buffer_bytes,
        needed_bytes: log.needed_bytes,
        truncated: log.truncated,
        insns_processed: log.stats().map(|s| s.insns_processed),
        programs: seen
            .iter()
            .map(|(name, l, loaded)| ProgramReport {
                name: name.clone(),
                loaded: *loaded,
                attempts: l.attempts,
                log_bytes: l.text.len(),
                truncated: l.truncated,
                insns_processed: l.stats().map(|s| s.insns_processed),
            })
            .collect(),
    }
}
