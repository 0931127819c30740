//! A request as a gateway's symbolizer sees it, with build IDs, paths and pids chosen
//! by the sender, against an empty debug directory and with only `debug_dirs` as a
//! source. Nothing may panic, and every location keeps its place.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use stackline::otlp::{ProfilesRequest, check};
use stackline::processors::symbolizer::{SymbolSource, SymbolizerConfig};

static DEBUG_DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Ok(mut req) = ProfilesRequest::decode(data) else {
        return;
    };
    if check(&req).is_err() {
        return;
    }
    let dir = DEBUG_DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"));
    let cfg = SymbolizerConfig {
        debug_dirs: vec![dir.path().to_path_buf()],
        sources: vec![SymbolSource::DebugDirs],
        ..Default::default()
    };
    let locations = req.dictionary.as_ref().map_or(0, |d| d.location_table.len());
    stackline::processors::symbolizer::worker::Worker::new(cfg).symbolize(&mut req);
    check(&req).expect("a symbolized request stays valid");
    assert_eq!(
        req.dictionary.as_ref().map_or(0, |d| d.location_table.len()),
        locations
    );
});
