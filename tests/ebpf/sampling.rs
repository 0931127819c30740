//! What a profile holds: mappings, offsets, build IDs and stacks of a known workload, and its functions' shares once symbolized.

use super::*;

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
