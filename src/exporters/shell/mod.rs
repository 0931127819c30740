//! The exporter shell: what every exporter needs, written once (the collector's
//! `exporterhelper`, for all our exporters).
//!
//! An exporter supplies only what is its own:
//! - a network exporter, a [`Sender`]: one attempt to deliver an encoded request;
//! - a local exporter, a [`Writer`]: write one request (and optionally flush), on a
//!   blocking thread.
//!
//! The shell owns the rest: the sending queue (in memory or on disk, see [`queue`]),
//! retry with backoff and a per-attempt timeout as tower layers, encoding and writing
//! off the async runtime, health, panic containment, the drain deadline, and the
//! accounting. For every exporter, at shutdown:
//!
//! `accepted + replayed = sent + failed + dropped + kept`
//!
//! where `dropped` covers a full queue, a panic and the shutdown deadline, and `kept`
//! is what a persistent queue holds on disk for the next start. The shell logs this
//! line when the exporter ends, and each term is a metric.

mod config;
mod journal;
pub mod queue;
mod record;
mod retry;
mod salvage;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use metrics::Counter;
use tokio::task::JoinHandle;
use tower::{Service, ServiceBuilder, ServiceExt};

pub use config::{QueueConfig, RetryConfig, StorageConfig};
pub use retry::BackoffPolicy;

use crate::otlp::{Checked, ProfilesRequest, sample_count, view};
use crate::pipeline::{Acks, Context, Envelope, Input, StartError, catch, catch_async};
use crate::telemetry::names;
use queue::{PushError, Queue, Settled};

/// A request encoded once (OTLP protobuf), so retries and queueing cost no re-encoding
/// or deep copies, and a disk queue can store it as it is.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub bytes: Bytes,
    pub samples: u64,
    pub profiles: u64,
}

impl Encoded {
    pub fn protobuf(req: &ProfilesRequest) -> Self {
        use prost::Message;
        Encoded {
            bytes: Bytes::from(req.encode_to_vec()),
            samples: sample_count(req),
            profiles: view::profiles(req).count() as u64,
        }
    }

    /// The request back (for senders that re-encode, e.g. as JSON).
    pub fn decode(&self) -> Result<ProfilesRequest, prost::DecodeError> {
        use prost::Message;
        ProfilesRequest::decode(self.bytes.clone())
    }
}

/// How a send failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// Worth trying again (server unavailable, overloaded, timed out), after
    /// `retry_after` if the server said so.
    #[error("{message}")]
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Trying again cannot help (bad request, unauthenticated…): drop and count.
    #[error("{0}")]
    Permanent(String),
}

impl SendError {
    pub fn retryable(message: impl Into<String>) -> Self {
        SendError::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }
}

/// What a backend said about a request it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    All,
    /// OTLP partial success: the backend refused `rejected_profiles` of the request's profiles.
    Partial {
        rejected_profiles: u64,
        message: String,
    },
}

/// A network exporter's own part: one attempt to deliver one request.
#[async_trait]
pub trait Sender: Send + Sync + 'static {
    async fn send(&self, item: &Encoded) -> Result<Delivered, SendError>;
}

/// Settings of a network exporter's shell.
#[derive(Debug, Clone)]
pub struct SenderSettings {
    pub timeout: Duration,
    pub retry: RetryConfig,
    pub queue: QueueConfig,
}

/// What one call of a [`Writer`] settled, in samples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Now durable in the output.
    pub sent: u64,
    /// Given up on.
    pub failed: u64,
    /// Why, when something failed.
    pub error: Option<String>,
}

impl Outcome {
    pub fn sent(n: u64) -> Self {
        Outcome {
            sent: n,
            ..Default::default()
        }
    }
    pub fn failed(n: u64, error: impl std::fmt::Display) -> Self {
        Outcome {
            failed: n,
            error: Some(error.to_string()),
            ..Default::default()
        }
    }
}

/// A local exporter's own part. Runs on a blocking thread, one call at a time.
pub trait Writer: Send + 'static {
    /// Handles one request; its samples are settled now or by a later [`flush`](Writer::flush).
    fn write(&mut self, req: Checked) -> Outcome;
    /// Settles what earlier writes left pending. Called `flush_every` after a write and at
    /// the end.
    fn flush(&mut self) -> Outcome {
        Outcome::default()
    }
}

/// A counter that also keeps its total, for the shutdown summary.
struct Tally {
    metric: Counter,
    total: AtomicU64,
}

