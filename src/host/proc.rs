//! What `/proc` tells about a process: its memory mappings, start time, executable,
//! cgroup, and the GNU build IDs of its mapped files; and the kernel's own text and
//! module ranges. Every read may race with the process exiting: errors are values.

use std::collections::HashMap;

use super::elf::{BuildId, build_id};
use std::fs;
use std::io;
use std::path::Path;

/// One line of `/proc/PID/maps` that maps a file or the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub executable: bool,
    pub dev: String,
    pub inode: u64,
    /// Path as the process sees it (may be `[vdso]` and the like).
    pub path: String,
}

/// Parses `/proc/PID/maps` text; lines that do not parse are skipped.
pub fn parse_maps(text: &str) -> Vec<MapEntry> {
    parse_maps_where(text, false)
}

/// [`parse_maps`], keeping only executable mappings if `exec_only` (the others are
/// skipped before anything is allocated for them).
fn parse_maps_where(text: &str, exec_only: bool) -> Vec<MapEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(6, ' ');
        let (Some(range), Some(perms), Some(offset), Some(dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let executable = perms.as_bytes().get(2) == Some(&b'x');
        if exec_only && !executable {
            continue;
        }
        let path = f.next().unwrap_or("").trim().to_owned();
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end), Ok(offset), Ok(inode)) = (
            u64::from_str_radix(s, 16),
            u64::from_str_radix(e, 16),
            u64::from_str_radix(offset, 16),
            inode.parse::<u64>(),
        ) else {
            continue;
        };
        out.push(MapEntry {
            start,
            end,
            offset,
            executable,
            dev: dev.to_owned(),
            inode,
            path,
        });
    }
    out
}

/// A process's executable mappings: asked of the kernel one by one with the
/// `PROCMAP_QUERY` ioctl (Linux 6.11+), which skips the text rendering of every mapping
/// (the text of a shell's 40 mappings took 90 µs to read and 24 µs to parse, on a node
/// starting 100 processes a second); on older kernels, from the text.
pub fn executable_maps(pid: u32) -> io::Result<Vec<MapEntry>> {
    let file = fs::File::open(format!("/proc/{pid}/maps"))?;
    match query_maps(&file) {
        Some(maps) => Ok(maps),
        None => {
            let mut text = String::new();
            io::Read::read_to_string(&mut &file, &mut text)?;
            Ok(parse_maps_where(&text, true))
        }
    }
}

/// `struct procmap_query` of `include/uapi/linux/fs.h`.
#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

/// `_IOWR('f', 17, struct procmap_query)`.
const PROCMAP_QUERY: u64 =
    (3 << 30) | ((std::mem::size_of::<ProcmapQuery>() as u64) << 16) | ((b'f' as u64) << 8) | 17;
const PROCMAP_QUERY_VMA_EXECUTABLE: u64 = 0x04;
const PROCMAP_QUERY_COVERING_OR_NEXT_VMA: u64 = 0x10;

/// The executable mappings through `PROCMAP_QUERY`; `None` if the kernel lacks it (or
/// refuses it for a reason the text read will report better).
fn query_maps(maps: &fs::File) -> Option<Vec<MapEntry>> {
    use std::os::fd::AsRawFd;
    let mut out = Vec::new();
    let mut name = vec![0u8; 4096];
    let mut addr = 0u64;
    loop {
        let mut q = ProcmapQuery {
            size: std::mem::size_of::<ProcmapQuery>() as u64,
            query_flags: PROCMAP_QUERY_COVERING_OR_NEXT_VMA | PROCMAP_QUERY_VMA_EXECUTABLE,
            query_addr: addr,
            vma_name_size: name.len() as u32,
            vma_name_addr: name.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: `q` is the kernel's struct, its size in `size`; the name buffer outlives
        // the call and its length is in `vma_name_size`; no build ID is asked for.
        let r = unsafe { libc::ioctl(maps.as_raw_fd(), PROCMAP_QUERY as _, &mut q) };
        if r < 0 {
            // ENOENT: no mapping at or above `addr`. Anything else (ENOTTY before 6.11,
            // ENAMETOOLONG, the process exiting): the text read decides.
            return (io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT))
                .then_some(out);
        }
        // The name's size counts its NUL; 0 for anonymous memory.
        let len = (q.vma_name_size as usize).saturating_sub(1).min(name.len());
        out.push(MapEntry {
            start: q.vma_start,
            end: q.vma_end,
            offset: q.vma_offset,
            executable: true,
            // As the text shows it, so file keys agree whichever way a process was read.
            dev: format!("{:02x}:{:02x}", q.dev_major, q.dev_minor),
            inode: q.inode,
            path: String::from_utf8_lossy(&name[..len]).into_owned(),
        });
        if q.vma_end <= addr {
            return None;
        }
        addr = q.vma_end;
    }
}

