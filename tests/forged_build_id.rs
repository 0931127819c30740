//! Executables are who they are: two programs that declare the same build ID (a process
//! can run an ELF carrying libc's) are unwound with their own tables and named from
//! their own symbols, side by side, by the real agent on this kernel.

use stackline_testkit as common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::*;

const FORGED: &str = "0x0123456789abcdef0123456789abcdef01234567";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(any(missing = "root", missing = "gcc"), ignore = "needs root, gcc")]
async fn two_programs_with_one_forged_build_id_are_each_unwound_and_named_correctly() {
    if !bpf_available("forged build ID") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/forged.c");
    let build = |variant: u32| {
        let out = dir.path().join(format!("forged{variant}"));
        let st = Command::new("gcc")
            .args(["-O2", "-g", "-fomit-frame-pointer", "-fno-inline"])
            .arg(format!("-DVARIANT={variant}"))
            .arg(format!("-Wl,--build-id={FORGED}"))
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .status()
            .expect("gcc");
        assert!(st.success());
        out
    };
    let (one, two) = (build(1), build(2));
    let id = |p: &std::path::Path| stackline::host::elf::build_id(&std::fs::File::open(p).unwrap());
    assert_eq!(
        id(&one),
        id(&two),
        "the two programs must declare one build ID"
    );

    let config = r#"
receivers:
  ebpf_profiler:
    sampling_frequency: 99
    report_interval: 1s
    load_retry: { initial_interval: 200ms, max_interval: 1s }
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
    let start = |exe: &std::path::Path| spawn_ready(Command::new(exe).arg("6"));
    // Side by side: both are sampled while both are mapped.
    let (mut c1, pid1) = start(&one);
    let (mut c2, pid2) = start(&two);
    tokio::task::block_in_place(|| {
        assert!(c1.wait().unwrap().success());
        assert!(c2.wait().unwrap().success());
    });
    s.sigterm();
    assert!(s.wait(Duration::from_secs(30)).success(), "{}", s.logs());
    let all: Vec<FlatSample> = read_json_lines(&dir.path().join("profiles.jsonl"))
        .iter()
        .flat_map(flatten)
        .collect();
    for (pid, own, other) in [(&pid1, "one_", "two_"), (&pid2, "two_", "one_")] {
        // After its first two seconds: a new executable's table takes a moment to build
        // (the no-blind-spots work), and what is checked here is which table it gets.
        let first = all
            .iter()
            .filter(|x| x.attrs.get("process.pid") == Some(pid))
            .flat_map(|x| x.timestamps.iter().copied())
            .min()
            .unwrap_or(0);
        let mine: Vec<&FlatSample> = all
            .iter()
            .filter(|x| {
                x.attrs.get("process.pid") == Some(pid)
                    && x.timestamps.iter().all(|&t| t >= first + 2_000_000_000)
            })
            .collect();
        assert!(mine.len() >= 100, "pid {pid}: {} samples", mine.len());
        let mut seen = BTreeMap::<String, usize>::new();
        let (mut whole, mut wrong) = (0, 0);
        for smp in &mine {
            let names: Vec<&str> = smp
                .frames
                .iter()
                .flat_map(|f| f.functions.iter().map(String::as_str))
                .collect();
            for n in &names {
                *seen.entry(n.to_string()).or_default() += 1;
            }
            wrong += names.iter().any(|n| n.starts_with(other)) as usize;
            // The whole chain of its own code, down to main.
            whole += (names.contains(&format!("{own}outer").as_str()) && names.contains(&"main"))
                as usize;
        }
        let share = whole as f64 / mine.len() as f64;
        eprintln!(
            "pid {pid} ({own}*): {} samples, {:.1}% reach {own}outer and main, {wrong} with the other's names",
            mine.len(),
            share * 100.0
        );
        assert_eq!(
            wrong, 0,
            "pid {pid} named with the other program's symbols: {seen:?}"
        );
        assert!(
            share >= 0.9,
            "pid {pid}: only {share:.3} of samples whole: {seen:?}"
        );
    }
}
