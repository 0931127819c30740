//! `file` exporter: OTLP/JSON lines or length-prefixed protobuf records in a local
//! file, with size-based rotation.

mod config;
mod writer;

use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinHandle;

pub use config::{FileExporterConfig, FileFormat, RotationConfig};

use crate::config::{display_path, parse_component};
use crate::otlp::sample_count;
use crate::pipeline::{Context, Exporter, ExporterFactory, Input, StartError};
use crate::telemetry::names;

pub fn factory() -> ExporterFactory {
    ExporterFactory {
        type_name: "file",
        description: "writes OTLP profiles to a local file as OTLP/JSON lines or length-prefixed protobuf, with rotation",
        create: |_, v| {
            Ok(Box::new(FileExporter {
                cfg: parse_component(v)?,
            }))
        },
    }
}

pub struct FileExporter {
    cfg: FileExporterConfig,
}

#[async_trait]
impl Exporter for FileExporter {
    async fn start(
        self: Box<Self>,
        ctx: Context,
        input: Input,
    ) -> Result<JoinHandle<()>, StartError> {
        let writer = writer::Writer::open(&self.cfg).map_err(|e| {
            format!(
                "cannot open {} for writing (exporters.{}.path): {e}; choose a writable path",
                display_path(&self.cfg.path),
                ctx.id
            )
        })?;
        tracing::info!(exporter = %ctx.id, path = %display_path(&self.cfg.path), "file exporter writing");
        Ok(tokio::spawn(run(
            ctx,
            input,
            writer,
            self.cfg.flush_interval,
        )))
    }
}

async fn run(ctx: Context, mut input: Input, mut writer: writer::Writer, flush_every: Duration) {
    let id = ctx.id.to_string();
    let sent = metrics::counter!(names::EXPORTER_SENT, "exporter" => id.clone());
    let failed = metrics::counter!(names::EXPORTER_SEND_FAILED, "exporter" => id.clone());
    // Samples written since the last successful flush: lost if that flush fails.
    let mut unflushed = 0u64;
    let mut tick = tokio::time::interval(flush_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ctx.health.running();
    let flush = |writer: &mut writer::Writer, unflushed: &mut u64| match writer.flush() {
        Ok(()) => {
            sent.increment(*unflushed);
            *unflushed = 0;
            ctx.health.running();
        }
        Err(e) => {
            failed.increment(*unflushed);
            *unflushed = 0;
            ctx.health.unhealthy(format!("flush failed: {e}"));
            tracing::error!(exporter = %id, error = %e, "flushing the file failed; buffered samples are lost");
        }
    };
    loop {
        tokio::select! {
            req = input.recv() => {
                let Some(req) = req else { break };
                let n = sample_count(&req);
                let result = writer.encode(&req).and_then(|rec| writer.append(&rec));
                match result {
                    Ok(()) => unflushed += n,
                    Err(e) => {
                        failed.increment(n);
                        ctx.health.unhealthy(format!("write failed: {e}"));
                        tracing::error!(exporter = %id, error = %e, samples = n, "writing to the file failed; the samples are dropped");
                    }
                }
            }
            _ = tick.tick() => flush(&mut writer, &mut unflushed),
        }
    }
    flush(&mut writer, &mut unflushed);
    ctx.health.stopping();
}

#[cfg(test)]
mod tests;
