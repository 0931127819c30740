//! Helpers shared by unit and integration tests (not part of the public API).

/// Says that a test cannot run on this machine, and why. Under CI (`CI=true`) that is
/// a failure instead: a green CI run means every test ran.
pub fn skip(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test} cannot run here: {why}; under CI=true every test must run");
    }
    eprintln!("SKIPPED {test}: {why}");
}

/// True when running as root; otherwise the test is skipped (see [`skip`]) with `why`.
pub fn root_or_skip(test: &str, why: &str) -> bool {
    let root = crate::host::is_root();
    if !root {
        skip(test, why);
    }
    root
}

/// Compiles C sources with `cc` (gcc or clang) into `out`; None (and a skip notice) if
/// the compiler is missing.
pub fn compile_c(
    test: &str,
    cc: &str,
    out: &std::path::Path,
    srcs: &[&std::path::Path],
    flags: &[&str],
) -> Option<std::path::PathBuf> {
    let r = std::process::Command::new(cc)
        .args(flags)
        .arg("-o")
        .arg(out)
        .args(srcs)
        .output();
    match r {
        Ok(o) if o.status.success() => Some(out.to_path_buf()),
        Ok(o) => panic!(
            "{cc} {flags:?} {srcs:?} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            skip(test, &format!("{cc} is not installed ({e})"));
            None
        }
    }
}

/// A file of the test workloads (`tests/workloads/NAME`).
pub fn workload_source(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workloads")
        .join(name)
}

/// The unwinding workloads of `tests/workloads/unwind.c`, built with `cc` and `flags`
/// (plus `-g` and a build ID): the program, linked against `libunwhot.so` in the same
/// directory, which is built with the same compiler and flags.
pub fn build_unwind_workload(
    test: &str,
    dir: &std::path::Path,
    cc: &str,
    flags: &[&str],
) -> Option<std::path::PathBuf> {
    let mut f: Vec<&str> = vec!["-g", "-Wl,--build-id"];
    f.extend_from_slice(flags);
    let mut lib_flags = f.clone();
    lib_flags.extend_from_slice(&["-shared", "-fPIC"]);
    compile_c(
        test,
        cc,
        &dir.join("libunwhot.so"),
        &[&workload_source("unwhot.c")],
        &lib_flags,
    )?;
    let rpath = format!("-Wl,-rpath,{}", dir.display());
    let libdir = format!("-L{}", dir.display());
    f.extend_from_slice(&[
        "-DWITH_LIB",
        &libdir,
        "-lunwhot",
        &rpath,
        "-lpthread",
        "-ldl",
    ]);
    // Flags after the source, so -l options link.
    let out = dir.join(format!("unwind-{cc}"));
    let r = std::process::Command::new(cc)
        .arg("-o")
        .arg(&out)
        .arg(workload_source("unwind.c"))
        .args(&f)
        .output();
    match r {
        Ok(o) if o.status.success() => Some(out),
        Ok(o) => panic!(
            "{cc} unwind.c failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            skip(test, &format!("{cc} is not installed ({e})"));
            None
        }
    }
}

/// Output of a command that must succeed.
pub fn run_tool(cmd: &str, args: &[&str]) -> String {
    let o = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
