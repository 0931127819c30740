//! Nothing stays in the kernel after SIGKILL, and a restart profiles again.

use super::*;

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
