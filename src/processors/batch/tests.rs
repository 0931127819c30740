use std::time::Duration;

use tokio::sync::mpsc;

use super::*;
use crate::config::ComponentId;
use crate::otlp::synth::{decode_samples, request, valid};
use crate::pipeline::channel::channel;

struct Harness {
    tx: Option<mpsc::Sender<Envelope>>,
    rx: mpsc::Receiver<Envelope>,
    task: JoinHandle<()>,
}

fn start(cfg: BatchConfig) -> Harness {
    let (tx, in_rx) = channel();
    let (out_tx, rx) = channel();
    let ctx = Context::standalone("processor", ComponentId::parse("batch").unwrap());
    let out = Fanout::new(vec![out_tx], &ctx, None);
    let task = Box::new(BatchProcessor { cfg }).start(ctx, Input::new(in_rx, None), out);
    Harness {
        tx: Some(tx),
        rx,
        task,
    }
}

fn cfg(size: u64, max: u64, timeout_ms: u64) -> BatchConfig {
    BatchConfig {
        send_batch_size: size,
        send_batch_max_size: max,
        timeout: Duration::from_millis(timeout_ms),
    }
}

#[tokio::test]
async fn sends_a_batch_as_soon_as_it_is_full() {
    let mut h = start(cfg(100, 0, 60_000));
    let tx = h.tx.as_ref().unwrap();
    for i in 0..4 {
        tx.send(valid(request("a", i * 30, 30, 5)).into())
            .await
            .unwrap();
    }
    // 120 samples >= 100: sent at once, long before the 60s timeout.
    let b = tokio::time::timeout(Duration::from_secs(5), async {
        h.rx.recv().await.map(|e| e.req)
    })
    .await
    .expect("batch not sent on size")
    .unwrap();
    assert_eq!(sample_count(&b), 120);
    assert_eq!(b.resource_profiles.len(), 1, "equal resources merge");
}

#[tokio::test]
async fn sends_what_is_waiting_after_the_timeout() {
    let mut h = start(cfg(1000, 0, 100));
    h.tx.as_ref()
        .unwrap()
        .send(valid(request("a", 0, 7, 5)).into())
        .await
        .unwrap();
    let t = std::time::Instant::now();
    let b = tokio::time::timeout(Duration::from_secs(5), async {
        h.rx.recv().await.map(|e| e.req)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(sample_count(&b), 7);
    assert!(
        t.elapsed() >= Duration::from_millis(90),
        "sent before the timeout"
    );
}

#[tokio::test]
async fn splits_above_the_max_size_and_keeps_the_remainder_waiting() {
    let mut h = start(cfg(100, 150, 60_000));
    h.tx.as_ref()
        .unwrap()
        .send(valid(request("a", 0, 420, 5)).into())
        .await
        .unwrap();
    let mut sizes = Vec::new();
    for _ in 0..2 {
        let b = tokio::time::timeout(Duration::from_secs(5), async {
            h.rx.recv().await.map(|e| e.req)
        })
        .await
        .unwrap()
        .unwrap();
        sizes.push(sample_count(&b));
    }
    assert_eq!(sizes, vec![150, 150]);
    // 120 remain (>= 100): the collector sends them too, as one batch under the max.
    let b = tokio::time::timeout(Duration::from_secs(5), async {
        h.rx.recv().await.map(|e| e.req)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(sample_count(&b), 120);
}

#[tokio::test]
async fn flushes_everything_when_the_input_ends() {
    let mut h = start(cfg(10_000, 0, 60_000));
    for i in 0..5 {
        h.tx.as_ref()
            .unwrap()
            .send(valid(request("a", i * 10, 10, 5)).into())
            .await
            .unwrap();
    }
    drop(h.tx.take());
    let b = tokio::time::timeout(Duration::from_secs(5), async {
        h.rx.recv().await.map(|e| e.req)
    })
    .await
    .unwrap()
    .unwrap();
    let mut seqs: Vec<u64> = decode_samples(&b).into_iter().map(|s| s.0).collect();
    seqs.sort();
    assert_eq!(seqs, (0..50).collect::<Vec<_>>());
    h.task.await.unwrap();
    assert!(h.rx.recv().await.is_none(), "output closes after the flush");
}
