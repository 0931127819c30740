//! Symbolizing real binaries built in the test, checked against binutils' addr2line.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::SymbolizerConfig;
use super::worker::{Resolved, ResolvedLine, Worker, demangle};
use crate::otlp::ProfilesRequest;
use crate::otlp::synth::native_request;
use crate::telemetry::names;

/// The build ID of a file, as text.
fn read_build_id(p: &Path) -> std::io::Result<Option<String>> {
    Ok(crate::host::elf::build_id_at(p)?.map(|b| b.as_str().to_owned()))
}

fn workload(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workloads")
        .join(name)
}

fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn build_c(dir: &Path) -> PathBuf {
    let out = dir.join("inlines");
    let src = workload("inlines.c");
    run(
        "gcc",
        &[
            "-O2",
            "-g",
            "-fno-omit-frame-pointer",
            "-Wl,--build-id",
            "-o",
            out.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
    );
    out
}

fn build_rust(dir: &Path) -> PathBuf {
    let out = dir.join("rusty");
    let src = workload("rusty.rs");
    run(
        "rustc",
        &[
            "-C",
            "opt-level=2",
            "-C",
            "debuginfo=2",
            "-C",
            "force-frame-pointers=yes",
            "-o",
            out.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
    );
    out
}

/// (start, end) of a symbol, from nm.
fn symbol(path: &Path, name_part: &str) -> (u64, u64) {
    run("nm", &["-S", "--defined-only", path.to_str().unwrap()])
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[3].contains(name_part)).then(|| {
                let s = u64::from_str_radix(f[0], 16).unwrap();
                (s, s + u64::from_str_radix(f[1], 16).unwrap())
            })
        })
        .unwrap_or_else(|| panic!("no symbol {name_part}"))
}

/// Instruction addresses of a function, from objdump.
fn instructions(path: &Path, start: u64, end: u64) -> Vec<u64> {
    run(
        "objdump",
        &[
            "-d",
            &format!("--start-address={start:#x}"),
            &format!("--stop-address={end:#x}"),
            path.to_str().unwrap(),
        ],
    )
    .lines()
    .filter_map(|l| {
        l.trim()
            .split_once(':')
            .and_then(|(a, _)| u64::from_str_radix(a.trim(), 16).ok())
    })
    .collect()
}

/// addr2line -f -i -C: (function, file name, line) innermost first.
fn addr2line(path: &Path, vaddr: u64) -> Vec<(String, String, i64)> {
    let out = run(
        "addr2line",
        &[
            "-f",
            "-i",
            "-C",
            "-e",
            path.to_str().unwrap(),
            &format!("{vaddr:#x}"),
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .map(|c| {
            let (file, line) = c[1].rsplit_once(':').unwrap();
            let line = line.split_whitespace().next().unwrap().parse().unwrap_or(0);
            (
                c[0].to_owned(),
                Path::new(file)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                line,
            )
        })
        .collect()
}

/// The text segment: (file offset, vaddr).
fn text_segment(path: &Path) -> (u64, u64) {
    let out = run("readelf", &["-lW", path.to_str().unwrap()]);
    out.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&"LOAD") && l.contains(" R E ")).then(|| {
                let h = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
                (h(f[1]), h(f[2]))
            })
        })
        .unwrap()
}

/// A request with one leaf frame per address of `bin`'s text, mapped as the kernel would.
fn request_for(
    path_in_mapping: &str,
    build_id: Option<&str>,
    bin: &Path,
    vaddrs: &[u64],
    pid: Option<i64>,
) -> ProfilesRequest {
    native_request(path_in_mapping, build_id, text_segment(bin), vaddrs, pid)
}

/// Each location's lines as (function, file name, line), innermost first.
fn lines_of(req: &ProfilesRequest) -> Vec<Vec<(String, String, i64)>> {
    let d = req.dictionary.as_ref().unwrap();
    d.location_table[1..]
        .iter()
        .map(|l| {
            l.lines
                .iter()
                .map(|line| {
                    let f = &d.function_table[line.function_index as usize];
                    let file = &d.string_table[f.filename_strindex as usize];
                    (
                        d.string_table[f.name_strindex as usize].clone(),
                        Path::new(file)
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        line.line,
                    )
                })
                .collect()
        })
        .collect()
}