impl Tally {
    fn new(metric: Counter) -> Self {
        Tally {
            metric,
            total: AtomicU64::new(0),
        }
    }
    fn add(&self, n: u64) {
        if n > 0 {
            self.metric.increment(n);
            self.total.fetch_add(n, Ordering::Relaxed);
        }
    }
    fn get(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// Where every sample an exporter took went.
struct Accounting {
    component: String,
    accepted: Tally,
    sent: Tally,
    failed: Tally,
    enqueue_failed: Tally,
    deadline: Tally,
    panic: Tally,
    queue_write: Tally,
    rejected_profiles: Counter,
    replayed: AtomicU64,
}

impl Accounting {
    fn new(ctx: &Context) -> Self {
        let e = [("exporter", ctx.id.to_string())];
        let dropped = |reason: &'static str| {
            Tally::new(
                metrics::counter!(names::PIPELINE_DROPPED, "component" => ctx.component.clone(), "reason" => reason),
            )
        };
        Accounting {
            component: ctx.component.clone(),
            accepted: Tally::new(metrics::counter!(names::EXPORTER_ACCEPTED, &e)),
            sent: Tally::new(metrics::counter!(names::EXPORTER_SENT, &e)),
            failed: Tally::new(metrics::counter!(names::EXPORTER_SEND_FAILED, &e)),
            enqueue_failed: Tally::new(metrics::counter!(names::EXPORTER_ENQUEUE_FAILED, &e)),
            deadline: dropped("shutdown_deadline"),
            panic: dropped("panic"),
            queue_write: dropped("queue_write_failed"),
            rejected_profiles: metrics::counter!(names::EXPORTER_REJECTED_PROFILES, &e),
            replayed: AtomicU64::new(0),
        }
    }

    fn dropped(&self) -> u64 {
        self.enqueue_failed.get() + self.deadline.get() + self.panic.get() + self.queue_write.get()
    }

    /// The shutdown line: every sample the exporter took, and where it went.
    fn summary(&self, kept: u64) {
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

/// The tower stack around a [`Sender`]: retry with backoff, then a per-attempt timeout.
#[derive(Clone)]
struct Svc(Arc<dyn SenderObj>);

impl Service<Encoded> for Svc {
    type Response = Delivered;
    type Error = SendError;
    type Future = Pin<Box<dyn Future<Output = Result<Delivered, SendError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), SendError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, item: Encoded) -> Self::Future {
        let s = self.0.clone();
        Box::pin(async move { s.send_boxed(&item).await })
    }
}

type Stack = tower::retry::Retry<BackoffPolicy, tower::timeout::Timeout<Svc>>;

/// Object-safe view of a sender, so the stack has one concrete type.
trait SenderObj: Send + Sync + 'static {
    fn send_boxed<'a>(
        &'a self,
        item: &'a Encoded,
    ) -> Pin<Box<dyn Future<Output = Result<Delivered, SendError>> + Send + 'a>>;
}

impl<S: Sender> SenderObj for S {
    fn send_boxed<'a>(
        &'a self,
        item: &'a Encoded,
    ) -> Pin<Box<dyn Future<Output = Result<Delivered, SendError>> + Send + 'a>> {
        self.send(item)
    }
}

/// Starts a network exporter: opens its queue (a start error if a disk queue cannot
/// be opened) and spawns the shell around `sender`.
pub async fn start_sender<S: Sender>(
    ctx: Context,
    input: Input,
    sender: S,
    settings: SenderSettings,
) -> Result<JoinHandle<()>, StartError> {
    let queue = if settings.queue.enabled {
        let q = Queue::open(&settings.queue, &ctx.id.to_string())
            .await
            .map_err(|e| format!("exporters.{}.sending_queue: {e}", ctx.id))?;
        Some(Arc::new(q))
    } else {
        None
    };
    let sender: Arc<dyn SenderObj> = Arc::new(sender);
    Ok(tokio::spawn(run_sender(
        ctx, input, sender, settings, queue,
    )))
}

