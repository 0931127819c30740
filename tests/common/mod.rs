//! Helpers for tests that run the real `stackline` binary against real sockets and files.
#![allow(dead_code)]

pub mod faulty_fs;

use std::net::SocketAddr;
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

/// A port on 127.0.0.1 held by this test and not yet listening: a client that connects
/// is refused, as by a backend that is down, and no other process can take the port
/// until [`ReservedPort::listen`] turns it into a listener on the same socket. (Choosing
/// a port by binding and releasing it races with every other test that does the same.)
pub struct ReservedPort(socket2::Socket);

impl ReservedPort {
    pub fn new() -> ReservedPort {
        ReservedPort::on("127.0.0.1")
    }

    /// A port on `ip` (e.g. another loopback address).
    pub fn on(ip: &str) -> ReservedPort {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let addr: SocketAddr = format!("{ip}:0").parse().unwrap();
        s.bind(&addr.into()).unwrap();
        ReservedPort(s)
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.local_addr().unwrap().as_socket().unwrap()
    }

    /// Starts listening on the reserved port.
    pub fn listen(self) -> tokio::net::TcpListener {
        self.0.listen(1024).unwrap();
        self.0.set_nonblocking(true).unwrap();
        tokio::net::TcpListener::from_std(std::net::TcpListener::from(self.0)).unwrap()
    }
}

/// The TCP ports process `pid` listens on (IPv4 and IPv6), read from /proc: for a
/// program of someone else's that was given port 0 and does not say what it bound.
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEX_IP:HEX_PORT; state 0A is LISTEN; field 9 the inode.
            if f.len() > 9
                && f[3] == "0A"
                && inodes.iter().any(|i| i == f[9])
                && let Some(p) = f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                ports.push(p);
            }
        }
    }
    ports
}

impl Default for ReservedPort {
    fn default() -> Self {
        ReservedPort::new()
    }
}

