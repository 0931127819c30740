//! Walking core files frame by frame, compared with gdb's backtrace of the same core.

use super::*;

/// Memory of a core file: its PT_LOAD segments.
struct Core {
    segments: Vec<(u64, Vec<u8>)>,
}

impl super::super::rules::Memory for Core {
    fn read(&mut self, addr: u64) -> Option<u64> {
        let [a, _] = self.read_pair_or_one(addr, 8)?;
        Some(a)
    }
    fn read_pair(&mut self, addr: u64) -> Option<[u64; 2]> {
        self.read_pair_or_one(addr, 16)
    }
}

impl Core {
    fn read_pair_or_one(&self, addr: u64, len: u64) -> Option<[u64; 2]> {
        let (base, bytes) = self
            .segments
            .iter()
            .find(|(a, b)| *a <= addr && addr + len <= a + b.len() as u64)?;
        let o = (addr - base) as usize;
        let w = |i: usize| u64::from_le_bytes(bytes[o + i..o + i + 8].try_into().unwrap());
        Some([w(0), if len == 16 { w(8) } else { 0 }])
    }
}

/// A mapped file of a core: start, end, file offset, path.
type CoreFile = (u64, u64, u64, PathBuf);

/// Registers of the first thread (NT_PRSTATUS) and the file mappings (NT_FILE) of a core.
fn parse_core(path: &Path) -> (Core, Regs, Vec<CoreFile>) {
    use object::read::elf::{ElfFile64, ProgramHeader};
    let data = std::fs::read(path).unwrap();
    let elf = ElfFile64::<object::Endianness>::parse(&*data).unwrap();
    let e = elf.endian();
    let mut segments = Vec::new();
    let mut regs = None;
    let mut files = Vec::new();
    for ph in elf.elf_program_headers() {
        match ph.p_type(e) {
            object::elf::PT_LOAD => {
                let bytes = ph.data(e, &*data).unwrap();
                if !bytes.is_empty() {
                    segments.push((ph.p_vaddr(e), bytes.to_vec()));
                }
            }
            object::elf::PT_NOTE => {
                let mut notes = ph.notes(e, &*data).unwrap().unwrap();
                while let Some(n) = notes.next().unwrap() {
                    let desc = n.desc();
                    let word =
                        |i: usize| u64::from_le_bytes(desc[i * 8..i * 8 + 8].try_into().unwrap());
                    if n.n_type(e) == object::elf::NT_PRSTATUS && regs.is_none() {
                        // elf_prstatus: pr_reg (user_regs_struct) at 112: rbp is 4th, rip 16th, rsp 19th.
                        let r = |i: usize| {
                            u64::from_le_bytes(desc[112 + i * 8..120 + i * 8].try_into().unwrap())
                        };
                        regs = Some(Regs {
                            pc: r(16),
                            sp: r(19),
                            bp: r(4),
                            bp_known: 1,
                            is_return: 0,
                        });
                    }
                    if n.n_type(e) == object::elf::NT_FILE {
                        let (count, page) = (word(0) as usize, word(1));
                        let names_at = 16 + count * 24;
                        let mut names = desc[names_at..].split(|&b| b == 0);
                        for i in 0..count {
                            let (start, end, pgoff) =
                                (word(2 + i * 3), word(3 + i * 3), word(4 + i * 3));
                            let name = String::from_utf8_lossy(names.next().unwrap()).into_owned();
                            files.push((start, end, pgoff * page, PathBuf::from(name)));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    (Core { segments }, regs.expect("NT_PRSTATUS"), files)
}

/// The walk's mappings: every mapped file with its table.
fn mappings(files: &[CoreFile]) -> Vec<super::super::walk::Mapping> {
    let mut tables: std::collections::HashMap<PathBuf, (Vec<u8>, std::sync::Arc<Table>)> =
        Default::default();
    let mut out = Vec::new();
    for (start, end, offset, path) in files {
        let Ok(data) = std::fs::read(path) else {
            continue;
        };
        let Ok(t) = build(&data[..]) else { continue };
        let entry = tables
            .entry(path.clone())
            .or_insert((data, std::sync::Arc::new(t)));
        let Some(bias) = super::super::table::bias(
            &crate::host::elf::segments_in(&entry.0[..]).unwrap_or_default(),
            *start,
            *offset,
        ) else {
            continue;
        };
        out.push(super::super::walk::Mapping {
            start: *start,
            end: *end,
            bias,
            table: Some(entry.1.clone()),
        });
    }
    out
}

/// The program counter of every physical frame gdb finds in the core (gdb also shows
/// inlined functions and tail calls it reconstructs from DWARF as frames: those share
/// a physical frame, or have none, and are left out).
fn gdb_pcs(exe: &Path, core: &Path) -> Vec<u64> {
    let script = core.with_extension("gdb.py");
    std::fs::write(
        &script,
        "gdb.execute('set backtrace past-main on')\n\
         gdb.execute('set backtrace past-entry on')\n\
         f = gdb.newest_frame()\n\
         while f is not None:\n\
         \x20   if f.type() in (gdb.NORMAL_FRAME, gdb.SIGTRAMP_FRAME):\n\
         \x20       print('PC 0x%x' % f.pc())\n\
         \x20   f = f.older()\n",
    )
    .unwrap();
    let out = Command::new("gdb")
        .args(["-batch", "-nx", "-x"])
        .arg(&script)
        .arg(exe)
        .arg(core)
        .output()
        .expect("gdb");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("PC 0x"))
        .filter_map(|h| u64::from_str_radix(h.trim(), 16).ok())
        .collect()
}

#[test]
#[cfg_attr(any(missing = "gcc", missing = "gdb"), ignore = "needs gcc, gdb")]
fn walks_core_files_frame_by_frame_like_gdb() {
    if Command::new("gdb").arg("--version").output().is_err() {
        skip(
            "core walk",
            "gdb is not installed (apt-get install gdb; .ci/run installs it)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = build_unwind_workload(
        "core walk",
        dir.path(),
        "gcc",
        &["-O2", "-fomit-frame-pointer"],
    ) else {
        return;
    };
    for mode in ["forever", "qsort"] {
        let mut child = Command::new(&exe)
            .args([mode, "60"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        // Let it reach its steady state (spinning at the bottom), then dump it.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let core = dir.path().join(format!("core-{mode}"));
        let st = Command::new("gcore")
            .arg("-o")
            .arg(&core)
            .arg(child.id().to_string())
            .output()
            .expect("gcore (gdb)");
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            st.status.success(),
            "gcore: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        let core = PathBuf::from(format!("{}.{}", core.display(), child.id()));
        let (mut mem, regs, files) = parse_core(&core);
        let maps = mappings(&files);
        let ours = super::super::walk::walk(&maps, regs, &mut mem, 128, false);
        let gdb = gdb_pcs(&exe, &core);
        eprintln!(
            "{mode}: ours {:x?} ({}), gdb {:x?}",
            ours.frames,
            stop::NAMES[ours.stop as usize],
            gdb
        );
        assert!(gdb.len() >= 4, "gdb found only {gdb:x?}");
        assert_eq!(ours.frames, gdb, "{mode}: frame by frame");
        assert_eq!(
            ours.stop,
            stop::COMPLETE,
            "{mode}: the walk reaches the outermost frame"
        );
    }
}
