//! `stackline_sample` runs on every cpu-clock tick of every sampled CPU: it records the
//! interrupted task's ids, comm and kernel stack, finds its user registers, and
//! tail-calls a walker for the user stack: `stackline_unwind` in the native modes,
//! which walks [`FRAMES_PER_PROG`] frames by unwind table per run, or
//! `stackline_fp_walk` in `frame_pointer` mode, which follows RBP
//! [`FP_FRAMES_PER_PROG`] frames per run. Each tail-calls itself for more. The finished
//! record goes to user space with only the frames it holds.

#![no_std]
#![no_main]

use aya_ebpf::EbpfContext;
use aya_ebpf::bindings::{
    BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, pt_regs,
};
use aya_ebpf::helpers::generated::{
    bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user, bpf_ringbuf_output,
};
use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_get_stack,
    bpf_ktime_get_ns,
};
use aya_ebpf::macros::perf_event;
use aya_ebpf::programs::PerfEventContext;
use core::ffi::c_void;
use core::mem::size_of;
use stackline_ebpf::shared::{
    Event, FRAME_BY_FP, FRAME_MASK, MAPPING_CACHE, MAPPING_KEY_BITS, MAX_KERNEL_FRAMES,
    MAX_USER_FRAMES, MappingKeyData, RecordHeader, StackWindow, State, WINDOW_BYTES, WINDOW_MASK,
    counter, event, image_tag, mode, prog,
};
use stackline_ebpf::unwind::{Chunk, Memory, PAGE_SIZE, Regs, fp_step, lookup, step, stop};
use stackline_ebpf::{
    CONFIG, EVENT_EVERY_NS, EVENT_RATE, EVENTS, MAPPINGS, MappingKey, PROGS, PT_REGS_OFFSET,
    SAMPLES, SELECT, STATE, TABLES, TASK_STACK_OFFSET, add, bump, chunk,
};

mod fp;
mod procs;
mod memory;
mod native;
mod select;
use memory::*;
use native::*;

/// Pending bytes above which a submit wakes the reader. Below it, the reader's own
/// periodic poll picks samples up: waking it for every sample costs an irq_work each.
const WAKEUP_BYTES: u64 = 512 * 1024;

/// Frames walked per run of the unwinder, which then tail-calls itself for more.
/// Verification grows faster than linearly with it: at 8 the unwinder took 158k
/// instructions and 170 ms of the agent's start to verify on 6.18, at 4 46k and 63 ms,
/// with no measurable change per sample. 4 is also the least that fits MAX_USER_FRAMES
/// in the kernel's 33 tail calls.
const FRAMES_PER_PROG: u32 = 4;

/// Tail calls per sample (the kernel allows 33): room for MAX_USER_FRAMES and the
/// frame that shows a stack was truncated.
const MAX_TAIL_CALLS: u32 = (MAX_USER_FRAMES as u32).div_ceil(FRAMES_PER_PROG);

const HEADER: usize = size_of::<RecordHeader>();

/// x86_64 `__USER_CS` and `__USER_DS`.
const USER_CS: u64 = 0x33;

const USER_DS: u64 = 0x2b;

/// Sends the record with only the frames it holds.
#[inline(always)]
fn submit(st: &State) {
    let h = &st.record.header;
    let mut frames = h.kernel_len as u64 + h.user_len as u64;
    if frames > FRAME_MASK as u64 {
        frames = FRAME_MASK as u64;
    }
    let len = HEADER as u64 + frames * 8;
    let wake = if SAMPLES.query(BPF_RB_AVAIL_DATA as u64) > WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    // SAFETY: `record` is `len` bytes or more of map memory; the map is the ring buffer.
    let r = unsafe {
        bpf_ringbuf_output(
            &SAMPLES as *const _ as *mut c_void,
            &st.record as *const _ as *mut c_void,
            len,
            wake as u64,
        )
    };
    if r < 0 {
        bump(counter::RINGBUF_FULL);
    } else {
        bump(counter::SUBMITTED);
    }
}

