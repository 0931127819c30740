//! OTLP/JSON checked by a reader we did not write: the official protobuf JSON parser
//! with the OpenTelemetry Python protos (PyPI `opentelemetry-proto` 1.45.2, proto
//! v1.10). Every line Stackline writes must parse, and mean the same request again.

use stackline_testkit as common;

use std::time::Duration;

use base64::Engine;
use common::*;
use stackline::otlp::ProfilesRequest;
use stackline::otlp::synth::{every_field, request};

/// The generic protobuf parser reads OTLP's hex ids as base64: undo that to compare.
fn hex_ids_as_official(r: &mut ProfilesRequest) {
    let as_read = |id: &mut Vec<u8>| {
        if id.is_empty() {
            return;
        }
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        *id = base64::engine::general_purpose::STANDARD
            .decode(hex)
            .unwrap_or_default();
    };
    for p in r
        .resource_profiles
        .iter_mut()
        .flat_map(|rp| &mut rp.scope_profiles)
        .flat_map(|sp| &mut sp.profiles)
    {
        as_read(&mut p.profile_id);
    }
    if let Some(d) = &mut r.dictionary {
        for l in &mut d.link_table {
            as_read(&mut l.trace_id);
            as_read(&mut l.span_id);
        }
    }
}

#[test]
#[cfg_attr(
    missing = "python_otlp",
    ignore = "needs Python's opentelemetry-proto (pip install opentelemetry-proto)"
)]
fn every_field_reads_back_the_same_with_the_official_protos() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("every.jsonl");
    let reqs = vec![every_field(), request("svc", 0, 50, 8)];
    let mut text = Vec::new();
    for r in &reqs {
        text.extend(stackline::otlp::json::to_vec(r));
        text.push(b'\n');
    }
    std::fs::write(&path, &text).unwrap();
    let Some(back) = official_parse(&path) else {
        return;
    };
    assert_eq!(back.len(), reqs.len());
    for (mut want, got) in reqs.into_iter().zip(back) {
        hex_ids_as_official(&mut want);
        assert_eq!(got, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    missing = "python_otlp",
    ignore = "needs Python's opentelemetry-proto (pip install opentelemetry-proto)"
)]
async fn the_file_exporter_writes_lines_the_official_parser_reads() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"
receivers:
  otlp: { protocols: { grpc: { endpoint: "{OTLP}" } } }
processors:
  batch: { send_batch_size: 100, timeout: 50ms }
exporters:
  file: { path: "{DIR}/out.jsonl", format: json }
service:
  pipelines: { profiles: { receivers: [otlp], processors: [batch], exporters: [file] } }
  telemetry: { metrics: { address: "{METRICS}" } }
"#;
    let mut s = Stackline::start(dir.path(), config);
    let mut c = client(s.endpoint()).await;
    c.export(every_field()).await.unwrap();
    for i in 0..5 {
        c.export(request("svc", i * 40, 40, 8)).await.unwrap();
    }
    s.sigterm();
    assert!(s.wait(Duration::from_secs(20)).success());
    let path = dir.path().join("out.jsonl");
    let written = read_json_lines(&path);
    assert!(!written.is_empty());
    let Some(back) = official_parse(&path) else {
        return;
    };
    assert_eq!(back.len(), written.len());
    for (mut want, got) in written.into_iter().zip(back) {
        hex_ids_as_official(&mut want);
        assert_eq!(got, want);
    }
}
