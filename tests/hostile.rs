//! Requests shaped to make a gateway do far more work than their size: each must be
//! answered quickly, within a memory bound, and leave the process serving and able to
//! stop cleanly.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// otlp → symbolizer → batch → debug, with `limits` under the receiver.
fn gateway(limits: &str) -> String {
    format!(
        r#"
receivers:
  otlp: {{ protocols: {{ grpc: {{ endpoint: "{{OTLP}}", max_recv_msg_size_mib: 4 }} }}, limits: {{ {limits} }} }}
processors: {{ symbolizer: {{}}, batch: {{ timeout: 100ms }} }}
exporters: {{ debug: {{}} }}
service:
  pipelines: {{ profiles: {{ receivers: [otlp], processors: [symbolizer, batch], exporters: [debug] }} }}
  telemetry: {{ metrics: {{ address: "{{METRICS}}" }} }}
  shutdown_timeout: 5s
"#
    )
}

/// One location, one stack of `depth` entries, `samples` samples pointing at it, each
/// with `process.pid`: about 700 KB on the wire for 200,000 × 50,000.
fn one_deep_shared_stack(depth: usize, samples: usize) -> stackline::otlp::ProfilesRequest {
    let mut req = stackline::otlp::synth::native_request("/x", None, (0, 0), &[0x1000], Some(4242));
    let d = req.dictionary.as_mut().unwrap();
    d.stack_table[1].location_indices = vec![1; depth];
    let p = &mut req.resource_profiles[0].scope_profiles[0].profiles[0];
    let one = p.samples[0].clone();
    p.samples = vec![one; samples];
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_huge_stack_shared_by_many_samples_is_answered_at_once() {
    let req = one_deep_shared_stack(200_000, 50_000);
    let wire = prost::Message::encoded_len(&req);
    eprintln!("request: {wire} bytes on the wire");

    // By default the stack is over limits.max_stack_depth: refused before decoding.
    let dir = tempfile::tempdir().unwrap();
    let mut s = Stackline::start(dir.path(), &gateway(""));
    let t = Instant::now();
    let e = client(s.endpoint())
        .await
        .export(req.clone())
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("limits.max_stack_depth"), "{e:?}");
    assert!(took < Duration::from_secs(2), "refused after {took:?}");
    s.sigterm();
    assert!(s.wait(Duration::from_secs(10)).success(), "{}", s.logs());

    // With the limit raised it is accepted, and every stage does linear work: the
    // symbolizer walks the shared stack once, not once per sample.
    let dir = tempfile::tempdir().unwrap();
    let mut s = Stackline::start(dir.path(), &gateway("max_stack_depth: 1000000"));
    let t = Instant::now();
    client(s.endpoint())
        .await
        .max_encoding_message_size(8 << 20)
        .export(req)
        .await
        .unwrap();
    let took = t.elapsed();
    let rss = s.peak_rss_mib();
    eprintln!("200,000-frame stack × 50,000 samples: answered in {took:?}, peak RSS {rss} MiB");
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    assert!(rss < 256, "peak RSS {rss} MiB");
    // Still serving, and it stops within its drain time.
    client(s.endpoint())
        .await
        .export(stackline::otlp::synth::request("svc", 0, 5, 3))
        .await
        .unwrap();
    let t = Instant::now();
    s.sigterm();
    assert!(s.wait(Duration::from_secs(10)).success(), "{}", s.logs());
    eprintln!("stopped {:?} after SIGTERM", t.elapsed());
}
