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
    pub endpoint: Option<String>,
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
        if let Some(e) = &self.endpoint
            && crate::config::units::parse_endpoint(e).is_none()
        {
            errs.push(ConfigError::new(
                "endpoint",
                format!("`{e}` is not a `host:port` address"),
            ));
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
    Arc<Mutex<Vec<mpsc::Sender<Checked>>>>,
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

impl Subscribers {
    fn publish(&self, req: &Checked, dropped: &metrics::Counter) {
        let mut subs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|tx| match tx.try_send(req.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(r)) => {
                // A slow HTTP client must not slow the pipeline.
                dropped.increment(sample_count(&r));
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }
    /// Adds a subscriber unless `max` requests are already being served.
    fn add(&self, tx: mpsc::Sender<Checked>, max: usize) -> Option<Slot> {
        use std::sync::atomic::Ordering::SeqCst;
        let mut subs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|t| !t.is_closed());
        if self.1.load(SeqCst) >= max {
            return None;
        }
        self.1.fetch_add(1, SeqCst);
        subs.push(tx);
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
            let (listener, local) = crate::net::bind(&key, endpoint).await?;
            tracing::info!(exporter = %ctx.id, endpoint = %local, "serving /debug/pprof/profile");
            tokio::spawn(serve(
                listener,
                subs.clone(),
                cfg.max_subscribers,
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
            dropped: metrics::counter!(names::PIPELINE_DROPPED, "component" => ctx.component.clone(), "reason" => "pull_client_too_slow"),
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

async fn serve(
    listener: tokio::net::TcpListener,
    subs: Subscribers,
    max_subscribers: usize,
    stop: CancellationToken,
) {
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
            get(move |Query(q): Query<ProfileQuery>| {
                let (subs, stop, refused) = (subs.clone(), stop2.clone(), refused.clone());
                async move {
                    let secs = q.seconds.unwrap_or(30).clamp(1, 300);
                    let (tx, mut rx) = mpsc::channel(4096);
                    let Some(_slot) = subs.add(tx, max_subscribers) else {
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
