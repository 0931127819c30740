//! `stackline_sample` runs on every cpu-clock tick of every sampled CPU: it records the
//! interrupted task's ids, comm and kernel stack, finds its user registers, and
//! tail-calls a walker for the user stack: `stackline_unwind` in the native modes,
//! which walks [`FRAMES_PER_PROG`] frames by unwind table per run, or
//! `stackline_fp_walk` in `frame_pointer` mode, which follows RBP
//! [`FP_FRAMES_PER_PROG`] frames per run. Each tail-calls itself for more. The finished
//! record goes to user space with only the frames it holds.
#![no_std]
#![no_main]

use core::ffi::c_void;
use core::mem::size_of;

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
use stackline_ebpf::shared::{
    Event, FRAME_BY_FP, FRAME_MASK, MAPPING_CACHE, MAPPING_KEY_BITS, MAX_KERNEL_FRAMES,
    MAX_USER_FRAMES, MappingKeyData, RecordHeader, StackWindow, State, WINDOW_BYTES, WINDOW_MASK,
    counter, event, mode, prog,
};
use stackline_ebpf::unwind::{Chunk, Memory, PAGE_SIZE, Regs, fp_step, lookup, step, stop};
use stackline_ebpf::{
    CONFIG, EVENT_EVERY_NS, EVENT_RATE, EVENTS, MAPPINGS, MappingKey, PROGS, PT_REGS_OFFSET,
    SAMPLES, STATE, TABLES, TASK_STACK_OFFSET, add, bump, chunk,
};

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

/// Reads `len` bytes of the sampled process's memory at `addr` into `dst`.
#[inline(always)]
fn read_user(dst: *mut c_void, len: u64, addr: u64) -> bool {
    // SAFETY: the helper writes at most `len` bytes into `dst` (callers pass room for
    // them), or fails without faulting.
    unsafe { bpf_probe_read_user(dst, len as u32, addr as *const c_void) == 0 }
}

/// The sampled thread's stack, read a window at a time: a walk reads upwards from the
/// interrupted stack pointer, and one read of [`WINDOW_BYTES`] serves the frames in it,
/// where each frame would otherwise pay a read of its own. The window is read at one
/// place only, at the start of each unwinder run ([`Window::fill`]): a read at every
/// access site multiplied the verifier's work. Reads outside it go to memory directly.
struct Window<'a>(&'a mut StackWindow);

impl Window<'_> {
    /// Makes the window start at `sp` unless it already holds the next few frames
    /// from there. A window that would run past the stack's last page is cut at the
    /// end of `sp`'s page.
    #[inline(always)]
    fn fill(&mut self, sp: u64) {
        let w = &mut *self.0;
        let off = sp.wrapping_sub(w.base);
        if off < w.len && w.len - off >= WINDOW_BYTES / 2 || sp & 7 != 0 {
            return;
        }
        w.len = 0;
        let dst = w.words.as_mut_ptr() as *mut c_void;
        let mut len = WINDOW_BYTES;
        if !read_user(dst, len, sp) {
            len = PAGE_SIZE - (sp & (PAGE_SIZE - 1));
            if len > WINDOW_BYTES {
                len = WINDOW_BYTES;
            }
            if !read_user(dst, len, sp) {
                return;
            }
        }
        w.base = sp;
        w.len = len;
    }

    /// The index of the word at `addr`, if the window holds the `n` bytes from it.
    #[inline(always)]
    fn at(&self, addr: u64, n: u64) -> Option<usize> {
        let w = &*self.0;
        let off = addr.wrapping_sub(w.base);
        if addr & 7 == 0 && off < w.len && w.len - off >= n {
            Some(((off >> 3) as u32 & WINDOW_MASK) as usize)
        } else {
            None
        }
    }
}

