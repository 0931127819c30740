//! Building the component graph from the configuration, starting it and stopping it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use figment::value::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ack::Envelope;
use super::channel::channel;
use super::{
    Context, Exporter, Factories, Fanout, Feeders, Input, Processor, ProcessorFactory, Receiver,
    StartError,
};
use crate::config::{ComponentId, Config, ConfigErrors};
use crate::telemetry::{Health, HealthReporter, names};

/// The signal every pipeline carries: Stackline handles profiles only.
const SIGNAL: &str = "profiles";

struct PlannedPipeline {
    id: String,
    processors: Vec<(ComponentId, Box<dyn Processor>)>,
    exporters: Vec<ComponentId>,
}

/// A validated graph of component instances, not yet started.
pub struct Graph {
    receivers: Vec<(ComponentId, Box<dyn Receiver>, Vec<usize>)>,
    pipelines: Vec<PlannedPipeline>,
    exporters: Vec<(ComponentId, Box<dyn Exporter>)>,
    shutdown_timeout: Duration,
    /// Problems that do not stop the graph (e.g. components defined but unused).
    pub warnings: Vec<String>,
}

fn known(types: impl Iterator<Item = &'static str>) -> String {
    let mut v: Vec<_> = types.collect();
    v.sort();
    v.join(", ")
}

/// Parses every component section of one kind, creating an instance per valid one.
fn create_all<F, T: ?Sized>(
    kind: &str,
    section: &BTreeMap<String, Value>,
    factories: &[F],
    type_name: impl Fn(&F) -> &'static str,
    create: impl Fn(&F, &ComponentId, &Value) -> Result<Box<T>, Vec<crate::config::ConfigError>>,
    errors: &mut ConfigErrors,
) -> BTreeMap<ComponentId, Box<T>> {
    let mut out = BTreeMap::new();
    for (key, value) in section {
        let path = format!("{kind}s.{key}");
        let id = match ComponentId::parse(key) {
            Ok(id) => id,
            Err(m) => {
                errors.push(&path, m);
                continue;
            }
        };
        let Some(f) = factories.iter().find(|f| type_name(f) == id.type_name) else {
            errors.push(
                &path,
                format!(
                    "unknown {kind} type `{}`; known {kind} types: {}",
                    id.type_name,
                    known(factories.iter().map(&type_name))
                ),
            );
            continue;
        };
        match create(f, &id, value) {
            Ok(c) => {
                out.insert(id, c);
            }
            Err(es) => errors.extend_under(&path, es),
        }
    }
    out
}

/// Resolves the ids a pipeline lists under one kind, reporting unknown and repeated ones.
fn resolve_ids(
    pid: &str,
    kind: &str,
    listed: &[String],
    defined: &BTreeSet<ComponentId>,
    errors: &mut ConfigErrors,
) -> Vec<ComponentId> {
    let path = format!("service.pipelines.{pid}.{kind}s");
    let mut out = Vec::new();
    for name in listed {
        match ComponentId::parse(name) {
            Err(m) => errors.push(&path, m),
            Ok(id) if !defined.contains(&id) => errors.push(
                &path,
                format!("{kind} `{name}` is used by the pipeline but not defined under `{kind}s`"),
            ),
            Ok(id) if out.contains(&id) => {
                errors.push(&path, format!("{kind} `{name}` is listed twice"))
            }
            Ok(id) => out.push(id),
        }
    }
    out
}

