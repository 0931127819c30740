//! What the agent and the symbolizer read from ELF files: GNU build IDs, load segments,
//! whether DWARF is present. Files are read with `pread` through [`object::ReadCache`]
//! (only the headers and sections asked for, never a mapping a file's owner could
//! truncate), after [`super::open`] made sure they are regular files.

use std::fmt;
use std::fs::File;
use std::path::Path;

use object::read::elf::{ElfFile64, ProgramHeader};
use object::{Object, ObjectSection, ReadCache, ReadRef, SectionKind};

/// A GNU build ID, validated: 1 to 64 bytes, kept as lowercase hex. Input from a request
/// becomes one at the boundary ([`BuildId::parse`]), so it can name a file under
/// `.build-id/` without any other check: it holds nothing but hex digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BuildId(Box<str>);

/// Why a string is not a build ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildIdError {
    #[error("is empty")]
    Empty,
    #[error("has {0} characters; a build ID is at most 64 bytes (128 hex digits)")]
    TooLong(usize),
    #[error("has an odd number of hex digits")]
    OddLength,
    #[error("is not hex (character {0})")]
    NotHex(usize),
}

/// Longest build ID accepted, in bytes (GNU ld writes 8 to 20; 64 leaves room for any hash).
pub const MAX_BUILD_ID: usize = 64;

impl BuildId {
    /// From the raw note bytes; None if empty or too long.
    pub fn from_bytes(b: &[u8]) -> Option<BuildId> {
        if b.is_empty() || b.len() > MAX_BUILD_ID {
            return None;
        }
        let mut s = String::with_capacity(b.len() * 2);
        for x in b {
            s.push_str(&format!("{x:02x}"));
        }
        Some(BuildId(s.into()))
    }

    /// From hex text (upper or lower case).
    pub fn parse(s: &str) -> Result<BuildId, BuildIdError> {
        if s.is_empty() {
            return Err(BuildIdError::Empty);
        }
        if s.len() > MAX_BUILD_ID * 2 {
            return Err(BuildIdError::TooLong(s.len()));
        }
        if let Some(i) = s.bytes().position(|b| !b.is_ascii_hexdigit()) {
            return Err(BuildIdError::NotHex(i));
        }
        if !s.len().is_multiple_of(2) {
            return Err(BuildIdError::OddLength);
        }
        Ok(BuildId(s.to_ascii_lowercase().into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `(ab, cdef…)`: the directory and file name under `.build-id/`; None for a
    /// one-byte ID, which cannot be laid out that way.
    pub fn build_id_dir(&self) -> Option<(&str, &str)> {
        (self.0.len() > 2).then(|| self.0.split_at(2))
    }

    /// The first 8 bytes as a number (IDs shorter than 8 bytes are zero-padded).
    pub fn prefix_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        for (i, pair) in self.0.as_bytes().chunks(2).take(8).enumerate() {
            let hex = std::str::from_utf8(pair).unwrap_or("00");
            b[i] = u8::from_str_radix(hex, 16).unwrap_or(0);
        }
        u64::from_le_bytes(b)
    }
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BuildId({})", self.0)
    }
}

/// The GNU build ID note of an opened ELF file, if it has one.
pub fn build_id(f: &File) -> Option<BuildId> {
    build_id_in(&ReadCache::new(f))
}

/// The GNU build ID note of ELF data (bytes, or a [`ReadCache`]).
pub fn build_id_in<'d, R: ReadRef<'d>>(data: R) -> Option<BuildId> {
    let elf = object::File::parse(data).ok()?;
    elf.build_id().ok().flatten().and_then(BuildId::from_bytes)
}

/// The build ID of the regular file at `path` (following symlinks: for operator
/// paths and `/proc/PID/map_files`). Errors only when it cannot be opened.
pub fn build_id_at(path: &Path) -> std::io::Result<Option<BuildId>> {
    Ok(build_id(&super::open::open_regular(path)?))
}

/// A PT_LOAD segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub filesz: u64,
    pub vaddr: u64,
    pub executable: bool,
}

/// The PT_LOAD segments of an opened 64-bit ELF file.
pub fn segments(f: &File) -> Option<Vec<Segment>> {
    segments_in(&ReadCache::new(f))
}

/// The PT_LOAD segments of 64-bit ELF data.
pub fn segments_in<'d, R: ReadRef<'d>>(data: R) -> Option<Vec<Segment>> {
    let elf = ElfFile64::<object::Endianness, R>::parse(data).ok()?;
    let e = elf.endian();
    Some(
        elf.elf_program_headers()
            .iter()
            .filter(|p| p.p_type(e) == object::elf::PT_LOAD)
            .map(|p| Segment {
                offset: p.p_offset(e),
                filesz: p.p_filesz(e),
                vaddr: p.p_vaddr(e),
                executable: p.p_flags(e) & object::elf::PF_X != 0,
            })
            .collect(),
    )
}

/// Whether an opened ELF file carries DWARF (a stripped binary does not; its debug file does).
pub fn has_dwarf(f: &File) -> bool {
    let cache = ReadCache::new(f);
    object::File::parse(&cache).is_ok_and(|elf| {
        elf.section_by_name(".debug_info")
            .is_some_and(|s| s.kind() != SectionKind::UninitializedData && s.size() > 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_ids_are_hex_and_nothing_else() {
        let id = BuildId::parse("ABCDEF0123456789abcdef0123456789abcdef01").unwrap();
        assert_eq!(id.as_str(), "abcdef0123456789abcdef0123456789abcdef01");
        assert_eq!(
            id.build_id_dir(),
            Some(("ab", "cdef0123456789abcdef0123456789abcdef01"))
        );
        assert_eq!(
            id,
            BuildId::from_bytes(&[
                0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45,
                0x67, 0x89, 0xab, 0xcd, 0xef, 0x01
            ])
            .unwrap()
        );
        assert_eq!(
            id.prefix_u64(),
            u64::from_le_bytes([0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89])
        );
        for (bad, why) in [
            ("", BuildIdError::Empty),
            ("ab/../../etc", BuildIdError::NotHex(2)),
            ("ééé", BuildIdError::NotHex(0)),
            ("abc", BuildIdError::OddLength),
            ("..", BuildIdError::NotHex(0)),
        ] {
            assert_eq!(BuildId::parse(bad).unwrap_err(), why, "{bad}");
        }
        assert!(matches!(
            BuildId::parse(&"a".repeat(130)),
            Err(BuildIdError::TooLong(130))
        ));
        assert_eq!(BuildId::parse("ab").unwrap().build_id_dir(), None);
        assert!(BuildId::from_bytes(&[]).is_none());
        assert!(BuildId::from_bytes(&[0; 65]).is_none());
    }

    #[test]
    fn reads_this_binary_without_mapping_it() {
        let me = File::open("/proc/self/exe").unwrap();
        let id = build_id(&me).expect("Rust test binaries carry a GNU build ID");
        assert!(id.as_str().len() >= 16);
        let segs = segments(&me).unwrap();
        assert!(segs.iter().any(|s| s.executable));
        assert!(has_dwarf(&me));
        let not_elf = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(not_elf.path(), b"#!/bin/sh\n").unwrap();
        let f = File::open(not_elf.path()).unwrap();
        assert_eq!(build_id(&f), None);
        assert_eq!(segments(&f), None);
        assert!(!has_dwarf(&f));
    }
}
