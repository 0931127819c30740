//! Component health, as served on `/health`, `/health/live` and `/health/ready`.
//!
//! Three questions, three answers:
//! - **ready**: is every component running? (`/health/ready`, and `/health` as before).
//!   An exporter retrying against a backend that is down is *not* ready: a load
//!   balancer should prefer another replica.
//! - **live**: is the process able to make progress? (`/health/live`). Only a stage
//!   that is dead (its task ended or panicked outside a shutdown) or stuck (a blocking
//!   call or loop that has not come back for `stuck_after`) fails it. A backend outage
//!   does not: restarting the process would only lose its queue.
//!
//! Stuck is detected two ways, both cheap: async stages *beat* whenever they are polled
//! (while waiting for input, for room downstream or in a retry backoff), and blocking
//! work holds a [`BusyGuard`] for its duration. A stage whose last beat, or whose
//! oldest busy guard, is older than `stuck_after` is stuck.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::names;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    Starting,
    Running,
    Unhealthy {
        reason: String,
    },
    Stopping,
    /// The component's task ended, or panicked, while the pipeline was running.
    Dead {
        reason: String,
    },
}

/// How long a stage may go without beating, or hold work, before it counts as stuck.
pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(60);

/// What is known about one component.
#[derive(Debug)]
struct Entry {
    status: Status,
    /// Milliseconds since `Health::epoch` of the last beat; 0 = never beat (not watched).
    last_beat: Arc<AtomicU64>,
    /// Start (ms since epoch) of each piece of blocking work in progress, by guard id.
    busy: Arc<Mutex<BTreeMap<u64, u64>>>,
}

#[derive(Debug)]
struct Inner {
    entries: Mutex<BTreeMap<String, Entry>>,
    epoch: Instant,
    stuck_after: Mutex<Duration>,
    next_guard: AtomicU64,
}

/// Shared table of every component's status, keyed `kind/id` (e.g. `exporter/otlp/backend`).
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            inner: Arc::new(Inner {
                entries: Mutex::new(BTreeMap::new()),
                epoch: Instant::now(),
                stuck_after: Mutex::new(DEFAULT_STUCK_AFTER),
                next_guard: AtomicU64::new(1),
            }),
        }
    }
}

/// A component that fails liveness, and why.
#[derive(Debug, Clone, Serialize)]
pub struct NotLive {
    pub component: String,
    pub reason: String,
}

impl Health {
    /// A handle one component uses to report its own status.
    pub fn reporter(&self, key: String) -> HealthReporter {
        let (last_beat, busy) = {
            let mut m = self.lock();
            let e = m.entry(key.clone()).or_insert_with(|| Entry {
                status: Status::Starting,
                last_beat: Arc::new(AtomicU64::new(0)),
                busy: Arc::new(Mutex::new(BTreeMap::new())),
            });
            e.status = Status::Starting;
            (e.last_beat.clone(), e.busy.clone())
        };
        gauge(&key, &Status::Starting);
        HealthReporter {
            health: self.clone(),
            key: Arc::from(key),
            last_beat,
            busy,
        }
    }

    /// Sets how long a stage may be silent or busy before it is stuck.
    pub fn set_stuck_after(&self, d: Duration) {
        *self
            .inner
            .stuck_after
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = d;
    }

    fn stuck_after(&self) -> Duration {
        *self
            .inner
            .stuck_after
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        // A poisoned lock only means a reporter panicked mid-update; the map is still usable.
        self.inner.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        // Never 0, so 0 can mean "never".
        self.inner.epoch.elapsed().as_millis() as u64 + 1
    }

    fn set(&self, key: &str, status: Status) {
        let mut m = self.lock();
        if let Some(e) = m.get_mut(key) {
            // A dead component stays dead: only a restart (a new reporter) revives it.
            if matches!(e.status, Status::Dead { .. }) && !matches!(status, Status::Dead { .. }) {
                return;
            }
            gauge(key, &status);
            e.status = status;
        }
    }

    /// Every component's status, and whether all are running (readiness).
    pub fn snapshot(&self) -> (bool, BTreeMap<String, Status>) {
        let m: BTreeMap<String, Status> = self
            .lock()
            .iter()
            .map(|(k, e)| (k.clone(), e.status.clone()))
            .collect();
        let ok = !m.is_empty() && m.values().all(|s| *s == Status::Running);
        (ok, m)
    }

    /// Components that are dead or stuck (liveness). Empty = live.
    pub fn not_live(&self) -> Vec<NotLive> {
        let stuck_after = self.stuck_after();
        let limit = stuck_after.as_millis() as u64;
        let now = self.now_ms();
        let mut out = Vec::new();
        for (k, e) in self.lock().iter() {
            if let Status::Dead { reason } = &e.status {
                out.push(NotLive {
                    component: k.clone(),
                    reason: format!("dead: {reason}"),
                });
                continue;
            }
            if matches!(e.status, Status::Stopping) {
                continue;
            }
            let beat = e.last_beat.load(Ordering::Relaxed);
            if beat != 0 && now.saturating_sub(beat) > limit {
                out.push(NotLive {
                    component: k.clone(),
                    reason: format!(
                        "stuck: not polled for {:.1}s (limit {stuck_after:?})",
                        (now - beat) as f64 / 1e3
                    ),
                });
                continue;
            }
            let oldest = e
                .busy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .min()
                .copied();
            if let Some(since) = oldest
                && now.saturating_sub(since) > limit
            {
                out.push(NotLive {
                    component: k.clone(),
                    reason: format!(
                        "stuck: one piece of work has run for {:.1}s (limit {stuck_after:?})",
                        (now - since) as f64 / 1e3
                    ),
                });
            }
        }
        out
    }
}

