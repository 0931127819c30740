//! `ebpf_profiler` receiver: samples every CPU with an eBPF `perf_event` program and
//! sends one OTLP profile per report interval.
//!
//! The flow, one room per step:
//! - [`bpf`]: the kernel side as user space sees it: loading the object (with the
//!   verifier log that sizes itself), the system calls, kernel facts and the
//!   `ebpf-check` report. The only home of the receiver's `unsafe`.
//! - `run`: load with backoff while the kernel says no, then read until shutdown.
//! - `reader`: drains the ring buffers on a blocking thread, one profile per interval.
//! - [`process`]: the process model; announces what it learns (mapped, gone) to
//!   whoever subscribes.
//! - [`profile`]: raw samples → OTLP locations, mappings (with build IDs) and attributes.
//! - [`select`]: which processes are sampled (rules, budgets, probabilistic
//!   profiling), decided in the program before any walk and reloaded live.
//! - [`unwind`]: tables for native unwinding without frame pointers, built as the
//!   process model announces new mappings.
//!
//! What the BPF object and user space share (record layout, settings, unwind rules) is
//! the `stackline-ebpf-common` crate.
//!
//! A load or attach failure never ends the process: the receiver reports itself
//! unhealthy on `/health`, counts the failure in metrics, logs it once per attempt and
//! tries again with backoff.

pub mod bpf;
mod config;
pub mod process;
pub mod profile;
mod reader;
mod run;
pub mod select;
pub mod unwind;

pub use stackline_ebpf_common::shared;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::task::JoinHandle;

pub use bpf::check::{CheckReport, ProgramReport, check};
pub use config::{
    BudgetConfig, BudgetPer, EbpfProfilerConfig, LoadRetryConfig, ProbabilisticConfig, Rule,
    SelectionConfig, UnwindConfig, UnwindMode, VerifierLogConfig,
};

use crate::config::parse_component;
use crate::pipeline::{Context, Fanout, Receiver, ReceiverFactory, StartError};

pub fn factory() -> ReceiverFactory {
    ReceiverFactory {
        type_name: "ebpf_profiler",
        description: "samples every CPU with eBPF (perf_event): user and kernel stacks of all processes",
        origin: crate::pipeline::Origin::ThisHost,
        create: |_, v| {
            Ok(Box::new(EbpfProfiler {
                cfg: parse_component(v)?,
            }))
        },
    }
}

pub struct EbpfProfiler {
    cfg: EbpfProfilerConfig,
}

#[async_trait]
impl Receiver for EbpfProfiler {
    async fn start(
        self: Box<Self>,
        ctx: Context,
        out: Fanout,
    ) -> Result<JoinHandle<()>, StartError> {
        let object: Arc<Vec<u8>> = Arc::new(match &self.cfg.object_path {
            Some(p) => std::fs::read(p).map_err(|e| {
                format!(
                    "cannot read receivers.{}.object_path {}: {e}",
                    ctx.id,
                    p.display()
                )
            })?,
            None => bpf::loader::OBJECT.to_vec(),
        });
        let cpus = match &self.cfg.cpus {
            Some(c) => c.clone(),
            None => aya::util::online_cpus()
                .map_err(|(path, e)| format!("cannot read the online CPUs from {path}: {e}"))?,
        };
        Ok(tokio::spawn(run::run(self.cfg, ctx, out, object, cpus)))
    }
}
