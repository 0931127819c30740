//! End to end with the real binary: OTLP clients → receiver → batch → file + OTLP
//! exporter → a real gRPC backend.

use stackline_testkit as common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use stackline::exporters::otlp::OtlpExporterConfig;
use stackline::exporters::otlp::sender::GrpcSender;
use stackline::exporters::shell::{Encoded, Sender};
use stackline::otlp::synth::{decode_samples, duplicate_entries, expected_stack, request};
use stackline::otlp::{ProfilesRequest, check, sample_count};
use tonic::Code;
use tonic::codec::CompressionEncoding;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_samples_arrive_exactly_once_despite_a_failing_backend() {
    let dir = tempfile::tempdir().unwrap();
    let backend_port = ReservedPort::new();
    let backend_addr = backend_port.addr().to_string();
    let backend = Backend::default();
    backend.fail_next.store(3, Ordering::SeqCst);
    let _stop = backend.serve(backend_port).await;
    let mut s = Stackline::start(dir.path(), &gateway_config(&backend_addr, ""));

    let acked = send(s.endpoint(), 0, 10_000, 50, 4).await;
    assert_eq!(acked.len(), 10_000);
    let file = dir.path().join("out/profiles.jsonl");
    let done = eventually(Duration::from_secs(60), async || {
        backend.samples().len() >= 10_000
            && read_json_lines(&file).iter().map(sample_count).sum::<u64>() >= 10_000
    })
    .await;
    assert!(
        done,
        "not everything arrived; backend {} samples\n{}",
        backend.samples().len(),
        s.logs()
    );
    assert_exactly_once("backend", &backend.requests(), &acked, true);
    assert_exactly_once("file", &read_json_lines(&file), &acked, true);
    assert!(
        backend.calls.load(Ordering::SeqCst) > 3,
        "the failed calls were retried"
    );
    // Batching merged 200 requests into far fewer. Each client waits for its answer,
    // which comes once the batch is queued, so a batch holds about one request per client.
    assert!(
        backend.requests().len() <= 60,
        "{} requests",
        backend.requests().len()
    );

    let m = |n: &'static str, l: &'static [(&'static str, &'static str)]| s.metric(n, l);
    assert_eq!(
        m(
            "otelcol_receiver_accepted_profile_samples_total",
            &[("receiver", "otlp"), ("transport", "grpc")]
        )
        .await,
        10_000.0
    );
    assert_eq!(
        m("otelcol_receiver_refused_profile_samples_total", &[]).await,
        0.0
    );
    assert_eq!(
        m(
            "otelcol_processor_incoming_items_total",
            &[("processor", "batch")]
        )
        .await,
        10_000.0
    );
    assert_eq!(
        m(
            "otelcol_processor_outgoing_items_total",
            &[("processor", "batch")]
        )
        .await,
        10_000.0
    );
    assert_eq!(
        m(
            "otelcol_exporter_sent_profile_samples_total",
            &[("exporter", "otlp/backend")]
        )
        .await,
        10_000.0
    );
    assert_eq!(
        m(
            "otelcol_exporter_sent_profile_samples_total",
            &[("exporter", "file")]
        )
        .await,
        10_000.0
    );
    assert_eq!(
        m("otelcol_exporter_send_failed_profile_samples_total", &[]).await,
        0.0
    );
    assert_eq!(
        m("otelcol_exporter_enqueue_failed_profile_samples_total", &[]).await,
        0.0
    );
    assert_eq!(
        m(
            "otelcol_exporter_queue_capacity",
            &[("exporter", "otlp/backend")]
        )
        .await,
        200.0
    );
    assert_eq!(
        m(
            "stackline_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        )
        .await,
        1.0
    );
    let (code, body) = s.get("/health").await;
    assert_eq!(code, 200, "{body}");

    s.sigterm();
    assert!(s.wait(Duration::from_secs(30)).success(), "{}", s.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_for_seconds_delays_but_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let backend_port = ReservedPort::new();
    let backend_addr = backend_port.addr().to_string();
    let mut s = Stackline::start(dir.path(), &gateway_config(&backend_addr, ""));
    let acked = send(s.endpoint(), 0, 2_000, 40, 2).await;

    // While the backend is down the exporter retries and /health names it.
    let unhealthy = eventually(Duration::from_secs(10), async || {
        let (code, body) = s.get("/health").await;
        code == 503 && body.contains("exporter/otlp/backend")
    })
    .await;
    assert!(unhealthy, "{:?}", s.get("/health").await);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let backend = Backend::default();
    let _stop = backend.serve(backend_port).await;
    let done = eventually(Duration::from_secs(30), async || {
        backend.samples().len() >= 2_000
    })
    .await;
    assert!(
        done,
        "backend got {} samples\n{}",
        backend.samples().len(),
        s.logs()
    );
    assert_exactly_once("backend", &backend.requests(), &acked, true);
    assert!(
        eventually(Duration::from_secs(5), async || s.get("/health").await.0
            == 200)
        .await
    );
    assert_eq!(
        s.metric("otelcol_exporter_send_failed_profile_samples_total", &[])
            .await,
        0.0
    );
    s.sigterm();
    assert!(s.wait(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_delivers_everything_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let backend_port = ReservedPort::new();
    let backend_addr = backend_port.addr().to_string();
    let backend = Backend::default();
    // A slow backend keeps requests queued and in flight when the signal comes.
    *backend.delay.lock().unwrap() = Duration::from_millis(150);
    let _stop = backend.serve(backend_port).await;
    let mut s = Stackline::start(
        dir.path(),
        &gateway_config(&backend_addr, "").replace("timeout: 100ms", "timeout: 1s"),
    );

    // Concurrent clients: each waits for its answer, which comes once its data is
    // queued, so several keep requests in the batch and in flight at the signal.
    let mut senders = Vec::new();
    for c in 0..16u64 {
        let endpoint = s.endpoint();
        senders.push(tokio::spawn(async move {
            let mut client = client(endpoint).await;
            let (mut acked, mut sent) = (Vec::new(), Vec::new());
            for i in 0..100_000u64 {
                let first = (i * 16 + c) * 20;
                sent.extend(first..first + 20);
                match client.export(request("svc", first, 20, POOL)).await {
                    Ok(_) => acked.extend(first..first + 20),
                    Err(_) => break,
                }
            }
            (acked, sent)
        }));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.sigterm();
    let (mut acked, mut sent) = (Vec::new(), Vec::new());
    for t in senders {
        let (a, x) = t.await.unwrap();
        acked.extend(a);
        sent.extend(x);
    }
    let sent: std::collections::BTreeSet<u64> = sent.into_iter().collect();
    assert!(s.wait(Duration::from_secs(40)).success(), "{}", s.logs());
    assert!(
        acked.len() > 100,
        "only {} samples were accepted",
        acked.len()
    );

    for (what, reqs) in [
        ("backend", backend.requests()),
        (
            "file",
            read_json_lines(&dir.path().join("out/profiles.jsonl")),
        ),
    ] {
        let got: Vec<u64> = reqs.iter().flat_map(decode_samples).map(|s| s.0).collect();
        let set: std::collections::BTreeSet<u64> = got.iter().copied().collect();
        assert_eq!(set.len(), got.len(), "{what}: duplicates");
        let missing: Vec<_> = acked.iter().filter(|a| !set.contains(a)).collect();
        assert!(
            missing.is_empty(),
            "{what}: {} accepted samples lost, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        assert!(
            set.iter().all(|x| sent.contains(x)),
            "{what}: samples nobody sent"
        );
    }
    assert!(
        s.logs().contains("all data in flight was drained"),
        "{}",
        s.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_the_process_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let backend_port = ReservedPort::new();
    let backend_addr = backend_port.addr().to_string();
    let backend = Backend::default();
    let _stop = backend.serve(backend_port).await;
    let mut s = Stackline::start(dir.path(), &gateway_config(&backend_addr, ""));
    let mut c = client(s.endpoint()).await;

    type Mutation = fn(&mut ProfilesRequest);
    let mutations: Vec<(Mutation, &str)> = vec![
        (
            |r| r.resource_profiles[0].scope_profiles[0].profiles[0].samples[1].stack_index = 999,
            "samples[1].stack_index: stack_table index 999 is out of range",
        ),
        (
            |r| r.dictionary.as_mut().unwrap().stack_table[1].location_indices[0] = 5000,
            "stack_table[1].location_indices[0]: location_table index 5000 is out of range",
        ),
        (
            |r| r.dictionary.as_mut().unwrap().location_table[1].lines[0].function_index = -2,
            "function_table index -2 is out of range",
        ),
        (
            |r| r.dictionary.as_mut().unwrap().function_table[2].name_strindex = 77_777,
            "function_table[2].name_strindex: string_table index 77777 is out of range",
        ),
        (
            |r| {
                r.resource_profiles[0].scope_profiles[0].profiles[0].samples[0].attribute_indices =
                    vec![4242]
            },
            "attribute_table index 4242 is out of range",
        ),
        (
            |r| r.dictionary.as_mut().unwrap().location_table[1].mapping_index = 31,
            "mapping_table index 31 is out of range",
        ),
    ];
    for (mutate, expected) in mutations {
        let mut r = request("svc", 0, 3, POOL);
        mutate(&mut r);
        let e = c.export(r).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains(expected),
            "{} does not contain {expected}",
            e.message()
        );
    }

    // Bytes that are not a protobuf message at all.
    let cfg: OtlpExporterConfig = serde_json::from_value(serde_json::json!({
        "endpoint": s.otlp.to_string(), "tls": {"insecure": true}, "compression": "none"
    }))
    .unwrap();
    let raw = GrpcSender::new(&cfg, "otlp").unwrap();
    let garbage = Encoded {
        bytes: bytes::Bytes::from_static(&[0xff, 0xff, 0xff, 0x0f, 0x0a]),
        samples: 0,
        profiles: 0,
    };
    let e = raw.send(&garbage).await.unwrap_err();
    assert!(
        e.to_string().contains("Internal") || e.to_string().contains("decode"),
        "{e}"
    );

    // A few KB of gzip that would decode to 1,500,000 empty samples (3 MB of protobuf,
    // within max_recv_msg_size_mib; over 100 MB decoded): refused on the wire, naming
    // the limit and its setting.
    let bomb = stackline::otlp::synth::empty_samples_wire(1_500_000);
    let cfg: OtlpExporterConfig = serde_json::from_value(serde_json::json!({
        "endpoint": s.otlp.to_string(), "tls": {"insecure": true}, "compression": "gzip"
    }))
    .unwrap();
    let gz = GrpcSender::new(&cfg, "otlp").unwrap();
    let e = gz
        .send(&Encoded {
            bytes: bomb.into(),
            samples: 1_500_000,
            profiles: 1,
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ResourceExhausted")
            && e.contains("1500000 samples")
            && e.contains("limits.max_samples"),
        "{e}"
    );

    // Over max_recv_msg_size_mib (4 MiB).
    let big = request("svc", 0, 40_000, 40_000);
    assert!(prost::Message::encoded_len(&big) > 4 << 20);
    let e = c.export(big).await.unwrap_err();
    assert_ne!(e.code(), Code::Ok);

    // Still serving.
    assert!(s.is_running());
    c.export(request("svc", 100, 10, POOL)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || backend.samples().len()
            == 10)
        .await
    );
    // 6 requests of 3 bad samples, the garbage (1, its samples unknown), the bomb.
    assert_eq!(
        s.metric(
            "otelcol_receiver_refused_profile_samples_total",
            &[("receiver", "otlp")]
        )
        .await,
        18.0 + 1.0 + 1_500_000.0
    );
    let peak = s.peak_rss_mib();
    eprintln!("gateway peak RSS after the hostile requests: {peak} MiB");
    assert!(peak < 200, "peak RSS {peak} MiB");
    assert_eq!(
        s.metric(
            "otelcol_receiver_accepted_profile_samples_total",
            &[("receiver", "otlp")]
        )
        .await,
        10.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_feeds_two_pipelines_and_an_exporter_serves_both() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Stackline::start(
        dir.path(),
        r#"
receivers:
  otlp: { protocols: { grpc: { endpoint: "{OTLP}" } } }
processors:
  batch: { timeout: 50ms }
exporters:
  file/shared: { path: "{DIR}/shared.jsonl", flush_interval: 50ms }
  file/only_b: { path: "{DIR}/b.jsonl", flush_interval: 50ms }
  debug: { verbosity: detailed, top_stacks: 3 }
service:
  pipelines:
    profiles/a: { receivers: [otlp], processors: [batch], exporters: [file/shared] }
    profiles/b: { receivers: [otlp], exporters: [file/shared, file/only_b, debug] }
  telemetry: { metrics: { address: "{METRICS}" } }
"#,
    );
    let acked = send(s.endpoint(), 0, 300, 30, 1).await;
    let shared = dir.path().join("shared.jsonl");
    let only_b = dir.path().join("b.jsonl");
    assert!(
        eventually(Duration::from_secs(20), async || {
            read_json_lines(&shared)
                .iter()
                .map(sample_count)
                .sum::<u64>()
                == 600
                && read_json_lines(&only_b)
                    .iter()
                    .map(sample_count)
                    .sum::<u64>()
                    == 300
        })
        .await
    );
    // No batch processor in pipeline b: requests pass through as the client sent them.
    assert_exactly_once("file/only_b", &read_json_lines(&only_b), &acked, false);
    let mut counts = BTreeMap::new();
    for (seq, _, _) in read_json_lines(&shared).iter().flat_map(decode_samples) {
        *counts.entry(seq).or_insert(0) += 1;
    }
    assert!(counts.values().all(|&n| n == 2) && counts.len() == 300);
    s.sigterm();
    assert!(s.wait(Duration::from_secs(20)).success());
    let logs = s.logs();
    assert!(
        logs.contains("app::module"),
        "debug exporter printed no stacks:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_limiter_refuses_with_a_retryable_status_and_counts_what_it_refused() {
    // Two gateways: one allowed far more than it uses, one allowed less than it has.
    for (limit, refuse) in [(4096, false), (2, true)] {
        let dir = tempfile::tempdir().unwrap();
        let backend_port = ReservedPort::new();
        let backend_addr = backend_port.addr().to_string();
        let backend = Backend::default();
        let _stop = backend.serve(backend_port).await;
        let cfg = gateway_config(&backend_addr, "")
            .replace(
                "processors:\n",
                &format!(
                    "processors:\n  memory_limiter: {{ check_interval: 50ms, limit_mib: {limit}, spike_limit_mib: 1 }}\n"
                ),
            )
            .replace("processors: [batch]", "processors: [memory_limiter, batch]");
        let s = Stackline::start(dir.path(), &cfg);
        let mut c = client(s.endpoint()).await;
        // The limiter measures on its own timer; give it a first measurement.
        assert!(
            eventually(Duration::from_secs(10), async || s
                .metric("stackline_memory_limiter_rss_bytes", &[])
                .await
                > 0.0)
            .await
        );
        let r = c.export(request("svc", 0, 10, POOL)).await;
        if refuse {
            let e = r.unwrap_err();
            // UNAVAILABLE: the collector's exporters (and ours) retry it.
            assert_eq!(e.code(), Code::Unavailable, "{e:?}");
            assert!(e.message().contains("memory limiter"), "{}", e.message());
            assert_eq!(
                s.metric("stackline_memory_limiter_refusing", &[]).await,
                1.0
            );
            assert_eq!(
                s.metric("otelcol_processor_refused_profile_samples_total", &[])
                    .await,
                10.0
            );
            // Refused to a client that retries: not lost, so not counted as dropped.
            assert_eq!(
                s.metric(
                    "stackline_pipeline_dropped_samples_total",
                    &[("reason", "memory_limit")]
                )
                .await,
                0.0
            );
            assert!(backend.samples().is_empty());
        } else {
            r.unwrap();
            assert!(
                eventually(Duration::from_secs(10), async || backend.samples().len()
                    == 10)
                .await
            );
            assert_eq!(
                s.metric("stackline_memory_limiter_refusing", &[]).await,
                0.0
            );
        }
    }
}

/// Opens a raw HTTP/2 connection to `endpoint`; with `in_flight`, starts an Export whose
/// body never ends. Returns when the server closed the connection, and how long after the
/// connect that was.
async fn connection_lifetime(endpoint: &str, in_flight: bool) -> Duration {
    let t0 = std::time::Instant::now();
    let tcp = tokio::net::TcpStream::connect(endpoint.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut _stream = None;
    if in_flight {
        let req = http::Request::post(format!(
            "{endpoint}/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
        h2 = h2.ready().await.unwrap();
        let (_response, send) = h2.send_request(req, false).unwrap();
        _stream = Some(send);
    }
    // Ends (Ok or Err) once the server has closed the TCP connection.
    let _ = driver.await;
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connection_age_sends_goaway_and_the_grace_bounds_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let backend_port = ReservedPort::new();
    let backend_addr = backend_port.addr().to_string();
    let backend = Backend::default();
    let _stop = backend.serve(backend_port).await;
    let cfg = gateway_config(&backend_addr, "").replace(
        "max_recv_msg_size_mib: 4",
        "max_recv_msg_size_mib: 4, keepalive: { server_parameters: { max_connection_age: 1s, max_connection_age_grace: 6s } }",
    );
    let s = Stackline::start(dir.path(), &cfg);
    let endpoint = s.endpoint();
    // Idle at its age: GOAWAY, and the connection closes at once, long before the grace
    // is over (tonic's own grace handling kept it to age + grace, then dropped it).
    let (idle, busy) = tokio::join!(
        connection_lifetime(&endpoint, false),
        connection_lifetime(&endpoint, true)
    );
    assert!(
        idle < Duration::from_secs(5),
        "idle connection lived {idle:?}"
    );
    // A request still open at the age keeps the connection for the grace, not longer.
    assert!(
        busy >= Duration::from_secs(7) && busy < Duration::from_secs(20),
        "a connection with a request in flight lived {busy:?}"
    );
    // New connections are served meanwhile and after.
    let mut c = client(endpoint).await;
    c.export(request("svc", 0, 10, POOL)).await.unwrap();
}
