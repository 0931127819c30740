//! The table builder against readelf and gimli, and the walk against gdb on core files.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::rules::{Regs, Row, cfa, rbp, stop};
use super::table::{Rule, Table, build, fdes};
use crate::testing::{build_unwind_workload, skip};

/// A rule in readable terms: (CFA kind, CFA offset in bytes, RBP kind, RBP offset).
fn meaning(r: Rule) -> (u8, u64, u8, i16) {
    let kind = r.cfa & cfa::KIND_MASK;
    let off = if r.cfa & cfa::SCALED != 0 {
        (r.cfa_off as u64) << 3
    } else {
        r.cfa_off as u64
    };
    match kind {
        cfa::INVALID | cfa::STOP | cfa::SIGNAL => (kind, 0, 0, 0),
        _ => (
            kind,
            off,
            r.rbp,
            if r.rbp == rbp::SAVED { r.rbp_off } else { 0 },
        ),
    }
}

fn row_meaning(row: Option<Row>) -> (u8, u64, u8, i16) {
    row.map_or((cfa::INVALID, 0, 0, 0), |r| meaning(Rule::of(&r)))
}

/// Binaries to check: the workloads built with gcc and clang (PIE and not), their
/// library, and this machine's libc.
fn binaries(test: &str, dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6")];
    for (sub, cc, flags) in [
        ("gcc", "gcc", vec!["-O2", "-fomit-frame-pointer"]),
        (
            "clang-pie",
            "clang",
            vec!["-O2", "-fomit-frame-pointer", "-fPIE", "-pie"],
        ),
        (
            "clang-nopie",
            "clang",
            vec!["-O2", "-fomit-frame-pointer", "-fno-PIE", "-no-pie"],
        ),
    ] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).unwrap();
        if let Some(exe) = build_unwind_workload(test, &d, cc, &flags) {
            out.push(exe);
            out.push(d.join("libunwhot.so"));
        }
    }
    out
}

/// One FDE of `readelf --debug-dump=frames-interp`: its range and rows (CFA, RBP, RA columns).
struct ReadelfFde {
    end: u64,
    rows: Vec<(u64, String, String, String)>,
}

