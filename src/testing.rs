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
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        skip(test, why);
    }
    root
}
