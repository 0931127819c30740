//! What every network exporter shares, written once (the collector's `exporterhelper`):
//! a per-attempt timeout and retry with exponential backoff as tower layers, and a
//! bounded sending queue drained by a pool of workers, all counted in the collector's metrics.
//!
//! An exporter provides a [`tower::Service`] that sends one [`Encoded`] request and
//! classifies failures as [`SendError::Retryable`] or [`SendError::Permanent`];
//! [`run`] does the rest.

mod config;
mod retry;

use std::time::Duration;

use bytes::Bytes;
use metrics::{Counter, Gauge};
use tower::{Service, ServiceBuilder, ServiceExt};

pub use config::{QueueConfig, RetryConfig};
pub use retry::BackoffPolicy;

use crate::otlp::{ProfilesRequest, sample_count};
use crate::pipeline::{Context, Input};
use crate::telemetry::names;

/// A request encoded once, so retries and queueing cost no re-encoding or deep copies.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub bytes: Bytes,
    pub samples: u64,
}

impl Encoded {
    pub fn protobuf(req: &ProfilesRequest) -> Self {
        use prost::Message;
        Encoded {
            bytes: Bytes::from(req.encode_to_vec()),
            samples: sample_count(req),
        }
    }
}

/// How a send failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// Worth trying again (server unavailable, overloaded, timed out).
    #[error("{0}")]
    Retryable(String),
    /// Trying again cannot help (bad request, unauthenticated…): drop and count.
    #[error("{0}")]
    Permanent(String),
}

/// The exporter's metrics.
#[derive(Clone)]
struct Meters {
    sent: Counter,
    send_failed: Counter,
    enqueue_failed: Counter,
    queue_size: Gauge,
}

impl Meters {
    fn new(exporter: &str) -> Self {
        let l = [("exporter", exporter.to_owned())];
        Meters {
            sent: metrics::counter!(names::EXPORTER_SENT, &l),
            send_failed: metrics::counter!(names::EXPORTER_SEND_FAILED, &l),
            enqueue_failed: metrics::counter!(names::EXPORTER_ENQUEUE_FAILED, &l),
            queue_size: metrics::gauge!(names::EXPORTER_QUEUE_SIZE, &l),
        }
    }
}

/// Runs an exporter: takes requests from `input`, encodes them, queues them and sends
/// them through `sender` wrapped in retry and timeout layers. Returns when the input
/// has ended and everything accepted was sent or given up on, or at the deadline.
pub async fn run<S>(
    ctx: Context,
    mut input: Input,
    sender: S,
    timeout: Duration,
    retry: RetryConfig,
    queue: QueueConfig,
) where
    S: Service<Encoded, Response = (), Error = SendError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let exporter = ctx.id.to_string();
    let meters = Meters::new(&exporter);
    let svc = ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(BackoffPolicy::new(
            retry,
            ctx.deadline.clone(),
            exporter.clone(),
            ctx.health.clone(),
        )))
        .timeout(timeout)
        .service(sender);
    ctx.health.running();

    if !queue.enabled {
        while let Some(req) = next(&ctx, &mut input, &meters).await {
            send_one(svc.clone(), Encoded::protobuf(&req), &ctx, &meters).await;
        }
        ctx.health.stopping();
        return;
    }

    metrics::gauge!(names::EXPORTER_QUEUE_CAPACITY, "exporter" => exporter.clone())
        .set(queue.queue_size as f64);
    let (tx, rx) = async_channel::bounded::<Encoded>(queue.queue_size);
    let mut workers = Vec::with_capacity(queue.num_consumers);
    for _ in 0..queue.num_consumers {
        let (rx, svc, ctx, meters) = (rx.clone(), svc.clone(), ctx.clone(), meters.clone());
        workers.push(tokio::spawn(async move {
            while let Ok(item) = rx.recv().await {
                meters.queue_size.set(rx.len() as f64);
                send_one(svc.clone(), item, &ctx, &meters).await;
            }
        }));
    }
    drop(rx);
    let mut full_warned = false;
    while let Some(req) = next(&ctx, &mut input, &meters).await {
        let item = Encoded::protobuf(&req);
        let samples = item.samples;
        let queued = if queue.block_on_overflow {
            tokio::select! {
                r = tx.send(item) => r.is_ok(),
                _ = ctx.deadline.cancelled() => false,
            }
        } else {
            tx.try_send(item).is_ok()
        };
        if queued {
            full_warned = false;
        } else {
            meters.enqueue_failed.increment(samples);
            if !full_warned {
                tracing::warn!(exporter = %exporter, capacity = queue.queue_size, "sending queue is full; dropping requests until it has room (counted in {})", names::EXPORTER_ENQUEUE_FAILED);
                full_warned = true;
            }
        }
        meters.queue_size.set(tx.len() as f64);
    }
    // Closing the queue lets the workers finish what it holds, then stop.
    drop(tx);
    for w in workers {
        let _ = w.await;
    }
    meters.queue_size.set(0.0);
    ctx.health.stopping();
}

/// The next request from the pipeline, or `None` when the input has ended. At the
/// deadline, whatever is still in the input is counted as failed.
async fn next(ctx: &Context, input: &mut Input, meters: &Meters) -> Option<ProfilesRequest> {
    tokio::select! {
        biased;
        r = input.recv() => r,
        _ = ctx.deadline.cancelled() => {
            while let Some(req) = input.try_recv() {
                meters.send_failed.increment(sample_count(&req));
            }
            None
        }
    }
}

async fn send_one<S>(mut svc: S, item: Encoded, ctx: &Context, meters: &Meters)
where
    S: Service<Encoded, Response = ()>,
    S::Error: std::fmt::Display,
{
    let samples = item.samples;
    if ctx.deadline.is_cancelled() {
        meters.send_failed.increment(samples);
        return;
    }
    let result = match svc.ready().await {
        Ok(s) => s.call(item).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            meters.sent.increment(samples);
            ctx.health.running();
        }
        Err(e) => {
            meters.send_failed.increment(samples);
            ctx.health.unhealthy(format!("last export failed: {e}"));
            tracing::error!(exporter = %ctx.id, samples, error = %e, "export failed; the samples are dropped (counted in {})", names::EXPORTER_SEND_FAILED);
        }
    }
}
