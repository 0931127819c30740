//! Copies of ELF files with their compressed sections (`SHF_COMPRESSED`, as Debian's
//! debug packages ship `.debug_*`) decompressed, in an unlinked file on disk.
//!
//! blazesym reads sections straight from a memory-mapped file, but decompresses a
//! compressed one onto the heap and keeps it for as long as it holds the file: 10–15 MB
//! of anonymous memory for libc's debug file alone. Handed a copy whose sections are
//! plain, it maps them instead: file-backed pages, which the kernel can drop and read
//! back. The copy has no name (`O_TMPFILE`), so it is gone when the last descriptor is
//! closed, and nothing another user puts in the directory can be taken for it.
//!
//! The copy is the original file, the decompressed sections appended, and a new section
//! header table after them that points at those (the old table and the compressed bytes
//! stay in place, unused). Program headers, notes and every other section keep their
//! offsets.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use object::LittleEndian as LE;
use object::elf::{
    CompressionHeader64, ELFCOMPRESS_ZLIB, ELFCOMPRESS_ZSTD, FileHeader64, SHF_COMPRESSED,
    SHT_NOBITS, SHT_NULL, SectionHeader64,
};
use object::read::ReadCache;
use object::read::elf::{FileHeader, SectionHeader};

/// Reads `len` bytes of `file` from `at` without moving its cursor (shared with clones).
struct Range<'a> {
    file: &'a File,
    at: u64,
    end: u64,
}

impl Read for Range<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(self.end.saturating_sub(self.at) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

pub use crate::host::fs::in_memory;

/// Largest zstd window accepted (16 MiB): a frame may ask for more, which the decoder
/// would allocate before writing a byte.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// A copy of the 64-bit little-endian ELF file `src` with its zlib- and
/// zstd-compressed sections decompressed, as an unlinked file in `dir`; `None` if it has
/// none (or is not such a file). The copy may take at most `max_bytes` (an error of kind
/// `FileTooLarge` otherwise); a malformed file is an `InvalidData` error. The file is
/// untrusted: sizes and offsets are checked, and at most the sizes its headers declare
/// are written.
pub fn decompressed(src: &File, dir: &Path, max_bytes: u64) -> io::Result<Option<File>> {
    let cache = ReadCache::new(src);
    let Ok(header) = FileHeader64::<LE>::parse(&cache) else {
        return Ok(None);
    };
    let Ok(endian) = header.endian() else {
        return Ok(None);
    };
    let header = *header;
    let mut sections: Vec<SectionHeader64<LE>> = header
        .section_headers(endian, &cache)
        .map_err(|e| bad(format!("section headers: {e}")))?
        .to_vec();
    // (section index, compression type, compressed data range, size, alignment)
    let mut todo = Vec::new();
    for (i, s) in sections.iter().enumerate() {
        // Section 0 is no section (with extended numbering it holds the count).
        if i == 0
            || s.sh_flags(endian) & u64::from(SHF_COMPRESSED) == 0
            || matches!(s.sh_type(endian), SHT_NOBITS | SHT_NULL)
        {
            continue;
        }
        let (offset, size) = (s.sh_offset(endian), s.sh_size(endian));
        let ch: &CompressionHeader64<LE> = object::ReadRef::read_at(&cache, offset)
            .map_err(|()| bad(format!("section {i}: no compression header")))?;
        let kind = ch.ch_type.get(endian);
        if kind != ELFCOMPRESS_ZLIB && kind != ELFCOMPRESS_ZSTD {
            continue;
        }
        let head = std::mem::size_of::<CompressionHeader64<LE>>() as u64;
        if size < head {
            return Err(bad(format!(
                "section {i}: {size} bytes, less than its header"
            )));
        }
        let end = offset.checked_add(size).ok_or_else(|| {
            bad(format!(
                "section {i}: offset {offset} + size {size} overflows"
            ))
        })?;
        todo.push((
            i,
            kind,
            offset + head,
            end,
            ch.ch_size.get(endian),
            ch.ch_addralign.get(endian).max(1),
        ));
    }
    drop(cache);
    if todo.is_empty() {
        return Ok(None);
    }
    let len = src.metadata()?.len();
    // The original, each section with its padding, and the new section header table.
    let headers = (sections.len() as u64)
        .checked_mul(64)
        .and_then(|h| h.checked_add(8));
    headers
        .and_then(|h| len.checked_add(h))
        .and_then(|start| {
            todo.iter().try_fold(start, |t, &(.., size, align)| {
                t.checked_add(size)?.checked_add(align.min(4096))
            })
        })
        .filter(|&t| t <= max_bytes)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("decompressed, it would take over {max_bytes} bytes"),
            )
        })?;
    let mut out = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir)?;
    if in_memory(&out)? {
        return Err(io::Error::other(format!(
            "{} is on a filesystem held in memory (tmpfs); a copy there saves nothing",
            dir.display()
        )));
    }
    let mut at = io::copy(
        &mut Range {
            file: src,
            at: 0,
            end: len,
        },
        &mut out,
    )?;
    let pad = |out: &mut File, at: &mut u64, align: u64| -> io::Result<()> {
        let n = at.next_multiple_of(align) - *at;
        out.write_all(&vec![0; n as usize])?;
        *at += n;
        Ok(())
    };
    for (i, kind, from, to, size, align) in todo {
        pad(&mut out, &mut at, align.min(4096))?;
        let data = Range {
            file: src,
            at: from,
            end: to,
        };
        // At most `size` bytes come out, whatever the stream says; fewer is an error.
        let n = if kind == ELFCOMPRESS_ZLIB {
            io::copy(
                &mut flate2::read::ZlibDecoder::new(data).take(size),
                &mut out,
            )
        } else {
            let mut d = zstd::stream::read::Decoder::new(data)?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
            io::copy(&mut d.take(size), &mut out)
        }
        .map_err(|e| bad(format!("section {i}: {e}")))?;
        if n != size {
            return Err(bad(format!(
                "section {i}: decompressed to {n} bytes, its header says {size}"
            )));
        }
        let s = &mut sections[i];
        s.sh_offset.set(endian, at);
        s.sh_size.set(endian, size);
        s.sh_addralign.set(endian, align.min(4096));
        let flags = s.sh_flags(endian) & !u64::from(SHF_COMPRESSED);
        s.sh_flags.set(endian, flags);
        at += size;
    }
    pad(&mut out, &mut at, 8)?;
    out.write_all(object::pod::bytes_of_slice(&sections))?;
    let mut header = header;
    header.e_shoff.set(endian, at);
    out.write_all_at(object::pod::bytes_of(&header), 0)?;
    Ok(Some(out))
}

