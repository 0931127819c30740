//! Types and logic shared by Stackline's eBPF object and user space.
//!
//! - [`shared`]: the sample record, the settings, events and counter indices
//!   (`#[repr(C)]`, plain integers only).
//! - [`unwind`]: the compact unwind rules, the row lookup and one unwind step, run by
//!   the eBPF program on live stacks and by user space on core files in tests.
//!
//! Owns unsafe code: the casts of a chunk to its directory entries in [`unwind`], and,
//! with the `user` feature, the `aya::Pod` impls (every type here is plain integers).
#![no_std]

pub mod shared;
pub mod unwind;

#[cfg(feature = "user")]
mod pod {
    use crate::shared::{
        Bucket, Config, Event, MappingKeyData, RecordHeader, SelectConfig, Verdict,
    };
    use crate::unwind::{Chunk, MappingInfo};

    // SAFETY: each is #[repr(C)] (or packed) and holds only integers, so every bit
    // pattern is a valid value and its bytes are its value.
    unsafe impl aya::Pod for Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for MappingKeyData {}
    // SAFETY: as above.
    unsafe impl aya::Pod for MappingInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Chunk {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SelectConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Verdict {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Bucket {}
    // SAFETY: as above (its `_pad` makes the size a multiple of 8, with no hidden padding).
    unsafe impl aya::Pod for RecordHeader {}
}