/// A running `stackline` process; killed when dropped.
pub struct Stackline {
    child: Option<Child>,
    pub otlp: SocketAddr,
    pub metrics: SocketAddr,
    /// `{HTTP}` in the config: an OTLP/HTTP listener.
    pub http: SocketAddr,
    /// Every listener the process bound, by config key.
    pub listeners: std::collections::BTreeMap<String, SocketAddr>,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Stackline {
    /// Writes `config` (with `{OTLP}`, `{HTTP}`, `{METRICS}` and `{DIR}` filled in) and starts the binary.
    pub fn start(dir: &Path, config: &str) -> Stackline {
        Self::start_with(Path::new(env!("CARGO_BIN_EXE_stackline")), dir, config)
    }

    /// Starts `program` (the binary, or a wrapper that execs it) with `config`. The
    /// listeners of `{OTLP}`, `{HTTP}` and `{METRICS}` get port 0; the addresses the
    /// process bound come from its `--ready-file`.
    pub fn start_with(program: &Path, dir: &Path, config: &str) -> Stackline {
        let any = "127.0.0.1:0";
        let text = config
            .replace("{OTLP}", any)
            .replace("{HTTP}", any)
            .replace("{METRICS}", any)
            .replace("{DIR}", &dir.display().to_string());
        let cfg = dir.join("stackline.yaml");
        std::fs::write(&cfg, text).unwrap();
        Self::launch(program, dir, &[cfg], &[])
    }

    /// Starts the binary on config files as they are (merged in order, as repeated
    /// `--config` merges them), with `env` set and `dir` as its working directory.
    pub fn start_files(dir: &Path, configs: &[PathBuf], env: &[(String, String)]) -> Stackline {
        Self::launch(
            Path::new(env!("CARGO_BIN_EXE_stackline")),
            dir,
            configs,
            env,
        )
    }

    fn launch(
        program: &Path,
        dir: &Path,
        configs: &[PathBuf],
        env: &[(String, String)],
    ) -> Stackline {
        let log = dir.join("stackline.log");
        let ready = dir.join("stackline.ready.json");
        let _ = std::fs::remove_file(&ready);
        let mut cmd = Command::new(program);
        for c in configs {
            cmd.arg("--config").arg(c);
        }
        let child = cmd
            .arg("--ready-file")
            .arg(&ready)
            .current_dir(dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let unset: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let mut s = Stackline {
            child: Some(child),
            otlp: unset,
            metrics: unset,
            http: unset,
            listeners: Default::default(),
            dir: dir.to_path_buf(),
            log,
        };
        s.wait_ready(&ready);
        s
    }

    /// Waits for the ready file, which the process writes once its whole pipeline runs.
    fn wait_ready(&mut self, ready: &Path) {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if let Ok(text) = std::fs::read_to_string(ready) {
                let r: stackline::net::listen::Ready = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("ready file {}: {e}:\n{text}", ready.display()));
                let find = |suffix: &str| {
                    r.listeners
                        .iter()
                        .find(|(k, _)| k.ends_with(suffix))
                        .map(|(_, a)| *a)
                };
                self.otlp = find(".protocols.grpc.endpoint").unwrap_or(self.otlp);
                self.http = find(".protocols.http.endpoint").unwrap_or(self.http);
                self.metrics = find("service.telemetry.metrics.address").unwrap_or(self.metrics);
                self.listeners = r.listeners;
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("stackline exited early ({st}):\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "stackline did not become ready within 60 s:\n{}",
            self.logs()
        );
    }

    /// The address the listener configured at `key` bound (from the ready file).
    pub fn listener(&self, key: &str) -> SocketAddr {
        *self
            .listeners
            .get(key)
            .unwrap_or_else(|| panic!("no listener {key} in {:?}", self.listeners))
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

    /// Peak resident memory of the process so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> u64 {
        status_mib(self.pid(), "VmHWM")
    }

    /// Resets the peak RSS (`VmHWM`) to the current RSS, so the next peak is one stage's.
    pub fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").unwrap();
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Kills the process at once, as the OOM killer would.
    pub fn sigkill(&mut self) {
        let mut c = self.child.take().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }

    /// The `exporter finished` lines of the log: per exporter, its accounting.
    pub fn exporter_summaries(
        &self,
    ) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>> {
        let mut out = std::collections::BTreeMap::new();
        for line in self
            .logs()
            .lines()
            .filter(|l| l.contains("exporter finished"))
        {
            let mut fields = std::collections::BTreeMap::new();
            let mut name = String::new();
            for tok in line.split_whitespace() {
                if let Some((k, v)) = tok.split_once('=') {
                    if k == "exporter" {
                        name = v.to_owned();
                    } else if let Ok(n) = v.parse::<i64>() {
                        fields.insert(k.to_owned(), n);
                    }
                }
            }
            out.insert(name, fields);
        }
        out
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
        let r = match reqwest::get(format!("http://{}{path}", self.metrics)).await {
            Ok(r) => r,
            // Say whether the process is still there and what it logged, not only "refused".
            Err(e) => panic!(
                "GET {path} from stackline (pid {}, state {}): {e:?}\nits log:\n{}",
                self.child.as_ref().map_or(0, |c| c.id()),
                self.child
                    .as_ref()
                    .and_then(|c| std::fs::read_to_string(format!("/proc/{}/stat", c.id())).ok())
                    .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r[..1].to_owned()))
                    .unwrap_or_else(|| "gone".into()),
                self.logs()
            ),
        };
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
    /// Serves on `port` until the returned sender is dropped or fired.
    pub async fn serve(&self, port: ReservedPort) -> tokio::sync::oneshot::Sender<()> {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let listener = port.listen();
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
        .map(|l| stackline::otlp::json::from_slice(l.as_bytes()).unwrap())
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

/// One frame of a decoded sample.
#[derive(Debug, Clone)]
pub struct Frame {
    pub address: u64,
    pub mapping_start: u64,
    pub mapping_limit: u64,
    pub file_offset: u64,
    pub filename: String,
    pub build_id: Option<String>,
    /// `kernel` or `native`.
    pub frame_type: String,
    /// `frame_pointer` when a native walk reached this frame by frame pointer, else empty.
    pub unwind_method: String,
    /// Function names of the location's lines, innermost first (after symbolization).
    pub functions: Vec<String>,
}

/// A sample with its attributes and frames (leaf first), resolved through the dictionary.
#[derive(Debug, Clone)]
pub struct FlatSample {
    pub attrs: std::collections::BTreeMap<String, String>,
    pub frames: Vec<Frame>,
    pub timestamps: Vec<u64>,
    pub profile_time: u64,
    pub profile_duration: u64,
    pub period: i64,
    pub types: (String, String, String, String),
    pub host: String,
}

fn any_to_string(v: &Option<stackline::otlp::common::AnyValue>) -> String {
    use stackline::otlp::common::any_value::Value;
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

/// Flattens every sample of `req`.
pub fn flatten(req: &ProfilesRequest) -> Vec<FlatSample> {
    let d = req.dictionary.clone().unwrap_or_default();
    let s = |i: i32| d.string_table.get(i as usize).cloned().unwrap_or_default();
    let attr = |i: i32| {
        let a = d
            .attribute_table
            .get(i as usize)
            .cloned()
            .unwrap_or_default();
        (s(a.key_strindex), any_to_string(&a.value))
    };
    let mut out = Vec::new();
    for rp in &req.resource_profiles {
        let host = rp
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "host.name"))
            .map(|kv| any_to_string(&kv.value))
            .unwrap_or_default();
        for p in rp.scope_profiles.iter().flat_map(|s| &s.profiles) {
            let st = p.sample_type.unwrap_or_default();
            let pt = p.period_type.unwrap_or_default();
            for smp in &p.samples {
                let frames: Vec<Frame> = d
                    .stack_table
                    .get(smp.stack_index as usize)
                    .map(|s| s.location_indices.clone())
                    .unwrap_or_default()
                    .iter()
                    .map(|&li| {
                        let l = d.location_table[li as usize].clone();
                        let m = d.mapping_table[l.mapping_index as usize].clone();
                        let mattrs: Vec<(String, String)> =
                            m.attribute_indices.iter().map(|&a| attr(a)).collect();
                        let lattrs: Vec<(String, String)> =
                            l.attribute_indices.iter().map(|&a| attr(a)).collect();
                        Frame {
                            address: l.address,
                            mapping_start: m.memory_start,
                            mapping_limit: m.memory_limit,
                            file_offset: m.file_offset,
                            filename: s(m.filename_strindex),
                            build_id: mattrs
                                .iter()
                                .find(|(k, _)| k == "process.executable.build_id.gnu")
                                .map(|(_, v)| v.clone()),
                            frame_type: lattrs
                                .iter()
                                .find(|(k, _)| k == "profile.frame.type")
                                .map(|(_, v)| v.clone())
                                .unwrap_or_default(),
                            unwind_method: lattrs
                                .iter()
                                .find(|(k, _)| k == "stackline.unwind.method")
                                .map(|(_, v)| v.clone())
                                .unwrap_or_default(),
                            functions: l
                                .lines
                                .iter()
                                .map(|line| {
                                    s(d.function_table[line.function_index as usize].name_strindex)
                                })
                                .collect(),
                        }
                    })
                    .collect();
                // A Sample with a timestamp per event (and no values) stands for as many
                // events: one FlatSample each, so tests count events.
                let events: Vec<Vec<u64>> =
                    if smp.values.is_empty() && smp.timestamps_unix_nano.len() > 1 {
                        smp.timestamps_unix_nano.iter().map(|&t| vec![t]).collect()
                    } else {
                        vec![smp.timestamps_unix_nano.clone()]
                    };
                for timestamps in events {
                    out.push(FlatSample {
                        attrs: smp.attribute_indices.iter().map(|&a| attr(a)).collect(),
                        frames: frames.clone(),
                        timestamps,
                        profile_time: p.time_unix_nano,
                        profile_duration: p.duration_nano,
                        period: p.period,
                        types: (
                            s(st.type_strindex),
                            s(st.unit_strindex),
                            s(pt.type_strindex),
                            s(pt.unit_strindex),
                        ),
                        host: host.clone(),
                    });
                }
            }
        }
    }
    out
}

/// True when this process can load BPF programs; prints why a test is skipped otherwise
/// (a failure under CI=true).
pub fn bpf_available(test: &str) -> bool {
    stackline::testing::root_or_skip(test, "needs root to load BPF programs and open perf events")
}

/// Builds a test workload from tests/workloads/NAME.c with frame pointers and a build ID.
pub fn build_c_workload(name: &str, dir: &Path, extra: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/workloads/{name}.c"));
    let out = dir.join(name);
    let st = Command::new("gcc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-Wl,--build-id"])
        .args(extra)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("gcc must be installed");
    assert!(st.success(), "building {name} failed");
    out
}

/// Starts `cmd` (a test workload) and reads the `ready PID` line it prints once it
/// runs: the child, still running, and its pid.
pub fn spawn_ready(cmd: &mut Command) -> (Child, String) {
    let mut c = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(c.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let pid = line
        .trim()
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("no `ready PID` line: {line:?}"))
        .to_owned();
    (c, pid)
}

/// Waits (at most 60 s) until the agent `s` has loaded its native unwinder.
pub async fn wait_unwinder_loaded(s: &Stackline) {
    let loaded = eventually(Duration::from_secs(60), async || {
        s.metric(
            "stackline_ebpf_program_loads_total",
            &[("program", "stackline_unwind"), ("outcome", "success")],
        )
        .await
            >= 1.0
    })
    .await;
    assert!(loaded, "the unwinder did not load:\n{}", s.logs());
}

/// Output of a command that must succeed.
pub fn run_tool(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Function symbols of an ELF file: (start, end, name), from `nm -S`.
pub fn symbols(path: &Path) -> Vec<(u64, u64, String)> {
    run_tool("nm", &["-S", "--defined-only", path.to_str().unwrap()])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() == 4 && matches!(f[2], "T" | "t") {
                let start = u64::from_str_radix(f[0], 16).ok()?;
                let size = u64::from_str_radix(f[1], 16).ok()?;
                Some((start, start + size, f[3].to_owned()))
            } else {
                None
            }
        })
        .collect()
}

