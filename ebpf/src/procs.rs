//! Process changes, as they happen: `stackline_exec` runs on every exec,
//! `stackline_rename` on every change of a task's name (an exec's among them),
//! `stackline_exit` on every thread's end and `stackline_cgroup` on every move of a
//! process to another cgroup (raw tracepoints, so no tracefs is needed). Each bumps
//! `PROC_EPOCH`, which tells the sampler that a verdict it cached per CPU may no longer
//! be its process's (see `select::verdict`).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::macros::raw_tracepoint;
use aya_ebpf::programs::RawTracePointContext;
use stackline_ebpf::PROC_EPOCH;

#[inline(always)]
fn bump_epoch() {
    if let Some(p) = PROC_EPOCH.get_ptr_mut(0) {
        // The time, not a count: a plain store (the BPF target has no atomic add in
        // Rust). A count's load-add-store, stalled on one CPU while others bumped it,
        // could move it back to a value a verdict was cached at. A time stored late is
        // older than the value it replaces, but still a change, and a later change
        // stores a later time: no value comes back. (Two CPUs storing the same
        // nanosecond are safe too: each change happened before its time was read.)
        // SAFETY: an array map's value, live for the program's run.
        unsafe { core::ptr::write_volatile(p, bpf_ktime_get_ns()) };
    }
}

/// An exec replaces the process image: what executable and build-ID rules see.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn stackline_exec(_ctx: RawTracePointContext) -> i32 {
    bump_epoch();
    0
}

/// A task's new name. An exec renames the task (from `begin_new_exec`, after the new
/// address space replaced the old one) before `sched_process_exec` fires: without this,
/// a sample in between was judged by the old image's cached verdict. (A rename without
/// an exec drops the per-CPU copies only; the process's verdict in `VERDICTS` stays.)
#[raw_tracepoint(tracepoint = "task_rename")]
pub fn stackline_rename(_ctx: RawTracePointContext) -> i32 {
    bump_epoch();
    0
}

/// A thread's end. Every thread counts, not only a process's leader: a leader can end
/// long before its process's last thread, and only after that one is the pid free to
/// be reused by a new process.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn stackline_exit(_ctx: RawTracePointContext) -> i32 {
    bump_epoch();
    0
}

/// A process moved to another cgroup: what cgroup and container rules see. (Fired after
/// the move, by the task that wrote `cgroup.procs`.)
#[raw_tracepoint(tracepoint = "cgroup_attach_task")]
pub fn stackline_cgroup(_ctx: RawTracePointContext) -> i32 {
    bump_epoch();
    0
}
