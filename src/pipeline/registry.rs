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

pub struct ReceiverFactory {
    pub type_name: &'static str,
    pub description: &'static str,
    pub create: CreateFn<dyn Receiver>,
}

pub struct ProcessorFactory {
    pub type_name: &'static str,
    pub description: &'static str,
    pub create: CreateFn<dyn Processor>,
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
