//! Debug files named by .gnu_debuglink: found in the debug directories, their CRC checked, never a FIFO or a path.

use super::*;

/// `bin` stripped (`NAME.stripped` beside it), with a `.gnu_debuglink` to a copy of its
/// DWARF named `name`, which is returned too (in a directory of its own, where nothing
/// looks for it).
fn strip_with_debuglink(bin: &Path, name: &str) -> (PathBuf, PathBuf) {
    let work = bin.parent().unwrap().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let dbg = work.join(name);
    let stripped = bin.with_extension("stripped");
    run(
        "objcopy",
        &[
            "--only-keep-debug",
            bin.to_str().unwrap(),
            dbg.to_str().unwrap(),
        ],
    );
    run(
        "objcopy",
        &[
            "--strip-all",
            &format!("--add-gnu-debuglink={}", dbg.display()),
            bin.to_str().unwrap(),
            stripped.to_str().unwrap(),
        ],
    );
    (stripped, dbg)
}

/// What `f` returns, and the metrics it recorded (Prometheus text).
fn with_metrics<T>(f: impl FnOnce() -> T) -> (T, String) {
    let rec = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let out = metrics::with_local_recorder(&rec, f);
    (out, rec.handle().render())
}

/// `stackline_symbolizer_debuglinks_total{result}` in `text`.
fn debuglinks(text: &str, result: &str) -> u64 {
    let head = format!("{}{{result=\"{result}\"}} ", names::SYMBOLIZER_DEBUGLINKS);
    text.lines()
        .find_map(|l| l.strip_prefix(&head))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// (function, file name, line), as [`lines_of`] gives them.
type Frame = (String, String, i64);

/// `stripped` symbolized at `vaddrs` by a worker with `debug_dirs`, the request naming
/// it `path_in_mapping` (and no build ID unless given): the lines, and the metrics.
fn symbolize_linked(
    stripped: &Path,
    path_in_mapping: &str,
    build_id: Option<&str>,
    vaddrs: &[u64],
    debug_dirs: Vec<PathBuf>,
) -> (Vec<Vec<Frame>>, String) {
    with_metrics(|| {
        let mut req = request_for(path_in_mapping, build_id, stripped, vaddrs, None);
        Worker::new(cfg(debug_dirs)).symbolize(&mut req);
        lines_of(&req)
    })
}

#[test]
fn a_stripped_binary_gets_its_names_from_the_debug_file_its_debuglink_names() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let id = read_build_id(&bin).unwrap().unwrap();
    let vaddrs = c_addresses(&bin);
    let (stripped, dbg) = strip_with_debuglink(&bin, "inlines.dbg");
    let mut want = request_for(bin.to_str().unwrap(), Some(&id), &bin, &vaddrs, None);
    Worker::new(cfg(vec![])).symbolize(&mut want);
    let want = lines_of(&want);
    assert!(want.iter().all(|l| !l.is_empty()));
    // Without its debug file the stripped binary names nothing.
    let (bare, _) = symbolize_linked(&stripped, stripped.to_str().unwrap(), None, &vaddrs, vec![]);
    assert!(bare.iter().all(Vec::is_empty), "{bare:?}");

    // GDB's layout: DIR/<the binary's directory>/NAME. The build ID is in the request,
    // but no debug file is filed under it (the flat index sees only DIR's own files).
    let gdb = dir.path().join("gdb");
    let below = gdb
        .join(stripped.parent().unwrap().strip_prefix("/").unwrap())
        .join("inlines.dbg");
    std::fs::create_dir_all(below.parent().unwrap()).unwrap();
    std::fs::copy(&dbg, &below).unwrap();
    let (got, m) = symbolize_linked(
        &stripped,
        stripped.to_str().unwrap(),
        Some(&id),
        &vaddrs,
        vec![gdb],
    );
    assert_eq!(got, want);
    assert_eq!(debuglinks(&m, "found"), 1, "{m}");

    // Directly in a debug directory.
    let flat = dir.path().join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    std::fs::copy(&dbg, flat.join("inlines.dbg")).unwrap();
    let (got, m) = symbolize_linked(
        &stripped,
        stripped.to_str().unwrap(),
        None,
        &vaddrs,
        vec![flat],
    );
    assert_eq!(got, want);
    assert_eq!(debuglinks(&m, "found"), 1, "{m}");
}

#[test]
fn a_debug_file_whose_crc_does_not_match_is_not_used_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let vaddrs = c_addresses(&bin);
    let (stripped, dbg) = strip_with_debuglink(&bin, "inlines.dbg");
    // Still a good ELF file with all the DWARF, one byte longer: another file.
    let flat = dir.path().join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    let mut bytes = std::fs::read(&dbg).unwrap();
    bytes.push(0);
    std::fs::write(flat.join("inlines.dbg"), bytes).unwrap();
    let (got, m) = symbolize_linked(
        &stripped,
        stripped.to_str().unwrap(),
        None,
        &vaddrs,
        vec![flat],
    );
    assert!(got.iter().all(Vec::is_empty), "{got:?}");
    assert_eq!(debuglinks(&m, "crc_mismatch"), 1, "{m}");
    assert_eq!(debuglinks(&m, "found"), 0, "{m}");
}

