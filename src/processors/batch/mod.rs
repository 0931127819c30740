//! `batch` processor: groups samples into fewer, larger requests with one merged dictionary.
//!
//! Semantics follow the collector's batch processor, counted in samples: while at
//! least `send_batch_size` samples wait, batches of up to `send_batch_max_size`
//! (or everything, when it is 0) are sent; what is left is sent when `timeout` has
//! passed since the oldest waiting sample arrived, and when the input ends.

mod config;

use metrics::Counter;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use config::BatchConfig;

use crate::config::parse_component;
use crate::otlp::{DictionaryBuilder, sample_count, split};
use crate::pipeline::{Context, Fanout, Input, Processor, ProcessorFactory};
use crate::telemetry::names;

pub fn factory() -> ProcessorFactory {
    ProcessorFactory {
        type_name: "batch",
        description: "groups samples into batches by count and time, merging their dictionaries",
        create: |_, v| {
            Ok(Box::new(BatchProcessor {
                cfg: parse_component(v)?,
            }))
        },
    }
}

pub struct BatchProcessor {
    cfg: BatchConfig,
}

impl Processor for BatchProcessor {
    fn start(self: Box<Self>, ctx: Context, input: Input, out: Fanout) -> JoinHandle<()> {
        let dropped = metrics::counter!(names::PIPELINE_DROPPED, "component" => format!("processor/{}", ctx.id), "reason" => "invalid_index");
        tokio::spawn(run(self.cfg, ctx, input, out, dropped))
    }
}

/// Samples waiting to be sent, merged as they arrive.
struct Pending {
    builder: DictionaryBuilder,
    since: Option<Instant>,
}

impl Pending {
    fn new() -> Self {
        Pending {
            builder: DictionaryBuilder::new(),
            since: None,
        }
    }
    fn samples(&self) -> u64 {
        self.builder.sample_count()
    }
}

async fn run(cfg: BatchConfig, ctx: Context, mut input: Input, out: Fanout, dropped: Counter) {
    ctx.health.running();
    let mut pending = Pending::new();
    loop {
        let deadline = pending.since.map(|t| t + cfg.timeout);
        tokio::select! {
            item = input.recv() => match item {
                Some(req) => {
                    if let Err(e) = pending.builder.import(&req) {
                        // Receivers check indices, so only a faulty internal producer gets here.
                        tracing::error!(processor = %ctx.id, error = %e, "dropping a request with a bad index");
                        dropped.increment(sample_count(&req));
                        continue;
                    }
                    pending.since.get_or_insert_with(Instant::now);
                    if pending.samples() >= cfg.send_batch_size {
                        flush(&cfg, &mut pending, &out, true).await;
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                flush(&cfg, &mut pending, &out, false).await;
            }
        }
    }
    flush(&cfg, &mut pending, &out, false).await;
    ctx.health.stopping();
}

/// Sends what is pending. With `by_size`, sends full batches and keeps a remainder
/// smaller than `send_batch_size` waiting (its timer restarts); otherwise sends everything.
async fn flush(cfg: &BatchConfig, pending: &mut Pending, out: &Fanout, by_size: bool) {
    if pending.samples() == 0 {
        pending.since = None;
        return;
    }
    let merged = std::mem::replace(pending, Pending::new()).builder.finish();
    let total = sample_count(&merged);
    let chunk = if cfg.send_batch_max_size > 0 {
        cfg.send_batch_max_size
    } else {
        total
    };
    let parts = match split(merged, chunk) {
        Ok(p) => p,
        Err(e) => {
            // The builder only emits valid indices; this would be a bug in it.
            tracing::error!(error = %e, "batch split failed");
            return;
        }
    };
    let mut sent = 0;
    for part in parts {
        let n = sample_count(&part);
        if by_size && total - sent < cfg.send_batch_size {
            // Remainder below the batch size keeps waiting for more samples.
            if let Err(e) = pending.builder.import(&part) {
                tracing::error!(error = %e, "batch remainder could not be kept");
            }
            pending.since = Some(Instant::now());
            continue;
        }
        sent += n;
        // Errors are counted by the fanout; a stopped downstream cannot be helped here.
        let _ = out.send(part).await;
    }
}

#[cfg(test)]
mod tests;
