//! One `ProfilesService/Export` call with an already-encoded request (public so tests
//! can send bytes a normal client would refuse to encode).

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::balance::{self, Balancer};
use super::{Compression, OtlpExporterConfig};
use crate::auth::TokenFile;
use crate::exporters::shell::{Delivered, Encoded, SendError, Sender};
use crate::otlp::collector::ExportProfilesServiceResponse;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::otlp::GRPC_EXPORT_PATH as PATH;

/// Sends pre-encoded protobuf bytes, so a retried request is not encoded again.
#[derive(Clone, Default)]
struct BytesCodec;

struct BytesEncoder;
struct ResponseDecoder;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = ExportProfilesServiceResponse;
    type Encoder = BytesEncoder;
    type Decoder = ResponseDecoder;
    fn encoder(&mut self) -> Self::Encoder {
        BytesEncoder
    }
    fn decoder(&mut self) -> Self::Decoder {
        ResponseDecoder
    }
}

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = ExportProfilesServiceResponse;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let n = src.remaining();
        ExportProfilesServiceResponse::decode(src.copy_to_bytes(n))
            .map(Some)
            .map_err(|e| Status::internal(format!("undecodable export response: {e}")))
    }
}

/// Where requests go: one channel, or every address of a `dns:///` name.
#[derive(Clone)]
enum Target {
    One(tonic::client::Grpc<Channel>),
    Dns(Arc<Balancer>),
}

#[derive(Clone)]
pub struct GrpcSender {
    target: Target,
    headers: Arc<Vec<(MetadataKey<Ascii>, MetadataValue<Ascii>)>>,
    auth: Option<Arc<TokenFile>>,
    /// Stops the re-resolving task of a `dns:///` endpoint with the last clone.
    _stop: Arc<DropGuard>,
}

fn grpc_over(channel: Channel, compression: Compression) -> tonic::client::Grpc<Channel> {
    let grpc = tonic::client::Grpc::new(channel);
    match compression {
        Compression::Gzip => grpc.send_compressed(CompressionEncoding::Gzip),
        Compression::Zstd => grpc.send_compressed(CompressionEncoding::Zstd),
        Compression::None => grpc,
    }
    .accept_compressed(CompressionEncoding::Gzip)
    .accept_compressed(CompressionEncoding::Zstd)
}

impl GrpcSender {
    /// `exporter` names the exporter in logs and metrics. Must be called inside a
    /// Tokio runtime (a `dns:///` endpoint starts its resolver task).
    pub fn new(
        cfg: &OtlpExporterConfig,
        exporter: &str,
    ) -> Result<Self, crate::pipeline::StartError> {
        let tls = if cfg.tls.insecure {
            None
        } else {
            Some(client_tls(&cfg.tls)?)
        };
        let stop = CancellationToken::new();
        let target = match balance::parse_dns(&cfg.endpoint) {
            Some(parsed) => {
                let (host, port) = parsed?;
                let (timeout, compression) = (cfg.timeout, cfg.compression);
                // Connected by address, the server's certificate is still checked against the name.
                let tls = tls.map(|t| {
                    if cfg.tls.server_name_override.is_some() {
                        t
                    } else {
                        t.domain_name(host.clone())
                    }
                });
                let scheme = if cfg.tls.insecure { "http" } else { "https" };
                Target::Dns(Balancer::start(
                    host,
                    port,
                    exporter.to_owned(),
                    cfg.resolve_interval,
                    Box::new(move |addr| {
                        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
                            .map_err(|e| e.to_string())?
                            .connect_timeout(timeout);
                        if let Some(t) = &tls {
                            ep = ep.tls_config(t.clone()).map_err(|e| e.to_string())?;
                        }
                        Ok(grpc_over(ep.connect_lazy(), compression))
                    }),
                    stop.clone(),
                ))
            }
            None => {
                let mut endpoint = Endpoint::from_shared(cfg.uri())
                    .map_err(|e| format!("invalid endpoint `{}`: {e}", cfg.endpoint))?
                    .connect_timeout(cfg.timeout);
                if let Some(t) = tls {
                    endpoint = endpoint
                        .tls_config(t)
                        .map_err(|e| format!("TLS settings rejected: {e}"))?;
                }
                Target::One(grpc_over(endpoint.connect_lazy(), cfg.compression))
            }
        };
        let headers = cfg
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.parse().ok()?)))
            .collect();
        let auth = match &cfg.auth {
            Some(a) => Some(Arc::new(
                TokenFile::open(a).map_err(|e| format!("auth.bearer_token_file: {e}"))?,
            )),
            None => None,
        };
        Ok(GrpcSender {
            target,
            headers: Arc::new(headers),
            auth,
            _stop: Arc::new(stop.drop_guard()),
        })
    }

    /// One attempt on one channel. The flag says whether the server could not be reached
    /// (or said UNAVAILABLE), so a balancer tries another address next.
    async fn send_on(
        &self,
        mut grpc: tonic::client::Grpc<Channel>,
        item: &Encoded,
    ) -> Result<Delivered, (SendError, bool)> {
        grpc.ready()
            .await
            .map_err(|e| (SendError::retryable(format!("cannot connect: {e}")), true))?;
        let mut req = tonic::Request::new(item.bytes.clone());
        for (k, v) in self.headers.iter() {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        if let Some(t) = &self.auth {
            match format!("Bearer {}", t.token()).parse() {
                Ok(v) => {
                    req.metadata_mut().insert("authorization", v);
                }
                Err(_) => {
                    return Err((
                        SendError::Permanent(
                            "the bearer token file holds characters not allowed in a header".into(),
                        ),
                        false,
                    ));
                }
            }
        }
        let path = http::uri::PathAndQuery::from_static(PATH);
        let resp = grpc
            .unary(req, path, BytesCodec)
            .await
            .map_err(|s| (classify(&s), s.code() == Code::Unavailable))?;
        Ok(match resp.into_inner().partial_success {
            Some(p) if p.rejected_profiles > 0 => Delivered::Partial {
                rejected_profiles: p.rejected_profiles as u64,
                message: p.error_message,
            },
            _ => Delivered::All,
        })
    }
}

