//! Admission: every listener (gRPC, OTLP/HTTP, telemetry, pprof) gets its connections
//! from [`incoming`], after the bounds a listener open to a network needs:
//!
//! - a cap on open connections: past it, a new one is closed at once and counted, or,
//!   where the server tells which connections are idle ([`Admission::evict_idle`], the
//!   HTTP listeners), the connection idle the longest is closed to make room, so that
//!   connections held open and silent cannot lock out a liveness probe;
//! - a time limit on the TLS handshake (or, in plaintext, on the first bytes), done
//!   off the accept loop, so a client that connects and stalls holds neither a slot
//!   for long nor anyone else up.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::telemetry::names;

/// How a listener admits connections.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time a client has to finish the TLS handshake (plaintext: to send its first bytes).
    pub handshake_timeout: Duration,
    /// When full, close the connection idle the longest (no request in flight, as the
    /// server reports through [`Activity::busy`]) instead of refusing the new one.
    pub evict_idle: bool,
}

/// The open connections of one listener, for choosing whom to evict.
struct Table {
    epoch: Instant,
    next: u64,
    conns: HashMap<u64, Arc<Entry>>,
}

struct Entry {
    /// Requests being served on the connection.
    in_flight: AtomicUsize,
    /// Milliseconds after the table's epoch when the connection was last busy.
    last_active: AtomicU64,
    /// Cancelled when the connection is evicted: its server closes it.
    close: CancellationToken,
    /// The connection's place under `max_connections`; an eviction hands it on.
    slot: Mutex<Option<OwnedSemaphorePermit>>,
}

/// A connection's activity, as its server reports it. Dropping the last handle (with
/// the connection) frees its slot.
#[derive(Clone)]
pub struct Activity(Arc<Registered>);

struct Registered {
    id: u64,
    entry: Arc<Entry>,
    table: Arc<Mutex<Table>>,
    /// `stackline_http_connections`: from accept (a silent connection is open too).
    open: metrics::Gauge,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.table).conns.remove(&self.id);
        self.open.decrement(1.0);
    }
}

fn lock(t: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// Held while a request is served: the connection is not idle.
pub struct Busy(Activity);

impl Drop for Busy {
    fn drop(&mut self) {
        let r = &self.0.0;
        r.entry
            .last_active
            .store(elapsed_ms(&r.table), Ordering::Relaxed);
        r.entry.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn elapsed_ms(t: &Mutex<Table>) -> u64 {
    lock(t).epoch.elapsed().as_millis() as u64
}

impl Activity {
    /// Marks a request in flight until the guard is dropped.
    pub fn busy(&self) -> Busy {
        self.0.entry.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Cancelled when the listener wants this connection closed to make room.
    pub fn evicted(&self) -> CancellationToken {
        self.0.entry.close.clone()
    }
}

impl Table {
    fn register(
        table: &Arc<Mutex<Table>>,
        slot: OwnedSemaphorePermit,
        open: &metrics::Gauge,
    ) -> Activity {
        let mut t = lock(table);
        let id = t.next;
        t.next += 1;
        let entry = Arc::new(Entry {
            in_flight: AtomicUsize::new(0),
            last_active: AtomicU64::new(t.epoch.elapsed().as_millis() as u64),
            close: CancellationToken::new(),
            slot: Mutex::new(Some(slot)),
        });
        t.conns.insert(id, entry.clone());
        open.increment(1.0);
        Activity(Arc::new(Registered {
            id,
            entry,
            table: table.clone(),
            open: open.clone(),
        }))
    }

    /// Takes the slot of the connection idle the longest and tells it to close.
    fn evict(&mut self) -> Option<OwnedSemaphorePermit> {
        // Ties (same millisecond) go to the older connection.
        let (_, victim) = self
            .conns
            .iter()
            .filter(|(_, e)| e.in_flight.load(Ordering::Acquire) == 0)
            .filter(|(_, e)| e.slot.lock().is_ok_and(|s| s.is_some()))
            .min_by_key(|(id, e)| (e.last_active.load(Ordering::Relaxed), **id))?;
        let victim = victim.clone();
        let slot = victim.slot.lock().ok()?.take();
        victim.close.cancel();
        slot
    }
}

/// An admitted connection: plaintext or TLS, holding its slot until it closes.
pub struct Conn {
    io: Io,
    activity: Activity,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// The connection's activity handle, for its server to report requests in flight.
    pub fn activity(&self) -> Activity {
        self.activity.clone()
    }

    /// Whether TLS's ALPN chose HTTP/2 (`None` in plaintext, where the server sniffs).
    pub fn alpn_h2(&self) -> Option<bool> {
        match &self.io {
            Io::Plain(_) => None,
            Io::Tls(s) => Some(s.get_ref().1.alpn_protocol() == Some(b"h2")),
        }
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
    let table = Arc::new(Mutex::new(Table {
        epoch: Instant::now(),
        next: 0,
        conns: HashMap::new(),
    }));
    let refused = |reason: &'static str| metrics::counter!(names::HTTP_CONNECTIONS_REFUSED, "listener" => name, "reason" => reason);
    let too_many = refused("too_many_connections");
    let evicted = refused("idle_evicted");
    let handshake_failed = refused("tls_handshake");
    let silent = refused("silent");
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
            let slot = match slots.clone().try_acquire_owned() {
                Ok(s) => Some(s),
                Err(_) if admission.evict_idle => {
                    let s = lock(&table).evict();
                    if s.is_some() {
                        evicted.increment(1);
                    }
                    s
                }
                Err(_) => None,
            };
            let Some(slot) = slot else {
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
            let activity = Table::register(&table, slot, &open);
            let _ = stream.set_nodelay(true);
            let (tx, tls) = (tx.clone(), tls.clone());
            let (silent, failed) = (silent.clone(), handshake_failed.clone());
            let timeout = admission.handshake_timeout;
            let gone = activity.evicted();
            let stopping = shutdown.clone();
            // Off the accept loop: a client that stalls holds up no one else.
            tokio::spawn(async move {
                let admitted = match tls {
                    // A client that connects and says nothing is cut off after the
                    // handshake time.
                    None => {
                        let mut first = [0u8; 1];
                        tokio::select! {
                            r = tokio::time::timeout(timeout, stream.peek(&mut first)) => match r {
                                Ok(Ok(n)) if n > 0 => Some(Io::Plain(stream)),
                                _ => {
                                    silent.increment(1);
                                    tracing::debug!(listener = name, %peer, "closed a connection that sent nothing");
                                    None
                                }
                            },
                            _ = gone.cancelled() => None,
                            _ = stopping.cancelled() => None,
                        }
                    }
                    Some(acceptor) => tokio::select! {
                        r = tokio::time::timeout(timeout, acceptor.accept(stream)) => match r {
                            Ok(Ok(s)) => Some(Io::Tls(Box::new(s))),
                            Ok(Err(e)) => {
                                failed.increment(1);
                                tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
                                None
                            }
                            Err(_) => {
                                failed.increment(1);
                                tracing::debug!(listener = name, %peer, "TLS handshake timed out");
                                None
                            }
                        },
                        _ = gone.cancelled() => None,
                        _ = stopping.cancelled() => None,
                    },
                };
                if let Some(io) = admitted {
                    let _ = tx.send(Ok(Conn { io, activity })).await;
                }
            });
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
