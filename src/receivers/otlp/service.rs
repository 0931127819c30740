//! The gRPC `ProfilesService/Export` server.

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use super::GrpcConfig;
use super::intake::{Intake, Refusal};
use crate::otlp::collector::profiles_service_server::{ProfilesService, ProfilesServiceServer};
use crate::otlp::collector::{ExportProfilesServiceRequest, ExportProfilesServiceResponse};
use crate::pipeline::{Context, Fanout, StartError};
use crate::telemetry::names;

struct Service {
    intake: Intake,
}

#[tonic::async_trait]
impl ProfilesService for Service {
    async fn export(
        &self,
        request: Request<ExportProfilesServiceRequest>,
    ) -> Result<Response<ExportProfilesServiceResponse>, Status> {
        match self.intake.export(request.into_inner()).await {
            Ok(()) => Ok(Response::new(ExportProfilesServiceResponse::default())),
            Err(Refusal::Invalid(m)) => Err(Status::invalid_argument(m)),
            Err(Refusal::Unavailable(m)) => Err(Status::unavailable(m)),
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
    let auth = match &cfg.auth {
        Some(a) => Some(Arc::new(crate::auth::TokenFile::open(a).map_err(|e| {
            format!(
                "cannot read receivers.{}.protocols.grpc.auth.bearer_token_file: {e}",
                ctx.id
            )
        })?)),
        None => None,
    };
    crate::auth::warn_if_open(
        "otlp/grpc",
        &cfg.endpoint,
        cfg.tls.is_some(),
        auth.is_some(),
    );
    let svc = Service {
        intake: Intake::new(out, &id, "grpc"),
    };
    let unauthenticated = metrics::counter!(names::RECEIVER_REFUSED, "receiver" => id.clone(), "transport" => "grpc", "reason" => "unauthenticated");
    let max = (cfg.max_recv_msg_size_mib as usize) << 20;
    let server = ProfilesServiceServer::new(svc)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max);
    // Checked before the body is decoded: nothing of a refused request is read.
    let check_token = move |req: Request<()>| -> Result<Request<()>, Status> {
        match &auth {
            None => Ok(req),
            Some(t) => {
                let given = req
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok());
                if t.allows(given) {
                    Ok(req)
                } else {
                    unauthenticated.increment(1);
                    Err(Status::unauthenticated("a valid bearer token is required"))
                }
            }
        }
    };
    let server = tonic::service::interceptor::InterceptedService::new(server, check_token);
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
