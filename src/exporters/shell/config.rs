//! Settings shared by exporters that send over the network (the collector's `exporterhelper`).

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// `retry_on_failure`: exponential backoff for retryable errors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Retry retryable failures. Default true; when false a failed request is dropped and counted.
    pub enabled: bool,
    /// Wait before the first retry. Default `5s`.
    #[serde(with = "crate::config::units::duration")]
    pub initial_interval: Duration,
    /// Upper bound of the wait between retries. Default `30s`.
    #[serde(with = "crate::config::units::duration")]
    pub max_interval: Duration,
    /// Give up on a request this long after its first failure. Default `300s`; `0s` = never give up.
    #[serde(with = "crate::config::units::duration")]
    pub max_elapsed_time: Duration,
    /// Factor applied to the wait after each retry. Default 1.5.
    pub multiplier: f64,
    /// Each wait is drawn at random within ± this fraction, so many agents do not retry in step. Default 0.5.
    pub randomization_factor: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            enabled: true,
            initial_interval: Duration::from_secs(5),
            max_interval: Duration::from_secs(30),
            max_elapsed_time: Duration::from_secs(300),
            multiplier: 1.5,
            randomization_factor: 0.5,
        }
    }
}

/// `sending_queue`: a bounded buffer of requests in front of the sender.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Buffer requests and send them from `num_consumers` workers. Default true; when
    /// false the pipeline waits for each send (back-pressure up to the receiver).
    pub enabled: bool,
    /// Workers sending concurrently. Default 10.
    pub num_consumers: usize,
    /// Requests the queue holds. Default 1000.
    pub queue_size: usize,
    /// When the queue is full: wait for room (true) or drop the request and count it in
    /// `otelcol_exporter_enqueue_failed_profile_samples_total` (false, default, as the collector does).
    pub block_on_overflow: bool,
    /// Keep the queue on disk, so requests survive a crash, SIGKILL or the OOM killer
    /// and are sent after the next start. Default: in memory only.
    pub storage: Option<StorageConfig>,
}

/// `sending_queue.storage`: a write-ahead queue on disk (an embedded redb database,
/// one file per exporter). A request is on disk before the pipeline counts it as
/// queued; it is removed once delivered or given up on. What was not acknowledged is
/// sent again after a restart, so a request can arrive twice, never zero times.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Directory for the queue files (`<exporter>.redb`, with `<exporter>.journal` and
    /// `<exporter>.floor` beside it), created if missing. Required.
    pub directory: std::path::PathBuf,
    /// Most bytes of requests held on disk; past it the queue is full. Default `1GiB`.
    #[serde(
        default = "default_max_size",
        deserialize_with = "crate::config::units::byte_size"
    )]
    pub max_size: crate::config::units::ByteSize,
    /// `0s` (default): every request is fsync'd before it counts as queued, so it
    /// survives power loss too. Larger: requests are written to the OS at once (they
    /// survive a crash or SIGKILL of the process) and fsync'd at most this often
    /// (a power loss may lose that window), for much less disk I/O.
    #[serde(default, with = "crate::config::units::duration")]
    pub sync_interval: Duration,
}

fn default_max_size() -> crate::config::units::ByteSize {
    crate::config::units::ByteSize::gib(1)
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            enabled: true,
            num_consumers: 10,
            queue_size: 1000,
            block_on_overflow: false,
            storage: None,
        }
    }
}

impl RetryConfig {
    pub fn validate(&self, errs: &mut Vec<ConfigError>) {
        let p = "retry_on_failure";
        if self.enabled && self.initial_interval.is_zero() {
            errs.push(ConfigError::new(
                format!("{p}.initial_interval"),
                "must be greater than 0",
            ));
        }
        if self.max_interval < self.initial_interval {
            errs.push(ConfigError::new(
                format!("{p}.max_interval"),
                format!(
                    "{:?} is less than initial_interval ({:?})",
                    self.max_interval, self.initial_interval
                ),
            ));
        }
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            errs.push(ConfigError::new(
                format!("{p}.multiplier"),
                format!("{} must be a finite number >= 1", self.multiplier),
            ));
        }
        if !(0.0..1.0).contains(&self.randomization_factor) {
            errs.push(ConfigError::new(
                format!("{p}.randomization_factor"),
                format!("{} must be in [0, 1)", self.randomization_factor),
            ));
        }
    }
}

impl QueueConfig {
    pub fn validate(&self, errs: &mut Vec<ConfigError>) {
        if !self.enabled {
            return;
        }
        if self.queue_size == 0 {
            errs.push(ConfigError::new(
                "sending_queue.queue_size",
                "must be at least 1 (or set sending_queue.enabled: false)",
            ));
        }
        if self.num_consumers == 0 {
            errs.push(ConfigError::new(
                "sending_queue.num_consumers",
                "must be at least 1",
            ));
        }
        if let Some(s) = &self.storage {
            if s.directory.as_os_str().is_empty() {
                errs.push(ConfigError::new(
                    "sending_queue.storage.directory",
                    "must name a directory",
                ));
            }
            if s.max_size.as_u64() < 1 << 20 {
                errs.push(ConfigError::new(
                    "sending_queue.storage.max_size",
                    format!("{} is too small; use at least 1MiB", s.max_size),
                ));
            }
        }
    }
}
