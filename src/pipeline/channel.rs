//! Bounded channels between stages, and the fanout to several consumers.

use metrics::Counter;
use tokio::sync::mpsc;

use crate::otlp::{ProfilesRequest, sample_count};
use crate::telemetry::names;

/// Requests buffered between two stages. Small on purpose: memory is bounded by the
/// exporters' queues, and a full channel is what slows a receiver down.
pub const CHANNEL_CAPACITY: usize = 16;

/// Creates a stage-to-stage channel.
pub fn channel() -> (
    mpsc::Sender<ProfilesRequest>,
    mpsc::Receiver<ProfilesRequest>,
) {
    mpsc::channel(CHANNEL_CAPACITY)
}

/// The receiving end of a stage, counting incoming samples when asked to.
pub struct Input {
    rx: mpsc::Receiver<ProfilesRequest>,
    incoming: Option<Counter>,
}

impl Input {
    pub fn new(rx: mpsc::Receiver<ProfilesRequest>, incoming: Option<Counter>) -> Self {
        Input { rx, incoming }
    }

    /// The next request; `None` once every upstream sender is gone (the stage should flush and end).
    pub async fn recv(&mut self) -> Option<ProfilesRequest> {
        let r = self.rx.recv().await?;
        if let Some(c) = &self.incoming {
            c.increment(sample_count(&r));
        }
        Some(r)
    }

    /// A request already waiting, without blocking (used to drain at the deadline).
    pub fn try_recv(&mut self) -> Option<ProfilesRequest> {
        self.rx.try_recv().ok()
    }
}

/// Why some consumers did not get a request.
#[derive(Debug, thiserror::Error)]
#[error(
    "{failed} of {total} downstream components are no longer running; their copy of {samples} samples was dropped"
)]
pub struct FanoutError {
    pub failed: usize,
    pub total: usize,
    pub samples: u64,
}

/// Sends each request to every downstream consumer, cloning it for all but the last.
#[derive(Clone)]
pub struct Fanout {
    outputs: Vec<mpsc::Sender<ProfilesRequest>>,
    outgoing: Option<Counter>,
    dropped: Counter,
}

impl Fanout {
    /// `component` labels the drop counter; `outgoing` counts samples sent on.
    pub fn new(
        outputs: Vec<mpsc::Sender<ProfilesRequest>>,
        component: &str,
        outgoing: Option<Counter>,
    ) -> Self {
        Fanout {
            outputs,
            outgoing,
            dropped: metrics::counter!(names::PIPELINE_DROPPED, "component" => component.to_owned(), "reason" => "downstream_stopped"),
        }
    }

    /// Delivers `req` to every consumer, waiting while a consumer's channel is full.
    pub async fn send(&self, req: ProfilesRequest) -> Result<(), FanoutError> {
        let samples = sample_count(&req);
        let total = self.outputs.len();
        let mut failed = 0;
        if let Some((last, rest)) = self.outputs.split_last() {
            for out in rest {
                if out.send(req.clone()).await.is_err() {
                    failed += 1;
                }
            }
            if last.send(req).await.is_err() {
                failed += 1;
            }
        }
        if let Some(c) = &self.outgoing
            && failed < total
        {
            c.increment(samples);
        }
        if failed > 0 {
            self.dropped.increment(samples * failed as u64);
            return Err(FanoutError {
                failed,
                total,
                samples,
            });
        }
        Ok(())
    }
}
