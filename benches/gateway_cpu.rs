//! The gateway's own CPU per sample, with the client and the sink in another process
//! (this one) and the gateway the real release binary: otlp receiver (checks and
//! decode limits) → batch → otlp exporter, no compression either way. Beside it, in
//! the same run, the CPU of a bare prost decode + encode of the same requests: the
//! least any gateway must spend. Prints both and their ratio (the goal is ≤ 3).
//!
//! `cargo bench --bench gateway_cpu`. Two sizes are sent and the marginal cost is
//! taken between them, so the gateway's start-up and idle CPU cancel out. Then each
//! shape of the adversarial corpus (`synth::hostile`) within the default limits: the
//! gateway's CPU per input byte beside a bare prost decode of the same bytes.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prost::Message;
use stackline::otlp::collector::profiles_service_client::ProfilesServiceClient;
use stackline::otlp::collector::profiles_service_server::{ProfilesService, ProfilesServiceServer};
use stackline::otlp::collector::{ExportProfilesServiceRequest, ExportProfilesServiceResponse};
use stackline::otlp::{ProfilesRequest, sample_count, synth};

const PER_REQUEST: u64 = 50;
const POOL: u64 = 200;

#[derive(Clone, Default)]
struct Sink(Arc<AtomicU64>);

#[tonic::async_trait]
impl ProfilesService for Sink {
    async fn export(
        &self,
        r: tonic::Request<ExportProfilesServiceRequest>,
    ) -> Result<tonic::Response<ExportProfilesServiceResponse>, tonic::Status> {
        self.0
            .fetch_add(sample_count(r.get_ref()), Ordering::SeqCst);
        Ok(tonic::Response::new(Default::default()))
    }
}

