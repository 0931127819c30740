//! What the agent reads from the host it runs on, shared by the eBPF receiver (which
//! describes processes) and the symbolizer (which reads their files): `/proc`, cgroups,
//! ELF files, the rules for opening files other users control ([`open`]), and for
//! writing into directories they can write to ([`fs`]).
//!
//! Owns unsafe code: the system calls std does not wrap (openat2, renameat2, fstatfs,
//! PROCMAP_QUERY, memfd seals) and allocator settings, each behind a safe function.

#![allow(unsafe_code)]

pub mod cgroup;
pub mod elf;
pub mod fs;
pub mod open;
pub mod proc;

/// Bytes per page of memory.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as u64,
        _ => 4096,
    }
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// All threads allocate from one glibc arena. With an arena per thread (glibc's default,
/// up to 8 per core) the agent's anonymous memory was 57 MiB in the native unwinding
/// mode, most of it free space held by the arenas of threads that had once built a
/// table or symbolized a file; with one it is 24 MiB. The threads allocate little per
/// sample (samples are aggregated per stack), so they do not contend for it.
/// `MALLOC_ARENA_MAX` in the environment still overrides this.
///
/// Call it first thing in `main`, before any other thread exists.
pub fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt changes a setting of the allocator; called (as documented)
        // before any other thread exists, so no allocation runs concurrently.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

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
