//! Types shared by the eBPF program and user space (`#[repr(C)]`, plain integers only).
//! Both sides build them from this one file, so they always agree on the layout.

use crate::unwind::{MappingInfo, Regs};

/// Kernel frames captured per sample (the kernel's default `perf_event_max_stack`).
pub const MAX_KERNEL_FRAMES: usize = 127;
/// User frames captured per sample, at most.
pub const MAX_USER_FRAMES: usize = 128;
/// Frame slots of a record: a power of two, so an index can be masked.
pub const FRAME_SLOTS: usize = 256;
pub const FRAME_MASK: u32 = FRAME_SLOTS as u32 - 1;
/// Length of a task's `comm`.
pub const COMM_LEN: usize = 16;
/// Bit 63 of a user frame: this frame was reached by frame pointer (its caller's code
/// had no unwind table). User addresses never use it.
pub const FRAME_BY_FP: u64 = 1 << 63;

/// The fixed part of a sample record in the ring buffer; `kernel_len` kernel frames,
/// then `user_len` user frames, follow it (8 bytes each, leaf first).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RecordHeader {
    /// Process id (thread group id).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    pub cpu: u32,
    pub kernel_len: u16,
    pub user_len: u16,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ktime_ns: u64,
    /// A negative errno if the kernel stack could not be read, else 0.
    pub kernel_error: i32,
    /// A negative errno if the kernel's walk could not read the user stack, else 0.
    pub user_error: i32,
    /// The thread's `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// Why the user walk ended (`unwind::stop`); 0 if the kernel walked it.
    pub stop: u8,
    /// The [`mode`] the stack was walked in.
    pub mode: u8,
    /// Non-zero: selection rules only user space evaluates have not decided this
    /// process yet; user space decides the sample (see `Verdict`).
    pub select_pending: u8,
    pub _pad: u8,
    /// [`image_tag`] of the process image: with the pid, what a user-space verdict is
    /// tied to. 0 when unknown.
    pub image_tag: u32,
}

/// A sample record as built in the per-CPU state; only the used frames are sent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Record {
    pub header: RecordHeader,
    pub frames: [u64; FRAME_SLOTS],
}

/// Bytes of the sampled thread's stack read at once (a power of two, at most a page).
/// Each read from user memory costs about 100 ns whatever its size (the kernel's own
/// frame-pointer walk pays it on every frame); one window serves all the frames in it.
pub const WINDOW_BYTES: u64 = 2048;
pub const WINDOW_WORDS: usize = WINDOW_BYTES as usize / 8;
pub const WINDOW_MASK: u32 = WINDOW_WORDS as u32 - 1;

/// A copy of part of the sampled thread's stack, from `base` (8-byte aligned).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StackWindow {
    pub base: u64,
    /// Bytes copied from `base` (0: none).
    pub len: u64,
    pub words: [u64; WINDOW_WORDS],
}

/// Mappings each CPU remembers across samples (a process sampled again on the same CPU
/// usually runs in the same few mappings).
pub const MAPPING_CACHE: usize = 4;

/// Per-CPU scratch of one sample's walk, carried across tail calls.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct State {
    /// `PROC_EPOCH` when [`State::verdict`] was cached. The verdict cache comes first
    /// and in 64 contiguous bytes: it is all a skipped sample reads of this state.
    pub verdict_epoch: u64,
    /// The process of [`State::verdict`] (0: none).
    pub verdict_tgid: u32,
    pub _verdict_pad: u32,
    /// The last whole selection verdict this CPU used: a process sampled again on the
    /// same CPU skips the `VERDICTS` lookup.
    pub verdict: Verdict,
    pub record: Record,
    pub regs: Regs,
    /// The part of the stack read last (emptied for each sample).
    pub window: StackWindow,
    /// The mapping of the last frame, so frames in the same mapping need no lookup.
    pub map: MappingInfo,
    /// Recently found mappings and their pids, valid while `cache_generation` is the
    /// configuration's (user space bumps it when it removes or changes a mapping).
    pub cache: [MappingInfo; MAPPING_CACHE],
    pub cache_pid: [u32; MAPPING_CACHE],
    pub cache_generation: u32,
    pub cache_next: u32,
    pub tail_calls: u32,
    /// Non-zero: the current frame was reached by frame pointer.
    pub via_fp: u32,
    /// What to ask user space for when the walk ends ([`event`] kind, 0 = nothing).
    pub event_kind: u32,
    /// Frames of this walk found by table, and by frame pointer.
    pub frames_table: u32,
    pub frames_fp: u32,
    pub event_addr: u64,
}

