//! Cost of the persistent sending queue: samples per second through the exporter shell
//! (encode, queue, take, send to a sender that only counts) with the queue in memory,
//! on disk with an fsync per request (`sync_interval: 0s`, the default) and on disk
//! synced every second, measured in one run. Prints the rates and their ratios to the
//! in-memory queue.
//!
//! Run with `cargo bench --bench queue` (the disk queue lives in a temporary directory
//! on the disk that holds $TMPDIR).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use stackline::config::ComponentId;
use stackline::exporters::shell::{
    self, Delivered, Encoded, QueueConfig, RetryConfig, SendError, Sender, SenderSettings,
    StorageConfig,
};
use stackline::otlp::{ProfilesRequest, synth};
use stackline::pipeline::channel::channel;
use stackline::pipeline::{Ack, Acks, Context, Envelope, Input};

const REQUESTS: u64 = 400;
const PER_REQUEST: u64 = 1_000;

#[derive(Clone, Default)]
struct Count(Arc<AtomicU64>);

#[async_trait::async_trait]
impl Sender for Count {
    async fn send(&self, item: &Encoded) -> Result<Delivered, SendError> {
        self.0.fetch_add(item.samples, Ordering::SeqCst);
        Ok(Delivered::All)
    }
}

/// Samples per second through the shell with `storage`.
fn run(
    rt: &tokio::runtime::Runtime,
    reqs: &[ProfilesRequest],
    storage: Option<StorageConfig>,
) -> f64 {
    rt.block_on(async {
        let count = Count::default();
        let (tx, rx) = channel();
        let ctx = Context::standalone("exporter", ComponentId::parse("otlp").unwrap());
        let settings = SenderSettings {
            timeout: Duration::from_secs(5),
            retry: RetryConfig::default(),
            queue: QueueConfig {
                storage,
                ..QueueConfig::default()
            },
        };
        let h = shell::start_sender(ctx, Input::new(rx, None), count.clone(), settings)
            .await
            .unwrap();
        let start = Instant::now();
        // Each request waits for its ack (queued, or committed to disk), as the OTLP receiver does.
        let mut waits = Vec::new();
        for r in reqs {
            let (ack, done) = Ack::new();
            tx.send(Envelope::new(synth::valid(r.clone()), Acks::one(ack)))
                .await
                .unwrap();
            waits.push(done);
        }
        for w in waits {
            w.await.unwrap().unwrap();
        }
        let total = REQUESTS * PER_REQUEST;
        while count.0.load(Ordering::SeqCst) < total {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let d = start.elapsed();
        drop(tx);
        h.await.unwrap();
        total as f64 / d.as_secs_f64()
    })
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let reqs: Vec<ProfilesRequest> = (0..REQUESTS)
        .map(|i| synth::request("svc", i * PER_REQUEST, PER_REQUEST, 200))
        .collect();
    let bytes: usize = reqs.iter().map(prost::Message::encoded_len).sum();
    let disk = |sync: Duration| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StorageConfig {
            directory: dir.path().to_path_buf(),
            max_size: bytesize::ByteSize::gib(4),
            sync_interval: sync,
        };
        (dir, Some(cfg))
    };
    // Warm up, then measure each three times and keep the best.
    let best = |storage: &dyn Fn() -> (Option<tempfile::TempDir>, Option<StorageConfig>)| {
        (0..3)
            .map(|_| {
                let (_dir, s) = storage();
                run(&rt, &reqs, s)
            })
            .fold(0.0f64, f64::max)
    };
    let _ = run(&rt, &reqs, None);
    let mem = best(&|| (None, None));
    let each = best(&|| {
        let (d, s) = disk(Duration::ZERO);
        (Some(d), s)
    });
    let periodic = best(&|| {
        let (d, s) = disk(Duration::from_secs(1));
        (Some(d), s)
    });
    println!(
        "{REQUESTS} requests of {PER_REQUEST} samples ({:.1} KiB each on the wire)",
        bytes as f64 / REQUESTS as f64 / 1024.0
    );
    println!("memory queue:                      {mem:>12.0} samples/s");
    println!(
        "disk queue, fsync every request:   {each:>12.0} samples/s  ratio {:.3}",
        each / mem
    );
    println!(
        "disk queue, fsync every 1s:        {periodic:>12.0} samples/s  ratio {:.3}",
        periodic / mem
    );
}