async fn run_sender(
    ctx: Context,
    mut input: Input,
    sender: Arc<dyn SenderObj>,
    settings: SenderSettings,
    queue: Option<Arc<Queue>>,
) {
    let acct = Arc::new(Accounting::new(&ctx));
    let exporter = ctx.id.to_string();
    let svc: Stack = ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(BackoffPolicy::new(
            settings.retry.clone(),
            ctx.deadline.clone(),
            exporter.clone(),
            ctx.health.clone(),
        )))
        .timeout(settings.timeout)
        .service(Svc(sender));
    ctx.health.running();

    let Some(queue) = queue else {
        // No queue: the pipeline waits for each send (back-pressure up to the receiver).
        while let Some(Envelope { req, acks }) = next(&ctx, &mut input, &acct).await {
            let Some(item) = encode(&ctx, req, &acct).await else {
                acks.reject("encoding the request panicked");
                continue;
            };
            match deliver(svc.clone(), item.clone(), &ctx, &acct, false).await {
                (Settled::Unfinished, _) => {
                    acct.deadline.add(item.samples);
                    acks.reject("dropped at the shutdown deadline");
                }
                (Settled::Done, Some(failure)) => acks.reject(&failure),
                (Settled::Done, None) => acks.keep(),
            }
        }
        acct.summary(0);
        ctx.health.stopping();
        return;
    };

    let size = metrics::gauge!(names::EXPORTER_QUEUE_SIZE, "exporter" => exporter.clone());
    metrics::gauge!(names::EXPORTER_QUEUE_CAPACITY, "exporter" => exporter.clone())
        .set(settings.queue.queue_size as f64);
    acct.replayed
        .store(queue.replayed_samples(), Ordering::Relaxed);
    let persistent = queue.is_persistent();
    let mut workers = Vec::with_capacity(settings.queue.num_consumers);
    for _ in 0..settings.queue.num_consumers {
        let (queue, svc, ctx, acct, size) = (
            queue.clone(),
            svc.clone(),
            ctx.clone(),
            acct.clone(),
            size.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let taken = tokio::select! {
                    t = ctx.health.waiting(queue.take()) => t,
                    _ = ctx.deadline.cancelled() => None,
                };
                let Some(taken) = taken else { break };
                size.set(queue.len() as f64);
                // Acks were released when the request was queued: failures here are counted only.
                let (how, _) =
                    deliver(svc.clone(), taken.item.clone(), &ctx, &acct, persistent).await;
                if how == Settled::Unfinished && !persistent {
                    acct.deadline.add(taken.item.samples);
                }
                queue.settle(taken, how).await;
            }
        }));
    }
    let mut full_warned = false;
    while let Some(Envelope { req, acks }) = next(&ctx, &mut input, &acct).await {
        let Some(item) = encode(&ctx, req, &acct).await else {
            acks.reject("encoding the request panicked");
            continue;
        };
        match queue.push(item, &ctx.deadline).await {
            // Queued (and, for a disk queue, committed): the receiver may answer OK.
            Ok(()) => {
                acks.keep();
                full_warned = false;
            }
            Err(PushError::Full(item)) => {
                acks.reject("the sending queue is full");
                acct.enqueue_failed.add(item.samples);
                if !full_warned {
                    tracing::warn!(exporter = %exporter, capacity = settings.queue.queue_size, "sending queue is full; dropping requests until it has room (counted in {})", names::EXPORTER_ENQUEUE_FAILED);
                    full_warned = true;
                }
            }
            Err(PushError::Disk { item, error }) => {
                acks.reject("the sending queue could not be written to disk");
                acct.queue_write.add(item.samples);
                ctx.health.unhealthy(error.clone());
                tracing::error!(exporter = %exporter, samples = item.samples, %error, "could not queue a request on disk; dropped (counted)");
            }
        }
        size.set(queue.len() as f64);
    }
    // Closing the queue lets the workers finish what it holds, then stop.
    queue.close();
    for w in workers {
        let _ = w.await;
    }
    // Past the deadline: what a memory queue still holds is given up; a disk queue keeps it.
    while let Some(samples) = queue.try_take_slot() {
        acct.deadline.add(samples);
    }
    let kept = queue.persist_remaining().await;
    size.set(queue.len() as f64);
    acct.summary(kept);
    ctx.health.stopping();
}

