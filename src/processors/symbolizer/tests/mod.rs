//! Symbolizing real binaries built in the test, checked against binutils' addr2line.

use super::SymbolizerConfig;
use super::worker::{Resolved, ResolvedLine, Worker, demangle};
use crate::otlp::ProfilesRequest;
use crate::otlp::synth::native_request;
use crate::telemetry::names;
use std::path::{Path, PathBuf};

mod debug_files;
mod debuglink;
mod native;

/// The build ID of a file, as text.
fn read_build_id(p: &Path) -> std::io::Result<Option<String>> {
    Ok(crate::host::elf::build_id_at(p)?.map(|b| b.as_str().to_owned()))
}

fn workload(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workloads")
        .join(name)
}

use crate::testing::run_tool as run;

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
