//! Selection rules beyond the cgroup, executable and uid ones of `selection.rs`: pid,
//! process name and build ID, a budget per cgroup, and a process that `exec`s from one
//! executable to another.

use super::selection::{FREQ, Group, config, reload_applied, spawn_in, three_workloads};
use super::*;

/// Samples of process `pid` per executable name, in the profiles written so far.
fn samples_by_name(dir: &Path, pid: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in read_json_lines(&dir.join("profiles.jsonl"))
        .iter()
        .flat_map(flatten)
    {
        if s.attrs.get("process.pid").map(String::as_str) == Some(pid)
            && let Some(name) = s.attrs.get("thread.name")
        {
            *out.entry(name.clone()).or_default() += s.timestamps.len().max(1);
        }
    }
    out
}

/// An exec changes what an executable rule sees of a process whose verdict this CPU
/// has cached: one process on one CPU runs `spin_a` then execs `spin_b` (excluded), and
/// another `spin_b` then `spin_a`. Each image is kept or skipped as its own executable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(any(missing = "root", missing = "gcc"), ignore = "needs root, gcc")]
async fn an_exec_is_judged_as_its_new_executable() {
    if !bpf_available("selection across an exec") {
        return;
    }
    let _serial = SYSTEM_WIDE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (exes, _groups) = three_workloads(dir.path(), "exec");
    let rules = "    selection:\n      exclude: [{ executable: \"**/spin_b\", name: exe }]\n";
    let _s = start_loaded(dir.path(), &config(rules)).await;
    let (a, b) = (exes[0].display().to_string(), exes[1].display().to_string());
    for (first, then, kept) in [(&a, &b, "spin_a"), (&b, &a, "spin_a")] {
        // One CPU, so the second image is sampled where the first one's verdict is cached.
        let (mut kid, pid) =
            spawn_ready(Command::new("taskset").args(["-c", "0", first, "1", then, "1"]));
        assert!(kid.wait().unwrap().success());
        let enough = eventually(Duration::from_secs(10), async || {
            samples_by_name(dir.path(), &pid)
                .get(kept)
                .copied()
                .unwrap_or(0) as f64
                >= 0.9 * FREQ
        })
        .await;
        let by = samples_by_name(dir.path(), &pid);
        eprintln!("{first} then {then} (pid {pid}): samples {by:?}");
        assert!(enough, "spin_a kept {:?} of ~{FREQ}", by.get(kept));
        assert_eq!(by.get("spin_b"), None, "samples of the excluded executable");
    }
}

