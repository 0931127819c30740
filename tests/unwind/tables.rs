//! Stacks of programs built without frame pointers reach main, with their shares, in the native modes.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    any(missing = "root", missing = "gcc", missing = "clang"),
    ignore = "needs root, gcc, clang"
)]
async fn stacks_without_frame_pointers_reach_main_with_their_shares() {
    if !bpf_available("native unwinding") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let t = "native unwinding";
    let mut cases = Vec::new();
    let nofp = ["-O2", "-fomit-frame-pointer"];
    let build = |sub: &str, cc: &str, extra: &[&str]| {
        let d = dir.path().join(sub);
        std::fs::create_dir_all(&d).unwrap();
        let mut flags = nofp.to_vec();
        flags.extend_from_slice(extra);
        stackline::testing::build_unwind_workload(t, &d, cc, &flags)
    };
    let (Some(gcc), Some(clang_pie), Some(clang_nopie), Some(rust)) = (
        build("gcc", "gcc", &[]),
        build("clang-pie", "clang", &["-fPIE", "-pie"]),
        build("clang-nopie", "clang", &["-fno-PIE", "-no-pie"]),
        rustc_workload(dir.path()),
    ) else {
        return;
    };
    let case = |name, exe: &PathBuf, args: Vec<&'static str>, root, shares| Case {
        name,
        exe: exe.clone(),
        args,
        root,
        shares,
    };
    cases.push(case(
        "gcc -O2 -fomit-frame-pointer",
        &gcc,
        vec!["shares", "3"],
        "main",
        true,
    ));
    cases.push(case(
        "clang -O2 PIE",
        &clang_pie,
        vec!["shares", "3"],
        "main",
        true,
    ));
    cases.push(case(
        "clang -O2 non-PIE",
        &clang_nopie,
        vec!["shares", "3"],
        "main",
        true,
    ));
    cases.push(case(
        "shared library through the PLT",
        &gcc,
        vec!["lib", "3"],
        "main",
        true,
    ));
    cases.push(case(
        "40 KB stack frame",
        &gcc,
        vec!["bigframe", "3"],
        "main",
        true,
    ));
    cases.push(case(
        "threads",
        &gcc,
        vec!["threads", "3"],
        "thread_main",
        true,
    ));
    cases.push(case("Rust release binary", &rust, vec!["3"], "main", true));
    cases.push(case(
        "library opened by dlopen after start",
        &gcc,
        vec!["dlopen", "3"],
        "main",
        true,
    ));
    cases.push(case(
        "150-deep recursion",
        &gcc,
        vec!["recurse", "2"],
        "recurse",
        false,
    ));

    // A process started before the agent.
    let (mut before, before_pid) = spawn_ready(Command::new(&gcc).args(["shares", "12"]));

    let mut s = Stackline::start(dir.path(), &agent_config());
    wait_unwinder_loaded(&s).await;
    // Warm-up: the tables of what runs now (libc, the loader, this test's own binary)
    // are built once; the cases below measure a warm agent.
    let built = eventually(Duration::from_secs(20), async || {
        s.metric("stackline_ebpf_unwind_tables", &[]).await >= 3.0
            && s.metric("stackline_ebpf_unwind_tables_pending", &[]).await == 0.0
    })
    .await;
    assert!(built, "tables were not built:\n{}", s.logs());
    let warm = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(
        tokio::task::block_in_place(|| before.wait())
            .unwrap()
            .success()
    );
    let mut pids = Vec::new();
    for c in &cases {
        let pid = tokio::task::block_in_place(|| run(c));
        pids.push(pid);
    }
    // A clean stop reports and symbolizes the last interval.
    s.sigterm();
    assert!(s.wait(Duration::from_secs(30)).success(), "{}", s.logs());
    let all: Vec<FlatSample> = read_json_lines(&dir.path().join("profiles.jsonl"))
        .iter()
        .flat_map(flatten)
        .collect();

    let mut failures = Vec::new();
    // The process that was running before the agent started: its samples once the
    // agent was warm.
    let later: Vec<FlatSample> = all
        .iter()
        .filter(|x| x.timestamps.iter().all(|&t| t >= warm))
        .cloned()
        .collect();
    let seen = analyze(&later, &before_pid, "main");
    let reach = seen.reached as f64 / seen.samples.max(1) as f64;
    eprintln!(
        "{:<40} {:>4} samples, {:>5.1}% reach main, stops {:?}",
        "started before the agent",
        seen.samples,
        reach * 100.0,
        seen.stops
    );
    if seen.samples < 100 || reach < 0.95 {
        failures.push(format!(
            "started before the agent: {} samples, {:.1}% reach main",
            seen.samples,
            reach * 100.0
        ));
    }
    for (c, pid) in cases.iter().zip(&pids) {
        let seen = analyze(&all, pid, c.root);
        let reach = seen.reached as f64 / seen.samples.max(1) as f64;
        eprintln!(
            "{:<40} {:>4} samples, {:>5.1}% reach {}, shares {:.3}/{:.3}/{:.3}, in-kernel samples reaching it {}/{}, frame-pointer frames {}, stops {:?}, bottoms {:?}",
            c.name,
            seen.samples,
            reach * 100.0,
            c.root,
            seen.shares.0,
            seen.shares.1,
            seen.shares.2,
            seen.kernel_reached.1,
            seen.kernel_reached.0,
            seen.fp_frames,
            seen.stops,
            seen.bottoms
        );
        if std::env::var("UNWIND_DEBUG").is_ok() {
            for x in all
                .iter()
                .filter(|x| x.attrs.get("process.pid") == Some(pid))
                .filter(|x| {
                    x.attrs.get("stackline.unwind.stop").map(String::as_str) != Some("no_mapping")
                })
                .take(2)
            {
                let fr: Vec<String> = x
                    .frames
                    .iter()
                    .map(|f| format!("{:#x}:{}@{}", f.address, f.functions.join("/"), f.filename))
                    .collect();
                eprintln!(
                    "   {:?} {}",
                    x.attrs.get("stackline.unwind.stop"),
                    fr.join(" <- ")
                );
            }
        }
        let before = failures.len();
        let ok = check_case(c, &seen, 0.95, &mut failures);
        if failures.len() > before {
            failures.push(stopped_early(&all, pid, c.root));
        }
        if !ok {
            continue;
        }
        match c.name {
            "threads" => {
                // Every thread's stack ends where the thread began, at clone3, not in garbage.
                let clone3 = seen
                    .bottoms
                    .iter()
                    .filter(|(f, _)| f.contains("clone3"))
                    .map(|(_, n)| n)
                    .sum::<usize>();
                if (clone3 as f64) < 0.95 * seen.samples as f64 {
                    // Show a few of the others whole: where they stop says why.
                    let others: Vec<String> = all
                        .iter()
                        .filter(|x| x.attrs.get("process.pid") == Some(pid))
                        .filter(|x| {
                            !x.frames
                                .last()
                                .is_some_and(|f| names(f).any(|n| n.contains("clone3")))
                        })
                        .take(4)
                        .map(describe)
                        .collect();
                    failures.push(format!(
                        "threads: stacks end at {:?}, not clone3; for example:\n{}",
                        seen.bottoms,
                        others.join("\n")
                    ));
                }
            }
            "150-deep recursion" => {
                // Deeper than max_frames: reported truncated, and every frame is right.
                let truncated = seen.stops.get("truncated").copied().unwrap_or(0);
                if (truncated as f64) < 0.95 * seen.samples as f64 {
                    failures.push(format!("recursion: stops {:?}", seen.stops));
                }
                let truncated = all
                    .iter()
                    .filter(|x| x.attrs.get("process.pid") == Some(pid))
                    .filter(|x| {
                        x.attrs.get("stackline.unwind.stop").map(String::as_str)
                            == Some("truncated")
                    });
                check_recursion(truncated, &mut failures);
            }
            _ => {}
        }
        if c.name.starts_with("gcc") && seen.kernel_reached.0 < 10 {
            failures.push(format!(
                "{}: only {} samples were taken in the kernel",
                c.name, seen.kernel_reached.0
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
