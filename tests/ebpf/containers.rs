//! Processes in container cgroups carry their container id and pod uid.

use super::*;

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
pub(super) fn cgroup_mounts() -> (Option<std::path::PathBuf>, Option<std::path::PathBuf>) {
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
