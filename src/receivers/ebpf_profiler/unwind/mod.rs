//! Native unwinding: `.eh_frame` turned into tables the eBPF program walks.
//!
//! - [`rules`]: the row format, lookup and unwind step, shared with the eBPF program.
//! - [`table`]: building an executable's table from its ELF file.
//! - [`walk`]: the same walk in user space, over any memory (tests run it on core files).

pub mod manager;
pub use stackline_ebpf_common::unwind as rules;
pub mod table;

pub use rules::{MappingInfo, Regs};
pub mod walk;

#[cfg(test)]
mod tests;
