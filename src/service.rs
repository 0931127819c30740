//! Running the collector: configuration → telemetry → graph → wait for a signal → drain.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigErrors, MetricsLevel};
use crate::pipeline::{Factories, Graph};
use crate::telemetry::{self, Health};

/// The configuration used when no `--config` is given.
pub const DEFAULT_CONFIG: &str = include_str!("../config/default.yaml");

/// Loads the given files, or the built-in default when there are none.
pub fn load_config(files: &[PathBuf]) -> Result<Config, ConfigErrors> {
    if files.is_empty() {
        Config::from_yaml("<built-in default config>", DEFAULT_CONFIG)
    } else {
        Config::load(files)
    }
}

/// Loads and validates everything `run` would, without starting anything.
pub fn validate(files: &[PathBuf]) -> Result<Vec<String>, ConfigErrors> {
    let cfg = load_config(files)?;
    Graph::build(&cfg, &Factories::builtin()).map(|g| g.warnings)
}

/// Runs until SIGINT or SIGTERM, then drains. With `ready_file`, writes there (as JSON,
/// see [`crate::net::listen::Ready`]) the address every listener bound once the whole
/// pipeline runs, and removes it on a clean exit.
pub async fn run(files: &[PathBuf], ready_file: Option<&Path>) -> anyhow::Result<()> {
    let cfg = load_config(files)?;
    telemetry::init_logs(&cfg.service.telemetry.logs.level);
    let mut graph = Graph::build(&cfg, &Factories::builtin())?;
    for w in std::mem::take(&mut graph.warnings) {
        tracing::warn!("{w}");
    }
    let health = Health::default();
    let telemetry_stop = CancellationToken::new();
    let metrics = &cfg.service.telemetry.metrics;
    if metrics.level != MetricsLevel::None {
        let handle = telemetry::install_recorder();
        let addr = telemetry::serve(
            &metrics.address,
            handle,
            health.clone(),
            telemetry_stop.clone(),
        )
        .await?;
        tracing::info!(address = %addr, "serving /metrics and /health");
    }
    let running = graph
        .start(&health)
        .await
        .context("the pipeline could not start")?;
    let listeners: Vec<String> = crate::net::listen::bound()
        .iter()
        .map(|(key, addr)| format!("{key}={addr}"))
        .collect();
    tracing::info!(config = ?cfg.sources, ?listeners, "stackline is running");
    if let Some(path) = ready_file {
        crate::net::listen::write_ready_file(path).with_context(|| {
            format!(
                "cannot write the ready file {} (--ready-file); choose a writable path",
                path.display()
            )
        })?;
    }

    wait_for_signal(files, &running, cfg.clone()).await?;
    tracing::info!(timeout = ?cfg.service.shutdown_timeout, "shutting down: receivers stop, data in flight drains");
    let report = running.shutdown().await;
    if report.timed_out.is_empty() {
        tracing::info!(elapsed = ?report.elapsed, "all data in flight was drained");
    } else {
        tracing::warn!(components = ?report.timed_out, "shutdown timeout reached; what these components still held was counted as dropped");
    }
    telemetry_stop.cancel();
    if let Some(path) = ready_file {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Waits for SIGINT or SIGTERM. On SIGHUP, reads the configuration files again and,
/// if they are valid, hands them to the running components: those that can apply a
/// change live do (the `ebpf_profiler` receiver's `selection` and `probabilistic`);
/// an invalid configuration is logged and the running one stays.
async fn wait_for_signal(
    files: &[PathBuf],
    running: &crate::pipeline::Running,
    mut current: crate::config::Config,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot install a SIGHUP handler")?;
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => {
                r.context("cannot listen for SIGINT")?;
                return Ok(());
            }
            _ = term.recv() => return Ok(()),
            _ = hup.recv() => reload(files, running, &mut current),
        }
    }
}

/// Sections of a reloaded configuration that differ from the running one and that no
/// component applies live, as `kind.id` (the `ebpf_profiler` receivers compare their
/// own settings and say what waits for a restart).
fn changed_needing_restart(
    old: &crate::config::Config,
    new: &crate::config::Config,
) -> Vec<String> {
    let mut out = Vec::new();
    for (kind, a, b) in [
        ("receivers", &old.receivers, &new.receivers),
        ("processors", &old.processors, &new.processors),
        ("exporters", &old.exporters, &new.exporters),
    ] {
        let ids: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for id in ids {
            let live = kind == "receivers"
                && (id == "ebpf_profiler" || id.starts_with("ebpf_profiler/"))
                && a.contains_key(id)
                && b.contains_key(id);
            if !live && format!("{:?}", a.get(id)) != format!("{:?}", b.get(id)) {
                out.push(format!("{kind}.{id}"));
            }
        }
    }
    if format!("{:?}", old.service) != format!("{:?}", new.service) {
        out.push("service".to_owned());
    }
    out
}

fn reload(
    files: &[PathBuf],
    running: &crate::pipeline::Running,
    current: &mut crate::config::Config,
) {
    let checked =
        load_config(files).and_then(|cfg| Graph::build(&cfg, &Factories::builtin()).map(|_| cfg));
    match checked {
        Ok(cfg) => {
            tracing::info!(config = ?cfg.sources, "SIGHUP: configuration reloaded; components apply what they can change live");
            let waiting = changed_needing_restart(current, &cfg);
            if !waiting.is_empty() {
                tracing::warn!(sections = ?waiting, "SIGHUP: these changed sections take effect at the next restart");
            }
            *current = cfg.clone();
            running.reload(cfg);
        }
        Err(errs) => {
            tracing::error!("SIGHUP: the configuration is invalid, the running one stays:\n{errs}");
        }
    }
}
