//! OTLP over HTTP both ways, bearer-token auth on every protocol, and the bounds of the
//! HTTP listeners, against the real binary, real sockets and a real HTTP client.

use common::*;
use prost::Message;
use stackline::otlp::ProfilesRequest;
use stackline::otlp::collector::ExportProfilesServiceResponse;
use stackline::otlp::synth::request;
use stackline_testkit as common;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod exporter;
mod listeners;
mod receiver;

const PATH: &str = "/v1development/profiles";

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn samples_in(reqs: &[ProfilesRequest]) -> u64 {
    reqs.iter().map(stackline::otlp::sample_count).sum()
}

/// A gateway: OTLP over gRPC and HTTP, both behind the token in `{DIR}/token`, into a
/// JSON-lines file.
fn gateway(dir: &std::path::Path, http_extra: &str) -> Stackline {
    std::fs::write(dir.join("token"), "s3cret-token\n").unwrap();
    let cfg = format!(
        r#"
receivers:
  otlp:
    limits: {{ max_samples: 100000 }}
    protocols:
      grpc: {{ endpoint: "{{OTLP}}", auth: {{ bearer_token_file: "{{DIR}}/token" }} }}
      http: {{ endpoint: "{{HTTP}}", auth: {{ bearer_token_file: "{{DIR}}/token" }}, max_request_body_size_mib: 1 {http_extra} }}
exporters:
  file: {{ path: "{{DIR}}/out.jsonl", format: json, flush_interval: 100ms }}
service:
  pipelines: {{ profiles: {{ receivers: [otlp], exporters: [file] }} }}
  telemetry: {{ metrics: {{ address: "{{METRICS}}" }} }}
"#
    );
    Stackline::start(dir, &cfg)
}
