//! Settings of the `otlp` exporter.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, Validate};
use crate::exporters::helper::{QueueConfig, RetryConfig};

/// `exporters.otlp[/name]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpExporterConfig {
    /// Where to send: `host:port` or `http://host:port`. Required.
    pub endpoint: String,
    #[serde(default)]
    pub tls: TlsConfig,
    /// Request compression: `gzip` (default), `zstd` or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// Limit on each attempt, including connecting. Default `5s`.
    #[serde(default = "default_timeout", with = "crate::config::units::duration")]
    pub timeout: Duration,
    /// gRPC metadata sent with every request (e.g. an auth token or tenant id).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub retry_on_failure: RetryConfig,
    #[serde(default)]
    pub sending_queue: QueueConfig,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// `tls`: only plaintext gRPC is implemented so far.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Send without TLS. Must be `true` for now: terminate TLS in a sidecar or mesh.
    pub insecure: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    None,
}

impl OtlpExporterConfig {
    /// The endpoint as a URI tonic can dial.
    pub fn uri(&self) -> String {
        if self.endpoint.contains("://") {
            self.endpoint.clone()
        } else {
            format!("http://{}", self.endpoint)
        }
    }
}

impl Validate for OtlpExporterConfig {
    fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let bare = self
            .endpoint
            .strip_prefix("http://")
            .unwrap_or(&self.endpoint);
        if self.endpoint.starts_with("https://") || !self.tls.insecure {
            errs.push(ConfigError::new(
                "tls.insecure",
                "TLS is not supported yet: set `tls: { insecure: true }` with a plain `host:port` endpoint, and terminate TLS in a sidecar or service mesh",
            ));
        } else if crate::config::units::parse_endpoint(bare.trim_end_matches('/')).is_none() {
            errs.push(ConfigError::new(
                "endpoint",
                format!("`{}` is not a `host:port` address", self.endpoint),
            ));
        }
        if self.timeout.is_zero() {
            errs.push(ConfigError::new(
                "timeout",
                "must be greater than 0, e.g. `5s`",
            ));
        }
        for (k, v) in &self.headers {
            if k.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>()
                .is_err()
            {
                errs.push(ConfigError::new(
                    format!("headers.{k}"),
                    "is not a valid gRPC metadata key (lowercase ASCII letters, digits, `-`, `_`, `.`)",
                ));
            } else if v
                .parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
                .is_err()
            {
                errs.push(ConfigError::new(
                    format!("headers.{k}"),
                    "the value must be visible ASCII",
                ));
            }
        }
        self.retry_on_failure.validate(&mut errs);
        self.sending_queue.validate(&mut errs);
        errs
    }
}
