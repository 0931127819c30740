//! Tables against readelf's interpretation of .eh_frame: every row and every address follows its FDE's rule; a table past its bounds is refused before it is built.

use super::*;

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
    let (fdes, stats) = super::super::table::fdes(&object::ReadCache::new(&file)).unwrap();
    assert!(stats.signal_fdes >= 1, "{stats:?}");
    assert_eq!(
        fdes.len(),
        super::super::table::fdes(&data[..]).unwrap().0.len()
    );
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
    let whole = super::super::table::build_within(
        &data[..],
        super::super::table::Bounds::for_budget(64 << 20),
    )
    .expect("libc fits the default budget");
    assert!(whole.stats.rows > 1000);
    let few_rows = super::super::table::Bounds {
        section_bytes: u64::MAX,
        rows: 1000,
    };
    let Err(e) = super::super::table::build_within(&data[..], few_rows) else {
        panic!("a table of over 1000 rows was built within a 1000-row bound");
    };
    assert!(
        matches!(e, super::super::table::TableError::TooLarge { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("unwind.max_memory"), "{e}");
    let small_section = super::super::table::Bounds {
        section_bytes: 4096,
        rows: u64::MAX,
    };
    let Err(e) = super::super::table::build_within(&data[..], small_section) else {
        panic!("a table was built from a section over its bound");
    };
    assert!(e.to_string().contains("frame section"), "{e}");
}
