//! What each load attempt leaves behind: the verifier log (in a file where the user
//! asked for one, else at debug level), its size and statistics as gauges, and every
//! failure counted by kind, with the kernel's errno as a label.

use std::path::Path;

use super::loader::{LoadError, PROGRAM};
use super::sys;
use super::verifier_log::VerifierLog;
use crate::receivers::ebpf_profiler::VerifierLogConfig;
use crate::telemetry::names;

/// Records what a load produced: metrics, and the log where the user asked for it.
pub fn record_log(cfg: &VerifierLogConfig, program: &str, log: &VerifierLog) {
    let p = ("program", program.to_owned());
    metrics::gauge!(names::EBPF_VERIFIER_LOG_BYTES, std::slice::from_ref(&p))
        .set(log.text.len() as f64);
    if log.truncated {
        metrics::counter!(names::EBPF_VERIFIER_LOG_TRUNCATED, std::slice::from_ref(&p))
            .increment(1);
        match log.needed_bytes {
            Some(n) => tracing::warn!(
                program,
                kept = log.text.len(),
                needed = n,
                "the verifier log needed {n} bytes, more than verifier_log.max_size ({}); the program loaded without it and the first part is kept",
                cfg.max_size
            ),
            None => tracing::warn!(
                program,
                kept = log.text.len(),
                "the verifier log did not fit verifier_log.max_size ({}); the program loaded without it and the part that fit is kept",
                cfg.max_size
            ),
        }
    }
    if let Some(s) = log.stats() {
        metrics::gauge!(names::EBPF_VERIFIER_INSNS, std::slice::from_ref(&p))
            .set(s.insns_processed as f64);
        metrics::gauge!(names::EBPF_VERIFIER_STATES, "program" => program.to_owned(), "kind" => "total")
            .set(s.total_states as f64);
        metrics::gauge!(names::EBPF_VERIFIER_STATES, "program" => program.to_owned(), "kind" => "peak")
            .set(s.peak_states as f64);
        if let Some(us) = s.verification_time_usec {
            metrics::gauge!(names::EBPF_VERIFIER_SECONDS, std::slice::from_ref(&p))
                .set(us as f64 / 1e6);
        }
    }
    if log.text.is_empty() {
        return;
    }
    if cfg.output.is_empty() {
        tracing::debug!(program, "verifier log:\n{}", log.text);
        return;
    }
    let dir = Path::new(&cfg.output);
    let name = format!("{program}.log");
    let path = dir.join(&name);
    // Written whole (aside, then renamed), so a reader never sees half a log.
    let written = std::fs::create_dir_all(dir)
        .and_then(|_| crate::host::fs::replace_whole(dir, &name, 0o640, log.text.as_bytes()));
    if let Err(e) = written {
        tracing::error!(path = %path.display(), error = %e, "cannot write the verifier log (verifier_log.output)");
    } else {
        tracing::info!(path = %path.display(), bytes = log.text.len(), "verifier log written");
    }
}

/// Counts a failed attempt by kind, with the kernel's errno (`none` where the kernel
/// was not asked: a broken object), and keeps the refused program's log.
pub fn record_failure(cfg: &VerifierLogConfig, e: &LoadError) {
    let errno = failure_errno(e);
    let program = match e {
        LoadError::Program { failure, program } => {
            record_log(cfg, program, &failure.log);
            program.clone()
        }
        _ => PROGRAM.to_owned(),
    };
    if let LoadError::Attach { .. } = e {
        metrics::counter!(names::EBPF_ATTACH_FAILURES, "program" => program, "errno" => errno)
            .increment(1);
        return;
    }
    metrics::counter!(names::EBPF_PROGRAM_LOADS, "program" => program.clone(), "outcome" => "failure")
        .increment(1);
    metrics::counter!(names::EBPF_PROGRAM_LOAD_FAILURES, "program" => program, "errno" => errno, "reason" => e.reason())
        .increment(1);
}

/// The `errno` label of a failure: the errno's name (`EACCES`), `errno_N` for one
/// without a name here, `none` where the kernel was not asked (a broken object), and
/// `unknown` for a kernel failure that came without an errno.
pub fn failure_errno(e: &LoadError) -> String {
    match e.errno() {
        None if matches!(e, LoadError::Map { .. } | LoadError::Attach { .. }) => {
            "unknown".to_owned()
        }
        None => "none".to_owned(),
        Some(n) => match sys::errno_name(n).split(' ').next() {
            Some("errno") | None => format!("errno_{n}"),
            Some(name) => name.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receivers::ebpf_profiler::bpf::sys;

    /// The kernel's own refusal of a map it cannot create reaches the label as its
    /// errno (a hash-of-maps without an inner map template is EINVAL on every kernel).
    #[test]
    fn a_refused_map_keeps_the_kernels_errno() {
        if !crate::testing::root_or_skip(
            "a_refused_map_keeps_the_kernels_errno",
            "creating BPF maps needs root",
        ) {
            return;
        }
        let refused = sys::map_create(
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_HASH_OF_MAPS as u32,
            8,
            4,
            1,
            0,
            None,
            "no_template",
        )
        .unwrap_err();
        let e = LoadError::Map {
            what: "creating map `no_template`".into(),
            source: refused,
        };
        assert_eq!(failure_errno(&e), "EINVAL");
        assert_eq!(e.reason(), "maps");
        // The cause stays in the chain that logs and health print.
        let chain = crate::telemetry::chain(&e).to_string();
        assert!(chain.contains("Invalid argument"), "{chain}");
    }
}
