//! What a component is: a factory that turns its config section into an instance,
//! and the trait the instance implements for its kind.

use async_trait::async_trait;
use figment::value::Value;
use tokio::task::JoinHandle;

use super::{Context, Fanout, Input};
use crate::config::{ComponentId, ConfigError};

/// Why a component could not start (port in use, unwritable directory…).
pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// Produces data. `start` acquires resources (sockets, kernel objects) and returns
/// the task that feeds `out` until `ctx.shutdown` fires; dropping `out` at the end
/// is what lets the rest of the pipeline drain.
#[async_trait]
pub trait Receiver: Send {
    async fn start(
        self: Box<Self>,
        ctx: Context,
        out: Fanout,
    ) -> Result<JoinHandle<()>, StartError>;
}

/// Transforms data. Runs until `input` ends, then flushes what it holds and returns.
pub trait Processor: Send {
    fn start(self: Box<Self>, ctx: Context, input: Input, out: Fanout) -> JoinHandle<()>;
}

/// Delivers data. Runs until `input` ends and everything accepted is delivered, or
/// until `ctx.deadline` fires, when what is left is counted as dropped.
#[async_trait]
pub trait Exporter: Send {
    async fn start(
        self: Box<Self>,
        ctx: Context,
        input: Input,
    ) -> Result<JoinHandle<()>, StartError>;
}

/// Parses a component's config section (relative error paths) and builds an
/// instance, without acquiring any resource yet: `stackline validate` calls this too.
pub type CreateFn<T> = fn(&ComponentId, &Value) -> Result<Box<T>, Vec<ConfigError>>;

/// Where a receiver's data comes from: what a processor may need to know about what
/// feeds it (the symbolizer must not read this host's files for another host's data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Made on this host (the eBPF receiver: its pids and paths are this host's).
    ThisHost,
    /// Sent by other machines (the OTLP receiver: pids and paths the sender chose).
    Network,
}

pub struct ReceiverFactory {
    pub type_name: &'static str,
    pub description: &'static str,
    pub origin: Origin,
    pub create: CreateFn<dyn Receiver>,
}

/// What a processor is told about one of its pipelines: the pipeline's id and the
/// receivers that feed it, with their origins.
pub struct Feeders<'a> {
    pub pipeline: &'a str,
    pub receivers: Vec<(&'a ComponentId, Origin)>,
}

/// Checks a processor's (valid) config section against what feeds it in one pipeline
/// and returns a warning (without the `processors.ID: ` prefix) when the combination is
/// legal but probably wrong.
pub type FeedersCheck = fn(&Value, &Feeders) -> Option<String>;

pub struct ProcessorFactory {
    pub type_name: &'static str,
    pub description: &'static str,
    pub create: CreateFn<dyn Processor>,
    /// Called once per pipeline the processor is in, when the graph is built.
    pub check_feeders: Option<FeedersCheck>,
}

pub struct ExporterFactory {
    pub type_name: &'static str,
    pub description: &'static str,
    pub create: CreateFn<dyn Exporter>,
}

/// Every component type the binary knows, by kind.
pub struct Factories {
    pub receivers: Vec<ReceiverFactory>,
    pub processors: Vec<ProcessorFactory>,
    pub exporters: Vec<ExporterFactory>,
}

impl Factories {
    /// All component types: the one place a new component is registered.
    pub fn builtin() -> Self {
        Factories {
            receivers: vec![
                crate::receivers::otlp::factory(),
                crate::receivers::ebpf_profiler::factory(),
            ],
            processors: vec![
                crate::processors::batch::factory(),
                crate::processors::memory_limiter::factory(),
                crate::processors::symbolizer::factory(),
            ],
            exporters: vec![
                crate::exporters::otlp::factory(),
                crate::exporters::otlphttp::factory(),
                crate::exporters::file::factory(),
                crate::exporters::debug::factory(),
                crate::exporters::pprof::factory(),
                crate::exporters::flamegraph::factory(),
            ],
        }
    }
}