/// The next request from the pipeline, or `None` when the input has ended. At the
/// deadline, what is still in the input is counted as dropped and input is refused.
async fn next(ctx: &Context, input: &mut Input, acct: &Accounting) -> Option<Envelope> {
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

/// Encodes on a blocking thread; a panic costs the request (counted).
async fn encode(ctx: &Context, req: Checked, acct: &Accounting) -> Option<Encoded> {
    let n = sample_count(&req);
    let component = ctx.component.clone();
    match tokio::task::spawn_blocking(move || catch(&component, || Encoded::protobuf(&req))).await {
        Ok(Ok(e)) => Some(e),
        _ => {
            acct.panic.add(n);
            None
        }
    }
}

/// One request through retry and timeout, settled in the accounting; with `Done`,
/// why not all of it was delivered, if so.
async fn deliver(
    mut svc: Stack,
    item: Encoded,
    ctx: &Context,
    acct: &Accounting,
    persistent: bool,
) -> (Settled, Option<String>) {
    let (samples, profiles) = (item.samples, item.profiles);
    if ctx.deadline.is_cancelled() {
        return (Settled::Unfinished, None);
    }
    let attempt = async {
        match svc.ready().await {
            Ok(s) => s.call(item).await,
            Err(e) => Err(e),
        }
    };
    let result = catch_async(&acct.component, ctx.health.waiting(attempt)).await;
    let failure = match result {
        Ok(Ok(Delivered::All)) => {
            acct.sent.add(samples);
            ctx.health.running();
            None
        }
        Ok(Ok(Delivered::Partial {
            rejected_profiles,
            message,
        })) => {
            // OTLP counts rejections in profiles; samples are shared out in proportion.
            let failed = if profiles == 0 {
                samples
            } else {
                (samples as u128 * rejected_profiles.min(profiles) as u128)
                    .div_ceil(profiles as u128) as u64
            };
            acct.rejected_profiles.increment(rejected_profiles);
            acct.failed.add(failed);
            acct.sent.add(samples - failed);
            tracing::warn!(exporter = %ctx.id, rejected_profiles, samples_failed = failed, message = %message, "the backend rejected part of a request (counted as failed)");
            Some(format!(
                "the backend rejected {rejected_profiles} profiles: {message}"
            ))
        }
        Ok(Err(e)) => {
            if persistent && ctx.deadline.is_cancelled() {
                return (Settled::Unfinished, None);
            }
            acct.failed.add(samples);
            ctx.health.unhealthy(format!("last export failed: {e}"));
            tracing::error!(exporter = %ctx.id, samples, error = %e, "export failed; the samples are dropped (counted in {})", names::EXPORTER_SEND_FAILED);
            Some(format!("export failed: {e}"))
        }
        Err(p) => {
            acct.panic.add(samples);
            Some(p.to_string())
        }
    };
    (Settled::Done, failure)
}

/// Settings of a local exporter's shell.
#[derive(Debug, Clone, Default)]
pub struct WriterSettings {
    /// How long after a write [`Writer::flush`] is called (also at the end). None: only
    /// at the end.
    pub flush_every: Option<Duration>,
    /// Names the output in messages, e.g. "pprof files".
    pub what: &'static str,
}

/// Starts a local exporter around `writer`; after a panic, `make` builds a fresh one.
pub fn start_writer<W: Writer>(
    ctx: Context,
    input: Input,
    writer: W,
    make: impl Fn() -> std::io::Result<W> + Send + Sync + 'static,
    settings: WriterSettings,
) -> JoinHandle<()> {
    tokio::spawn(run_writer(ctx, input, writer, make, settings))
}

async fn run_writer<W: Writer>(
    ctx: Context,
    mut input: Input,
    writer: W,
    make: impl Fn() -> std::io::Result<W> + Send + Sync + 'static,
    settings: WriterSettings,
) {
    let acct = Arc::new(Accounting::new(&ctx));
    let make = Arc::new(make);
    let mut writer = Some(writer);
    // Armed by a write, `flush_every` after it: an idle exporter has no timer to wake
    // for (a tick every second was a sizeable share of an agent's CPU at 20 Hz).
    let mut flush_at: Option<tokio::time::Instant> = None;
    ctx.health.running();
    enum Job {
        Write(Checked),
        Flush,
    }
    loop {
        let (job, acks) = tokio::select! {
            biased;
            r = next(&ctx, &mut input, &acct) => match r {
                Some(Envelope { req, acks }) => (Job::Write(req), acks),
                None => break,
            },
            _ = tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)), if flush_at.is_some() => {
                flush_at = None;
                (Job::Flush, Acks::none())
            }
        };
        if let (Job::Write(_), Some(every), None) = (&job, settings.flush_every, flush_at) {
            flush_at = Some(tokio::time::Instant::now() + every);
        }
        let n = match &job {
            Job::Write(req) => sample_count(req),
            Job::Flush => 0,
        };
        let flushing = matches!(job, Job::Flush);
        let w = match writer.take() {
            Some(w) => w,
            None => match make() {
                Ok(w) => w,
                Err(e) => {
                    acct.failed.add(n);
                    acks.reject(&format!("cannot reopen {}: {e}", settings.what));
                    ctx.health
                        .unhealthy(format!("cannot reopen {}: {e}", settings.what));
                    tracing::error!(exporter = %ctx.id, error = %e, samples = n, "cannot reopen {}; the samples are dropped (counted), retrying with the next request", settings.what);
                    continue;
                }
            },
        };
        let (component, health) = (ctx.component.clone(), ctx.health.clone());
        let done = tokio::task::spawn_blocking(move || {
            let _busy = health.busy();
            let mut w = w;
            let r = catch(&component, || match job {
                Job::Write(req) => w.write(req),
                Job::Flush => w.flush(),
            });
            (r.is_ok().then_some(w), r)
        })
        .await;
        match done {
            Ok((back, Ok(outcome))) => {
                writer = back;
                // A failed flush is tried again, as a tick would have.
                if flushing && outcome.error.is_some() && flush_at.is_none() {
                    flush_at = settings
                        .flush_every
                        .map(|e| tokio::time::Instant::now() + e);
                }
                match &outcome.error {
                    Some(e) if outcome.failed > 0 => acks.reject(e),
                    _ => acks.keep(),
                }
                settle(&ctx, &acct, &outcome, settings.what);
            }
            Ok((_, Err(_))) | Err(_) => {
                // A fresh writer is made for the next request.
                acct.panic.add(n);
                acks.reject(&format!("writing {} panicked", settings.what));
                ctx.health
                    .unhealthy(format!("writing {} panicked", settings.what));
            }
        }
    }
    if let Some(mut w) = writer.take() {
        let (component, what) = (ctx.component.clone(), settings.what);
        if let Ok(Ok(outcome)) =
            tokio::task::spawn_blocking(move || catch(&component, || w.flush())).await
        {
            settle(&ctx, &acct, &outcome, what);
        }
    }
    acct.summary(0);
    ctx.health.stopping();
}

