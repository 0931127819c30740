//! The gRPC `ProfilesService/Export` server.

use bytes::Buf;
use prost::Message;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings};
use tonic::codegen::{BoxFuture, http};
use tonic::{Request, Response, Status};

use std::sync::Arc;

use super::GrpcConfig;
use super::intake::{Budget, InFlight, Intake, Refusal};
use crate::otlp::collector::{ExportProfilesServiceRequest, ExportProfilesServiceResponse};
use crate::otlp::{GRPC_EXPORT_PATH as EXPORT_PATH, GRPC_SERVICE as SERVICE_NAME};
use crate::pipeline::{Context, Fanout, StartError};
use crate::telemetry::names;

struct Service {
    intake: Intake,
}

impl Service {
    async fn export(
        &self,
        request: ExportProfilesServiceRequest,
    ) -> Result<Response<ExportProfilesServiceResponse>, Status> {
        match self.intake.export(request).await {
            Ok(()) => Ok(Response::new(ExportProfilesServiceResponse::default())),
            Err(r) => Err(status(r)),
        }
    }
}

fn status(r: Refusal) -> Status {
    match r {
        Refusal::Invalid(m) => Status::invalid_argument(m),
        Refusal::Unavailable(m) => Status::unavailable(m),
        Refusal::TooLarge(m) | Refusal::Busy(m) => Status::resource_exhausted(m),
    }
}

/// The decoder of the Export method: the request is measured against the decode
/// limits on the wire, and only then decoded.
struct LimitedDecoder(Arc<Service>);

impl Decoder for LimitedDecoder {
    type Item = Held;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let raw = buf.copy_to_bytes(buf.remaining());
        let fp = self.0.intake.prescan(&raw).map_err(status)?;
        let in_flight = self
            .0
            .intake
            .reserve(fp.decoded_bytes, fp.samples)
            .map_err(status)?;
        match ExportProfilesServiceRequest::decode(raw) {
            Ok(req) => Ok(Some(Held { req, in_flight })),
            Err(e) => {
                self.0.intake.refused_undecodable();
                Err(Status::invalid_argument(format!(
                    "cannot decode the request: {e}"
                )))
            }
        }
    }
}

/// A decoded request with its share of the in-flight budget.
struct Held {
    req: ExportProfilesServiceRequest,
    in_flight: InFlight,
}

struct ExportCodec(Arc<Service>);

impl Codec for ExportCodec {
    type Encode = ExportProfilesServiceResponse;
    type Decode = Held;
    type Encoder = tonic_prost::ProstEncoder<ExportProfilesServiceResponse>;
    type Decoder = LimitedDecoder;
    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(Default::default())
    }
    fn decoder(&mut self) -> Self::Decoder {
        LimitedDecoder(self.0.clone())
    }
}

struct ExportMethod(Arc<Service>);

impl tonic::server::UnaryService<Held> for ExportMethod {
    type Response = ExportProfilesServiceResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;
    fn call(&mut self, request: Request<Held>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move {
            let Held { req, in_flight } = request.into_inner();
            let r = svc.export(req).await;
            drop(in_flight);
            r
        })
    }
}

/// `ProfilesService` served with [`ExportCodec`]: what tonic's generated server does,
/// with a decoder that refuses a request over the limits before decoding it.
#[derive(Clone)]
struct ExportServer {
    svc: Arc<Service>,
    max_decoding: usize,
}

impl tonic::server::NamedService for ExportServer {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> tower::Service<http::Request<B>> for ExportServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let svc = self.svc.clone();
        let max = self.max_decoding;
        Box::pin(async move {
            if req.uri().path() != EXPORT_PATH {
                return Ok(Status::unimplemented(format!(
                    "{} is not served here; only {EXPORT_PATH}",
                    req.uri().path()
                ))
                .into_http());
            }
            let mut accept = EnabledCompressionEncodings::default();
            accept.enable(CompressionEncoding::Gzip);
            accept.enable(CompressionEncoding::Zstd);
            let mut send = EnabledCompressionEncodings::default();
            send.enable(CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(ExportCodec(svc.clone()))
                .apply_compression_config(accept, send)
                .apply_max_message_size_config(Some(max), None);
            Ok(grpc.unary(ExportMethod(svc), req).await)
        })
    }
}

pub(super) async fn serve(
    cfg: GrpcConfig,
    limits: crate::otlp::limits::DecodeLimits,
    budget: Budget,
    ctx: Context,
    out: Fanout,
) -> Result<JoinHandle<()>, StartError> {
    let key = format!("receivers.{}.protocols.grpc.endpoint", ctx.id);
    let (listener, local) = crate::net::bind(&key, &cfg.endpoint).await?;
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
    let svc = Arc::new(Service {
        intake: Intake::new(out, &id, "grpc", limits, budget),
    });
    let unauthenticated = metrics::counter!(names::RECEIVER_REFUSED, "receiver" => id.clone(), "transport" => "grpc", "reason" => "unauthenticated");
    let max = (cfg.max_recv_msg_size_mib as usize) << 20;
    let server = ExportServer {
        svc,
        max_decoding: max,
    };
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
    let sp = &cfg.keepalive.server_parameters;
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .http2_keepalive_interval(Some(sp.time))
        .http2_keepalive_timeout(Some(sp.timeout));
    if let Some(age) = sp.max_connection_age {
        builder = builder.max_connection_age(age);
    }
    // Not tonic's max_connection_age_grace: see aged.rs.
    let lifetime = sp
        .max_connection_age
        .zip(sp.max_connection_age_grace)
        .map(|(age, grace)| age.saturating_add(grace));
    // TLS is done in admission (with its time limit), not by tonic.
    let tls = match &cfg.tls {
        Some(t) => Some(
            crate::net::tls::acceptor(&t.cert_file, &t.key_file, t.client_ca_file.as_deref())
                .map_err(|e| format!("receivers.{}.protocols.grpc.tls: {e}", ctx.id))?,
        ),
        None => None,
    };
    let admission = crate::net::admit::Admission {
        max_connections: cfg.max_connections,
        handshake_timeout: cfg.handshake_timeout,
        // tonic does not say which connections are idle: past the cap, refuse.
        evict_idle: false,
    };
    tracing::info!(receiver = %id, endpoint = %local, tls = cfg.tls.is_some(), "OTLP gRPC receiver listening");
    ctx.health.running();
    let shutdown = ctx.shutdown.clone();
    Ok(tokio::spawn(async move {
        let result = builder
            .add_service(server)
            .serve_with_incoming_shutdown(
                crate::net::admit::incoming(
                    "otlp/grpc",
                    listener,
                    tls,
                    admission,
                    shutdown.clone(),
                )
                .map(move |conn| conn.map(|c| super::aged::Aged::new(c, lifetime))),
                shutdown.cancelled(),
            )
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
