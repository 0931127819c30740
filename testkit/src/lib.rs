//! Test support for Stackline's integration tests (`tests/`) and benchmarks
//! (`benches/`), one module per kind of helper:
//!
//! - [`harness`]: the real binary as a child process; its metrics and health.
//! - [`backend`]: a real gRPC OTLP backend that records what it receives.
//! - [`ports`]: ports held without racing other tests.
//! - [`profiles`]: reading profiles back, and the official parser.
//! - [`workloads`]: C workloads and the tools that read their symbols.
//! - [`pki`]: certificates and generated secrets.
//! - [`faulty_fs`]: a FUSE file system that fails with EIO on demand.
//! - [`rates`]: the benchmarks' rate bookkeeping.
//!
//! The rule for a missing tool is the library's (`stackline::testing`): a test that
//! cannot run says why and is ignored, or fails under `CI=true`.
//! Everything is re-exported at the root, so tests write `common::Stackline`.

pub mod backend;
pub mod faulty_fs;
pub mod harness;
pub mod pki;
pub mod ports;
pub mod profiles;
pub mod rates;
pub mod workloads;

pub use backend::*;
pub use harness::*;
pub use pki::*;
pub use ports::*;
pub use profiles::*;
pub use rates::*;
pub use stackline::testing::*;
pub use workloads::*;

use std::path::PathBuf;

/// The repository's root (the main crate's directory).
pub const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The `stackline` binary of this build: cargo builds it for every integration test and
/// benchmark, beside their own executables (`target/<profile>/deps/..`).
pub fn stackline_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps");
    dir.join("stackline")
}
