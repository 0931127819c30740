//! Settings of the `batch` processor.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, Validate};

/// `processors.batch`: the collector's batch processor, counted in samples.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Samples that make a batch: when this many are waiting, a batch is sent at once. Default 8192.
    pub send_batch_size: u64,
    /// Upper bound on a batch's samples; larger batches are split. 0 (default) = no limit.
    /// Must be 0 or at least `send_batch_size`.
    pub send_batch_max_size: u64,
    /// Longest a sample waits before its batch is sent regardless of size. Default `200ms`.
    #[serde(with = "crate::config::units::duration")]
    pub timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            send_batch_size: 8192,
            send_batch_max_size: 0,
            timeout: Duration::from_millis(200),
        }
    }
}

impl Validate for BatchConfig {
    fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        if self.send_batch_size == 0 {
            errs.push(ConfigError::new(
                "send_batch_size",
                "must be at least 1 sample",
            ));
        }
        if self.send_batch_max_size != 0 && self.send_batch_max_size < self.send_batch_size {
            errs.push(ConfigError::new(
                "send_batch_max_size",
                format!(
                    "{} is less than send_batch_size ({}); use 0 for no limit or a value >= send_batch_size",
                    self.send_batch_max_size, self.send_batch_size
                ),
            ));
        }
        if self.timeout.is_zero() {
            errs.push(ConfigError::new(
                "timeout",
                "must be greater than 0, e.g. `200ms`",
            ));
        }
        errs
    }
}
