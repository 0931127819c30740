//! `flamegraph` exporter: an interactive SVG flamegraph (inferno) per batch (a report
//! interval on the agent), and optionally the folded stacks other tools read.

mod folded;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::task::JoinHandle;

pub use folded::{FoldedStacks, fold};

use crate::config::{ConfigError, Validate, display_path, parse_component};
use crate::exporters::file::FileMode;
use crate::exporters::output_dir::{OutputDir, RetentionConfig, timestamp};
use crate::exporters::shell::{self, Outcome, Writer, WriterSettings};
use crate::otlp::{Checked, ProfilesRequest, sample_count};
use crate::pipeline::{Context, Exporter, ExporterFactory, Input, StartError};

/// `exporters.flamegraph[/name]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlamegraphExporterConfig {
    /// Directory for the `.svg` (and `.folded`) files, created if missing. Default `./stackline-out/flamegraph`.
    pub directory: PathBuf,
    /// Also write the folded stacks (`frame;frame;frame count` lines). Default false.
    pub folded: bool,
    /// One tower per process, under a root frame named after it. Default false.
    pub per_process: bool,
    /// Files of each kind kept, oldest deleted first. Default 100; 0 = no limit.
    pub max_files: usize,
    /// Files older than this are deleted. Default: no age limit.
    #[serde(with = "crate::config::units::duration::option")]
    pub max_age: Option<Duration>,
    /// Permissions of the files written, in octal. Default `"0640"`.
    pub file_mode: FileMode,
}

impl Default for FlamegraphExporterConfig {
    fn default() -> Self {
        FlamegraphExporterConfig {
            directory: PathBuf::from("./stackline-out/flamegraph"),
            folded: false,
            per_process: false,
            max_files: 100,
            max_age: None,
            file_mode: FileMode::default(),
        }
    }
}

impl Validate for FlamegraphExporterConfig {
    fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        self.retention().validate(&mut errs);
        self.file_mode.validate(&mut errs);
        if self.directory.as_os_str().is_empty() {
            errs.push(ConfigError::new("directory", "must name a directory"));
        }
        errs
    }
}

impl FlamegraphExporterConfig {
    fn retention(&self) -> RetentionConfig {
        RetentionConfig {
            max_files: self.max_files,
            max_age: self.max_age,
            prefix: "flamegraph-",
            mode: self.file_mode.0,
        }
    }
}

pub fn factory() -> ExporterFactory {
    ExporterFactory {
        type_name: "flamegraph",
        description: "writes an interactive SVG flamegraph (and optionally folded stacks) per interval",
        create: |_, v| {
            Ok(Box::new(FlamegraphExporter {
                cfg: parse_component(v)?,
            }))
        },
    }
}

pub struct FlamegraphExporter {
    cfg: FlamegraphExporterConfig,
}

#[async_trait]
impl Exporter for FlamegraphExporter {
    async fn start(
        self: Box<Self>,
        ctx: Context,
        input: Input,
    ) -> Result<JoinHandle<()>, StartError> {
        let dir = OutputDir::open(&self.cfg.directory, self.cfg.retention()).map_err(|e| {
            format!(
                "cannot write flamegraphs to {} (exporters.{}.directory): {e}; choose a writable directory",
                display_path(&self.cfg.directory),
                ctx.id
            )
        })?;
        tracing::info!(exporter = %ctx.id, directory = %display_path(dir.path()), "flamegraph exporter writing");
        let w = FlameWriter {
            dir: Arc::new(dir),
            cfg: self.cfg,
        };
        let again = w.clone();
        Ok(shell::start_writer(
            ctx,
            input,
            w,
            move || Ok(again.clone()),
            WriterSettings {
                flush_every: None,
                what: "the flamegraph",
            },
        ))
    }
}

#[derive(Clone)]
struct FlameWriter {
    dir: Arc<OutputDir>,
    cfg: FlamegraphExporterConfig,
}

impl Writer for FlameWriter {
    fn write(&mut self, req: Checked) -> Outcome {
        let n = sample_count(&req);
        match write(&self.dir, &req, &self.cfg) {
            Ok(()) => Outcome::sent(n),
            Err(e) => Outcome::failed(n, e),
        }
    }
}

fn write(
    dir: &OutputDir,
    req: &ProfilesRequest,
    cfg: &FlamegraphExporterConfig,
) -> std::io::Result<()> {
    let stacks = fold(req, cfg.per_process);
    if stacks.lines.is_empty() {
        return Ok(());
    }
    let name = format!("flamegraph-{}", timestamp(stacks.start_unix_nano));
    let lines = stacks.lines();
    if cfg.folded {
        let mut text = lines.join("\n");
        text.push('\n');
        dir.write(&format!("{name}.folded"), ".folded", text.as_bytes())?;
    }
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = stacks.title();
    opts.count_name = "samples".into();
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut svg)
        .map_err(std::io::Error::other)?;
    dir.write(&format!("{name}.svg"), ".svg", &svg)?;
    Ok(())
}

#[cfg(test)]
mod tests;
