//! Requests shaped to make a gateway do far more work than their size: each must be
//! answered quickly, within a memory bound, and leave the process serving and able to
//! stop cleanly.

use stackline_testkit as common;

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

/// One OTLP/HTTP request: about 50 KB of gzip, `Content-Type: application/json`,
/// decompressing to 32 MB of `{"x":[{"a":0},{"a":0},…]}`: four million small objects in
/// a field OTLP does not have, which a reader must skip without building.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_body_of_millions_of_unknown_objects_is_skipped_in_small_memory() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"
receivers:
  otlp:
    protocols: { http: { endpoint: "{HTTP}", max_request_body_size_mib: 33 } }
exporters: { debug: {} }
service:
  pipelines: { profiles: { receivers: [otlp], exporters: [debug] } }
  telemetry: { metrics: { address: "{METRICS}" } }
  shutdown_timeout: 5s
"#;
    let mut s = Stackline::start(dir.path(), cfg);
    let mut body = Vec::with_capacity(33 << 20);
    body.extend_from_slice(b"{\"x\":[");
    for i in 0..4_000_000 {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"a\":0}");
    }
    body.extend_from_slice(b"]}");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &body).unwrap();
    let gz = gz.finish().unwrap();
    eprintln!("{} bytes of gzip, {} bytes of JSON", gz.len(), body.len());
    let before = s.peak_rss_mib();
    let t = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1development/profiles", s.http))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gz)
        .send()
        .await
        .unwrap();
    let took = t.elapsed();
    let status = r.status();
    let text = r.text().await.unwrap();
    let rss = s.peak_rss_mib();
    eprintln!("answered {status} in {took:?}; peak RSS {before} -> {rss} MiB");
    // An empty request: nothing to keep, so OK.
    assert_eq!(status, 200, "{text}");
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    // The decompressed body (32 MiB) is held once, and nothing is built for it.
    assert!(rss < 256, "peak RSS {rss} MiB");
    s.sigterm();
    assert!(s.wait(Duration::from_secs(10)).success(), "{}", s.logs());
}

/// The gateway's CPU time one shape may take. 2 s is the bound for the release binary;
/// tests run the debug one, whose hashing and decoding are several times slower (the
/// 340,000-stack shape: 3 s debug, 218 MiB). CPU time, not wall time, is bounded: it
/// does not move when other work shares the machine (the wall time is printed beside
/// it). `cargo bench --bench gateway_cpu` prices each shape per input byte on the
/// release binary.
const CPU_WITHIN: Duration = if cfg!(debug_assertions) {
    Duration::from_secs(8)
} else {
    Duration::from_secs(2)
};

/// CPU time (user + system, all threads) process `pid` has used so far.
fn cpu_of(pid: i32) -> Duration {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: writes the clock id of `pid` into `clock`.
    assert_eq!(unsafe { libc::clock_getcpuclockid(pid, &mut clock) }, 0);
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the clock's time into `ts`.
    assert_eq!(unsafe { libc::clock_gettime(clock, &mut ts) }, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Every shape of the adversarial corpus (`stackline::otlp::synth::hostile`), sent
/// encoded in advance (OTLP/HTTP, protobuf: the clock measures the gateway, not the
/// client's encoder) to one gateway at its default limits (otlp → symbolizer → batch →
/// debug): each within the limits is accepted, each over them refused with 413; each is
/// answered using at most CPU_WITHIN of the gateway's CPU, its peak RSS stays within 3 × limits.max_decoded_size_mib
/// (128) above the idle process, and the gateway still serves and stops cleanly after
/// all of them. Prints the table (`-- --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_shape_is_answered_in_time_and_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"
receivers:
  otlp: { protocols: { http: { endpoint: "{HTTP}" } } }
processors: { symbolizer: {}, batch: { timeout: 100ms } }
exporters: { debug: {} }
service:
  pipelines: { profiles: { receivers: [otlp], processors: [symbolizer, batch], exporters: [debug] } }
  telemetry: { metrics: { address: "{METRICS}" } }
  shutdown_timeout: 5s
"#;
    let mut s = Stackline::start(dir.path(), cfg);
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1development/profiles", s.http);
    let mut failures = Vec::new();
    eprintln!(
        "{:<58} {:>9} {:>8} {:>8} {:>9}",
        "shape", "wire KiB", "answer", "CPU", "peak RSS"
    );
    for shape in stackline::otlp::synth::hostile::shapes() {
        let name = shape.name;
        let body = prost::Message::encode_to_vec(&shape.request);
        drop(shape.request);
        let wire = body.len();
        s.reset_peak_rss();
        let idle = s.peak_rss_mib();
        let cpu0 = cpu_of(s.pid());
        let t = Instant::now();
        let r = http
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await
            .unwrap();
        let took = t.elapsed();
        let cpu = cpu_of(s.pid()) - cpu0;
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        let rss = s.peak_rss_mib().saturating_sub(idle);
        eprintln!(
            "{name:<58} {:>9} {:>6.0?} {:>6.0?} {:>5} MiB {status}",
            wire >> 10,
            took,
            cpu,
            rss,
        );
        let want = if shape.within_limits { 200 } else { 413 };
        if status.as_u16() != want {
            failures.push(format!("{name}: {status} (want {want}) {text}"));
        }
        if cpu > CPU_WITHIN {
            failures.push(format!(
                "{name}: took {cpu:?} of CPU (answered after {took:?})"
            ));
        }
        // A hang shows as wall time whatever the load.
        if took > 10 * CPU_WITHIN {
            failures.push(format!("{name}: answered after {took:?}"));
        }
        if rss > 3 * 128 {
            failures.push(format!("{name}: peak RSS {rss} MiB above idle"));
        }
    }
    // Still serving, and it stops within its drain time.
    let r = http
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(prost::Message::encode_to_vec(
            &stackline::otlp::synth::request("svc", 0, 5, 3),
        ))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    s.sigterm();
    assert!(s.wait(Duration::from_secs(10)).success(), "{}", s.logs());
    assert!(failures.is_empty(), "{failures:#?}");
}
