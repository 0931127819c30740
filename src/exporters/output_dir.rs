//! A directory that file-per-interval exporters (pprof, flamegraph) write into:
//! created at start (so a bad path is a start error), files written whole (temp file,
//! then rename), and retention by count or age, oldest first.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::ConfigError;
use crate::otlp::{ProfilesRequest, sample_count};
use crate::pipeline::{Context, Input};
use crate::telemetry::names;

/// How many files, or how old, to keep (the exporters' `max_files` and `max_age`).
#[derive(Debug, Clone, Copy)]
pub struct RetentionConfig {
    /// Files of each kind kept; the oldest are deleted first. 0 = no limit.
    pub max_files: usize,
    /// Files older than this are deleted.
    pub max_age: Option<Duration>,
}

impl RetentionConfig {
    pub fn validate(&self, errs: &mut Vec<ConfigError>) {
        if self.max_age.is_some_and(|a| a.is_zero()) {
            errs.push(ConfigError::new("max_age", "must be greater than 0"));
        }
    }
}

pub struct OutputDir {
    dir: PathBuf,
    retention: RetentionConfig,
}

impl OutputDir {
    /// Creates the directory if needed and checks it is writable.
    pub fn open(dir: &Path, retention: RetentionConfig) -> io::Result<OutputDir> {
        fs::create_dir_all(dir)?;
        let probe = dir.join(".stackline-write-probe");
        fs::write(&probe, b"")?;
        fs::remove_file(&probe)?;
        Ok(OutputDir {
            dir: dir.to_path_buf(),
            retention,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes `name` whole, then applies retention to files ending like it (`suffix`).
    /// An existing file is never overwritten: `-1`, `-2`… go before the suffix.
    pub fn write(&self, name: &str, suffix: &str, bytes: &[u8]) -> io::Result<PathBuf> {
        // Re-created if someone removed it meanwhile.
        fs::create_dir_all(&self.dir)?;
        let stem = name.strip_suffix(suffix).unwrap_or(name);
        let mut path = self.dir.join(name);
        let mut n = 0;
        while path.exists() {
            n += 1;
            path = self.dir.join(format!("{stem}-{n}{suffix}"));
        }
        let name = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self.dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, bytes)?;
        fs::rename(&tmp, &path)?;
        self.retain(suffix)?;
        Ok(path)
    }

    fn retain(&self, suffix: &str) -> io::Result<()> {
        let mut files: Vec<(SystemTime, PathBuf)> = fs::read_dir(&self.dir)?
            .flatten()
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.ends_with(suffix) && !n.starts_with('.')
            })
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        files.sort();
        let now = SystemTime::now();
        let mut keep = files.len();
        for (i, (mtime, path)) in files.iter().enumerate() {
            let too_many = self.retention.max_files > 0 && keep > self.retention.max_files;
            let too_old = self
                .retention
                .max_age
                .is_some_and(|age| now.duration_since(*mtime).unwrap_or_default() > age);
            // Never delete the file just written (the newest).
            if (too_many || too_old) && i + 1 < files.len() {
                fs::remove_file(path)?;
                keep -= 1;
            }
        }
        Ok(())
    }
}

/// `20261126T032200.123Z` for a Unix time in nanoseconds: sortable and safe in file names.
pub fn timestamp(unix_nanos: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(unix_nanos);
    let s = humantime::format_rfc3339_millis(t).to_string();
    s.replace(['-', ':'], "")
}

/// A file-name-safe form of a process or executable name.
pub fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// The loop of an exporter that writes files: each request is shown to `observe` (on
/// the async side, cheap), then written by `write` on a blocking thread. Samples are
/// counted as sent or failed, and the exporter is unhealthy while writes fail.
/// `what` names the output in messages, e.g. "the flamegraph".
pub async fn run_writer<W>(
    ctx: &Context,
    input: &mut Input,
    what: &str,
    mut observe: impl FnMut(&ProfilesRequest),
    write: W,
) where
    W: Fn(&ProfilesRequest) -> io::Result<()> + Clone + Send + 'static,
{
    let id = ctx.id.to_string();
    let sent = metrics::counter!(names::EXPORTER_SENT, "exporter" => id.clone());
    let failed = metrics::counter!(names::EXPORTER_SEND_FAILED, "exporter" => id.clone());
    ctx.health.running();
    while let Some(req) = input.recv().await {
        let n = sample_count(&req);
        observe(&req);
        let w = write.clone();
        match tokio::task::spawn_blocking(move || w(&req)).await {
            Ok(Ok(())) => {
                sent.increment(n);
                ctx.health.running();
            }
            Ok(Err(e)) => {
                failed.increment(n);
                ctx.health.unhealthy(format!("writing {what} failed: {e}"));
                tracing::error!(exporter = %id, error = %e, samples = n, "writing {what} failed; the samples are dropped");
            }
            Err(e) => {
                failed.increment(n);
                tracing::error!(exporter = %id, error = %e, "writing {what} panicked; the samples are dropped");
            }
        }
    }
    ctx.health.stopping();
}
