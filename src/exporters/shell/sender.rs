//! The network exporters' engine: the sending queue (memory or disk), encoding off the runtime, and each attempt through tower's retry and timeout layers around the exporter's Sender.

use super::*;

/// The tower stack around a [`Sender`]: retry with backoff, then a per-attempt timeout.
#[derive(Clone)]
pub(super) struct Svc(Arc<dyn SenderObj>);

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

pub(super) type Stack = tower::retry::Retry<BackoffPolicy, tower::timeout::Timeout<Svc>>;

/// Object-safe view of a sender, so the stack has one concrete type.
pub(super) trait SenderObj: Send + Sync + 'static {
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

pub(super) async fn run_sender(
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

/// Encodes on a blocking thread; a panic costs the request (counted).
pub(super) async fn encode(ctx: &Context, req: Checked, acct: &Accounting) -> Option<Encoded> {
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
pub(super) async fn deliver(
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
