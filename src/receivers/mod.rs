//! Receivers: where profiles enter a pipeline.

pub mod otlp;
