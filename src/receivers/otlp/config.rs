//! Settings of the `otlp` receiver.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::{ConfigError, Validate};

/// `receivers.otlp`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpReceiverConfig {
    pub protocols: Protocols,
}

/// `receivers.otlp.protocols`: only gRPC is served for now.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Protocols {
    /// The gRPC server (`opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export`).
    pub grpc: GrpcConfig,
}

/// `receivers.otlp.protocols.grpc`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// `host:port` to listen on. Default `127.0.0.1:4317`; use `0.0.0.0:4317` to accept
    /// from other hosts (e.g. as a gateway behind a Kubernetes Service).
    pub endpoint: String,
    /// Largest request accepted, in MiB, after decompression. Default 32.
    pub max_recv_msg_size_mib: u64,
    /// Serve TLS instead of plaintext. Default: plaintext.
    pub tls: Option<ServerTlsConfig>,
}

/// `receivers.otlp.protocols.grpc.tls`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate (chain) the server presents.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
    /// PEM CA(s) client certificates must be signed by: set it to require mutual TLS.
    pub client_ca_file: Option<PathBuf>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            endpoint: "127.0.0.1:4317".into(),
            max_recv_msg_size_mib: 32,
            tls: None,
        }
    }
}

impl Validate for OtlpReceiverConfig {
    fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let g = &self.protocols.grpc;
        if crate::config::units::parse_endpoint(&g.endpoint).is_none() {
            errs.push(ConfigError::new(
                "protocols.grpc.endpoint",
                format!("`{}` is not a `host:port` address", g.endpoint),
            ));
        }
        if g.max_recv_msg_size_mib == 0 || g.max_recv_msg_size_mib > 2048 {
            errs.push(ConfigError::new(
                "protocols.grpc.max_recv_msg_size_mib",
                format!(
                    "{} is out of range; give a size in MiB from 1 to 2048",
                    g.max_recv_msg_size_mib
                ),
            ));
        }
        if let Some(t) = &g.tls {
            for (name, f) in [
                ("cert_file", Some(&t.cert_file)),
                ("key_file", Some(&t.key_file)),
                ("client_ca_file", t.client_ca_file.as_ref()),
            ] {
                if let Some(f) = f
                    && std::fs::metadata(f).is_err()
                {
                    errs.push(ConfigError::new(
                        format!("protocols.grpc.tls.{name}"),
                        format!("cannot read {}", f.display()),
                    ));
                }
            }
        }
        errs
    }
}
