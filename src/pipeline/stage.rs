//! What every stage needs, written once (the collector's `processorhelper`): drop
//! accounting with typed reasons ([`Drops`], built by the graph into each component's
//! [`Context`]), and, for processors that handle one request at a time, the whole loop
//! ([`run_per_request`]): health, the shutdown drain and panic containment.
//!
//! Processors with state of their own (`batch` holds samples, `symbolizer` hands
//! requests to threads) keep their loop and use [`Drops`] and [`give_up_input`]
//! for what they hold when the deadline passes.

use std::sync::Arc;

use metrics::Counter;

use super::{Context, Envelope, Fanout, Input, catch};
use crate::otlp::sample_count;
use crate::telemetry::names;

/// Why a stage gave samples up: the `reason` label of
/// `stackline_pipeline_dropped_samples_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The stage panicked on the request (it keeps serving).
    Panic,
    /// Still held when `service.shutdown_timeout` passed.
    ShutdownDeadline,
    /// No stage downstream was left to take it.
    DownstreamStopped,
    /// Every worker of the stage has ended.
    StageGone,
    /// Above the memory limit, with no client to tell to retry (the eBPF receiver's data).
    MemoryLimit,
    /// A persistent queue could not store it.
    QueueWriteFailed,
    /// A pull client's window was full (pprof's `/debug/pprof/profile`).
    PullWindowFull,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::Panic,
        DropReason::ShutdownDeadline,
        DropReason::DownstreamStopped,
        DropReason::StageGone,
        DropReason::MemoryLimit,
        DropReason::QueueWriteFailed,
        DropReason::PullWindowFull,
    ];

    /// The metric's label value.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Panic => "panic",
            DropReason::ShutdownDeadline => "shutdown_deadline",
            DropReason::DownstreamStopped => "downstream_stopped",
            DropReason::StageGone => "stage_gone",
            DropReason::MemoryLimit => "memory_limit",
            DropReason::QueueWriteFailed => "queue_write_failed",
            DropReason::PullWindowFull => "pull_window_full",
        }
    }

    /// What a client waiting on the request is told.
    pub fn message(self) -> &'static str {
        match self {
            DropReason::Panic => "the stage panicked on this request",
            DropReason::ShutdownDeadline => "dropped at the shutdown deadline",
            DropReason::DownstreamStopped => "no stage downstream is left to take it",
            DropReason::StageGone => "the stage is gone",
            DropReason::MemoryLimit => "the memory limiter is refusing data; retry later",
            DropReason::QueueWriteFailed => "the persistent queue could not store it",
            DropReason::PullWindowFull => "the pull window is full",
        }
    }
}

/// One component's drop counters, one per [`DropReason`], registered once.
#[derive(Clone)]
pub struct Drops {
    counters: Arc<[Counter]>,
}

impl std::fmt::Debug for Drops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Drops")
    }
}

impl Drops {
    /// The counters of `component` (`kind/id`).
    pub fn new(component: &str) -> Self {
        Drops {
            counters: DropReason::ALL
                .iter()
                .map(|r| {
                    metrics::counter!(names::PIPELINE_DROPPED, "component" => component.to_owned(), "reason" => r.label())
                })
                .collect(),
        }
    }

    /// The counter of `reason`, to hold where a hot path counts.
    pub fn counter(&self, reason: DropReason) -> &Counter {
        // ALL lists every variant in declaration order.
        &self.counters[reason as usize]
    }

    pub fn count(&self, reason: DropReason, samples: u64) {
        if samples > 0 {
            self.counter(reason).increment(samples);
        }
    }

    /// Gives a request up: counts its samples and fails its acks, telling a waiting
    /// client why.
    pub fn give_up(&self, env: Envelope, reason: DropReason) {
        self.count(reason, sample_count(&env.req));
        env.acks.reject(reason.message());
    }
}

/// A stage's side of the shutdown drain: at the deadline, gives up what waits in
/// `input` (counted, acks failed) plus `held` samples the stage itself still had, and
/// logs the total once.
pub fn give_up_input(ctx: &Context, input: &mut Input, held: u64) {
    let n = held + input.close();
    ctx.drops.count(DropReason::ShutdownDeadline, n);
    if n > 0 {
        tracing::warn!(component = %ctx.component, samples = n, "shutdown deadline: dropping what was still held (counted)");
    }
}

