//! `otlp` exporter: sends profiles to another collector or a backend over OTLP/gRPC,
//! with retry, timeout and a sending queue from [`crate::exporters::shell`].

mod balance;
mod config;
pub mod sender;

use async_trait::async_trait;
use tokio::task::JoinHandle;

pub use config::{Compression, OtlpExporterConfig, TlsConfig};

use crate::config::parse_component;
use crate::exporters::shell::{self, SenderSettings};
use crate::pipeline::{Context, Exporter, ExporterFactory, Input, StartError};

pub fn factory() -> ExporterFactory {
    ExporterFactory {
        type_name: "otlp",
        description: "sends OTLP profiles over gRPC with retry, timeout and a sending queue",
        create: |_, v| {
            Ok(Box::new(OtlpExporter {
                cfg: parse_component(v)?,
            }))
        },
    }
}

pub struct OtlpExporter {
    cfg: OtlpExporterConfig,
}

#[async_trait]
impl Exporter for OtlpExporter {
    async fn start(
        self: Box<Self>,
        ctx: Context,
        input: Input,
    ) -> Result<JoinHandle<()>, StartError> {
        let cfg = self.cfg;
        // Connects lazily: a backend that is down at start is retried like any other failure.
        let sender = sender::GrpcSender::new(&cfg, &ctx.id.to_string())?;
        tracing::info!(exporter = %ctx.id, endpoint = %cfg.endpoint, "OTLP exporter ready");
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
