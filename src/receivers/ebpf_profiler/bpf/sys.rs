//! The few system calls the profiler makes itself: loading a program with a verifier
//! log we size (aya does not read `log_true_size`), opening cpu-clock perf events and
//! attaching the program to them, and reading a program's run-time statistics.
//! All `unsafe` of the receiver is here.

use std::ffi::CStr;
use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use aya_obj::generated::{
    PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_SET_BPF, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_info,
    perf_event_attr, perf_event_sample_format, perf_sw_ids, perf_type_id,
};

/// `PERF_FLAG_FD_CLOEXEC` from linux/perf_event.h.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// What a `BPF_PROG_LOAD` call needs besides the log.
pub struct ProgLoad<'a> {
    pub prog_type: u32,
    pub name: &'a str,
    pub insns: &'a [bpf_insn],
    pub license: &'a CStr,
    pub kern_version: u32,
}

/// One `BPF_PROG_LOAD` call. `log`: the buffer and level, or `None` for no log.
/// Returns the program fd (or the error) and the `log_true_size` the kernel reported
/// (0 when it has none: kernels before 6.4, or no log requested).
pub fn prog_load(p: &ProgLoad<'_>, log: Option<(&mut [u8], u32)>) -> (io::Result<OwnedFd>, u32) {
    // SAFETY: bpf_attr is a plain C union; all-zero is its documented initial state.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    // SAFETY: BPF_PROG_LOAD uses this member of the union.
    let u = unsafe { &mut attr.__bindgen_anon_3 };
    u.prog_type = p.prog_type;
    u.insns = p.insns.as_ptr() as u64;
    u.insn_cnt = p.insns.len() as u32;
    u.license = p.license.as_ptr() as u64;
    u.kern_version = p.kern_version;
    let name = p.name.as_bytes();
    let n = name.len().min(u.prog_name.len() - 1);
    for (dst, src) in u.prog_name.iter_mut().zip(&name[..n]) {
        *dst = *src as _;
    }
    if let Some((buf, level)) = log {
        u.log_level = level;
        // A NULL buffer of size 0 is allowed with a level set (6.4+): the kernel then only
        // reports the size it needs.
        if !buf.is_empty() {
            u.log_buf = buf.as_mut_ptr() as u64;
            u.log_size = buf.len() as u32;
        }
    }
    // SAFETY: `attr` is a valid BPF_PROG_LOAD attribute whose pointers (instructions,
    // license, log buffer) outlive the call.
    let result = unsafe { bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) }
        // SAFETY: on success BPF_PROG_LOAD returns a new file descriptor we now own.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd as i32) });
    // SAFETY: same union member; the kernel wrote log_true_size into it.
    let true_size = unsafe { attr.__bindgen_anon_3.log_true_size };
    (result, true_size)
}