/// A test PKI: a CA, and a server and a client certificate it signed (server valid for
/// `localhost` and 127.0.0.1), written as PEM files into `dir`.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()]);
        let (client_cert, client_key) = leaf(vec!["agent".into()]);
        let write = |name: &str, pem: &str| {
            let p = dir.join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        Pki {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
        }
    }

    pub fn server_tls(&self) -> tonic::transport::ServerTlsConfig {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        ServerTlsConfig::new()
            .identity(Identity::from_pem(
                std::fs::read(&self.server_cert).unwrap(),
                std::fs::read(&self.server_key).unwrap(),
            ))
            .client_ca_root(Certificate::from_pem(std::fs::read(&self.ca).unwrap()))
    }

    /// TLS for a client; with `identity`, it presents the client certificate.
    pub fn client_tls(&self, identity: bool) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut t = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&self.ca).unwrap()))
            .domain_name("localhost");
        if identity {
            t = t.identity(Identity::from_pem(
                std::fs::read(&self.client_cert).unwrap(),
                std::fs::read(&self.client_key).unwrap(),
            ));
        }
        t
    }
}

impl Backend {
    /// Serves over TLS (requiring a client certificate signed by the CA of `tls`).
    pub async fn serve_tls(
        &self,
        port: ReservedPort,
        tls: tonic::transport::ServerTlsConfig,
    ) -> tokio::sync::oneshot::Sender<()> {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let listener = port.listen();
        let svc = ProfilesServiceServer::new(self.clone())
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .accept_compressed(tonic::codec::CompressionEncoding::Zstd);
        let server = tonic::transport::Server::builder().tls_config(tls).unwrap();
        tokio::spawn(async move {
            let mut server = server;
            let _ = server
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async move {
                        let _ = rx.await;
                    },
                )
                .await;
        });
        tx
    }
}

