//! Configuration loading and validation: every error is reported, with its path.

use stackline_testkit as common;

use std::io::Write;
use std::process::Command;

use stackline::config::Config;
use stackline::pipeline::{Factories, Graph};

const VALID: &str = r#"
receivers:   { otlp: { protocols: { grpc: { endpoint: 127.0.0.1:4317, max_recv_msg_size_mib: 32 } } } }
processors:  { batch: { send_batch_size: 8192, send_batch_max_size: 0, timeout: 200ms } }
exporters:
  otlp/backend: { endpoint: 127.0.0.1:14317, tls: { insecure: true }, compression: gzip, timeout: 5s,
                  headers: {}, retry_on_failure: { enabled: true, initial_interval: 5s, max_interval: 30s, max_elapsed_time: 300s, multiplier: 1.5 },
                  sending_queue: { enabled: true, num_consumers: 10, queue_size: 1000 } }
  file: { path: ./stackline-out/profiles.jsonl, format: json, rotation: { max_megabytes: 100, max_backups: 10 }, flush_interval: 1s }
  debug: { verbosity: basic }
service:
  pipelines: { profiles: { receivers: [otlp], processors: [batch], exporters: [otlp/backend, file] } }
  telemetry: { metrics: { address: 127.0.0.1:8888 }, logs: { level: info } }
"#;