/// The interrupted user registers: from the perf context if it interrupted user mode,
/// else from the task's saved user `pt_regs`. `Err(NONE)`: a kernel thread, no user stack.
#[inline(always)]
fn init_regs(ctx: &PerfEventContext) -> Result<Regs, u8> {
    let regs = ctx.as_ptr() as *const pt_regs;
    // SAFETY: the context starts with the interrupted registers; each is read as one
    // 8-byte load, which is what the verifier allows.
    let cs = unsafe { core::ptr::read_volatile(&(*regs).cs) };
    if cs & 3 == 3 {
        // SAFETY: as above.
        return Ok(unsafe {
            Regs {
                pc: core::ptr::read_volatile(&(*regs).rip),
                sp: core::ptr::read_volatile(&(*regs).rsp),
                bp: core::ptr::read_volatile(&(*regs).rbp),
                bp_known: 1,
                is_return: 0,
            }
        });
    }
    let stack_offset = TASK_STACK_OFFSET.load();
    if stack_offset == 0 {
        return Err(stop::READ_FAULT);
    }
    // SAFETY: the helper returns the current task's address; reads below go through
    // bpf_probe_read_kernel, which fails rather than faults.
    let task = unsafe { bpf_get_current_task() };
    let mut stack = 0u64;
    let r = unsafe {
        bpf_probe_read_kernel(
            &mut stack as *mut u64 as *mut c_void,
            8,
            (task + stack_offset) as *const c_void,
        )
    };
    if r != 0 || stack == 0 {
        return Err(stop::READ_FAULT);
    }
    let at = stack + PT_REGS_OFFSET.load();
    // orig_ax, ip, cs, flags, sp, ss: bytes 120..168 of pt_regs; bp at 32.
    let mut tail = core::mem::MaybeUninit::<[u64; 6]>::uninit();
    let mut bp = 0u64;
    // SAFETY: as above.
    let (r1, r2) = unsafe {
        (
            bpf_probe_read_kernel(
                tail.as_mut_ptr() as *mut c_void,
                48,
                (at + 120) as *const c_void,
            ),
            bpf_probe_read_kernel(
                &mut bp as *mut u64 as *mut c_void,
                8,
                (at + 32) as *const c_void,
            ),
        )
    };
    if r1 != 0 || r2 != 0 {
        return Err(stop::READ_FAULT);
    }
    // SAFETY: the read succeeded, so all 48 bytes were written.
    let tail = unsafe { tail.assume_init() };
    if tail[2] & 3 != 3 {
        // Kernel threads have no user context.
        return Err(stop::NONE);
    }
    // User code and stack segments of a 64-bit task; anything else means the offsets
    // are wrong for this kernel (or a compat task): no guessing.
    if tail[2] & 0xffff != USER_CS || tail[5] & 0xffff != USER_DS {
        return Err(stop::READ_FAULT);
    }
    Ok(Regs {
        pc: tail[1],
        sp: tail[4],
        bp,
        bp_known: 1,
        // In a system call (orig_ax is the syscall number, not -1) the saved ip is the
        // instruction after `syscall`: a return address, as far as lookups go.
        is_return: (tail[0] != u64::MAX) as u32,
    })
}

