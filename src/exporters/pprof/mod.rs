//! `pprof` exporter: gzip-compressed pprof profiles, one file per batch (a report
//! interval on the agent) in `directory`, and optionally a pull endpoint so
//! `go tool pprof http://HOST:PORT/debug/pprof/profile?seconds=N` works against a running agent.

pub mod convert;
pub mod proto;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Validate, display_path, parse_component};
use crate::exporters::file::FileMode;
use crate::exporters::output_dir::{OutputDir, RetentionConfig, safe_name, timestamp};
use crate::exporters::shell::{self, Outcome, Writer, WriterSettings};
use crate::otlp::view::profiles;
use crate::otlp::{Checked, ProfilesRequest, sample_count};
use crate::pipeline::{Context, Exporter, ExporterFactory, Input, StartError};
use crate::telemetry::names;

/// `exporters.pprof[/name]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PprofExporterConfig {
    /// Directory for the `.pb.gz` files, created if missing. Default `./stackline-out/pprof`;
    /// empty: write no files (with `endpoint` set, serve only).
    pub directory: PathBuf,
    /// `merged` (default): all processes in one profile, with pid/tid labels.
    /// `process`: one file per process, named with its pid and executable.
    pub split_by: SplitBy,
    /// Files kept, oldest deleted first. Default 100; 0 = no limit.
    pub max_files: usize,
    /// Files older than this are deleted. Default: no age limit.
    #[serde(with = "crate::config::units::duration::option")]
    pub max_age: Option<Duration>,
    /// `host:port` to serve `GET /debug/pprof/profile?seconds=N` on: a pprof of the
    /// samples that arrive in the next N seconds (default 30, at most 300). Default: off.
    /// A port alone (`"6060"`) binds loopback. Beyond loopback `auth` is required:
    /// profiles show what the node's programs do.
    pub endpoint: Option<String>,
    /// Bearer token the endpoint requires (`Authorization: Bearer …`), as the receivers'
    /// `auth`. Default: none (loopback only).
    pub auth: Option<crate::auth::AuthConfig>,
    /// Bytes of profiles one pull request may hold while it collects, in MiB; what
    /// arrives past it is left out of that pull and counted in
    /// `stackline_pipeline_dropped_samples_total{reason="pull_window_full"}`. Default 64.
    pub max_window_mib: usize,
    /// Permissions of the files written, in octal. Default `"0640"`.
    pub file_mode: FileMode,
    /// `endpoint` requests collecting at once; more get 503 with `Retry-After` (each
    /// holds what arrives for up to 300 s). Default 4.
    pub max_subscribers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitBy {
    Merged,
    Process,
}

impl Default for PprofExporterConfig {
    fn default() -> Self {
        PprofExporterConfig {
            directory: PathBuf::from("./stackline-out/pprof"),
            split_by: SplitBy::Merged,
            max_files: 100,
            max_age: None,
            endpoint: None,
            auth: None,
            max_window_mib: 64,
            file_mode: FileMode::default(),
            max_subscribers: 4,
        }
    }
}

impl PprofExporterConfig {
    fn retention(&self) -> RetentionConfig {
        RetentionConfig {
            max_files: self.max_files,
            max_age: self.max_age,
            prefix: "profile-",
            mode: self.file_mode.0,
        }
    }
}

impl Validate for PprofExporterConfig {
    fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        self.retention().validate(&mut errs);
        self.file_mode.validate(&mut errs);
        if self.max_subscribers == 0 {
            errs.push(ConfigError::new(
                "max_subscribers",
                "must be at least 1 (or leave `endpoint` unset)",
            ));
        }
        if let Some(e) = &self.endpoint {
            let e = endpoint_address(e);
            if crate::config::units::parse_endpoint(&e).is_none() {
                errs.push(ConfigError::new(
                    "endpoint",
                    format!("`{e}` is not a `host:port` address"),
                ));
            } else if !crate::auth::is_loopback(&e) && self.auth.is_none() {
                errs.push(ConfigError::new(
                    "endpoint",
                    format!("`{e}` is reachable beyond this host and `auth` is not set: anyone who reaches it can read the node's profiles; bind 127.0.0.1 (and use kubectl port-forward or ssh), or set auth.bearer_token_file"),
                ));
            }
        }
        if let Some(a) = &self.auth {
            a.validate("auth", &mut errs);
        }
        if self.max_window_mib == 0 {
            errs.push(ConfigError::new("max_window_mib", "must be at least 1"));
        }
        if self.directory.as_os_str().is_empty() && self.endpoint.is_none() {
            errs.push(ConfigError::new(
                "directory",
                "is empty and no endpoint is set: the exporter would do nothing",
            ));
        }
        errs
    }
}

/// The address to bind: a port alone means loopback.
fn endpoint_address(e: &str) -> String {
    let port = e.strip_prefix(':').unwrap_or(e);
    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        format!("127.0.0.1:{port}")
    } else {
        e.to_owned()
    }
}

