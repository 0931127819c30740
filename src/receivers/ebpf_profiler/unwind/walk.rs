//! The eBPF program's walk, in user space: the same lookup and step (from [`rules`]),
//! over any [`Memory`] and a process's mappings. Tests run it on core files and compare
//! with gdb; it also documents, in plain Rust, what the kernel side does.

use std::sync::Arc;

use super::rules::{Memory, Regs, fp_step, step, stop};
use super::table::Table;

/// One executable mapping of a process.
#[derive(Clone)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Runtime address minus ELF virtual address.
    pub bias: u64,
    /// None: no table (JIT, anonymous code): frame pointers only.
    pub table: Option<Arc<Table>>,
}

/// A walked stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    /// Program counters, leaf first (return addresses after the first).
    pub frames: Vec<u64>,
    /// Why it ended ([`stop`]).
    pub stop: u8,
    /// Frames reached by frame pointer because their code had no table.
    pub fp_frames: usize,
}

/// Walks from `regs`. `fp_fallback`: follow frame pointers through code without a table
/// (the `auto` mode) instead of stopping there (`eh_frame`).
pub fn walk<M: Memory>(
    mappings: &[Mapping],
    mut regs: Regs,
    mem: &mut M,
    max_frames: usize,
    fp_fallback: bool,
) -> Walk {
    let mut frames = Vec::new();
    let mut fp_frames = 0;
    let reason = loop {
        frames.push(regs.pc);
        if frames.len() >= max_frames {
            break stop::TRUNCATED;
        }
        let pc = regs.lookup_pc();
        let mapping = mappings.iter().find(|m| m.start <= pc && pc < m.end);
        let (row, why) = match mapping {
            None => (None, stop::NO_MAPPING),
            Some(m) => match &m.table {
                None => (None, stop::NO_TABLE),
                Some(t) => (t.lookup(pc.wrapping_sub(m.bias)), stop::NO_TABLE),
            },
        };
        let r = match row {
            Some(row) => step(row, &mut regs, mem),
            None if fp_fallback => {
                fp_frames += 1;
                fp_step(&mut regs, mem, why)
            }
            None => Err(why),
        };
        if let Err(reason) = r {
            break reason;
        }
    };
    Walk {
        frames,
        stop: reason,
        fp_frames,
    }
}
