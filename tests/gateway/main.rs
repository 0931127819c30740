//! End to end with the real binary: OTLP clients → receiver → batch → file + OTLP
//! exporter → a real gRPC backend.

use common::*;
use stackline::exporters::otlp::OtlpExporterConfig;
use stackline::exporters::otlp::sender::GrpcSender;
use stackline::exporters::shell::{Encoded, Sender};
use stackline::otlp::synth::{decode_samples, duplicate_entries, expected_stack, request};
use stackline::otlp::{ProfilesRequest, check, sample_count};
use stackline_testkit as common;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tonic::Code;
use tonic::codec::CompressionEncoding;

mod exactly_once;
mod refusals;
mod topology;

const POOL: u64 = 40;

fn gateway_config(backend: &str, extra_exporter: &str) -> String {
    format!(
        r#"
receivers:
  otlp: {{ protocols: {{ grpc: {{ endpoint: "{{OTLP}}", max_recv_msg_size_mib: 4 }} }} }}
processors:
  batch: {{ send_batch_size: 1000, send_batch_max_size: 1500, timeout: 100ms }}
exporters:
  otlp/backend:
    endpoint: {backend}
    tls: {{ insecure: true }}
    compression: zstd
    timeout: 2s
    retry_on_failure: {{ initial_interval: 100ms, max_interval: 400ms, max_elapsed_time: 120s }}
    sending_queue: {{ num_consumers: 4, queue_size: 200 }}
  file: {{ path: "{{DIR}}/out/profiles.jsonl", flush_interval: 100ms }}
{extra_exporter}
service:
  pipelines:
    profiles: {{ receivers: [otlp], processors: [batch], exporters: [otlp/backend, file] }}
  telemetry: {{ metrics: {{ address: "{{METRICS}}" }} }}
  shutdown_timeout: 20s
"#
    )
}

/// Sends samples `range` in requests of `per` samples from `clients` concurrent clients;
/// returns the seqs of every acknowledged request.
async fn send(endpoint: String, first: u64, total: u64, per: u64, clients: u64) -> Vec<u64> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let endpoint = endpoint.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = client(endpoint).await;
            client = if c % 2 == 0 {
                client.send_compressed(CompressionEncoding::Gzip)
            } else {
                client.send_compressed(CompressionEncoding::Zstd)
            };
            let mut acked = Vec::new();
            let mut start = first + c * per;
            while start < first + total {
                let n = per.min(first + total - start);
                let req = request(&format!("svc{}", c % 3), start, n, POOL);
                client.export(req).await.unwrap();
                acked.extend(start..start + n);
                start += per * clients;
            }
            acked
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Asserts every seq in `expected` appears exactly once, with its stack, and nothing
/// else; with `merged`, also that the dictionaries hold no duplicate entries.
fn assert_exactly_once(what: &str, reqs: &[ProfilesRequest], expected: &[u64], merged: bool) {
    let mut seen = BTreeMap::new();
    for r in reqs {
        check(r).unwrap_or_else(|e| panic!("{what}: invalid request: {e}"));
        if merged {
            assert_eq!(
                duplicate_entries(r),
                Vec::<String>::new(),
                "{what}: dictionary has duplicates"
            );
        }
        for (seq, stack, _) in decode_samples(r) {
            assert_eq!(
                stack,
                expected_stack(seq, POOL),
                "{what}: wrong stack for seq {seq}"
            );
            *seen.entry(seq).or_insert(0) += 1;
        }
    }
    let dup: Vec<_> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| *s)
        .collect();
    assert!(
        dup.is_empty(),
        "{what}: seqs delivered more than once: {dup:?}"
    );
    let mut want = expected.to_vec();
    want.sort();
    let got: Vec<u64> = seen.into_keys().collect();
    assert_eq!(got.len(), want.len(), "{what}: wrong number of samples");
    assert_eq!(got, want, "{what}: wrong samples");
}
