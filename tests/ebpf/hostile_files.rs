//! Hostile mappings (a FIFO, a symlink, a truncated file) neither hang nor kill the agent.

use super::*;

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