impl Memory for Window<'_> {
    #[inline(always)]
    fn read(&mut self, addr: u64) -> Option<u64> {
        if let Some(i) = self.at(addr, 8) {
            return Some(self.0.words[i]);
        }
        let mut v = 0u64;
        if read_user(&mut v as *mut u64 as *mut c_void, 8, addr) {
            Some(v)
        } else {
            None
        }
    }

    #[inline(always)]
    fn read_pair(&mut self, addr: u64) -> Option<[u64; 2]> {
        if let Some(i) = self.at(addr, 16) {
            return Some([
                self.0.words[i],
                self.0.words[((i as u32 + 1) & WINDOW_MASK) as usize],
            ]);
        }
        // Uninitialised: a zeroing would be a byte-wise memset the verifier walks.
        let mut v = core::mem::MaybeUninit::<[u64; 2]>::uninit();
        if read_user(v.as_mut_ptr() as *mut c_void, 16, addr) {
            // SAFETY: on success all 16 bytes were written.
            Some(unsafe { v.assume_init() })
        } else {
            None
        }
    }
}

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
    {
        let h = &mut st.record.header;
        h.tgid = tgid;
        h.tid = pid_tgid as u32;
        // SAFETY: helpers without preconditions.
        h.cpu = unsafe { bpf_get_smp_processor_id() };
        h.ktime_ns = unsafe { bpf_ktime_get_ns() };
        h.comm = bpf_get_current_comm().unwrap_or([0; 16]);
        h.kernel_len = 0;
        h.user_len = 0;
        h.kernel_error = 0;
        h.user_error = 0;
        h.stop = stop::NONE;
        h.mode = walk as u8;
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

/// Asks user space, at most every EVENT_EVERY_NS per process, for unwind information
/// (once per sample, when the walk is over: a helper call less on each frame's paths).
#[inline(always)]
fn request(pid: u32, kind: u32, addr: u64) {
    if kind == 0 {
        return;
    }
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    match EVENT_RATE.get_ptr_mut(&pid) {
        Some(last) => {
            // SAFETY: a valid pointer into the map.
            unsafe {
                if now.wrapping_sub(*last) < EVENT_EVERY_NS {
                    return;
                }
                *last = now;
            }
        }
        None => {
            let _ = EVENT_RATE.insert(&pid, &now, 0);
        }
    }
    let e = Event { pid, kind, addr };
    // Wake the reader at once: until it answers, this process's frames go unwound.
    if EVENTS
        .output::<Event>(&e, BPF_RB_FORCE_WAKEUP as u64)
        .is_ok()
    {
        bump(counter::EVENTS_SENT);
    } else {
        bump(counter::EVENTS_LOST);
    }
}

/// The table of the executable the walk is in, kept across the frames of one run (an
/// inner map pointer cannot be stored in the per-CPU state), with its directory's first
/// chunk and the last row chunk used: most frames then need one array lookup or none.
struct Current<'a> {
    exe_id: u64,
    table: *mut c_void,
    dir0: Option<&'a Chunk>,
    last_index: u32,
    last: Option<&'a Chunk>,
}

/// Finds the mapping of `pc` in this CPU's cache of recent mappings, else in the
/// mapping index (and caches it). False if the process is not known to map it.
#[inline(always)]
fn find_mapping(st: &mut State, pid: u32, pc: u64) -> bool {
    let mut i = 0;
    while i < MAPPING_CACHE {
        let m = &st.cache[i];
        if st.cache_pid[i] == pid && m.start <= pc && pc < m.end {
            // Field by field: a struct copy would be a byte-wise memcpy call.
            st.map.exe_id = m.exe_id;
            st.map.bias = m.bias;
            st.map.start = m.start;
            st.map.end = m.end;
            return true;
        }
        i += 1;
    }
    let key = MappingKey::new(
        MAPPING_KEY_BITS,
        MappingKeyData {
            pid_be: pid.to_be(),
            addr_be: pc.to_be(),
        },
    );
    let Some(m) = MAPPINGS.get(&key) else {
        return false;
    };
    st.map.exe_id = m.exe_id;
    st.map.bias = m.bias;
    st.map.start = m.start;
    st.map.end = m.end;
    let slot = (st.cache_next as usize) % MAPPING_CACHE;
    st.cache_next = st.cache_next.wrapping_add(1);
    st.cache_pid[slot] = pid;
    st.cache[slot].exe_id = m.exe_id;
    st.cache[slot].bias = m.bias;
    st.cache[slot].start = m.start;
    st.cache[slot].end = m.end;
    true
}

