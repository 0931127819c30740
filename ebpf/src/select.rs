//! Process selection, before any walk: the sampled process's verdict (cached per
//! process, or made from its pid, uid and cgroup ancestors), then its target's budget.
//! A skipped sample costs these lookups and nothing else.

use core::ffi::c_void;

use aya_ebpf::helpers::bpf_get_current_uid_gid;
use aya_ebpf::helpers::generated::{
    bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_task,
    bpf_ktime_get_ns, bpf_probe_read_kernel,
};
use stackline_ebpf::shared::{
    Bucket, SelectConfig, State, Verdict, counter, image, lowest_bit, select,
};
use stackline_ebpf::{
    BUDGETS, PROC_EPOCH, SEL_CGROUPS, SEL_PIDS, SEL_RULES, SEL_UIDS, TASK_EXEC_ID_OFFSET, TASK_MM_OFFSET,
    VERDICTS, bump,
};

/// What the program decided of a sample.
pub enum Choice {
    Skip,
    /// Take it; `pending`: user space has rules left to decide it by. `image` is the
    /// process image (`shared::image`; 0: unknown).
    Take { pending: bool, image: u64 },
}

/// Whether to sample `tgid` now. Counts what it skips, and why. `st` is this CPU's
/// state, whose verdict cache this uses.
#[inline(always)]
pub fn selected(c: &SelectConfig, tgid: u32, st: &mut State) -> Choice {
    if c.flags & select::PAUSED != 0 {
        bump(counter::PAUSED_SKIPPED);
        return Choice::Skip;
    }
    let mut pending = false;
    let mut image = 0;
    let mut included = 0;
    if c.flags & select::ACTIVE != 0 {
        let v = verdict(c, tgid, st);
        image = v.image;
        let fin = v.flags & select::FINAL != 0;
        let excluded = v.mask & c.exclude_mask;
        if excluded != 0 {
            rule_count(excluded, 1);
            return Choice::Skip;
        }
        // Decided whole: by user space, or with no rule left that only it evaluates.
        let whole = fin || c.flags & select::USER_RULES == 0;
        included = v.mask & c.include_mask;
        if included == 0 && c.include_mask != 0 && (fin || c.flags & select::USER_INCLUDE == 0) {
            // Include rules exist and none can match.
            bump(counter::NOT_SELECTED);
            return Choice::Skip;
        }
        pending = !whole;
    }
    // SAFETY: a helper without preconditions.
    if c.budget_cost_ns != 0 && !within_budget(c, tgid, unsafe { bpf_ktime_get_ns() }) {
        bump(counter::BUDGET_SKIPPED);
        return Choice::Skip;
    }
    // Counted per rule once taken and whole: user space counts the samples it decides.
    if included != 0 && !pending {
        rule_count(included, 0);
    }
    Choice::Take { pending, image }
}

/// The current process image (`shared::image`), or 0 if the offsets are unknown.
#[inline(always)]
fn current_image() -> u64 {
    let (mm_off, exec_off) = (TASK_MM_OFFSET.load(), TASK_EXEC_ID_OFFSET.load());
    if mm_off == 0 || exec_off == 0 {
        return 0;
    }
    let (mut mm, mut exec_id) = (0u64, 0u64);
    // SAFETY: the helper returns the current task; the reads fail rather than fault.
    let (r1, r2) = unsafe {
        let task = bpf_get_current_task();
        (
            bpf_probe_read_kernel(
                &mut mm as *mut u64 as *mut c_void,
                8,
                (task + mm_off) as *const c_void,
            ),
            bpf_probe_read_kernel(
                &mut exec_id as *mut u64 as *mut c_void,
                8,
                (task + exec_off) as *const c_void,
            ),
        )
    };
    if r1 != 0 || r2 != 0 || mm == 0 {
        0
    } else {
        image(mm, exec_id)
    }
}

