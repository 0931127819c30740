//! `endpoint: dns:///NAME:PORT`: one connection per address the name resolves to, and
//! requests spread round-robin over the addresses that are up.
//!
//! Why not one connection to a Kubernetes ClusterIP: a gRPC connection is long-lived,
//! and the ClusterIP balances connections, not requests, so every request of an agent
//! would go to the one gateway pod its connection happened to land on. A headless
//! Service instead resolves to every ready pod, and this module keeps that list current:
//! it re-resolves every `resolve_interval`, and soon after an address fails.
//!
//! An address whose attempt failed to connect (or answered UNAVAILABLE) is left out for
//! [`DOWN_FOR`]; the retry that follows goes to the next one. When every address is
//! down, the one that failed longest ago is tried, so a recovered backend is found again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::telemetry::names;

/// How long an address that failed is skipped before it is tried again.
pub const DOWN_FOR: Duration = Duration::from_secs(5);
/// Re-resolving after a failure happens at most this often.
const MIN_RESOLVE_GAP: Duration = Duration::from_secs(1);

/// `dns:///host:port` (the authority form `dns://server/host:port` is not supported:
/// names are resolved with the system's resolver).
pub fn parse_dns(endpoint: &str) -> Option<Result<(String, u16), String>> {
    let rest = endpoint.strip_prefix("dns:")?;
    let Some(target) = rest.strip_prefix("///") else {
        return Some(Err(format!(
            "`{endpoint}`: write `dns:///NAME:PORT` (three slashes; a DNS server authority is not supported, the system resolver is used)"
        )));
    };
    let parsed = target.rsplit_once(':').and_then(|(h, p)| {
        let h = h.trim_matches(['[', ']']);
        (!h.is_empty()).then_some((h.to_owned(), p.parse::<u16>().ok().filter(|p| *p != 0)?))
    });
    Some(parsed.ok_or_else(|| format!("`{endpoint}` is not `dns:///NAME:PORT`")))
}

/// One resolved address and its connection.
pub struct Backend {
    pub addr: SocketAddr,
    pub grpc: tonic::client::Grpc<Channel>,
    down_since: Mutex<Option<Instant>>,
    requests: metrics::Counter,
}