pub fn factory() -> ExporterFactory {
    ExporterFactory {
        type_name: "pprof",
        description: "writes gzipped pprof profiles per interval and serves /debug/pprof/profile for go tool pprof",
        create: |_, v| {
            Ok(Box::new(PprofExporter {
                cfg: parse_component(v)?,
            }))
        },
    }
}

pub struct PprofExporter {
    cfg: PprofExporterConfig,
}

/// Live `/debug/pprof/profile` requests, each collecting what arrives while it waits.
#[derive(Clone, Default)]
struct Subscribers(
    Arc<Mutex<Vec<Subscriber>>>,
    /// Requests admitted and not yet answered (collecting, merging or encoding).
    Arc<std::sync::atomic::AtomicUsize>,
);

/// One admitted `/debug/pprof/profile` request; its slot is free once this is dropped.
struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// One pull request collecting: what it holds is bounded by bytes, not by requests (a
/// request may be anything up to the receivers' size limit).
struct Subscriber {
    tx: mpsc::UnboundedSender<Checked>,
    /// Bytes (encoded) it may still take.
    room: usize,
}

impl Subscribers {
    fn publish(&self, req: &Checked, dropped: &metrics::Counter) {
        let mut subs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if subs.is_empty() {
            return;
        }
        let size = prost::Message::encoded_len(&**req);
        subs.retain_mut(|s| {
            if s.tx.is_closed() {
                return false;
            }
            if size > s.room {
                dropped.increment(sample_count(req));
                return true;
            }
            s.room -= size;
            s.tx.send(req.clone()).is_ok()
        });
    }
    /// Adds a subscriber unless `max` requests are already being served.
    fn add(&self, tx: mpsc::UnboundedSender<Checked>, room: usize, max: usize) -> Option<Slot> {
        use std::sync::atomic::Ordering::SeqCst;
        let mut subs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|t| !t.tx.is_closed());
        if self.1.load(SeqCst) >= max {
            return None;
        }
        self.1.fetch_add(1, SeqCst);
        subs.push(Subscriber { tx, room });
        Some(Slot(self.1.clone()))
    }
}

#[async_trait]
impl Exporter for PprofExporter {
    async fn start(
        self: Box<Self>,
        ctx: Context,
        input: Input,
    ) -> Result<JoinHandle<()>, StartError> {
        let cfg = self.cfg;
        let dir = if cfg.directory.as_os_str().is_empty() {
            None
        } else {
            Some(OutputDir::open(&cfg.directory, cfg.retention()).map_err(|e| {
                format!(
                    "cannot write pprof files to {} (exporters.{}.directory): {e}; choose a writable directory",
                    display_path(&cfg.directory),
                    ctx.id
                )
            })?)
        };
        let subs = Subscribers::default();
        let stop = CancellationToken::new();
        if let Some(endpoint) = &cfg.endpoint {
            let key = format!("exporters.{}.endpoint", ctx.id);
            let (listener, local) = crate::net::bind(&key, &endpoint_address(endpoint)).await?;
            let auth = match &cfg.auth {
                Some(a) => Some(Arc::new(crate::auth::TokenFile::open(a).map_err(|e| {
                    format!(
                        "cannot read exporters.{}.auth.bearer_token_file: {e}",
                        ctx.id
                    )
                })?)),
                None => None,
            };
            tracing::info!(exporter = %ctx.id, endpoint = %local, auth = auth.is_some(), "serving /debug/pprof/profile");
            tokio::spawn(serve(
                listener,
                Pull {
                    subs: subs.clone(),
                    max_subscribers: cfg.max_subscribers,
                    window: cfg.max_window_mib.saturating_mul(1 << 20),
                    auth,
                },
                stop.clone(),
            ));
        }
        if let Some(d) = &dir {
            tracing::info!(exporter = %ctx.id, directory = %display_path(d.path()), "pprof exporter writing");
        }
        let w = PprofWriter {
            dir: dir.map(Arc::new),
            split: cfg.split_by == SplitBy::Process,
            subs,
            dropped: ctx
                .drops
                .counter(crate::pipeline::DropReason::PullWindowFull)
                .clone(),
        };
        let again = w.clone();
        let shell = shell::start_writer(
            ctx,
            input,
            w,
            move || Ok(again.clone()),
            WriterSettings {
                flush_every: None,
                what: "pprof files",
            },
        );
        // The pull endpoint ends with the exporter.
        Ok(tokio::spawn(async move {
            let _ = shell.await;
            stop.cancel();
        }))
    }
}

#[derive(Clone)]
struct PprofWriter {
    dir: Option<Arc<OutputDir>>,
    split: bool,
    subs: Subscribers,
    dropped: metrics::Counter,
}

