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
use crate::pipeline::{
    Context, DropReason, Fanout, Input, Processor, ProcessorFactory, Verdict, run_per_request,
};
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
        (cfg.limit_mib.saturating_mul(MIB), spike.saturating_mul(MIB))
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

/// Memory available to this process: the tightest memory limit of its cgroup and every
/// cgroup above it (v2 `memory.max`, v1 `memory.limit_in_bytes`), else physical memory.
fn total_memory() -> u64 {
    let phys = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kb| kb.saturating_mul(1024));
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    cgroup_limit(&own, |p| std::fs::read_to_string(p).ok()).map_or(phys, |c| c.min(phys))
}

/// The tightest limit along this process's cgroup path, from `/proc/self/cgroup` text;
/// `read` reads a control file. "max" (v2) and the huge v1 "unlimited" value are no limit.
fn cgroup_limit(own: &str, read: impl Fn(&str) -> Option<String>) -> Option<u64> {
    let mut best: Option<u64> = None;
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (base, file) = if controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
        } else {
            continue;
        };
        // Walk from the process's own cgroup up to the root of the mount (in a cgroup
        // namespace the path is relative to it).
        let mut dir = path.trim_end_matches('/').to_owned();
        loop {
            // A `..` in a cgroup path is not followed.
            if !dir.split('/').any(|c| c == "..")
                && let Some(v) =
                    read(&format!("{base}{dir}/{file}")).and_then(|t| t.trim().parse::<u64>().ok())
            {
                best = Some(best.map_or(v, |b| b.min(v)));
            }
            match dir.rfind('/') {
                Some(i) => dir.truncate(i),
                None => break,
            }
        }
    }
    best
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let page = crate::host::page_size();
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages.saturating_mul(page))
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
        check_feeders: None,
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

async fn run(cfg: MemoryLimiterConfig, ctx: Context, input: Input, out: Fanout) {
    let (soft, hard) = limits(&cfg, total_memory());
    tracing::info!(processor = %ctx.id, soft_limit_mib = soft >> 20, hard_limit_mib = hard >> 20, "memory limiter on");
    let refusing = Arc::new(AtomicBool::new(false));
    let component = ctx.component.to_string();
    // Data from a client that was told to retry is refused, not lost; data nobody waits
    // on (the eBPF receiver's) is dropped.
    let refused = metrics::counter!(names::PROCESSOR_REFUSED, "processor" => ctx.id.to_string());
    let gauge = metrics::gauge!(names::MEMORY_LIMITER_REFUSING, "component" => component.clone());
    let rss_gauge = metrics::gauge!(names::MEMORY_LIMITER_RSS, "component" => component);
    gauge.set(0.0);
    // The check runs on its own timer, so a quiet pipeline still notices memory falling.
    // It runs until the input is drained (through shutdown too), not just until shutdown
    // starts, so the drain is judged by current memory.
    let checker = {
        let refusing = refusing.clone();
        let id = ctx.id.to_string();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(cfg.check_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let mut used = rss();
                if used > soft {
                    // Where the collector's limiter forces a garbage collection, freed heap
                    // goes back to the kernel, so the resident size follows the data.
                    let _ = tokio::task::spawn_blocking(crate::host::release_free_memory).await;
                    used = rss();
                }
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
    run_per_request(ctx, input, out, |env| {
        if !refusing.load(Ordering::Relaxed) {
            Verdict::Pass
        } else if env.acks.is_empty() {
            Verdict::Drop(DropReason::MemoryLimit)
        } else {
            refused.increment(sample_count(&env.req));
            Verdict::Refuse(DropReason::MemoryLimit.message())
        }
    })
    .await;
    checker.abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_tightest_limit_along_the_cgroup_path_wins() {
        let files: HashMap<&str, &str> = [
            ("/sys/fs/cgroup/kubepods/memory.max", "1073741824\n"),
            ("/sys/fs/cgroup/kubepods/pod1/memory.max", "max\n"),
            (
                "/sys/fs/cgroup/kubepods/pod1/ctr/memory.max",
                "2147483648\n",
            ),
            (
                "/sys/fs/cgroup/memory/a/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
            (
                "/sys/fs/cgroup/memory/a/b/memory.limit_in_bytes",
                "536870912\n",
            ),
        ]
        .into();
        let read = |p: &str| files.get(p).map(|s| s.to_string());
        // v2, nested: the parent's 1 GiB bounds the container's 2 GiB.
        assert_eq!(cgroup_limit("0::/kubepods/pod1/ctr\n", read), Some(1 << 30));
        // v1, memory among other controllers.
        assert_eq!(
            cgroup_limit("5:cpu,cpuacct:/x\n4:memory:/a/b\n", read),
            Some(512 << 20)
        );
        // No limit anywhere, no memory controller, or a path with `..`.
        assert_eq!(cgroup_limit("0::/other\n", read), None);
        assert_eq!(cgroup_limit("3:cpu:/a/b\n", read), None);
        assert_eq!(cgroup_limit("0::/../kubepods\n", read), None);
        assert_eq!(cgroup_limit("garbage", read), None);
    }

    #[test]
    fn limits_do_not_overflow() {
        let cfg = MemoryLimiterConfig {
            limit_mib: u64::MAX,
            spike_limit_mib: 1,
            ..Default::default()
        };
        assert_eq!(limits(&cfg, 0).1, u64::MAX);
        assert!(rss() > 0);
    }
}
