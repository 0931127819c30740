//! Types shared by the eBPF program and user space (`#[repr(C)]`, plain integers only).
//! User space includes this same file, so both sides always agree on the layout.

/// Frames captured per stack (the kernel's default `perf_event_max_stack` is 127).
pub const MAX_STACK_DEPTH: usize = 127;
/// Length of a task's `comm`.
pub const COMM_LEN: usize = 16;

/// One CPU sample, as written to the ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawSample {
    /// Process id (thread group id).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    pub cpu: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ktime_ns: u64,
    /// Bytes `bpf_get_stack` wrote for the user stack, or a negative errno.
    pub user_stack_len: i64,
    /// Bytes `bpf_get_stack` wrote for the kernel stack, a negative errno, or 0 when off.
    pub kernel_stack_len: i64,
    /// The thread's `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// Return addresses, leaf first.
    pub user_stack: [u64; MAX_STACK_DEPTH],
    pub kernel_stack: [u64; MAX_STACK_DEPTH],
}

/// Settings user space writes into the `CONFIG` array (index 0) before attaching.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Config {
    /// Non-zero: also sample the idle task (pid 0).
    pub include_idle: u32,
    /// Non-zero: capture kernel stacks.
    pub kernel_stacks: u32,
}

/// Indices of the per-CPU `COUNTERS` array.
pub mod counter {
    /// Samples dropped because the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 0;
    /// Samples whose user stack could not be read (sample kept, without user frames).
    pub const USER_STACK_ERROR: u32 = 1;
    /// Samples whose kernel stack could not be read (sample kept, without kernel frames).
    pub const KERNEL_STACK_ERROR: u32 = 2;
    /// Idle-task samples skipped because `include_idle` is off (not a loss).
    pub const IDLE_SKIPPED: u32 = 3;
    /// Samples written to the ring buffer.
    pub const SUBMITTED: u32 = 4;
    pub const COUNT: u32 = 5;
}
