//! Stackline: a continuous-profiling collector in the mould of the OpenTelemetry Collector.
//!
//! Configuration ([`config`]) describes receivers, processors and exporters and the
//! pipelines that connect them; [`pipeline`] builds and runs that graph; [`otlp`]
//! holds the data model and the dictionary operations every component uses.
//!
//! Unsafe code is denied here and allowed only in the modules whose doc says they own
//! it ([`host`] and the eBPF receiver's `bpf`); `tests/layout.rs` holds that list.
#![deny(unsafe_code)]

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
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