fn cfg(debug_dirs: Vec<PathBuf>) -> SymbolizerConfig {
    SymbolizerConfig {
        debug_dirs,
        ..Default::default()
    }
}

/// Addresses of `accumulate`'s body (where `scale` is inlined) and of `entry_point`.
fn c_addresses(bin: &Path) -> Vec<u64> {
    let (a0, a1) = symbol(bin, "accumulate");
    let (e0, e1) = symbol(bin, "entry_point");
    let mut v = instructions(bin, a0, a1);
    v.extend(instructions(bin, e0, e1));
    v
}

#[test]
fn c_functions_lines_and_inline_chains_match_addr2line() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let id = read_build_id(&bin).unwrap().unwrap();
    let vaddrs = c_addresses(&bin);
    let mut req = request_for(bin.to_str().unwrap(), Some(&id), &bin, &vaddrs, None);
    Worker::new(cfg(vec![])).symbolize(&mut req);
    let got = lines_of(&req);
    let mut inlined = 0;
    for (v, lines) in vaddrs.iter().zip(&got) {
        assert_eq!(lines, &addr2line(&bin, *v), "at {v:#x}");
        if lines.len() == 2 {
            // scale (lines 6-7) inlined into accumulate at line 12.
            assert_eq!(
                (lines[0].0.as_str(), lines[0].1.as_str()),
                ("scale", "inlines.c")
            );
            assert!(matches!(lines[0].2, 6 | 7), "{lines:?}");
            assert_eq!(lines[1], ("accumulate".into(), "inlines.c".into(), 12));
            inlined += 1;
        }
    }
    assert!(inlined > 0, "no address fell into the inlined function");
    assert!(
        got.iter()
            .any(|l| l.first().is_some_and(|f| f.0 == "entry_point" && f.2 == 16))
    );
    crate::otlp::check(&req).unwrap();
}

/// A request with a leaf frame at every instruction of `churn` in the Rust test
/// program (built in `dir`), and those addresses.
fn churn_request(dir: &Path) -> (ProfilesRequest, Vec<u64>) {
    let bin = build_rust(dir);
    let id = read_build_id(&bin).unwrap().unwrap();
    let (s, e) = symbol(&bin, "churn");
    let vaddrs = instructions(&bin, s, e);
    let req = request_for(bin.to_str().unwrap(), Some(&id), &bin, &vaddrs, None);
    (req, vaddrs)
}

#[test]
fn the_frame_cache_stays_within_cache_size_and_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (req, vaddrs) = churn_request(dir.path());
    assert!(vaddrs.len() > 8, "{} instructions", vaddrs.len());
    let mut big = Worker::new(cfg(vec![]));
    let mut want = req.clone();
    big.symbolize(&mut want);
    assert_eq!(big.cached_frames(), vaddrs.len());
    let mut small = Worker::new(SymbolizerConfig {
        cache_size: 4,
        ..cfg(vec![])
    });
    for _ in 0..2 {
        let mut got = req.clone();
        small.symbolize(&mut got);
        assert_eq!(lines_of(&got), lines_of(&want));
        assert_eq!(small.cached_frames(), 4);
    }
}

#[test]
fn rust_names_are_demangled_with_the_mangled_name_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (mut req, _) = churn_request(dir.path());
    Worker::new(cfg(vec![])).symbolize(&mut req);
    let d = req.dictionary.as_ref().unwrap();
    let churn = d
        .function_table
        .iter()
        .find(|f| d.string_table[f.name_strindex as usize] == "rusty::engine::churn")
        .expect("demangled name without hash");
    let mangled = &d.string_table[churn.system_name_strindex as usize];
    assert!(
        mangled.starts_with("_ZN") || mangled.starts_with("_R"),
        "{mangled}"
    );
    assert_eq!(demangle(mangled), "rusty::engine::churn");
    let got = lines_of(&req);
    // mix (line 6) inlined into churn at line 12, under std's own inlined helpers.
    assert!(
        got.iter().any(|l| l.len() >= 2
            && l[l.len() - 2] == ("rusty::engine::mix".into(), "rusty.rs".into(), 6)
            && l[l.len() - 1] == ("rusty::engine::churn".into(), "rusty.rs".into(), 12)),
        "no inlined mix in churn: {got:?}"
    );
    // Every chain ends in the function the address is in.
    assert!(
        got.iter()
            .all(|l| l.last().is_some_and(|f| f.0 == "rusty::engine::churn"))
    );
}

