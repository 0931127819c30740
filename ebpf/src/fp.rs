//! `stackline_fp_walk`: the `frame_pointer` mode walker, following RBP.

use super::*;

/// Frames walked per run of the frame-pointer walker. A frame costs the verifier about
/// 200 instructions here, against thousands for a table step, so a run takes many more
/// than the unwinder's; 16 walks MAX_USER_FRAMES in 8 tail calls.
pub(super) const FP_FRAMES_PER_PROG: u32 = 16;

pub(super) const MAX_FP_TAIL_CALLS: u32 = (MAX_USER_FRAMES as u32).div_ceil(FP_FRAMES_PER_PROG);

/// `frame_pointer` mode: follows the RBP chain from the sampled registers, reading the
/// stack through the same window as the unwinder. It replaces the kernel's walk
/// (`bpf_get_stack`), which pays a separate user-memory read for every frame.
#[perf_event]
pub fn stackline_fp_walk(ctx: PerfEventContext) -> u32 {
    let Some(st) = STATE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's state, set up by stackline_sample.
    let st = unsafe { &mut *st };
    let mut max_frames = match CONFIG.get(0) {
        Some(c) => c.max_frames,
        None => MAX_USER_FRAMES as u32,
    };
    if max_frames > MAX_USER_FRAMES as u32 {
        max_frames = MAX_USER_FRAMES as u32;
    }
    Window(&mut st.window).fill(st.regs.sp);
    let mut i = 0;
    while i < FP_FRAMES_PER_PROG {
        let n = st.record.header.user_len as u32;
        if n >= max_frames {
            finish(st, stop::TRUNCATED);
            return 0;
        }
        let slot = (st.record.header.kernel_len as u32 + n) & FRAME_MASK;
        st.record.frames[slot as usize] = st.regs.pc;
        st.record.header.user_len = (n + 1) as u16;
        // Where RBP stops pointing at a frame the chain ends, as the kernel's walk
        // does: at the outermost frame, or in code built without frame pointers
        // (glibc's start-up, often), which this mode cannot tell apart.
        if let Err(e) = fp_step(&mut st.regs, &mut Window(&mut st.window), stop::COMPLETE) {
            finish(st, e);
            return 0;
        }
        st.frames_fp += 1;
        i += 1;
    }
    if st.tail_calls < MAX_FP_TAIL_CALLS {
        st.tail_calls += 1;
        // SAFETY: continues with this CPU's state.
        unsafe { PROGS.tail_call(&ctx, prog::FP_WALKER) };
    }
    finish(st, stop::TRUNCATED);
    0
}
