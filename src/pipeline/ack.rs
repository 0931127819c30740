//! Acknowledgements: how a receiver learns that what it accepted is safe.
//!
//! A receiver that can tell its client (the OTLP receiver) creates an [`Ack`] per
//! request and waits on it. The ack travels with every copy of the request's data
//! through the pipeline ([`Envelope`]); batching carries the acks of every request in a
//! batch. Each holder releases its clone once the data is safe *by its own standard*:
//! - an exporter with a memory queue, once queued (the collector's meaning of OK);
//! - an exporter with a disk queue, once committed to disk;
//! - an exporter without a queue and a local writer, once delivered or written.
//!
//! When the last clone is released the receiver answers: OK if no holder failed, else
//! the first failure's reason (the client retries; duplicates are possible, losses are
//! not). A holder that gives data up calls [`Ack::fail`]; dropping without failing
//! means success, so every drop path must fail the acks it holds.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::otlp::Checked;

struct Inner {
    failure: Mutex<Option<String>>,
    done: Mutex<Option<oneshot::Sender<Result<(), String>>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let failure = self
            .failure
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(tx) = self
            .done
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(failure.map_or(Ok(()), Err));
        }
    }
}

/// One receiver request's acknowledgement; clones are held by everything carrying its data.
#[derive(Clone)]
pub struct Ack(Arc<Inner>);

/// What the receiver waits on.
pub type AckResult = oneshot::Receiver<Result<(), String>>;

impl Ack {
    pub fn new() -> (Ack, AckResult) {
        let (tx, rx) = oneshot::channel();
        (
            Ack(Arc::new(Inner {
                failure: Mutex::new(None),
                done: Mutex::new(Some(tx)),
            })),
            rx,
        )
    }

    /// Marks the request as not (wholly) kept; the first reason wins.
    pub fn fail(&self, reason: &str) {
        let mut f = self.0.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(reason.to_owned());
        }
    }
}

/// The acks a piece of data carries.
#[derive(Clone, Default)]
pub struct Acks(Vec<Ack>);

impl Acks {
    pub fn none() -> Self {
        Acks(Vec::new())
    }
    pub fn one(a: Ack) -> Self {
        Acks(vec![a])
    }
    pub fn fail(&self, reason: &str) {
        for a in &self.0 {
            a.fail(reason);
        }
    }
    /// Gives the data up: fails every ack with `reason` and releases them.
    pub fn reject(self, reason: &str) {
        self.fail(reason);
    }
    pub fn extend(&mut self, other: Acks) {
        self.0.extend(other.0);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A request with the acks of the receiver requests its data came from.
pub struct Envelope {
    pub req: Checked,
    pub acks: Acks,
}

impl Envelope {
    pub fn new(req: Checked, acks: Acks) -> Self {
        Envelope { req, acks }
    }
    /// Data nobody waits on (e.g. from the eBPF receiver).
    pub fn unacked(req: Checked) -> Self {
        Envelope {
            req,
            acks: Acks::none(),
        }
    }
}

impl From<Checked> for Envelope {
    fn from(req: Checked) -> Self {
        Envelope::unacked(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_when_the_last_holder_releases_with_the_first_failure() {
        let (a, rx) = Ack::new();
        let held = Acks::one(a);
        let copy = held.clone();
        drop(held);
        copy.fail("queue full");
        copy.fail("later");
        let third = copy.clone();
        drop(copy);
        drop(third);
        assert_eq!(rx.await.unwrap(), Err("queue full".to_owned()));

        let (a, rx) = Ack::new();
        drop(Acks::one(a));
        assert_eq!(rx.await.unwrap(), Ok(()));
    }
}
