//! Settings of the `file` exporter.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

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
    /// Size-based rotation, on by default so disk use is bounded
    /// (`max_megabytes` × (`max_backups` + 1), 1.1 GiB by default).
    #[serde(default)]
    pub rotation: RotationConfig,
    /// How long after a write the file is synced to disk (fsync), at most. Records reach
    /// the file (and its readers) as they are written; this bounds what a power loss can
    /// take. Default `1s`.
    #[serde(default = "default_flush", with = "crate::config::units::duration")]
    pub flush_interval: Duration,
    /// Permissions of files the exporter creates, in octal. Default `"0640"`.
    #[serde(default)]
    pub file_mode: FileMode,
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
    /// Rotate at all. Default true; false lets the file grow without bound.
    pub enabled: bool,
    /// Size at which the file is rotated, in MiB. Default 100.
    pub max_megabytes: u64,
    /// Rotated files kept; older ones are deleted. Default 10; 0 keeps all (unbounded).
    pub max_backups: usize,
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            enabled: true,
            max_megabytes: 100,
            max_backups: 10,
        }
    }
}

/// File permissions, written in octal as in `chmod` (`"0640"`, `"640"` or `0o640`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl Default for FileMode {
    fn default() -> Self {
        FileMode(0o640)
    }
}

impl FileMode {
    /// The owner must be able to read and write what the exporter writes.
    pub fn validate(&self, errs: &mut Vec<ConfigError>) {
        if self.0 & 0o600 != 0o600 {
            errs.push(ConfigError::new(
                "file_mode",
                format!(
                    "{:04o} does not let the owner read and write the file",
                    self.0
                ),
            ));
        }
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            // YAML reads 0640 as the decimal number 640: take its digits as octal.
            Raw::Num(n) => n.to_string(),
            Raw::Text(t) => t,
        };
        let digits = text.trim().trim_start_matches("0o");
        match u32::from_str_radix(digits, 8) {
            Ok(m) if m <= 0o777 => Ok(FileMode(m)),
            _ => Err(serde::de::Error::custom(format!(
                "invalid file mode `{text}`; write octal permissions such as \"0640\""
            ))),
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
        if self.rotation.enabled && self.rotation.max_megabytes == 0 {
            errs.push(ConfigError::new(
                "rotation.max_megabytes",
                "must be at least 1 (or set rotation.enabled: false)",
            ));
        }
        if self.flush_interval.is_zero() {
            errs.push(ConfigError::new("flush_interval", "must be greater than 0"));
        }
        self.file_mode.validate(&mut errs);
        errs
    }
}