fn gauge(key: &str, status: &Status) {
    let v = if *status == Status::Running { 1.0 } else { 0.0 };
    metrics::gauge!(names::COMPONENT_HEALTHY, "component" => key.to_owned()).set(v);
}

/// One component's handle on its health.
#[derive(Debug, Clone)]
pub struct HealthReporter {
    health: Health,
    key: Arc<str>,
    last_beat: Arc<AtomicU64>,
    busy: Arc<Mutex<BTreeMap<u64, u64>>>,
}

/// Blocking work in progress; dropping it ends the work. See [`HealthReporter::busy`].
pub struct BusyGuard {
    busy: Arc<Mutex<BTreeMap<u64, u64>>>,
    id: u64,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// The longest gap between a waiting stage's beats. It beats every quarter of
/// `stuck_after` (so a waiting stage is never taken for a stuck one), and at least this
/// often. Each beat is a timer that wakes the runtime: an agent at a low sampling rate
/// spent a sizeable share of its CPU on once-a-second beats of every stage.
pub const BEAT_EVERY: Duration = Duration::from_secs(10);

impl HealthReporter {
    pub fn key(&self) -> &str {
        &self.key
    }
    pub fn running(&self) {
        self.health.set(&self.key, Status::Running);
    }
    pub fn unhealthy(&self, reason: impl Into<String>) {
        self.health.set(
            &self.key,
            Status::Unhealthy {
                reason: reason.into(),
            },
        );
    }
    pub fn stopping(&self) {
        self.health.set(&self.key, Status::Stopping);
    }
    /// The component's task is gone: liveness fails until the process restarts.
    pub fn dead(&self, reason: impl Into<String>) {
        self.health.set(
            &self.key,
            Status::Dead {
                reason: reason.into(),
            },
        );
    }
    /// The stage was polled just now.
    pub fn beat(&self) {
        self.last_beat
            .store(self.health.now_ms(), Ordering::Relaxed);
    }
    /// Marks blocking work as in progress until the guard is dropped.
    pub fn busy(&self) -> BusyGuard {
        let id = self.health.inner.next_guard.fetch_add(1, Ordering::Relaxed);
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, self.health.now_ms());
        BusyGuard {
            busy: self.busy.clone(),
            id,
        }
    }
    /// Awaits `fut`, beating meanwhile (every quarter of `stuck_after`, at most every
    /// [`BEAT_EVERY`]): a stage waiting on something slow (a full channel, a retry
    /// backoff) is waiting, not stuck.
    pub async fn waiting<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.beat();
        let mut fut = std::pin::pin!(fut);
        loop {
            let every = self
                .health
                .stuck_after()
                .div_f64(4.0)
                .clamp(Duration::from_millis(1), BEAT_EVERY);
            tokio::select! {
                r = &mut fut => {
                    self.beat();
                    return r;
                }
                _ = tokio::time::sleep(every) => self.beat(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_all_running_live_only_fails_on_dead_or_stuck() {
        let h = Health::default();
        h.set_stuck_after(Duration::from_millis(50));
        let a = h.reporter("exporter/a".into());
        let b = h.reporter("processor/b".into());
        a.running();
        b.unhealthy("backend down");
        assert!(!h.snapshot().0, "an unhealthy component is not ready");
        assert!(h.not_live().is_empty(), "an unhealthy component is live");
        b.running();
        assert!(h.snapshot().0);

        // A stage that beat once and then went silent is stuck.
        a.beat();
        std::thread::sleep(Duration::from_millis(80));
        let nl = h.not_live();
        assert_eq!(nl.len(), 1, "{nl:?}");
        assert_eq!(nl[0].component, "exporter/a");
        a.beat();
        assert!(h.not_live().is_empty());

        // Blocking work older than the limit is stuck; finished work is not.
        let g = b.busy();
        std::thread::sleep(Duration::from_millis(80));
        a.beat();
        assert_eq!(h.not_live()[0].component, "processor/b");
        drop(g);
        assert!(h.not_live().is_empty());

        // Dead stays dead.
        a.dead("task panicked");
        a.running();
        assert!(h.not_live()[0].reason.contains("task panicked"));
    }

    #[tokio::test]
    async fn a_stage_waiting_longer_than_stuck_after_beats_and_stays_live() {
        let h = Health::default();
        // Beats every 250 ms: a stall of the test's thread up to 750 ms is tolerated.
        h.set_stuck_after(Duration::from_secs(1));
        let a = h.reporter("processor/a".into());
        a.running();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let h2 = h.clone();
        let watcher = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..25 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                seen.extend(h2.not_live());
            }
            let _ = tx.send(());
            seen
        });
        // Waits 2.5 s, two and a half times the limit, for the watcher to finish.
        a.waiting(rx).await.unwrap();
        let seen = watcher.await.unwrap();
        assert!(
            seen.is_empty(),
            "a waiting stage was taken for stuck: {seen:?}"
        );
    }
}
