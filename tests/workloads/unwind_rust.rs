//! The unwinding workload in Rust, built by the tests with `rustc -C opt-level=3`
//! (release code, no frame pointers): 60% in hot_a, 30% in hot_b (both through spin),
//! 10% in read_zero (in the kernel). Usage: unwind_rust SECONDS
use std::hint::black_box;
use std::io::Read;
use std::time::{Duration, Instant};

#[inline(never)]
fn spin(n: u64) -> u64 {
    let mut s = 0u64;
    for i in 0..n {
        s = black_box(s.wrapping_add(i.wrapping_mul(7)) ^ (s >> 3));
    }
    s
}

#[inline(never)]
fn hot_a(n: u64) -> u64 {
    black_box(spin(n)) + 1
}

#[inline(never)]
fn hot_b(n: u64) -> u64 {
    // Not the same code as hot_a, or the linker folds the two into one.
    black_box(spin(n)) + 2
}

#[inline(never)]
fn read_zero(f: &mut std::fs::File, reads: u64, buf: &mut [u8]) -> u64 {
    let mut total = 0;
    for _ in 0..reads {
        total += f.read(buf).unwrap_or(0) as u64;
    }
    black_box(total)
}

fn cpu_time() -> Duration {
    let mut ts = std::mem::MaybeUninit::<[i64; 2]>::uninit();
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut [i64; 2]) -> i32;
    }
    // CLOCK_THREAD_CPUTIME_ID = 3
    unsafe { clock_gettime(3, ts.as_mut_ptr()) };
    let [s, ns] = unsafe { ts.assume_init() };
    Duration::new(s as u64, ns as u32)
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5.0);
    let mut f = std::fs::File::open("/dev/zero").expect("/dev/zero");
    let mut buf = vec![0u8; 1 << 16];
    let t = cpu_time();
    spin(20_000_000);
    let per_ms = (20_000_000.0 / (cpu_time() - t).as_secs_f64() / 1e3) as u64;
    let t = cpu_time();
    read_zero(&mut f, 2000, &mut buf);
    let reads_per_ms = (2000.0 / (cpu_time() - t).as_secs_f64() / 1e3) as u64 + 1;
    println!("ready {}", std::process::id());
    let start = Instant::now();
    let mut sink = 0;
    while start.elapsed().as_secs_f64() < seconds {
        sink += hot_a(per_ms * 60);
        sink += hot_b(per_ms * 30);
        sink += read_zero(&mut f, reads_per_ms * 10, &mut buf);
    }
    black_box(sink);
}
