//! The receiver's life: load and attach, with backoff while the kernel says no (each
//! failure counted and the receiver unhealthy meanwhile, never the process ended), then
//! read samples until shutdown, reloading if reading fails.

use std::sync::Arc;

use super::bpf::loader::{self, LoadError, LoadRequest};
use super::bpf::outcome::{record_failure, record_log};
use super::bpf::{kernel, sys};
use super::reader::read_samples;
use super::select;
use super::{EbpfProfilerConfig, UnwindMode};
use crate::pipeline::{Context, Fanout};
use crate::telemetry::names;

pub(super) async fn run(
    cfg: EbpfProfilerConfig,
    ctx: Context,
    out: Fanout,
    object: Arc<Vec<u8>>,
    cpus: Vec<u32>,
) {
    let mut wait = cfg.load_retry.initial_interval;
    let mut loaded_ok = false;
    // Where a task's user registers are, for samples taken in the kernel. Without them
    // such samples get no user stack in the native modes; `frame_pointer` mode leaves
    // them to the kernel's walk.
    let offsets = match tokio::task::spawn_blocking(kernel::task_offsets).await {
        Ok(Ok(o)) => Some(o),
        Ok(Err(e)) => {
            if cfg.unwind.mode == UnwindMode::FramePointer {
                tracing::debug!(receiver = %ctx.id, "{}", crate::telemetry::chain(&e));
            } else {
                tracing::warn!(receiver = %ctx.id, "{}", crate::telemetry::chain(&e));
            }
            None
        }
        Err(_) => None,
    };
    loop {
        if ctx.shutdown.is_cancelled() {
            break;
        }
        let req_cfg = cfg.clone();
        let (obj, cpus2) = (object.clone(), cpus.clone());
        let attempt = tokio::task::spawn_blocking(move || {
            let mut seen_logs = Vec::new();
            // The rules were checked with the configuration: this cannot fail.
            let initial = match select::Initial::new(&req_cfg.selection, &req_cfg.probabilistic) {
                Ok(i) => i,
                Err(e) => return (Err(LoadError::Config(e)), seen_logs),
            };
            let r = loader::load(
                &LoadRequest {
                    object: &obj,
                    log: req_cfg.verifier_log.settings(),
                    config: req_cfg
                        .unwind
                        .program_config(req_cfg.include_idle, req_cfg.kernel_stacks),
                    cpus: &cpus2,
                    frequency: req_cfg.sampling_frequency,
                    offsets,
                    select: &|m| initial.write(m),
                },
                &mut |name, log| seen_logs.push((name.to_owned(), log.clone())),
            );
            (r.map(|p| (p, initial)), seen_logs)
        })
        .await;
        let (result, logs) = match attempt {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(receiver = %ctx.id, error = %e, "the load attempt panicked");
                (Err(LoadError::Panicked(e.to_string())), Vec::new())
            }
        };
        for (program, log) in &logs {
            // The program loaded (attaching may still have failed). The log is in place
            // before the metric says so.
            record_log(&cfg.verifier_log, program, log);
            metrics::counter!(names::EBPF_PROGRAM_LOADS, "program" => program.clone(), "outcome" => "success").increment(1);
        }
        match result {
            Ok((profiler, initial)) => {
                tracing::info!(
                    receiver = %ctx.id,
                    cpus = cpus.len(),
                    frequency_hz = cfg.sampling_frequency,
                    verifier_log_bytes = profiler.log.text.len(),
                    load_attempts = profiler.log.attempts,
                    cpu_ms = (sys::process_cpu_seconds() * 1e3).round(),
                    "eBPF profiler attached"
                );
                ctx.health.running();
                wait = cfg.load_retry.initial_interval;
                loaded_ok = true;
                match read_samples(profiler, initial, &cfg, &ctx, &out).await {
                    Ok(()) => break,
                    Err(e) => {
                        ctx.health.unhealthy(format!("reading samples failed: {e}"));
                        tracing::error!(receiver = %ctx.id, error = %e, "reading samples failed; reloading");
                    }
                }
            }
            Err(e) => {
                record_failure(&cfg.verifier_log, &e);
                let why = crate::telemetry::chain(&e).to_string();
                tracing::error!(receiver = %ctx.id, "{why}; retrying in {wait:?}");
                ctx.health.unhealthy(why);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ctx.shutdown.cancelled() => break,
        }
        wait = (wait * 2).min(cfg.load_retry.max_interval);
    }
    if loaded_ok {
        ctx.health.stopping();
    }
}