/// Process start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
pub fn start_time(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("malformed stat"))?;
    rest.split_whitespace()
        .nth(19)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other("malformed stat"))
}

/// Everything the profiler keeps about one process.
#[derive(Debug, Clone, Default)]
pub struct ProcessInfo {
    pub start_time: u64,
    pub exe_path: String,
    pub exe_name: String,
    /// Container and pod, from the cgroup path.
    pub cgroup: super::cgroup::Attribution,
    /// Its executable mappings (the only ones a stack's addresses can be in).
    pub maps: Vec<MapEntry>,
}

impl ProcessInfo {
    /// Reads a process. Fails only if its maps cannot be read (it exited, or no permission).
    pub fn read(pid: u32) -> io::Result<ProcessInfo> {
        let maps = executable_maps(pid)?;
        let exe_path = fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| {
                p.to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_owned()
            })
            .unwrap_or_default();
        let exe_name = Path::new(&exe_path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(ProcessInfo {
            start_time: start_time(pid).unwrap_or(0),
            exe_path,
            exe_name,
            cgroup: fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .map(|c| super::cgroup::Attribution::parse(&c))
                .unwrap_or_default(),
            maps,
        })
    }

    /// The executable mapping holding `addr`.
    pub fn mapping_for(&self, addr: u64) -> Option<&MapEntry> {
        self.maps
            .iter()
            .find(|m| m.executable && m.start <= addr && addr < m.end)
    }
}

/// Build IDs by file identity (device and inode), so each file is read once.
#[derive(Default)]
pub struct BuildIds {
    cache: HashMap<(String, u64), Option<BuildId>>,
}

impl BuildIds {
    /// The build ID of the file behind `m` in process `pid`, read through
    /// `/proc/PID/map_files` (works across mount namespaces, for containers) or the
    /// path inside the process's root (see [`super::open::open_mapped`]).
    pub fn get(&mut self, pid: u32, m: &MapEntry) -> Option<BuildId> {
        if m.inode == 0 || m.path.starts_with('[') {
            return None;
        }
        let key = (m.dev.clone(), m.inode);
        if let Some(v) = self.cache.get(&key) {
            return v.clone();
        }
        // A process that exited cannot be read now, but its file may be read later
        // through another process: only what was read is cached.
        let f = super::open::open_mapped(pid, m.start, m.end, &m.path).ok()?;
        let found = build_id(&f);
        // Bound the table: files come and go.
        if self.cache.len() > 65_536 {
            self.cache.clear();
        }
        self.cache.insert(key, found.clone());
        found
    }
}

/// A kernel address range: the kernel image or one module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRange {
    pub start: u64,
    pub end: u64,
    /// `[kernel.kallsyms]` or the module name.
    pub name: String,
}

/// Kernel text and module ranges, from `/proc/kallsyms` and `/proc/modules`.
#[derive(Debug, Clone, Default)]
pub struct KernelMaps {
    pub ranges: Vec<KernelRange>,
}

/// `_stext` from the first lines of `/proc/kallsyms`, where the kernel lists it; else
/// from a full read. The file is generated symbol by symbol as it is read, and reading
/// all of it (for `_etext`, 96 % of the way down) cost 35 ms of every start.
fn kernel_text_start() -> Option<u64> {
    use std::io::BufRead;
    let file = fs::File::open("/proc/kallsyms").ok()?;
    let mut lines = std::io::BufReader::new(file).lines();
    let stext = |line: &str| {
        let mut f = line.split_whitespace();
        match (f.next(), f.next(), f.next()) {
            (Some(addr), Some(_), Some("_stext")) => u64::from_str_radix(addr, 16).ok(),
            _ => None,
        }
    };
    lines
        .by_ref()
        .take(64)
        .map_while(Result::ok)
        .find_map(|l| stext(&l))
        .or_else(|| lines.map_while(Result::ok).find_map(|l| stext(&l)))
}

