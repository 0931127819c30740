//! Exporters: where profiles leave the pipeline.

pub mod debug;
pub mod file;
pub mod helper;
pub mod otlp;