fn settle(ctx: &Context, acct: &Accounting, o: &Outcome, what: &str) {
    acct.sent.add(o.sent);
    acct.failed.add(o.failed);
    match &o.error {
        Some(e) => {
            ctx.health.unhealthy(format!("writing {what} failed: {e}"));
            tracing::error!(exporter = %ctx.id, error = %e, samples = o.failed, "writing {what} failed; the samples are dropped (counted in {})", names::EXPORTER_SEND_FAILED);
        }
        None if o.sent > 0 => ctx.health.running(),
        None => {}
    }
}

#[cfg(test)]
mod writer_tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;
    use crate::config::ComponentId;
    use crate::otlp::synth::{request, valid};
    use crate::pipeline::channel::channel;

    /// Records when each write and flush happened.
    struct Log(Arc<Mutex<Vec<(&'static str, Instant)>>>);

    impl Writer for Log {
        fn write(&mut self, req: Checked) -> Outcome {
            self.0.lock().unwrap().push(("write", Instant::now()));
            Outcome {
                sent: sample_count(&req),
                ..Default::default()
            }
        }
        fn flush(&mut self) -> Outcome {
            self.0.lock().unwrap().push(("flush", Instant::now()));
            Outcome::default()
        }
    }

    #[tokio::test]
    async fn flush_follows_a_write_by_flush_every_and_an_idle_writer_never_flushes() {
        let every = Duration::from_millis(100);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = channel();
        let ctx = Context::standalone("exporter", ComponentId::parse("log").unwrap());
        let made = log.clone();
        let h = start_writer(
            ctx,
            Input::new(rx, None),
            Log(log.clone()),
            move || Ok(Log(made.clone())),
            WriterSettings {
                flush_every: Some(every),
                what: "test records",
            },
        );
        let kinds = |log: &Mutex<Vec<(&'static str, Instant)>>| {
            log.lock().unwrap().iter().map(|e| e.0).collect::<Vec<_>>()
        };
        tokio::time::sleep(every * 4).await;
        assert!(kinds(&log).is_empty(), "idle: {:?}", kinds(&log));

        let sent = Instant::now();
        tx.send(valid(request("a", 0, 3, 2)).into()).await.unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while kinds(&log).len() < 2 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let events = log.lock().unwrap().clone();
        assert_eq!(kinds(&log), ["write", "flush"]);
        assert!(events[1].1 - sent >= every, "{events:?}");
        // Nothing written since: no more flushes.
        tokio::time::sleep(every * 4).await;
        assert_eq!(kinds(&log), ["write", "flush"]);

        // The end flushes once more.
        drop(tx);
        h.await.unwrap();
        assert_eq!(kinds(&log), ["write", "flush", "flush"]);
    }
}
