//! Probabilistic profiling: a random fraction of whole report intervals is sampled,
//! and each profile says the fraction.

use super::selection::config;
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(any(missing = "root", missing = "gcc"), ignore = "needs root, gcc")]
async fn probabilistic_profiling_samples_a_fraction_of_whole_intervals() {
    if !bpf_available("probabilistic profiling") {
        return;
    }
    let _serial = SYSTEM_WIDE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c_workload("cpu_shares", dir.path(), &[]);
    let cfg = config("    probabilistic: { fraction: 0.25 }\n")
        .replace("report_interval: 1s", "report_interval: 100ms");
    let s = start_loaded(dir.path(), &cfg).await;
    let (mut kid, pid) = spawn_ready(Command::new(&exe).arg("22"));
    let n = |sampled: &'static str| {
        let s = &s;
        async move {
            s.metric(
                "stackline_ebpf_probabilistic_intervals_total",
                &[("sampled", sampled)],
            )
            .await
        }
    };
    let done = eventually(Duration::from_secs(40), async || {
        n("true").await + n("false").await >= 200.0
    })
    .await;
    assert!(done, "{}", s.logs());
    let (on, off) = (n("true").await, n("false").await);
    kid.kill().unwrap();
    let _ = kid.wait();
    let total = on + off;
    // The binomial bound: 0.25 ± 4 standard deviations.
    let sd = (total * 0.25 * 0.75).sqrt();
    eprintln!(
        "{on} of {total} intervals sampled (expected {:.0} ± {:.0})",
        total * 0.25,
        4.0 * sd
    );
    assert!((on - total * 0.25).abs() <= 4.0 * sd, "{on} of {total}");
    // Each profile covers a sampled interval whole: the workload's samples per profile
    // are about the same (no half intervals), and each says the fraction.
    s.sigterm();
    let mut s = s;
    assert!(s.wait(Duration::from_secs(20)).success(), "{}", s.logs());
    let reqs = read_json_lines(&dir.path().join("profiles.jsonl"));
    let mut per_profile = Vec::new();
    for r in &reqs {
        let flat = flatten(r);
        let n: usize = flat
            .iter()
            .filter(|x| x.attrs.get("process.pid") == Some(&pid))
            .map(|x| x.timestamps.len().max(1))
            .sum();
        if n > 0 {
            per_profile.push(n);
        }
        let attrs = &r.resource_profiles[0].scope_profiles[0].profiles[0].attribute_indices;
        assert_eq!(attrs.len(), 1, "the profile carries the fraction");
        let kv = &r.dictionary.as_ref().unwrap().attribute_table[attrs[0] as usize];
        let key = &r.dictionary.as_ref().unwrap().string_table[kv.key_strindex as usize];
        assert_eq!(key, "stackline.probabilistic.fraction");
        assert_eq!(
            kv.value.as_ref().and_then(|v| v.value.clone()),
            Some(stackline::otlp::common::any_value::Value::DoubleValue(0.25))
        );
    }
    // The first and last may be cut by the workload's start and end.
    assert!(
        per_profile.len() >= 3,
        "{} profiles with the workload",
        per_profile.len()
    );
    let inner = &per_profile[1..per_profile.len() - 1];
    let mean = inner.iter().sum::<usize>() as f64 / inner.len() as f64;
    eprintln!(
        "workload samples per sampled 100 ms interval: mean {mean:.1}, min {:?}",
        inner.iter().min()
    );
    assert!(
        inner.len() as f64 >= 0.5 * on,
        "{} profiles for {on} sampled intervals",
        inner.len()
    );
    for &n in inner {
        assert!(
            n as f64 >= 0.5 * mean,
            "an interval with {n} samples (mean {mean:.1}): not whole"
        );
    }
}
