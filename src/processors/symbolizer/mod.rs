//! `symbolizer` processor: native and kernel frames to function, file, line and inlined
//! frames, with blazesym, on the agent (files on this host) and on the gateway (files
//! found by build ID in `debug_dirs`).
//!
//! blazesym's `Symbolizer` is neither Send nor Sync, so it runs on `workers` dedicated
//! threads, each owning one (and its cache), fed from the async stage by a bounded
//! queue; each thread sends what it finished on down the pipeline itself.

mod config;
pub mod files;
pub mod worker;

use tokio::task::JoinHandle;

pub use config::SymbolizerConfig;

use crate::config::parse_component;
use crate::pipeline::{Context, Fanout, Input, Processor, ProcessorFactory};

pub fn factory() -> ProcessorFactory {
    ProcessorFactory {
        type_name: "symbolizer",
        description: "resolves native and kernel frames to functions, files, lines and inlined frames (blazesym)",
        create: |_, v| {
            Ok(Box::new(SymbolizerProcessor {
                cfg: parse_component(v)?,
            }))
        },
    }
}

pub struct SymbolizerProcessor {
    cfg: SymbolizerConfig,
}

impl Processor for SymbolizerProcessor {
    fn start(self: Box<Self>, ctx: Context, mut input: Input, out: Fanout) -> JoinHandle<()> {
        let cfg = self.cfg;
        tokio::spawn(async move {
            let (tx, rx) = async_channel::bounded(cfg.workers * 2);
            let rt = tokio::runtime::Handle::current();
            let mut threads = Vec::new();
            for i in 0..cfg.workers {
                let (rx, out, rt, cfg) = (rx.clone(), out.clone(), rt.clone(), cfg.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("symbolizer-{i}"))
                    .spawn(move || {
                        let mut w = worker::Worker::new(cfg);
                        while let Ok(mut req) = rx.recv_blocking() {
                            w.symbolize(&mut req);
                            // Errors are counted by the fanout.
                            let _ = rt.block_on(out.send(req));
                        }
                    });
                match spawned {
                    Ok(t) => threads.push(t),
                    Err(e) => {
                        tracing::error!(processor = %ctx.id, error = %e, "cannot start a symbolizer thread")
                    }
                }
            }
            drop(rx);
            if threads.is_empty() {
                ctx.health.unhealthy(
                    "no symbolizer thread could be started; passing profiles on unsymbolized",
                );
                while let Some(req) = input.recv().await {
                    let _ = out.send(req).await;
                }
                return;
            }
            ctx.health.running();
            while let Some(req) = input.recv().await {
                if tx.send(req).await.is_err() {
                    break;
                }
            }
            drop(tx);
            // The threads finish what is queued, then end.
            let _ = tokio::task::spawn_blocking(move || {
                for t in threads {
                    let _ = t.join();
                }
            })
            .await;
            ctx.health.stopping();
        })
    }
}

#[cfg(test)]
mod tests;
