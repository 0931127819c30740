//! `stackline_sample`: runs on every cpu-clock tick of every sampled CPU and sends the
//! interrupted task's ids, comm, user and kernel stacks to user space.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::EbpfContext;
use aya_ebpf::bindings::{BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_get_stack,
    bpf_ktime_get_ns,
};
use aya_ebpf::macros::perf_event;
use aya_ebpf::programs::PerfEventContext;
use stackline_ebpf::shared::{MAX_STACK_DEPTH, RawSample, counter};
use stackline_ebpf::{CONFIG, SAMPLES, bump};

const STACK_BYTES: u32 = (MAX_STACK_DEPTH * 8) as u32;

/// Pending bytes above which a submit wakes the reader. Below it, the reader's own
/// 100 ms poll picks samples up: waking it for every sample costs an irq_work each.
/// Well under the smallest ring buffer user space creates (4 MiB).
const WAKEUP_BYTES: u64 = 512 * 1024;

#[perf_event]
pub fn stackline_sample(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (include_idle, kernel_stacks) = match CONFIG.get(0) {
        Some(c) => (c.include_idle != 0, c.kernel_stacks != 0),
        None => (false, true),
    };
    if pid_tgid as u32 == 0 && !include_idle {
        bump(counter::IDLE_SKIPPED);
        return 0;
    }
    let Some(mut entry) = SAMPLES.reserve::<RawSample>(0) else {
        bump(counter::RINGBUF_FULL);
        return 0;
    };
    let s = entry.as_mut_ptr();
    // SAFETY: `s` points at a reserved ring-buffer slot of size_of::<RawSample>();
    // every field is written before submit.
    unsafe {
        (*s).tgid = (pid_tgid >> 32) as u32;
        (*s).tid = pid_tgid as u32;
        (*s).cpu = bpf_get_smp_processor_id();
        (*s)._pad = 0;
        (*s).ktime_ns = bpf_ktime_get_ns();
        (*s).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        let n = bpf_get_stack(
            ctx.as_ptr(),
            (*s).user_stack.as_mut_ptr() as *mut c_void,
            STACK_BYTES,
            BPF_F_USER_STACK as u64,
        );
        (*s).user_stack_len = n;
        if n < 0 {
            bump(counter::USER_STACK_ERROR);
        }
        (*s).kernel_stack_len = if kernel_stacks {
            let k = bpf_get_stack(
                ctx.as_ptr(),
                (*s).kernel_stack.as_mut_ptr() as *mut c_void,
                STACK_BYTES,
                0,
            );
            if k < 0 {
                bump(counter::KERNEL_STACK_ERROR);
            }
            k
        } else {
            0
        };
    }
    let wake = if SAMPLES.query(BPF_RB_AVAIL_DATA as u64) > WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wake as u64);
    bump(counter::SUBMITTED);
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