fn readelf_fdes(path: &Path) -> Vec<ReadelfFde> {
    let out = Command::new("readelf")
        .args(["--debug-dump=frames-interp", "-W"])
        .arg(path)
        .output()
        .expect("readelf (binutils) must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut cie_rows: std::collections::HashMap<String, (String, String, String)> =
        Default::default();
    let mut fdes: Vec<ReadelfFde> = Vec::new();
    // (is a CIE, its offset) of the entry being read, and the column names.
    let mut current: Option<(bool, String)> = None;
    let mut cols: Vec<String> = Vec::new();
    for line in text.lines() {
        // A value like `r10 (r10)` holds a space: rejoin it.
        let mut f: Vec<String> = Vec::new();
        for tok in line.split_whitespace() {
            match f.last_mut() {
                Some(prev) if tok.starts_with('(') => {
                    prev.push(' ');
                    prev.push_str(tok);
                }
                _ => f.push(tok.to_owned()),
            }
        }
        let f: Vec<&str> = f.iter().map(String::as_str).collect();
        if f.len() >= 4 && f[3] == "CIE" {
            current = Some((true, f[0].to_owned()));
            cols.clear();
        } else if f.len() >= 6 && f[3] == "FDE" {
            let cie = f[4].trim_start_matches("cie=").to_owned();
            let (a, b) = f[5].trim_start_matches("pc=").split_once("..").unwrap();
            let (start, end) = (
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
            );
            // Until rows say otherwise, the CIE's initial rule.
            let init = cie_rows.get(&cie).cloned().unwrap_or_default();
            fdes.push(ReadelfFde {
                end,
                rows: vec![(start, init.0, init.1, init.2)],
            });
            current = Some((false, cie));
            cols.clear();
        } else if f.first() == Some(&"LOC") {
            cols = f.iter().map(|s| s.to_string()).collect();
        } else if f.len() >= 2
            && f[0].len() == 16
            && u64::from_str_radix(f[0], 16).is_ok()
            && !cols.is_empty()
        {
            let get = |name: &str| {
                cols.iter()
                    .position(|c| c == name)
                    .and_then(|i| f.get(i))
                    .map_or("u".to_owned(), |s| s.to_string())
            };
            let row = (get("CFA"), get("rbp"), get("ra"));
            match &current {
                Some((true, off)) => {
                    cie_rows.insert(off.clone(), row);
                }
                Some((false, _)) => {
                    let loc = u64::from_str_radix(f[0], 16).unwrap();
                    let fde = fdes.last_mut().unwrap();
                    if fde.rows.len() == 1 && fde.rows[0].0 == loc {
                        fde.rows.clear();
                    }
                    fde.rows.push((loc, row.0, row.1, row.2));
                }
                None => {}
            }
        }
    }
    fdes
}

/// What readelf's columns mean in our rules; None where any of PLT or INVALID is right.
fn expected(cfa_col: &str, rbp_col: &str, ra_col: &str) -> Option<(u8, u64, u8, i16)> {
    if ra_col == "u" {
        return Some((cfa::STOP, 0, 0, 0));
    }
    if ra_col != "c-8" {
        return Some((cfa::INVALID, 0, 0, 0));
    }
    let (kind, off) = if let Some(n) = cfa_col.strip_prefix("rsp+") {
        (cfa::RSP, n.parse::<u64>().unwrap())
    } else if let Some(n) = cfa_col.strip_prefix("rbp+") {
        (cfa::RBP, n.parse::<u64>().unwrap())
    } else if cfa_col == "exp" {
        return None;
    } else {
        return Some((cfa::INVALID, 0, 0, 0));
    };
    let (rk, ro) = if rbp_col == "u" {
        (rbp::SAME, 0)
    } else if let Some(n) = rbp_col.strip_prefix("c") {
        (rbp::SAVED, n.parse::<i16>().unwrap())
    } else {
        (rbp::LOST, 0)
    };
    Some((kind, off, rk, ro))
}

#[test]
#[cfg_attr(any(missing = "gcc", missing = "clang"), ignore = "needs gcc, clang")]
fn rows_mean_what_readelf_frames_interp_says() {
    let dir = tempfile::tempdir().unwrap();
    for bin in binaries("unwind table vs readelf", dir.path()) {
        let data = std::fs::read(&bin).unwrap();
        let table = build(&data[..]).unwrap();
        let fdes = readelf_fdes(&bin);
        assert!(
            fdes.len() >= 2,
            "{}: readelf found {} FDEs",
            bin.display(),
            fdes.len()
        );
        let (mut checked, mut plt) = (0, 0);
        for fde in &fdes {
            for (i, (loc, c, r, ra)) in fde.rows.iter().enumerate() {
                // readelf prints rows past the FDE's end (a PLT0-only .plt's expression row).
                if *loc >= fde.end {
                    continue;
                }
                let until = fde.rows.get(i + 1).map_or(fde.end, |n| n.0.min(fde.end));
                // The first and last byte each row covers.
                for addr in [*loc, until - 1] {
                    let got = row_meaning(table.lookup(addr));
                    if got.0 == cfa::SIGNAL {
                        continue; // signal trampolines are recognised by their CIE, not by rows
                    }
                    match expected(c, r, ra) {
                        Some(want) => assert_eq!(
                            got,
                            want,
                            "{} at {addr:#x}: readelf says CFA {c} rbp {r} ra {ra}",
                            bin.display()
                        ),
                        None => {
                            assert!(got.0 == cfa::PLT || got.0 == cfa::INVALID, "{got:?}");
                            plt += (got.0 == cfa::PLT) as usize;
                        }
                    }
                    checked += 1;
                }
            }
        }
        eprintln!(
            "{}: {} FDEs, {checked} addresses agree with readelf ({plt} PLT), {:?}",
            bin.display(),
            fdes.len(),
            table.stats
        );
    }
}

#[test]
#[cfg_attr(any(missing = "gcc", missing = "clang"), ignore = "needs gcc, clang")]
fn every_address_follows_its_fde_rule() {
    let dir = tempfile::tempdir().unwrap();
    for bin in binaries("unwind table vs gimli", dir.path()) {
        let data = std::fs::read(&bin).unwrap();
        let table = build(&data[..]).unwrap();
        let (mut fdes, _) = fdes(&data[..]).unwrap();
        fdes.sort_by_key(|f| f.start);
        let mut addresses = 0u64;
        for (k, f) in fdes.iter().enumerate() {
            // A signal trampoline's rule starts a byte early, inside the previous FDE.
            let stolen = fdes.get(k + 1).is_some_and(|n| {
                n.start < f.end && n.rows.first().is_some_and(|r| r.1.cfa == cfa::SIGNAL)
            });
            for addr in f.start..f.end {
                if stolen && addr == f.end - 1 {
                    continue;
                }
                let want = f
                    .rows
                    .iter()
                    .take_while(|r| r.0 <= addr)
                    .last()
                    .map_or(Rule::INVALID, |r| r.1);
                assert_eq!(
                    row_meaning(table.lookup(addr)),
                    meaning(want),
                    "{} at {addr:#x}",
                    bin.display()
                );
                addresses += 1;
            }
        }
        eprintln!(
            "{}: every one of {addresses} addresses checked",
            bin.display()
        );
    }
}

/// libc's table builds, and covers its text. How long it takes is measured by
/// `cargo bench --bench unwind_tables` (the budget is 50 ms), not asserted here:
/// a timed test would fail on a busy machine for no fault of the code.
#[test]
fn libc_table_builds() {
    let data = std::fs::read("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
    let table = build(&data[..]).unwrap();
    eprintln!("libc table: {} bytes", table.bytes());
    assert!(table.bytes() > 10_000, "{} bytes", table.bytes());
    // Read through a file cache as the manager reads it: the same table, and glibc's
    // signal return trampoline found.
    let file = std::fs::File::open("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
    let (fdes, stats) = super::table::fdes(&object::ReadCache::new(&file)).unwrap();
    assert!(stats.signal_fdes >= 1, "{stats:?}");
    assert_eq!(fdes.len(), super::table::fdes(&data[..]).unwrap().0.len());
}

/// Memory of a core file: its PT_LOAD segments.
struct Core {
    segments: Vec<(u64, Vec<u8>)>,
}

impl super::rules::Memory for Core {
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
fn mappings(files: &[CoreFile]) -> Vec<super::walk::Mapping> {
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
        let Some(bias) = super::table::bias(
            &crate::host::elf::segments_in(&entry.0[..]).unwrap_or_default(),
            *start,
            *offset,
        ) else {
            continue;
        };
        out.push(super::walk::Mapping {
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
        let ours = super::walk::walk(&maps, regs, &mut mem, 128, false);
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

/// A table past its bounds is refused while it is read, not after it is built: a
/// crafted frame section packs a row into two bytes, and the rows are held until the
/// table is packed.
#[test]
fn a_table_past_its_bounds_is_refused_before_it_is_built() {
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("libc");
    let data = std::fs::read(libc).unwrap();
    let whole = super::table::build_within(&data[..], super::table::Bounds::for_budget(64 << 20))
        .expect("libc fits the default budget");
    assert!(whole.stats.rows > 1000);
    let few_rows = super::table::Bounds {
        section_bytes: u64::MAX,
        rows: 1000,
    };
    let Err(e) = super::table::build_within(&data[..], few_rows) else {
        panic!("a table of over 1000 rows was built within a 1000-row bound");
    };
    assert!(
        matches!(e, super::table::TableError::TooLarge { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("unwind.max_memory"), "{e}");
    let small_section = super::table::Bounds {
        section_bytes: 4096,
        rows: u64::MAX,
    };
    let Err(e) = super::table::build_within(&data[..], small_section) else {
        panic!("a table was built from a section over its bound");
    };
    assert!(e.to_string().contains("frame section"), "{e}");
}
