//! Opening files that other users control, as root, without being steered by them.
//!
//! The agent reads binaries of every process on the node. A process's owner decides what
//! its paths point to, so:
//!
//! - every open is non-blocking and checked to be a regular file before anything is read
//!   (a FIFO or a device would block or feed endless data);
//! - a path inside a process's root (`/proc/PID/root/PATH`) is resolved as if that root
//!   were `/` (`openat2` with `RESOLVE_IN_ROOT`): an absolute symlink in a container
//!   cannot lead to the host's files;
//! - a file is memory-mapped only when no one but root can shrink it (see [`may_map`]);
//!   a file truncated under a mapping would kill the agent with SIGBUS. Other files are
//!   read with `pread`, where a truncation is an error, not a signal.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

const FLAGS: libc::c_int = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;

fn not_regular(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{} is not a regular file", path.display()),
    )
}

fn check_regular(f: File, path: &Path) -> io::Result<File> {
    if f.metadata()?.file_type().is_file() {
        Ok(f)
    } else {
        Err(not_regular(path))
    }
}

/// Opens `path` read-only, following symlinks (for `/proc/PID/map_files/…` and paths an
/// operator configured), and only if it is a regular file.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(FLAGS & !libc::O_RDONLY)
        .open(path)?;
    check_regular(f, path)
}

/// Opens `path` as process `pid` sees it: resolved inside `/proc/PID/root`, symlinks
/// and `..` included, never leaving it. Needs Linux 5.6 (`openat2`); older kernels get
/// `Unsupported` and callers use `/proc/PID/map_files` alone.
pub fn open_in_root(pid: u32, path: &str) -> io::Result<File> {
    let root = File::open(format!("/proc/{pid}/root"))?;
    let rel = CString::new(Path::new(path).as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: open_how is plain integers; all-zero is its default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = FLAGS as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads `rel` (NUL-terminated) and `how` (of the size passed) and
    // returns a new descriptor or -1; nothing else is touched.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOSYS) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "openat2 is not available",
            ));
        }
        return Err(e);
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    let f = File::from(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
    check_regular(f, Path::new(path))
}

/// The file behind mapping `start..end` of process `pid`: `/proc/PID/map_files` first
/// (the very file mapped, across mount namespaces), else `path` inside the process's root.
pub fn open_mapped(pid: u32, start: u64, end: u64, path: &str) -> io::Result<File> {
    match open_regular(Path::new(&format!(
        "/proc/{pid}/map_files/{start:x}-{end:x}"
    ))) {
        Ok(f) => Ok(f),
        Err(e) if path.starts_with('/') => open_in_root(pid, path).map_err(|e2| {
            io::Error::new(
                e2.kind(),
                format!("map_files: {e}; {path} in its root: {e2}"),
            )
        }),
        Err(e) => Err(e),
    }
}

/// Whether `f` may be memory-mapped: only root can shrink it (owned by root, writable by
/// no group or other user). Anything else could be truncated by its owner while mapped.
pub fn may_map(f: &File) -> bool {
    f.metadata()
        .is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0 && m.file_type().is_file())
}

/// `f` in a form safe to memory-map, and how many bytes were copied to get it: `f` itself
/// when only root can shrink it ([`may_map`]), else a copy of it in a sealed memfd, which
/// no one can shrink or change. The copy is read with `pread`, so a file truncated
/// meanwhile gives a short copy (symbols missing), never a signal. Files over
/// `max_copy` bytes are refused rather than copied.
pub fn mappable(f: File, max_copy: u64) -> io::Result<(File, u64)> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    if may_map(&f) {
        return Ok((f, 0));
    }
    let len = f.metadata()?.len();
    if len > max_copy {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("{len} bytes, over the {max_copy} a copy may take"),
        ));
    }
    // SAFETY: the name is NUL-terminated; memfd_create returns a new fd or -1.
    let fd = unsafe {
        libc::memfd_create(
            c"stackline-elf-copy".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    let mut copy = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = match f.read_at(&mut buf, at) {
            Ok(0) => break,
            Ok(n) => n.min((len - at) as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        copy.write_all(&buf[..n])?;
        at += n as u64;
    }
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on our own fd with an integer argument.
    if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((copy, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn refuses_fifos_and_directories_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path only.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let e = open_regular(&fifo).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(open_regular(dir.path()).is_err());
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        assert!(open_regular(&f).is_ok());
    }

    #[test]
    fn a_symlink_inside_a_process_root_stays_inside() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: chroot needs root");
            return;
        }
        // A host file, and a process chrooted into `root` where an absolute symlink
        // points at the same path.
        let host = tempfile::tempdir().unwrap();
        let secret = host.path().join("secret");
        std::fs::write(&secret, b"host").unwrap();
        let root = tempfile::tempdir().unwrap();
        let inside = root.path().join(secret.strip_prefix("/").unwrap());
        std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
        std::fs::write(&inside, b"inside!").unwrap();
        std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
        std::os::unix::fs::symlink(&secret, root.path().join("usr/bin/app")).unwrap();
        std::os::unix::fs::symlink("../../../../../..", root.path().join("usr/bin/up")).unwrap();
        let c = CString::new(root.path().as_os_str().as_bytes()).unwrap();
        // SAFETY: the child only calls async-signal-safe functions (chroot, pause, _exit).
        let child = unsafe { libc::fork() };
        assert!(child >= 0);
        if child == 0 {
            unsafe {
                if libc::chroot(c.as_ptr()) != 0 {
                    libc::_exit(1);
                }
                loop {
                    libc::pause();
                }
            }
        }
        let pid = child as u32;
        // Wait until the child is chrooted.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{pid}/root"))
            .ok()
            .as_deref()
            != Some(root.path())
        {
            assert!(
                std::time::Instant::now() < until,
                "the child did not chroot"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let read = |p: &str| -> io::Result<String> {
            let mut s = String::new();
            io::Read::read_to_string(&mut open_in_root(pid, p)?, &mut s)?;
            Ok(s)
        };
        assert_eq!(read("/usr/bin/app").unwrap(), "inside!");
        let via_up = format!("/usr/bin/up{}", secret.display());
        assert_eq!(read(&via_up).unwrap(), "inside!");
        // Following the same path through /proc/PID/root the usual way leaks the host file.
        assert_eq!(
            std::fs::read_to_string(format!("/proc/{pid}/root/usr/bin/app")).unwrap(),
            "host"
        );
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
    }

    #[test]
    fn a_file_others_can_shrink_is_copied_into_a_sealed_memfd() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bin");
        std::fs::write(&f, vec![7u8; 3 << 20]).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (copy, copied) = mappable(File::open(&f).unwrap(), 64 << 20).unwrap();
        assert_eq!(copied, 3 << 20);
        // The owner truncates the original: the copy keeps its size, and cannot be shrunk.
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&f)
            .unwrap();
        assert_eq!(copy.metadata().unwrap().len(), 3 << 20);
        assert!(copy.set_len(0).is_err());
        // Too large to copy: refused.
        std::fs::write(&f, vec![1u8; 4096]).unwrap();
        let e = mappable(File::open(&f).unwrap(), 100).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
    }

    #[test]
    fn only_root_owned_files_no_one_else_can_write_are_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bin");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let is_root = unsafe { libc::geteuid() } == 0;
        assert_eq!(may_map(&File::open(&f).unwrap()), is_root);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(!may_map(&File::open(&f).unwrap()));
    }
}
