//! Writing files into directories others may also write to (the exporters' output
//! directories, the eBPF receiver's verifier-log directory). The agent runs as root, so
//! a file is created afresh, never through a symlink and never over an existing file,
//! with exactly the mode asked for.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// Creates `path` for writing: never through a symlink, never over an existing file,
/// with exactly `mode` (the process umask would otherwise narrow it).
pub fn create_new(path: &Path, mode: u32) -> io::Result<fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    Ok(f)
}

/// Writes `bytes` whole into a hidden file beside `dir/name` (`.NAME.tmp`, created with
/// [`create_new`], a leftover of an earlier crash removed first: the name is private to
/// the caller) and returns its path, for the caller to rename into place. On failure
/// nothing is left behind.
pub fn write_aside(dir: &Path, name: &str, mode: u32, bytes: &[u8]) -> io::Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let written = create_new(&tmp, mode).and_then(|mut f| io::Write::write_all(&mut f, bytes));
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Writes `bytes` as `dir/name`, replacing what was there, so that a reader sees the
/// old file or the new one and never half of one: [`write_aside`], then renamed over
/// `name`.
pub fn replace_whole(dir: &Path, name: &str, mode: u32, bytes: &[u8]) -> io::Result<PathBuf> {
    let path = dir.join(name);
    let tmp = write_aside(dir, name, mode, bytes)?;
    fs::rename(&tmp, &path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    Ok(path)
}

/// `rename(from, to)` that fails with `AlreadyExists` instead of replacing `to`.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both paths are NUL-terminated; renameat2 only reads them.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the filesystem of `f` keeps its files in memory (tmpfs, ramfs): a copy there
/// would take as much memory as decompressing on the heap, only less visibly.
pub fn in_memory(f: &File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain C struct, zero is a valid value; fstatfs fills it or fails.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a pointer to a statfs.
    if unsafe { libc::fstatfs(f.as_raw_fd(), &mut s) } != 0 {
        return Err(io::Error::last_os_error());
    }
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    Ok(matches!(s.f_type as i64, libc::TMPFS_MAGIC | RAMFS_MAGIC))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_whole_replaces_a_file_but_not_through_a_planted_temporary_link() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        fs::write(&outside, b"precious").unwrap();
        fs::write(d.path().join("x.log"), b"old").unwrap();
        // A symlink where the temporary file goes is removed, not followed.
        std::os::unix::fs::symlink(&outside, d.path().join(".x.log.tmp")).unwrap();
        let p = replace_whole(d.path(), "x.log", 0o640, b"new").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(fs::read(&outside).unwrap(), b"precious");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert!(!d.path().join(".x.log.tmp").exists());
    }
}
