//! What both protocols do with a request: check it, send it down the pipeline, and
//! wait until it is safe (see `pipeline::ack`). The protocol maps the outcome to its
//! own status codes.

use metrics::Counter;

use crate::otlp::limits::{DecodeLimits, Footprint};
use crate::otlp::{Checked, ProfilesRequest, sample_count};
use crate::pipeline::{Ack, Acks, Envelope, Fanout};
use crate::telemetry::names;

/// Why a request was refused; nothing of it entered the pipeline, or the client is
/// told that not all of it was kept.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Bad input (gRPC INVALID_ARGUMENT, HTTP 400).
    #[error("request refused, nothing was accepted: {0}")]
    Invalid(String),
    /// The pipeline cannot take it, or did not keep all of it (UNAVAILABLE, 503).
    #[error("{0}")]
    Unavailable(String),
    /// Over a decode limit (RESOURCE_EXHAUSTED, 413); the message names the setting.
    #[error("request refused, nothing was accepted: {0}")]
    TooLarge(String),
    /// The receiver holds its whole budget of requests in flight
    /// (RESOURCE_EXHAUSTED, 503 with Retry-After): retry later.
    #[error("request refused, nothing was accepted: {0}")]
    Busy(String),
}

/// A request's share of the receiver's budget of bytes in flight, held until the
/// request is answered.
pub struct InFlight(#[allow(dead_code)] Option<tokio::sync::OwnedSemaphorePermit>);

/// The receiver's budget of bytes in flight, shared by its protocols.
#[derive(Clone)]
pub struct Budget {
    kib: std::sync::Arc<tokio::sync::Semaphore>,
    /// All of it, in KiB.
    total: u32,
    mib: u64,
}

impl Budget {
    pub fn new(mib: u64) -> Budget {
        let kib = (mib.saturating_mul(1024) as usize)
            .min(tokio::sync::Semaphore::MAX_PERMITS)
            .min(u32::MAX as usize);
        Budget {
            kib: std::sync::Arc::new(tokio::sync::Semaphore::new(kib)),
            total: kib as u32,
            mib,
        }
    }
}

/// The receiver's accepted and refused counters, by transport.
pub struct Intake {
    out: Fanout,
    accepted: Counter,
    invalid: Counter,
    not_kept: Counter,
    stopped: Counter,
    unauthenticated: Counter,
    too_large: Counter,
    over_limit: Counter,
    over_budget: Counter,
    limits: DecodeLimits,
    budget: Budget,
}

impl Intake {
    pub fn new(
        out: Fanout,
        receiver: &str,
        transport: &'static str,
        limits: DecodeLimits,
        budget: Budget,
    ) -> Self {
        let labels = [
            ("receiver", receiver.to_owned()),
            ("transport", transport.to_owned()),
        ];
        let refused = |reason: &'static str| {
            let mut l: Vec<(&'static str, String)> = labels.to_vec();
            l.push(("reason", reason.to_owned()));
            metrics::counter!(names::RECEIVER_REFUSED, &l)
        };
        Intake {
            out,
            accepted: metrics::counter!(names::RECEIVER_ACCEPTED, &labels),
            invalid: refused("invalid_request"),
            not_kept: refused("not_kept_downstream"),
            stopped: refused("pipeline_stopped"),
            unauthenticated: refused("unauthenticated"),
            too_large: refused("too_large"),
            over_limit: refused("over_limit"),
            over_budget: refused("over_budget"),
            limits,
            budget,
        }
    }

    /// A request refused before it was decoded (so its samples are unknown): counted once.
    pub fn refused_unauthenticated(&self) {
        self.unauthenticated.increment(1);
    }

    pub fn refused_too_large(&self) {
        self.too_large.increment(1);
    }

    /// Measures an encoded request against the decode limits before it is decoded;
    /// one over them is counted (its samples, as the wire says) and refused.
    pub fn prescan(&self, raw: &[u8]) -> Result<Footprint, Refusal> {
        match crate::otlp::limits::footprint(raw) {
            Err(e) => {
                self.invalid.increment(1);
                Err(Refusal::Invalid(e.to_string()))
            }
            Ok(fp) => self.within_limits(&fp).map(|()| fp),
        }
    }

    /// Takes `bytes` of the receiver's budget of requests in flight (`max_in_flight_mib`)
    /// for as long as the returned value is held; refuses at once when the budget is
    /// spent, so that many large requests at once cannot take the memory of the process.
    pub fn reserve(&self, bytes: u64, samples: u64) -> Result<InFlight, Refusal> {
        // A request within the decode limits but larger than the whole budget takes all
        // of it, and so runs alone: asked for more it would be refused forever, while
        // its client retried as told.
        let kib = u32::try_from(bytes.div_ceil(1024).max(1))
            .unwrap_or(u32::MAX)
            .min(self.budget.total);
        match self.budget.kib.clone().try_acquire_many_owned(kib) {
            Ok(p) => Ok(InFlight(Some(p))),
            Err(_) => {
                self.over_budget.increment(samples.max(1));
                Err(Refusal::Busy(format!(
                    "the receiver holds its budget of requests in flight (max_in_flight_mib: {}); retry later",
                    self.budget.mib
                )))
            }
        }
    }

    /// Refuses (and counts) a request whose footprint is over the limits.
    pub fn within_limits(&self, fp: &Footprint) -> Result<(), Refusal> {
        self.limits.allow(fp).map_err(|e| {
            self.over_limit.increment(fp.samples);
            tracing::warn!(error = %e, "request over a decode limit refused (counted in otelcol_receiver_refused_profile_samples_total{{reason=\"over_limit\"}})");
            Refusal::TooLarge(e.to_string())
        })
    }

    pub fn refused_undecodable(&self) {
        self.invalid.increment(1);
    }

    /// Checks `req`, sends it on and waits until every exporter has it safe.
    pub async fn export(&self, req: ProfilesRequest) -> Result<(), Refusal> {
        let samples = sample_count(&req);
        let req = match Checked::new(req) {
            Ok(req) => req,
            Err(e) => {
                self.invalid.increment(samples);
                return Err(Refusal::Invalid(e.to_string()));
            }
        };
        if samples == 0 {
            return Ok(());
        }
        let (ack, kept) = Ack::new();
        if let Err(e) = self.out.send(Envelope::new(req, Acks::one(ack))).await {
            self.stopped.increment(samples);
            return Err(Refusal::Unavailable(format!(
                "the pipeline is not taking data: {e}; retry against another instance"
            )));
        }
        match kept.await {
            Ok(Ok(())) => {
                self.accepted.increment(samples);
                Ok(())
            }
            Ok(Err(reason)) => {
                self.not_kept.increment(samples);
                Err(Refusal::Unavailable(format!(
                    "not all of the request could be kept ({reason}); retry (parts may arrive twice)"
                )))
            }
            Err(_) => {
                self.not_kept.increment(samples);
                Err(Refusal::Unavailable(
                    "the pipeline lost track of the request; retry".into(),
                ))
            }
        }
    }
}
