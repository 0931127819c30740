//! Maps and shared types of Stackline's eBPF programs.
#![no_std]

pub mod shared;

use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, PerCpuArray, RingBuf};

use shared::{Config, counter};

/// Samples to user space. User space sets its size from the CPU count at load time.
#[map]
pub static SAMPLES: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Per-CPU event counters, indexed by [`shared::counter`].
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Settings from user space.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; this program is the only writer on this CPU.
        unsafe { *p += 1 };
    }
}
