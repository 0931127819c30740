//! Stackline: a continuous-profiling collector in the mould of the OpenTelemetry Collector.
//!
//! Configuration ([`config`]) describes receivers, processors and exporters and the
//! pipelines that connect them; [`pipeline`] builds and runs that graph; [`otlp`]
//! holds the data model and the dictionary operations every component uses.

pub mod auth;
pub mod config;
pub mod exporters;
pub mod host;
pub mod net;
pub mod otlp;
pub mod pipeline;
pub mod processors;
pub mod receivers;
pub mod service;
pub mod telemetry;
#[doc(hidden)]
pub mod testing;
