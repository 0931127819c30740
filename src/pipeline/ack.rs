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
//! When the last clone is released the receiver answers: OK if every holder kept its
//! copy ([`Acks::keep`]), else the first failure's reason (the client retries;
//! duplicates are possible, losses are not). A holder that gives data up says why
//! ([`Acks::reject`]); a clone dropped without either (a stage that ended or panicked
//! with data in hand, a channel dropped with envelopes inside) fails the request too,
//! so data that nobody holds is never acknowledged.

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

/// One receiver request's acknowledgement; clones are held by everything carrying its
/// data. Each clone must be kept ([`Ack::keep`]) or it fails the request when dropped.
pub struct Ack {
    inner: Arc<Inner>,
    kept: bool,
}

/// Why a request failed when a holder dropped its copy without keeping it.
pub const DROPPED: &str = "dropped inside the pipeline before it was kept";

impl Clone for Ack {
    /// A new holder: it too must keep its copy.
    fn clone(&self) -> Self {
        Ack {
            inner: self.inner.clone(),
            kept: false,
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if !self.kept {
            self.fail(DROPPED);
        }
    }
}

/// What the receiver waits on.
pub type AckResult = oneshot::Receiver<Result<(), String>>;

impl Ack {
    pub fn new() -> (Ack, AckResult) {
        let (tx, rx) = oneshot::channel();
        (
            Ack {
                inner: Arc::new(Inner {
                    failure: Mutex::new(None),
                    done: Mutex::new(Some(tx)),
                }),
                kept: false,
            },
            rx,
        )
    }

    /// Marks the request as not (wholly) kept; the first reason wins.
    pub fn fail(&self, reason: &str) {
        let mut f = self.inner.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(reason.to_owned());
        }
    }

    /// This holder has its copy safe: releases it without failing the request.
    pub fn keep(mut self) {
        self.kept = true;
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
    /// The data is safe with this holder: releases every ack without failing it.
    pub fn keep(self) {
        for a in self.0 {
            a.keep();
        }
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
        held.keep();
        copy.fail("queue full");
        copy.fail("later");
        let third = copy.clone();
        copy.keep();
        third.keep();
        assert_eq!(rx.await.unwrap(), Err("queue full".to_owned()));

        let (a, rx) = Ack::new();
        let held = Acks::one(a);
        held.clone().keep();
        held.keep();
        assert_eq!(rx.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn a_copy_dropped_without_being_kept_fails_the_request() {
        // A stage that ends (or panics) with data in hand, or a channel dropped with
        // envelopes inside: the client must not hear OK for data nobody holds.
        let (a, rx) = Ack::new();
        let held = Acks::one(a);
        let lost = held.clone();
        held.keep();
        drop(lost);
        assert_eq!(rx.await.unwrap(), Err(DROPPED.to_owned()));

        let (a, rx) = Ack::new();
        let (tx, chan) = tokio::sync::mpsc::channel::<Acks>(1);
        tx.send(Acks::one(a)).await.unwrap();
        drop(chan);
        assert_eq!(rx.await.unwrap(), Err(DROPPED.to_owned()));
    }
}
