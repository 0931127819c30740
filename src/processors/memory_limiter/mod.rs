//! `memory_limiter` processor: the collector's, with its settings and semantics.
//!
//! Every `check_interval` it reads the process's resident memory. Above the soft limit
//! (`limit - spike_limit`) it refuses new data: the request's acks fail, so the OTLP
//! receiver answers UNAVAILABLE / 503 with `Retry-After` and clients back off and
//! retry, and what an unacknowledged producer (the eBPF receiver) sent is dropped and
//! counted. It accepts again once memory is back under the soft limit. Put it first in
//! a pipeline, as in the collector.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::task::JoinHandle;

use crate::config::{ConfigError, Validate, parse_component};
use crate::otlp::sample_count;
use crate::pipeline::{Context, Envelope, Fanout, Input, Processor, ProcessorFactory};
use crate::telemetry::names;

/// `processors.memory_limiter`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryLimiterConfig {
    /// How often memory is measured. Required by the collector; default `1s`.
    #[serde(with = "crate::config::units::duration")]
    pub check_interval: Duration,
    /// Hard limit on resident memory, in MiB. Set this or `limit_percentage`.
    pub limit_mib: u64,
    /// Headroom below the hard limit: data is refused above `limit - spike`. Default
    /// 20% of the limit.
    pub spike_limit_mib: u64,
    /// Hard limit as a percentage of the machine's (or cgroup's) memory.
    pub limit_percentage: u64,
    /// Headroom as a percentage of the machine's (or cgroup's) memory.
    pub spike_limit_percentage: u64,
}

impl Default for MemoryLimiterConfig {
    fn default() -> Self {
        MemoryLimiterConfig {
            check_interval: Duration::from_secs(1),
            limit_mib: 0,
            spike_limit_mib: 0,
            limit_percentage: 0,
            spike_limit_percentage: 0,
        }
    }
}

impl Validate for MemoryLimiterConfig {
    fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        if self.check_interval.is_zero() {
            errs.push(ConfigError::new("check_interval", "must be greater than 0"));
        }
        match (self.limit_mib, self.limit_percentage) {
            (0, 0) => errs.push(ConfigError::new(
                "limit_mib",
                "set limit_mib or limit_percentage (the memory the process may use)",
            )),
            (m, 0) if self.spike_limit_mib >= m => errs.push(ConfigError::new(
                "spike_limit_mib",
                format!("{} must be below limit_mib ({m})", self.spike_limit_mib),
            )),
            (0, p) if p > 100 || self.spike_limit_percentage >= p => errs.push(ConfigError::new(
                "limit_percentage",
                format!(
                    "{p}% with spike_limit_percentage {}%: use 1-100 with the spike below it",
                    self.spike_limit_percentage
                ),
            )),
            (_, 0) | (0, _) => {}
            _ => errs.push(ConfigError::new(
                "limit_percentage",
                "set either limit_mib or limit_percentage, not both",
            )),
        }
        errs
    }
}

/// The soft and hard limits in bytes, for a machine (or cgroup) of `total` bytes.
pub fn limits(cfg: &MemoryLimiterConfig, total: u64) -> (u64, u64) {
    const MIB: u64 = 1 << 20;
    let (hard, spike) = if cfg.limit_mib > 0 {
        let spike = if cfg.spike_limit_mib > 0 {
            cfg.spike_limit_mib
        } else {
            cfg.limit_mib / 5
        };
        (cfg.limit_mib * MIB, spike * MIB)
    } else {
        let hard = total / 100 * cfg.limit_percentage;
        let spike = if cfg.spike_limit_percentage > 0 {
            total / 100 * cfg.spike_limit_percentage
        } else {
            hard / 5
        };
        (hard, spike)
    };
    (hard.saturating_sub(spike), hard)
}

/// Memory available to this process: the cgroup v2 limit when set, else physical memory.
fn total_memory() -> u64 {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let phys = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kb| kb * 1024);
    cgroup.map_or(phys, |c| c.min(phys))
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let page = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

