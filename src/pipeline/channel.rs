//! Bounded channels between stages, and the fanout to several consumers.

use metrics::Counter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Context;
use super::ack::Envelope;
use super::stage::DropReason;
use crate::otlp::sample_count;
use crate::telemetry::HealthReporter;

/// Requests buffered between two stages. Small on purpose: memory is bounded by the
/// exporters' queues, and a full channel is what slows a receiver down.
pub const CHANNEL_CAPACITY: usize = 16;

/// Creates a stage-to-stage channel.
pub fn channel() -> (mpsc::Sender<Envelope>, mpsc::Receiver<Envelope>) {
    mpsc::channel(CHANNEL_CAPACITY)
}

/// The receiving end of a stage, counting incoming samples when asked to.
pub struct Input {
    rx: mpsc::Receiver<Envelope>,
    incoming: Option<Counter>,
    health: Option<HealthReporter>,
}

impl Input {
    pub fn new(rx: mpsc::Receiver<Envelope>, incoming: Option<Counter>) -> Self {
        Input {
            rx,
            incoming,
            health: None,
        }
    }

    /// Beats on `health` while waiting for input, so an idle stage is not taken for a stuck one.
    pub fn watched(mut self, health: HealthReporter) -> Self {
        self.health = Some(health);
        self
    }

    /// The next request; `None` once every upstream sender is gone (the stage should flush and end).
    pub async fn recv(&mut self) -> Option<Envelope> {
        let r = match &self.health {
            Some(h) => h.waiting(self.rx.recv()).await?,
            None => self.rx.recv().await?,
        };
        if let Some(c) = &self.incoming {
            c.increment(sample_count(&r.req));
        }
        Some(r)
    }

    /// A request already waiting, without blocking.
    pub fn try_recv(&mut self) -> Option<Envelope> {
        let r = self.rx.try_recv().ok()?;
        if let Some(c) = &self.incoming {
            c.increment(sample_count(&r.req));
        }
        Some(r)
    }

    /// At the deadline: refuses further input (upstream sends now fail and are counted
    /// there), fails the acks of what was still waiting, and returns its samples for
    /// the caller to count.
    pub fn close(&mut self) -> u64 {
        self.rx.close();
        let mut samples = 0;
        while let Some(r) = self.try_recv() {
            samples += sample_count(&r.req);
            r.acks.reject("dropped at the shutdown deadline");
        }
        samples
    }
}

/// Why some consumers did not get a request.
#[derive(Debug, thiserror::Error)]
#[error(
    "{failed} of {total} downstream components did not take it; their copy of {samples} samples was dropped ({reason})"
)]
pub struct FanoutError {
    pub failed: usize,
    pub total: usize,
    pub samples: u64,
    /// `downstream_stopped` or `shutdown_deadline`.
    pub reason: &'static str,
}

/// Sends each request to every downstream consumer, cloning it for all but the last.
#[derive(Clone)]
pub struct Fanout {
    outputs: Vec<mpsc::Sender<Envelope>>,
    outgoing: Option<Counter>,
    stopped: Counter,
    deadline_dropped: Counter,
    deadline: CancellationToken,
    health: HealthReporter,
}

impl Fanout {
    /// `ctx` is the sending component's: drops are counted under its name, waits for
    /// room downstream beat its health, and its deadline ends them. `outgoing` counts
    /// samples sent on.
    pub fn new(
        outputs: Vec<mpsc::Sender<Envelope>>,
        ctx: &Context,
        outgoing: Option<Counter>,
    ) -> Self {
        Fanout {
            outputs,
            outgoing,
            stopped: ctx.drops.counter(DropReason::DownstreamStopped).clone(),
            deadline_dropped: ctx.drops.counter(DropReason::ShutdownDeadline).clone(),
            deadline: ctx.deadline.clone(),
            health: ctx.health.clone(),
        }
    }

    /// True once no downstream consumer is left: the stage may refuse new data.
    pub fn is_closed(&self) -> bool {
        self.outputs.iter().all(|o| o.is_closed())
    }

    /// Delivers `req` to every consumer, waiting while a consumer's channel is full,
    /// until the drain deadline. Every copy that was not taken is counted as dropped,
    /// and fails the acks it carried.
    pub async fn send(&self, env: Envelope) -> Result<(), FanoutError> {
        let samples = sample_count(&env.req);
        let total = self.outputs.len();
        let (mut stopped, mut late) = (0usize, 0usize);
        let deliver = async |out: &mpsc::Sender<Envelope>, r: Envelope| {
            if self.deadline.is_cancelled() {
                // Past the deadline, only what fits without waiting goes on.
                return match out.try_send(r) {
                    Ok(()) => Ok(()),
                    Err(mpsc::error::TrySendError::Full(r)) => {
                        r.acks.reject("dropped at the shutdown deadline");
                        Err(true)
                    }
                    Err(mpsc::error::TrySendError::Closed(r)) => {
                        r.acks.reject("a pipeline stage is no longer running");
                        Err(false)
                    }
                };
            }
            let permit = tokio::select! {
                p = self.health.waiting(out.reserve()) => p,
                _ = self.deadline.cancelled() => {
                    r.acks.reject("dropped at the shutdown deadline");
                    return Err(true);
                }
            };
            match permit {
                Ok(p) => {
                    p.send(r);
                    Ok(())
                }
                Err(_) => {
                    r.acks.reject("a pipeline stage is no longer running");
                    Err(false)
                }
            }
        };
        if let Some((last, rest)) = self.outputs.split_last() {
            for out in rest {
                let copy = Envelope::new(env.req.clone(), env.acks.clone());
                match deliver(out, copy).await {
                    Ok(()) => {}
                    Err(true) => late += 1,
                    Err(false) => stopped += 1,
                }
            }
            match deliver(last, env).await {
                Ok(()) => {}
                Err(true) => late += 1,
                Err(false) => stopped += 1,
            }
        }
        let failed = stopped + late;
        if let Some(c) = &self.outgoing
            && failed < total
        {
            c.increment(samples);
        }
        self.stopped.increment(samples * stopped as u64);
        self.deadline_dropped.increment(samples * late as u64);
        if failed > 0 {
            return Err(FanoutError {
                failed,
                total,
                samples,
                reason: if late > 0 {
                    "shutdown_deadline"
                } else {
                    "downstream_stopped"
                },
            });
        }
        Ok(())
    }
}
