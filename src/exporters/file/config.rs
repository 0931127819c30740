//! Settings of the `file` exporter.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, Validate};

/// `exporters.file[/name]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileExporterConfig {
    /// File to append to. Its directory is created if missing. Required.
    pub path: PathBuf,
    /// `json` (default): one ExportProfilesServiceRequest per line in the OTLP/JSON encoding.
    /// `proto`: records of a 4-byte big-endian length followed by the protobuf bytes.
    #[serde(default)]
    pub format: FileFormat,
    /// Size-based rotation; absent = the file grows without bound.
    #[serde(default)]
    pub rotation: Option<RotationConfig>,
    /// How often buffered data is flushed to the file (it is also flushed on shutdown). Default `1s`.
    #[serde(default = "default_flush", with = "crate::config::units::duration")]
    pub flush_interval: Duration,
}

fn default_flush() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    #[default]
    Json,
    Proto,
}

/// `rotation`: when the file would pass `max_megabytes`, it is renamed to
/// `<stem>-<unix millis>.<ext>` and a new one started.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RotationConfig {
    /// Size at which the file is rotated, in MiB. Default 100.
    pub max_megabytes: u64,
    /// Rotated files kept; older ones are deleted. Default 10; 0 keeps all.
    pub max_backups: usize,
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            max_megabytes: 100,
            max_backups: 10,
        }
    }
}

impl Validate for FileExporterConfig {
    fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        if self.path.as_os_str().is_empty() || self.path.file_name().is_none() {
            errs.push(ConfigError::new(
                "path",
                format!("`{}` does not name a file", self.path.display()),
            ));
        }
        if let Some(r) = &self.rotation
            && r.max_megabytes == 0
        {
            errs.push(ConfigError::new(
                "rotation.max_megabytes",
                "must be at least 1",
            ));
        }
        if self.flush_interval.is_zero() {
            errs.push(ConfigError::new("flush_interval", "must be greater than 0"));
        }
        errs
    }
}
