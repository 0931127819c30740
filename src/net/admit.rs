//! Admission for the gRPC listener: tonic serves the connections this hands it, after
//! the bounds a listener open to a network needs (the HTTP listeners get the same from
//! [`super::serve_http`]):
//!
//! - a cap on open connections: past it, new ones are closed at once and counted;
//! - a time limit on the TLS handshake (or, in plaintext, on the first bytes), done
//!   off the accept loop, so a client that connects and stalls holds neither a slot
//!   for long nor anyone else up.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::telemetry::names;

/// How the gRPC listener admits connections.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time a client has to finish the TLS handshake (plaintext: to send its first bytes).
    pub handshake_timeout: Duration,
}

/// An admitted connection: plaintext or TLS, holding its slot until it closes.
pub struct Conn {
    io: Io,
    _slot: OwnedSemaphorePermit,
    open: metrics::Gauge,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    fn new(io: Io, slot: OwnedSemaphorePermit, open: &metrics::Gauge) -> Conn {
        open.increment(1.0);
        Conn {
            io,
            _slot: slot,
            open: open.clone(),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

/// Accepts on `listener` until `shutdown` fires and yields the admitted connections
/// (`name` labels the listener's metrics, e.g. `otlp/grpc`).
pub fn incoming(
    name: &'static str,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    admission: Admission,
    shutdown: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(admission.max_connections));
    let refused = |reason: &'static str| metrics::counter!(names::HTTP_CONNECTIONS_REFUSED, "listener" => name, "reason" => reason);
    let too_many = refused("too_many_connections");
    let handshake_failed = refused("tls_handshake");
    let idle = refused("silent");
    let open = metrics::gauge!(names::HTTP_CONNECTIONS, "listener" => name);
    tokio::spawn(async move {
        let mut warned = false;
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tx.closed() => break,
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
                        max = admission.max_connections,
                        "connection limit reached; closing new connections (counted in {})",
                        names::HTTP_CONNECTIONS_REFUSED
                    );
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            match &tls {
                None => {
                    // A client that connects and says nothing is cut off after the
                    // handshake time, as the HTTP listeners do.
                    let (tx, idle, open) = (tx.clone(), idle.clone(), open.clone());
                    let timeout = admission.handshake_timeout;
                    tokio::spawn(async move {
                        let mut first = [0u8; 1];
                        match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
                            Ok(Ok(n)) if n > 0 => {
                                let c = Conn::new(Io::Plain(stream), slot, &open);
                                let _ = tx.send(Ok(c)).await;
                            }
                            _ => {
                                idle.increment(1);
                                tracing::debug!(listener = name, %peer, "closed a connection that sent nothing");
                            }
                        }
                    });
                }
                Some(acceptor) => {
                    let (acceptor, tx, failed, open) = (
                        acceptor.clone(),
                        tx.clone(),
                        handshake_failed.clone(),
                        open.clone(),
                    );
                    let timeout = admission.handshake_timeout;
                    tokio::spawn(async move {
                        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => {
                                let c = Conn::new(Io::Tls(Box::new(s)), slot, &open);
                                let _ = tx.send(Ok(c)).await;
                            }
                            Ok(Err(e)) => {
                                failed.increment(1);
                                tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
                            }
                            Err(_) => {
                                failed.increment(1);
                                tracing::debug!(listener = name, %peer, "TLS handshake timed out");
                            }
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match &self.io {
            Io::Plain(s) => s.connect_info(),
            Io::Tls(s) => s.get_ref().0.connect_info(),
        }
    }
}