/// Opens a cpu-clock software event on `cpu` for every process, sampling at `freq` Hz.
/// With `exclude_idle`, the clock's ticks on an idle CPU run no program at all (the
/// program would only skip them).
pub fn perf_event_open_cpu_clock(cpu: u32, freq: u64, exclude_idle: bool) -> io::Result<OwnedFd> {
    // SAFETY: perf_event_attr is a plain C struct; all-zero is its documented initial state.
    let mut attr: perf_event_attr = unsafe { mem::zeroed() };
    attr.type_ = perf_type_id::PERF_TYPE_SOFTWARE as u32;
    attr.size = mem::size_of::<perf_event_attr>() as u32;
    attr.config = perf_sw_ids::PERF_COUNT_SW_CPU_CLOCK as u64;
    attr.__bindgen_anon_1.sample_freq = freq;
    attr.set_freq(1);
    attr.set_disabled(1);
    attr.set_exclude_idle(exclude_idle as u64);
    attr.sample_type = perf_event_sample_format::PERF_SAMPLE_RAW as u64;
    // SAFETY: a valid attribute; pid -1 with a cpu means every process on that cpu.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const perf_event_attr,
            -1 as libc::pid_t,
            cpu as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: perf_event_open returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches the program to a perf event and enables the event.
pub fn perf_event_attach(event: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: both are valid fds; SET_BPF takes the program fd as its argument.
    if unsafe {
        libc::ioctl(
            event.as_raw_fd(),
            PERF_EVENT_IOC_SET_BPF as _,
            prog.as_raw_fd(),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a valid perf event fd; ENABLE takes no argument.
    if unsafe { libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_ENABLE as _, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `BPF_RAW_TRACEPOINT_OPEN`: attaches `prog` (a raw tracepoint program) to the kernel
/// tracepoint `name`; closing the returned fd detaches it.
pub fn raw_tracepoint_open(name: &str, prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a tracepoint name"))?;
    // SAFETY: plain C union, zero is its initial state.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    attr.raw_tracepoint.name = name.as_ptr() as u64;
    attr.raw_tracepoint.prog_fd = prog.as_raw_fd() as u32;
    // SAFETY: `name` outlives the call; the command returns a new fd.
    let fd = unsafe { bpf(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr) }?;
    // SAFETY: a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A program's cumulative run time and run count (non-zero only while
/// `kernel.bpf_stats_enabled` is 1).
pub fn prog_run_stats(prog: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    // SAFETY: plain C struct, zero-initialised.
    let mut info: bpf_prog_info = unsafe { mem::zeroed() };
    obj_info(prog.as_raw_fd(), &mut info)?;
    Ok((info.run_time_ns, info.run_cnt))
}

/// The id of every BPF program (`prog`) or map loaded in the kernel right now. Opens
/// nothing, so it is safe to poll while an agent's objects are on their way out.
pub fn loaded_ids(prog: bool) -> io::Result<Vec<u32>> {
    let next_cmd = if prog {
        bpf_cmd::BPF_PROG_GET_NEXT_ID
    } else {
        bpf_cmd::BPF_MAP_GET_NEXT_ID
    };
    let mut out = Vec::new();
    let mut id = 0u32;
    loop {
        // SAFETY: plain C union, zero is its initial state.
        let mut attr: bpf_attr = unsafe { mem::zeroed() };
        // The GET_NEXT_ID commands use this member (writing a union field is safe).
        attr.__bindgen_anon_6.__bindgen_anon_1.start_id = id;
        // SAFETY: the GET_NEXT_ID commands carry no pointers.
        if let Err(e) = unsafe { bpf(next_cmd, &mut attr) } {
            return if e.raw_os_error() == Some(libc::ENOENT) {
                Ok(out)
            } else {
                Err(e)
            };
        }
        // SAFETY: the kernel wrote next_id into the same member.
        id = unsafe { attr.__bindgen_anon_6.next_id };
        out.push(id);
    }
}

/// A BPF program loaded in the kernel, as [`loaded_programs`] lists it.
#[derive(Debug, Clone)]
pub struct LoadedProgram {
    pub id: u32,
    pub name: String,
    /// The maps the program uses.
    pub map_ids: Vec<u32>,
}

/// Every BPF program loaded in the kernel right now, with the ids of the maps it uses
/// (for operators and tests: a stopped or killed agent must leave none behind).
/// Programs that go away meanwhile are left out.
pub fn loaded_programs() -> io::Result<Vec<LoadedProgram>> {
    let mut out = Vec::new();
    for id in loaded_ids(true)? {
        let Some(fd) = fd_by_id(bpf_cmd::BPF_PROG_GET_FD_BY_ID, id) else {
            continue;
        };
        let (name, map_ids) = prog_info(fd.as_fd())?;
        out.push(LoadedProgram { id, name, map_ids });
    }
    Ok(out)
}

/// The name of the map with this id, or None if it is gone.
///
/// Only for a map its owner still holds open. Opening a program array by id after its
/// last owner closed it, then closing it again, can leak the map in the kernel for good
/// (seen on 6.18): each last close queues the array's clean-up work and takes a reference
/// for it, and a second close while that work is still queued takes a reference nothing
/// drops. So never poll maps of a dying process by id; poll [`loaded_ids`].
pub fn map_name(id: u32) -> Option<String> {
    map_by_id(id).ok()?.map(|(_, name)| name)
}

/// A new fd on the map with this id and the map's name; None if it is gone. See
/// [`map_name`] on when opening a map by id is safe.
fn map_by_id(id: u32) -> io::Result<Option<(OwnedFd, String)>> {
    let Some(fd) = fd_by_id(bpf_cmd::BPF_MAP_GET_FD_BY_ID, id) else {
        return Ok(None);
    };
    // SAFETY: plain C struct, zero-initialised.
    let mut info: aya_obj::generated::bpf_map_info = unsafe { mem::zeroed() };
    obj_info(fd.as_raw_fd(), &mut info)?;
    Ok(Some((fd, name_of(&info.name))))
}

/// A program's name and the ids of the maps it uses.
fn prog_info(prog: BorrowedFd<'_>) -> io::Result<(String, Vec<u32>)> {
    // SAFETY: plain C struct, zero-initialised.
    let mut info: bpf_prog_info = unsafe { mem::zeroed() };
    obj_info(prog.as_raw_fd(), &mut info)?;
    let mut ids = vec![0u32; info.nr_map_ids as usize];
    // SAFETY: plain C struct, zero-initialised; map_ids points at room for nr_map_ids ids.
    let mut info: bpf_prog_info = unsafe { mem::zeroed() };
    info.nr_map_ids = ids.len() as u32;
    info.map_ids = ids.as_mut_ptr() as u64;
    obj_info(prog.as_raw_fd(), &mut info)?;
    ids.truncate(info.nr_map_ids as usize);
    Ok((name_of(&info.name), ids))
}

/// Kernel memory of each map `prog` uses, as (map name, bytes): the `memlock` the kernel
/// charges for the map (its `/proc/self/fdinfo` entry). Maps that close meanwhile are left out.
/// The maps are opened by id, so call this only while the agent holds them (see [`map_name`]).
pub fn prog_map_memory(prog: BorrowedFd<'_>) -> io::Result<Vec<(String, u64)>> {
    let (_, ids) = prog_info(prog)?;
    let mut out = Vec::new();
    for id in ids {
        let Some((fd, name)) = map_by_id(id)? else {
            continue;
        };
        let memlock = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        out.push((name, memlock));
    }
    Ok(out)
}

/// `BPF_MAP_FREEZE`: no more writes from user space (the verifier may then treat a
/// read-only global as the constant it holds).
pub fn map_freeze(map: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain C union, zero is its initial state.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    // BPF_MAP_FREEZE reads the fd from the element commands' member (writing a union
    // field is safe).
    attr.__bindgen_anon_2.map_fd = map.as_raw_fd() as u32;
    // SAFETY: BPF_MAP_FREEZE carries no pointers.
    unsafe { bpf(bpf_cmd::BPF_MAP_FREEZE, &mut attr) }.map(drop)
}

/// The `bpf()` system call with `attr`; its non-negative result, or the error.
///
/// # Safety
/// `attr` must be valid for `cmd`: every pointer in it valid for the sizes it gives,
/// for the length of the call.
unsafe fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<libc::c_long> {
    // SAFETY: the caller vouches for `attr`; its size is that of `bpf_attr`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            mem::size_of::<bpf_attr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A new fd for the program or map with this id (`BPF_PROG_GET_FD_BY_ID` or
/// `BPF_MAP_GET_FD_BY_ID`); None if it is gone.
fn fd_by_id(cmd: bpf_cmd, id: u32) -> Option<OwnedFd> {
    // SAFETY: plain C union, zero is its initial state.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    // GET_FD_BY_ID reads the id from this member (prog_id and map_id share it).
    attr.__bindgen_anon_6.__bindgen_anon_1.prog_id = id;
    // SAFETY: the GET_FD_BY_ID commands carry no pointers.
    let fd = unsafe { bpf(cmd, &mut attr) }.ok()?;
    // SAFETY: a new fd we own.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn name_of(raw: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// BPF_OBJ_GET_INFO_BY_FD into `info`.
fn obj_info<T>(fd: i32, info: &mut T) -> io::Result<()> {
    // SAFETY: plain C union, zero-initialised.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD uses this member.
    let u = unsafe { &mut attr.info };
    u.bpf_fd = fd as u32;
    u.info_len = mem::size_of::<T>() as u32;
    u.info = info as *mut T as u64;
    // SAFETY: `info` outlives the call and its size is given.
    unsafe { bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr) }.map(drop)
}

/// `BPF_F_INNER_MAP`: inner maps of one outer map may differ in `max_entries` (5.10+).
pub const BPF_F_INNER_MAP: u32 = 1 << 12;
/// `BPF_F_NO_PREALLOC`.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// `BPF_MAP_CREATE`: a map aya cannot create (a map-of-maps from a legacy definition,
/// and its inner maps).
pub fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
    inner: Option<BorrowedFd<'_>>,
    name: &str,
) -> io::Result<OwnedFd> {
    // SAFETY: plain C union, zero is its initial state.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    // SAFETY: BPF_MAP_CREATE uses this member.
    let u = unsafe { &mut attr.__bindgen_anon_1 };
    u.map_type = map_type;
    u.key_size = key_size;
    u.value_size = value_size;
    u.max_entries = max_entries;
    u.map_flags = flags;
    u.inner_map_fd = inner.map_or(0, |f| f.as_raw_fd() as u32);
    let name = name.as_bytes();
    let n = name.len().min(u.map_name.len() - 1);
    for (dst, src) in u.map_name.iter_mut().zip(&name[..n]) {
        *dst = *src as _;
    }
    // SAFETY: a valid BPF_MAP_CREATE attribute, without pointers.
    let fd = unsafe { bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr) }?;
    // SAFETY: BPF_MAP_CREATE returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_MAP_UPDATE_ELEM` (`value` None: `BPF_MAP_DELETE_ELEM`) with raw key and value bytes.
pub fn map_update(map: BorrowedFd<'_>, key: &[u8], value: Option<&[u8]>) -> io::Result<()> {
    // SAFETY: plain C union, zero is its initial state.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    // SAFETY: the element commands use this member.
    let u = unsafe { &mut attr.__bindgen_anon_2 };
    u.map_fd = map.as_raw_fd() as u32;
    u.key = key.as_ptr() as u64;
    let cmd = match value {
        Some(v) => {
            u.__bindgen_anon_1.value = v.as_ptr() as u64;
            bpf_cmd::BPF_MAP_UPDATE_ELEM
        }
        None => bpf_cmd::BPF_MAP_DELETE_ELEM,
    };
    // SAFETY: `key` and `value` outlive the call and have the map's sizes (the kernel
    // reads exactly key_size and value_size bytes).
    unsafe { bpf(cmd, &mut attr) }.map(drop)
}

/// Lifts RLIMIT_MEMLOCK, which kernels before 5.11 charge BPF maps and programs to.
pub fn raise_memlock_rlimit() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct; failure (no CAP_SYS_RESOURCE) is harmless on 5.11+.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
}

/// Boot time offset: CLOCK_REALTIME minus CLOCK_MONOTONIC, in nanoseconds, so
/// `bpf_ktime_get_ns()` values convert to Unix time.
pub fn monotonic_to_unix_offset_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of `bpf_ktime_get_ns()`, so a sample's
/// time compares with it.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Human meaning of an errno, e.g. `EPERM (Operation not permitted)`.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::E2BIG => "E2BIG",
        libc::ENOSPC => "ENOSPC",
        libc::ENOMEM => "ENOMEM",
        libc::EFAULT => "EFAULT",
        libc::ENOENT => "ENOENT",
        libc::ENODEV => "ENODEV",
        libc::EBUSY => "EBUSY",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESRCH => "ESRCH",
        _ => "",
    };
    let text = io::Error::from_raw_os_error(errno).to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_owned();
    if name.is_empty() {
        format!("errno {errno} ({text})")
    } else {
        format!("{name} ({text})")
    }
}

/// Waits until one of `fds` is readable or `timeout` passes; true if one is.
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout: std::time::Duration) -> io::Result<bool> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // Rounded up: a timeout under a millisecond rounded down to 0 would make the
    // caller's wait for a deadline a busy loop of polls for that last millisecond.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    // SAFETY: `p` holds p.len() valid pollfds for the duration of the call.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
    match r {
        n if n > 0 => Ok(true),
        0 => Ok(false),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// CPU time this process has used (all threads, user and system), in seconds.
pub fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