/// How user stacks are walked.
pub mod mode {
    /// Frame pointers only (RBP chains), walked by the program.
    pub const FRAME_POINTER: u32 = 0;
    /// Unwind tables, following frame pointers through code that has none.
    pub const AUTO: u32 = 1;
    /// Unwind tables only.
    pub const EH_FRAME: u32 = 2;
}

/// Indices of the walkers in the `PROGS` program array.
pub mod prog {
    /// `stackline_unwind`, in the native modes.
    pub const UNWINDER: u32 = 0;
    /// `stackline_fp_walk`, in `frame_pointer` mode.
    pub const FP_WALKER: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// Settings user space writes into the `CONFIG` array (index 0) before attaching.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Config {
    /// Non-zero: also sample the idle task (pid 0).
    pub include_idle: u32,
    /// Non-zero: capture kernel stacks.
    pub kernel_stacks: u32,
    /// A [`mode`].
    pub mode: u32,
    /// User frames at most (≤ [`MAX_USER_FRAMES`]).
    pub max_frames: u32,
    /// Bumped by user space whenever a mapping leaves the mapping index.
    pub generation: u32,
    pub _pad: u32,
}

/// The data of a mapping-index key (the LPM trie adds the prefix length): pid and
/// address, both big-endian, so a prefix runs from the pid's first bit into the address.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingKeyData {
    pub pid_be: u32,
    pub addr_be: u64,
}

/// Bits of a full mapping key (pid and address).
pub const MAPPING_KEY_BITS: u32 = 96;

/// A request from the program to user space: an address it could not unwind through.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
    pub pid: u32,
    /// [`event`] kind.
    pub kind: u32,
    pub addr: u64,
}

pub mod event {
    /// The address is in no mapping the program knows of (a new process, or `dlopen`).
    pub const NO_MAPPING: u32 = 1;
    /// The mapping has no table loaded.
    pub const NO_TABLE: u32 = 2;
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
    /// Walks that ended for each `unwind::stop` reason: `STOPS + reason`.
    pub const STOPS: u32 = 5;
    /// User frames unwound by table.
    pub const FRAMES_TABLE: u32 = 12;
    /// User frames unwound by frame pointer (code without a table).
    pub const FRAMES_FP: u32 = 13;
    /// Events sent to user space, and events the ring buffer had no room for.
    pub const EVENTS_SENT: u32 = 14;
    pub const EVENTS_LOST: u32 = 15;
    /// Samples skipped because sampling was paused (probabilistic profiling).
    pub const PAUSED_SKIPPED: u32 = 16;
    /// Samples of processes no rule includes, while include rules exist.
    pub const NOT_SELECTED: u32 = 17;
    /// Samples over their target's budget.
    pub const BUDGET_SKIPPED: u32 = 18;
    pub const COUNT: u32 = 19;
}

/// Most selection rules (include and exclude together): each is a bit of a `u64` mask.
pub const MAX_RULES: usize = 64;

/// Process selection and the sampling switch, in the `SELECT` array (index 0). User
/// space rewrites it while the program runs: on a reload, and at each interval of
/// probabilistic profiling. Rules are numbered 0..[`MAX_RULES`]; the maps `SEL_CGROUPS`,
/// `SEL_UIDS` and `SEL_PIDS` give, for a cgroup, a uid or a pid, the mask of the rules
/// it matches.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct SelectConfig {
    /// [`select`] flags.
    pub flags: u32,
    /// Bumped whenever the rules change: cached verdicts of an older one are redone.
    pub generation: u32,
    /// Rules that include, and rules that exclude (exclude wins).
    pub include_mask: u64,
    pub exclude_mask: u64,
    /// Nanoseconds of credit one sample costs (1e9 / samples per second); 0: no budget.
    pub budget_cost_ns: u64,
    /// Most credit a target banks, in nanoseconds (its burst).
    pub budget_burst_ns: u64,
}