/// A pid rule (a process started before the agent), a process-name glob and an
/// excluding build ID (spin_c has its own), then a budget shared by a cgroup's two
/// processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(any(missing = "root", missing = "gcc"), ignore = "needs root, gcc")]
async fn pid_name_and_build_id_rules_and_a_budget_per_cgroup() {
    if !bpf_available("selection by pid, name and build ID") {
        return;
    }
    let _serial = SYSTEM_WIDE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (exes, groups) = three_workloads(dir.path(), "rules");
    let own_id = "5e1ec7ab1ec0ffee5e1ec7ab1ec0ffee5e1ec7ab";
    let c = build_c_workload(
        "cpu_shares",
        dir.path(),
        &[&format!("-Wl,--build-id=0x{own_id}")],
    );
    std::fs::copy(&c, &exes[2]).unwrap();
    assert_eq!(build_id(&exes[2]), own_id);

    let (mut kid_a, pid_a) = spawn_in(&groups[0], &exes[0], "3", None);
    let rules = format!(
        "    selection:\n      include: [{{ pid: {pid_a}, name: pid }}, {{ process_name: \"spin_[bc]\", name: name }}]\n      exclude: [{{ build_id: \"{own_id}\", name: build }}]\n"
    );
    let s = start_loaded(dir.path(), &config(&rules)).await;
    let a0 = groups[0].cpu_seconds();
    let before: Vec<f64> = groups.iter().map(Group::cpu_seconds).collect();
    let (mut kid_b, pid_b) = spawn_in(&groups[1], &exes[1], "1", None);
    let (mut kid_c, pid_c) = spawn_in(&groups[2], &exes[2], "1", None);
    for k in [&mut kid_a, &mut kid_b, &mut kid_c] {
        assert!(k.wait().unwrap().success());
    }
    let cpu: Vec<f64> = groups
        .iter()
        .zip(&before)
        .map(|(g, b)| g.cpu_seconds() - b)
        .collect();
    let a_cpu = groups[0].cpu_seconds() - a0;
    let count = |pid: &str| {
        super::selection::samples_by_pid(dir.path())
            .get(pid)
            .copied()
            .unwrap_or(0) as f64
    };
    eventually(Duration::from_secs(10), async || {
        count(&pid_a) >= 0.95 * a_cpu * FREQ && count(&pid_b) >= 0.93 * cpu[1] * FREQ
    })
    .await;
    let (a, b, c) = (count(&pid_a), count(&pid_b), count(&pid_c));
    eprintln!(
        "include by pid and name, exclude by build ID: samples a {a} (~{:.0}), b {b} (~{:.0}), c {c}",
        a_cpu * FREQ,
        cpu[1] * FREQ
    );
    // a's samples from the agent's start (its CPU since then; a few before the
    // program was attached may fall in that span).
    assert!(a >= 0.95 * a_cpu * FREQ - 30.0, "pid rule: a kept {a}");
    // 0.93: on a busy machine b kept 0.96 of its CPU time's samples.
    assert!(b >= 0.93 * cpu[1] * FREQ, "name rule: b kept {b}");
    assert_eq!(c, 0.0, "samples of the excluded build ID");
    let by_build = eventually(Duration::from_secs(5), async || {
        s.metric(
            "stackline_ebpf_selection_samples_total",
            &[("rule", "build"), ("result", "skipped")],
        )
        .await
            >= 0.9 * cpu[2] * FREQ
    })
    .await;
    assert!(by_build, "the build ID rule's skips were not counted");

    // 50 samples/s for the cgroup, shared by its two processes (one per core).
    let budget = "    selection:\n      budget: { samples_per_second: 50, per: cgroup }\n";
    s.reload(&config(budget));
    reload_applied(&s, 1.0).await;
    let started = std::time::Instant::now();
    let (mut k1, p1) = spawn_in(&groups[0], &exes[0], "2", None);
    let (mut k2, p2) = spawn_in(&groups[0], &exes[0], "2", None);
    assert!(k1.wait().unwrap().success() && k2.wait().unwrap().success());
    let wall = started.elapsed().as_secs_f64();
    let target = format!("cgroup{}", groups[0].rule);
    let skipped = async || {
        s.metric(
            "stackline_ebpf_selection_budget_skipped_total",
            &[("target", &target)],
        )
        .await
    };
    eventually(Duration::from_secs(10), async || {
        count(&p1) + count(&p2) + skipped().await >= 0.9 * 4.0 * FREQ
    })
    .await;
    let kept = count(&p1) + count(&p2);
    let skip = skipped().await;
    eprintln!(
        "budget 50/s per cgroup, two processes: kept {kept} over {wall:.2} s ({:.1}/s), skipped {skip} under {target}",
        kept / wall
    );
    // The start-up of each process (before its first sample) is inside `wall`, and the
    // bucket starts with 0.1 s of credit: a wide bound on the rate.
    assert!((kept / wall - 50.0).abs() <= 5.0, "{:.1}/s", kept / wall);
    assert!(skip > 0.0, "no skips counted under {target}");
}

