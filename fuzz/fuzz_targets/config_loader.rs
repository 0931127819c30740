//! Configuration text as an operator (or a templating mistake) writes it: parsed,
//! checked and built into a pipeline graph without starting anything. Errors are
//! fine; panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stackline::config::Config;
use stackline::pipeline::{Factories, Graph};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = Config::from_yaml("fuzz.yaml", text) {
        let _ = Graph::build(&cfg, &Factories::builtin());
    }
});