#[test]
fn a_debuglink_naming_a_fifo_neither_blocks_nor_is_used() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let vaddrs = c_addresses(&bin);
    let (stripped, _) = strip_with_debuglink(&bin, "inlines.fifo");
    // Wherever the name might be looked for: in the debug directory, below it as GDB
    // lays it out, and next to the binary.
    let debug = dir.path().join("debug");
    let below = debug.join(stripped.parent().unwrap().strip_prefix("/").unwrap());
    std::fs::create_dir_all(&below).unwrap();
    let fifos = [&debug, &below, &dir.path().to_owned()].map(|d| d.join("inlines.fifo"));
    for f in &fifos {
        nix::unistd::mkfifo(f.as_path(), nix::sys::stat::Mode::from_bits_truncate(0o644))
            .unwrap_or_else(|e| panic!("mkfifo {}: {e}", f.display()));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let path = stripped.to_str().unwrap().to_owned();
    let addrs = vaddrs.clone();
    std::thread::spawn(move || {
        let _ = tx.send(symbolize_linked(
            &stripped,
            &path,
            None,
            &addrs,
            vec![debug],
        ));
    });
    let Ok((got, m)) = rx.recv_timeout(std::time::Duration::from_secs(5)) else {
        // Let a reader blocked in open() go, then fail.
        for f in &fifos {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(f);
        }
        panic!("symbolizing blocked on a FIFO named by a .gnu_debuglink");
    };
    assert!(got.iter().all(Vec::is_empty), "{got:?}");
    assert_eq!(debuglinks(&m, "unusable_file"), 1, "{m}");
}

/// `bin` stripped, with a `.gnu_debuglink` section holding `name` (any bytes) and the
/// CRC32 of `target`, made by hand: objcopy keeps only a file name.
fn strip_with_raw_debuglink(bin: &Path, name: &[u8], target: &Path) -> PathBuf {
    let mut sec = name.to_vec();
    sec.push(0);
    while !sec.len().is_multiple_of(4) {
        sec.push(0);
    }
    sec.extend(crc32fast::hash(&std::fs::read(target).unwrap()).to_le_bytes());
    let blob = bin.with_extension("link");
    std::fs::write(&blob, sec).unwrap();
    let out = bin.with_extension("rawlink");
    run(
        "objcopy",
        &[
            "--strip-all",
            &format!("--add-section=.gnu_debuglink={}", blob.display()),
            bin.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    out
}

#[test]
fn a_debuglink_is_a_name_in_a_debug_dir_not_a_path() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let vaddrs = c_addresses(&bin);
    let (_, dbg) = strip_with_debuglink(&bin, "real.dbg");
    // The debug directory is debug/sub; good debug files lie just outside it, below
    // it, and next to the binary.
    let outer = dir.path().join("debug");
    let debug = outer.join("sub");
    std::fs::create_dir_all(debug.join("deeper")).unwrap();
    for p in [
        outer.join("real.dbg"),
        debug.join("deeper/real.dbg"),
        dir.path().join("real.dbg"),
    ] {
        std::fs::copy(&dbg, p).unwrap();
    }
    let outside = outer.join("real.dbg");
    for name in [
        &b"../real.dbg"[..],
        b"deeper/real.dbg",
        outside.as_os_str().as_bytes(),
    ] {
        let linked = strip_with_raw_debuglink(&bin, name, &dbg);
        let (got, m) = symbolize_linked(
            &linked,
            linked.to_str().unwrap(),
            None,
            &vaddrs,
            vec![debug.clone()],
        );
        let shown = String::from_utf8_lossy(name);
        assert!(got.iter().all(Vec::is_empty), "{shown}: {got:?}");
        assert_eq!(debuglinks(&m, "invalid_name"), 1, "{shown}: {m}");
    }
    // A plain name, but the binary's path (from the request) climbs out of the debug
    // directory: DIR/<dirname>/NAME would be the file next to the binary.
    let linked = strip_with_raw_debuglink(&bin, b"real.dbg", &dbg);
    let up = "/..".repeat(debug.components().count());
    let climbing = format!("{up}{}", linked.display());
    let (got, m) = symbolize_linked(&linked, &climbing, None, &vaddrs, vec![debug.clone()]);
    assert!(got.iter().all(Vec::is_empty), "{got:?}");
    assert_eq!(debuglinks(&m, "not_found"), 1, "{m}");
    // The same name, in the debug directory: used.
    std::fs::copy(&dbg, debug.join("real.dbg")).unwrap();
    let (got, m) = symbolize_linked(&linked, &climbing, None, &vaddrs, vec![debug]);
    assert!(got.iter().all(|l| !l.is_empty()), "{got:?}");
    assert_eq!(debuglinks(&m, "found"), 1, "{m}");
}
