//! Finds which of the tools the tests need are missing on this machine, and sets
//! `cfg(missing = "…")` for each, so that the tests that need it are marked
//! `#[cfg_attr(missing = "…", ignore = "what to install")]` and `cargo test`'s own summary
//! counts them as ignored, with the reason, instead of passing them without running.
//!
//! Under `CI=true` nothing is marked missing: every test runs, and one whose tool is
//! missing fails saying what to install (`stackline::testing::skip`).
//!
//! The library and the binary do not use these cfgs; only tests do.

use std::path::Path;
use std::process::{Command, Stdio};

/// Every value `missing` may take, with how it is found.
const TOOLS: &[&str] = &[
    "root",
    "gcc",
    "clang",
    "gdb",
    "go",
    "prometheus",
    "python_otlp",
    "test_kernels",
    "openssl",
];

fn main() {
    let values = TOOLS
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    println!("cargo::rustc-check-cfg=cfg(missing, values({values}))");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rerun-if-env-changed=PATH");
    // Installing a tool changes one of these directories, which runs this again.
    for dir in ["/usr/bin", "/usr/local/bin", "target/test-kernels"] {
        if Path::new(dir).exists() {
            println!("cargo::rerun-if-changed={dir}");
        }
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        return;
    }
    for tool in TOOLS {
        if !present(tool) {
            println!("cargo::rustc-cfg=missing=\"{tool}\"");
            println!(
                "cargo::warning=tests that need {tool} are ignored: it is missing here (see `cargo test -- --ignored --list`, or run with CI=true to fail instead)"
            );
        }
    }
}

fn present(tool: &str) -> bool {
    match tool {
        "root" => is_root(),
        "python_otlp" => runs(
            "python3",
            &["-c", "import opentelemetry.proto.collector.profiles"],
        ),
        "go" => runs("go", &["version"]),
        "openssl" => runs("openssl", &["version"]),
        "prometheus" => runs("prometheus", &["--version"]) && runs("promtool", &["--version"]),
        "test_kernels" => {
            runs("qemu-system-x86_64", &["--version"])
                && std::fs::read_dir("target/test-kernels")
                    .map(|d| {
                        d.flatten()
                            .any(|e| e.file_name().to_string_lossy().starts_with("busybox"))
                    })
                    .unwrap_or(false)
        }
        other => runs(other, &["--version"]),
    }
}

fn runs(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