impl Graph {
    /// Validates the whole configuration and creates every component instance.
    /// Every error is collected before returning.
    pub fn build(cfg: &Config, factories: &Factories) -> Result<Graph, ConfigErrors> {
        let mut errors = cfg.problems.clone();
        let mut receivers = create_all(
            "receiver",
            &cfg.receivers,
            &factories.receivers,
            |f| f.type_name,
            |f, id, v| (f.create)(id, v),
            &mut errors,
        );
        let mut exporters = create_all(
            "exporter",
            &cfg.exporters,
            &factories.exporters,
            |f| f.type_name,
            |f, id, v| (f.create)(id, v),
            &mut errors,
        );
        // Processors get one instance per pipeline; this pass validates each section once.
        let processor_defs: BTreeMap<ComponentId, (&ProcessorFactory, &Value)> = {
            let valid = create_all(
                "processor",
                &cfg.processors,
                &factories.processors,
                |f| f.type_name,
                |f, id, v| (f.create)(id, v).map(|_| Box::new(())),
                &mut errors,
            );
            valid
                .into_keys()
                .filter_map(|id| {
                    let f = factories
                        .processors
                        .iter()
                        .find(|f| f.type_name == id.type_name)?;
                    let v = cfg.processors.get(&id.to_string())?;
                    Some((id, (f, v)))
                })
                .collect()
        };
        // Ids that are defined, valid or not, so a pipeline naming an invalid one is not
        // reported a second time as undefined.
        let defined = |section: &BTreeMap<String, Value>| -> BTreeSet<ComponentId> {
            section
                .keys()
                .filter_map(|k| ComponentId::parse(k).ok())
                .collect()
        };
        let (def_r, def_p, def_e) = (
            defined(&cfg.receivers),
            defined(&cfg.processors),
            defined(&cfg.exporters),
        );

        if cfg.service.pipelines.is_empty() {
            errors.push(
                "service.pipelines",
                "no pipeline is defined; add one, e.g. `profiles: { receivers: [otlp], processors: [batch], exporters: [file] }`",
            );
        }
        let mut warnings = Vec::new();
        let mut pipelines = Vec::new();
        let mut receiver_pipelines: BTreeMap<ComponentId, Vec<usize>> = BTreeMap::new();
        let mut used_exporters = BTreeSet::new();
        let mut used_processors = BTreeSet::new();
        for (pid, p) in &cfg.service.pipelines {
            let path = format!("service.pipelines.{pid}");
            match ComponentId::parse(pid) {
                Ok(id) if id.type_name == SIGNAL => {}
                _ => errors.push(
                    &path,
                    format!("unsupported pipeline id `{pid}`: Stackline carries profiles only, so pipelines are named `profiles` or `profiles/<name>`"),
                ),
            }
            if p.receivers.is_empty() {
                errors.push(
                    &format!("{path}.receivers"),
                    "a pipeline needs at least one receiver",
                );
            }
            if p.exporters.is_empty() {
                errors.push(
                    &format!("{path}.exporters"),
                    "a pipeline needs at least one exporter",
                );
            }
            let r_ids = resolve_ids(pid, "receiver", &p.receivers, &def_r, &mut errors);
            let p_ids = resolve_ids(pid, "processor", &p.processors, &def_p, &mut errors);
            let e_ids = resolve_ids(pid, "exporter", &p.exporters, &def_e, &mut errors);
            let index = pipelines.len();
            for r in &r_ids {
                receiver_pipelines.entry(r.clone()).or_default().push(index);
            }
            let feeders = Feeders {
                pipeline: pid,
                receivers: r_ids
                    .iter()
                    .filter_map(|r| {
                        let f = factories
                            .receivers
                            .iter()
                            .find(|f| f.type_name == r.type_name)?;
                        Some((r, f.origin))
                    })
                    .collect(),
            };
            let mut processors = Vec::new();
            for id in p_ids {
                used_processors.insert(id.clone());
                if let Some((f, v)) = processor_defs.get(&id)
                    && let Ok(instance) = (f.create)(&id, v)
                {
                    if let Some(w) = f.check_feeders.and_then(|check| check(v, &feeders)) {
                        warnings.push(format!("processors.{id}: {w}"));
                    }
                    processors.push((id, instance));
                }
            }
            used_exporters.extend(e_ids.iter().cloned());
            pipelines.push(PlannedPipeline {
                id: pid.clone(),
                processors,
                exporters: e_ids,
            });
        }

        for (kind, defined, used) in [
            (
                "receiver",
                &def_r,
                receiver_pipelines.keys().cloned().collect::<BTreeSet<_>>(),
            ),
            ("processor", &def_p, used_processors),
            ("exporter", &def_e, used_exporters.clone()),
        ] {
            for id in defined.difference(&used) {
                warnings.push(format!(
                    "{kind}s.{id}: defined but not used by any pipeline; it will not run"
                ));
            }
        }
        errors.into_result(())?;

        let receivers = receiver_pipelines
            .into_iter()
            .filter_map(|(id, ps)| receivers.remove(&id).map(|r| (id, r, ps)))
            .collect();
        let exporters = used_exporters
            .into_iter()
            .filter_map(|id| exporters.remove(&id).map(|e| (id, e)))
            .collect();
        Ok(Graph {
            receivers,
            pipelines,
            exporters,
            shutdown_timeout: cfg.service.shutdown_timeout,
            warnings,
        })
    }

