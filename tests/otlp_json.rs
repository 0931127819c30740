//! OTLP/JSON checked by a reader we did not write: the official protobuf JSON parser
//! with the OpenTelemetry Python protos (PyPI `opentelemetry-proto` 1.45.2, proto
//! v1.10). Every line Stackline writes must parse, and mean the same request again.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::*;
use prost::Message;
use stackline::otlp::ProfilesRequest;
use stackline::otlp::synth::{every_field, request};

/// Parses each OTLP/JSON line of `path` with the official parser and returns the
/// requests it read, as protobuf decoded here; None if Python or the protos are missing.
fn official_parse(path: &Path) -> Option<Vec<ProfilesRequest>> {
    let script = r#"
import sys
from google.protobuf import json_format
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as p
out = open(sys.argv[2], "wb")
for n, line in enumerate(open(sys.argv[1], encoding="utf-8")):
    m = p.ExportProfilesServiceRequest()
    try:
        json_format.Parse(line, m)
    except Exception as e:
        sys.exit(f"line {n + 1}: {e}")
    b = m.SerializeToString()
    out.write(len(b).to_bytes(4, "big") + b)
"#;
    let out = path.with_extension("official.binpb");
    let r = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .arg(&out)
        .output();
    match r {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            if err.contains("No module named") {
                stackline::testing::skip(
                    "OTLP/JSON conformance",
                    "pip install opentelemetry-proto==1.45.2 (.ci/run installs it)",
                );
                return None;
            }
            panic!("the official parser refused the file: {err}");
        }
        Err(e) => {
            stackline::testing::skip("OTLP/JSON conformance", &format!("python3: {e}"));
            return None;
        }
    }
    let bytes = std::fs::read(&out).unwrap();
    let mut rest = &bytes[..];
    let mut reqs = Vec::new();
    while !rest.is_empty() {
        let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        reqs.push(ProfilesRequest::decode(&rest[4..4 + n]).unwrap());
        rest = &rest[4 + n..];
    }
    Some(reqs)
}

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
