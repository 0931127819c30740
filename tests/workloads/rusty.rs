// Known Rust functions for symbolizer tests: a generic-free module path, an
// always-inlined helper, and main. Line numbers are asserted by the tests: keep them.
mod engine {
    #[inline(always)]
    pub fn mix(x: u64) -> u64 {
        x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(7) // line 6
    }
    #[inline(never)]
    pub fn churn(n: u64) -> u64 {
        let mut acc = 0u64;
        for i in 0..n {
            acc ^= mix(i); // line 12
        }
        acc
    }
}
fn main() {
    let n: u64 = std::env::args().count() as u64 * 1_000_000;
    println!("{}", engine::churn(n));
}