/// Every error message `text` produces, as `path: message`.
fn errors(text: &str) -> Vec<String> {
    let cfg = match Config::from_yaml("test.yaml", text) {
        Ok(c) => c,
        Err(e) => return e.0.iter().map(|e| e.to_string()).collect(),
    };
    match Graph::build(&cfg, &Factories::builtin()) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

fn assert_has(errs: &[String], expected: &str) {
    assert!(
        errs.iter().any(|e| e == expected),
        "expected error\n  {expected}\nin\n  {}",
        errs.join("\n  ")
    );
}

#[test]
fn the_issue_example_is_valid_and_warns_about_the_unused_exporter() {
    let cfg = Config::from_yaml("test.yaml", VALID).unwrap();
    let g = Graph::build(&cfg, &Factories::builtin()).unwrap();
    assert_eq!(
        g.warnings,
        vec!["exporters.debug: defined but not used by any pipeline; it will not run"]
    );
}

#[test]
fn every_error_is_reported_at_once_with_its_path() {
    let text = VALID
        .replace("max_interval: 30s", "max_intervall: 30s")
        .replace("send_batch_max_size: 0", "send_batch_max_size: 100")
        .replace("queue_size: 1000", "queue_size: 0")
        .replace("debug: { verbosity: basic }", "debug: { verbosity: basic }\n  kafka: {}")
        .replace(
            "pipelines: { profiles: { receivers: [otlp], processors: [batch], exporters: [otlp/backend, file] } }",
            "pipelines: { profiles: { receivers: [otlp], processors: [batch], exporters: [otlp/backend, file, otlp/missing] },\n               profiles/empty: { receivers: [], exporters: [] } }",
        );
    let errs = errors(&text);
    assert_has(
        &errs,
        "exporters.otlp/backend.retry_on_failure.max_intervall: unknown field `max_intervall`, expected one of `enabled`, `initial_interval`, `max_interval`, `max_elapsed_time`, `multiplier`, `randomization_factor`",
    );
    assert_has(
        &errs,
        "processors.batch.send_batch_max_size: 100 is less than send_batch_size (8192); use 0 for no limit or a value >= send_batch_size",
    );
    assert_has(
        &errs,
        "exporters.otlp/backend.sending_queue.queue_size: must be at least 1 (or set sending_queue.enabled: false)",
    );
    assert_has(
        &errs,
        "exporters.kafka: unknown exporter type `kafka`; known exporter types: debug, file, flamegraph, otlp, otlphttp, pprof",
    );
    assert_has(
        &errs,
        "service.pipelines.profiles.exporters: exporter `otlp/missing` is used by the pipeline but not defined under `exporters`",
    );
    assert_has(
        &errs,
        "service.pipelines.profiles/empty.receivers: a pipeline needs at least one receiver",
    );
    assert_has(
        &errs,
        "service.pipelines.profiles/empty.exporters: a pipeline needs at least one exporter",
    );
    assert_eq!(errs.len(), 7, "{errs:#?}");
}

#[test]
fn structural_errors() {
    let errs = errors(
        r#"
receivers: { zipkin: {}, "Bad Id": {} }
exporters: { debug: {} }
service:
  pipelines:
    traces: { receivers: [otlp], exporters: [debug, debug] }
  telemetry: { metrics: { adress: x } }
extensions: {}
"#,
    );
    assert_has(
        &errs,
        "extensions: unknown top-level section, expected one of `receivers`, `processors`, `exporters`, `service`",
    );
    assert_has(
        &errs,
        "receivers.zipkin: unknown receiver type `zipkin`; known receiver types: ebpf_profiler, otlp",
    );
    assert_has(
        &errs,
        "receivers.Bad Id: invalid component id `Bad Id`: the type must be lowercase letters, digits or `_`, written as `type` or `type/name`",
    );
    assert_has(
        &errs,
        "service.pipelines.traces: unsupported pipeline id `traces`: Stackline carries profiles only, so pipelines are named `profiles` or `profiles/<name>`",
    );
    assert_has(
        &errs,
        "service.pipelines.traces.receivers: receiver `otlp` is used by the pipeline but not defined under `receivers`",
    );
    assert_has(
        &errs,
        "service.pipelines.traces.exporters: exporter `debug` is listed twice",
    );
    assert_has(
        &errs,
        "service.telemetry.metrics.adress: unknown field `adress`, expected one of `address`, `level`",
    );
    assert_eq!(
        errors("{}"),
        vec![
            "service.pipelines: no pipeline is defined; add one, e.g. `profiles: { receivers: [otlp], processors: [batch], exporters: [file] }`"
        ]
    );
}

#[test]
fn value_errors_name_units_and_ranges() {
    let errs = errors(
        r#"
receivers: { otlp: { protocols: { grpc: { endpoint: "nohost", max_recv_msg_size_mib: 0 } } } }
processors: { batch: { timeout: 5 }, batch/2: { send_batch_size: 0 } }
exporters:
  otlp: { endpoint: "127.0.0.1:1", timeout: 0s, compression: brotli, retry_on_failure: { multiplier: 0.5 } }
  otlp/tls: { endpoint: "127.0.0.1:1", tls: { ca_file: /nonexistent/ca.pem } }
  file: { path: "" }
service: { pipelines: { profiles: { receivers: [otlp], processors: [batch, batch/2], exporters: [otlp, otlp/tls, file] } } }
"#,
    );
    assert_has(
        &errs,
        "receivers.otlp.protocols.grpc.endpoint: `nohost` is not a `host:port` address",
    );
    assert_has(
        &errs,
        "receivers.otlp.protocols.grpc.max_recv_msg_size_mib: 0 is out of range; give a size in MiB from 1 to 2048",
    );
    assert_has(
        &errs,
        "processors.batch.timeout: invalid type: found unsigned int `5`, expected a duration",
    );
    assert_has(
        &errs,
        "processors.batch/2.send_batch_size: must be at least 1 sample",
    );
    assert_has(
        &errs,
        "exporters.otlp.compression: unknown value `brotli`, expected one of `gzip`, `zstd`, `none`",
    );
    assert_has(
        &errs,
        "exporters.otlp/tls.tls.ca_file: cannot read /nonexistent/ca.pem",
    );
    assert_has(&errs, "exporters.file.path: `` does not name a file");
}

#[test]
fn env_references_expand_with_types_and_defaults() {
    // SAFETY: this test binary runs these env mutations before any reader of them.
    unsafe {
        std::env::set_var("STACKLINE_TEST_PORT", "4999");
        std::env::set_var("STACKLINE_TEST_SIZE", "16");
        std::env::remove_var("STACKLINE_TEST_UNSET");
    }
    let cfg = Config::from_yaml(
        "t.yaml",
        r#"
receivers: { otlp: { protocols: { grpc: { endpoint: "127.0.0.1:${env:STACKLINE_TEST_PORT}", max_recv_msg_size_mib: "${env:STACKLINE_TEST_SIZE}" } } } }
exporters: { file: { path: "${env:STACKLINE_TEST_UNSET:-/tmp/x}/p.jsonl" } }
service: { pipelines: { profiles: { receivers: [otlp], exporters: [file] } } }
"#,
    )
    .unwrap();
    let grpc = cfg.receivers["otlp"].find_ref("protocols.grpc").unwrap();
    assert_eq!(
        grpc.find_ref("endpoint").unwrap().as_str(),
        Some("127.0.0.1:4999")
    );
    assert_eq!(
        grpc.find_ref("max_recv_msg_size_mib").unwrap().to_u128(),
        Some(16)
    );
    assert_eq!(
        cfg.exporters["file"].find_ref("path").unwrap().as_str(),
        Some("/tmp/x/p.jsonl")
    );
    assert!(Graph::build(&cfg, &Factories::builtin()).is_ok());

    let errs = errors(
        r#"
exporters: { file: { path: "${env:STACKLINE_TEST_UNSET}" } }
service: { pipelines: { profiles: { receivers: [], exporters: [file] } } }
"#,
    );
    assert_has(
        &errs,
        "exporters.file.path: environment variable `STACKLINE_TEST_UNSET` is not set; set it or give a default with `${env:STACKLINE_TEST_UNSET:-default}`",
    );
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    p
}

#[test]
fn later_files_override_earlier_ones_key_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = write(dir.path(), "base.yaml", VALID);
    let over = write(
        dir.path(),
        "override.yaml",
        "processors: { batch: { timeout: 1s } }\nservice: { pipelines: { profiles: { exporters: [debug] } } }\n",
    );
    let cfg = Config::load(&[base, over]).unwrap();
    let batch = &cfg.processors["batch"];
    assert_eq!(batch.find_ref("timeout").unwrap().as_str(), Some("1s"));
    assert_eq!(
        batch.find_ref("send_batch_size").unwrap().to_u128(),
        Some(8192),
        "kept from base"
    );
    assert_eq!(cfg.service.pipelines["profiles"].exporters, vec!["debug"]);
    assert_eq!(cfg.service.pipelines["profiles"].receivers, vec!["otlp"]);
    let g = Graph::build(&cfg, &Factories::builtin()).unwrap();
    assert!(g.warnings.iter().any(|w| w.starts_with("exporters.file:")));
}

