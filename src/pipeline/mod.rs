//! The whole flow of data, in one folder.
//!
//! ```text
//!  receivers ──▶ processors (one instance per pipeline) ──▶ fanout ──▶ exporters
//! ```
//! - [`registry`]: component factories by type, and the traits every component implements.
//! - [`graph`]: builds the component graph from the configuration (reporting every
//!   error at once), starts it exporters → processors → receivers, and stops it
//!   receivers first, letting everything in flight drain.
//! - [`channel`]: the bounded channels between stages and the fanout. A full channel
//!   makes the sender wait, so a slow exporter slows its pipeline instead of growing memory.
//!
//! - [`stage`]: what every stage needs, written once: drops counted by typed reason,
//!   the per-request processor loop with its shutdown drain and health.
//! - [`supervise`]: catching panics per request, so one bad request costs one request
//!   and the component keeps serving.
//!
//! Data is an OTLP [`ProfilesRequest`](crate::otlp::ProfilesRequest) with its own dictionary.
//! Draining works by dropping senders: when receivers stop, their fanouts drop, each
//! processor sees its input end, flushes and drops its own fanout, and so on down to
//! the exporters. Past `service.shutdown_timeout` the [`Context::deadline`] token fires:
//! every stage stops waiting, counts whatever it still holds in
//! `stackline_pipeline_dropped_samples_total{component, reason="shutdown_deadline"}`
//! (a fanout waiting for room downstream counts its request the same way) and ends.
//! Exporters with a persistent queue keep what is queued on disk for the next start.

pub mod ack;
pub mod channel;
pub mod graph;
pub mod registry;
pub mod stage;
pub mod supervise;

use tokio_util::sync::CancellationToken;

use crate::config::ComponentId;
use crate::telemetry::HealthReporter;

pub use ack::{Ack, Acks, Envelope};
pub use channel::{Fanout, Input};
pub use graph::{Graph, Running};
pub use registry::{
    Exporter, ExporterFactory, Factories, Feeders, Origin, Processor, ProcessorFactory, Receiver,
    ReceiverFactory, StartError,
};
pub use stage::{DropReason, Drops, Verdict, give_up_input, run_per_request};
pub use supervise::{Panicked, catch, catch_async};

/// What a running component gets from the pipeline.
#[derive(Debug, Clone)]
pub struct Context {
    pub id: ComponentId,
    /// `kind/id`, e.g. `exporter/otlp/backend`: the `component` label of pipeline metrics.
    pub component: String,
    pub health: HealthReporter,
    /// Fires when receivers must stop accepting data (SIGINT/SIGTERM).
    pub shutdown: CancellationToken,
    /// Fires when the drain time is over: stop retrying and count what is left as dropped.
    pub deadline: CancellationToken,
    /// This component's drop counters, by reason.
    pub drops: Drops,
    /// The configuration, each time it is reloaded (SIGHUP), already validated. A
    /// component that can apply a change live reads its part; the others ignore it.
    pub reload: Reloads,
}

/// Reloaded configurations, newest first: `has_changed` says a new one is there.
pub type Reloads = tokio::sync::watch::Receiver<Option<std::sync::Arc<crate::config::Config>>>;

impl Context {
    /// A context outside any graph, with its own health table and tokens (for tests,
    /// benchmarks and embedding one component alone).
    pub fn standalone(kind: &str, id: ComponentId) -> Self {
        let health = crate::telemetry::Health::default();
        let component = format!("{kind}/{id}");
        Context {
            health: health.reporter(component.clone()),
            drops: Drops::new(&component),
            component,
            id,
            shutdown: CancellationToken::new(),
            deadline: CancellationToken::new(),
            // Nothing ever reloads a standalone component.
            reload: tokio::sync::watch::channel(None).1,
        }
    }
}
