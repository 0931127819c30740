//! The table builder against readelf and gimli, and the walk against gdb on core files.

use super::rules::{Regs, Row, cfa, rbp, stop};
use super::table::{Rule, Table, build, fdes};
use crate::testing::{build_unwind_workload, skip};
use std::path::{Path, PathBuf};
use std::process::Command;

mod gdb;
mod readelf;

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
