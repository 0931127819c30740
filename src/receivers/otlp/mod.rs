//! `otlp` receiver: OTLP profiles over gRPC and over HTTP (protobuf or JSON), as
//! agents, SDKs and other collectors send them. Both protocols share [`intake`]: the
//! same checks, the same pipeline, the same answer once the data is safe.

mod aged;
mod config;
pub mod http;
mod intake;
mod service;

use async_trait::async_trait;
use tokio::task::JoinHandle;

pub use config::{GrpcConfig, HttpConfig, OtlpReceiverConfig, Protocols, ServerTlsConfig};

use crate::config::parse_component;
use crate::pipeline::{Context, Fanout, Origin, Receiver, ReceiverFactory, StartError};

pub fn factory() -> ReceiverFactory {
    ReceiverFactory {
        type_name: "otlp",
        description: "OTLP profiles over gRPC and HTTP (protobuf or JSON; gzip and zstd), as sent by agents, SDKs and other collectors",
        origin: Origin::Network,
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
        let p = self.cfg.protocols.clone();
        let budget = intake::Budget::new(self.cfg.max_in_flight_mib);
        let mut tasks = Vec::new();
        if let Some(g) = p.grpc {
            let limits = self.cfg.limits.clone();
            tasks.push(service::serve(g, limits, budget.clone(), ctx.clone(), out.clone()).await?);
        }
        if let Some(h) = p.http {
            match http::serve(h, self.cfg.limits.clone(), budget, ctx.clone(), out.clone()).await {
                Ok(t) => tasks.push(t),
                Err(e) => {
                    for t in &tasks {
                        t.abort();
                    }
                    return Err(e);
                }
            }
        }
        // Each server holds a clone of the fanout; the pipeline drains once both end.
        drop(out);
        Ok(tokio::spawn(async move {
            for t in tasks {
                let _ = t.await;
            }
        }))
    }
}