/// A process moved out of an excluded cgroup while it runs is sampled from then on
/// (the verdict this CPU cached for it is dropped when the move happens).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(any(missing = "root", missing = "gcc"), ignore = "needs root, gcc")]
async fn a_process_moved_to_another_cgroup_is_judged_there() {
    if !bpf_available("selection across a cgroup move") {
        return;
    }
    let _serial = SYSTEM_WIDE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (exes, groups) = three_workloads(dir.path(), "move");
    let rules = format!(
        "    selection:\n      exclude: [{{ cgroup: \"{}\" }}]\n",
        groups[0].rule
    );
    let _s = start_loaded(dir.path(), &config(&rules)).await;
    let pinned = format!("taskset -c 0 {}", exes[0].display());
    let (mut kid, pid) = spawn_in(&groups[0], Path::new(&pinned), "2", None);
    let (a0, b0) = (groups[0].cpu_seconds(), groups[1].cpu_seconds());
    let moved = eventually(Duration::from_secs(10), async || {
        groups[0].cpu_seconds() - a0 >= 0.8
    })
    .await;
    assert!(moved, "the workload did not run");
    std::fs::write(groups[1].path.join("cgroup.procs"), &pid).unwrap();
    assert!(kid.wait().unwrap().success());
    let after = groups[1].cpu_seconds() - b0;
    let count = || {
        super::selection::samples_by_pid(dir.path())
            .get(&pid)
            .copied()
            .unwrap_or(0) as f64
    };
    eventually(Duration::from_secs(10), async || {
        count() >= 0.95 * after * FREQ
    })
    .await;
    let kept = count();
    eprintln!(
        "moved after {:.2} s of CPU in the excluded cgroup: kept {kept} of ~{:.0} after the move",
        groups[0].cpu_seconds() - a0,
        after * FREQ
    );
    assert!(after >= 0.5, "only {after:.2} s of CPU after the move");
    assert!(
        kept >= 0.95 * after * FREQ,
        "kept {kept} of ~{:.0}",
        after * FREQ
    );
    assert!(
        kept <= 1.05 * after * FREQ + 10.0,
        "samples from before the move were kept: {kept}"
    );
}

/// Container-id rules, on cgroups laid out as containerd's under systemd (no runtime
/// needed: the id is read from the cgroup path, as on a node): an include by a
/// `containerd://` id prefix keeps its container only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(any(missing = "root", missing = "gcc"), ignore = "needs root, gcc")]
async fn a_container_id_rule_selects_its_container() {
    if !bpf_available("selection by container id") {
        return;
    }
    let _serial = SYSTEM_WIDE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (exes, _groups) = three_workloads(dir.path(), "ctr");
    let v2 = super::selection::v2_mount().unwrap();
    let ids = [
        "a1ec7ed000000000000000000000000000000000000000000000000000000001",
        "b2ec7ed000000000000000000000000000000000000000000000000000000002",
    ];
    let base = format!(
        "stackline-selection-ctr-{}/kubepods.slice",
        std::process::id()
    );
    let ctrs = ids.map(|id| Group::new(&v2, &format!("{base}/cri-containerd-{id}.scope")));
    // The first container by a 14-digit prefix of its id (at least 12 are needed).
    let rules = format!(
        "    selection:\n      include: [{{ container_id: \"containerd://{}\", name: ctr }}]\n",
        &ids[0][..14]
    );
    let _s = start_loaded(dir.path(), &config(&rules)).await;
    let before: Vec<f64> = ctrs.iter().map(Group::cpu_seconds).collect();
    let mut kids: Vec<_> = (0..2)
        .map(|i| spawn_in(&ctrs[i], &exes[i], "1", None))
        .collect();
    for (k, _) in &mut kids {
        assert!(k.wait().unwrap().success());
    }
    let cpu: Vec<f64> = ctrs
        .iter()
        .zip(&before)
        .map(|(g, b)| g.cpu_seconds() - b)
        .collect();
    let count = |pid: &str| {
        super::selection::samples_by_pid(dir.path())
            .get(pid)
            .copied()
            .unwrap_or(0) as f64
    };
    eventually(Duration::from_secs(10), async || {
        count(&kids[0].1) >= 0.95 * cpu[0] * FREQ
    })
    .await;
    let (a, b) = (count(&kids[0].1), count(&kids[1].1));
    eprintln!(
        "include container {}: samples a {a} (~{:.0}), b {b}",
        &ids[0][..12],
        cpu[0] * FREQ
    );
    assert!(
        a >= 0.95 * cpu[0] * FREQ,
        "the container's process kept {a}"
    );
    assert_eq!(b, 0.0, "samples of the other container");
    // `ctrs` are dropped (removed) before their parent, which `Group` also removes.
    drop(ctrs);
    let _ = std::fs::remove_dir(v2.join(&base));
    let _ = std::fs::remove_dir(v2.join(base.trim_end_matches("/kubepods.slice")));
}
