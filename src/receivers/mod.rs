//! Receivers: where profiles enter a pipeline.

pub mod ebpf_profiler;
pub mod otlp;
