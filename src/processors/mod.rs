//! Processors: per-pipeline stages between receivers and exporters.

pub mod batch;
pub mod symbolizer;