/// Parses each OTLP/JSON line of `path` with the official parser and returns the
/// requests it read, as protobuf decoded here; None if Python or the protos are missing.
pub fn official_parse(path: &Path) -> Option<Vec<ProfilesRequest>> {
    let script = r#"
import sys
from google.protobuf import json_format
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as p
out = open(sys.argv[2], "wb")
for n, line in enumerate(open(sys.argv[1], encoding="utf-8")):
    m = p.ExportProfilesServiceRequest()
    try:
        json_format.Parse(line, m)
    except Exception as e:
        sys.exit(f"line {n + 1}: {e}")
    b = m.SerializeToString()
    out.write(len(b).to_bytes(4, "big") + b)
"#;
    let out = path.with_extension("official.binpb");
    let r = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .arg(&out)
        .output();
    match r {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            if err.contains("No module named") {
                stackline::testing::skip(
                    "OTLP/JSON conformance",
                    "pip install opentelemetry-proto==1.45.2 (.ci/run installs it)",
                );
                return None;
            }
            panic!("the official parser refused the file: {err}");
        }
        Err(e) => {
            stackline::testing::skip("OTLP/JSON conformance", &format!("python3: {e}"));
            return None;
        }
    }
    let bytes = std::fs::read(&out).unwrap();
    let mut rest = &bytes[..];
    let mut reqs = Vec::new();
    while !rest.is_empty() {
        let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        reqs.push(<ProfilesRequest as prost::Message>::decode(&rest[4..4 + n]).unwrap());
        rest = &rest[4 + n..];
    }
    Some(reqs)
}

/// A memory field of `/proc/PID/status` (`VmRSS`, `VmHWM`…), in MiB; 0 if unreadable.
pub fn status_mib(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// Runs scripts/gen-secrets.sh into `dir/secrets` and returns that directory.
pub fn gen_secrets(dir: &Path) -> PathBuf {
    let out = dir.join("secrets");
    let st = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gen-secrets.sh"))
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "scripts/gen-secrets.sh failed");
    out
}
