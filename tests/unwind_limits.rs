//! The unwinder's bounds, end to end with the real agent on this kernel: a table larger
//! than `unwind.max_memory` is refused before it is built, and one process with tens of
//! thousands of executable mappings gets no more than its share of the mapping index.
//! Either is counted, and neither keeps another process from being unwound.

use stackline_testkit as common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(any(missing = "root", missing = "gcc"), ignore = "needs root, gcc")]
async fn over_budget_tables_and_over_cap_processes_are_refused_and_others_still_unwind() {
    if !bpf_available("unwind limits") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads");
    let many = dir.path().join("many_maps");
    let st = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&many)
        .arg(src.join("many_maps.c"))
        .status()
        .expect("gcc");
    assert!(st.success());
    let Some(plain) = stackline::testing::build_unwind_workload(
        "unwind limits",
        dir.path(),
        "gcc",
        &["-O2", "-fomit-frame-pointer"],
    ) else {
        return;
    };

    // 1 MiB: less than the .eh_frame of the agent's own (debug) binary, which it
    // samples too; more than what libc and a small program need.
    let config = r#"
receivers:
  ebpf_profiler:
    sampling_frequency: 99
    report_interval: 1s
    load_retry: { initial_interval: 200ms, max_interval: 1s }
    unwind: { max_memory: 1MiB }
processors:
  symbolizer: {}
exporters:
  file: { path: "{DIR}/profiles.jsonl" }
service:
  pipelines: { profiles: { receivers: [ebpf_profiler], processors: [symbolizer], exporters: [file] } }
  telemetry: { metrics: { address: "{METRICS}" } }
"#;
    let mut s = Stackline::start(dir.path(), config);
    wait_unwinder_loaded(&s).await;
    // 20,000 one-page executable mappings: more than the 16,384 index entries one
    // process may hold.
    let (mut crowd, _) = spawn_ready(Command::new(&many).args(["20000", "4"]));
    let (mut other, other_pid) = spawn_ready(Command::new(&plain).args(["shares", "4"]));
    tokio::task::block_in_place(|| {
        assert!(crowd.wait().unwrap().success());
        assert!(other.wait().unwrap().success());
    });
    let capped = s
        .metric(
            "stackline_ebpf_unwind_mappings_refused_total",
            &[("reason", "process_cap")],
        )
        .await;
    let too_large = s
        .metric(
            "stackline_ebpf_unwind_table_builds_total",
            &[("result", "too_large")],
        )
        .await;
    let bytes = s.metric("stackline_ebpf_unwind_table_bytes", &[]).await;
    s.sigterm();
    assert!(s.wait(Duration::from_secs(30)).success(), "{}", s.logs());
    eprintln!(
        "mapping ranges refused at the per-process cap: {capped}; tables refused as too large: {too_large}; table bytes loaded at the end: {bytes}"
    );
    assert!(capped >= 1.0, "the crowded process was not capped");
    assert!(too_large >= 1.0, "no table was refused for max_memory");
    assert!(
        bytes <= (1 << 20) as f64,
        "tables hold {bytes} bytes, over unwind.max_memory"
    );

    // The other process is unwound as well as ever.
    let all: Vec<FlatSample> = read_json_lines(&dir.path().join("profiles.jsonl"))
        .iter()
        .flat_map(flatten)
        .collect();
    // From its first whole stack on: before it, its table is still being built, which
    // on a busy machine took over a second (the start-up gap of the no-blind-spots
    // work); after it, a stack cut short would be the budget or the cap at work.
    let whole = |x: &FlatSample| {
        x.frames
            .iter()
            .any(|f| f.functions.iter().any(|n| n == "main"))
    };
    let first = all
        .iter()
        .filter(|x| x.attrs.get("process.pid") == Some(&other_pid) && whole(x))
        .flat_map(|x| x.timestamps.iter().copied())
        .min()
        .unwrap_or(u64::MAX);
    let mine: Vec<&FlatSample> = all
        .iter()
        .filter(|x| {
            x.attrs.get("process.pid") == Some(&other_pid)
                && x.timestamps.iter().all(|&t| t > first)
        })
        .collect();
    let reach = mine.iter().filter(|x| whole(x)).count();
    eprintln!(
        "the other process: {} samples, {reach} reach main",
        mine.len()
    );
    // A few stacks that stop short, to say where.
    let examples: Vec<String> = mine
        .iter()
        .filter(|x| {
            !x.frames
                .iter()
                .any(|f| f.functions.iter().any(|n| n == "main"))
        })
        .take(3)
        .map(|x| {
            let f: Vec<String> = x
                .frames
                .iter()
                .map(|f| format!("{}@{}", f.functions.join("/"), f.filename))
                .collect();
            format!(
                "  stop {:?}: {}",
                x.attrs.get("stackline.unwind.stop"),
                f.join(" <- ")
            )
        })
        .collect();
    assert!(mine.len() >= 100, "{} samples", mine.len());
    assert!(
        reach as f64 >= 0.95 * mine.len() as f64,
        "{reach} of {} samples of the other process reach main; for example:\n{}",
        mine.len(),
        examples.join("\n")
    );
}
