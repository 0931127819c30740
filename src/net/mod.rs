//! Every HTTP listener Stackline runs (OTLP/HTTP, `/metrics` and `/health`, the pprof
//! pull endpoint) is served here, with the bounds a listener open to a network needs:
//!
//! - a cap on open connections: past it, new ones are closed at once and counted;
//! - a time limit on reading a request's headers (a client that trickles them in, or
//!   connects and says nothing, does not hold a connection forever);
//! - a time limit on the TLS handshake, done off the accept loop so a slow handshake
//!   does not hold up other clients;
//! - graceful shutdown: in-flight requests finish, then connections close.

pub mod admit;
pub mod listen;
pub mod tls;

pub use listen::{BindError, bind};

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::telemetry::names;

/// How a listener is bounded.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once; more are closed on accept.
    pub max_connections: usize,
    /// Time allowed for a request's headers (and for the TLS handshake) to arrive.
    pub read_header_timeout: Duration,
    /// An idle HTTP/2 connection is pinged this often and closed if it does not answer.
    pub keepalive: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            read_header_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(60),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` fires, then lets open requests finish
/// (for at most `grace`). `name` labels the listener's metrics (`otlp/http`, `telemetry`…).
pub async fn serve_http(
    name: &'static str,
    listener: TcpListener,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refused = |reason: &'static str| metrics::counter!(names::HTTP_CONNECTIONS_REFUSED, "listener" => name, "reason" => reason);
    let too_many = refused("too_many_connections");
    // Only a TLS listener has handshakes to fail.
    let handshake_failed = if tls.is_some() {
        refused("tls_handshake")
    } else {
        metrics::Counter::noop()
    };
    let open = metrics::gauge!(names::HTTP_CONNECTIONS, "listener" => name);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut warned = false;
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and the like: wait a little instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            too_many.increment(1);
            if !warned {
                warned = true;
                tracing::warn!(
                    listener = name,
                    max = limits.max_connections,
                    "connection limit reached; closing new connections (counted in stackline_http_connections_refused_total)"
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let (app, tls, limits, open, handshake_failed) = (
            app.clone(),
            tls.clone(),
            limits.clone(),
            open.clone(),
            handshake_failed.clone(),
        );
        tokio::spawn(async move {
            let _slot = slot;
            open.increment(1.0);
            let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.read_header_timeout);
            b.http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(limits.keepalive)
                .keep_alive_timeout(limits.read_header_timeout)
                .max_concurrent_streams(128);
            let svc = hyper_util::service::TowerToHyperService::new(app);
            match tls {
                None => {
                    // The version sniffing below waits for the first bytes with no time
                    // limit of its own: a client that connects and says nothing is cut off here.
                    let mut first = [0u8; 1];
                    match tokio::time::timeout(limits.read_header_timeout, stream.peek(&mut first))
                        .await
                    {
                        Ok(Ok(n)) if n > 0 => {
                            let _ = watcher
                                .watch(b.serve_connection(TokioIo::new(stream), svc))
                                .await;
                        }
                        _ => {}
                    }
                }
                Some(acceptor) => {
                    match tokio::time::timeout(limits.read_header_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => {
                            // ALPN already chose the protocol: no sniffing.
                            let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
                            let b = if h2 { b.http2_only() } else { b.http1_only() };
                            let _ = watcher
                                .watch(b.serve_connection(TokioIo::new(s), svc))
                                .await;
                        }
                        Ok(Err(e)) => {
                            handshake_failed.increment(1);
                            tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            handshake_failed.increment(1);
                            tracing::debug!(listener = name, %peer, "TLS handshake timed out");
                        }
                    }
                }
            }
            open.decrement(1.0);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "connections still open after {grace:?}; closing them"
        );
    }
}