fn read_pem(what: &str, path: &std::path::Path) -> Result<Vec<u8>, crate::pipeline::StartError> {
    std::fs::read(path)
        .map_err(|e| format!("cannot read tls.{what} {}: {e}", path.display()).into())
}

/// TLS towards the server: system roots plus `ca_file`, a client identity for mutual TLS.
fn client_tls(
    t: &super::TlsConfig,
) -> Result<tonic::transport::ClientTlsConfig, crate::pipeline::StartError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new().with_native_roots();
    if let Some(ca) = &t.ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read_pem("ca_file", ca)?));
    }
    if let (Some(cert), Some(key)) = (&t.cert_file, &t.key_file) {
        tls = tls.identity(Identity::from_pem(
            read_pem("cert_file", cert)?,
            read_pem("key_file", key)?,
        ));
    }
    if let Some(name) = &t.server_name_override {
        tls = tls.domain_name(name.clone());
    }
    Ok(tls)
}

/// The collector's classification of gRPC codes.
fn classify(status: &Status) -> SendError {
    let msg = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        // As the collector: only with details (RetryInfo) saying when to come back; a
        // request over a receiver's decode limits would be refused again.
        Code::ResourceExhausted if !status.details().is_empty() => SendError::retryable(msg),
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => SendError::retryable(msg),
        _ => SendError::Permanent(msg),
    }
}

#[async_trait::async_trait]
impl Sender for GrpcSender {
    async fn send(&self, item: &Encoded) -> Result<Delivered, SendError> {
        match &self.target {
            Target::One(grpc) => self.send_on(grpc.clone(), item).await.map_err(|(e, _)| e),
            Target::Dns(b) => {
                let backend = b.pick().await.map_err(SendError::retryable)?;
                match self.send_on(backend.grpc.clone(), item).await {
                    Ok(d) => {
                        b.mark_up(&backend);
                        Ok(d)
                    }
                    Err((e, unreachable)) => {
                        if unreachable {
                            b.mark_down(&backend);
                        }
                        Err(match e {
                            SendError::Retryable {
                                message,
                                retry_after,
                            } => SendError::Retryable {
                                message: format!("{}: {message}", backend.addr),
                                retry_after,
                            },
                            SendError::Permanent(m) => {
                                SendError::Permanent(format!("{}: {m}", backend.addr))
                            }
                        })
                    }
                }
            }
        }
    }
}
