//! The verifier log (sized by itself, kept in full, truncated with a metric) and load failures: a rejected program and missing capabilities leave the process up, unhealthy and counted.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(missing = "root", ignore = "needs root")]
async fn level_2_log_with_a_1_kib_buffer_loads_and_is_written_in_full() {
    if !bpf_available("level_2_log") {
        return;
    }
    let _serial = SYSTEM_WIDE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let vlog = dir.path().join("vlog");
    let cfg = agent_config(&format!(
        "    verifier_log: {{ level: instruction, stats: true, size: 1KiB, output: \"{}\" }}",
        vlog.display()
    ));
    let s = start_loaded(dir.path(), &cfg).await;
    let log = std::fs::read_to_string(vlog.join("stackline_sample.log")).unwrap();
    assert!(log.len() > 1024, "the log outgrew the first buffer");
    assert!(
        log.starts_with("func#0") || log.starts_with("0: "),
        "starts at the beginning: {}",
        &log[..80.min(log.len())]
    );
    assert!(
        log.contains("processed ") && log.contains("verification time"),
        "complete: {}",
        &log[log.len().saturating_sub(300)..]
    );
    assert_eq!(
        s.metric(
            "stackline_ebpf_verifier_log_bytes",
            &[("program", "stackline_sample")]
        )
        .await,
        log.len() as f64
    );
    assert!(
        s.metric("stackline_ebpf_verifier_instructions_processed", &[])
            .await
            > 100.0
    );
    assert_eq!(
        s.metric("stackline_ebpf_verifier_log_truncated_total", &[])
            .await,
        0.0
    );
    assert_eq!(
        s.metric("stackline_ebpf_program_load_failures_total", &[])
            .await,
        0.0
    );
    let health = s.get("/health").await;
    assert_eq!(health.0, 200, "{health:?}\n{}", s.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(missing = "root", ignore = "needs root")]
async fn a_small_max_size_loads_with_a_truncation_warning_and_metric() {
    if !bpf_available("small_max_size") {
        return;
    }
    let _serial = SYSTEM_WIDE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent_config("    verifier_log: { level: 2, size: 1KiB, max_size: 2KiB }");
    let s = Stackline::start(dir.path(), &cfg);
    assert!(
        eventually(Duration::from_secs(60), async || s
            .metric("stackline_ebpf_verifier_log_truncated_total", &[])
            .await
            >= 1.0)
        .await,
        "{}",
        s.logs()
    );
    assert_eq!(
        s.metric(
            "stackline_ebpf_program_loads_total",
            &[("program", "stackline_sample"), ("outcome", "success")]
        )
        .await,
        1.0
    );
    let logs = s.logs();
    assert!(
        logs.contains("the verifier log needed") && logs.contains("verifier_log.max_size"),
        "{logs}"
    );
    assert_eq!(s.get("/health").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(missing = "root", ignore = "needs root")]
async fn a_rejected_program_is_a_metric_an_unhealthy_receiver_and_retried() {
    if !bpf_available("rejected_program") {
        return;
    }
    let _serial = SYSTEM_WIDE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let invalid =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("ebpf/prebuilt/stackline-invalid.bpf.o");
    // With an OTLP receiver beside it, to show the process still serves that one.
    let cfg = agent_config(&format!("    object_path: \"{}\"", invalid.display()))
        .replace(
            "receivers:\n",
            "receivers:\n  otlp: { protocols: { grpc: { endpoint: \"{OTLP}\" } } }\n",
        )
        .replace(
            "receivers: [ebpf_profiler]",
            "receivers: [ebpf_profiler, otlp]",
        );
    let mut s = Stackline::start(dir.path(), &cfg);
    async fn failures(s: &Stackline) -> f64 {
        s.metric(
            "stackline_ebpf_program_load_failures_total",
            &[
                ("program", "stackline_sample"),
                ("errno", "EACCES"),
                ("reason", "verifier_rejected"),
            ],
        )
        .await
    }
    assert!(
        eventually(Duration::from_secs(60), async || failures(&s).await >= 2.0).await,
        "{}",
        s.logs()
    );
    let (code, body) = s.get("/health").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("receiver/ebpf_profiler") && body.contains("map_value_or_null"),
        "{body}"
    );
    let logs = s.logs();
    assert!(
        logs.contains("loading eBPF program `stackline_sample` failed: EACCES (Permission denied)"),
        "{logs}"
    );
    assert!(
        logs.contains("hint: the verifier rejected the program"),
        "{logs}"
    );
    assert!(logs.contains("retrying in"), "{logs}");
    assert_eq!(
        s.metric(
            "stackline_ebpf_program_loads_total",
            &[("outcome", "failure")]
        )
        .await,
        failures(&s).await
    );
    // Still up, still serving the other receiver.
    assert!(s.is_running());
    client(s.endpoint())
        .await
        .export(stackline::otlp::synth::request("svc", 0, 5, 3))
        .await
        .unwrap();
    s.sigterm();
    assert!(s.wait(Duration::from_secs(20)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(missing = "root", ignore = "needs root")]
async fn without_capabilities_it_says_so_and_stays_up() {
    if !bpf_available("without_capabilities") {
        return;
    }
    let _serial = SYSTEM_WIDE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // Drop every capability (bounding, inheritable and ambient sets) before exec.
    let wrapper = dir.path().join("nocaps.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv --inh-caps=-all --ambient-caps=-all --bounding-set=-all {} \"$@\"\n",
            env!("CARGO_BIN_EXE_stackline")
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut s = Stackline::start_with(&wrapper, dir.path(), &agent_config(""));
    assert!(
        eventually(Duration::from_secs(60), async || s
            .logs()
            .contains("needs root, or CAP_BPF and CAP_PERFMON"))
        .await,
        "{}",
        s.logs()
    );
    let logs = s.logs();
    assert!(logs.contains("this process has none of them"), "{logs}");
    assert!(!logs.contains("panicked"), "{logs}");
    let (code, body) = s.get("/health").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        s.metric(
            "stackline_ebpf_program_load_failures_total",
            &[("reason", "missing_capabilities")]
        )
        .await
            >= 1.0
    );
    assert!(s.is_running());
}
