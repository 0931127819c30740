//! The OTLP/HTTP server: `POST /v1development/profiles` with a protobuf
//! (`application/x-protobuf`) or JSON (`application/json`) body, gzip or zstd encoded
//! or not. Answers in the request's encoding: 200 with an `ExportProfilesServiceResponse`,
//! 400 for bad input, 401 without the token, 413 past the size limit, 415 for another
//! content type, 503 when the pipeline does not take the data (clients retry).

use std::io::Read;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prost::Message;
use tokio::task::JoinHandle;

use super::HttpConfig;
use super::intake::{Intake, Refusal};
use crate::otlp::HTTP_PATH as PATH;
use crate::otlp::ProfilesRequest;
use crate::otlp::collector::ExportProfilesServiceResponse;
use crate::pipeline::{Context, Fanout, StartError};

struct Server {
    intake: Intake,
    auth: Option<crate::auth::TokenFile>,
    max_bytes: usize,
    /// `limits.max_decoded_size_mib` in bytes: JSON is measured while it is read.
    max_decoded_bytes: u64,
    /// Time to read the whole body (`read_timeout`).
    read_timeout: std::time::Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Proto,
    Json,
}

fn reply(enc: Encoding, status: StatusCode, message: &str) -> Response {
    // A google.rpc.Status: code 0 for success, else the message.
    let code = if status.is_success() { 0 } else { 2 };
    match enc {
        Encoding::Json => {
            let body = if status.is_success() {
                "{}".to_owned()
            } else {
                serde_json::json!({ "code": code, "message": message }).to_string()
            };
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Encoding::Proto => {
            let body = if status.is_success() {
                ExportProfilesServiceResponse::default().encode_to_vec()
            } else {
                // google.rpc.Status { int32 code = 1; string message = 2; }
                let mut b = Vec::new();
                prost::encoding::int32::encode(1, &code, &mut b);
                prost::encoding::string::encode(2, &message.to_owned(), &mut b);
                b
            };
            (
                status,
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                body,
            )
                .into_response()
        }
    }
}

/// Inflates `body` per Content-Encoding, never past `max` bytes.
fn decompress(
    headers: &HeaderMap,
    body: &[u8],
    max: usize,
) -> Result<Vec<u8>, (StatusCode, String)> {
    let enc = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let mut out = Vec::new();
    let limited = |r: &mut dyn Read, out: &mut Vec<u8>| -> Result<(), (StatusCode, String)> {
        r.take(max as u64 + 1).read_to_end(out).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("cannot decompress the body: {e}"),
            )
        })?;
        if out.len() > max {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is larger than {max} bytes once decompressed (max_request_body_size_mib)"
                ),
            ));
        }
        Ok(())
    };
    match enc.as_str() {
        "" | "identity" => {
            if body.len() > max {
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is larger than {max} bytes (max_request_body_size_mib)"),
                ));
            }
            Ok(body.to_vec())
        }
        "gzip" => {
            limited(&mut flate2::read::GzDecoder::new(body), &mut out)?;
            Ok(out)
        }
        "zstd" => {
            let mut d = zstd::stream::read::Decoder::new(body).map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("cannot decompress the body: {e}"),
                )
            })?;
            limited(&mut d, &mut out)?;
            Ok(out)
        }
        other => Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding `{other}` is not supported; use gzip, zstd or none"),
        )),
    }
}