/// CPU time (user + system) a process has used so far, to the nanosecond (the
/// scheduler's runtime through the process's CPU clock, not /proc's 10 ms ticks).
fn cpu_of(pid: u32) -> Duration {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: writes the clock id of `pid` into `clock`.
    assert_eq!(
        unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) },
        0
    );
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the clock's time into `ts`.
    assert_eq!(unsafe { libc::clock_gettime(clock, &mut ts) }, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of this thread so far.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn requests(first: u64, n: u64) -> Vec<ProfilesRequest> {
    (0..n)
        .map(|i| synth::request("svc", (first + i) * PER_REQUEST, PER_REQUEST, POOL))
        .collect()
}

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sink = Sink::default();
    let sink_listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let sink_addr: SocketAddr = sink_listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
receivers: {{ otlp: {{ protocols: {{ grpc: {{ endpoint: "127.0.0.1:0" }} }} }} }}
processors: {{ batch: {{ send_batch_size: 5000, send_batch_max_size: 10000, timeout: 50ms }} }}
exporters: {{ otlp: {{ endpoint: "{sink_addr}", tls: {{ insecure: true }}, compression: none }} }}
service:
  pipelines: {{ profiles: {{ receivers: [otlp], processors: [batch], exporters: [otlp] }} }}
  telemetry: {{ metrics: {{ address: "127.0.0.1:0" }}, logs: {{ level: warn }} }}
"#
        ),
    )
    .unwrap();
    rt.block_on(async {
        let l = sink_listener;
        let svc = ProfilesServiceServer::new(sink.clone()).max_decoding_message_size(256 << 20);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
    });
    let ready = dir.path().join("ready.json");
    let gw = Gateway(
        Command::new(env!("CARGO_BIN_EXE_stackline"))
            .arg("--config")
            .arg(&cfg)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the stackline binary"),
    );
    let pid = gw.0.id();
    let client = rt.block_on(async {
        let until = Instant::now() + Duration::from_secs(30);
        let recv = loop {
            // Written once the pipeline runs, with the port the receiver got.
            if let Some(r) = std::fs::read_to_string(&ready)
                .ok()
                .and_then(|t| serde_json::from_str::<stackline::net::listen::Ready>(&t).ok())
            {
                break r.listeners["receivers.otlp.protocols.grpc.endpoint"];
            }
            assert!(Instant::now() < until, "the gateway did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        loop {
            match ProfilesServiceClient::connect(format!("http://{recv}")).await {
                Ok(c) => break c.max_encoding_message_size(256 << 20),
                Err(_) if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("the gateway did not start: {e}"),
            }
        }
    });
    // Sends `reqs` from 40 concurrent streams and waits until the sink has them all;
    // returns the gateway's CPU time meanwhile.
    let run = |reqs: Vec<ProfilesRequest>| -> (Duration, u64) {
        let samples: u64 = reqs.iter().map(sample_count).sum();
        rt.block_on(async {
            let before = sink.0.load(Ordering::SeqCst);
            let cpu0 = cpu_of(pid);
            let mut tasks = Vec::new();
            let per = reqs.len().div_ceil(40);
            for chunk in reqs.chunks(per) {
                let mut c = client.clone();
                let chunk = chunk.to_vec();
                tasks.push(tokio::spawn(async move {
                    for r in chunk {
                        c.export(r).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            while sink.0.load(Ordering::SeqCst) < before + samples {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            // Let the exporter finish its bookkeeping.
            tokio::time::sleep(Duration::from_millis(100)).await;
            (cpu_of(pid) - cpu0, samples)
        })
    };
    // Warm up (connections, allocator), then short and long runs in turn, five times;
    // the marginal cost per sample of each pair, and their median.
    run(requests(0, 200));
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (short_len, long_len) = (400u64, 2_000u64);
    let mut gateway = Vec::new();
    let mut cpus = Vec::new();
    for round in 0..5u64 {
        let base = 100_000 * (round + 1);
        let (short_cpu, short_n) = run(requests(base, short_len));
        let (long_cpu, long_n) = run(requests(base + 10_000, long_len));
        gateway.push(
            (long_cpu.as_nanos() as f64 - short_cpu.as_nanos() as f64) / (long_n - short_n) as f64,
        );
        cpus.push((short_cpu, long_cpu));
    }

    // The ceiling: decode and re-encode the same requests, measured the same way.
    let ceiling = |reqs: &[ProfilesRequest]| -> Duration {
        let wire: Vec<Vec<u8>> = reqs.iter().map(Message::encode_to_vec).collect();
        let t0 = thread_cpu();
        let mut bytes = 0usize;
        for w in &wire {
            let r = ExportProfilesServiceRequest::decode(w.as_slice()).unwrap();
            bytes += r.encode_to_vec().len();
        }
        std::hint::black_box(bytes);
        thread_cpu() - t0
    };
    let mut prost = Vec::new();
    for round in 0..5u64 {
        let base = 100_000 * (round + 1);
        let c_short = ceiling(&requests(base, short_len));
        let c_long = ceiling(&requests(base + 10_000, long_len));
        prost.push(
            (c_long.as_nanos() as f64 - c_short.as_nanos() as f64)
                / ((long_len - short_len) * PER_REQUEST) as f64,
        );
    }
    // The adversarial corpus: each shape within the limits, three times, the gateway's
    // CPU per input byte beside a bare prost decode of the same bytes.
    let mut shapes = Vec::new();
    for shape in synth::hostile::shapes()
        .into_iter()
        .filter(|s| s.within_limits)
    {
        let wire = shape.request.encoded_len() as f64;
        // One at a time: three at once can be over the receiver's in-flight budget.
        let cpu: Duration = (0..3).map(|_| run(vec![shape.request.clone()]).0).sum();
        let encoded = shape.request.encode_to_vec();
        let t0 = thread_cpu();
        for _ in 0..3 {
            std::hint::black_box(ExportProfilesServiceRequest::decode(encoded.as_slice()).unwrap());
        }
        let decode = thread_cpu() - t0;
        shapes.push((
            shape.name,
            wire,
            cpu.as_nanos() as f64 / (3.0 * wire),
            decode.as_nanos() as f64 / (3.0 * wire),
        ));
    }
    let ratios: Vec<f64> = gateway.iter().zip(&prost).map(|(g, p)| g / p).collect();
    let (gateway_ns, prost_ns) = (median(gateway.clone()), median(prost.clone()));
    let (short_n, long_n) = (short_len * PER_REQUEST, long_len * PER_REQUEST);
    drop(gw);
    println!("gateway (separate process): receiver → batch → otlp exporter, no compression");
    println!("  gateway CPU per sample:          {:>8.0} ns", gateway_ns);
    println!("  prost decode + encode per sample:{:>8.0} ns", prost_ns);
    println!(
        "  ratio gateway / prost:           {:>8.2}  (goal ≤ 3; medians of 5 rounds)",
        gateway_ns / prost_ns
    );
    println!(
        "  per round: gateway {:.0?} ns, prost {:.0?} ns, ratios {:.2?}",
        gateway, prost, ratios
    );
    println!(
        "  (marginal between {short_n} and {long_n} samples; gateway CPU per round {:?})",
        cpus
    );
    println!("adversarial shapes (synth::hostile), 3 of each: CPU per input byte");
    println!(
        "  {:<58} {:>9} {:>10} {:>10} {:>7}",
        "shape", "wire KiB", "gateway", "prost", "ratio"
    );
    for (name, wire, g, p) in shapes {
        println!(
            "  {name:<58} {:>9.0} {:>7.1} ns {:>7.1} ns {:>7.1}",
            wire / 1024.0,
            g,
            p,
            g / p
        );
    }
}
