//! The eBPF profiling receiver on this machine's real kernel, through the real binary.
//! Needs root (CI runs as root); skipped loudly otherwise.

use stackline_testkit as common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(any(missing = "root", missing = "gcc"), ignore = "needs root, gcc")]
async fn profiles_a_workload_with_correct_mappings_offsets_build_ids_and_stacks() {
    if !bpf_available("profiles_a_workload") {
        return;
    }
    let _serial = SYSTEM_WIDE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c_workload("cpu_shares", dir.path(), &[]);
    let mut s = start_loaded(dir.path(), &agent_config("")).await;
    let pid = run_workload(&exe, "4");
    assert_eq!(
        s.metric(
            "stackline_ebpf_samples_lost_total",
            &[("reason", "ring_buffer_full")]
        )
        .await,
        0.0
    );
    let (code, body) = s.get("/health").await;
    assert_eq!(code, 200, "{body}");
    // A clean stop reports the last interval: everything the workload produced is written.
    s.sigterm();
    assert!(s.wait(Duration::from_secs(20)).success(), "{}", s.logs());
    let file = dir.path().join("profiles.jsonl");
    let all: Vec<FlatSample> = read_json_lines(&file).iter().flat_map(flatten).collect();
    let of_pid: Vec<&FlatSample> = all
        .iter()
        .filter(|x| x.attrs.get("process.pid") == Some(&pid))
        .collect();
    // Between fork and exec the child still runs the test binary under the test
    // thread's name: a sample may land there, but only a few.
    let (mine, before_exec): (Vec<&FlatSample>, Vec<&FlatSample>) = of_pid
        .iter()
        .partition(|x| x.attrs.get("thread.name").map(String::as_str) == Some("cpu_shares"));
    assert!(
        before_exec.len() <= 5,
        "{} samples before exec",
        before_exec.len()
    );
    // 4 s at 99 Hz on one CPU is ~396 samples; leave room for scheduling.
    assert!(
        mine.len() >= 200,
        "only {} samples of the workload (of {})\n{}",
        mine.len(),
        all.len(),
        s.logs()
    );

    let exe_path = exe.to_str().unwrap();
    let (seg_off, seg_vaddr) = text_segment(&exe);
    let want_id = build_id(&exe);
    let syms = symbols(&exe);
    let func_of = |f: &Frame, leaf: bool| -> Option<String> {
        // Return addresses point after the call: look up the byte before them.
        let addr = if leaf { f.address } else { f.address - 1 };
        let vaddr = addr - f.mapping_start + f.file_offset - seg_off + seg_vaddr;
        syms.iter()
            .find(|(a, b, _)| *a <= vaddr && vaddr < *b)
            .map(|(_, _, n)| n.clone())
    };
    let mut callers: BTreeMap<String, usize> = BTreeMap::new();
    let mut kernel_samples = 0;
    for smp in &mine {
        assert_eq!(smp.attrs["thread.name"], "cpu_shares");
        assert_eq!(smp.attrs["process.executable.name"], "cpu_shares");
        assert_eq!(smp.attrs["process.executable.path"], exe_path);
        assert_eq!(smp.attrs["thread.id"], pid);
        assert_eq!(
            smp.types,
            (
                "samples".into(),
                "count".into(),
                "cpu".into(),
                "nanoseconds".into()
            )
        );
        assert_eq!(smp.period, 1_000_000_000 / 99);
        assert!(!smp.host.is_empty());
        for &t in &smp.timestamps {
            assert!(
                t >= smp.profile_time && t < smp.profile_time + smp.profile_duration,
                "timestamp outside its profile's range"
            );
        }
        for f in &smp.frames {
            assert!(
                f.mapping_start <= f.address && f.address < f.mapping_limit,
                "frame {:#x} outside its mapping {f:?}",
                f.address
            );
            if f.frame_type == "native" && f.filename == exe_path {
                assert_eq!(
                    f.file_offset,
                    seg_off & !0xfff,
                    "file offset of the text mapping"
                );
                assert_eq!(f.build_id.as_deref(), Some(want_id.as_str()));
            }
        }
        let kernel: Vec<&Frame> = smp
            .frames
            .iter()
            .filter(|f| f.frame_type == "kernel")
            .collect();
        let user: Vec<&Frame> = smp
            .frames
            .iter()
            .filter(|f| f.frame_type == "native")
            .collect();
        if !kernel.is_empty() {
            kernel_samples += 1;
            assert!(
                kernel
                    .iter()
                    .all(|f| f.filename == "[kernel.kallsyms]" || !f.filename.is_empty())
            );
            // Kernel frames come first (leaf first), then the user frames.
            assert_eq!(smp.frames[0].frame_type, "kernel");
        }
        let in_exe: Vec<&&Frame> = user.iter().filter(|f| f.filename == exe_path).collect();
        if let Some(leaf) = in_exe.first() {
            let is_leaf = std::ptr::eq(**leaf, *user.first().unwrap());
            let name = func_of(leaf, is_leaf && kernel.is_empty()).unwrap_or_default();
            if name == "spin" {
                if let Some(caller) = in_exe.get(1).and_then(|f| func_of(f, false)) {
                    *callers.entry(caller).or_default() += 1;
                }
            } else if !kernel.is_empty() {
                *callers.entry(format!("kernel<-{name}")).or_default() += 1;
            }
        }
    }
    assert!(
        kernel_samples > 0,
        "no kernel frames in the workload's samples"
    );
    let (a, b) = (
        callers.get("hot_a").copied().unwrap_or(0),
        callers.get("hot_b").copied().unwrap_or(0),
    );
    assert!(a + b >= 150, "spin samples: {callers:?}");
    let share_a = a as f64 / (a + b) as f64;
    // Built to spend 60:30 in hot_a:hot_b, i.e. 2/3 of spin's time.
    assert!(
        (share_a - 2.0 / 3.0).abs() < 0.1,
        "hot_a share of spin {share_a:.3}: {callers:?}"
    );
    assert!(
        callers.get("kernel<-read_zero").copied().unwrap_or(0) > 0,
        "{callers:?}"
    );
    eprintln!(
        "workload samples {}, callers {callers:?}, kernel samples {kernel_samples}",
        mine.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(missing = "root", ignore = "needs root")]
async fn level_2_log_with_a_1_kib_buffer_loads_and_is_written_in_full() {
    if !bpf_available("level_2_log") {
        return;
    }
    let _serial = SYSTEM_WIDE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let vlog = dir.path().join("vlog");
    let cfg = agent_config(&format!(
        "    verifier_log: {{ level: instruction, stats: true, size: 1KiB, output: \"{}\" }}",
        vlog.display()
    ));
    let s = start_loaded(dir.path(), &cfg).await;
    let log = std::fs::read_to_string(vlog.join("stackline_sample.log")).unwrap();
    assert!(log.len() > 1024, "the log outgrew the first buffer");
    assert!(
        log.starts_with("func#0") || log.starts_with("0: "),
        "starts at the beginning: {}",
        &log[..80.min(log.len())]
    );
    assert!(
        log.contains("processed ") && log.contains("verification time"),
        "complete: {}",
        &log[log.len().saturating_sub(300)..]
    );
    assert_eq!(
        s.metric(
            "stackline_ebpf_verifier_log_bytes",
            &[("program", "stackline_sample")]
        )
        .await,
        log.len() as f64
    );
    assert!(
        s.metric("stackline_ebpf_verifier_instructions_processed", &[])
            .await
            > 100.0
    );
    assert_eq!(
        s.metric("stackline_ebpf_verifier_log_truncated_total", &[])
            .await,
        0.0
    );
    assert_eq!(
        s.metric("stackline_ebpf_program_load_failures_total", &[])
            .await,
        0.0
    );
    let health = s.get("/health").await;
    assert_eq!(health.0, 200, "{health:?}\n{}", s.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(missing = "root", ignore = "needs root")]
async fn a_small_max_size_loads_with_a_truncation_warning_and_metric() {
    if !bpf_available("small_max_size") {
        return;
    }
    let _serial = SYSTEM_WIDE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent_config("    verifier_log: { level: 2, size: 1KiB, max_size: 2KiB }");
    let s = Stackline::start(dir.path(), &cfg);
    assert!(
        eventually(Duration::from_secs(60), async || s
            .metric("stackline_ebpf_verifier_log_truncated_total", &[])
            .await
            >= 1.0)
        .await,
        "{}",
        s.logs()
    );
    assert_eq!(
        s.metric(
            "stackline_ebpf_program_loads_total",
            &[("program", "stackline_sample"), ("outcome", "success")]
        )
        .await,
        1.0
    );
    let logs = s.logs();
    assert!(
        logs.contains("the verifier log needed") && logs.contains("verifier_log.max_size"),
        "{logs}"
    );
    assert_eq!(s.get("/health").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(missing = "root", ignore = "needs root")]
async fn a_rejected_program_is_a_metric_an_unhealthy_receiver_and_retried() {
    if !bpf_available("rejected_program") {
        return;
    }
    let _serial = SYSTEM_WIDE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let invalid =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("ebpf/prebuilt/stackline-invalid.bpf.o");
    // With an OTLP receiver beside it, to show the process still serves that one.
    let cfg = agent_config(&format!("    object_path: \"{}\"", invalid.display()))
        .replace(
            "receivers:\n",
            "receivers:\n  otlp: { protocols: { grpc: { endpoint: \"{OTLP}\" } } }\n",
        )
        .replace(
            "receivers: [ebpf_profiler]",
            "receivers: [ebpf_profiler, otlp]",
        );
    let mut s = Stackline::start(dir.path(), &cfg);
    async fn failures(s: &Stackline) -> f64 {
        s.metric(
            "stackline_ebpf_program_load_failures_total",
            &[
                ("program", "stackline_sample"),
                ("errno", "EACCES"),
                ("reason", "verifier_rejected"),
            ],
        )
        .await
    }
    assert!(
        eventually(Duration::from_secs(60), async || failures(&s).await >= 2.0).await,
        "{}",
        s.logs()
    );
    let (code, body) = s.get("/health").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("receiver/ebpf_profiler") && body.contains("map_value_or_null"),
        "{body}"
    );
    let logs = s.logs();
    assert!(
        logs.contains("loading eBPF program `stackline_sample` failed: EACCES (Permission denied)"),
        "{logs}"
    );
    assert!(
        logs.contains("hint: the verifier rejected the program"),
        "{logs}"
    );
    assert!(logs.contains("retrying in"), "{logs}");
    assert_eq!(
        s.metric(
            "stackline_ebpf_program_loads_total",
            &[("outcome", "failure")]
        )
        .await,
        failures(&s).await
    );
    // Still up, still serving the other receiver.
    assert!(s.is_running());
    client(s.endpoint())
        .await
        .export(stackline::otlp::synth::request("svc", 0, 5, 3))
        .await
        .unwrap();
    s.sigterm();
    assert!(s.wait(Duration::from_secs(20)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(missing = "root", ignore = "needs root")]
async fn without_capabilities_it_says_so_and_stays_up() {
    if !bpf_available("without_capabilities") {
        return;
    }
    let _serial = SYSTEM_WIDE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // Drop every capability (bounding, inheritable and ambient sets) before exec.
    let wrapper = dir.path().join("nocaps.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv --inh-caps=-all --ambient-caps=-all --bounding-set=-all {} \"$@\"\n",
            env!("CARGO_BIN_EXE_stackline")
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut s = Stackline::start_with(&wrapper, dir.path(), &agent_config(""));
    assert!(
        eventually(Duration::from_secs(60), async || s
            .logs()
            .contains("needs root, or CAP_BPF and CAP_PERFMON"))
        .await,
        "{}",
        s.logs()
    );
    let logs = s.logs();
    assert!(logs.contains("this process has none of them"), "{logs}");
    assert!(!logs.contains("panicked"), "{logs}");
    let (code, body) = s.get("/health").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        s.metric(
            "stackline_ebpf_program_load_failures_total",
            &[("reason", "missing_capabilities")]
        )
        .await
            >= 1.0
    );
    assert!(s.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(any(missing = "root", missing = "gcc"), ignore = "needs root, gcc")]
async fn symbolized_profiles_name_the_workload_functions_with_their_shares() {
    if !bpf_available("symbolized_profiles") {
        return;
    }
    let _serial = SYSTEM_WIDE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c_workload("cpu_shares", dir.path(), &[]);
    let cfg = symbolized_agent_config();
    let mut s = start_loaded(dir.path(), &cfg).await;
    let pid = run_workload(&exe, "5");
    assert!(
        eventually(Duration::from_secs(60), async || s
            .metric(
                "stackline_symbolizer_frames_total",
                &[("result", "resolved")]
            )
            .await
            > 0.0)
        .await
    );
    // A clean stop drains the last interval through the symbolizer and the batch.
    s.sigterm();
    assert!(s.wait(Duration::from_secs(20)).success(), "{}", s.logs());
    let all: Vec<FlatSample> = read_json_lines(&dir.path().join("profiles.jsonl"))
        .iter()
        .flat_map(flatten)
        .collect();
    let mine: Vec<&FlatSample> = all
        .iter()
        .filter(|x| x.attrs.get("process.pid") == Some(&pid))
        .collect();
    assert!(mine.len() >= 250, "{} samples\n{}", mine.len(), s.logs());
    // Inclusive share of each function: samples with it anywhere in the stack.
    let share = |name: &str| {
        mine.iter()
            .filter(|x| {
                x.frames
                    .iter()
                    .any(|f| f.functions.iter().any(|n| n == name))
            })
            .count() as f64
            / mine.len() as f64
    };
    let (a, b, r) = (share("hot_a"), share("hot_b"), share("read_zero"));
    eprintln!(
        "shares: hot_a {a:.3} hot_b {b:.3} read_zero {r:.3} of {} samples",
        mine.len()
    );
    // Built to spend 60%, 30% and 10% of its CPU time there.
    assert!((a - 0.60).abs() < 0.05, "hot_a {a:.3}");
    assert!((b - 0.30).abs() < 0.05, "hot_b {b:.3}");
    assert!((r - 0.10).abs() < 0.05, "read_zero {r:.3}");
    assert!(share("main") > 0.9, "main {:.3}", share("main"));
    // Kernel frames under read_zero are named too.
    let kernel_named = mine
        .iter()
        .flat_map(|x| &x.frames)
        .filter(|f| f.frame_type == "kernel")
        .filter(|f| !f.functions.is_empty())
        .count();
    assert!(kernel_named > 0, "no kernel frame was symbolized");
}

/// `go tool pprof` with a temporary home for what it saves.
fn go_pprof(args: &[&str], tmp: &Path) -> Option<String> {
    let t0 = std::time::Instant::now();
    // Names come from the profiles. Without this pprof would symbolize the agent's own
    // frames (left unnamed, `symbolize_self: false`) from this 200+ MB debug binary,
    // minutes of CPU.
    let own = if args.iter().any(|a| a.starts_with("-symbolize")) {
        None
    } else {
        Some("-symbolize=none")
    };
    let o = Command::new("go")
        .args(["tool", "pprof"])
        .args(own)
        .args(args)
        .env("PPROF_TMPDIR", tmp)
        .env("HOME", tmp)
        .output()
        .ok()?;
    assert!(
        o.status.success(),
        "go tool pprof {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!(
        "go tool pprof {} ... took {:?}",
        args.first().unwrap_or(&""),
        t0.elapsed()
    );
    Some(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The cum% of `func` in `go tool pprof -top -cum` output.
fn cum_share(top: &str, func: &str) -> f64 {
    top.lines()
        .find(|l| l.split_whitespace().last() == Some(func))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|p| p.trim_end_matches('%').parse::<f64>().ok())
        .map_or(0.0, |p| p / 100.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    any(missing = "root", missing = "gcc", missing = "go"),
    ignore = "needs root, gcc, go (Debian golang-go)"
)]
async fn go_tool_pprof_and_flamegraphs_show_the_workload_with_its_shares() {
    if !bpf_available("go_tool_pprof") {
        return;
    }
    let _serial = SYSTEM_WIDE.lock().await;
    if Command::new("go").arg("version").output().is_err() {
        stackline::testing::skip(
            "go_tool_pprof",
            "`go` is not installed (apt-get install golang-go; .ci/run installs it)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c_workload("cpu_shares", dir.path(), &[]);
    let cfg = agent_config("")
        .replace(
            "exporters:\n  file:",
            "processors:\n  symbolizer: {}\n  batch: { timeout: 200ms }\nexporters:\n  pprof: { directory: \"{DIR}/pprof\", endpoint: \"127.0.0.1:0\", max_files: 0 }\n  pprof/split: { directory: \"{DIR}/split\", split_by: process, max_files: 0 }\n  pprof/raw: { directory: \"\", endpoint: \"127.0.0.1:0\" }\n  flamegraph: { directory: \"{DIR}/fg\", folded: true, per_process: true, max_files: 0 }\n  file:",
        )
        .replace(
            "exporters: [file] }",
            "processors: [symbolizer, batch], exporters: [file, pprof, pprof/split, flamegraph] }, profiles/raw: { receivers: [ebpf_profiler], exporters: [pprof/raw] }",
        );
    let mut s = start_loaded(dir.path(), &cfg).await;
    let pull_port = s.listener("exporters.pprof.endpoint").port();
    let raw_port = s.listener("exporters.pprof/raw.endpoint").port();
    let mut workload = Command::new(&exe)
        .arg("6")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The pull endpoint, while the workload runs.
    let tmp = dir.path().join("gotmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let pull = |port: u16, symbolize: &'static [&'static str]| {
        let (url, tmp) = (
            format!("http://127.0.0.1:{port}/debug/pprof/profile"),
            tmp.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let mut args = vec!["-top", "-seconds", "5"];
            args.extend(symbolize);
            args.push(&url);
            go_pprof(&args, &tmp)
        })
    };
    // From the symbolized pipeline and from a raw one (unsymbolized mappings). For the
    // raw one pprof asks the endpoint for symbols: its default would read every
    // mapped binary's DWARF itself, minutes of CPU for this 200 MB debug test binary
    // that the agent samples along with everything else.
    let (live, raw) = (pull(pull_port, &[]), pull(raw_port, &["-symbolize=remote"]));
    let live = live.await.unwrap().unwrap();
    assert!(
        live.contains("spin") && live.contains("Type: samples"),
        "{live}"
    );
    let raw = raw.await.unwrap().unwrap();
    assert!(
        raw.contains("Type: samples") && raw.contains("Total samples"),
        "{raw}"
    );
    // go tool pprof posts here for mappings it cannot symbolize locally, and a 404
    // makes it fail (seen when a mapped file was not on this host): the endpoint must
    // answer that it has no symbols.
    let symbol = format!("http://127.0.0.1:{raw_port}/debug/pprof/symbol");
    let r = reqwest::get(&symbol).await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (200, "num_symbols: 0\n".to_owned())
    );
    let r = reqwest::Client::new()
        .post(&symbol)
        .body("0x401000+0x401010")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let out = {
        let o = workload.wait().unwrap();
        assert!(o.success());
        let mut buf = String::new();
        std::io::Read::read_to_string(workload.stdout.as_mut().unwrap(), &mut buf).unwrap();
        buf
    };
    let pid = out.trim().strip_prefix("ready ").unwrap().to_owned();
    // A clean stop writes the last interval everywhere. Retention is off in this test:
    // with one file per process per second, `max_files` would delete the workload's
    // files while a slow `go tool pprof` runs.
    s.sigterm();
    assert!(s.wait(Duration::from_secs(30)).success(), "{}", s.logs());

    // The workload's own files (split by process): its functions with their shares.
    let mine: Vec<String> = std::fs::read_dir(dir.path().join("split"))
        .unwrap()
        .flatten()
        .map(|e| e.path().to_string_lossy().into_owned())
        .filter(|p| p.contains(&format!("-pid{pid}-cpu_shares")))
        .collect();
    assert!(mine.len() >= 3, "{mine:?}");
    let mut args = vec!["-top", "-cum", "-nodecount=40"];
    args.extend(mine.iter().map(String::as_str));
    let top = go_pprof(&args, &tmp).unwrap();
    let (a, b, r) = (
        cum_share(&top, "hot_a"),
        cum_share(&top, "hot_b"),
        cum_share(&top, "read_zero"),
    );
    eprintln!("go tool pprof -top -cum: hot_a {a:.3} hot_b {b:.3} read_zero {r:.3}");
    assert!(
        (a - 0.60).abs() < 0.05 && (b - 0.30).abs() < 0.05 && (r - 0.10).abs() < 0.05,
        "{top}"
    );
    let mut args = vec!["-traces"];
    args.extend(mine.iter().map(String::as_str));
    let traces = go_pprof(&args, &tmp).unwrap();
    assert!(
        traces.contains("spin") && traces.contains("hot_a") && traces.contains("main"),
        "{traces}"
    );
    // The merged files hold every process, with pid labels.
    let merged: Vec<String> = std::fs::read_dir(dir.path().join("pprof"))
        .unwrap()
        .flatten()
        .map(|e| e.path().to_string_lossy().into_owned())
        .collect();
    let tf = format!("pid={pid}");
    let mut args = vec!["-top", "-tagfocus", tf.as_str()];
    args.extend(merged.iter().map(String::as_str));
    let focused = go_pprof(&args, &tmp).unwrap();
    assert!(focused.contains("spin"), "{focused}");

    // Flamegraphs: well-formed SVG naming the workload's functions; folded totals add up.
    let fg: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path().join("fg"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let svgs: Vec<&std::path::PathBuf> = fg
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "svg"))
        .collect();
    let mut named = false;
    for svg in &svgs {
        let text = std::fs::read_to_string(svg).unwrap();
        let opts = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        if let Err(e) = roxmltree::Document::parse_with_options(&text, opts) {
            panic!("{}: {e}", svg.display());
        }
        named |= text.contains("hot_a") && text.contains(&format!("cpu_shares [{pid}]"));
    }
    assert!(
        named,
        "no flamegraph shows the workload's tower and functions"
    );
    // After the drain, both the flamegraphs and the file hold the last batch.
    let fg: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path().join("fg"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let folded_total: i64 = fg
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "folded"))
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<i64>().unwrap())
        .sum();
    // Folded counts are weights (summed values), so compare with the exported weight.
    let exported: i64 = read_json_lines(&dir.path().join("profiles.jsonl"))
        .iter()
        .flat_map(|r| {
            stackline::otlp::view::profiles(r)
                .flat_map(|p| &p.samples)
                .map(stackline::otlp::view::weight)
                .collect::<Vec<_>>()
        })
        .sum();
    assert_eq!(
        folded_total, exported,
        "folded lines sum to the exported sample weight"
    );
}

/// Programs and maps of the profiler loaded in the kernel right now.
/// The profiler's programs loaded now, and the maps they use, as "prog ID NAME" and
/// "map ID NAME"; `except` leaves out programs by id (those of earlier tests).
///
/// Opens the maps by id, so call it only while their agent runs: polling a dying agent's
/// program array this way can leak it in the kernel (see `sys::map_name`).
fn profiler_objects(except: &[u32]) -> Vec<String> {
    use stackline::receivers::ebpf_profiler::bpf::sys::{loaded_programs, map_name};
    let progs: Vec<_> = loaded_programs()
        .unwrap()
        .into_iter()
        .filter(|p| p.name.starts_with("stackline_") && !except.contains(&p.id))
        .collect();
    let mut maps: Vec<u32> = progs.iter().flat_map(|p| p.map_ids.clone()).collect();
    maps.sort_unstable();
    maps.dedup();
    progs
        .iter()
        .map(|p| format!("prog {} {}", p.id, p.name))
        .chain(maps.into_iter().filter_map(|id| {
            let name = map_name(id)?;
            Some(format!("map {id} {name}"))
        }))
        .collect()
}

/// Which of `objects` (as [`profiler_objects`] names them) the kernel still has, by id
/// alone: opens nothing.
fn still_loaded(objects: &[String]) -> Vec<String> {
    use stackline::receivers::ebpf_profiler::bpf::sys::loaded_ids;
    let (progs, maps) = (loaded_ids(true).unwrap(), loaded_ids(false).unwrap());
    objects
        .iter()
        .filter(|o| {
            let mut w = o.split(' ');
            let kind = w.next().unwrap_or_default();
            let id: u32 = w.next().and_then(|i| i.parse().ok()).unwrap_or(0);
            if kind == "prog" {
                progs.contains(&id)
            } else {
                maps.contains(&id)
            }
        })
        .cloned()
        .collect()
}

/// Processes holding a file descriptor on any of `objects` ("prog ID NAME" / "map ID NAME"),
/// from /proc/PID/fdinfo: says who keeps a leftover object alive.
fn bpf_fd_holders(objects: &[String]) -> Vec<String> {
    let wanted: Vec<String> = objects
        .iter()
        .filter_map(|o| {
            let mut w = o.split(' ');
            let kind = w.next()?;
            let id = w.next()?;
            Some(format!("{kind}_id:\t{id}\n"))
        })
        .collect();
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let fds = p.path().join("fdinfo");
        for fd in std::fs::read_dir(&fds).into_iter().flatten().flatten() {
            let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
            if wanted.iter().any(|w| info.contains(w.as_str())) {
                let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                out.push(format!(
                    "{} ({}) fd {:?}",
                    p.file_name().to_string_lossy(),
                    comm.trim(),
                    fd.file_name()
                ));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(any(missing = "root", missing = "gcc"), ignore = "needs root, gcc")]
async fn after_sigkill_nothing_stays_in_the_kernel_and_a_restart_profiles_again() {
    if !bpf_available("after_sigkill") {
        return;
    }
    let _serial = SYSTEM_WIDE.lock().await;
    let before: Vec<u32> = stackline::receivers::ebpf_profiler::bpf::sys::loaded_ids(true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c_workload("cpu_shares", dir.path(), &[]);
    let mut s = start_loaded(dir.path(), &agent_config("")).await;
    // Kernel object ids are not reused soon, so "ours" are the new programs and their maps
    // (objects of an earlier test may still be on their way out when this one starts).
    let ours = profiler_objects(&before);
    assert!(
        ours.iter().any(|o| o.starts_with("prog ")) && ours.iter().any(|o| o.ends_with(" SAMPLES")),
        "the programs and maps are loaded: {ours:?}"
    );
    // A workload running across the kill and the restart.
    let mut workload = Command::new(&exe)
        .arg("10")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    s.sigkill();
    // The kernel frees everything with the process's file descriptors; nothing is pinned.
    let left = || still_loaded(&ours);
    // The kernel frees a program array only after its last user reference is gone, then the
    // programs after an RCU grace period and a work item, then the maps they used: on a busy
    // machine that chain has taken over 10 s. A leak is what outlives a minute.
    let t0 = std::time::Instant::now();
    let freed = eventually(Duration::from_secs(60), async || left().is_empty()).await;
    let still = left();
    assert!(
        freed,
        "left in the kernel after 60 s: {still:?}; held by: {:?}",
        bpf_fd_holders(&still)
    );
    eprintln!(
        "the kernel freed the profiler's objects {:?} after the kill",
        t0.elapsed()
    );
    let pinned: Vec<_> = std::fs::read_dir("/sys/fs/bpf")
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !pinned
            .iter()
            .any(|n| n.to_string_lossy().contains("stackline")),
        "{pinned:?}"
    );
    // At most one report interval (1s here) was lost: the file reaches close to the kill.
    let file = dir.path().join("profiles.jsonl");
    let last = read_json_lines(&file)
        .iter()
        .flat_map(flatten)
        .flat_map(|x| x.timestamps)
        .max()
        .unwrap_or(0);
    let lost_ms = killed_at.saturating_sub(last) / 1_000_000;
    eprintln!("samples lost by SIGKILL: the last {lost_ms} ms before the kill");
    assert!(lost_ms <= 1_500, "{lost_ms} ms of samples lost");

    // A restart needs no cleanup and profiles again.
    std::fs::remove_file(&file).unwrap();
    let mut s = start_loaded(dir.path(), &agent_config("")).await;
    let pid = workload.id().to_string();
    let again = eventually(Duration::from_secs(60), async || {
        read_json_lines(&file)
            .iter()
            .flat_map(flatten)
            .any(|x| x.attrs.get("process.pid") == Some(&pid))
    })
    .await;
    assert!(
        again,
        "no samples of the workload after the restart\n{}",
        s.logs()
    );
    assert!(workload.wait().unwrap().success());
    s.sigterm();
    assert!(s.wait(Duration::from_secs(20)).success());
}

/// A cgroup the test made, in a v1 hierarchy or in v2; removed (deepest first) when dropped.
struct TestCgroup {
    dirs: Vec<std::path::PathBuf>,
}

impl TestCgroup {
    /// Creates `rel` under the mount point `root`, one directory at a time.
    fn create(root: &Path, rel: &str) -> TestCgroup {
        let mut dirs = Vec::new();
        let mut p = root.to_path_buf();
        for part in rel.split('/') {
            p.push(part);
            if !p.exists() {
                std::fs::create_dir(&p).unwrap();
                dirs.push(p.clone());
            }
        }
        TestCgroup { dirs }
    }

    fn leaf(&self) -> &Path {
        self.dirs.last().unwrap()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The mount points of a cgroup v2 tree and of a v1 hierarchy, if this machine has them.
fn cgroup_mounts() -> (Option<std::path::PathBuf>, Option<std::path::PathBuf>) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let (mut v2, mut v1) = (None, None);
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        match f[2] {
            "cgroup2" if v2.is_none() => v2 = Some(std::path::PathBuf::from(f[1])),
            "cgroup" if v1.is_none() && f[3].split(',').any(|o| o == "pids" || o == "cpu") => {
                v1 = Some(std::path::PathBuf::from(f[1]))
            }
            _ => {}
        }
    }
    (v2, v1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(any(missing = "root", missing = "gcc"), ignore = "needs root, gcc")]
async fn processes_in_container_cgroups_carry_their_container_id_and_pod_uid() {
    if !bpf_available("container attribution") {
        return;
    }
    let (v2, v1) = cgroup_mounts();
    let _serial = SYSTEM_WIDE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c_workload("cpu_shares", dir.path(), &[]);
    // Containers as the kubelet and runtimes lay them out: containerd with the systemd
    // driver in v2, CRI-O with the cgroupfs driver in a v1 hierarchy.
    let cases: Vec<(std::path::PathBuf, String, &str, &str)> = [
        (
            v2,
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice/cri-containerd-3f1ac2d0e8b34a7c9a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef.scope",
            "3f1ac2d0e8b34a7c9a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef",
            "0a1b2c3d-4e5f-6789-abcd-ef0123456789",
        ),
        (
            v1,
            "kubepods/besteffort/pod11111111-2222-3333-4444-555555555555/crio-4f1ac2d0e8b34a7c9a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef",
            "4f1ac2d0e8b34a7c9a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef",
            "11111111-2222-3333-4444-555555555555",
        ),
    ]
    .into_iter()
    .filter_map(|(root, rel, id, uid)| Some((root?, rel.to_owned(), id, uid)))
    .collect();
    if cases.is_empty() {
        stackline::testing::skip("container attribution", "no cgroup hierarchy is mounted");
        return;
    }
    let mut s = start_loaded(dir.path(), &agent_config("")).await;
    let mut pids = Vec::new();
    for (root, rel, id, uid) in &cases {
        let cg = TestCgroup::create(root, rel);
        // The shell joins the cgroup, then becomes the workload: every sample is inside.
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec {} 2",
                cg.leaf().display(),
                exe.display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = String::from_utf8_lossy(&out.stdout)
            .trim()
            .strip_prefix("ready ")
            .unwrap()
            .to_owned();
        pids.push((pid, *id, *uid, root.clone()));
        drop(cg);
    }
    s.sigterm();
    assert!(s.wait(Duration::from_secs(20)).success(), "{}", s.logs());
    let all: Vec<FlatSample> = read_json_lines(&dir.path().join("profiles.jsonl"))
        .iter()
        .flat_map(flatten)
        .collect();
    for (pid, id, uid, root) in &pids {
        // Only after exec: the shell may be sampled before it joined the cgroup.
        let mine: Vec<&FlatSample> = all
            .iter()
            .filter(|x| x.attrs.get("process.pid") == Some(pid))
            .filter(|x| {
                x.attrs
                    .get("thread.name")
                    .is_some_and(|n| n == "cpu_shares")
            })
            .collect();
        assert!(
            mine.len() >= 50,
            "{} samples of {pid} in {}",
            mine.len(),
            root.display()
        );
        for smp in mine {
            assert_eq!(
                smp.attrs.get("container.id").map(String::as_str),
                Some(*id),
                "in {}: {:?}",
                root.display(),
                smp.attrs
            );
            assert_eq!(
                smp.attrs.get("k8s.pod.uid").map(String::as_str),
                Some(*uid),
                "in {}",
                root.display()
            );
        }
    }
    // Processes outside any container carry neither.
    let outside: Vec<&FlatSample> = all
        .iter()
        .filter(|x| {
            !pids
                .iter()
                .any(|(p, ..)| x.attrs.get("process.pid") == Some(p))
        })
        .filter(|x| {
            x.attrs
                .get("process.executable.name")
                .is_some_and(|n| n == "stackline")
        })
        .collect();
    for smp in outside {
        assert!(!smp.attrs.contains_key("container.id"));
    }
}

/// Starts `main` on the library at `lib` for `secs` seconds; returns it once it has
/// loaded the library, with its pid.
fn spin_in_lib(main: &Path, lib: &Path, secs: &str) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut c = Command::new(main)
        .arg(lib)
        .arg(secs)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid = line
        .trim()
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("the workload did not start: {line:?}"))
        .to_owned();
    (c, pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(any(missing = "root", missing = "gcc"), ignore = "needs root, gcc")]
async fn a_fifo_a_symlink_and_a_truncated_file_in_mappings_neither_hang_nor_kill_the_agent() {
    if !bpf_available("hostile_mappings") {
        return;
    }
    let _serial = SYSTEM_WIDE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads");
    let main = dir.path().join("hostile_main");
    let st = Command::new("gcc")
        .args([
            "-O1",
            "-g",
            "-fno-omit-frame-pointer",
            "-Wl,--build-id",
            "-o",
        ])
        .arg(&main)
        .arg(src.join("hostile_main.c"))
        .arg("-ldl")
        .status()
        .unwrap();
    assert!(st.success());
    // Each case gets its own copy of the library, owned by an unprivileged user who could
    // shrink it under a memory mapping: the agent must copy it before mapping it.
    let lib = |name: &str| -> std::path::PathBuf {
        let p = dir.path().join(name);
        let st = Command::new("gcc")
            .args(["-O1", "-g", "-fno-omit-frame-pointer", "-fPIC", "-shared"])
            .args(["-Wl,--build-id", "-o"])
            .arg(&p)
            .arg(src.join("hostile_lib.c"))
            .status()
            .unwrap();
        assert!(st.success());
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        p
    };
    let cfg = symbolized_agent_config();
    let mut s = start_loaded(dir.path(), &cfg).await;
    let profiles = dir.path().join("profiles.jsonl");
    let named_in = |pid: &str| {
        read_json_lines(&profiles)
            .iter()
            .flat_map(flatten)
            .filter(|x| x.attrs.get("process.pid").map(String::as_str) == Some(pid))
            .any(|x| {
                x.frames
                    .iter()
                    .any(|f| f.functions.iter().any(|n| n == "lib_spin"))
            })
    };

    // 1. The library's path becomes a FIFO while it is mapped (and before the agent first
    //    looks, so its host path is a FIFO when it does).
    let fifo = lib("libfifo.so");
    let (mut a, pid_a) = spin_in_lib(&main, &fifo, "4");
    std::fs::remove_file(&fifo).unwrap();
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path only.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    // 2. The path becomes a symlink to a host file.
    let link = lib("liblink.so");
    let (mut b, pid_b) = spin_in_lib(&main, &link, "4");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
    // Both are still symbolized, from the mapped files themselves.
    for (pid, what) in [(&pid_a, "fifo"), (&pid_b, "symlink")] {
        assert!(
            eventually(Duration::from_secs(60), async || named_in(pid)).await,
            "{what}: lib_spin was not named\n{}",
            s.logs()
        );
    }
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    assert!(
        s.metric("stackline_symbolizer_copied_bytes_total", &[])
            .await
            > 0.0,
        "the unprivileged user's library was mapped without a copy"
    );

    // 3. The library is truncated by its owner after the agent has read it: the workload
    //    dies of SIGBUS, the agent must not.
    let trunc = lib("libtrunc.so");
    let (mut t, pid_t) = spin_in_lib(&main, &trunc, "30");
    assert!(eventually(Duration::from_secs(60), async || named_in(&pid_t)).await);
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&trunc)
        .unwrap();
    let st = t.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    eprintln!("the workload on the truncated library ended: {st:?}");
    assert_eq!(st.signal(), Some(libc::SIGBUS), "{st:?}");

    // The agent is up, panicked nowhere, and still profiles and names a new workload.
    let exe = build_c_workload("cpu_shares", dir.path(), &[]);
    let pid = run_workload(&exe, "3");
    let named = eventually(Duration::from_secs(60), async || {
        read_json_lines(&profiles)
            .iter()
            .flat_map(flatten)
            .filter(|x| x.attrs.get("process.pid") == Some(&pid))
            .any(|x| {
                x.frames
                    .iter()
                    .any(|f| f.functions.iter().any(|n| n == "hot_a"))
            })
    })
    .await;
    assert!(
        named,
        "no named samples after the hostile cases\n{}",
        s.logs()
    );
    assert!(s.is_running());
    assert_eq!(s.get("/health").await.0, 200);
    assert_eq!(
        s.metric("stackline_component_panics_total", &[]).await,
        0.0,
        "{}",
        s.logs()
    );
    let peak = s.peak_rss_mib();
    eprintln!("agent peak RSS: {peak} MiB");
    // The agent's own binary (debug build) is most of it; copies are bounded by size.
    assert!(peak < 1024, "peak RSS {peak} MiB");
    s.sigterm();
    assert!(s.wait(Duration::from_secs(20)).success());
}