/// `tgid`'s verdict: the cached one while it holds (same rules, cgroup, uid and, with
/// user-space rules, image), else made from its pid, uid and cgroup ancestors and
/// cached. This CPU's last whole verdict is looked at first, and holds while
/// `PROC_EPOCH` says no process changed.
#[inline(always)]
fn verdict(c: &SelectConfig, tgid: u32, st: &mut State) -> Verdict {
    let user_rules = c.flags & select::USER_RULES != 0;
    // The uid only where a rule looks at it (0 in verdicts otherwise).
    let uid_rules = c.flags & select::UID_RULES != 0;
    let uid = if uid_rules { bpf_get_current_uid_gid() as u32 } else { 0 };
    let epoch = PROC_EPOCH.get(0).copied().unwrap_or(0);
    // This CPU's verdict, cached while no process exec'd, ended or changed cgroups
    // anywhere: its process is then the image in the cgroup it was made for, so neither
    // is read (each is a chain of loads that misses the cache at 1 kHz). That makes a
    // process excluded by executable as cheap to skip as one excluded by cgroup.
    // Without the task offsets there is no image, and a verdict user space made is
    // redone only by age: checked on every sample, as in `holds`.
    let trusted = !user_rules || TASK_MM_OFFSET.load() != 0;
    if trusted
        && st.verdict_tgid == tgid
        && st.verdict_epoch == epoch
        && st.verdict.generation == c.generation
        && st.verdict.uid == uid
    {
        return st.verdict;
    }
    // SAFETY: a helper without preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // The image matters only to verdicts user space makes (an exec changes what the
    // executable, name and build-ID rules see, not the pid, uid and cgroup rules): two
    // kernel reads saved per sample when there are no such rules.
    let img = if user_rules { current_image() } else { 0 };
    let holds = |v: &Verdict| {
        v.generation == c.generation
            // No image (0): the task has let go of its address space (a process on its
            // way out, after `exit_mm`), and is judged by the verdict it had.
            && (v.image == img || img == 0)
            && v.cgroup == cgroup
            && v.uid == uid
            // User space's verdicts are redone after a while: an image can repeat when
            // a pid is reused (same address-space address and exec count).
            && (!user_rules
                // SAFETY: a helper without preconditions.
                || unsafe { bpf_ktime_get_ns() }.wrapping_sub(v.at_ns) < select::FINAL_TTL_NS)
    };
    // Whole: made by user space, or with no rule left that only it evaluates. Only
    // those are kept per CPU (user space replaces the others in the map).
    let whole = |v: &Verdict| !user_rules || v.flags & select::FINAL != 0;
    let mut keep = |v: &Verdict| {
        st.verdict_tgid = tgid;
        st.verdict = *v;
        st.verdict_epoch = epoch;
    };
    // SAFETY: a hash lookup; the value is copied out at once.
    if let Some(v) = unsafe { VERDICTS.get(&tgid) } {
        let v = *v;
        if holds(&v) {
            if whole(&v) {
                keep(&v);
            }
            return v;
        }
    }
    // SAFETY: hash lookups, copied out at once.
    let mut mask = unsafe { SEL_PIDS.get(&tgid).copied().unwrap_or(0) };
    if uid_rules {
        mask |= unsafe { SEL_UIDS.get(&uid).copied().unwrap_or(0) };
    }
    let mut level = 0;
    while level < select::MAX_CGROUP_DEPTH {
        // SAFETY: a helper without preconditions; 0 past the task's own cgroup.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            break;
        }
        mask |= unsafe { SEL_CGROUPS.get(&id).copied().unwrap_or(0) };
        level += 1;
    }
    let v = Verdict {
        mask,
        image: img,
        cgroup,
        // SAFETY: a helper without preconditions.
        at_ns: unsafe { bpf_ktime_get_ns() },
        uid,
        flags: 0,
        generation: c.generation,
        _pad: 0,
    };
    let _ = VERDICTS.insert(&tgid, &v, 0);
    if whole(&v) {
        keep(&v);
    }
    v
}

/// Counts a sample under the lowest rule of `mask`: taken (`skipped` 0) or skipped (1).
#[inline(always)]
fn rule_count(mask: u64, skipped: u32) {
    let rule = lowest_bit(mask) & 63;
    if let Some(p) = SEL_RULES.get_ptr_mut(rule * 2 + skipped) {
        // SAFETY: a per-CPU slot; this program is the only writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// Takes one sample's credit from the target's bucket, if it has it.
#[inline(always)]
fn within_budget(c: &SelectConfig, tgid: u32, now: u64) -> bool {
    let key = if c.flags & select::BUDGET_PER_CGROUP != 0 {
        // SAFETY: a helper without preconditions.
        unsafe { bpf_get_current_cgroup_id() }
    } else {
        tgid as u64
    };
    let Some(b) = BUDGETS.get_ptr_mut(&key) else {
        let b = Bucket {
            credit_ns: c.budget_burst_ns.saturating_sub(c.budget_cost_ns),
            last_ns: now,
            taken: 1,
            skipped: 0,
        };
        let _ = BUDGETS.insert(&key, &b, 0);
        return true;
    };
    // SAFETY: a value in the map; racing CPUs may each take a sample's credit the other
    // also saw, which lets a target past its budget by at most a sample per CPU.
    let b = unsafe { &mut *b };
    let mut credit = b.credit_ns + now.saturating_sub(b.last_ns);
    if credit > c.budget_burst_ns {
        credit = c.budget_burst_ns;
    }
    b.last_ns = now;
    if credit >= c.budget_cost_ns {
        b.credit_ns = credit - c.budget_cost_ns;
        b.taken += 1;
        true
    } else {
        b.credit_ns = credit;
        b.skipped += 1;
        false
    }
}
