//! What the agent reads from the host it runs on, shared by the eBPF receiver (which
//! describes processes) and the symbolizer (which reads their files): `/proc`, cgroups,
//! ELF files, the rules for opening files other users control ([`open`]), and for
//! writing into directories they can write to ([`fs`]).

pub mod cgroup;
pub mod elf;
pub mod fs;
pub mod open;
pub mod proc;

/// Hands freed heap memory back to the kernel. glibc's malloc keeps freed memory
/// mapped otherwise: after a burst of work (a table build, a first symbolization that
/// loads kallsyms) the resident size would stay at its peak with the data long gone.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