#[test]
fn missing_files_and_bad_yaml_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = Config::load(&[dir.path().join("nope.yaml")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot read config file") && e.contains("nope.yaml"),
        "{e}"
    );
    let bad = write(dir.path(), "bad.yaml", "receivers: [unclosed\n");
    let e = Config::load(&[bad]).unwrap_err().to_string();
    assert!(e.contains("bad.yaml"), "{e}");
}

#[test]
fn no_prefix_of_a_valid_config_panics() {
    // Truncation at every byte yields broken YAML, half-written values and missing
    // sections: each must give errors or a valid graph, never a panic.
    for cut in 0..VALID.len() {
        if VALID.is_char_boundary(cut) {
            let _ = errors(&VALID[..cut]);
        }
    }
}

#[test]
fn validate_command_prints_every_error_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.yaml", VALID);
    let out = Command::new(env!("CARGO_BIN_EXE_stackline"))
        .args(["validate", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: exporters.debug"));

    let bad = write(
        dir.path(),
        "bad.yaml",
        &VALID
            .replace("timeout: 200ms", "timeout: soon")
            .replace("queue_size: 1000", "queue_size: 0"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_stackline"))
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("invalid configuration (2 errors):"),
        "{err}"
    );
    assert!(err.contains("processors.batch.timeout:"), "{err}");
    assert!(
        err.contains("exporters.otlp/backend.sending_queue.queue_size:"),
        "{err}"
    );
}

#[test]
fn components_and_version_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_stackline"))
        .arg("components")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for t in ["otlp", "batch", "file", "debug"] {
        assert!(text.contains(&format!("  {t} ")), "{text}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_stackline"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("stackline {}", env!("CARGO_PKG_VERSION"))
    );
    // The built-in default config is valid.
    let out = Command::new(env!("CARGO_BIN_EXE_stackline"))
        .arg("validate")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `stackline validate` on shipped config files, with the secrets of
/// `scripts/gen-secrets.sh` where `with_secrets` is given: (success, stdout + stderr).
fn validate_shipped(
    path: &std::path::Path,
    with_secrets: Option<&std::path::Path>,
) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_stackline"));
    cmd.arg("validate").arg("--config").arg(path);
    match with_secrets {
        Some(s) => cmd
            .env("STACKLINE_TLS_DIR", s)
            .env("STACKLINE_TOKEN_FILE", s.join("token")),
        None => cmd
            .env("STACKLINE_TLS_DIR", "/nonexistent/tls")
            .env("STACKLINE_TOKEN_FILE", "/nonexistent/token"),
    };
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every file in config/ is valid as shipped, given the files of scripts/gen-secrets.sh;
/// without them, the gateway and the agent refuse to start and name the missing file.
#[test]
#[cfg_attr(missing = "openssl", ignore = "needs openssl")]
fn every_shipped_config_is_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let secrets = common::gen_secrets(tmp.path());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let (ok, out) = validate_shipped(&path, Some(&secrets));
            assert!(ok, "{}: {out}", path.display());
            n += 1;
        }
    }
    assert!(n >= 4, "expected default, local, agent and gateway configs");
    for (file, missing) in [
        ("gateway.yaml", "/nonexistent/tls/tls.crt"),
        ("gateway.yaml", "/nonexistent/token"),
        ("agent.yaml", "/nonexistent/tls/ca.crt"),
        ("agent.yaml", "/nonexistent/token"),
    ] {
        let (ok, out) = validate_shipped(&dir.join(file), None);
        assert!(!ok, "{file} validated without its secrets");
        assert!(
            out.contains(missing),
            "{file}: the error does not name {missing}:\n{out}"
        );
    }
}