/// Where a debug file for `id` lies under `debug_root`: `.build-id/ab/cdef….debug`.
fn debug_file_by_build_id(debug_root: &Path, id: &str) -> PathBuf {
    debug_root
        .join(".build-id")
        .join(&id[..2])
        .join(format!("{}.debug", &id[2..]))
}

fn strip_with_debug_by_build_id(bin: &Path, debug_root: &Path) -> (PathBuf, String) {
    let id = read_build_id(bin).unwrap().unwrap();
    let dbg = debug_file_by_build_id(debug_root, &id);
    std::fs::create_dir_all(dbg.parent().unwrap()).unwrap();
    run(
        "objcopy",
        &[
            "--only-keep-debug",
            bin.to_str().unwrap(),
            dbg.to_str().unwrap(),
        ],
    );
    let stripped = bin.with_extension("stripped");
    run(
        "objcopy",
        &[
            "--strip-all",
            bin.to_str().unwrap(),
            stripped.to_str().unwrap(),
        ],
    );
    (stripped, id)
}

#[test]
fn a_stripped_binary_with_its_debug_file_by_build_id_gives_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let vaddrs = c_addresses(&bin);
    let debug_root = dir.path().join("debug");
    let (stripped, id) = strip_with_debug_by_build_id(&bin, &debug_root);
    assert_eq!(
        read_build_id(&stripped).unwrap().as_deref(),
        Some(id.as_str())
    );

    let mut want = request_for(bin.to_str().unwrap(), Some(&id), &bin, &vaddrs, None);
    Worker::new(cfg(vec![])).symbolize(&mut want);
    // On the agent: the stripped file is on this host, its DWARF comes by build ID.
    let mut on_host = request_for(
        stripped.to_str().unwrap(),
        Some(&id),
        &stripped,
        &vaddrs,
        None,
    );
    Worker::new(cfg(vec![debug_root.clone()])).symbolize(&mut on_host);
    assert_eq!(lines_of(&on_host), lines_of(&want));
    // On a gateway: the file is not here and the process is gone; only the build ID is.
    let mut gateway = request_for(
        "/nonexistent/inlines",
        Some(&id),
        &bin,
        &vaddrs,
        Some(999_999_999),
    );
    Worker::new(cfg(vec![debug_root])).symbolize(&mut gateway);
    assert_eq!(lines_of(&gateway), lines_of(&want));
}

#[test]
fn a_debug_file_with_compressed_sections_gives_the_same_result_through_a_copy_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let vaddrs = c_addresses(&bin);
    let debug_root = dir.path().join("debug");
    let (stripped, id) = strip_with_debug_by_build_id(&bin, &debug_root);
    // As Debian's debug packages ship them: the DWARF sections zlib-compressed.
    let dbg = debug_file_by_build_id(&debug_root, &id);
    let plain = dir.path().join("plain.debug");
    std::fs::rename(&dbg, &plain).unwrap();
    run(
        "objcopy",
        &[
            "--compress-debug-sections=zlib",
            plain.to_str().unwrap(),
            dbg.to_str().unwrap(),
        ],
    );
    assert!(
        run("readelf", &["-SW", dbg.to_str().unwrap()])
            .lines()
            .any(|l| l.contains(".debug_info") && l.contains(" C "))
    );

    let mut want = request_for(bin.to_str().unwrap(), Some(&id), &bin, &vaddrs, None);
    Worker::new(cfg(vec![])).symbolize(&mut want);
    let Some(copies) = super::unpack::disk_tempdir() else {
        return;
    };
    for (decompress_dir, copies_made) in [(Some(copies.path().to_owned()), 1), (None, 0)] {
        let mut w = Worker::new(SymbolizerConfig {
            decompress_dir,
            ..cfg(vec![debug_root.clone()])
        });
        let mut got = request_for(
            stripped.to_str().unwrap(),
            Some(&id),
            &stripped,
            &vaddrs,
            None,
        );
        w.symbolize(&mut got);
        assert_eq!(lines_of(&got), lines_of(&want));
        assert_eq!(w.unpacked_files(), copies_made);
    }
}

