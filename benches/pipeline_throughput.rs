//! Samples per second through receiver → batch → OTLP exporter over loopback, beside
//! the ceiling of the same requests' raw prost decode + encode, measured in one run.
//!
//! Run with `cargo bench --bench pipeline_throughput`. Criterion prints each
//! measurement; the closing lines print both rates and their ratio.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::Tally;
use stackline_testkit as common;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use prost::Message;
use stackline::config::Config;
use stackline::otlp::collector::profiles_service_client::ProfilesServiceClient;
use stackline::otlp::collector::profiles_service_server::{ProfilesService, ProfilesServiceServer};
use stackline::otlp::collector::{ExportProfilesServiceRequest, ExportProfilesServiceResponse};
use stackline::otlp::{ProfilesRequest, sample_count, synth};
use stackline::pipeline::{Factories, Graph};
use stackline::telemetry::Health;
use tokio::sync::Notify;

const REQUESTS: u64 = 200;
const PER_REQUEST: u64 = 50;
const SAMPLES: u64 = REQUESTS * PER_REQUEST;

static PIPELINE: Tally = Tally::new();
static CEILING: Tally = Tally::new();

#[derive(Clone, Default)]
struct Sink {
    samples: Arc<AtomicU64>,
    notify: Arc<Notify>,
}

#[tonic::async_trait]
impl ProfilesService for Sink {
    async fn export(
        &self,
        r: tonic::Request<ExportProfilesServiceRequest>,
    ) -> Result<tonic::Response<ExportProfilesServiceResponse>, tonic::Status> {
        self.samples
            .fetch_add(sample_count(r.get_ref()), Ordering::SeqCst);
        self.notify.notify_waiters();
        Ok(tonic::Response::new(Default::default()))
    }
}

fn workload() -> Vec<ProfilesRequest> {
    (0..REQUESTS)
        .map(|i| synth::request("svc", i * PER_REQUEST, PER_REQUEST, 200))
        .collect()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let reqs = workload();
    let encoded: Vec<Vec<u8>> = reqs.iter().map(|r| r.encode_to_vec()).collect();

    // The pipeline: a real graph built from config, a real gRPC sink.
    let sink = Sink::default();
    let (running, mut client) = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink_addr = l.local_addr().unwrap();
        let svc = ProfilesServiceServer::new(sink.clone()).max_decoding_message_size(256 << 20);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        let cfg = Config::from_yaml(
            "bench",
            &format!(
                r#"
receivers: {{ otlp: {{ protocols: {{ grpc: {{ endpoint: "127.0.0.1:0" }} }} }} }}
processors: {{ batch: {{ send_batch_size: 5000, timeout: 50ms }} }}
exporters: {{ otlp: {{ endpoint: "{sink_addr}", tls: {{ insecure: true }}, compression: none }} }}
service: {{ pipelines: {{ profiles: {{ receivers: [otlp], processors: [batch], exporters: [otlp] }} }} }}
"#
            ),
        )
        .unwrap();
        let running = Graph::build(&cfg, &Factories::builtin()).unwrap().start(&Health::default()).await.unwrap();
        let recv = stackline::net::listen::bound()["receivers.otlp.protocols.grpc.endpoint"];
        let client = ProfilesServiceClient::connect(format!("http://{recv}"))
            .await
            .unwrap()
            .max_encoding_message_size(256 << 20);
        (running, client)
    });

    let mut g = c.benchmark_group("profiles");
    g.throughput(Throughput::Elements(SAMPLES));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("pipeline_receiver_batch_exporter", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let before = sink.samples.load(Ordering::SeqCst);
                    let start = Instant::now();
                    // Send from 40 concurrent streams, as many agents would: each waits
                    // for its answer, which comes once its batch is queued.
                    let mut tasks = Vec::new();
                    for chunk in reqs.chunks(reqs.len() / 40) {
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
                    while sink.samples.load(Ordering::SeqCst) < before + SAMPLES {
                        let n = sink.notify.notified();
                        if sink.samples.load(Ordering::SeqCst) >= before + SAMPLES {
                            break;
                        }
                        let _ = tokio::time::timeout(Duration::from_millis(5), n).await;
                    }
                    let d = start.elapsed();
                    PIPELINE.add(d, SAMPLES);
                    total += d;
                }
                total
            })
        })
    });
    g.bench_function("ceiling_prost_decode_encode", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for bytes in &encoded {
                    let r = ProfilesRequest::decode(bytes.as_slice()).unwrap();
                    std::hint::black_box(r.encode_to_vec());
                }
            }
            let d = start.elapsed();
            CEILING.add(d, SAMPLES * iters);
            d
        })
    });
    g.finish();
    rt.block_on(running.shutdown());
    let _ = &mut client;
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let (p, c) = (PIPELINE.rate(), CEILING.rate());
    println!();
    println!(
        "pipeline (receiver → batch → otlp exporter, loopback gRPC): {:>12.0} samples/s",
        p
    );
    println!(
        "ceiling  (prost decode + encode of the same requests):      {:>12.0} samples/s",
        c
    );
    println!("ratio pipeline / ceiling: {:.3}", p / c);
}