    /// Starts exporters, then processors, then receivers. If any fails to start, what
    /// was started is stopped and the error names the component.
    pub async fn start(self, health: &Health) -> Result<Running, GraphError> {
        let shutdown = CancellationToken::new();
        let deadline = CancellationToken::new();
        let mut running = Running {
            shutdown: shutdown.clone(),
            deadline: deadline.clone(),
            receivers: Vec::new(),
            others: Vec::new(),
            timeout: self.shutdown_timeout,
            reload: tokio::sync::watch::channel(None).0,
        };
        let (reload_tx, reload) = tokio::sync::watch::channel(None);
        running.reload = reload_tx;
        let ctx = |kind: &str, id: &ComponentId, suffix: &str| Context {
            reload: reload.clone(),
            id: id.clone(),
            component: format!("{kind}/{id}"),
            drops: super::Drops::new(&format!("{kind}/{id}")),
            health: health.reporter(format!("{kind}/{id}{suffix}")),
            shutdown: shutdown.clone(),
            deadline: deadline.clone(),
        };

        let mut exporter_inputs: HashMap<ComponentId, mpsc::Sender<Envelope>> = HashMap::new();
        for (id, exporter) in self.exporters {
            let (tx, rx) = channel();
            let c = ctx("exporter", &id, "");
            let accepted =
                metrics::counter!(names::EXPORTER_ACCEPTED, "exporter" => id.to_string());
            let input = Input::new(rx, Some(accepted)).watched(c.health.clone());
            let watch = (c.health.clone(), shutdown.clone());
            match exporter.start(c, input).await {
                Ok(h) => running
                    .others
                    .push((format!("exporter/{id}"), supervised(h, watch))),
                Err(source) => return Err(running.abort("exporter", &id, source).await),
            }
            exporter_inputs.insert(id, tx);
        }

        let mut pipeline_entries: Vec<Vec<mpsc::Sender<Envelope>>> = Vec::new();
        for p in self.pipelines {
            let mut next: Vec<_> = p
                .exporters
                .iter()
                .filter_map(|id| exporter_inputs.get(id).cloned())
                .collect();
            for (id, processor) in p.processors.into_iter().rev() {
                let (tx, rx) = channel();
                let label = id.to_string();
                let incoming =
                    metrics::counter!(names::PROCESSOR_INCOMING, "processor" => label.clone());
                let outgoing =
                    metrics::counter!(names::PROCESSOR_OUTGOING, "processor" => label.clone());
                let c = ctx("processor", &id, &format!("@{}", p.id));
                let input = Input::new(rx, Some(incoming)).watched(c.health.clone());
                let out = Fanout::new(next, &c, Some(outgoing));
                let watch = (c.health.clone(), shutdown.clone());
                let h = processor.start(c, input, out);
                running
                    .others
                    .push((format!("processor/{id}@{}", p.id), supervised(h, watch)));
                next = vec![tx];
            }
            pipeline_entries.push(next);
        }
        // The graph keeps no sender of its own: once receivers drop theirs, stages see
        // their input end and drain in order.
        drop(exporter_inputs);

        for (id, receiver, ps) in self.receivers {
            let outputs = ps
                .iter()
                .flat_map(|&i| pipeline_entries[i].iter().cloned())
                .collect();
            let c = ctx("receiver", &id, "");
            let out = Fanout::new(outputs, &c, None);
            let watch = (c.health.clone(), shutdown.clone());
            match receiver.start(c, out).await {
                Ok(h) => running
                    .receivers
                    .push((format!("receiver/{id}"), supervised(h, watch))),
                Err(source) => return Err(running.abort("receiver", &id, source).await),
            }
        }
        Ok(running)
    }
}