impl Backend {
    fn down_since(&self) -> Option<Instant> {
        *self.down_since.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type Connect = dyn Fn(SocketAddr) -> Result<tonic::client::Grpc<Channel>, String> + Send + Sync;

pub struct Balancer {
    host: String,
    port: u16,
    exporter: String,
    connect: Box<Connect>,
    backends: RwLock<Arc<Vec<Arc<Backend>>>>,
    next: AtomicUsize,
    resolve_soon: Notify,
    last_resolve: Mutex<Option<Instant>>,
    resolving: tokio::sync::Mutex<()>,
}

impl Balancer {
    /// Starts re-resolving every `interval` until `stop` fires. The first resolution
    /// happens at the first request (or right away in the background).
    pub fn start(
        host: String,
        port: u16,
        exporter: String,
        interval: Duration,
        connect: Box<Connect>,
        stop: CancellationToken,
    ) -> Arc<Balancer> {
        let b = Arc::new(Balancer {
            host,
            port,
            exporter,
            connect,
            backends: RwLock::default(),
            next: AtomicUsize::new(0),
            resolve_soon: Notify::new(),
            last_resolve: Mutex::new(None),
            resolving: tokio::sync::Mutex::new(()),
        });
        let weak = Arc::downgrade(&b);
        tokio::spawn(async move {
            loop {
                let Some(b) = weak.upgrade() else { return };
                b.resolve().await;
                let wait = async {
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = b.resolve_soon.notified() => tokio::time::sleep(MIN_RESOLVE_GAP).await,
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = wait => {}
                }
            }
        });
        b
    }

    fn list(&self) -> Arc<Vec<Arc<Backend>>> {
        self.backends
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Looks the name up and reconciles the list: addresses that stay keep their
    /// connection, new ones get one, vanished ones are closed. A failed or empty
    /// lookup keeps the last list (a DNS hiccup must not stop sending).
    pub async fn resolve(&self) {
        let _one_at_a_time = self.resolving.lock().await;
        *self.last_resolve.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let found = match tokio::net::lookup_host((self.host.as_str(), self.port)).await {
            Ok(addrs) => {
                let mut v: Vec<SocketAddr> = addrs.collect();
                v.sort();
                v.dedup();
                v
            }
            Err(e) => {
                tracing::warn!(exporter = %self.exporter, name = %self.host, error = %e,
                    "cannot resolve the dns:/// endpoint; keeping the addresses resolved before");
                return;
            }
        };
        if found.is_empty() {
            tracing::warn!(exporter = %self.exporter, name = %self.host,
                "the dns:/// endpoint resolved to no address; keeping the addresses resolved before");
            return;
        }
        let old = self.list();
        if old.iter().map(|b| b.addr).eq(found.iter().copied()) {
            self.publish(&old);
            return;
        }
        let mut new = Vec::with_capacity(found.len());
        for addr in &found {
            if let Some(b) = old.iter().find(|b| b.addr == *addr) {
                new.push(b.clone());
                continue;
            }
            match (self.connect)(*addr) {
                Ok(grpc) => new.push(Arc::new(Backend {
                    addr: *addr,
                    grpc,
                    down_since: Mutex::new(None),
                    requests: metrics::counter!(names::EXPORTER_ENDPOINT_REQUESTS,
                        "exporter" => self.exporter.clone(), "address" => addr.to_string()),
                })),
                Err(e) => tracing::warn!(exporter = %self.exporter, address = %addr, error = %e,
                    "cannot set up a connection to a resolved address; leaving it out"),
            }
        }
        tracing::info!(exporter = %self.exporter, name = %self.host,
            addresses = ?found, "dns:/// endpoint resolved");
        let new = Arc::new(new);
        self.publish(&new);
        *self.backends.write().unwrap_or_else(|p| p.into_inner()) = new;
    }

    fn publish(&self, list: &[Arc<Backend>]) {
        let now = Instant::now();
        let down = list.iter().filter(|b| !is_up(b, now)).count();
        metrics::gauge!(names::EXPORTER_ENDPOINTS, "exporter" => self.exporter.clone(), "state" => "healthy")
            .set((list.len() - down) as f64);
        metrics::gauge!(names::EXPORTER_ENDPOINTS, "exporter" => self.exporter.clone(), "state" => "down")
            .set(down as f64);
    }

    /// The next address that is up, round-robin; when all are down, the one that failed longest ago.
    pub async fn pick(&self) -> Result<Arc<Backend>, String> {
        let mut list = self.list();
        if list.is_empty() {
            self.resolve().await;
            list = self.list();
        }
        if list.is_empty() {
            return Err(format!(
                "dns:///{}:{} has not resolved to any address yet",
                self.host, self.port
            ));
        }
        let now = Instant::now();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = list.len();
        let chosen = (0..n)
            .map(|i| &list[(start + i) % n])
            .find(|b| is_up(b, now))
            .or_else(|| list.iter().min_by_key(|b| b.down_since()))
            .cloned()
            .expect("the list is not empty");
        chosen.requests.increment(1);
        Ok(chosen)
    }

    /// An attempt on `b` could not reach it: skip it for a while and look the name up again
    /// soon (the pod behind it may have gone).
    pub fn mark_down(&self, b: &Backend) {
        {
            let mut d = b.down_since.lock().unwrap_or_else(|p| p.into_inner());
            if d.is_none() {
                tracing::warn!(exporter = %self.exporter, address = %b.addr,
                    "a resolved address failed; sending to the others for {DOWN_FOR:?}");
            }
            *d = Some(Instant::now());
        }
        self.publish(&self.list());
        let recent = self
            .last_resolve
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < MIN_RESOLVE_GAP);
        if !recent {
            self.resolve_soon.notify_one();
        }
    }

    /// An attempt on `b` reached it.
    pub fn mark_up(&self, b: &Backend) {
        let was_down = b
            .down_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some();
        if was_down {
            tracing::info!(exporter = %self.exporter, address = %b.addr, "a resolved address is back");
            self.publish(&self.list());
        }
    }
}

fn is_up(b: &Backend, now: Instant) -> bool {
    b.down_since()
        .is_none_or(|t| now.duration_since(t) >= DOWN_FOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dns_targets() {
        assert_eq!(parse_dns("gw:4317"), None);
        assert_eq!(
            parse_dns("dns:///gw-headless.ns.svc:4317"),
            Some(Ok(("gw-headless.ns.svc".into(), 4317)))
        );
        assert_eq!(
            parse_dns("dns:///[::1]:4317"),
            Some(Ok(("::1".into(), 4317)))
        );
        assert!(matches!(parse_dns("dns://8.8.8.8/gw:4317"), Some(Err(_))));
        assert!(matches!(parse_dns("dns:///gw"), Some(Err(_))));
        assert!(matches!(parse_dns("dns:///gw:0"), Some(Err(_))));
        assert!(matches!(parse_dns("dns:///:4317"), Some(Err(_))));
    }

    fn stopped() -> CancellationToken {
        let t = CancellationToken::new();
        t.cancel();
        t
    }

    #[tokio::test]
    async fn round_robin_skips_addresses_that_are_down() {
        let b = Balancer::start(
            "localhost".into(),
            9,
            "t".into(),
            Duration::from_secs(3600),
            Box::new(|a| {
                let ep = tonic::transport::Endpoint::from_shared(format!("http://{a}"))
                    .map_err(|e| e.to_string())?;
                Ok(tonic::client::Grpc::new(ep.connect_lazy()))
            }),
            stopped(),
        );
        // Three fixed addresses instead of what localhost resolves to.
        let mk = |a: &str| {
            let addr: SocketAddr = a.parse().unwrap();
            Arc::new(Backend {
                addr,
                grpc: tonic::client::Grpc::new(
                    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                        .unwrap()
                        .connect_lazy(),
                ),
                down_since: Mutex::new(None),
                requests: metrics::Counter::noop(),
            })
        };
        // The background task resolves once and stops; replace what it found.
        while b.list().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        *b.backends.write().unwrap() = Arc::new(vec![
            mk("127.0.0.1:1"),
            mk("127.0.0.2:1"),
            mk("127.0.0.3:1"),
        ]);
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(b.pick().await.unwrap().addr.ip().to_string());
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                "127.0.0.1",
                "127.0.0.1",
                "127.0.0.2",
                "127.0.0.2",
                "127.0.0.3",
                "127.0.0.3"
            ]
        );
        let two = b.list()[1].clone();
        b.mark_down(&two);
        for _ in 0..6 {
            assert_ne!(b.pick().await.unwrap().addr, two.addr);
        }
        for x in b.list().iter() {
            b.mark_down(x);
        }
        // All down: the one that failed longest ago is tried.
        let first = b.list()[0].clone();
        assert_eq!(b.pick().await.unwrap().addr, first.addr);
        b.mark_up(&two);
        assert!(is_up(&two, Instant::now()));
    }
}