#[test]
fn a_flat_debug_directory_is_indexed_by_build_id() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let id = read_build_id(&bin).unwrap().unwrap();
    let vaddrs = c_addresses(&bin);
    let flat = dir.path().join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    let mut want = request_for(bin.to_str().unwrap(), Some(&id), &bin, &vaddrs, None);
    Worker::new(cfg(vec![])).symbolize(&mut want);

    let mut w = Worker::new(SymbolizerConfig {
        debug_dirs: vec![flat.clone()],
        rescan_interval: std::time::Duration::from_millis(1),
        ..Default::default()
    });
    // Not there yet: unresolved, address and mapping kept.
    let mut req = request_for("/gone/inlines", Some(&id), &bin, &vaddrs, None);
    let before = req.clone();
    w.symbolize(&mut req);
    assert_eq!(req, before, "an unresolved frame must be left as it was");
    // Added later: the directory change is noticed.
    std::fs::copy(&bin, flat.join("some-name")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut req = request_for("/gone/inlines2", Some(&id), &bin, &vaddrs, None);
    w.symbolize(&mut req);
    assert_eq!(lines_of(&req), lines_of(&want));
}

#[test]
fn kernel_addresses_from_kallsyms_resolve_to_their_names() {
    let text = std::fs::read_to_string("/proc/kallsyms").unwrap();
    let wanted = ["vfs_read", "schedule", "do_sys_openat2"];
    let mut addrs = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 3 && matches!(f[1], "T" | "t") && wanted.contains(&f[2]) && f.len() == 3 {
            let a = u64::from_str_radix(f[0], 16).unwrap();
            if a == 0 {
                crate::testing::skip(
                    "kernel symbols",
                    "kernel addresses are hidden (kptr_restrict; needs root)",
                );
                return;
            }
            addrs.push((a + 4, f[2].to_owned()));
        }
    }
    assert!(!addrs.is_empty());
    let w = Worker::new(cfg(vec![]));
    let res = w.symbolize_kernel(&addrs.iter().map(|a| a.0).collect::<Vec<_>>());
    for ((_, name), r) in addrs.iter().zip(res) {
        match r {
            Resolved::Lines(l) => assert_eq!(
                l.last().map(|x: &ResolvedLine| x.func.name.as_str()),
                Some(name.as_str())
            ),
            Resolved::Unknown(why) => panic!("{name}: {why}"),
        }
    }
}

#[test]
fn with_only_debug_dirs_no_host_file_named_by_a_request_is_read() {
    use super::SymbolSource;
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let vaddrs = c_addresses(&bin);
    let debug_root = dir.path().join("debug");
    let (stripped, id) = strip_with_debug_by_build_id(&bin, &debug_root);
    let gateway = |debug_dirs: Vec<PathBuf>| SymbolizerConfig {
        sources: vec![SymbolSource::DebugDirs],
        ..cfg(debug_dirs)
    };
    // A request naming a real file on this machine (with its build ID, and as our own
    // pid) gets nothing from it when `host` is not a source...
    let mut named = request_for(
        bin.to_str().unwrap(),
        Some(&id),
        &bin,
        &vaddrs,
        Some(std::process::id() as i64),
    );
    Worker::new(gateway(vec![])).symbolize(&mut named);
    assert!(lines_of(&named).iter().all(Vec::is_empty));
    // ...while the same build ID in a debug directory symbolizes it.
    let mut want = request_for(bin.to_str().unwrap(), Some(&id), &bin, &vaddrs, None);
    Worker::new(cfg(vec![])).symbolize(&mut want);
    let mut by_id = request_for(
        stripped.to_str().unwrap(),
        Some(&id),
        &bin,
        &vaddrs,
        Some(std::process::id() as i64),
    );
    Worker::new(gateway(vec![debug_root])).symbolize(&mut by_id);
    assert_eq!(lines_of(&by_id), lines_of(&want));
}

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
