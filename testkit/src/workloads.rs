//! Workloads to profile: C programs from tests/workloads built with gcc, processes that report when ready, and the tools that read their symbols.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::*;

/// True when this process can load BPF programs; prints why a test is skipped otherwise
/// (a failure under CI=true).
pub fn bpf_available(test: &str) -> bool {
    stackline::testing::root_or_skip(test, "needs root to load BPF programs and open perf events")
}

/// Builds a test workload from tests/workloads/NAME.c with frame pointers and a build ID.
pub fn build_c_workload(name: &str, dir: &Path, extra: &[&str]) -> PathBuf {
    let src = Path::new(crate::REPO).join(format!("tests/workloads/{name}.c"));
    let out = dir.join(name);
    let st = Command::new("gcc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-Wl,--build-id"])
        .args(extra)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("gcc must be installed");
    assert!(st.success(), "building {name} failed");
    out
}

/// Starts `cmd` (a test workload) and reads the `ready PID` line it prints once it
/// runs: the child, still running, and its pid.
pub fn spawn_ready(cmd: &mut Command) -> (Child, String) {
    let mut c = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(c.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let pid = line
        .trim()
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("no `ready PID` line: {line:?}"))
        .to_owned();
    (c, pid)
}

/// Waits (at most 60 s) until the agent `s` has loaded its native unwinder.
pub async fn wait_unwinder_loaded(s: &Stackline) {
    let loaded = eventually(Duration::from_secs(60), async || {
        s.metric(
            "stackline_ebpf_program_loads_total",
            &[("program", "stackline_unwind"), ("outcome", "success")],
        )
        .await
            >= 1.0
    })
    .await;
    assert!(loaded, "the unwinder did not load:\n{}", s.logs());
}

/// Function symbols of an ELF file: (start, end, name), from `nm -S`.
pub fn symbols(path: &Path) -> Vec<(u64, u64, String)> {
    run_tool("nm", &["-S", "--defined-only", path.to_str().unwrap()])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() == 4 && matches!(f[2], "T" | "t") {
                let start = u64::from_str_radix(f[0], 16).ok()?;
                let size = u64::from_str_radix(f[1], 16).ok()?;
                Some((start, start + size, f[3].to_owned()))
            } else {
                None
            }
        })
        .collect()
}
