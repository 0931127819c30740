//! The real `stackline` binary as a child process: started with a config, its metrics and health read over HTTP, stopped and waited for.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

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
        Self::start_with(crate::stackline_binary().as_path(), dir, config)
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
        Self::launch(crate::stackline_binary().as_path(), dir, configs, env)
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

    /// Rewrites the config file `start` wrote (placeholders filled in the same way) and
    /// sends SIGHUP, as an operator reloading a changed configuration would.
    pub fn reload(&self, config: &str) {
        let any = "127.0.0.1:0";
        let text = config
            .replace("{OTLP}", any)
            .replace("{HTTP}", any)
            .replace("{METRICS}", any)
            .replace("{DIR}", &self.dir.display().to_string());
        std::fs::write(self.dir.join("stackline.yaml"), text).unwrap();
        let pid = nix::unistd::Pid::from_raw(self.child.as_ref().unwrap().id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
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

/// A memory field of `/proc/PID/status` (`VmRSS`, `VmHWM`…), in MiB; 0 if unreadable.
pub fn status_mib(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}