/// What a per-request processor decides for one request.
pub enum Verdict {
    /// Pass it on.
    Pass,
    /// Give it up for `reason`: counted as dropped, its acks failed.
    Drop(DropReason),
    /// Refuse it, with a client waiting to retry: its acks fail with this message and
    /// nothing is lost (the processor counts its refusals in its own metric).
    Refuse(&'static str),
}

/// Runs a processor that decides on one request at a time: health `running` then
/// `stopping`; each request judged by `judge` (a panic in it costs that request,
/// counted) and passed on through `out` until the input ends; at the deadline what is
/// left in the input is given up and counted.
pub async fn run_per_request(
    ctx: Context,
    mut input: Input,
    out: Fanout,
    mut judge: impl FnMut(&Envelope) -> Verdict,
) {
    ctx.health.running();
    loop {
        let env = tokio::select! {
            env = input.recv() => env,
            _ = ctx.deadline.cancelled() => {
                give_up_input(&ctx, &mut input, 0);
                break;
            }
        };
        let Some(env) = env else { break };
        match catch(&ctx.component, || judge(&env)) {
            // What downstream does not take is counted (and its acks failed) by the fanout.
            Ok(Verdict::Pass) => {
                let _ = out.send(env).await;
            }
            Ok(Verdict::Drop(reason)) => ctx.drops.give_up(env, reason),
            Ok(Verdict::Refuse(why)) => env.acks.reject(why),
            Err(_) => ctx.drops.give_up(env, DropReason::Panic),
        }
    }
    ctx.health.stopping();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::ComponentId;
    use crate::otlp::synth::{request, valid};
    use crate::pipeline::channel::channel;
    use crate::pipeline::{Ack, Acks};

    fn acked(service: &str) -> (Envelope, tokio::sync::oneshot::Receiver<Result<(), String>>) {
        let (ack, result) = Ack::new();
        (
            Envelope::new(valid(request(service, 0, 3, 2)), Acks::one(ack)),
            result,
        )
    }

    /// Each verdict reaches the client as it should: passed on, dropped with the
    /// reason's message, refused with the processor's, a panic costs only its request,
    /// and at the deadline what waits in the input is given up, not lost silently.
    #[tokio::test]
    async fn verdicts_panics_and_the_deadline_each_reach_the_client() {
        let (tx, in_rx) = channel();
        let (out_tx, mut out_rx) = channel();
        let ctx = Context::standalone("processor", ComponentId::parse("judge").unwrap());
        let out = Fanout::new(vec![out_tx], &ctx, None);
        let deadline = ctx.deadline.clone();
        let task = tokio::spawn(run_per_request(ctx, Input::new(in_rx, None), out, |env| {
            // The service name is in the resource's attributes.
            let service = format!(
                "{:?}",
                env.req.resource_profiles[0]
                    .resource
                    .as_ref()
                    .map(|r| &r.attributes)
            );
            if service.contains("drop") {
                Verdict::Drop(DropReason::MemoryLimit)
            } else if service.contains("refuse") {
                Verdict::Refuse("busy, retry")
            } else if service.contains("panic") {
                panic!("a bug on this request")
            } else {
                Verdict::Pass
            }
        }));
        let mut results = Vec::new();
        for s in ["pass", "drop", "refuse", "panic", "next"] {
            let (env, r) = acked(s);
            tx.send(env).await.unwrap();
            results.push(r);
        }
        for _ in 0..2 {
            let env = tokio::time::timeout(Duration::from_secs(5), out_rx.recv())
                .await
                .unwrap()
                .unwrap();
            env.acks.keep();
        }
        let mut got = Vec::new();
        for r in results {
            got.push(r.await.unwrap());
        }
        assert_eq!(
            got,
            vec![
                Ok(()),
                Err(DropReason::MemoryLimit.message().to_owned()),
                Err("busy, retry".to_owned()),
                Err(DropReason::Panic.message().to_owned()),
                Ok(()),
            ]
        );
        // At the deadline the stage ends although upstream still holds its sender, and
        // refuses what comes after (the sender sees it and counts it there).
        deadline.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the stage ends at the deadline")
            .unwrap();
        let (env, _) = acked("late");
        assert!(tx.send(env).await.is_err(), "input closed at the deadline");
    }
}
