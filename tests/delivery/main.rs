//! Delivery guarantees, end to end with the real binary: every exporter accounts for
//! every sample at shutdown, a persistent queue survives SIGKILL, a full disk tears no
//! record, and health tells liveness from readiness.

use common::*;
use stackline::otlp::synth::{decode_samples, request};
use stackline_testkit as common;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

mod accounting;
mod damage;
mod disk_faults;
mod sigkill;

const POOL: u64 = 40;

/// Sends samples `first..first+total` in requests of `per`; returns the acknowledged seqs.
async fn send_all(endpoint: String, first: u64, total: u64, per: u64) -> Vec<u64> {
    let mut c = client(endpoint).await;
    let mut acked = Vec::new();
    let mut start = first;
    while start < first + total {
        let n = per.min(first + total - start);
        if c.export(request("svc", start, n, POOL)).await.is_ok() {
            acked.extend(start..start + n);
        }
        start += n;
    }
    acked
}

/// Checks `accepted + replayed = sent + failed + dropped + kept` for one exporter.
fn assert_accounted(name: &str, f: &BTreeMap<String, i64>) {
    let get = |k: &str| {
        f.get(k)
            .copied()
            .unwrap_or_else(|| panic!("{name}: no `{k}` in {f:?}"))
    };
    assert_eq!(
        get("accepted") + get("replayed"),
        get("sent") + get("failed") + get("dropped") + get("kept"),
        "{name}: samples unaccounted for: {f:?}"
    );
    assert_eq!(get("unaccounted"), 0, "{name}: {f:?}");
}

/// Gateway config with a persistent queue under `{DIR}/queue`.
fn persistent_gateway(backend: &str, sync_interval: &str) -> String {
    format!(
        r#"
receivers:
  otlp: {{ protocols: {{ grpc: {{ endpoint: "{{OTLP}}" }} }} }}
processors:
  batch: {{ send_batch_size: 500, timeout: 50ms }}
exporters:
  otlp/backend:
    endpoint: {backend}
    tls: {{ insecure: true }}
    timeout: 1s
    retry_on_failure: {{ initial_interval: 100ms, max_interval: 300ms, max_elapsed_time: 0s }}
    sending_queue:
      num_consumers: 2
      queue_size: 1000
      storage: {{ directory: "{{DIR}}/queue", max_size: 64MiB, sync_interval: {sync_interval} }}
service:
  pipelines:
    profiles: {{ receivers: [otlp], processors: [batch], exporters: [otlp/backend] }}
  telemetry: {{ metrics: {{ address: "{{METRICS}}" }} }}
  shutdown_timeout: 5s
"#
    )
}

/// Records the exporter counted as damaged.
async fn corrupt_records(s: &Stackline) -> f64 {
    s.metric(
        "stackline_exporter_queue_corrupt_records_total",
        &[("exporter", "otlp/backend")],
    )
    .await
}

/// Waits until the exporter has queued `n` samples (they are on disk by then).
async fn wait_queued(s: &Stackline, n: f64) {
    let ok = eventually(Duration::from_secs(30), async || {
        s.metric(
            "stackline_exporter_accepted_profile_samples_total",
            &[("exporter", "otlp/backend")],
        )
        .await
            >= n
    })
    .await;
    assert!(ok, "the exporter did not take {n} samples:\n{}", s.logs());
}
