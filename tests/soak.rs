//! A soak: the adversarial corpus and slow-connection attacks run against one gateway
//! concurrently with valid traffic, for a bounded time. Valid traffic is delivered
//! exactly once, peak RSS stays under its bound, and the process stops cleanly within
//! its drain timeout afterwards.
//!
//! `cargo test --test soak` runs it for 10 s; `scripts/soak.sh SECONDS` runs the long
//! version (release build, `STACKLINE_SOAK_SECS`).

use stackline_testkit as common;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use stackline::otlp::synth::request;

const POOL: u64 = 40;
/// The receiver's budget of requests in flight in this test (`max_in_flight_mib`).
const BUDGET_MIB: u64 = 128;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_beside_valid_traffic_lose_nothing_and_stay_within_memory() {
    let secs: u64 = std::env::var("STACKLINE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::default();
    let port = ReservedPort::new();
    let cfg = format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "{{OTLP}}" }}
      http: {{ endpoint: "{{HTTP}}", read_header_timeout: 2s, read_timeout: 5s, max_connections: 64 }}
    max_in_flight_mib: {BUDGET_MIB}
processors:
  symbolizer: {{ sources: [debug_dirs] }}
  batch: {{ send_batch_size: 2000, timeout: 100ms }}
exporters:
  otlp:
    endpoint: {}
    tls: {{ insecure: true }}
    timeout: 10s
    sending_queue: {{ queue_size: 1000 }}
service:
  pipelines: {{ profiles: {{ receivers: [otlp], processors: [symbolizer, batch], exporters: [otlp] }} }}
  telemetry: {{ metrics: {{ address: "{{METRICS}}" }} }}
  shutdown_timeout: 10s
