//! The exporter shell: what every exporter needs, written once (the collector's
//! `exporterhelper`, for all our exporters).
//!
//! An exporter supplies only what is its own:
//! - a network exporter, a [`Sender`]: one attempt to deliver an encoded request;
//! - a local exporter, a [`Writer`]: write one request (and optionally flush), on a
//!   blocking thread.
//!
//! The shell owns the rest: the sending queue (in memory or on disk, see [`queue`]),
//! retry with backoff and a per-attempt timeout as tower layers, encoding and writing
//! off the async runtime, health, panic containment, the drain deadline, and the
//! accounting. For every exporter, at shutdown:
//!
//! `accepted + replayed = sent + failed + dropped + kept`
//!
//! where `dropped` covers a full queue, a panic and the shutdown deadline, and `kept`
//! is what a persistent queue holds on disk for the next start. The shell logs this
//! line when the exporter ends, and each term is a metric.

mod config;
mod journal;
pub mod queue;
mod record;
mod retry;
mod salvage;
use crate::otlp::{Checked, ProfilesRequest, sample_count, view};
use crate::pipeline::{Acks, Context, Envelope, Input, StartError, catch, catch_async};
use crate::telemetry::names;
use async_trait::async_trait;
use bytes::Bytes;
pub use config::{QueueConfig, RetryConfig, StorageConfig};
use metrics::Counter;
use queue::{PushError, Queue, Settled};
pub use retry::BackoffPolicy;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::task::JoinHandle;
use tower::{Service, ServiceBuilder, ServiceExt};
mod accounting;
mod sender;
mod writer;
use accounting::*;
pub use sender::start_sender;
pub use writer::{WriterSettings, start_writer};

/// A request encoded once (OTLP protobuf), so retries and queueing cost no re-encoding
/// or deep copies, and a disk queue can store it as it is.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub bytes: Bytes,
    pub samples: u64,
    pub profiles: u64,
}

impl Encoded {
    pub fn protobuf(req: &ProfilesRequest) -> Self {
        use prost::Message;
        Encoded {
            bytes: Bytes::from(req.encode_to_vec()),
            samples: sample_count(req),
            profiles: view::profiles(req).count() as u64,
        }
    }

    /// The request back (for senders that re-encode, e.g. as JSON).
    pub fn decode(&self) -> Result<ProfilesRequest, prost::DecodeError> {
        use prost::Message;
        ProfilesRequest::decode(self.bytes.clone())
    }
}

/// How a send failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// Worth trying again (server unavailable, overloaded, timed out), after
    /// `retry_after` if the server said so.
    #[error("{message}")]
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Trying again cannot help (bad request, unauthenticated…): drop and count.
    #[error("{0}")]
    Permanent(String),
}

impl SendError {
    pub fn retryable(message: impl Into<String>) -> Self {
        SendError::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }
}

/// What a backend said about a request it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    All,
    /// OTLP partial success: the backend refused `rejected_profiles` of the request's profiles.
    Partial {
        rejected_profiles: u64,
        message: String,
    },
}

/// A network exporter's own part: one attempt to deliver one request.
#[async_trait]
pub trait Sender: Send + Sync + 'static {
    async fn send(&self, item: &Encoded) -> Result<Delivered, SendError>;
}

/// Settings of a network exporter's shell.
#[derive(Debug, Clone)]
pub struct SenderSettings {
    pub timeout: Duration,
    pub retry: RetryConfig,
    pub queue: QueueConfig,
}

/// What one call of a [`Writer`] settled, in samples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Now durable in the output.
    pub sent: u64,
    /// Given up on.
    pub failed: u64,
    /// Why, when something failed.
    pub error: Option<String>,
}

impl Outcome {
    pub fn sent(n: u64) -> Self {
        Outcome {
            sent: n,
            ..Default::default()
        }
    }
    pub fn failed(n: u64, error: impl std::fmt::Display) -> Self {
        Outcome {
            failed: n,
            error: Some(error.to_string()),
            ..Default::default()
        }
    }
}

/// A local exporter's own part. Runs on a blocking thread, one call at a time.
pub trait Writer: Send + 'static {
    /// Handles one request; its samples are settled now or by a later [`flush`](Writer::flush).
    fn write(&mut self, req: Checked) -> Outcome;
    /// Settles what earlier writes left pending. Called `flush_every` after a write and at
    /// the end.
    fn flush(&mut self) -> Outcome {
        Outcome::default()
    }
}
