//! Process changes, as they happen: `stackline_exec` runs on every exec,
//! `stackline_rename` on every change of a task's name (an exec's among them),
//! `stackline_exit` on every thread's end and `stackline_cgroup` on every move of a
//! process to another cgroup (raw tracepoints, so no tracefs is needed). Each bumps
//! `PROC_EPOCH`, which tells the sampler that a verdict it cached per CPU may no longer
//! be its process's (see `select::verdict`).

use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use aya_ebpf::macros::raw_tracepoint;
use aya_ebpf::programs::RawTracePointContext;
use stackline_ebpf::PROC_EPOCH;

#[inline(always)]
fn bump_epoch() {
    if let Some(p) = PROC_EPOCH.get_ptr_mut(0) {
        // A plain add (the BPF target has no atomic read-modify-write in Rust): two
        // CPUs' changes at once can lose one of the two increments, but the value still
        // moves past every verdict cached before either, and the changing process runs
        // this program, so no CPU can cache it in between.
        // SAFETY: an array map's value, live for the program's run.
        unsafe { core::ptr::write_volatile(p, core::ptr::read_volatile(p).wrapping_add(1)) };
    }
}

/// An exec replaces the process image: what executable, name and build-ID rules see.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn stackline_exec(_ctx: RawTracePointContext) -> i32 {
    bump_epoch();
    0
}

/// A task's new name: what process-name rules see. An exec renames the task before its
/// `sched_process_exec`, after the new image is mapped: without this, a sample in
/// between was judged by the old image's cached verdict.
#[raw_tracepoint(tracepoint = "task_rename")]
pub fn stackline_rename(_ctx: RawTracePointContext) -> i32 {
    bump_epoch();
    0
}

/// A process's pid can be reused only after its leader has ended: only a leader's
/// end (pid = tgid) counts, so a node's thread churn leaves the caches alone.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn stackline_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid as u32 == (pid_tgid >> 32) as u32 {
        bump_epoch();
    }
    0
}

/// A process moved to another cgroup: what cgroup and container rules see. (Fired after
/// the move, by the task that wrote `cgroup.procs`.)
#[raw_tracepoint(tracepoint = "cgroup_attach_task")]
pub fn stackline_cgroup(_ctx: RawTracePointContext) -> i32 {
    bump_epoch();
    0
}
