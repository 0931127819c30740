//! Bytes as a gateway receives them, through everything a request meets: the wire
//! prescan, decoding, the index checks, merge and split, pprof and folded stacks, and
//! OTLP/JSON out and back in. Nothing may panic; what the checks accept must convert.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use stackline::otlp::{Checked, ProfilesRequest, check, limits, merge, split};

fuzz_target!(|data: &[u8]| {
    let strict = limits::DecodeLimits {
        max_samples: 100_000,
        max_stacks: 100_000,
        max_locations: 100_000,
        max_stack_depth: 16_384,
        max_decoded_size_mib: 64,
    };
    if limits::prescan(data, &strict).is_err() {
        return;
    }
    let Ok(req) = ProfilesRequest::decode(data) else {
        return;
    };
    let Ok(req) = Checked::new(req) else {
        return;
    };
    let merged = merge([&req, &req]);
    check(&merged).expect("a merge of checked requests is valid");
    for part in split(merged, 3) {
        check(&part).expect("split parts are valid");
    }
    let _ = stackline::exporters::pprof::convert::convert(&req, true);
    let _ = stackline::exporters::flamegraph::fold(&req, true);
    let json = stackline::otlp::json::to_vec(&req);
    let _ = stackline::otlp::json::from_slice(&json);
    // JSON as a client may send it.
    let _ = stackline::otlp::json::from_slice(data);
});