/// [`SelectConfig::flags`] and verdict flags.
pub mod select {
    /// Sampling is off for this interval (probabilistic profiling): every sample is
    /// skipped before anything else is done.
    pub const PAUSED: u32 = 1;
    /// There are rules: each process gets a verdict.
    pub const ACTIVE: u32 = 2;
    /// Some include rule needs user space (executable, name, container id): a process no
    /// kernel rule includes is sampled until user space has decided it.
    pub const USER_INCLUDE: u32 = 4;
    /// Some rule (include or exclude) needs user space: the kernel's verdict on a process
    /// is not final until user space has written its own.
    pub const USER_RULES: u32 = 32;
    /// The budget is per cgroup (its own, innermost), not per process.
    pub const BUDGET_PER_CGROUP: u32 = 8;
    /// Some rule is by uid: a verdict cached per CPU holds only for the same uid (a
    /// `setuid` is no event the programs see).
    pub const UID_RULES: u32 = 64;
    /// A verdict user space wrote: the whole decision (every rule), not the kernel's part.
    pub const FINAL: u32 = 16;
    /// Ancestor levels of the cgroup tree looked at (a Kubernetes container is at 4).
    pub const MAX_CGROUP_DEPTH: u32 = 16;
    /// With user-space rules, a verdict in `VERDICTS` is redone after this: a reused pid
    /// can show the same image (and without the kernel offsets there is no image at
    /// all). A CPU's copy of it is not aged: it is dropped at the next exec, rename,
    /// thread end or cgroup move on the node, which a reuse needs (`PROC_EPOCH`).
    pub const FINAL_TTL_NS: u64 = 10_000_000_000;
}

/// A process's verdict, cached in `VERDICTS` (keyed by tgid). It holds while the
/// process is the same image (no exec, no pid reuse), in the same cgroup with the same
/// uid, under the same rules; without the kernel offsets, for a time
/// ([`select::FINAL_TTL_NS`]).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The rules it matches.
    pub mask: u64,
    /// The process image ([`image`]; 0: unknown).
    pub image: u64,
    /// `bpf_get_current_cgroup_id()`.
    pub cgroup: u64,
    /// `bpf_ktime_get_ns()` when it was made.
    pub at_ns: u64,
    pub uid: u32,
    /// [`select::FINAL`] or 0.
    pub flags: u32,
    /// [`SelectConfig::generation`] it was made under.
    pub generation: u32,
    pub _pad: u32,
}

/// A process image: its address space (`task->mm`) and its exec count
/// (`task->self_exec_id`, one more at each exec). Either alone is not enough: the
/// kernel often gives the new address space of an exec the address the old one had.
pub const fn image(mm: u64, exec_id: u64) -> u64 {
    mm ^ exec_id.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The index of `mask`'s lowest set bit (64 for 0), by halving: the BPF program's
/// `trailing_zeros`, which has no BPF instruction and which LLVM lowers to a lookup in
/// a 64-byte table in `.rodata`: a cache line of its own, read by every skipped sample.
#[inline(always)]
pub const fn lowest_bit(mask: u64) -> u32 {
    if mask == 0 {
        return 64;
    }
    let (mut m, mut r) = (mask, 0);
    if m & 0xffff_ffff == 0 {
        m >>= 32;
        r += 32;
    }
    if m & 0xffff == 0 {
        m >>= 16;
        r += 16;
    }
    if m & 0xff == 0 {
        m >>= 8;
        r += 8;
    }
    if m & 0xf == 0 {
        m >>= 4;
        r += 4;
    }
    if m & 0x3 == 0 {
        m >>= 2;
        r += 2;
    }
    if m & 0x1 == 0 {
        r += 1;
    }
    r
}

/// An [`image`] in 32 bits, for a [`RecordHeader`].
pub const fn image_tag(image: u64) -> u32 {
    (image ^ (image >> 32)) as u32
}

/// A target's sample budget (a token bucket counted in nanoseconds), in `BUDGETS`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct Bucket {
    pub credit_ns: u64,
    pub last_ns: u64,
    pub taken: u64,
    pub skipped: u64,
}
