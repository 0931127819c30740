//! Maps and shared types of Stackline's eBPF programs.
#![no_std]

pub use stackline_ebpf_common::{shared, unwind};

use core::cell::UnsafeCell;
use core::ffi::c_void;

use aya_ebpf::Global;
use aya_ebpf::bindings::{bpf_map_def, bpf_map_type};
use aya_ebpf::macros::map;
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{
    Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf,
};

use shared::{Bucket, Config, MAX_RULES, MappingKeyData, SelectConfig, State, Verdict, counter};
use unwind::{Chunk, MappingInfo};

/// Samples to user space. User space sets its size from the CPU count at load time.
#[map]
pub static SAMPLES: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Per-CPU event counters, indexed by [`shared::counter`].
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Settings from user space.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Selection and the sampling switch, rewritten by user space while the program runs.
#[map]
pub static SELECT: Array<SelectConfig> = Array::with_max_entries(1, 0);

/// Cgroup id → the rules it matches (descendants match through their ancestors).
#[map]
pub static SEL_CGROUPS: HashMap<u64, u64> = HashMap::with_max_entries(1024, 0);

/// Uid → the rules it matches.
#[map]
pub static SEL_UIDS: HashMap<u32, u64> = HashMap::with_max_entries(1024, 0);

/// Pid → the rules it matches (pid rules).
#[map]
pub static SEL_PIDS: HashMap<u32, u64> = HashMap::with_max_entries(1024, 0);

/// Tgid → its verdict, made by the program from the maps above or written by user
/// space with the rules only it can evaluate.
#[map]
pub static VERDICTS: LruHashMap<u32, Verdict> = LruHashMap::with_max_entries(16384, 0);

/// Process changes seen, one counter (bumped by `stackline_exec` and `stackline_exit`
/// on every exec and every process's end): a per-CPU verdict cached at one value
/// still holds at the same value, since its process has neither exec'd nor been
/// replaced by another of the same pid.
#[map]
pub static PROC_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// Per-rule sample counts: `2 * rule` taken, `2 * rule + 1` skipped.
#[map]
pub static SEL_RULES: PerCpuArray<u64> = PerCpuArray::with_max_entries(2 * MAX_RULES as u32, 0);

/// Process (tgid) or cgroup id → its budget.
#[map]
pub static BUDGETS: LruHashMap<u64, Bucket> = LruHashMap::with_max_entries(16384, 0);

/// One sample's walk, per CPU (perf_event programs do not nest on a CPU).
#[map]
pub static STATE: PerCpuArray<State> = PerCpuArray::with_max_entries(1, 0);

/// The walkers, tail-called for the next frames ([`shared::prog`]).
#[map]
pub static PROGS: ProgramArray = ProgramArray::with_max_entries(shared::prog::COUNT, 0);

/// (pid, address) → the mapping and its executable's table id (an LPM trie, so a
/// mapping is a few prefixes, not one entry per page).
#[map]
pub static MAPPINGS: LpmTrie<MappingKeyData, MappingInfo> = LpmTrie::with_max_entries(1 << 20, 0);

/// Executable id → its chunks of rows: a hash of arrays, each sized exactly for its
/// executable. Declared here as a plain hash (aya cannot create a map-of-maps from a
/// legacy definition): user space creates the real map and relocates the program to it.
#[map]
pub static TABLES: OuterMap = OuterMap::new(bpf_map_type::BPF_MAP_TYPE_HASH, 8, 4, 1);

/// Requests for unwind information, to user space.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 16, 0);

/// pid → when it last sent an event: at most one every [`EVENT_EVERY_NS`] per process.
#[map]
pub static EVENT_RATE: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

/// 20 ms: a process's first read often lands while its loader is still mapping
/// libraries, and until the next one its frames in them go unwound (at 200 ms that was
/// a fifth of a second of broken stacks per new process). User space backs off on its
/// side when re-reading finds nothing new.
pub const EVENT_EVERY_NS: u64 = 20_000_000;

/// Offset of `stack` in the kernel's `task_struct`, from its BTF (set at load).
#[unsafe(no_mangle)]
pub static TASK_STACK_OFFSET: Global<u64> = Global::new(0);
/// Offsets of `mm` and `self_exec_id` in the kernel's `task_struct` (set at load; 0:
/// unknown): what a process image is (see `shared::image`).
#[unsafe(no_mangle)]
pub static TASK_MM_OFFSET: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
pub static TASK_EXEC_ID_OFFSET: Global<u64> = Global::new(0);
/// Offset of a task's user `pt_regs` from `task->stack` (set at load).
#[unsafe(no_mangle)]
pub static PT_REGS_OFFSET: Global<u64> = Global::new(0);

pub type MappingKey = Key<MappingKeyData>;

/// A map declared by hand: the outer map of a map-of-maps.
#[repr(transparent)]
pub struct OuterMap(UnsafeCell<bpf_map_def>);

// SAFETY: the definition is only read by the loader; the program uses its address.
unsafe impl Sync for OuterMap {}

impl OuterMap {
    pub const fn new(map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> Self {
        OuterMap(UnsafeCell::new(bpf_map_def {
            type_: map_type,
            key_size,
            value_size,
            max_entries,
            map_flags: 0,
            id: 0,
            pinning: 0,
        }))
    }

    /// Executable `exe_id`'s array of chunks (an inner map), or NULL.
    #[inline(always)]
    pub fn table(&self, exe_id: &u64) -> *mut c_void {
        // SAFETY: the outer lookup returns an inner map, or NULL.
        unsafe {
            aya_ebpf::helpers::generated::bpf_map_lookup_elem(
                self.0.get() as *mut c_void,
                exe_id as *const u64 as *const c_void,
            )
        }
    }
}

/// Chunk `index` of a table from [`OuterMap::table`].
#[inline(always)]
pub fn chunk<'a>(table: *mut c_void, index: u32) -> Option<&'a Chunk> {
    if table.is_null() {
        return None;
    }
    // SAFETY: `table` is an inner map; the lookup returns a pointer to one Chunk in it, or NULL.
    unsafe {
        let c = aya_ebpf::helpers::generated::bpf_map_lookup_elem(
            table,
            &index as *const u32 as *const c_void,
        );
        (c as *const Chunk).as_ref()
    }
}

#[inline(always)]
pub fn bump(index: u32) {
    add(index, 1);
}

#[inline(always)]
pub fn add(index: u32, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; this program is the only writer on this CPU.
        unsafe { *p += n };
    }
}