/// Records the current frame and steps to its caller; a stop reason when the walk ends.
///
/// Written so that every outcome flows through one lookup, one step and one fallback:
/// the verifier prunes paths that meet at the same instruction, and separate copies of
/// the fallback per failure would multiply its work.
#[inline(always)]
fn unwind_one(st: &mut State, cur: &mut Current<'_>, walk: u32, max_frames: u32) -> u8 {
    let n = st.record.header.user_len as u32;
    if n >= max_frames {
        return stop::TRUNCATED;
    }
    let slot = (st.record.header.kernel_len as u32 + n) & FRAME_MASK;
    let flag = if st.via_fp != 0 { FRAME_BY_FP } else { 0 };
    st.record.frames[slot as usize] = st.regs.pc | flag;
    st.record.header.user_len = (n + 1) as u16;
    let pc = st.regs.lookup_pc();

    // The rule for pc, or why there is none.
    let pid = st.record.header.tgid;
    let mut row = Err(stop::NO_MAPPING);
    if (st.map.start <= pc && pc < st.map.end) || find_mapping(st, pid, pc) {
        let exe_id = st.map.exe_id;
        if exe_id == 0 {
            row = Err(stop::NO_TABLE);
        } else {
            if exe_id != cur.exe_id {
                cur.exe_id = exe_id;
                cur.table = TABLES.table(&exe_id);
                cur.dir0 = chunk(cur.table, 0);
                cur.last = None;
            }
            let table = cur.table;
            row = lookup(
                |i| {
                    if i == 0 {
                        return cur.dir0;
                    }
                    if i != cur.last_index || cur.last.is_none() {
                        cur.last_index = i;
                        cur.last = chunk(table, i);
                    }
                    cur.last
                },
                pc.wrapping_sub(st.map.bias),
            );
            if row == Err(stop::NO_TABLE) {
                st.event_kind = event::NO_TABLE;
                st.event_addr = pc;
            }
        }
    } else {
        st.map.start = 0;
        st.map.end = 0;
        st.event_kind = event::NO_MAPPING;
        st.event_addr = pc;
    }

    // A failed step leaves the registers as they were, so a gap (INVALID_RULE) can
    // still be crossed by frame pointer below.
    let r = match row {
        Ok(row) => step(row, &mut st.regs, &mut Window(&mut st.window)),
        Err(why) => Err(why),
    };
    let r = match r {
        Ok(()) => {
            st.via_fp = 0;
            st.frames_table += 1;
            Ok(())
        }
        Err(why @ (stop::NO_MAPPING | stop::NO_TABLE | stop::INVALID_RULE))
            if walk == mode::AUTO =>
        {
            // Code without a usable rule: by frame pointer.
            st.via_fp = 1;
            st.frames_fp += 1;
            fp_step(&mut st.regs, &mut Window(&mut st.window), why)
        }
        Err(e) => Err(e),
    };
    match r {
        Ok(()) => stop::NONE,
        Err(e) => e,
    }
}

#[perf_event]
pub fn stackline_unwind(ctx: PerfEventContext) -> u32 {
    let Some(st) = STATE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's state, set up by stackline_sample.
    let st = unsafe { &mut *st };
    let (walk, mut max_frames) = match CONFIG.get(0) {
        Some(c) => (c.mode, c.max_frames),
        None => (mode::AUTO, MAX_USER_FRAMES as u32),
    };
    if max_frames > MAX_USER_FRAMES as u32 {
        max_frames = MAX_USER_FRAMES as u32;
    }
    let mut cur = Current {
        exe_id: 0,
        table: core::ptr::null_mut(),
        dir0: None,
        last_index: 0,
        last: None,
    };
    Window(&mut st.window).fill(st.regs.sp);
    let mut i = 0;
    while i < FRAMES_PER_PROG {
        let r = unwind_one(st, &mut cur, walk, max_frames);
        if r != stop::NONE {
            finish(st, r);
            return 0;
        }
        i += 1;
    }
    if st.tail_calls < MAX_TAIL_CALLS {
        st.tail_calls += 1;
        // SAFETY: continues with this CPU's state.
        unsafe { PROGS.tail_call(&ctx, prog::UNWINDER) };
    }
    // Out of tail calls (cannot happen below max_frames) or the call failed.
    finish(st, stop::TRUNCATED);
    0
}

/// Frames walked per run of the frame-pointer walker. A frame costs the verifier about
/// 200 instructions here, against thousands for a table step, so a run takes many more
/// than the unwinder's; 16 walks MAX_USER_FRAMES in 8 tail calls.
const FP_FRAMES_PER_PROG: u32 = 16;
const MAX_FP_TAIL_CALLS: u32 = (MAX_USER_FRAMES as u32).div_ceil(FP_FRAMES_PER_PROG);

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
