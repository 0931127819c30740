//! The verifier log on other kernels than the host's: Debian's 6.1 (no `log_true_size`:
//! the buffer must grow by doubling) and 6.12 (with it), booted under qemu with an
//! initramfs that runs `stackline ebpf-check`. Both programs (the entry and the
//! unwinder) must load, with their verifier instruction counts well under the limit. scripts/fetch-test-kernels.sh (run by
//! .ci/run) fetches the kernels; without them the test is skipped, loudly.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn test_kernels() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-kernels");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_dir(e.path().join("boot")).ok())
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    v.sort();
    v
}

fn busybox() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-kernels");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin/busybox"))
        .find(|p| p.is_file())
}

fn sh(script: &str) {
    let st = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(st.success(), "{script}");
}

/// An initramfs whose /init runs `stackline ebpf-check ARGS` and powers off.
fn initramfs(dir: &Path, busybox: &Path, args: &str) -> PathBuf {
    let root = dir.join("root");
    for d in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let exe = env!("CARGO_BIN_EXE_stackline");
    sh(&format!(
        "objcopy --strip-debug {exe} {}",
        root.join("bin/stackline").display()
    ));
    // The shared libraries it needs, at the same paths.
    let ldd = String::from_utf8(Command::new("ldd").arg(exe).output().unwrap().stdout).unwrap();
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let to = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
    let init = root.join("init");
    std::fs::write(
        &init,
        format!(
            "#!/bin/busybox sh\n\
             /bin/busybox mount -t proc proc /proc\n\
             /bin/busybox mount -t sysfs sys /sys\n\
             /bin/busybox mount -t devtmpfs dev /dev\n\
             echo ===BEGIN===\n\
             /bin/stackline ebpf-check {args}\n\
             echo ===END=== $?\n\
             /bin/busybox poweroff -f\n"
        ),
    )
    .unwrap();
    sh(&format!("chmod 755 {}", init.display()));
    let out = dir.join("initrd.gz");
    sh(&format!(
        "cd {} && find . | cpio -o -H newc --quiet | gzip -1 > {}",
        root.display(),
        out.display()
    ));
    out
}

/// Boots `kernel` with `initrd` and returns what the console printed.
fn boot(kernel: &Path, initrd: &Path) -> String {
    // Emulated (TCG), not KVM: nested KVM on these machines gives the guest a CPU on
    // which the kernel never starts, and emulation boots in seconds anyway.
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "1024",
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
            "-kernel",
        ])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/init quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 (scripts/fetch-test-kernels.sh installs it)");
    let until = Instant::now() + Duration::from_secs(180);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    out
}

#[test]
#[cfg_attr(
    missing = "test_kernels",
    ignore = "needs qemu and the 6.1/6.12 test kernels (bash scripts/fetch-test-kernels.sh)"
)]
fn the_log_buffer_grows_to_fit_on_kernels_with_and_without_log_true_size() {
    let kernels = test_kernels();
    let Some(bb) = busybox() else {
        stackline::testing::skip(
            "old_kernels",
            "no test kernels under target/test-kernels (run scripts/fetch-test-kernels.sh)",
        );
        return;
    };
    if kernels.is_empty()
        || Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .is_err()
    {
        stackline::testing::skip(
            "old_kernels",
            "qemu or test kernels missing (run scripts/fetch-test-kernels.sh)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // frame_pointer mode (the entry program and the frame-pointer walker) with a level
    // 2 log from a 1 KiB buffer (the unwinder's level 2 log is megabytes: too slow to
    // produce under emulation); then the native mode's programs with statistics only,
    // for their instruction counts.
    let log_initrd = initramfs(
        &dir.path().join("log"),
        &bb,
        "--level 2 --size 1KiB --stats --unwind-mode frame_pointer",
    );
    let stats_initrd = initramfs(&dir.path().join("stats"), &bb, "--stats");
    let report = |k: &Path, initrd: &Path| -> serde_json::Value {
        let out = boot(k, initrd);
        let json = out
            .split("===BEGIN===")
            .nth(1)
            .and_then(|r| r.split("===END===").next())
            .unwrap_or_else(|| panic!("{}: no report; console:\n{out}", k.display()))
            .to_owned();
        serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {json}"))
    };
    for k in &kernels {
        let r = report(k, &log_initrd);
        eprintln!("{}: {r}", k.display());
        let release = r["kernel"].as_str().unwrap().to_owned();
        assert_eq!(r["loaded"], true, "{release}: {r}");
        assert_eq!(r["truncated"], false, "{release}");
        let log_bytes = r["log_bytes"].as_u64().unwrap();
        assert!(
            log_bytes > 100_000,
            "{release}: the level 2 log is kept whole"
        );
        let attempts = r["attempts"].as_u64().unwrap();
        let (major, minor) = {
            let mut it = release
                .split(['.', '-'])
                .map(|x| x.parse::<u32>().unwrap_or(0));
            (it.next().unwrap(), it.next().unwrap())
        };
        if (major, minor) < (6, 4) {
            // No log_true_size: 1 KiB doubled until the log fit.
            assert!(r["needed_bytes"].is_null(), "{release}: {r}");
            let doublings = (log_bytes as f64 / 1024.0).log2().ceil() as u64;
            assert!(
                attempts >= doublings,
                "{release}: {attempts} attempts for {log_bytes} bytes"
            );
            assert_eq!(r["buffer_bytes"].as_u64().unwrap(), 1024 << (attempts - 1));
        } else {
            // The kernel says what it needs: one retry at exactly that size.
            assert_eq!(attempts, 2, "{release}: {r}");
            assert_eq!(
                r["needed_bytes"].as_u64().unwrap(),
                log_bytes + 1,
                "{release}"
            );
        }
        // frame_pointer mode's walker, from the same report.
        let fp_walker = r["programs"].clone();
        let r = report(k, &stats_initrd);
        assert_eq!(r["loaded"], true, "{release}: {r}");
        let programs = r["programs"].as_array().unwrap();
        for (programs, name) in [
            (programs, "stackline_sample"),
            (programs, "stackline_unwind"),
            // Raw tracepoints on process changes, attached as well (`loaded` is the
            // whole load, attach included).
            (programs, "stackline_exec"),
            (programs, "stackline_rename"),
            (programs, "stackline_exit"),
            (programs, "stackline_cgroup"),
            (fp_walker.as_array().unwrap(), "stackline_fp_walk"),
        ] {
            let p = programs
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{release}: {name} did not load: {r}"));
            assert_eq!(p["loaded"], true, "{release}: {name}: {r}");
            let insns = p["insns_processed"].as_u64().unwrap();
            eprintln!(
                "{release}: {name} verified in {insns} instructions ({:.1}% of the 1M limit)",
                insns as f64 / 1e4
            );
            // A wide margin: the verifier changes between kernels.
            assert!(insns < 500_000, "{release}: {name}: {insns}");
        }
    }
    // And the host's kernel, the same way.
    let host = Command::new(env!("CARGO_BIN_EXE_stackline"))
        .args(["ebpf-check", "--stats"])
        .output()
        .unwrap();
    if host.status.success() {
        let r: serde_json::Value = serde_json::from_slice(&host.stdout).unwrap();
        for p in r["programs"].as_array().unwrap() {
            eprintln!(
                "{} (host): {} verified in {} instructions",
                r["kernel"], p["name"], p["insns_processed"]
            );
        }
    }
}
