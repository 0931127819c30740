//! Exporters: where profiles leave the pipeline.

pub mod debug;
pub mod file;
pub mod flamegraph;
pub mod otlp;
pub mod otlphttp;
pub mod output_dir;
pub mod pprof;
pub mod shell;