/// Watches a component's task: if it ends while the pipeline runs (a panic that
/// escaped, or a return), the component is dead, and `/health/live` says so.
fn supervised(
    task: JoinHandle<()>,
    (health, shutdown): (HealthReporter, CancellationToken),
) -> JoinHandle<()> {
    // Aborting the supervisor aborts the component's task with it.
    let guard = AbortOnDrop(task.abort_handle());
    tokio::spawn(async move {
        let _guard = guard;
        match task.await {
            Err(e) if e.is_panic() => {
                let message = super::supervise::panic_message(&*e.into_panic());
                super::supervise::record_panic(health.key(), &message);
                health.dead(format!("its task panicked: {message}"));
            }
            Err(_) => health.dead("its task was cancelled"),
            Ok(()) if !shutdown.is_cancelled() => {
                health.dead("its task ended while the pipeline was running")
            }
            Ok(()) => {}
        }
    })
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("{kind} `{id}` failed to start: {source}")]
    Start {
        kind: &'static str,
        id: ComponentId,
        source: StartError,
    },
}

/// A started graph.
pub struct Running {
    shutdown: CancellationToken,
    deadline: CancellationToken,
    receivers: Vec<(String, JoinHandle<()>)>,
    others: Vec<(String, JoinHandle<()>)>,
    timeout: Duration,
    reload: tokio::sync::watch::Sender<Option<std::sync::Arc<crate::config::Config>>>,
}

/// How a shutdown went.
#[derive(Debug)]
pub struct ShutdownReport {
    pub elapsed: Duration,
    /// Components that had not finished draining within the shutdown timeout.
    pub timed_out: Vec<String>,
}

impl Running {
    /// Hands a reloaded, validated configuration to every component (see
    /// [`Context::reload`]).
    pub fn reload(&self, cfg: crate::config::Config) {
        self.reload.send_replace(Some(std::sync::Arc::new(cfg)));
    }

    async fn abort(
        mut self,
        kind: &'static str,
        id: &ComponentId,
        source: StartError,
    ) -> GraphError {
        self.timeout = Duration::from_secs(5);
        self.shutdown().await;
        GraphError::Start {
            kind,
            id: id.clone(),
            source,
        }
    }

    /// Stops receivers, then waits for everything in flight to drain within the
    /// shutdown timeout; past it, components are told to count what they hold as dropped.
    pub async fn shutdown(self) -> ShutdownReport {
        let start = Instant::now();
        self.shutdown.cancel();
        let mut pending: Vec<(String, JoinHandle<()>)> =
            self.receivers.into_iter().chain(self.others).collect();
        let until = tokio::time::Instant::now() + self.timeout;
        let mut idx = 0;
        while idx < pending.len() {
            // Panics are counted and logged by the supervisor task itself.
            if tokio::time::timeout_at(until, &mut pending[idx].1)
                .await
                .is_err()
            {
                break;
            }
            idx += 1;
        }
        let mut timed_out = Vec::new();
        if idx < pending.len() {
            tracing::warn!(
                timeout = ?self.timeout,
                "shutdown timeout reached; components still draining will count what they hold as dropped"
            );
            self.deadline.cancel();
            // Every stage ends promptly once the deadline fires; this grace only covers
            // a component blocked in a system call.
            let grace = tokio::time::Instant::now() + Duration::from_secs(5);
            for (name, h) in pending.iter_mut().skip(idx) {
                if tokio::time::timeout_at(grace, &mut *h).await.is_err() {
                    tracing::error!(component = %name, "did not end within 5s of the shutdown deadline; abandoning it (what it held is not counted)");
                    h.abort();
                }
                timed_out.push(name.clone());
            }
        }
        ShutdownReport {
            elapsed: start.elapsed(),
            timed_out,
        }
    }
}
