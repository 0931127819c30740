//! Exponential backoff as a tower retry policy.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tower::BoxError;
use tower::retry::Policy;

use super::{Delivered, Encoded, RetryConfig, SendError};
use crate::telemetry::HealthReporter;

/// Retries retryable failures (and per-attempt timeouts) with exponential backoff,
/// until `max_elapsed_time` or the pipeline's drain deadline.
#[derive(Clone)]
pub struct BackoffPolicy {
    cfg: RetryConfig,
    next: Duration,
    first_failure: Option<Instant>,
    deadline: CancellationToken,
    exporter: String,
    health: HealthReporter,
}

impl BackoffPolicy {
    pub fn new(
        cfg: RetryConfig,
        deadline: CancellationToken,
        exporter: String,
        health: HealthReporter,
    ) -> Self {
        BackoffPolicy {
            next: cfg.initial_interval,
            cfg,
            first_failure: None,
            deadline,
            exporter,
            health,
        }
    }

    fn jittered(&self, d: Duration) -> Duration {
        let f = self.cfg.randomization_factor;
        if f == 0.0 {
            return d;
        }
        d.mul_f64(1.0 - f + 2.0 * f * fastrand::f64())
    }
}

/// Whether an error from the timeout-wrapped sender is worth retrying, and the wait
/// the server asked for (`Retry-After`), if any.
fn retryable(e: &BoxError) -> (bool, Option<Duration>) {
    if e.is::<tower::timeout::error::Elapsed>() {
        return (true, None);
    }
    match e.downcast_ref::<SendError>() {
        Some(SendError::Retryable { retry_after, .. }) => (true, *retry_after),
        _ => (false, None),
    }
}

impl Policy<Encoded, Delivered, BoxError> for BackoffPolicy {
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        _req: &mut Encoded,
        result: &mut Result<Delivered, BoxError>,
    ) -> Option<Self::Future> {
        let Err(e) = result else { return None };
        self.health.unhealthy(format!("export failing: {e}"));
        let (retry, asked) = retryable(e);
        if !self.cfg.enabled || !retry || self.deadline.is_cancelled() {
            return None;
        }
        let first = *self.first_failure.get_or_insert_with(Instant::now);
        // A server that says when to come back (429/503 with Retry-After) is obeyed.
        let wait = asked.unwrap_or_else(|| self.jittered(self.next));
        let max = self.cfg.max_elapsed_time;
        if !max.is_zero() && first.elapsed() + wait > max {
            tracing::warn!(exporter = %self.exporter, error = %e, "giving up after retrying for {:?} (retry_on_failure.max_elapsed_time)", first.elapsed());
            return None;
        }
        tracing::warn!(exporter = %self.exporter, error = %e, "export failed; retrying in {wait:?}");
        let health = self.health.clone();
        self.next = self
            .next
            .mul_f64(self.cfg.multiplier)
            .min(self.cfg.max_interval);
        let deadline = self.deadline.clone();
        Some(Box::pin(async move {
            // Waiting in a backoff is waiting, not being stuck.
            health
                .waiting(async {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = deadline.cancelled() => {}
                    }
                })
                .await
        }))
    }

    fn clone_request(&mut self, req: &Encoded) -> Option<Encoded> {
        Some(req.clone())
    }
}
