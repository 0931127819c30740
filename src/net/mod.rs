//! Every HTTP listener Stackline runs (OTLP/HTTP, `/metrics` and `/health`, the pprof
//! pull endpoint) is served here, with the bounds a listener open to a network needs:
//!
//! - a cap on open connections: past it, the connection idle the longest is closed to
//!   make room (a new one is refused only when every connection has a request in flight);
//! - a time limit on reading a request's headers (a client that trickles them in, or
//!   connects and says nothing, does not hold a connection forever);
//! - a time limit on the TLS handshake, done off the accept loop so a slow handshake
//!   does not hold up other clients;
//! - graceful shutdown: in-flight requests finish, then connections close.

pub mod admit;
pub mod listen;
pub mod tls;

pub use listen::{BindError, bind};

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

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
/// Connections come through [`admit::incoming`], which closes the one idle the longest
/// when all `max_connections` are taken, so a probe always finds a place.
pub async fn serve_http(
    name: &'static str,
    listener: TcpListener,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let admission = admit::Admission {
        max_connections: limits.max_connections,
        handshake_timeout: limits.read_header_timeout,
        evict_idle: true,
    };
    let mut conns = admit::incoming(name, listener, tls, admission, shutdown.clone());
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        // Not only the stream's end: connections still in their handshake hold it open
        // for up to the handshake time.
        let conn = tokio::select! {
            _ = shutdown.cancelled() => break,
            c = conns.next() => match c {
                Some(Ok(c)) => c,
                Some(Err(_)) => continue,
                None => break,
            },
        };
        tasks.spawn(serve_connection(
            conn,
            app.clone(),
            limits.clone(),
            shutdown.clone(),
        ));
    }
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!(
            listener = name,
            "connections still open after {grace:?}; closing them"
        );
    }
}

/// Serves one connection until it ends, or closes it gracefully (requests in flight
/// finish) when the listener shuts down or evicts it.
async fn serve_connection(
    conn: admit::Conn,
    app: axum::Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    use tower::ServiceExt;
    let activity = conn.activity();
    let evicted = activity.evicted();
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_header_timeout);
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.keepalive)
        .keep_alive_timeout(limits.read_header_timeout)
        .max_concurrent_streams(128);
    // ALPN already chose the protocol under TLS: no sniffing.
    let b = match conn.alpn_h2() {
        Some(true) => b.http2_only(),
        Some(false) => b.http1_only(),
        None => b,
    };
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let busy = activity.busy();
        let app = app.clone();
        async move {
            let resp = app.oneshot(req).await;
            drop(busy);
            resp
        }
    });
    let served = b.serve_connection(TokioIo::new(conn), svc);
    tokio::pin!(served);
    let evicting = tokio::select! {
        _ = served.as_mut() => return,
        _ = shutdown.cancelled() => false,
        _ = evicted.cancelled() => true,
    };
    served.as_mut().graceful_shutdown();
    if evicting {
        // Idle when chosen: it closes at once unless a request just arrived.
        let _ = tokio::time::timeout(limits.read_header_timeout, served).await;
    } else {
        let _ = served.await;
    }
}
