//! Addresses per second for 10,000 addresses of one large binary (this benchmark's own
//! executable, which holds all of Stackline), cold and warm: the symbolizer processor,
//! blazesym called directly, and binutils' `addr2line -f -i -C` and `llvm-symbolizer`
//! on the same addresses, in one run.   Run with `cargo bench --bench symbolizer`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{Input, Symbolizer};
use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use object::{Object, ObjectSymbol, SymbolKind};
use stackline::host::elf::build_id_at;
use stackline::otlp::synth::native_request;
use stackline::processors::symbolizer::SymbolizerConfig;
use stackline::processors::symbolizer::files::segments;
use stackline::processors::symbolizer::worker::Worker;

use common::Tally;
use stackline_testkit as common;

const N: usize = 10_000;

static BLAZESYM_COLD: Tally = Tally::new();
static PROCESSOR_COLD: Tally = Tally::new();
static PROCESSOR_WARM: Tally = Tally::new();

/// N addresses spread over the text symbols of `path`, deterministically.
fn addresses(path: &Path) -> Vec<u64> {
    let data = std::fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let mut syms: Vec<(u64, u64)> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.size() > 16)
        .map(|s| (s.address(), s.size()))
        .collect();
    syms.sort();
    syms.dedup();
    (0..N)
        .map(|i| {
            let (a, size) = syms[(i * 7919) % syms.len()];
            a + (i as u64 * 104_729) % size
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let exe = std::env::current_exe().unwrap();
    let addrs = addresses(&exe);
    let build_id = build_id_at(&exe).unwrap().map(|b| b.as_str().to_owned());
    let text = segments(&exe)
        .unwrap()
        .into_iter()
        .find(|s| s.executable)
        .map(|s| (s.offset, s.vaddr))
        .unwrap();
    let req = native_request(
        exe.to_str().unwrap(),
        build_id.as_deref(),
        text,
        &addrs,
        None,
    );
    let cfg = || SymbolizerConfig {
        debug_dirs: vec![],
        ..Default::default()
    };

    let mut g = c.benchmark_group("symbolize_10k");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("blazesym_direct_cold", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let s = Symbolizer::new();
                let r = s
                    .symbolize(&Source::Elf(Elf::new(&exe)), Input::VirtOffset(&addrs))
                    .unwrap();
                std::hint::black_box(r);
                let d = t.elapsed();
                BLAZESYM_COLD.add(d, N as u64);
                total += d;
            }
            total
        })
    });
    g.bench_function("processor_cold", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut r = req.clone();
                let t = Instant::now();
                let mut w = Worker::new(cfg());
                w.symbolize(&mut r);
                let d = t.elapsed();
                PROCESSOR_COLD.add(d, N as u64);
                total += d;
                std::hint::black_box(r);
            }
            total
        })
    });
    let mut warm = Worker::new(cfg());
    warm.symbolize(&mut req.clone());
    g.bench_function("processor_warm", |b| {
        b.iter_batched(
            || req.clone(),
            |mut r| {
                let t = Instant::now();
                warm.symbolize(&mut r);
                PROCESSOR_WARM.add(t.elapsed(), N as u64);
                r
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
    report(&exe, &addrs);
}

/// Runs an external symbolizer once over all addresses (read from stdin); its rate.
fn external(cmd: &str, args: &[&str], addrs: &[u64]) -> Option<f64> {
    let input: String = addrs.iter().map(|a| format!("{a:#x}\n")).collect();
    let t = Instant::now();
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(input.as_bytes()).ok()?;
    child
        .wait()
        .ok()?
        .success()
        .then(|| addrs.len() as f64 / t.elapsed().as_secs_f64())
}

fn report(exe: &Path, addrs: &[u64]) {
    let e = exe.to_str().unwrap();
    let a2l = external("addr2line", &["-f", "-i", "-C", "-e", e], addrs);
    let llvm = ["llvm-symbolizer", "/usr/lib/llvm-22/bin/llvm-symbolizer"]
        .iter()
        .find_map(|c| {
            external(
                c,
                &["--inlining", "--demangle", &format!("--obj={e}")],
                addrs,
            )
        });
    let (bz, pc, pw) = (
        BLAZESYM_COLD.rate(),
        PROCESSOR_COLD.rate(),
        PROCESSOR_WARM.rate(),
    );
    let size = std::fs::metadata(exe).map(|m| m.len() >> 20).unwrap_or(0);
    println!();
    println!("10,000 addresses of {} ({size} MiB):", exe.display());
    println!("  blazesym direct, cold     {bz:>12.0} addresses/s");
    println!(
        "  processor, cold           {pc:>12.0} addresses/s   blazesym/processor time ratio {:.2} (target <= 1.2)",
        bz / pc
    );
    println!(
        "  processor, warm           {pw:>12.0} addresses/s   warm/cold speed-up {:.0}x (target >= 50x)",
        pw / pc
    );
    copy_cost(exe);
    match a2l {
        Some(r) => println!(
            "  addr2line -f -i -C, cold  {r:>12.0} addresses/s   processor cold is {:.1}x faster",
            pc / r
        ),
        None => println!("  addr2line: not available"),
    }
    match llvm {
        Some(r) => println!(
            "  llvm-symbolizer, cold     {r:>12.0} addresses/s   processor cold is {:.1}x faster",
            pc / r
        ),
        None => println!("  llvm-symbolizer: not available (apt-get install llvm)"),
    }
}

/// What the symbolizer pays for a binary its owner could shrink (copied into a sealed
/// memfd before blazesym maps it), against reading the same file into memory.
fn copy_cost(exe: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bin");
    std::fs::copy(exe, &f).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
    let best = |run: &dyn Fn() -> u64| {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                assert!(run() > 0);
                t.elapsed()
            })
            .min()
            .unwrap()
    };
    let read = best(&|| std::fs::read(&f).unwrap().len() as u64);
    let copy = best(&|| {
        let (_copy, n) =
            stackline::host::open::mappable(std::fs::File::open(&f).unwrap(), 1 << 40).unwrap();
        n
    });
    let mib = std::fs::metadata(&f).unwrap().len() as f64 / (1 << 20) as f64;
    println!(
        "  sealed memfd copy of it   {:>12.1} ms ({:.0} MiB/s)   std::fs::read {:.1} ms   copy/read time ratio {:.2}",
        copy.as_secs_f64() * 1e3,
        mib / copy.as_secs_f64(),
        read.as_secs_f64() * 1e3,
        copy.as_secs_f64() / read.as_secs_f64()
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
