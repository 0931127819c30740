//! Settings of the `otlphttp` exporter.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::AuthConfig;
use crate::config::{ConfigError, Validate};
use crate::exporters::shell::{QueueConfig, RetryConfig};

/// `exporters.otlphttp[/name]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpHttpExporterConfig {
    /// Base URL, e.g. `http://collector:4318` or `https://pyroscope.example:4040`;
    /// profiles go to `{endpoint}/v1development/profiles`. Required unless `profiles_endpoint` is set.
    #[serde(default)]
    pub endpoint: String,
    /// Full URL for profiles, used as is instead (backends differ in the path).
    #[serde(default)]
    pub profiles_endpoint: Option<String>,
    /// `proto` (default, `application/x-protobuf`) or `json` (`application/json`, OTLP/JSON).
    #[serde(default)]
    pub encoding: HttpEncoding,
    /// `gzip` (default) or `none`.
    #[serde(default)]
    pub compression: HttpCompression,
    /// Headers sent with every request (e.g. `X-Scope-OrgID` for a tenant).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Limit on each attempt. Default `30s`.
    #[serde(default = "default_timeout", with = "crate::config::units::duration")]
    pub timeout: Duration,
    /// TLS for `https://` URLs (system roots are always trusted).
    #[serde(default)]
    pub tls: HttpTlsConfig,
    /// `Authorization: Bearer <token>` from a file, re-read when it changes.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Retried on 429, 502, 503 and 504 (after `Retry-After` when the server sends it)
    /// and on connection errors and timeouts.
    #[serde(default)]
    pub retry_on_failure: RetryConfig,
    #[serde(default)]
    pub sending_queue: QueueConfig,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpEncoding {
    #[default]
    Proto,
    Json,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpCompression {
    #[default]
    Gzip,
    None,
}

/// `tls` of `otlphttp`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpTlsConfig {
    /// PEM CA(s) that signed the server's certificate, in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl OtlpHttpExporterConfig {
    /// Where profiles are posted.
    pub fn url(&self) -> String {
        match &self.profiles_endpoint {
            Some(u) => u.clone(),
            None => format!(
                "{}{}",
                self.endpoint.trim_end_matches('/'),
                crate::otlp::HTTP_PATH
            ),
        }
    }
}

impl Validate for OtlpHttpExporterConfig {
    fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        if self.endpoint.is_empty() && self.profiles_endpoint.is_none() {
            errs.push(ConfigError::new(
                "endpoint",
                "is required (or profiles_endpoint), e.g. `http://collector:4318`",
            ));
        }
        let url = self.url();
        match url.parse::<http::Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http") | Some("https")) && u.host().is_some() => {
            }
            _ => errs.push(ConfigError::new(
                if self.profiles_endpoint.is_some() {
                    "profiles_endpoint"
                } else {
                    "endpoint"
                },
                format!("`{url}` is not an http:// or https:// URL"),
            )),
        }
        if self.timeout.is_zero() {
            errs.push(ConfigError::new(
                "timeout",
                "must be greater than 0, e.g. `30s`",
            ));
        }
        for (k, v) in &self.headers {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                errs.push(ConfigError::new(
                    format!("headers.{k}"),
                    "is not a valid header name",
                ));
            } else if http::HeaderValue::from_str(v).is_err() {
                errs.push(ConfigError::new(
                    format!("headers.{k}"),
                    "the value must be visible ASCII",
                ));
            }
        }
        let t = &self.tls;
        errs.extend(crate::net::tls::validate_client_files(
            t.ca_file.as_deref(),
            t.cert_file.as_deref(),
            t.key_file.as_deref(),
        ));
        if let Some(a) = &self.auth {
            a.validate("auth", &mut errs);
        }
        self.retry_on_failure.validate(&mut errs);
        self.sending_queue.validate(&mut errs);
        errs
    }
}
