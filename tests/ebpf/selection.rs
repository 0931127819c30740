//! Choosing what to profile: rules by cgroup, executable and uid on real cgroups, a
//! budget, probabilistic profiling and a live reload, each checked against the
//! workloads' own CPU time (their cgroups' `cpu.stat`).

use super::*;
use std::path::PathBuf;
use std::process::Child;

/// A cgroup v2 directory the test made, removed when dropped.
pub(super) struct Group {
    pub(super) path: PathBuf,
    /// Its path as a rule names it (from the v2 root).
    pub(super) rule: String,
}

impl Group {
    pub(super) fn new(v2: &Path, rel: &str) -> Group {
        let path = v2.join(rel);
        std::fs::create_dir_all(&path).unwrap();
        Group {
            path,
            rule: format!("/{rel}"),
        }
    }

    /// CPU seconds its processes used.
    pub(super) fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(self.path.join("cpu.stat")).unwrap();
        let usec: f64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .unwrap()
            .parse()
            .unwrap();
        usec / 1e6
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
        if let Some(parent) = self.path.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

pub(super) fn v2_mount() -> Option<PathBuf> {
    super::containers::cgroup_mounts().0
}

/// Waits (10 s at most) until the agent has applied `n` reloads in all.
pub(super) async fn reload_applied(s: &Stackline, n: f64) {
    let applied = eventually(Duration::from_secs(10), async || {
        s.metric(
            "stackline_ebpf_selection_reloads_total",
            &[("result", "applied")],
        )
        .await
            >= n
    })
    .await;
    assert!(applied, "reload {n} was not applied:\n{}", s.logs());
}

/// Starts `exe SECONDS` inside `group` (the shell joins it, then execs the workload, so
/// every instruction of the workload runs in the group), optionally as `uid`.
pub(super) fn spawn_in(group: &Group, exe: &Path, secs: &str, uid: Option<u32>) -> (Child, String) {
    let procs = group.path.join("cgroup.procs");
    let mut script = format!("echo $$ > {} && exec ", procs.display());
    if let Some(u) = uid {
        script += &format!("setpriv --reuid {u} --regid {u} --clear-groups ");
    }
    script += &format!("{} {secs}", exe.display());
    spawn_ready(Command::new("sh").args(["-c", &script]))
}

/// Samples per pid in the profiles written so far, of the workloads only (`spin_*`):
/// before its exec the process is the shell that moved itself into the cgroup (or
/// `setpriv`, still root), which the rules rightly treat as what it was then.
pub(super) fn samples_by_pid(dir: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let file = dir.join("profiles.jsonl");
    for s in read_json_lines(&file).iter().flat_map(flatten) {
        let workload = s
            .attrs
            .get("thread.name")
            .is_some_and(|n| n.starts_with("spin_") || n == "cpu_shares");
        if let Some(pid) = s.attrs.get("process.pid")
            && workload
        {
            *out.entry(pid.clone()).or_default() += s.timestamps.len().max(1);
        }
    }
    out
}

/// Three copies of the workload with their own names (and so their own executables),
/// and a cgroup for each (`stackline-selection-TEST-PID/{a,b,c}`).
pub(super) fn three_workloads(dir: &Path, test: &str) -> ([PathBuf; 3], [Group; 3]) {
    let v2 = v2_mount().expect("no cgroup v2 hierarchy mounted; the selection tests need one");
    let exe = build_c_workload("cpu_shares", dir, &[]);
    // Readable by the uid the uid rule runs a workload as.
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let exes = ["spin_a", "spin_b", "spin_c"].map(|n| {
        let p = dir.join(n);
        std::fs::copy(&exe, &p).unwrap();
        p
    });
    let base = format!("stackline-selection-{test}-{}", std::process::id());
    let groups = ["a", "b", "c"].map(|g| Group::new(&v2, &format!("{base}/{g}")));
    (exes, groups)
}

/// Runs the three workloads for 1.5 s of CPU each, workload i in group i (as `uids[i]`
/// if given), and waits for them: their pids, and the CPU seconds each group used.
pub(super) fn run_three(
    groups: &[Group; 3],
    exes: &[PathBuf; 3],
    uids: [Option<u32>; 3],
) -> (Vec<String>, Vec<f64>) {
    let before: Vec<f64> = groups.iter().map(Group::cpu_seconds).collect();
    let mut kids: Vec<(Child, String)> = (0..3)
        .map(|i| spawn_in(&groups[i], &exes[i], "1.5", uids[i]))
        .collect();
    for (k, _) in &mut kids {
        assert!(k.wait().unwrap().success());
    }
    let cpu = groups
        .iter()
        .zip(&before)
        .map(|(g, b)| g.cpu_seconds() - b)
        .collect();
    (kids.into_iter().map(|(_, p)| p).collect(), cpu)
}

pub(super) fn config(selection: &str) -> String {
    agent_config(&format!("    sampling_frequency: 999\n{selection}"))
        .replace("    sampling_frequency: 99\n", "")
}

pub(super) const FREQ: f64 = 999.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(any(missing = "root", missing = "gcc"), ignore = "needs root, gcc")]
async fn cgroup_rules_include_exclude_and_reload_live() {
    if !bpf_available("selection by cgroup") {
        return;
    }
    let _serial = SYSTEM_WIDE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (exes, groups) = three_workloads(dir.path(), "cgroup");
    let include_a = format!(
        "    selection:\n      include: [{{ cgroup: \"{}\", name: a }}]\n",
        groups[0].rule
    );
    let s = start_loaded(dir.path(), &config(&include_a)).await;

    // 1. include a: only a's samples, and all of them.
    let (pids, cpu) = run_three(&groups, &exes, [None; 3]);
    let got = eventually(Duration::from_secs(10), async || {
        let by = samples_by_pid(dir.path());
        by.get(&pids[0]).copied().unwrap_or(0) as f64 >= 0.97 * cpu[0] * FREQ
    })
    .await;
    let by = samples_by_pid(dir.path());
    let n = |i: usize| by.get(&pids[i]).copied().unwrap_or(0);
    eprintln!(
        "include a: samples a {} b {} c {}; a's CPU time {:.2} s ({:.0} samples at {FREQ} Hz)",
        n(0),
        n(1),
        n(2),
        cpu[0],
        cpu[0] * FREQ
    );
    assert!(got, "a kept {} of ~{:.0} samples", n(0), cpu[0] * FREQ);
    assert_eq!((n(1), n(2)), (0, 0), "samples of excluded cgroups");
    let skipped = s
        .metric(
            "stackline_ebpf_selection_skipped_total",
            &[("reason", "not_selected")],
        )
        .await;
    assert!(
        skipped >= 0.9 * (cpu[1] + cpu[2]) * FREQ,
        "the program skipped {skipped} samples of b and c ({:.1} CPU s)",
        cpu[1] + cpu[2]
    );
    assert!(
        s.metric(
            "stackline_ebpf_selection_samples_total",
            &[("rule", "a"), ("result", "taken")]
        )
        .await
            >= n(0) as f64 * 0.99
    );

    // 2. Reload: exclude b, include nothing: a and c are profiled, with the shares
    //    their CPU time says.
    let exclude_b = format!(
        "    selection:\n      exclude: [{{ cgroup: \"{}\" }}]\n",
        groups[1].rule
    );
    s.reload(&config(&exclude_b));
    reload_applied(&s, 1.0).await;
    let (pids, cpu) = run_three(&groups, &exes, [None; 3]);
    eventually(Duration::from_secs(10), async || {
        let by = samples_by_pid(dir.path());
        let n = |i: usize| by.get(&pids[i]).copied().unwrap_or(0) as f64;
        n(0) + n(2) >= 0.97 * (cpu[0] + cpu[2]) * FREQ
    })
    .await;
    let by = samples_by_pid(dir.path());
    let n = |i: usize| by.get(&pids[i]).copied().unwrap_or(0) as f64;
    let share = n(0) / (n(0) + n(2));
    let truth = cpu[0] / (cpu[0] + cpu[2]);
    eprintln!(
        "exclude b: samples a {} b {} c {}; a's share {share:.3}, by CPU time {truth:.3}",
        n(0),
        n(1),
        n(2)
    );
    assert_eq!(n(1), 0.0, "samples of the excluded cgroup");
    assert!(
        n(0) + n(2) >= 0.97 * (cpu[0] + cpu[2]) * FREQ,
        "a and c kept {} of ~{:.0}",
        n(0) + n(2),
        (cpu[0] + cpu[2]) * FREQ
    );
    assert!(
        (share - truth).abs() < 0.03,
        "share {share} against {truth}"
    );

    // 3. A long-running workload in b, excluded; a reload that includes b shows its
    //    samples within one report interval (1 s) of the SIGHUP.
    let (mut kid, pid) = spawn_in(&groups[1], &exes[1], "4", None);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let include_b = format!(
        "    selection:\n      include: [{{ cgroup: \"{}\" }}]\n",
        groups[1].rule
    );
    let sighup = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    s.reload(&config(&include_b));
    assert!(kid.wait().unwrap().success());
    let first = eventually(Duration::from_secs(10), async || {
        samples_by_pid(dir.path()).contains_key(&pid)
    })
    .await;
    assert!(first, "b never appeared after the reload:\n{}", s.logs());
    let earliest = read_json_lines(&dir.path().join("profiles.jsonl"))
        .iter()
        .flat_map(flatten)
        .filter(|x| {
            x.attrs.get("process.pid") == Some(&pid)
                && x.attrs.get("thread.name").map(String::as_str) == Some("spin_b")
        })
        .flat_map(|x| x.timestamps)
        .min()
        .unwrap();
    let lag_ms = (earliest as i64 - sighup as i64) / 1_000_000;
    eprintln!("b's first sample {lag_ms} ms after SIGHUP");
    assert!(
        (0..1000).contains(&lag_ms),
        "b's first sample came {lag_ms} ms after SIGHUP (must be within one 1 s interval, and not before)"
    );

    // 4. A rule on a cgroup that does not exist yet (a pod not scheduled yet): once it
    //    appears, it is found at the next interval and its processes are included,
    //    even one that was sampled (and not selected) before that.
    let late_rule = groups[0].rule.replace("/a", "/late");
    let include_late = format!("    selection:\n      include: [{{ cgroup: \"{late_rule}\" }}]\n");
    s.reload(&config(&include_late));
    reload_applied(&s, 3.0).await;
    let v2 = v2_mount().unwrap();
    let late = Group::new(&v2, late_rule.trim_start_matches('/'));
    let (mut kid, pid) = spawn_in(&late, &exes[0], "3", None);
    assert!(kid.wait().unwrap().success());
    let cpu = late.cpu_seconds();
    eventually(Duration::from_secs(10), async || {
        samples_by_pid(dir.path()).get(&pid).copied().unwrap_or(0) as f64 >= 0.6 * cpu * FREQ
    })
    .await;
    let got = samples_by_pid(dir.path()).get(&pid).copied().unwrap_or(0) as f64;
    eprintln!(
        "a cgroup made after its rule: {got} samples of ~{:.0}",
        cpu * FREQ
    );
    // The first interval (1 s) may go unselected, the rest must not.
    assert!(got >= 0.6 * cpu * FREQ, "{got} samples for {cpu:.2} CPU s");
    drop(late);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(any(missing = "root", missing = "gcc"), ignore = "needs root, gcc")]
