//! Settings of the `otlp` exporter.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, Validate};
use crate::exporters::shell::{QueueConfig, RetryConfig};

/// `exporters.otlp[/name]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpExporterConfig {
    /// Where to send: `host:port`, `http://host:port`, or `dns:///NAME:PORT` to resolve
    /// every address of NAME (e.g. a Kubernetes headless Service) and spread requests
    /// round-robin over them. Required.
    pub endpoint: String,
    /// With a `dns:///` endpoint: how often the name is looked up again (also soon after an
    /// address fails). Default `30s`.
    #[serde(
        default = "default_resolve_interval",
        with = "crate::config::units::duration"
    )]
    pub resolve_interval: Duration,
    /// `authorization: Bearer <token>` metadata from a file, re-read when it changes.
    #[serde(default)]
    pub auth: Option<crate::auth::AuthConfig>,
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

fn default_resolve_interval() -> Duration {
    Duration::from_secs(30)
}

/// `tls`: how the connection is secured. By default (as in the collector) it is TLS,
/// verifying the server against the system's root certificates.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Plaintext gRPC, no TLS. Default false.
    pub insecure: bool,
    /// PEM file of the CA(s) that signed the server's certificate, in addition to the system roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate, for mutual TLS (with `key_file`).
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<std::path::PathBuf>,
    /// Name to verify the server's certificate against, instead of the endpoint's host.
    pub server_name_override: Option<String>,
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
    /// The endpoint as a URI tonic can dial: `http://` when insecure, `https://` otherwise.
    pub fn uri(&self) -> String {
        let bare = self
            .endpoint
            .split_once("://")
            .map_or(self.endpoint.as_str(), |(_, rest)| rest);
        let scheme = if self.tls.insecure { "http" } else { "https" };
        format!("{scheme}://{bare}")
    }
}

impl Validate for OtlpExporterConfig {
    fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let bare = self
            .endpoint
            .split_once("://")
            .map_or(self.endpoint.as_str(), |(_, rest)| rest);
        if let Some(dns) = super::balance::parse_dns(&self.endpoint) {
            if let Err(e) = dns {
                errs.push(ConfigError::new("endpoint", e));
            }
            if self.resolve_interval < Duration::from_secs(1) {
                errs.push(ConfigError::new(
                    "resolve_interval",
                    "must be at least 1s, e.g. `30s`",
                ));
            }
        } else if crate::config::units::parse_endpoint(bare.trim_end_matches('/')).is_none() {
            errs.push(ConfigError::new(
                "endpoint",
                format!("`{}` is not a `host:port` address", self.endpoint),
            ));
        }
        let t = &self.tls;
        if t.insecure && self.endpoint.starts_with("https://") {
            errs.push(ConfigError::new(
                "tls.insecure",
                "is true but the endpoint says https://; drop the scheme or set insecure: false",
            ));
        }
        if !t.insecure && self.endpoint.starts_with("http://") {
            errs.push(ConfigError::new(
                "tls.insecure",
                "the endpoint says http:// (plaintext): set `tls: { insecure: true }` to send without TLS",
            ));
        }
        errs.extend(crate::net::tls::validate_client_files(
            t.ca_file.as_deref(),
            t.cert_file.as_deref(),
            t.key_file.as_deref(),
        ));
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
        if let Some(a) = &self.auth {
            a.validate("auth", &mut errs);
        }
        self.retry_on_failure.validate(&mut errs);
        self.sending_queue.validate(&mut errs);
        errs
    }
}