pub fn factory() -> ProcessorFactory {
    ProcessorFactory {
        type_name: "memory_limiter",
        description: "refuses data (clients retry) while the process's memory is above a soft limit",
        create: |_, v| {
            Ok(Box::new(MemoryLimiter {
                cfg: parse_component(v)?,
            }))
        },
    }
}

pub struct MemoryLimiter {
    cfg: MemoryLimiterConfig,
}

impl Processor for MemoryLimiter {
    fn start(self: Box<Self>, ctx: Context, input: Input, out: Fanout) -> JoinHandle<()> {
        tokio::spawn(run(self.cfg, ctx, input, out))
    }
}

async fn run(cfg: MemoryLimiterConfig, ctx: Context, mut input: Input, out: Fanout) {
    let (soft, hard) = limits(&cfg, total_memory());
    tracing::info!(processor = %ctx.id, soft_limit_mib = soft >> 20, hard_limit_mib = hard >> 20, "memory limiter on");
    let refusing = Arc::new(AtomicBool::new(false));
    let component = ctx.component.to_string();
    let dropped = metrics::counter!(names::PIPELINE_DROPPED, "component" => component.clone(), "reason" => "memory_limit");
    let gauge = metrics::gauge!(names::MEMORY_LIMITER_REFUSING, "component" => component.clone());
    let rss_gauge = metrics::gauge!(names::MEMORY_LIMITER_RSS, "component" => component);
    gauge.set(0.0);
    // The check runs on its own timer, so a quiet pipeline still notices memory falling.
    let checker = {
        let refusing = refusing.clone();
        let id = ctx.id.to_string();
        let stop = ctx.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(cfg.check_interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => break,
                }
                let used = rss();
                rss_gauge.set(used as f64);
                let over = used > soft;
                if over != refusing.swap(over, Ordering::Relaxed) {
                    gauge.set(over as u8 as f64);
                    if over {
                        tracing::warn!(processor = %id, rss_mib = used >> 20, soft_limit_mib = soft >> 20, "memory above the soft limit: refusing data until it falls (clients are told to retry)");
                    } else {
                        tracing::info!(processor = %id, rss_mib = used >> 20, "memory below the soft limit again: accepting data");
                    }
                }
            }
        })
    };
    ctx.health.running();
    while let Some(Envelope { req, acks }) = input.recv().await {
        if refusing.load(Ordering::Relaxed) {
            dropped.increment(sample_count(&req));
            acks.reject("the memory limiter is refusing data; retry later");
            continue;
        }
        let _ = out.send(Envelope::new(req, acks)).await;
    }
    checker.abort();
    ctx.health.stopping();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_collector() {
        let mib = |n: u64| n << 20;
        let c = MemoryLimiterConfig {
            limit_mib: 1000,
            ..Default::default()
        };
        assert_eq!(limits(&c, 0), (mib(800), mib(1000)));
        let c = MemoryLimiterConfig {
            limit_mib: 1000,
            spike_limit_mib: 100,
            ..Default::default()
        };
        assert_eq!(limits(&c, 0), (mib(900), mib(1000)));
        let c = MemoryLimiterConfig {
            limit_percentage: 50,
            spike_limit_percentage: 10,
            ..Default::default()
        };
        assert_eq!(limits(&c, mib(2000)), (mib(800), mib(1000)));
    }

    #[test]
    fn settings_are_validated() {
        let bad = [
            MemoryLimiterConfig::default(),
            MemoryLimiterConfig {
                limit_mib: 100,
                spike_limit_mib: 100,
                ..Default::default()
            },
            MemoryLimiterConfig {
                limit_mib: 100,
                limit_percentage: 50,
                ..Default::default()
            },
            MemoryLimiterConfig {
                limit_percentage: 120,
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(!c.validate().is_empty(), "{c:?}");
        }
    }
}
