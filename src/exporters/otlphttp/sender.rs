//! One OTLP/HTTP export attempt.

use std::io::Write;
use std::time::{Duration, SystemTime};

use prost::Message;

use super::{HttpCompression, HttpEncoding, OtlpHttpExporterConfig};
use crate::auth::TokenFile;
use crate::exporters::shell::{Delivered, Encoded, SendError, Sender};
use crate::otlp::collector::ExportProfilesServiceResponse;

pub struct HttpSender {
    client: reqwest::Client,
    url: String,
    encoding: HttpEncoding,
    compression: HttpCompression,
    headers: reqwest::header::HeaderMap,
    auth: Option<TokenFile>,
}

fn read(what: &str, p: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("cannot read tls.{what} {}: {e}", p.display()))
}

impl HttpSender {
    pub fn new(cfg: &OtlpHttpExporterConfig) -> Result<Self, String> {
        let mut b = reqwest::Client::builder().use_rustls_tls();
        if let Some(ca) = &cfg.tls.ca_file {
            let cert = reqwest::Certificate::from_pem(&read("ca_file", ca)?)
                .map_err(|e| format!("tls.ca_file: {e}"))?;
            b = b.add_root_certificate(cert);
        }
        if let (Some(c), Some(k)) = (&cfg.tls.cert_file, &cfg.tls.key_file) {
            let mut pem = read("cert_file", c)?;
            pem.extend(read("key_file", k)?);
            b = b.identity(
                reqwest::Identity::from_pem(&pem)
                    .map_err(|e| format!("tls.cert_file/key_file: {e}"))?,
            );
        }
        let client = b
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &cfg.headers {
            if let (Ok(k), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(k.as_bytes()),
                reqwest::header::HeaderValue::from_str(v),
            ) {
                headers.insert(k, v);
            }
        }
        let auth = match &cfg.auth {
            Some(a) => {
                Some(TokenFile::open(a).map_err(|e| format!("auth.bearer_token_file: {e}"))?)
            }
            None => None,
        };
        Ok(HttpSender {
            client,
            url: cfg.url(),
            encoding: cfg.encoding,
            compression: cfg.compression,
            headers,
            auth,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn body(&self, item: &Encoded) -> Result<Vec<u8>, SendError> {
        let raw = match self.encoding {
            HttpEncoding::Proto => item.bytes.to_vec(),
            HttpEncoding::Json => {
                let req = item.decode().map_err(|e| {
                    SendError::Permanent(format!("cannot re-read a queued request: {e}"))
                })?;
                crate::otlp::json::to_vec(&req)
            }
        };
        match self.compression {
            HttpCompression::None => Ok(raw),
            HttpCompression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&raw)
                    .and_then(|_| e.finish())
                    .map_err(|e| SendError::Permanent(format!("cannot compress: {e}")))
            }
        }
    }
}

/// `Retry-After`: seconds, or an HTTP date.
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(3600)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(Duration::from_secs(3600)),
    )
}

/// The partial-success part of a response body, in either encoding.
fn partial(encoding: HttpEncoding, body: &[u8]) -> Option<(u64, String)> {
    if body.is_empty() {
        return None;
    }
    let (rejected, message) = match encoding {
        HttpEncoding::Proto => {
            let r = ExportProfilesServiceResponse::decode(body).ok()?;
            let p = r.partial_success?;
            (p.rejected_profiles.max(0) as u64, p.error_message)
        }
        HttpEncoding::Json => {
            let v: serde_json::Value = serde_json::from_slice(body).ok()?;
            let p = v
                .get("partialSuccess")
                .or_else(|| v.get("partial_success"))?;
            let n = p
                .get("rejectedProfiles")
                .or_else(|| p.get("rejected_profiles"))
                .and_then(|n| n.as_u64().or_else(|| n.as_str()?.parse().ok()))
                .unwrap_or(0);
            let m = p
                .get("errorMessage")
                .or_else(|| p.get("error_message"))
                .and_then(|m| m.as_str())
                .unwrap_or("")
                .to_owned();
            (n, m)
        }
    };
    (rejected > 0).then_some((rejected, message))
}

#[async_trait::async_trait]
impl Sender for HttpSender {
    async fn send(&self, item: &Encoded) -> Result<Delivered, SendError> {
        let body = self.body(item)?;
        let mut req = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                match self.encoding {
                    HttpEncoding::Proto => "application/x-protobuf",
                    HttpEncoding::Json => "application/json",
                },
            )
            .body(body);
        if self.compression == HttpCompression::Gzip {
            req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
        }
        if let Some(t) = &self.auth {
            req = req.bearer_auth(t.token());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| SendError::retryable(format!("{}: {e}", self.url)))?;
        let status = resp.status();
        let wait = retry_after(resp.headers());
        let text = resp.bytes().await.unwrap_or_default();
        if status.is_success() {
            return Ok(match partial(self.encoding, &text) {
                Some((rejected_profiles, message)) => Delivered::Partial {
                    rejected_profiles,
                    message,
                },
                None => Delivered::All,
            });
        }
        let detail: String = String::from_utf8_lossy(&text).chars().take(300).collect();
        let msg = format!("{} answered {status}: {detail}", self.url);
        match status.as_u16() {
            // The collector's retryable statuses.
            429 | 502 | 503 | 504 => Err(SendError::Retryable {
                message: msg,
                retry_after: wait,
            }),
            _ => Err(SendError::Permanent(msg)),
        }
    }
}