#[test]
fn ebpf_profiler_settings_are_validated() {
    let errs = errors(
        r#"
receivers:
  ebpf_profiler:
    sampling_frequency: 0
    cpus: []
    verifier_log: { level: verbose, size: 64, max_size: 2GiB }
exporters: { debug: {} }
service: { pipelines: { profiles: { receivers: [ebpf_profiler], exporters: [debug] } } }
"#,
    );
    assert_has(
        &errs,
        "receivers.ebpf_profiler.sampling_frequency: 0 Hz is out of range; use 1 to 10000",
    );
    assert_has(
        &errs,
        "receivers.ebpf_profiler.cpus: is empty; leave it out to sample every online CPU",
    );
    assert_has(
        &errs,
        "receivers.ebpf_profiler.verifier_log.level: invalid verifier log level `verbose`; use 0|off, 1|branch or 2|instruction",
    );
    let errs = errors(
        r#"
receivers:
  ebpf_profiler: { verifier_log: { level: branch, size: 64, max_size: 2GiB } }
exporters: { debug: {} }
service: { pipelines: { profiles: { receivers: [ebpf_profiler], exporters: [debug] } } }
"#,
    );
    assert_has(
        &errs,
        "receivers.ebpf_profiler.verifier_log.size: must be at least 128 bytes (the kernel's minimum)",
    );
    assert_has(
        &errs,
        "receivers.ebpf_profiler.verifier_log.max_size: 2.0 GiB is above the kernel's limit of 1073741823 bytes (UINT_MAX >> 2)",
    );
}

#[test]
#[cfg_attr(missing = "openssl", ignore = "needs openssl")]
fn a_symbolizer_fed_from_the_network_with_host_sources_is_warned_about() {
    let warnings_fed_by = |receiver: &str, sources: &str| {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "gw.yaml",
            &format!(
                "receivers: {{ {receiver}: {{}} }}\nprocessors: {{ symbolizer: {{ {sources} }} }}\nexporters: {{ debug: {{}} }}\nservice: {{ pipelines: {{ profiles: {{ receivers: [{receiver}], processors: [symbolizer], exporters: [debug] }} }} }}\n"
            ),
        );
        stackline::service::validate(&[p]).unwrap()
    };
    let warnings = |sources: &str| warnings_fed_by("otlp", sources);
    let w = warnings("");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("processors.symbolizer")
            && w[0].contains("[\"host\", \"kernel\"]")
            && w[0].contains("sources: [debug_dirs]"),
        "{w:?}"
    );
    assert!(warnings("sources: [debug_dirs]").is_empty());
    // The eBPF receiver's pids and paths are this host's: host sources are right there.
    assert!(warnings_fed_by("ebpf_profiler", "").is_empty());
    // The shipped gateway configuration follows its own advice.
    let tmp = tempfile::tempdir().unwrap();
    let gw = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.yaml");
    let (ok, out) = validate_shipped(&gw, Some(&common::gen_secrets(tmp.path())));
    assert!(ok && !out.contains("symbolizer"), "{out}");
}
