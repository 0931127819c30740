//! One `ProfilesService/Export` call with an already-encoded request (public so tests
//! can send bytes a normal client would refuse to encode).

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::{Compression, OtlpExporterConfig};
use crate::exporters::shell::{Delivered, Encoded, SendError, Sender};
use crate::otlp::collector::ExportProfilesServiceResponse;

const PATH: &str = "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export";

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

#[derive(Clone)]
pub struct GrpcSender {
    grpc: tonic::client::Grpc<Channel>,
    headers: Arc<Vec<(MetadataKey<Ascii>, MetadataValue<Ascii>)>>,
}

impl GrpcSender {
    pub fn new(cfg: &OtlpExporterConfig) -> Result<Self, crate::pipeline::StartError> {
        let mut endpoint = Endpoint::from_shared(cfg.uri())
            .map_err(|e| format!("invalid endpoint `{}`: {e}", cfg.endpoint))?
            .connect_timeout(cfg.timeout);
        if !cfg.tls.insecure {
            endpoint = endpoint
                .tls_config(client_tls(&cfg.tls)?)
                .map_err(|e| format!("TLS settings rejected: {e}"))?;
        }
        let mut grpc = tonic::client::Grpc::new(endpoint.connect_lazy());
        grpc = match cfg.compression {
            Compression::Gzip => grpc.send_compressed(CompressionEncoding::Gzip),
            Compression::Zstd => grpc.send_compressed(CompressionEncoding::Zstd),
            Compression::None => grpc,
        }
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd);
        let headers = cfg
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.parse().ok()?)))
            .collect();
        Ok(GrpcSender {
            grpc,
            headers: Arc::new(headers),
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
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
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
        let mut grpc = self.grpc.clone();
        grpc.ready()
            .await
            .map_err(|e| SendError::retryable(format!("cannot connect: {e}")))?;
        let mut req = tonic::Request::new(item.bytes.clone());
        for (k, v) in self.headers.iter() {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        let path = http::uri::PathAndQuery::from_static(PATH);
        let resp = grpc
            .unary(req, path, BytesCodec)
            .await
            .map_err(|s| classify(&s))?;
        Ok(match resp.into_inner().partial_success {
            Some(p) if p.rejected_profiles > 0 => Delivered::Partial {
                rejected_profiles: p.rejected_profiles as u64,
                message: p.error_message,
            },
            _ => Delivered::All,
        })
    }
}
