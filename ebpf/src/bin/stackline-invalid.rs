//! Test only: the same program name and maps as the profiler, but the program reads a
//! map value without checking it for NULL, which the verifier must reject
//! ("invalid mem access 'map_value_or_null'"). The key is the CPU number, not a
//! constant: kernels since 6.x prove constant in-range array lookups non-NULL.
//! Tests load it to exercise failure handling.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_map_lookup_elem};
use aya_ebpf::macros::perf_event;
use aya_ebpf::programs::PerfEventContext;
use stackline_ebpf::{COUNTERS, SAMPLES, bump};

#[perf_event]
pub fn stackline_sample(_ctx: PerfEventContext) -> u32 {
    // SAFETY: a helper without preconditions.
    let key: u32 = unsafe { bpf_get_smp_processor_id() };
    // SAFETY: deliberately unsound for the verifier to catch; never attached.
    let v = unsafe {
        let p = bpf_map_lookup_elem(
            &COUNTERS as *const _ as *mut c_void,
            &key as *const u32 as *const c_void,
        ) as *const u64;
        core::ptr::read_volatile(p)
    };
    if v == 42 {
        let _ = SAMPLES.output::<u64>(v, 0);
    }
    bump(0);
    0
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
