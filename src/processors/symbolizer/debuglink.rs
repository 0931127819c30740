//! `.gnu_debuglink`: the separate debug file of a stripped binary, found by Stackline
//! under the rules of [`crate::host::open`], never by blazesym.
//!
//! A binary's `.gnu_debuglink` section holds a file name, padding to four bytes, and
//! the CRC32 of the debug file. The binary is often one a sampled process chose, so the
//! name is treated as hostile input:
//!
//! - it must be a plain file name (no `/`, not `.` or `..`, 1 to 255 bytes): a name,
//!   not a path, so it cannot leave the directory it is looked up in;
//! - it is looked up only in the operator's `debug_dirs`, as `DIR/<dirname of the
//!   binary's path>/NAME` (GDB's layout, e.g. `/usr/lib/debug/usr/bin/NAME`) and then
//!   `DIR/NAME` — never next to the binary, nor anywhere else a process controls;
//! - candidates are opened non-blocking and only as regular files (a FIFO is refused at
//!   once instead of blocking the worker), and read with `pread`, never mapped, to check
//!   the CRC32 of the whole file (a file over the size bound is refused unread);
//! - the file found then goes the way a debug file found by build ID goes, so it is
//!   mapped only when only root can shrink it, else copied first
//!   ([`mappable`](crate::host::open::mappable)).
//!
//! blazesym (0.2.7) would follow the link itself whenever it reads DWARF (`debug_syms`):
//! it looks the name up next to the binary and in its debug directories, joins it to
//! them as a path (an absolute name replaces the directory), and opens and maps what it
//! finds with a blocking `open`; it does the same for `.gnu_debugaltlink` and
//! `.debug_sup`. No setting turns that off alone, so a file that has any of these
//! sections is handed to blazesym without DWARF ([`names_other_files`]).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use object::{Object, ObjectSection, ReadCache};

use crate::host::open::open_regular;

/// Sections through which blazesym opens another file when it reads DWARF.
const LINK_SECTIONS: [&[u8]; 3] = [b".gnu_debuglink", b".gnu_debugaltlink", b".debug_sup"];

/// Longest name accepted (NAME_MAX).
const MAX_NAME: usize = 255;

/// Whether blazesym, reading DWARF from `f`, would go looking for another file: `f` has
/// a section that names one (or cannot be parsed well enough to tell). Such a file is
/// handed to blazesym with `debug_syms` off, so it reads `f` alone (its ELF symbols).
pub fn names_other_files(f: &File) -> bool {
    let cache = ReadCache::new(f);
    let Ok(elf) = object::File::parse(&cache) else {
        return true;
    };
    elf.sections()
        .any(|s| s.name_bytes().map_or(true, |n| LINK_SECTIONS.contains(&n)))
}

/// What following a binary's debug link gave.
#[derive(Debug)]
pub enum Lookup {
    /// The binary has no `.gnu_debuglink`.
    NoLink,
    /// The debug file, its CRC checked.
    Found(File),
    /// No debug file used, and why (the `result` label of
    /// [`SYMBOLIZER_DEBUGLINKS`](crate::telemetry::names::SYMBOLIZER_DEBUGLINKS)).
    Refused(&'static str),
}

impl Lookup {
    /// The `result` label to count this lookup under; none without a link.
    pub fn result(&self) -> Option<&'static str> {
        match self {
            Lookup::NoLink => None,
            Lookup::Found(_) => Some("found"),
            Lookup::Refused(r) => Some(r),
        }
    }
}

/// The debug file that `binary` (mapped from `binary_path`, as the process named it)
/// links to, looked for in `debug_dirs` only (see the module doc). Files over `max_len`
/// bytes are not read.
pub fn find(binary: &File, binary_path: &str, debug_dirs: &[PathBuf], max_len: u64) -> Lookup {
    let (name, crc) = match read_link(binary) {
        Ok(Some(link)) => link,
        Ok(None) => return Lookup::NoLink,
        Err(_) => return Lookup::Refused("invalid_name"),
    };
    let Some(name) = plain_name(&name) else {
        return Lookup::Refused("invalid_name");
    };
    // The most telling failure wins when no candidate fits.
    let mut failure = "not_found";
    for p in candidates(debug_dirs, binary_path, name) {
        let f = match open_regular(&p) {
            Ok(f) => f,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                continue;
            }
            // A FIFO, device or directory (refused without blocking), or unreadable.
            Err(_) => {
                if failure == "not_found" {
                    failure = "unusable_file";
                }
                continue;
            }
        };
        match crc32(&f, max_len) {
            Ok(c) if c == crc => return Lookup::Found(f),
            Ok(_) => failure = "crc_mismatch",
            Err(_) => {
                if failure == "not_found" {
                    failure = "unusable_file";
                }
            }
        }
    }
    Lookup::Refused(failure)
}

/// The name and CRC of `f`'s `.gnu_debuglink`; an error when the section is malformed.
fn read_link(f: &File) -> Result<Option<(Vec<u8>, u32)>, ()> {
    let cache = ReadCache::new(f);
    let elf = object::File::parse(&cache).map_err(|_| ())?;
    match elf.gnu_debuglink() {
        Ok(Some((name, crc))) => Ok(Some((name.to_vec(), crc))),
        Ok(None) => Ok(None),
        Err(_) => Err(()),
    }
}

