//! `file` exporter: OTLP/JSON lines or length-prefixed protobuf records in a local
//! file, with size-based rotation (on by default), records written whole or not at
//! all, on the exporter shell.

mod config;
mod writer;

use async_trait::async_trait;
use tokio::task::JoinHandle;

pub use config::{FileExporterConfig, FileFormat, FileMode, RotationConfig};

use crate::config::{display_path, parse_component};
use crate::exporters::shell::{self, WriterSettings};
use crate::pipeline::{Context, Exporter, ExporterFactory, Input, StartError};

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
        let cfg = self.cfg;
        let writer = writer::Writer::open(&cfg).map_err(|e| {
            format!(
                "cannot open {} for writing (exporters.{}.path): {e}; choose a writable path",
                display_path(&cfg.path),
                ctx.id
            )
        })?;
        tracing::info!(exporter = %ctx.id, path = %display_path(&cfg.path), "file exporter writing");
        let flush_every = Some(cfg.flush_interval);
        Ok(shell::start_writer(
            ctx,
            input,
            writer,
            move || writer::Writer::open(&cfg),
            WriterSettings {
                flush_every,
                what: "the file",
            },
        ))
    }
}

#[cfg(test)]
mod tests;
