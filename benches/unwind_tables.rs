//! Unwind tables: memory per executable and build time, for this machine's libc and the
//! stackline binary, beside the baseline of gimli alone evaluating every FDE's rows
//! (the part of a build no compact format can skip). Prints both and their ratio.
//!
//! Run with `cargo bench --bench unwind_tables` (after `cargo build --release`, whose
//! binary is one of the inputs).

use std::time::{Duration, Instant};

use stackline::receivers::ebpf_profiler::unwind::table::{build, fdes};

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = None;
    for _ in 0..n {
        let t = Instant::now();
        let v = f();
        let d = t.elapsed();
        if best.as_ref().is_none_or(|(b, _)| d < *b) {
            best = Some((d, v));
        }
    }
    best.unwrap()
}

fn main() {
    let stackline = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/stackline");
    println!(
        "{:<38} {:>7} {:>8} {:>7} {:>10} {:>9} {:>9} {:>6}",
        "executable", "FDEs", "rows", "pages", "bytes", "build ms", "gimli ms", "ratio"
    );
    for path in ["/lib/x86_64-linux-gnu/libc.so.6", stackline] {
        let Ok(data) = std::fs::read(path) else {
            println!("{path}: not found (build it first)");
            continue;
        };
        let (built, table) = best_of(5, || build(&data[..]).expect("a table"));
        let (parsed, _) = best_of(5, || fdes(&data[..]).expect("FDEs"));
        let name = std::path::Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!(
            "{:<38} {:>7} {:>8} {:>7} {:>10} {:>9.2} {:>9.2} {:>6.2}",
            name,
            table.stats.fdes,
            table.stats.rows,
            table.pages,
            table.bytes(),
            built.as_secs_f64() * 1e3,
            parsed.as_secs_f64() * 1e3,
            built.as_secs_f64() / parsed.as_secs_f64()
        );
    }
}
