//! The eBPF profiling receiver on this machine's real kernel, through the real binary.
//! Needs root (CI runs as root); skipped loudly otherwise.

use common::*;
use stackline_testkit as common;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod containers;
mod hostile_files;
mod lifecycle;
mod probabilistic;
mod readers;
mod sampling;
mod selection;
mod selection_rules;
mod verifier_log;

/// Each test profiles the whole machine and most run a CPU-bound workload: run them one
/// at a time, or on a small machine they starve each other of CPU and samples.
static SYSTEM_WIDE: std::sync::LazyLock<tokio::sync::Mutex<()>> =
    std::sync::LazyLock::new(|| tokio::sync::Mutex::new(()));

fn agent_config(extra: &str) -> String {
    format!(
        r#"
receivers:
  ebpf_profiler:
    sampling_frequency: 99
    report_interval: 1s
    load_retry: {{ initial_interval: 200ms, max_interval: 1s }}
{extra}
exporters:
  file: {{ path: "{{DIR}}/profiles.jsonl", flush_interval: 100ms }}
service:
  pipelines: {{ profiles: {{ receivers: [ebpf_profiler], exporters: [file] }} }}
  telemetry: {{ metrics: {{ address: "{{METRICS}}" }} }}
"#
    )
}

/// The agent with the symbolizer and a batch before its file exporter.
fn symbolized_agent_config() -> String {
    agent_config("")
        .replace(
            "exporters:\n",
            "processors:\n  symbolizer: {}\n  batch: { timeout: 200ms }\nexporters:\n",
        )
        .replace(
            "exporters: [file]",
            "processors: [symbolizer, batch], exporters: [file]",
        )
}

/// Starts stackline with `cfg` and waits until the profiler's program has loaded.
async fn start_loaded(dir: &Path, cfg: &str) -> Stackline {
    let s = Stackline::start(dir, cfg);
    // Loaded means every program the receiver needs (with a level-2 verifier log the
    // unwinder alone takes seconds), so wait for the receiver to report running.
    let loaded = eventually(Duration::from_secs(60), async || {
        s.get("/health")
            .await
            .1
            .contains(r#""receiver/ebpf_profiler":{"status":"running"}"#)
    })
    .await;
    assert!(loaded, "the profiler did not load:\n{}", s.logs());
    s
}

/// Runs the workload for `secs` seconds and returns its pid.
fn run_workload(exe: &Path, secs: &str) -> String {
    let out = Command::new(exe).arg(secs).output().unwrap();
    assert!(out.status.success(), "the workload failed");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("ready ")
        .expect("the workload prints its pid")
        .to_owned()
}

/// The R E LOAD segment of an ELF: (file offset, virtual address).
fn text_segment(path: &Path) -> (u64, u64) {
    let out = run_tool("readelf", &["-lW", path.to_str().unwrap()]);
    for l in out.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first() == Some(&"LOAD") && l.contains(" R E ") {
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            return (hex(f[1]), hex(f[2]));
        }
    }
    panic!("no text segment in {}", path.display());
}

fn build_id(path: &Path) -> String {
    run_tool("readelf", &["-n", path.to_str().unwrap()])
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_owned))
        .expect("build id note")
}