impl KernelMaps {
    /// The kernel image's range runs from `_stext` to the lowest module above it (code
    /// between holds no stack frames: the image's data, then the module area), or to
    /// the end of the address space without modules.
    pub fn read() -> KernelMaps {
        let mut ranges = Vec::new();
        if let Ok(modules) = fs::read_to_string("/proc/modules") {
            for line in modules.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 6 {
                    continue;
                }
                let size = f[1].parse::<u64>().unwrap_or(0);
                let addr = u64::from_str_radix(f[5].trim_start_matches("0x"), 16).unwrap_or(0);
                if addr != 0 && size != 0 {
                    ranges.push(KernelRange {
                        start: addr,
                        end: addr.saturating_add(size),
                        name: f[0].to_owned(),
                    });
                }
            }
        }
        if let Some(s) = kernel_text_start().filter(|&s| s != 0) {
            let end = ranges
                .iter()
                .map(|m| m.start)
                .filter(|&m| m > s)
                .min()
                .unwrap_or(u64::MAX);
            ranges.insert(
                0,
                KernelRange {
                    start: s,
                    end,
                    name: "[kernel.kallsyms]".into(),
                },
            );
        }
        KernelMaps { ranges }
    }

    /// The range holding `addr`; kernel addresses outside any known range (e.g. BPF
    /// programs, or when addresses are hidden) fall back to `[kernel.kallsyms]` with no bounds.
    pub fn find(&self, addr: u64) -> Option<&KernelRange> {
        self.ranges.iter().find(|r| r.start <= addr && addr < r.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_range_runs_from_stext_past_etext() {
        let all = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let sym = |name: &str| {
            all.lines().find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3 && f[2] == name).then(|| u64::from_str_radix(f[0], 16).unwrap())
            })
        };
        let (Some(stext), Some(etext)) = (sym("_stext"), sym("_etext")) else {
            crate::testing::skip("kernel range", "no _stext/_etext in /proc/kallsyms");
            return;
        };
        if stext == 0 {
            crate::testing::skip("kernel range", "kernel addresses are hidden (not root)");
            return;
        }
        let k = KernelMaps::read();
        let image = k.find(stext).expect("_stext is in a range");
        assert_eq!(
            (image.name.as_str(), image.start),
            ("[kernel.kallsyms]", stext)
        );
        assert!(image.end >= etext, "{image:?} ends before _etext {etext:x}");
        assert_eq!(
            k.find(etext - 1).map(|r| r.name.as_str()),
            Some("[kernel.kallsyms]")
        );
    }

    #[test]
    fn parses_maps_lines_including_odd_paths() {
        let text = "55d0c0a00000-55d0c0a21000 r--p 00000000 08:01 1234 /usr/bin/my app\n\
                    55d0c0a21000-55d0c0b00000 r-xp 00021000 08:01 1234 /usr/bin/my app\n\
                    7ffd1000-7ffd3000 r-xp 00000000 00:00 0 [vdso]\n\
                    7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \n\
                    garbage line\n";
        let m = parse_maps(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].start, 0x55d0c0a21000);
        assert_eq!(m[1].offset, 0x21000);
        assert!(m[1].executable && !m[0].executable);
        assert_eq!(m[1].path, "/usr/bin/my app");
        assert_eq!(m[2].path, "[vdso]");
        assert_eq!(m[3].path, "");
    }

    #[test]
    fn the_ioctl_and_the_text_give_the_same_executable_mappings() {
        let me = std::process::id();
        let file = fs::File::open(format!("/proc/{me}/maps")).unwrap();
        let Some(queried) = query_maps(&file) else {
            crate::testing::skip(
                "PROCMAP_QUERY",
                "the kernel has no PROCMAP_QUERY (before 6.11)",
            );
            return;
        };
        let text = parse_maps_where(
            &fs::read_to_string(format!("/proc/{me}/maps")).unwrap(),
            true,
        );
        assert!(queried.len() >= 2, "{queried:?}");
        // The test's threads may map code between the two reads: compare what both saw.
        let mut same = 0;
        for m in &text {
            if let Some(q) = queried.iter().find(|q| q.start == m.start) {
                assert_eq!(q, m);
                same += 1;
            }
        }
        assert!(
            same >= 2 && same + 2 >= text.len(),
            "{same} of {} compared",
            text.len()
        );
        assert!(queried.iter().any(|q| q.path == "[vdso]"), "{queried:?}");
        assert!(text.iter().all(|m| m.executable));
        assert_eq!(
            parse_maps_where("7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \n", true),
            vec![]
        );
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let info = ProcessInfo::read(me).unwrap();
        assert!(info.start_time > 0);
        assert!(!info.exe_name.is_empty());
        let exe_map = info
            .maps
            .iter()
            .find(|m| m.executable && m.path == info.exe_path)
            .expect("the test binary's text is mapped");
        // Rust test binaries carry a GNU build ID.
        let mut ids = BuildIds::default();
        let id = ids.get(me, exe_map).expect("build id");
        assert!(id.as_str().len() >= 16, "{id}");
        let f = super::super::elf::build_id_at(Path::new(&info.exe_path)).unwrap();
        assert_eq!(f, Some(id));
    }
}
