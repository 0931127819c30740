//! Rate bookkeeping shared by the benchmarks: each measured routine adds its time and
//! item count, and the bench prints rates and ratios after criterion's own output.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default)]
pub struct Tally {
    nanos: AtomicU64,
    items: AtomicU64,
}

impl Tally {
    pub const fn new() -> Self {
        Tally {
            nanos: AtomicU64::new(0),
            items: AtomicU64::new(0),
        }
    }
    pub fn add(&self, d: Duration, items: u64) {
        self.nanos.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        self.items.fetch_add(items, Ordering::Relaxed);
    }
    /// Items per second over everything added.
    pub fn rate(&self) -> f64 {
        self.items.load(Ordering::Relaxed) as f64
            / (self.nanos.load(Ordering::Relaxed) as f64 / 1e9)
    }
}
