//! `symbolizer` processor: native and kernel frames to function, file, line and inlined
//! frames, with blazesym, on the agent (files on this host) and on the gateway (files
//! found by build ID in `debug_dirs`).
//!
//! blazesym's `Symbolizer` is neither Send nor Sync, so it runs on `workers` dedicated
//! threads, each owning one (and its cache), fed from the async stage by a bounded
//! queue; each thread sends what it finished on down the pipeline itself.

mod config;
mod debuglink;
pub mod files;
mod unpack;
pub mod worker;

use tokio::task::JoinHandle;

pub use config::{SymbolSource, SymbolizerConfig};

use crate::config::parse_component;
use crate::otlp::sample_count;
use crate::pipeline::{
    Context, DropReason, Envelope, Fanout, Feeders, Input, Origin, Processor, ProcessorFactory,
    catch, give_up_input,
};

pub fn factory() -> ProcessorFactory {
    ProcessorFactory {
        type_name: "symbolizer",
        description: "resolves native and kernel frames to functions, files, lines and inlined frames (blazesym)",
        create: |_, v| {
            Ok(Box::new(SymbolizerProcessor {
                cfg: parse_component(v)?,
            }))
        },
        check_feeders: Some(network_fed_warning),
    }
}

/// Data from the network reaching a symbolizer that reads host files or this machine's
/// kernel symbols: a request's paths and pids would then name files here (ones its
/// sender chose), and its kernel is not ours.
fn network_fed_warning(v: &figment::value::Value, f: &Feeders) -> Option<String> {
    let (net, _) = f.receivers.iter().find(|(_, o)| *o == Origin::Network)?;
    let c: SymbolizerConfig = parse_component(v).ok()?;
    let local: Vec<&str> = [
        (c.uses(SymbolSource::Host), "host"),
        (c.kernel_on(), "kernel"),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| n)
    .collect();
    (!local.is_empty()).then(|| {
        format!(
            "in pipeline {} it symbolizes data from receiver {net} (other machines) with sources {local:?} of this machine; on a gateway set `sources: [debug_dirs]`",
            f.pipeline
        )
    })
}

pub struct SymbolizerProcessor {
    cfg: SymbolizerConfig,
}

impl Processor for SymbolizerProcessor {
    fn start(self: Box<Self>, ctx: Context, input: Input, out: Fanout) -> JoinHandle<()> {
        tokio::spawn(run(self.cfg, ctx, input, out))
    }
}

async fn run(cfg: SymbolizerConfig, ctx: Context, mut input: Input, out: Fanout) {
    let (tx, rx) = async_channel::bounded::<Envelope>(cfg.workers * 2);
    let rt = tokio::runtime::Handle::current();
    let mut threads = Vec::new();
    for i in 0..cfg.workers {
        let (rx, out, rt, cfg, ctx) = (
            rx.clone(),
            out.clone(),
            rt.clone(),
            cfg.clone(),
            ctx.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("symbolizer-{i}"))
            .spawn(move || {
                let mut w = worker::Worker::new(cfg.clone());
                while let Ok(mut env) = rx.recv_blocking() {
                    let busy = ctx.health.busy();
                    if catch(&ctx.component, || env.req.modify(|r| w.symbolize(r))).is_err() {
                        // The worker may be half-updated: start a fresh one (its cache is lost).
                        ctx.drops.give_up(env, DropReason::Panic);
                        w = worker::Worker::new(cfg.clone());
                        continue;
                    }
                    drop(busy);
                    // What downstream does not take is counted by the fanout.
                    let _ = rt.block_on(out.send(env));
                }
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                tracing::error!(processor = %ctx.id, error = %e, "cannot start a symbolizer thread")
            }
        }
    }
    if threads.is_empty() {
        ctx.health
            .unhealthy("no symbolizer thread could be started; passing profiles on unsymbolized");
        while let Some(req) = input.recv().await {
            let _ = out.send(req).await;
        }
        return;
    }
    ctx.health.running();
    loop {
        tokio::select! {
            req = input.recv() => {
                let Some(req) = req else { break };
                let sent = tokio::select! {
                    r = ctx.health.waiting(tx.send(req)) => r.map_err(|e| e.0),
                    _ = ctx.deadline.cancelled() => break,
                };
                if let Err(env) = sent {
                    // Every thread is gone (cannot happen while panics are caught): refuse
                    // further input so receivers answer UNAVAILABLE instead of OK.
                    ctx.drops.count(DropReason::StageGone, input.close());
                    ctx.drops.give_up(env, DropReason::StageGone);
                    ctx.health.dead("every symbolizer thread has ended");
                    return;
                }
            }
            _ = ctx.deadline.cancelled() => break,
        }
    }
    if ctx.deadline.is_cancelled() {
        // What waits for a thread, or in the input, is given up; the threads finish the
        // request in hand and the fanout counts it if it is too late.
        let mut held = 0;
        while let Ok(r) = rx.try_recv() {
            held += sample_count(&r.req);
            r.acks.reject(DropReason::ShutdownDeadline.message());
        }
        give_up_input(&ctx, &mut input, held);
    }
    drop(tx);
    drop(rx);
    // The threads finish what is queued, then end.
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
    ctx.health.stopping();
}

#[cfg(test)]
mod tests;
