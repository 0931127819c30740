//! `otlphttp` exporter: OTLP profiles over HTTP (`POST {endpoint}/v1development/profiles`,
//! protobuf or JSON, gzip or not) to a collector or a backend such as Grafana Pyroscope,
//! with the same retry, timeout and sending queue as `otlp`, from the exporter shell.

mod config;
mod sender;

use async_trait::async_trait;
use tokio::task::JoinHandle;

pub use config::{HttpCompression, HttpEncoding, HttpTlsConfig, OtlpHttpExporterConfig};

use crate::config::parse_component;
use crate::exporters::shell::{self, SenderSettings};
use crate::pipeline::{Context, Exporter, ExporterFactory, Input, StartError};

pub fn factory() -> ExporterFactory {
    ExporterFactory {
        type_name: "otlphttp",
        description: "sends OTLP profiles over HTTP (protobuf or JSON) with retry, timeout and a sending queue",
        create: |_, v| {
            Ok(Box::new(OtlpHttpExporter {
                cfg: parse_component(v)?,
            }))
        },
    }
}

pub struct OtlpHttpExporter {
    cfg: OtlpHttpExporterConfig,
}

#[async_trait]
impl Exporter for OtlpHttpExporter {
    async fn start(
        self: Box<Self>,
        ctx: Context,
        input: Input,
    ) -> Result<JoinHandle<()>, StartError> {
        let cfg = self.cfg;
        let sender =
            sender::HttpSender::new(&cfg).map_err(|e| format!("exporters.{}: {e}", ctx.id))?;
        tracing::info!(exporter = %ctx.id, url = %sender.url(), "OTLP/HTTP exporter ready");
        shell::start_sender(
            ctx,
            input,
            sender,
            SenderSettings {
                timeout: cfg.timeout,
                retry: cfg.retry_on_failure,
                queue: cfg.sending_queue,
            },
        )
        .await
    }
}
