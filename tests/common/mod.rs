//! Helpers for tests that run the real `stackline` binary against real sockets and files.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stackline::otlp::ProfilesRequest;
use stackline::otlp::collector::profiles_service_client::ProfilesServiceClient;
use stackline::otlp::collector::profiles_service_server::{ProfilesService, ProfilesServiceServer};
use stackline::otlp::collector::{ExportProfilesServiceRequest, ExportProfilesServiceResponse};
use stackline::otlp::synth::decode_samples;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `stackline` process; killed when dropped.
pub struct Stackline {
    child: Option<Child>,
    pub otlp: SocketAddr,
    pub metrics: SocketAddr,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Stackline {
    /// Writes `config` (with `{OTLP}`, `{METRICS}` and `{DIR}` filled in) and starts the binary.
    pub fn start(dir: &Path, config: &str) -> Stackline {
        let otlp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let text = config
            .replace("{OTLP}", &otlp.to_string())
            .replace("{METRICS}", &metrics.to_string())
            .replace("{DIR}", &dir.display().to_string());
        let cfg = dir.join("stackline.yaml");
        std::fs::write(&cfg, text).unwrap();
        let log = dir.join("stackline.log");
        let child = Command::new(env!("CARGO_BIN_EXE_stackline"))
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut s = Stackline {
            child: Some(child),
            otlp,
            metrics,
            dir: dir.to_path_buf(),
            log,
        };
        s.wait_listening();
        s
    }

    fn wait_listening(&mut self) {
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if std::net::TcpStream::connect(self.otlp).is_ok()
                && std::net::TcpStream::connect(self.metrics).is_ok()
            {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("stackline exited early ({st}):\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("stackline did not start listening:\n{}", self.logs());
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.otlp)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    pub fn sigterm(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.as_ref().unwrap().id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    }

    /// Waits for the process to exit (SIGKILL after `timeout`).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let until = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > until {
                let _ = child.kill();
                panic!(
                    "stackline did not exit within {timeout:?}:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.metrics))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The value of one Prometheus series; 0 if absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, text) = self.get("/metrics").await;
        metric_value(&text, name, labels)
    }
}

impl Drop for Stackline {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Finds `name{labels…} value` in Prometheus text (labels may be a subset).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A real gRPC backend that records what it receives.
#[derive(Clone, Default)]
pub struct Backend {
    pub received: Arc<Mutex<Vec<ProfilesRequest>>>,
    pub calls: Arc<AtomicUsize>,
    /// Calls still to fail with UNAVAILABLE.
    pub fail_next: Arc<AtomicUsize>,
    /// Delay before answering each call.
    pub delay: Arc<Mutex<Duration>>,
}

#[tonic::async_trait]
impl ProfilesService for Backend {
    async fn export(
        &self,
        request: Request<ExportProfilesServiceRequest>,
    ) -> Result<Response<ExportProfilesServiceResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Status::unavailable("backend warming up"));
        }
        self.received.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportProfilesServiceResponse::default()))
    }
}

impl Backend {
    /// Serves on `addr` until the returned sender is dropped or fired.
    pub async fn serve(&self, addr: SocketAddr) -> tokio::sync::oneshot::Sender<()> {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let svc = ProfilesServiceServer::new(self.clone())
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .accept_compressed(tonic::codec::CompressionEncoding::Zstd)
            .max_decoding_message_size(256 << 20);
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async move {
                        let _ = rx.await;
                    },
                )
                .await
                .unwrap();
        });
        tx
    }

    pub fn samples(&self) -> Vec<(u64, Vec<String>, String)> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(decode_samples)
            .collect()
    }

    pub fn requests(&self) -> Vec<ProfilesRequest> {
        self.received.lock().unwrap().clone()
    }
}

pub async fn client(endpoint: String) -> ProfilesServiceClient<Channel> {
    ProfilesServiceClient::connect(endpoint).await.unwrap()
}

/// Every request in an OTLP/JSON-lines file.
pub fn read_json_lines(path: &Path) -> Vec<ProfilesRequest> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f().await
}