impl Writer for PprofWriter {
    fn write(&mut self, req: Checked) -> Outcome {
        let n = sample_count(&req);
        self.subs.publish(&req, &self.dropped);
        match &self.dir {
            Some(d) => match write_files(d, &req, self.split) {
                Ok(()) => Outcome::sent(n),
                Err(e) => Outcome::failed(n, e),
            },
            None => Outcome::sent(n),
        }
    }
}

fn write_files(dir: &OutputDir, req: &ProfilesRequest, split: bool) -> std::io::Result<()> {
    let time = profiles(req)
        .map(|p| p.time_unix_nano)
        .filter(|&t| t > 0)
        .min()
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
    let converted = convert::convert(req, split);
    let several_types = converted
        .iter()
        .any(|c| c.sample_type != converted[0].sample_type);
    for c in &converted {
        let mut name = format!("profile-{}", timestamp(time));
        if several_types {
            name.push('-');
            name.push_str(&safe_name(&c.sample_type));
        }
        if let Some((pid, exe)) = &c.process {
            name.push_str(&format!("-pid{pid}"));
            if !exe.is_empty() {
                name.push('-');
                name.push_str(&safe_name(exe));
            }
        }
        name.push_str(".pb.gz");
        dir.write(&name, ".pb.gz", &convert::encode_gzip(&c.profile)?)?;
    }
    Ok(())
}

#[derive(Deserialize)]
struct ProfileQuery {
    seconds: Option<u64>,
}

/// What the pull endpoint serves from, and its bounds.
#[derive(Clone)]
struct Pull {
    subs: Subscribers,
    max_subscribers: usize,
    /// Bytes one pull may hold (`max_window_mib`).
    window: usize,
    auth: Option<Arc<crate::auth::TokenFile>>,
}

async fn serve(listener: tokio::net::TcpListener, pull: Pull, stop: CancellationToken) {
    let Pull {
        subs,
        max_subscribers,
        window,
        auth,
    } = pull;
    let refused = metrics::counter!(names::HTTP_CONNECTIONS_REFUSED, "listener" => "pprof", "reason" => "max_subscribers");
    use axum::extract::Query;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::get;
    let stop2 = stop.clone();
    // `go tool pprof` asks here to symbolize mappings the profile leaves unsymbolized;
    // a 404 makes it fail, so answer as a server with no symbols to offer does.
    let symbol = get(|| async { "num_symbols: 0\n" }).post(|| async { "" });
    let app = axum::Router::new()
        .route("/debug/pprof/symbol", symbol)
        .route(
            "/debug/pprof/profile",
            get(move |headers: axum::http::HeaderMap, Query(q): Query<ProfileQuery>| {
                let (subs, stop, refused) = (subs.clone(), stop2.clone(), refused.clone());
                let auth = auth.clone();
                async move {
                    if let Some(auth) = &auth {
                        let given = headers
                            .get(axum::http::header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok());
                        if !auth.allows(given) {
                            return (
                                StatusCode::UNAUTHORIZED,
                                [("www-authenticate", "Bearer".to_string())],
                                "a bearer token is required (exporters.pprof.auth)\n".to_string(),
                            )
                                .into_response();
                        }
                    }
                    let secs = q.seconds.unwrap_or(30).clamp(1, 300);
                    let (tx, mut rx) = mpsc::unbounded_channel();
                    let Some(_slot) = subs.add(tx, window, max_subscribers) else {
                        refused.increment(1);
                        return (
                            StatusCode::SERVICE_UNAVAILABLE,
                            [("retry-after", secs.to_string())],
                            format!("{max_subscribers} profiles are being collected already (max_subscribers); try again when one ends\n"),
                        )
                            .into_response();
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
                        _ = stop.cancelled() => {}
                    }
                    rx.close();
                    let mut got = Vec::new();
                    while let Some(r) = rx.recv().await {
                        got.push(r);
                    }
                    let merged = crate::otlp::merge(&got);
                    let profile = convert::convert(&merged, false)
                        .into_iter()
                        .next()
                        .map(|c| c.profile)
                        .unwrap_or_else(|| empty_cpu_profile(secs));
                    match convert::encode_gzip(&profile) {
                        Ok(bytes) => (
                            StatusCode::OK,
                            [
                                ("content-type", "application/octet-stream"),
                                ("content-disposition", "attachment; filename=\"profile\""),
                            ],
                            bytes,
                        )
                            .into_response(),
                        Err(e) => {
                            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                        }
                    }
                }
            }),
        );
    crate::net::serve_http(
        "pprof",
        listener,
        app,
        None,
        crate::net::Limits::default(),
        stop,
        std::time::Duration::from_secs(1),
    )
    .await;
}

/// A valid profile with no samples, for a window in which nothing arrived.
fn empty_cpu_profile(secs: u64) -> proto::Profile {
    proto::Profile {
        string_table: vec!["".into(), "samples".into(), "count".into()],
        sample_type: vec![proto::ValueType { r#type: 1, unit: 2 }],
        duration_nanos: (secs * 1_000_000_000) as i64,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
