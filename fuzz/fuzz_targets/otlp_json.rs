//! OTLP/JSON as a client may send it, through the streaming reader with the receiver's
//! budget: it must never panic, never take more than its budget (the reader counts what
//! it builds), and what it reads must survive the checks and a round trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stackline::otlp::{Checked, check, json, merge, split};

fuzz_target!(|data: &[u8]| {
    // A small budget, so that bodies over it are exercised too.
    let Ok(req) = json::from_slice_limited(data, 4 << 20) else {
        return;
    };
    // What was read writes back and reads again as the same request.
    let again = json::from_slice(&json::to_vec(&req)).expect("our own JSON reads back");
    // Compared as protobuf bytes: a NaN double is not equal to itself.
    assert_eq!(
        prost::Message::encode_to_vec(&again),
        prost::Message::encode_to_vec(&req),
        "a JSON round trip changed the request"
    );
    let Ok(req) = Checked::new(req) else {
        return;
    };
    let merged = merge([&req, &req]);
    check(&merged).expect("a merge of checked requests is valid");
    for part in split(merged, 2) {
        check(&part).expect("split parts are valid");
    }
});