/// A temporary directory on a disk (a copy is refused on tmpfs, which `/tmp` may be);
/// None, after a skip notice, where there is none.
#[cfg(test)]
pub(super) fn disk_tempdir() -> Option<tempfile::TempDir> {
    for base in [
        std::env::temp_dir(),
        "/var/tmp".into(),
        env!("CARGO_MANIFEST_DIR").into(),
    ] {
        if let Ok(d) = tempfile::tempdir_in(&base)
            && let Ok(f) = File::open(d.path())
            && !in_memory(&f).unwrap_or(true)
        {
            return Some(d);
        }
    }
    crate::testing::skip("decompressed copies", "no temporary directory on a disk");
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A C file built with `-gz=<kind>` (`none`, `zlib`, `zstd`); None, after a skip
    /// notice, where gcc is missing. Debian 12's gcc and binutils compress with zlib only,
    /// so `zstd` is tried, and None where it fails, rather than relied on.
    fn compiled(dir: &Path, kind: &str) -> Option<std::path::PathBuf> {
        let c = dir.join("t.c");
        std::fs::write(
            &c,
            "static int helper(int x) { return x * 3 + 1; }\n\
             int work(int n) { int s = 0; for (int i = 0; i < n; i++) s += helper(i); return s; }\n\
             int main(int argc, char **argv) { (void)argv; return work(argc) == 7; }\n",
        )
        .unwrap();
        let out = dir.join(format!("t-{kind}"));
        let flags = ["-g", "-O1", &format!("-gz={kind}")];
        if kind != "zstd" {
            return crate::testing::compile_c("unpack", "gcc", &out, &[&c], &flags);
        }
        let ok = Command::new("gcc")
            .args(flags)
            .arg("-o")
            .arg(&out)
            .arg(&c)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(out)
    }

    fn readelf(args: &[&str], path: &Path) -> String {
        let o = Command::new("readelf")
            .args(args)
            .arg(path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    /// The copy is checked by binutils, a reader this code did not write: no section is
    /// compressed any more, and its decoded line table and DWARF info are the
    /// original's.
    #[test]
    fn copies_read_by_readelf_as_the_original_with_plain_sections() {
        let Some(dir) = disk_tempdir() else { return };
        let mut tested = 0;
        for kind in ["zlib", "zstd"] {
            let Some(bin) = compiled(dir.path(), kind) else {
                continue;
            };
            let before = readelf(&["-SW"], &bin);
            if !before
                .lines()
                .any(|l| l.contains(".debug_info") && l.contains(" C "))
            {
                // This gcc/binutils does not compress with `kind`.
                continue;
            }
            let copy = decompressed(&File::open(&bin).unwrap(), dir.path(), 1 << 30)
                .unwrap()
                .expect("compressed sections");
            let path = dir.path().join(format!("copy-{kind}"));
            let mut f = File::create(&path).unwrap();
            io::copy(
                &mut Range {
                    file: &copy,
                    at: 0,
                    end: copy.metadata().unwrap().len(),
                },
                &mut f,
            )
            .unwrap();
            let after = readelf(&["-SW"], &path);
            assert!(
                !after
                    .lines()
                    .any(|l| l.contains(".debug_") && l.contains(" C ")),
                "{after}"
            );
            for dump in ["--debug-dump=decodedline", "--debug-dump=info"] {
                // The file name in the header differs; the dump below it must not.
                let strip = |s: String| s.lines().skip(2).collect::<Vec<_>>().join("\n");
                assert_eq!(
                    strip(readelf(&[dump], &bin)),
                    strip(readelf(&[dump], &path)),
                    "{kind} {dump}"
                );
            }
            tested += 1;
        }
        if tested == 0 {
            crate::testing::skip("unpack", "gcc -gz=zlib gave no compressed sections");
        }
    }

    #[test]
    fn a_file_without_compressed_sections_or_not_elf_is_left_alone() {
        let Some(dir) = disk_tempdir() else { return };
        let Some(bin) = compiled(dir.path(), "none") else {
            return;
        };
        let f = File::open(&bin).unwrap();
        assert!(decompressed(&f, dir.path(), 1 << 30).unwrap().is_none());
        let text = dir.path().join("text");
        std::fs::write(&text, "not an ELF file").unwrap();
        let f = File::open(&text).unwrap();
        assert!(decompressed(&f, dir.path(), 1 << 30).unwrap().is_none());
    }

    #[test]
    fn a_lying_size_a_tmpfs_and_the_size_bound_are_errors() {
        let Some(dir) = disk_tempdir() else { return };
        let Some(bin) = compiled(dir.path(), "zlib") else {
            return;
        };
        let f = File::open(&bin).unwrap();
        let e = decompressed(&f, dir.path(), 4096).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge, "{e}");
        if Path::new("/dev/shm").is_dir() {
            let e = decompressed(&f, Path::new("/dev/shm"), 1 << 30).unwrap_err();
            assert!(e.to_string().contains("tmpfs"), "{e}");
        }
        // The compression header of .debug_info claims a byte more than the stream holds.
        let mut bytes = std::fs::read(&bin).unwrap();
        let data = object::read::elf::ElfFile64::<LE>::parse(&bytes[..]).unwrap();
        let off = {
            use object::{Object, ObjectSection};
            data.section_by_name(".debug_info")
                .unwrap()
                .file_range()
                .unwrap()
                .0 as usize
        };
        let size = u64::from_le_bytes(bytes[off + 8..off + 16].try_into().unwrap());
        bytes[off + 8..off + 16].copy_from_slice(&(size + 1).to_le_bytes());
        let lying = dir.path().join("lying");
        std::fs::write(&lying, &bytes).unwrap();
        let e = decompressed(&File::open(&lying).unwrap(), dir.path(), 1 << 30).unwrap_err();
        assert!(e.to_string().contains("its header says"), "{e}");
    }
}