"#,
        port.addr()
    );
    let _stop_backend = backend.serve(port).await;
    let mut s = Stackline::start(dir.path(), &cfg);
    let idle = s.peak_rss_mib();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let stop = Arc::new(AtomicBool::new(false));

    // Valid traffic: 50 samples a request, one after another, each acknowledged or not.
    let valid = {
        let (endpoint, stop) = (s.endpoint(), stop.clone());
        tokio::spawn(async move {
            let mut c = client(endpoint).await;
            let (mut acked, mut refused, mut seq) = (Vec::new(), 0u64, 0u64);
            while !stop.load(Ordering::SeqCst) {
                match c.export(request("valid", seq, 50, POOL)).await {
                    Ok(_) => acked.extend(seq..seq + 50),
                    // Refused while the budget is spent: the client would retry.
                    Err(_) => refused += 1,
                }
                seq += 50;
            }
            (acked, refused)
        })
    };

    // The corpus, over OTLP/HTTP, encoded once, in a loop.
    let corpus: Vec<(&'static str, Vec<u8>)> = stackline::otlp::synth::hostile::shapes()
        .into_iter()
        .map(|sh| (sh.name, prost::Message::encode_to_vec(&sh.request)))
        .collect();
    let hostile = {
        let (url, stop) = (
            format!("http://{}/v1development/profiles", s.http),
            stop.clone(),
        );
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut answers = BTreeMap::<u16, u64>::new();
            'outer: loop {
                for (_, body) in &corpus {
                    if stop.load(Ordering::SeqCst) {
                        break 'outer;
                    }
                    let r = http
                        .post(&url)
                        .header("content-type", "application/x-protobuf")
                        .body(body.clone())
                        .timeout(Duration::from_secs(30))
                        .send()
                        .await;
                    *answers
                        .entry(r.map_or(0, |r| r.status().as_u16()))
                        .or_default() += 1;
                }
            }
            answers
        })
    };

    // Slow connections: every 100 ms one more that says nothing, one that sends headers
    // and trickles a body, and one idle HTTP/2 connection.
    let slow = {
        let (http, grpc, stop) = (s.http, s.otlp, stop.clone());
        tokio::task::spawn_blocking(move || {
            let mut held = Vec::new();
            let mut opened = 0u64;
            while !stop.load(Ordering::SeqCst) {
                for target in [http, grpc] {
                    if let Ok(c) = std::net::TcpStream::connect(target) {
                        held.push(c);
                        opened += 1;
                    }
                }
                if let Ok(mut c) = std::net::TcpStream::connect(http) {
                    let _ = c.write_all(
                        b"POST /v1development/profiles HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\ncontent-length: 100000\r\n\r\nxx",
                    );
                    held.push(c);
                    opened += 1;
                }
                for c in held.iter_mut().step_by(7) {
                    let _ = c.write_all(b"x");
                }
                // Keep the most recent few hundred; older ones are dropped (closed).
                if held.len() > 300 {
                    held.drain(..100);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            opened
        })
    };

    // Peak RSS, sampled.
    let pid = s.pid();
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(status_mib(pid, "VmRSS"), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    tokio::time::sleep(deadline.saturating_duration_since(Instant::now())).await;
    stop.store(true, Ordering::SeqCst);
    let (acked, refused) = valid.await.unwrap();
    let answers = hostile.await.unwrap();
    let opened = slow.await.unwrap();
    sampler.await.unwrap();

    // Every acknowledged valid sample arrives, exactly once. The backend also holds the
    // corpus (millions of samples): only the "valid" service's samples are read, and
    // each request only once.
    let mut count = BTreeMap::<u64, u32>::new();
    let mut read = 0;
    let mut tally = |count: &mut BTreeMap<u64, u32>| {
        let reqs = backend.received.lock().unwrap();
        for r in &reqs[read..] {
            for seq in valid_seqs(r) {
                *count.entry(seq).or_default() += 1;
            }
        }
        read = reqs.len();
    };
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        tally(&mut count);
        if acked.iter().all(|a| count.contains_key(a)) || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let missing = acked.iter().filter(|a| !count.contains_key(a)).count();
    let twice = count.values().filter(|&&n| n > 1).count();
    let hwm = s.peak_rss_mib();
    eprintln!(
        "soak {secs} s: valid {} samples acknowledged ({refused} requests refused for a retry), {missing} missing, {twice} delivered twice; corpus answers {answers:?}; {opened} slow connections; RSS idle {idle} MiB, peak sampled {} MiB, VmHWM {hwm} MiB",
        acked.len(),
        peak.load(Ordering::SeqCst)
    );
    assert_eq!(
        missing,
        0,
        "acknowledged samples never arrived\n{}",
        s.logs()
    );
    assert_eq!(twice, 0, "valid samples delivered more than once");
    assert!(acked.len() >= 1_000, "too little valid traffic got through");
    assert!(
        answers.get(&200).copied().unwrap_or(0) >= 1,
        "no corpus request was served: {answers:?}"
    );
    // The receiver holds at most BUDGET_MIB of (estimated) requests; the stages after it
    // up to about three times what they hold (tests/hostile.rs measures it per shape).
    let bound = idle + 3 * BUDGET_MIB + 64;
    assert!(
        hwm <= bound,
        "peak RSS {hwm} MiB over {bound} MiB (idle {idle} + 3 x {BUDGET_MIB} + 64)"
    );
    // And it stops cleanly within its drain time (shutdown_timeout 10s).
    let t = Instant::now();
    s.sigterm();
    assert!(s.wait(Duration::from_secs(15)).success(), "{}", s.logs());
    eprintln!("stopped {:?} after SIGTERM", t.elapsed());
}

/// The `seq` of every sample of the "valid" service in `req`.
fn valid_seqs(req: &stackline::otlp::ProfilesRequest) -> Vec<u64> {
    use stackline::otlp::common::any_value::Value;
    let Some(d) = req.dictionary.as_ref() else {
        return Vec::new();
    };
    let seq_key = d
        .string_table
        .iter()
        .position(|s| s == stackline::otlp::synth::SEQ_KEY);
    let mut out = Vec::new();
    for rp in &req.resource_profiles {
        let valid = rp.resource.as_ref().is_some_and(|r| {
            r.attributes.iter().any(|kv| {
                kv.key == "service.name"
                    && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()), Some(Value::StringValue(s)) if s == "valid")
            })
        });
        if !valid {
            continue;
        }
        for p in rp.scope_profiles.iter().flat_map(|s| &s.profiles) {
            for smp in &p.samples {
                let seq = smp.attribute_indices.iter().find_map(|&a| {
                    let a = d.attribute_table.get(a as usize)?;
                    (Some(a.key_strindex as usize) == seq_key).then_some(())?;
                    match a.value.as_ref()?.value.as_ref()? {
                        Value::IntValue(v) => Some(*v as u64),
                        _ => None,
                    }
                });
                out.extend(seq);
            }
        }
    }
    out
}
