//! The gRPC `ProfilesService/Export` server.

use metrics::Counter;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use super::GrpcConfig;
use crate::otlp::collector::profiles_service_server::{ProfilesService, ProfilesServiceServer};
use crate::otlp::collector::{ExportProfilesServiceRequest, ExportProfilesServiceResponse};
use crate::otlp::{check, sample_count};
use crate::pipeline::{Ack, Acks, Context, Envelope, Fanout, StartError};
use crate::telemetry::names;

struct Service {
    out: Fanout,
    accepted: Counter,
    refused: Refused,
}

/// Refused samples, by reason.
struct Refused {
    invalid: Counter,
    not_kept: Counter,
    stopped: Counter,
}

impl Refused {
    fn new(labels: &[(&'static str, String)]) -> Self {
        let c = |reason: &'static str| {
            let mut l: Vec<(&'static str, String)> = labels.to_vec();
            l.push(("reason", reason.to_owned()));
            metrics::counter!(names::RECEIVER_REFUSED, &l)
        };
        Refused {
            invalid: c("invalid_request"),
            not_kept: c("not_kept_downstream"),
            stopped: c("pipeline_stopped"),
        }
    }
}

#[tonic::async_trait]
impl ProfilesService for Service {
    async fn export(
        &self,
        request: Request<ExportProfilesServiceRequest>,
    ) -> Result<Response<ExportProfilesServiceResponse>, Status> {
        let req = request.into_inner();
        let samples = sample_count(&req);
        if let Err(e) = check(&req) {
            self.refused.invalid.increment(samples);
            return Err(Status::invalid_argument(format!(
                "request refused, nothing was accepted: {e}"
            )));
        }
        if samples == 0 {
            return Ok(Response::new(ExportProfilesServiceResponse::default()));
        }
        // OK is answered only once every exporter has the data safe (queued, on disk
        // or delivered): see `pipeline::ack`. Waiting here is the back-pressure a client feels.
        let (ack, kept) = Ack::new();
        if let Err(e) = self.out.send(Envelope::new(req, Acks::one(ack))).await {
            self.refused.stopped.increment(samples);
            return Err(Status::unavailable(format!(
                "the pipeline is not taking data: {e}; retry against another instance"
            )));
        }
        match kept.await {
            Ok(Ok(())) => {
                self.accepted.increment(samples);
                Ok(Response::new(ExportProfilesServiceResponse::default()))
            }
            Ok(Err(reason)) => {
                self.refused.not_kept.increment(samples);
                Err(Status::unavailable(format!(
                    "not all of the request could be kept ({reason}); retry (parts may arrive twice)"
                )))
            }
            Err(_) => {
                self.refused.not_kept.increment(samples);
                Err(Status::internal(
                    "the pipeline lost track of the request; retry",
                ))
            }
        }
    }
}

fn server_tls(
    t: &super::ServerTlsConfig,
    ctx: &Context,
) -> Result<tonic::transport::ServerTlsConfig, StartError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |what: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| {
            format!(
                "cannot read receivers.{}.protocols.grpc.tls.{what} {}: {e}",
                ctx.id,
                p.display()
            )
        })
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
        read("cert_file", &t.cert_file)?,
        read("key_file", &t.key_file)?,
    ));
    if let Some(ca) = &t.client_ca_file {
        tls = tls.client_ca_root(Certificate::from_pem(read("client_ca_file", ca)?));
    }
    Ok(tls)
}

pub(super) async fn serve(
    cfg: GrpcConfig,
    ctx: Context,
    out: Fanout,
) -> Result<JoinHandle<()>, StartError> {
    let listener = TcpListener::bind(&cfg.endpoint).await.map_err(|e| {
        format!(
            "cannot listen on {} (receivers.{}.protocols.grpc.endpoint): {e}",
            cfg.endpoint, ctx.id
        )
    })?;
    let local = listener.local_addr()?;
    let id = ctx.id.to_string();
    let labels = [("receiver", id.clone()), ("transport", "grpc".to_owned())];
    let svc = Service {
        out,
        accepted: metrics::counter!(names::RECEIVER_ACCEPTED, &labels),
        refused: Refused::new(&labels),
    };
    let max = (cfg.max_recv_msg_size_mib as usize) << 20;
    let server = ProfilesServiceServer::new(svc)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max);
    let mut builder = tonic::transport::Server::builder();
    if let Some(t) = &cfg.tls {
        builder = builder
            .tls_config(server_tls(t, &ctx)?)
            .map_err(|e| format!("receivers.{}.protocols.grpc.tls rejected: {e}", ctx.id))?;
    }
    tracing::info!(receiver = %id, endpoint = %local, tls = cfg.tls.is_some(), "OTLP gRPC receiver listening");
    ctx.health.running();
    let shutdown = ctx.shutdown.clone();
    Ok(tokio::spawn(async move {
        let result = builder
            .add_service(server)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled())
            .await;
        if let Err(e) = result {
            ctx.health.unhealthy(format!("gRPC server failed: {e}"));
            tracing::error!(receiver = %id, error = %e, "OTLP gRPC server failed");
        } else {
            ctx.health.stopping();
        }
        // `svc` (and with it the fanout) is dropped here, letting the pipeline drain.
    }))
}
