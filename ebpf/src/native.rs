//! `stackline_unwind`: the native walker, by unwind table, with frame pointers where code has no table; asks user space for what it is missing.

use super::*;

/// Asks user space, at most every EVENT_EVERY_NS per process, for unwind information
/// (once per sample, when the walk is over: a helper call less on each frame's paths).
#[inline(always)]
pub(super) fn request(pid: u32, kind: u32, addr: u64) {
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
pub(super) struct Current<'a> {
    pub(super) exe_id: u64,
    pub(super) table: *mut c_void,
    pub(super) dir0: Option<&'a Chunk>,
    pub(super) last_index: u32,
    pub(super) last: Option<&'a Chunk>,
}

/// Finds the mapping of `pc` in this CPU's cache of recent mappings, else in the
/// mapping index (and caches it). False if the process is not known to map it.
#[inline(always)]
pub(super) fn find_mapping(st: &mut State, pid: u32, pc: u64) -> bool {
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
pub(super) fn unwind_one(st: &mut State, cur: &mut Current<'_>, walk: u32, max_frames: u32) -> u8 {
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