#[perf_event]
pub fn stackline_sample(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (include_idle, kernel_stacks, walk, generation) = match CONFIG.get(0) {
        Some(c) => (
            c.include_idle != 0,
            c.kernel_stacks != 0,
            c.mode,
            c.generation,
        ),
        None => (false, true, mode::FRAME_POINTER, 0),
    };
    let tgid = (pid_tgid >> 32) as u32;
    if pid_tgid as u32 == 0 && !include_idle {
        bump(counter::IDLE_SKIPPED);
        return 0;
    }
    let Some(st) = STATE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's state; perf_event programs do not nest on a CPU.
    let st = unsafe { &mut *st };
    let (pending, image) = match SELECT.get(0).map(|c| select::selected(c, tgid, st)) {
        Some(select::Choice::Skip) => return 0,
        Some(select::Choice::Take { pending, image }) => (pending, image),
        None => (false, 0),
    };
    {
        let h = &mut st.record.header;
        h.tgid = tgid;
        h.tid = pid_tgid as u32;
        // SAFETY: helpers without preconditions.
        h.cpu = unsafe { bpf_get_smp_processor_id() };
        // SAFETY: a helper without preconditions.
        h.ktime_ns = unsafe { bpf_ktime_get_ns() };
        h.comm = bpf_get_current_comm().unwrap_or([0; 16]);
        h.kernel_len = 0;
        h.user_len = 0;
        h.kernel_error = 0;
        h.user_error = 0;
        h.stop = stop::NONE;
        h.mode = walk as u8;
        h.select_pending = pending as u8;
        h.image_tag = image_tag(image);
    }
    if kernel_stacks {
        // SAFETY: writes at most MAX_KERNEL_FRAMES * 8 bytes into the frames array.
        let k = unsafe {
            bpf_get_stack(
                ctx.as_ptr(),
                st.record.frames.as_mut_ptr() as *mut c_void,
                (MAX_KERNEL_FRAMES * 8) as u32,
                0,
            )
        };
        if k < 0 {
            st.record.header.kernel_error = k as i32;
            bump(counter::KERNEL_STACK_ERROR);
        } else {
            st.record.header.kernel_len = ((k as u64 / 8) & 0x7f) as u16;
        }
    }
    if tgid == 0 {
        submit(st);
        return 0;
    }
    let regs = init_regs(&ctx);
    if let Ok(r) = regs {
        st.regs = r;
        st.map.exe_id = 0;
        st.map.start = 0;
        st.map.end = 0;
        if st.cache_generation != generation {
            // A mapping left the index: forget what this CPU remembered.
            st.cache_generation = generation;
            st.cache_pid = [0; MAPPING_CACHE];
        }
        st.window.len = 0;
        st.tail_calls = 0;
        st.via_fp = 0;
        st.event_kind = 0;
        st.event_addr = 0;
        st.frames_table = 0;
        st.frames_fp = 0;
        let walker = if walk == mode::FRAME_POINTER {
            prog::FP_WALKER
        } else {
            prog::UNWINDER
        };
        // SAFETY: the walker continues with this CPU's state.
        unsafe { PROGS.tail_call(&ctx, walker) };
    }
    // No user registers (a kernel thread, or unknown offsets), or the walker is not in place.
    if walk == mode::FRAME_POINTER {
        if !matches!(regs, Err(stop::NONE)) {
            // The kernel's own walk, which finds the user registers of a sample taken
            // in the kernel by itself: slower, but needs no offsets.
            kernel_fp_walk(&ctx, st);
        }
        submit(st);
        return 0;
    }
    st.record.header.stop = match regs {
        Ok(_) => stop::NO_TABLE,
        Err(reason) => reason,
    };
    if st.record.header.stop != stop::NONE {
        bump(counter::STOPS + st.record.header.stop as u32);
    }
    submit(st);
    0
}

/// The user stack by the kernel's frame-pointer walk (`bpf_get_stack`).
#[inline(always)]
fn kernel_fp_walk(ctx: &PerfEventContext, st: &mut State) {
    let k = (st.record.header.kernel_len & 0x7f) as usize;
    // SAFETY: k <= 127, so the MAX_USER_FRAMES slots from k are inside the array.
    let n = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            st.record.frames.as_mut_ptr().add(k) as *mut c_void,
            (MAX_USER_FRAMES * 8) as u32,
            BPF_F_USER_STACK as u64,
        )
    };
    if n < 0 {
        st.record.header.user_error = n as i32;
        bump(counter::USER_STACK_ERROR);
    } else {
        st.record.header.user_len = ((n as u64 / 8) & 0xff) as u16;
    }
}

/// Ends a walk: counts why and how its frames were found, asks for what was missing,
/// sends the record.
#[inline(always)]
fn finish(st: &mut State, reason: u8) {
    st.record.header.stop = reason;
    bump(counter::STOPS + reason as u32);
    add(counter::FRAMES_TABLE, st.frames_table as u64);
    // A frame-pointer step that failed found no frame.
    add(counter::FRAMES_FP, st.frames_fp as u64);
    request(st.record.header.tgid, st.event_kind, st.event_addr);
    submit(st);
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
