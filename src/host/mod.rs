//! What the agent reads from the host it runs on, shared by the eBPF receiver (which
//! describes processes) and the symbolizer (which reads their files): `/proc`, cgroups,
//! ELF files, and the rules for opening files other users control ([`open`]).

pub mod cgroup;
pub mod elf;
pub mod open;
pub mod proc;
