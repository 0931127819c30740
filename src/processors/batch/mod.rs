//! `batch` processor: groups samples into fewer, larger requests with one merged dictionary.
//!
//! Semantics follow the collector's batch processor, counted in samples: while at
//! least `send_batch_size` samples wait, batches of up to `send_batch_max_size`
//! (or everything, when it is 0) are sent; what is left is sent when `timeout` has
//! passed since the oldest waiting sample arrived, and when the input ends.

mod config;

use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use config::BatchConfig;

use crate::config::parse_component;
use crate::otlp::{DictionaryBuilder, sample_count, split};
use crate::pipeline::{
    Acks, Context, DropReason, Envelope, Fanout, Input, Processor, ProcessorFactory, catch,
    give_up_input,
};

pub fn factory() -> ProcessorFactory {
    ProcessorFactory {
        type_name: "batch",
        description: "groups samples into batches by count and time, merging their dictionaries",
        create: |_, v| {
            Ok(Box::new(BatchProcessor {
                cfg: parse_component(v)?,
            }))
        },
        check_feeders: None,
    }
}

pub struct BatchProcessor {
    cfg: BatchConfig,
}

impl Processor for BatchProcessor {
    fn start(self: Box<Self>, ctx: Context, input: Input, out: Fanout) -> JoinHandle<()> {
        tokio::spawn(run(self.cfg, ctx, input, out))
    }
}

/// Samples waiting to be sent, merged as they arrive, with the acks of the requests
/// they came from (released once the batch is passed on).
struct Pending {
    builder: DictionaryBuilder,
    acks: Acks,
    since: Option<Instant>,
}

impl Pending {
    fn new() -> Self {
        Pending {
            builder: DictionaryBuilder::new(),
            acks: Acks::none(),
            since: None,
        }
    }
    /// Gives everything pending up: fails its acks, returns its samples.
    fn reject(&mut self, reason: &str) -> u64 {
        let n = self.samples();
        std::mem::replace(self, Pending::new()).acks.reject(reason);
        n
    }
    fn samples(&self) -> u64 {
        self.builder.sample_count()
    }
}

async fn run(cfg: BatchConfig, ctx: Context, mut input: Input, out: Fanout) {
    ctx.health.running();
    let mut pending = Pending::new();
    loop {
        let deadline = pending.since.map(|t| t + cfg.timeout);
        tokio::select! {
            item = input.recv() => match item {
                Some(Envelope { req, acks }) => {
                    // Checked where it entered: importing cannot fail on an index.
                    match catch(&ctx.component, || pending.builder.import(&req)) {
                        Ok(()) => pending.acks.extend(acks),
                        Err(_) => {
                            // The builder may be half-updated: what it held goes with the request.
                            let held = pending.reject(DropReason::Panic.message());
                            ctx.drops.give_up(Envelope::new(req, acks), DropReason::Panic);
                            ctx.drops.count(DropReason::Panic, held);
                            continue;
                        }
                    }
                    pending.since.get_or_insert_with(Instant::now);
                    if pending.samples() >= cfg.send_batch_size {
                        flush(&cfg, &ctx, &mut pending, &out, true).await;
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                flush(&cfg, &ctx, &mut pending, &out, false).await;
            }
            _ = ctx.deadline.cancelled() => break,
        }
    }
    if ctx.deadline.is_cancelled() {
        let held = pending.reject(DropReason::ShutdownDeadline.message());
        give_up_input(&ctx, &mut input, held);
    } else {
        flush(&cfg, &ctx, &mut pending, &out, false).await;
    }
    ctx.health.stopping();
}

/// Sends what is pending. With `by_size`, sends full batches and keeps a remainder
/// smaller than `send_batch_size` waiting (its timer restarts) unless a client waits on
/// it; otherwise sends everything.
async fn flush(
    cfg: &BatchConfig,
    ctx: &Context,
    pending: &mut Pending,
    out: &Fanout,
    by_size: bool,
) {
    if pending.samples() == 0 {
        pending.since = None;
        return;
    }
    let held = pending.samples();
    let Pending { builder, acks, .. } = std::mem::replace(pending, Pending::new());
    let chunk = if cfg.send_batch_max_size > 0 {
        cfg.send_batch_max_size
    } else {
        held
    };
    let parts = match catch(&ctx.component, || split(builder.finish_imported(), chunk)) {
        Ok(p) => p,
        Err(_) => {
            ctx.drops.count(DropReason::Panic, held);
            acks.reject(DropReason::Panic.message());
            return;
        }
    };
    let total: u64 = parts.iter().map(|p| sample_count(p)).sum();
    // A remainder waits for more samples only if no client waits on it: acks are never
    // held back by later data (a stream of oversized requests could do so forever).
    let keep_remainder = by_size && acks.is_empty();
    let mut sent = 0;
    for part in parts {
        let n = sample_count(&part);
        if keep_remainder && total - sent < cfg.send_batch_size {
            // Remainder below the batch size keeps waiting for more samples.
            match catch(&ctx.component, || pending.builder.import(&part)) {
                Ok(()) => pending.since = Some(Instant::now()),
                Err(_) => {
                    let held = pending.reject(DropReason::Panic.message());
                    ctx.drops.count(DropReason::Panic, n + held);
                }
            }
            continue;
        }
        sent += n;
        // What downstream does not take is counted (and its acks failed) by the fanout.
        let _ = out.send(Envelope::new(part, acks.clone())).await;
    }
    // Every part carries its own copy on (a remainder kept here has none to wait on).
    acks.keep();
}

#[cfg(test)]
mod tests;