/// `name` if it is a plain file name: non-empty, at most 255 bytes, no `/`, not `.` or
/// `..` (it holds no NUL: the section's string ends at the first).
pub fn plain_name(name: &[u8]) -> Option<&OsStr> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.contains(&b'/')
        && !name.contains(&0)
        && name != b"."
        && name != b"..";
    ok.then(|| OsStr::from_bytes(name))
}

/// Where `name` is looked for, in order: under each debug directory, below the
/// binary's directory (when that is an absolute path of plain components: a `..` from a
/// request must not climb out of the debug directory), then directly.
pub fn candidates(debug_dirs: &[PathBuf], binary_path: &str, name: &OsStr) -> Vec<PathBuf> {
    let bin_dir = Path::new(binary_path)
        .parent()
        .filter(|_| binary_path.starts_with('/'))
        .filter(|d| {
            d.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        })
        .map(|d| d.strip_prefix("/").unwrap_or(d));
    let mut out: Vec<PathBuf> = Vec::new();
    for dir in debug_dirs {
        let below = bin_dir.map(|b| dir.join(b).join(name));
        for p in below.into_iter().chain([dir.join(name)]) {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// The CRC32 of all of `f`, read with `pread`; `FileTooLarge` over `max_len` bytes. A
/// file that shrinks meanwhile gives the CRC of what was read (a mismatch).
pub fn crc32(f: &File, max_len: u64) -> io::Result<u32> {
    let len = f.metadata()?.len();
    if len > max_len {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("{len} bytes, over {max_len}"),
        ));
    }
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; (256 << 10).min(len as usize).max(1)];
    let mut at = 0u64;
    while at < len {
        let want = buf.len().min((len - at) as usize);
        match f.read_at(&mut buf[..want], at) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                at += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_accepted() {
        for good in [&b"libc.so.6.debug"[..], b"a", b"..x", b"x..", &[b'n'; 255]] {
            assert!(plain_name(good).is_some(), "{good:?}");
        }
        for bad in [
            &b""[..],
            b".",
            b"..",
            b"../x.debug",
            b"a/b",
            b"/etc/passwd",
            b"x/",
            b"a\0b",
            &[b'n'; 256],
        ] {
            assert!(plain_name(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn candidates_stay_under_the_debug_dirs() {
        let dirs = [PathBuf::from("/usr/lib/debug"), PathBuf::from("/srv/dbg")];
        let n = OsStr::new("libc.so.6.debug");
        assert_eq!(
            candidates(&dirs, "/usr/lib/x86_64-linux-gnu/libc.so.6", n),
            [
                "/usr/lib/debug/usr/lib/x86_64-linux-gnu/libc.so.6.debug",
                "/usr/lib/debug/libc.so.6.debug",
                "/srv/dbg/usr/lib/x86_64-linux-gnu/libc.so.6.debug",
                "/srv/dbg/libc.so.6.debug",
            ]
            .map(PathBuf::from)
        );
        // A binary at the root, a relative path, a `..`, a `.`: the name alone.
        for path in [
            "/app",
            "app/bin",
            "/../../tmp/app",
            "/usr/../tmp/app",
            "[vdso]",
        ] {
            assert_eq!(
                candidates(&dirs[..1], path, n),
                [PathBuf::from("/usr/lib/debug/libc.so.6.debug")],
                "{path}"
            );
        }
    }

    #[test]
    fn crc32_is_the_debuglink_checksum_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        // The CRC-32 check value of "123456789".
        std::fs::write(&p, b"123456789").unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(crc32(&f, 9).unwrap(), 0xcbf4_3926);
        assert_eq!(
            crc32(&f, 8).unwrap_err().kind(),
            io::ErrorKind::FileTooLarge
        );
        std::fs::write(&p, vec![7u8; 600 << 10]).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(
            crc32(&f, 1 << 20).unwrap(),
            crc32fast::hash(&vec![7u8; 600 << 10])
        );
    }

    #[test]
    fn a_file_with_a_link_section_is_read_alone() {
        let dir = tempfile::tempdir().unwrap();
        let src = crate::testing::workload_source("inlines.c");
        let bin = dir.path().join("bin");
        if crate::testing::compile_c("link sections", "gcc", &bin, &[&src], &["-O2", "-g"])
            .is_none()
        {
            return;
        }
        assert!(!names_other_files(&File::open(&bin).unwrap()));
        let dbg = dir.path().join("bin.debug");
        let linked = dir.path().join("linked");
        let objcopy = |args: &[&OsStr]| {
            let o = std::process::Command::new("objcopy").args(args).output();
            assert!(o.unwrap().status.success(), "objcopy {args:?}");
        };
        objcopy(&["--only-keep-debug".as_ref(), bin.as_ref(), dbg.as_ref()]);
        let add = format!("--add-gnu-debuglink={}", dbg.display());
        objcopy(&[add.as_ref(), bin.as_ref(), linked.as_ref()]);
        assert!(names_other_files(&File::open(&linked).unwrap()));
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"not an ELF file").unwrap();
        assert!(names_other_files(&File::open(&junk).unwrap()));
    }
}
