//! The local exporters' engine: each request written on a blocking thread by the exporter's Writer, flushed when it asks, health and accounting from the outcome.

use super::*;

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

pub(super) async fn run_writer<W: Writer>(
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

pub(super) fn settle(ctx: &Context, acct: &Accounting, o: &Outcome, what: &str) {
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