async fn export(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let enc = if ctype.starts_with("application/json") {
        Encoding::Json
    } else if ctype.starts_with("application/x-protobuf")
        || ctype.starts_with("application/protobuf")
    {
        Encoding::Proto
    } else {
        return reply(
            Encoding::Json,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/x-protobuf or application/json",
        );
    };
    if let Some(auth) = &s.auth {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !auth.allows(given) {
            s.intake.refused_unauthenticated();
            return reply(
                enc,
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required",
            );
        }
    }
    // Read no more than the limit off the wire (a compressed body may not exceed the
    // decompressed limit either).
    // Read no more than the limit, in no more than read_timeout: a client that
    // trickles its body in does not hold a connection and a buffer for ever.
    let read = tokio::time::timeout(s.read_timeout, axum::body::to_bytes(body, s.max_bytes));
    let Ok(read) = read.await else {
        s.intake.refused_undecodable();
        return reply(
            enc,
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "the body did not arrive within {:?} (read_timeout)",
                s.read_timeout
            ),
        );
    };
    let body: Bytes = match read {
        Ok(b) => b,
        Err(e) => {
            let inner = e.into_inner();
            let too_large = inner.is::<http_body_util::LengthLimitError>();
            let e = inner;
            return if too_large {
                s.intake.refused_too_large();
                reply(
                    enc,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!(
                        "the body is larger than {} bytes (max_request_body_size_mib)",
                        s.max_bytes
                    ),
                )
            } else {
                s.intake.refused_undecodable();
                reply(
                    enc,
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read the body: {e}"),
                )
            };
        }
    };
    let raw = match decompress(&headers, &body, s.max_bytes) {
        Ok(b) => b,
        Err((code, msg)) => {
            if code == StatusCode::PAYLOAD_TOO_LARGE {
                s.intake.refused_too_large();
            } else {
                s.intake.refused_undecodable();
            }
            return reply(enc, code, &msg);
        }
    };
    // Protobuf is measured on the wire before it is decoded; JSON (which expands less)
    // while it is read (its decoded size) and once decoded (its counts).
    // Its share of the receiver's in-flight budget, held until it is answered: the
    // decoded estimate for protobuf, the body's size for JSON (whose parse is bounded by
    // max_decoded_bytes on its own).
    let _in_flight = match enc {
        Encoding::Proto => match s.intake.prescan(&raw) {
            Ok(fp) => s.intake.reserve(fp.decoded_bytes, fp.samples),
            Err(r) => Err(r),
        },
        Encoding::Json => s.intake.reserve(raw.len() as u64, 0),
    };
    let _in_flight = match _in_flight {
        Ok(h) => h,
        Err(r) => return refusal(enc, r),
    };
    let req = match enc {
        Encoding::Proto => ProfilesRequest::decode(raw.as_slice()).map_err(|e| e.to_string()),
        Encoding::Json => match crate::otlp::json::from_slice_limited(&raw, s.max_decoded_bytes) {
            Ok(r) => Ok(r),
            // Too large once decoded, like a protobuf body over its limits: 413.
            Err(e) if e.is_over_limit() => {
                s.intake.refused_too_large();
                return reply(enc, StatusCode::PAYLOAD_TOO_LARGE, &e.to_string());
            }
            Err(e) => Err(e.to_string()),
        },
    };
    let req = match req {
        Ok(r) => r,
        Err(e) => {
            s.intake.refused_undecodable();
            return reply(
                enc,
                StatusCode::BAD_REQUEST,
                &format!("cannot decode the request: {e}"),
            );
        }
    };
    if enc == Encoding::Json
        && let Err(r) = s
            .intake
            .within_limits(&crate::otlp::limits::footprint_of(&req))
    {
        return refusal(enc, r);
    }
    match s.intake.export(req).await {
        Ok(()) => reply(enc, StatusCode::OK, ""),
        Err(r) => refusal(enc, r),
    }
}

/// The HTTP answer to a refusal.
fn refusal(enc: Encoding, r: Refusal) -> Response {
    match r {
        Refusal::Invalid(m) => reply(enc, StatusCode::BAD_REQUEST, &m),
        // Not 429: the same request would be refused again, so clients must not retry it.
        Refusal::TooLarge(m) => reply(enc, StatusCode::PAYLOAD_TOO_LARGE, &m),
        Refusal::Unavailable(m) | Refusal::Busy(m) => {
            let mut r = reply(enc, StatusCode::SERVICE_UNAVAILABLE, &m);
            r.headers_mut().insert(
                header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            r
        }
    }
}

pub(super) async fn serve(
    cfg: HttpConfig,
    limits: crate::otlp::limits::DecodeLimits,
    budget: super::intake::Budget,
    ctx: Context,
    out: Fanout,
) -> Result<JoinHandle<()>, StartError> {
    let key = format!("receivers.{}.protocols.http.endpoint", ctx.id);
    let (listener, local) = crate::net::bind(&key, &cfg.endpoint).await?;
    let auth = match &cfg.auth {
        Some(a) => Some(crate::auth::TokenFile::open(a).map_err(|e| {
            format!(
                "cannot read receivers.{}.protocols.http.auth.bearer_token_file: {e}",
                ctx.id
            )
        })?),
        None => None,
    };
    let tls = match &cfg.tls {
        Some(t) => Some(
            crate::net::tls::acceptor(&t.cert_file, &t.key_file, t.client_ca_file.as_deref())
                .map_err(|e| format!("receivers.{}.protocols.http.tls: {e}", ctx.id))?,
        ),
        None => None,
    };
    crate::auth::warn_if_open("otlp/http", &cfg.endpoint, tls.is_some(), auth.is_some());
    let max_bytes = (cfg.max_request_body_size_mib as usize) << 20;
    let max_decoded_bytes = limits.max_decoded_size_mib.saturating_mul(1 << 20);
    let server = Arc::new(Server {
        intake: Intake::new(out, &ctx.id.to_string(), "http", limits, budget),
        auth,
        max_bytes,
        max_decoded_bytes,
        read_timeout: cfg.read_timeout,
    });
    let app = axum::Router::new()
        .route(PATH, axum::routing::post(export))
        .with_state(server);
    tracing::info!(receiver = %ctx.id, endpoint = %local, tls = tls.is_some(), "OTLP/HTTP receiver listening");
    ctx.health.running();
    let limits = crate::net::Limits {
        max_connections: cfg.max_connections,
        read_header_timeout: cfg.read_header_timeout,
        ..Default::default()
    };
    Ok(tokio::spawn(async move {
        // In-flight requests wait for their data to be safe; the pipeline's own drain
        // deadline bounds that, so the grace here is generous.
        crate::net::serve_http(
            "otlp/http",
            listener,
            app,
            tls,
            limits,
            ctx.shutdown.clone(),
            std::time::Duration::from_secs(3600),
        )
        .await;
        ctx.health.stopping();
    }))
}
