//! Component health, as served on `/health`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    Starting,
    Running,
    Unhealthy { reason: String },
    Stopping,
}

/// Shared table of every component's status, keyed `kind/id` (e.g. `exporter/otlp/backend`).
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<BTreeMap<String, Status>>>,
}

impl Health {
    /// A handle one component uses to report its own status.
    pub fn reporter(&self, key: String) -> HealthReporter {
        self.set(&key, Status::Starting);
        HealthReporter {
            health: self.clone(),
            key,
        }
    }

    fn set(&self, key: &str, status: Status) {
        // A poisoned lock only means a reporter panicked mid-update; the map is still usable.
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(key.to_owned(), status);
    }

    /// Every component's status, and whether all are running.
    pub fn snapshot(&self) -> (bool, BTreeMap<String, Status>) {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let ok = !m.is_empty() && m.values().all(|s| *s == Status::Running);
        (ok, m)
    }
}

#[derive(Debug, Clone)]
pub struct HealthReporter {
    health: Health,
    key: String,
}

impl HealthReporter {
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
}
