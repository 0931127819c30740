//! `otlp` receiver: the OTLP profiles gRPC service, as agents and SDKs send it.

mod config;
mod service;

use async_trait::async_trait;
use tokio::task::JoinHandle;

pub use config::{GrpcConfig, OtlpReceiverConfig, Protocols, ServerTlsConfig};

use crate::config::parse_component;
use crate::pipeline::{Context, Fanout, Receiver, ReceiverFactory, StartError};

pub fn factory() -> ReceiverFactory {
    ReceiverFactory {
        type_name: "otlp",
        description: "OTLP profiles over gRPC (gzip and zstd), as sent by agents, SDKs and other collectors",
        create: |_, v| {
            Ok(Box::new(OtlpReceiver {
                cfg: parse_component(v)?,
            }))
        },
    }
}

pub struct OtlpReceiver {
    cfg: OtlpReceiverConfig,
}

#[async_trait]
impl Receiver for OtlpReceiver {
    async fn start(
        self: Box<Self>,
        ctx: Context,
        out: Fanout,
    ) -> Result<JoinHandle<()>, StartError> {
        service::serve(self.cfg.protocols.grpc, ctx, out).await
    }
}
