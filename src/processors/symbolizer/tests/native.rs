//! C and Rust functions, lines and inline chains against addr2line; the frame cache's bound; kernel addresses from kallsyms.

use super::*;

#[test]
fn c_functions_lines_and_inline_chains_match_addr2line() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let id = read_build_id(&bin).unwrap().unwrap();
    let vaddrs = c_addresses(&bin);
    let mut req = request_for(bin.to_str().unwrap(), Some(&id), &bin, &vaddrs, None);
    Worker::new(cfg(vec![])).symbolize(&mut req);
    let got = lines_of(&req);
    let mut inlined = 0;
    for (v, lines) in vaddrs.iter().zip(&got) {
        assert_eq!(lines, &addr2line(&bin, *v), "at {v:#x}");
        if lines.len() == 2 {
            // scale (lines 6-7) inlined into accumulate at line 12.
            assert_eq!(
                (lines[0].0.as_str(), lines[0].1.as_str()),
                ("scale", "inlines.c")
            );
            assert!(matches!(lines[0].2, 6 | 7), "{lines:?}");
            assert_eq!(lines[1], ("accumulate".into(), "inlines.c".into(), 12));
            inlined += 1;
        }
    }
    assert!(inlined > 0, "no address fell into the inlined function");
    assert!(
        got.iter()
            .any(|l| l.first().is_some_and(|f| f.0 == "entry_point" && f.2 == 16))
    );
    crate::otlp::check(&req).unwrap();
}

/// A request with a leaf frame at every instruction of `churn` in the Rust test
/// program (built in `dir`), and those addresses.
fn churn_request(dir: &Path) -> (ProfilesRequest, Vec<u64>) {
    let bin = build_rust(dir);
    let id = read_build_id(&bin).unwrap().unwrap();
    let (s, e) = symbol(&bin, "churn");
    let vaddrs = instructions(&bin, s, e);
    let req = request_for(bin.to_str().unwrap(), Some(&id), &bin, &vaddrs, None);
    (req, vaddrs)
}

#[test]
fn the_frame_cache_stays_within_cache_size_and_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (req, vaddrs) = churn_request(dir.path());
    assert!(vaddrs.len() > 8, "{} instructions", vaddrs.len());
    let mut big = Worker::new(cfg(vec![]));
    let mut want = req.clone();
    big.symbolize(&mut want);
    assert_eq!(big.cached_frames(), vaddrs.len());
    let mut small = Worker::new(SymbolizerConfig {
        cache_size: 4,
        ..cfg(vec![])
    });
    for _ in 0..2 {
        let mut got = req.clone();
        small.symbolize(&mut got);
        assert_eq!(lines_of(&got), lines_of(&want));
        assert_eq!(small.cached_frames(), 4);
    }
}

#[test]
fn rust_names_are_demangled_with_the_mangled_name_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (mut req, _) = churn_request(dir.path());
    Worker::new(cfg(vec![])).symbolize(&mut req);
    let d = req.dictionary.as_ref().unwrap();
    let churn = d
        .function_table
        .iter()
        .find(|f| d.string_table[f.name_strindex as usize] == "rusty::engine::churn")
        .expect("demangled name without hash");
    let mangled = &d.string_table[churn.system_name_strindex as usize];
    assert!(
        mangled.starts_with("_ZN") || mangled.starts_with("_R"),
        "{mangled}"
    );
    assert_eq!(demangle(mangled), "rusty::engine::churn");
    let got = lines_of(&req);
    // mix (line 6) inlined into churn at line 12, under std's own inlined helpers.
    assert!(
        got.iter().any(|l| l.len() >= 2
            && l[l.len() - 2] == ("rusty::engine::mix".into(), "rusty.rs".into(), 6)
            && l[l.len() - 1] == ("rusty::engine::churn".into(), "rusty.rs".into(), 12)),
        "no inlined mix in churn: {got:?}"
    );
    // Every chain ends in the function the address is in.
    assert!(
        got.iter()
            .all(|l| l.last().is_some_and(|f| f.0 == "rusty::engine::churn"))
    );
}

#[test]
fn kernel_addresses_from_kallsyms_resolve_to_their_names() {
    let text = std::fs::read_to_string("/proc/kallsyms").unwrap();
    let wanted = ["vfs_read", "schedule", "do_sys_openat2"];
    let mut addrs = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 3 && matches!(f[1], "T" | "t") && wanted.contains(&f[2]) && f.len() == 3 {
            let a = u64::from_str_radix(f[0], 16).unwrap();
            if a == 0 {
                crate::testing::skip(
                    "kernel symbols",
                    "kernel addresses are hidden (kptr_restrict; needs root)",
                );
                return;
            }
            addrs.push((a + 4, f[2].to_owned()));
        }
    }
    assert!(!addrs.is_empty());
    let w = Worker::new(cfg(vec![]));
    let res = w.symbolize_kernel(&addrs.iter().map(|a| a.0).collect::<Vec<_>>());
    for ((_, name), r) in addrs.iter().zip(res) {
        match r {
            Resolved::Lines(l) => assert_eq!(
                l.last().map(|x: &ResolvedLine| x.func.name.as_str()),
                Some(name.as_str())
            ),
            Resolved::Unknown(why) => panic!("{name}: {why}"),
        }
    }
}
