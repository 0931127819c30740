//! Taking requests from the input and counting every sample's fate: accepted, sent, failed, dropped (a full queue, a panic, the deadline) and kept, each a metric, logged as one line when the exporter ends.

use super::*;
use crate::pipeline::DropReason;

/// A counter that also keeps its total, for the shutdown summary.
pub(super) struct Tally {
    pub(super) metric: Counter,
    pub(super) total: AtomicU64,
}

impl Tally {
    pub(super) fn new(metric: Counter) -> Self {
        Tally {
            metric,
            total: AtomicU64::new(0),
        }
    }
    pub(super) fn add(&self, n: u64) {
        if n > 0 {
            self.metric.increment(n);
            self.total.fetch_add(n, Ordering::Relaxed);
        }
    }
    pub(super) fn get(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// Where every sample an exporter took went.
pub(super) struct Accounting {
    pub(super) component: String,
    pub(super) accepted: Tally,
    pub(super) sent: Tally,
    pub(super) failed: Tally,
    pub(super) enqueue_failed: Tally,
    pub(super) deadline: Tally,
    pub(super) panic: Tally,
    pub(super) queue_write: Tally,
    pub(super) rejected_profiles: Counter,
    pub(super) replayed: AtomicU64,
}

impl Accounting {
    pub(super) fn new(ctx: &Context) -> Self {
        let e = [("exporter", ctx.id.to_string())];
        let dropped = |reason: DropReason| Tally::new(ctx.drops.counter(reason).clone());
        Accounting {
            component: ctx.component.clone(),
            accepted: Tally::new(metrics::counter!(names::EXPORTER_ACCEPTED, &e)),
            sent: Tally::new(metrics::counter!(names::EXPORTER_SENT, &e)),
            failed: Tally::new(metrics::counter!(names::EXPORTER_SEND_FAILED, &e)),
            enqueue_failed: Tally::new(metrics::counter!(names::EXPORTER_ENQUEUE_FAILED, &e)),
            deadline: dropped(DropReason::ShutdownDeadline),
            panic: dropped(DropReason::Panic),
            queue_write: dropped(DropReason::QueueWriteFailed),
            rejected_profiles: metrics::counter!(names::EXPORTER_REJECTED_PROFILES, &e),
            replayed: AtomicU64::new(0),
        }
    }

    pub(super) fn dropped(&self) -> u64 {
        self.enqueue_failed.get() + self.deadline.get() + self.panic.get() + self.queue_write.get()
    }

    /// The shutdown line: every sample the exporter took, and where it went.
    pub(super) fn summary(&self, kept: u64) {
        let (accepted, replayed) = (self.accepted.get(), self.replayed.load(Ordering::Relaxed));
        let (sent, failed, dropped) = (self.sent.get(), self.failed.get(), self.dropped());
        let unaccounted = (accepted + replayed) as i128 - (sent + failed + dropped + kept) as i128;
        tracing::info!(
            exporter = %self.component,
            accepted,
            replayed,
            sent,
            failed,
            dropped,
            kept,
            unaccounted,
            "exporter finished"
        );
    }
}

/// The next request from the pipeline, or `None` when the input has ended. At the
/// deadline, what is still in the input is counted as dropped and input is refused.
pub(super) async fn next(ctx: &Context, input: &mut Input, acct: &Accounting) -> Option<Envelope> {
    let r = tokio::select! {
        biased;
        r = input.recv() => r,
        _ = ctx.deadline.cancelled() => {
            acct.deadline.add(input.close());
            None
        }
    };
    if let Some(env) = &r {
        acct.accepted.add(sample_count(&env.req));
    }
    r
}
