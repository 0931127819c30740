//! The code's shape, checked: where unsafe code may live, that layers point down, that
//! no crate compiles another's sources through `#[path]`, and that source files stay
//! small enough to read. See the README's Layout section.

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The modules that own unsafe code: each says so in its doc ("Owns unsafe code") and
/// allows the `unsafe_code` lint, which `src/lib.rs` and `src/main.rs` deny everywhere
/// else. Adding one is a decision: add it here and say why in its doc.
const UNSAFE_OWNERS: &[&str] = &[
    "ebpf-common/src/lib.rs",
    "src/host/mod.rs",
    "src/receivers/ebpf_profiler/bpf/mod.rs",
];

/// Lines a source file may have: past this it is usually two responsibilities.
const MAX_LINES: usize = 500;

/// Every directory of Rust sources that the checks below read.
const SOURCE_DIRS: &[&str] = &[
    "src",
    "tests",
    "benches",
    "testkit/src",
    "ebpf/src",
    "ebpf-common/src",
    "fuzz/fuzz_targets",
];

fn rust_files(dir: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let root = Path::new(ROOT).join(dir);
    assert!(
        root.is_dir(),
        "{} is not a directory: fix the list in tests/layout.rs",
        root.display()
    );
    let mut out = Vec::new();
    walk(&root, &mut out);
    out.sort();
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(ROOT).unwrap_or(p).display().to_string()
}

/// The code of a file with `//` comments removed (doc comments included).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn has_unsafe(code: &str) -> bool {
    [
        "unsafe {",
        "unsafe fn",
        "unsafe impl",
        "unsafe trait",
        "unsafe extern",
        "#[unsafe(",
    ]
    .iter()
    .any(|t| code.contains(t))
        || lifts_the_lint(code)
}

/// An attribute that allows (or expects) `unsafe_code`, alone or among other lints.
fn lifts_the_lint(code: &str) -> bool {
    ["allow(", "expect(", "warn("].iter().any(|a| {
        code.match_indices(a).any(|(i, _)| {
            let rest = &code[i + a.len()..];
            rest.find(')')
                .is_some_and(|end| rest[..end].contains("unsafe_code"))
        })
    })
}

/// The owner module of `file`: itself or the nearest `mod.rs`/`lib.rs` above it whose
/// doc says it owns unsafe code.
fn owner(file: &Path) -> Option<String> {
    let mut candidates = vec![file.to_path_buf()];
    let mut dir = file.parent();
    while let Some(d) = dir {
        if !d.starts_with(ROOT) || d == Path::new(ROOT) {
            break;
        }
        candidates.push(d.join("mod.rs"));
        candidates.push(d.join("lib.rs"));
        dir = d.parent();
    }
    candidates.into_iter().find_map(|c| {
        let text = std::fs::read_to_string(&c).ok()?;
        text.lines()
            .take_while(|l| l.starts_with("//!") || l.trim().is_empty())
            .any(|l| l.contains("Owns unsafe code"))
            .then(|| rel(&c))
    })
}

#[test]
fn unsafe_code_lives_only_in_the_modules_that_own_it() {
    let mut strays = Vec::new();
    let mut owners = std::collections::BTreeSet::new();
    for f in rust_files("src")
        .into_iter()
        .chain(rust_files("ebpf-common/src"))
    {
        let text = std::fs::read_to_string(&f).unwrap();
        if !has_unsafe(&code(&text)) {
            continue;
        }
        match owner(&f) {
            Some(o) => {
                owners.insert(o);
            }
            None => strays.push(rel(&f)),
        }
    }
    assert!(
        owners.contains("src/receivers/ebpf_profiler/bpf/mod.rs")
            && owners.contains("src/host/mod.rs"),
        "the scan found no unsafe code in its owners, so it is not looking where the code is: {owners:?}"
    );
    assert!(
        strays.is_empty(),
        "unsafe code outside the modules that own it (move it into host/ or the eBPF receiver's bpf/, behind a safe function): {strays:?}"
    );
    let expected: std::collections::BTreeSet<String> =
        UNSAFE_OWNERS.iter().map(|s| s.to_string()).collect();
    assert!(
        owners.is_subset(&expected),
        "modules own unsafe code that UNSAFE_OWNERS does not list: {:?}",
        owners.difference(&expected).collect::<Vec<_>>()
    );
    // The lint is what stops new unsafe code at compile time: denied at both crate
    // roots, allowed only by the owners.
    for root in ["src/lib.rs", "src/main.rs"] {
        let text = std::fs::read_to_string(Path::new(ROOT).join(root)).unwrap();
        assert!(
            text.contains("#![deny(unsafe_code)]"),
            "{root} must deny unsafe_code"
        );
    }
    for f in rust_files("src") {
        let text = std::fs::read_to_string(&f).unwrap();
        if lifts_the_lint(&code(&text)) {
            let r = rel(&f);
            assert!(
                UNSAFE_OWNERS.contains(&r.as_str()),
                "{r} allows unsafe_code but is not an owner"
            );
        }
    }
}

#[test]
fn no_crate_compiles_another_s_sources_through_path() {
    let mut found = Vec::new();
    for dir in SOURCE_DIRS {
        for f in rust_files(dir) {
            let text = std::fs::read_to_string(&f).unwrap();
            // Spelled in two parts so that this file does not match itself.
            if code(&text).contains(concat!("#[", "path")) {
                found.push(rel(&f));
            }
        }
    }
    assert!(
        found.is_empty(),
        "path attributes in {found:?}: share code through a crate or module instead"
    );
}

/// Receivers, processors and exporters do not import one another; what two of them
/// need lives lower (host, net, otlp, telemetry, pipeline).
#[test]
fn layers_point_down() {
    let kinds = ["receivers", "processors", "exporters"];
    let mut leaks = Vec::new();
    for kind in kinds {
        for f in rust_files(&format!("src/{kind}")) {
            let text = code(&std::fs::read_to_string(&f).unwrap());
            for other in kinds.iter().filter(|k| **k != kind) {
                // `crate::exporters…`, or `exporters::` inside a `use crate::{…}` group.
                let grouped = text.match_indices("crate::{").any(|(i, _)| {
                    let group = &text[i..];
                    let end = group.find("};").unwrap_or(group.len());
                    group[..end].contains(&format!("{other}::"))
                });
                if text.contains(&format!("crate::{other}")) || grouped {
                    leaks.push(format!("{} uses crate::{other}", rel(&f)));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "{leaks:#?}");
}

#[test]
fn source_files_stay_readable() {
    let mut long = Vec::new();
    for dir in SOURCE_DIRS {
        for f in rust_files(dir) {
            let n = std::fs::read_to_string(&f).unwrap().lines().count();
            if n > MAX_LINES {
                long.push(format!("{} has {n} lines", rel(&f)));
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines (split by responsibility): {long:#?}"
    );
}