async fn executable_glob_and_uid_rules_and_a_budget() {
    if !bpf_available("selection by executable and uid") {
        return;
    }
    let _serial = SYSTEM_WIDE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (exes, groups) = three_workloads(dir.path(), "exe");
    // Exclude spin_b by executable (user space decides it, once) and uid 54321 (the
    // program decides it): only spin_a is profiled.
    let rules = "    selection:\n      exclude: [{ executable: \"**/spin_b\", name: exe }, { uid: 54321, name: uid }]\n";
    let s = start_loaded(dir.path(), &config(rules)).await;
    let (pids, cpu) = run_three(&groups, &exes, [None, None, Some(54321)]);
    eventually(Duration::from_secs(10), async || {
        samples_by_pid(dir.path())
            .get(&pids[0])
            .copied()
            .unwrap_or(0) as f64
            >= 0.97 * cpu[0] * FREQ
    })
    .await;
    let by = samples_by_pid(dir.path());
    let n = |i: usize| by.get(&pids[i]).copied().unwrap_or(0);
    eprintln!(
        "exclude by executable and uid: samples a {} b {} c {}",
        n(0),
        n(1),
        n(2)
    );
    assert!(
        n(0) as f64 >= 0.97 * cpu[0] * FREQ,
        "a kept {} of ~{:.0}",
        n(0),
        cpu[0] * FREQ
    );
    assert_eq!(n(1), 0, "samples of the excluded executable");
    assert_eq!(n(2), 0, "samples of the excluded uid");
    let skipped = async |rule: &str| {
        s.metric(
            "stackline_ebpf_selection_samples_total",
            &[("rule", rule), ("result", "skipped")],
        )
        .await
    };
    // The per-rule counts are published at each interval's end: wait for the last one
    // (on a busy machine the check above can pass an interval before it).
    eventually(Duration::from_secs(5), async || {
        skipped("exe").await >= 0.9 * cpu[1] * FREQ && skipped("uid").await >= 0.9 * cpu[2] * FREQ
    })
    .await;
    let (by_exe, by_uid) = (skipped("exe").await, skipped("uid").await);
    eprintln!(
        "skipped: by executable {by_exe}, by uid {by_uid}; b's CPU {:.2} s, c's {:.2} s",
        cpu[1], cpu[2]
    );
    assert!(by_exe >= 0.9 * cpu[1] * FREQ, "{by_exe}");
    assert!(by_uid >= 0.9 * cpu[2] * FREQ, "{by_uid}");

    // A budget of 50 samples/s per process on a workload sampled at 999 Hz.
    let budget = "    selection:\n      budget: { samples_per_second: 50 }\n";
    s.reload(&config(budget));
    reload_applied(&s, 1.0).await;
    let (mut kid, pid) = spawn_in(&groups[0], &exes[0], "3", None);
    let started = std::time::Instant::now();
    assert!(kid.wait().unwrap().success());
    let wall = started.elapsed().as_secs_f64();
    let got = eventually(Duration::from_secs(10), async || {
        samples_by_pid(dir.path()).get(&pid).copied().unwrap_or(0) as f64 >= 0.95 * 50.0 * wall
    })
    .await;
    let kept = samples_by_pid(dir.path()).get(&pid).copied().unwrap_or(0) as f64;
    let skip_metric = async || {
        s.metric(
            "stackline_ebpf_selection_budget_skipped_total",
            &[("target", "process/spin_a")],
        )
        .await
    };
    // The metric is updated at each interval's end: wait until it has the last one.
    eventually(Duration::from_secs(5), async || {
        kept + skip_metric().await >= 0.9 * 3.0 * FREQ
    })
    .await;
    let skipped = skip_metric().await;
    eprintln!(
        "budget 50/s: kept {kept} over {wall:.2} s ({:.1}/s), skipped {skipped}",
        kept / wall
    );
    assert!(
        got && (kept / wall - 50.0).abs() <= 2.5,
        "kept {kept} in {wall:.2} s: {:.1}/s",
        kept / wall
    );
    assert!(skipped > 0.0, "the skip metric counted nothing");
    // Kept and skipped add up to what the program saw of the process.
    let seen = kept + skipped;
    assert!(
        seen >= 0.9 * 3.0 * FREQ,
        "kept {kept} + skipped {skipped} for 3 CPU seconds at {FREQ} Hz"
    );
}
