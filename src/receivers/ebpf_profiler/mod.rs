//! `ebpf_profiler` receiver: samples every CPU with an eBPF `perf_event` program and
//! sends one OTLP profile per report interval.
//!
//! - [`loader`]: maps via aya, our own program load with [`verifier_log`], attach per CPU.
//! - [`verifier_log`]: the log buffer that sizes itself and never fails a valid program.
//! - [`profile`]: raw samples → OTLP locations, mappings (with build IDs) and attributes.
//! - [`procfs`]: `/proc` and kernel ranges.  [`sys`]: the system calls, and all `unsafe`.
//!
//! A load or attach failure never ends the process: the receiver reports itself
//! unhealthy on `/health`, counts the failure in metrics, logs it once per attempt and
//! tries again with backoff.

mod config;
pub mod kernel;
pub mod loader;

pub mod profile;
pub mod sys;
pub mod unwind;
pub mod verifier_log;

#[path = "../../../ebpf/src/shared.rs"]
#[allow(dead_code)]
pub mod shared;

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::task::JoinHandle;

pub use config::{
    EbpfProfilerConfig, LoadRetryConfig, UnwindConfig, UnwindMode, VerifierLogConfig,
};

use crate::config::parse_component;
use crate::pipeline::{Context, Envelope, Fanout, Receiver, ReceiverFactory, StartError};
use crate::telemetry::names;
use loader::{LoadError, LoadRequest, PROGRAM, Profiler};
use profile::{DecodedSample, IntervalProfile, Resolver};
use shared::counter;
use unwind::manager;
use verifier_log::VerifierLog;

pub fn factory() -> ReceiverFactory {
    ReceiverFactory {
        type_name: "ebpf_profiler",
        description: "samples every CPU with eBPF (perf_event): user and kernel stacks of all processes",
        origin: crate::pipeline::Origin::ThisHost,
        create: |_, v| {
            Ok(Box::new(EbpfProfiler {
                cfg: parse_component(v)?,
            }))
        },
    }
}

pub struct EbpfProfiler {
    cfg: EbpfProfilerConfig,
}

#[async_trait]
impl Receiver for EbpfProfiler {
    async fn start(
        self: Box<Self>,
        ctx: Context,
        out: Fanout,
    ) -> Result<JoinHandle<()>, StartError> {
        let object: Arc<Vec<u8>> = Arc::new(match &self.cfg.object_path {
            Some(p) => std::fs::read(p).map_err(|e| {
                format!(
                    "cannot read receivers.{}.object_path {}: {e}",
                    ctx.id,
                    p.display()
                )
            })?,
            None => loader::OBJECT.to_vec(),
        });
        let cpus = match &self.cfg.cpus {
            Some(c) => c.clone(),
            None => aya::util::online_cpus()
                .map_err(|(path, e)| format!("cannot read the online CPUs from {path}: {e}"))?,
        };
        Ok(tokio::spawn(run(self.cfg, ctx, out, object, cpus)))
    }
}

fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Records what a load produced: metrics, and the log where the user asked for it.
fn record_log(cfg: &VerifierLogConfig, program: &str, log: &VerifierLog) {
    let p = ("program", program.to_owned());
    metrics::gauge!(names::EBPF_VERIFIER_LOG_BYTES, std::slice::from_ref(&p))
        .set(log.text.len() as f64);
    if log.truncated {
        metrics::counter!(names::EBPF_VERIFIER_LOG_TRUNCATED, std::slice::from_ref(&p))
            .increment(1);
        match log.needed_bytes {
            Some(n) => tracing::warn!(
                program,
                kept = log.text.len(),
                needed = n,
                "the verifier log needed {n} bytes, more than verifier_log.max_size ({}); the program loaded without it and the first part is kept",
                cfg.max_size
            ),
            None => tracing::warn!(
                program,
                kept = log.text.len(),
                "the verifier log did not fit verifier_log.max_size ({}); the program loaded without it and the part that fit is kept",
                cfg.max_size
            ),
        }
    }
    if let Some(s) = log.stats() {
        metrics::gauge!(names::EBPF_VERIFIER_INSNS, std::slice::from_ref(&p))
            .set(s.insns_processed as f64);
        metrics::gauge!(names::EBPF_VERIFIER_STATES, "program" => program.to_owned(), "kind" => "total")
            .set(s.total_states as f64);
        metrics::gauge!(names::EBPF_VERIFIER_STATES, "program" => program.to_owned(), "kind" => "peak")
            .set(s.peak_states as f64);
        if let Some(us) = s.verification_time_usec {
            metrics::gauge!(names::EBPF_VERIFIER_SECONDS, std::slice::from_ref(&p))
                .set(us as f64 / 1e6);
        }
    }
    if log.text.is_empty() {
        return;
    }
    if cfg.output.is_empty() {
        tracing::debug!(program, "verifier log:\n{}", log.text);
        return;
    }
    let dir = Path::new(&cfg.output);
    let name = format!("{program}.log");
    let path = dir.join(&name);
    // Written whole (aside, then renamed), so a reader never sees half a log.
    let written = std::fs::create_dir_all(dir)
        .and_then(|_| crate::host::fs::replace_whole(dir, &name, 0o640, log.text.as_bytes()));
    if let Err(e) = written {
        tracing::error!(path = %path.display(), error = %e, "cannot write the verifier log (verifier_log.output)");
    } else {
        tracing::info!(path = %path.display(), bytes = log.text.len(), "verifier log written");
    }
}

/// Counts a failed attempt by kind.
fn record_failure(cfg: &VerifierLogConfig, e: &LoadError) {
    let failure = |errno: String, reason: &'static str| {
        metrics::counter!(names::EBPF_PROGRAM_LOADS, "program" => PROGRAM, "outcome" => "failure")
            .increment(1);
        metrics::counter!(names::EBPF_PROGRAM_LOAD_FAILURES, "program" => PROGRAM, "errno" => errno, "reason" => reason).increment(1);
    };
    match e {
        LoadError::Program {
            failure: f,
            program,
        } => {
            record_log(cfg, program, &f.log);
            failure(errno_label(f.errno), f.reason());
        }
        LoadError::Capabilities { .. } => failure("EPERM".into(), "missing_capabilities"),
        LoadError::Attach { errno, .. } => {
            metrics::counter!(names::EBPF_ATTACH_FAILURES, "program" => PROGRAM, "errno" => errno_label(*errno)).increment(1);
        }
        LoadError::Maps(_) => failure("unknown".into(), "maps"),
        LoadError::Object(_) | LoadError::ReadObject { .. } => failure("none".into(), "object"),
    }
}

fn errno_label(errno: i32) -> String {
    sys::errno_name(errno)
        .split(' ')
        .next()
        .unwrap_or("unknown")
        .to_owned()
}

async fn run(
    cfg: EbpfProfilerConfig,
    ctx: Context,
    out: Fanout,
    object: Arc<Vec<u8>>,
    cpus: Vec<u32>,
) {
    let mut wait = cfg.load_retry.initial_interval;
    let mut loaded_ok = false;
    // Where a task's user registers are, for samples taken in the kernel. Without them
    // such samples get no user stack in the native modes; `frame_pointer` mode leaves
    // them to the kernel's walk.
    let offsets = match tokio::task::spawn_blocking(kernel::task_offsets).await {
        Ok(Ok(o)) => Some(o),
        Ok(Err(e)) => {
            if cfg.unwind.mode == UnwindMode::FramePointer {
                tracing::debug!(receiver = %ctx.id, "{e}");
            } else {
                tracing::warn!(receiver = %ctx.id, "{e}");
            }
            None
        }
        Err(_) => None,
    };
    loop {
        if ctx.shutdown.is_cancelled() {
            break;
        }
        let req_cfg = cfg.clone();
        let (obj, cpus2) = (object.clone(), cpus.clone());
        let attempt = tokio::task::spawn_blocking(move || {
            let mut seen_logs = Vec::new();
            let r = loader::load(
                &LoadRequest {
                    object: &obj,
                    log: req_cfg.verifier_log.settings(),
                    config: shared::Config {
                        include_idle: req_cfg.include_idle as u32,
                        kernel_stacks: req_cfg.kernel_stacks as u32,
                        mode: req_cfg.unwind.program_mode(),
                        max_frames: req_cfg.unwind.max_frames,
                        generation: 0,
                        _pad: 0,
                    },
                    cpus: &cpus2,
                    frequency: req_cfg.sampling_frequency,
                    offsets,
                },
                &mut |name, log| seen_logs.push((name.to_owned(), log.clone())),
            );
            (r, seen_logs)
        })
        .await;
        let (result, logs) = match attempt {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(receiver = %ctx.id, error = %e, "the load attempt panicked");
                (
                    Err(LoadError::Object(format!("load attempt panicked: {e}"))),
                    Vec::new(),
                )
            }
        };
        for (program, log) in &logs {
            // The program loaded (attaching may still have failed). The log is in place
            // before the metric says so.
            record_log(&cfg.verifier_log, program, log);
            metrics::counter!(names::EBPF_PROGRAM_LOADS, "program" => program.clone(), "outcome" => "success").increment(1);
        }
        match result {
            Ok(profiler) => {
                tracing::info!(
                    receiver = %ctx.id,
                    cpus = cpus.len(),
                    frequency_hz = cfg.sampling_frequency,
                    verifier_log_bytes = profiler.log.text.len(),
                    load_attempts = profiler.log.attempts,
                    cpu_ms = (sys::process_cpu_seconds() * 1e3).round(),
                    "eBPF profiler attached"
                );
                ctx.health.running();
                wait = cfg.load_retry.initial_interval;
                loaded_ok = true;
                match read_samples(profiler, &cfg, &ctx, &out).await {
                    Ok(()) => break,
                    Err(e) => {
                        ctx.health.unhealthy(format!("reading samples failed: {e}"));
                        tracing::error!(receiver = %ctx.id, error = %e, "reading samples failed; reloading");
                    }
                }
            }
            Err(e) => {
                record_failure(&cfg.verifier_log, &e);
                ctx.health.unhealthy(e.to_string());
                tracing::error!(receiver = %ctx.id, "{e}; retrying in {wait:?}");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ctx.shutdown.cancelled() => break,
        }
        wait = (wait * 2).min(cfg.load_retry.max_interval);
    }
    if loaded_ok {
        ctx.health.stopping();
    }
}

/// Reads samples until shutdown, on a blocking thread (reading /proc blocks), sending
/// one profile per report interval, and a last partial one on shutdown.
async fn read_samples(
    profiler: Profiler,
    cfg: &EbpfProfilerConfig,
    ctx: &Context,
    out: &Fanout,
) -> std::io::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<crate::otlp::Checked>(2);
    let (cfg2, stop2) = (cfg.clone(), stop.clone());
    let mut reader = tokio::task::spawn_blocking(move || reader_loop(profiler, &cfg2, &stop2, &tx));
    let mut stopping = false;
    loop {
        tokio::select! {
            req = rx.recv() => match req {
                Some(req) => { let _ = out.send(Envelope::unacked(req)).await; }
                None => break,
            },
            _ = ctx.shutdown.cancelled(), if !stopping => {
                stopping = true;
                stop.store(true, Ordering::SeqCst);
            }
        }
    }
    match (&mut reader).await {
        Ok(r) => r,
        Err(e) => Err(std::io::Error::other(format!(
            "sample reader panicked: {e}"
        ))),
    }
}

/// Sets `stackline_ebpf_map_memory_bytes` for the maps of both programs.
fn map_memory(p: &Profiler) {
    let mut maps: std::collections::BTreeMap<String, u64> = Default::default();
    for fd in [&p.program_fd, &p.walker_fd] {
        for (name, bytes) in sys::prog_map_memory(fd.as_fd()).unwrap_or_default() {
            maps.insert(name, bytes);
        }
    }
    for (name, bytes) in maps {
        metrics::gauge!(names::EBPF_MAP_MEMORY, "map" => name).set(bytes as f64);
    }
}

/// Longest wait for samples. The program wakes the reader itself once 512 KiB are
/// pending, and at once for unwind requests, so this only bounds how long a trickle
/// of samples waits and how soon a stop is seen: each wake-up costs the agent CPU
/// whether or not there is much to read (at 20 Hz they were most of its cost).
const POLL_EVERY: Duration = Duration::from_millis(500);

/// How often the map memory metric is refreshed (at the first report, then at most this
/// often). The maps are fixed once loaded and mostly preallocated, so their sizes barely
/// move, while reading them opens each map and its fdinfo: 7 % of the agent's CPU at
/// 20 Hz when done every report interval.
const MAP_MEMORY_EVERY: Duration = Duration::from_secs(60);

fn reader_loop(
    mut p: Profiler,
    cfg: &EbpfProfilerConfig,
    stop: &AtomicBool,
    tx: &tokio::sync::mpsc::Sender<crate::otlp::Checked>,
) -> std::io::Result<()> {
    let mut offset = sys::monotonic_to_unix_offset_ns();
    let host = if cfg.host_name.trim().is_empty() {
        hostname()
    } else {
        cfg.host_name.trim().to_owned()
    };
    let mut resolver = Resolver::new();
    if let Some(tables) = p.tables.take() {
        resolver.set_tables(manager::spawn(tables, cfg.unwind.max_memory.as_u64())?);
    }
    let unwind_meters = UnwindMeters::new();
    let samples_total = metrics::counter!(names::EBPF_SAMPLES);
    let ringbuf_lost = metrics::counter!(names::EBPF_SAMPLES_LOST, "reason" => "ring_buffer_full");
    let undecodable = metrics::counter!(names::EBPF_SAMPLES_LOST, "reason" => "undecodable");
    let invalid = metrics::counter!(names::EBPF_SAMPLES_LOST, "reason" => "invalid_profile");
    let run_seconds = metrics::gauge!(names::EBPF_PROGRAM_RUN_SECONDS, "program" => PROGRAM);
    let runs = metrics::counter!(names::EBPF_PROGRAM_RUNS, "program" => PROGRAM);
    let mut last_lost = loader::counter(&p.counters, counter::RINGBUF_FULL);
    let mut interval = IntervalProfile::new(unix_now_ns(), cfg.sampling_frequency);
    let mut next_report = Instant::now() + cfg.report_interval;
    let mut next_map_memory = Instant::now();
    let mut sample = DecodedSample::default();
    let mut started = false;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let until = next_report.saturating_duration_since(Instant::now());
        if !stopping {
            let mut fds = vec![p.samples.as_fd()];
            if let Some(e) = &p.events {
                fds.push(e.as_fd());
            }
            sys::poll_readable(&fds, until.min(POLL_EVERY))?;
        }
        let now = Instant::now();
        if let Some(events) = &mut p.events {
            while let Some(item) = events.next() {
                if item.len() >= std::mem::size_of::<shared::Event>() {
                    // SAFETY: the length is checked; Event is #[repr(C)] plain integers.
                    let e: shared::Event =
                        unsafe { std::ptr::read_unaligned(item.as_ptr() as *const shared::Event) };
                    resolver.requested(e.pid, now);
                }
            }
        }
        let mut read = 0;
        while let Some(item) = p.samples.next() {
            if !started {
                started = true;
                let cpu = sys::process_cpu_seconds();
                metrics::gauge!(names::EBPF_STARTUP_CPU_SECONDS).set(cpu);
                tracing::info!(cpu_ms = (cpu * 1e3).round(), "first sample read");
            }
            if sample.decode_from(&item) {
                let unix = (sample.ktime_ns as i128 + offset).max(0) as u64;
                interval.add(&sample, unix, &mut resolver, now);
                read += 1;
            } else {
                undecodable.increment(1);
            }
        }
        samples_total.increment(read);
        // The program's run time, as fresh as the sample count (one system call per
        // wake-up), so that the two can be set against each other at any scrape.
        if let Ok((run_ns, run_cnt)) = sys::prog_run_stats(p.program_fd.as_fd()) {
            run_seconds.set(run_ns as f64 / 1e9);
            runs.absolute(run_cnt);
        }
        if stopping || now >= next_report {
            let lost = loader::counter(&p.counters, counter::RINGBUF_FULL);
            ringbuf_lost.increment(lost.saturating_sub(last_lost));
            last_lost = lost;
            unwind_meters.update(&p.counters);
            if now >= next_map_memory {
                map_memory(&p);
                next_map_memory = now + MAP_MEMORY_EVERY;
            }
            let end = unix_now_ns();
            let done = std::mem::replace(
                &mut interval,
                IntervalProfile::new(end, cfg.sampling_frequency),
            );
            if !done.is_empty() {
                // Checked like any input, here on the reader's thread: an invalid profile
                // would be a bug in building it, and is counted rather than sent.
                let req = done.finish(end, &host);
                let n = crate::otlp::sample_count(&req);
                match crate::otlp::Checked::new(req) {
                    Ok(req) => {
                        if tx.blocking_send(req).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        invalid.increment(n);
                        tracing::error!(error = %e, samples = n, "the interval's profile has a bad index (a bug); dropped (counted)");
                    }
                }
            }
            resolver.next_interval(now);
            // The interval's profile and the work behind it are freed: give the pages back.
            crate::host::release_free_memory();
            // The wall clock may be stepped or slewed: re-read its offset each interval.
            offset = sys::monotonic_to_unix_offset_ns();
            next_report = now + cfg.report_interval;
            if stopping {
                break;
            }
        }
    }
    Ok(())
}

/// The program's unwinding counters, as metrics.
struct UnwindMeters {
    stops: Vec<(u32, metrics::Counter)>,
    frames_table: metrics::Counter,
    frames_fp: metrics::Counter,
    events_sent: metrics::Counter,
    events_lost: metrics::Counter,
}

impl UnwindMeters {
    fn new() -> Self {
        use unwind::rules::stop;
        let frames = |m: &'static str| metrics::counter!(names::EBPF_UNWIND_FRAMES, "method" => m);
        let events = |r: &'static str| metrics::counter!(names::EBPF_UNWIND_EVENTS, "result" => r);
        UnwindMeters {
            stops: (stop::COMPLETE..stop::COUNT)
                .map(|r| {
                    (
                        counter::STOPS + r as u32,
                        metrics::counter!(names::EBPF_UNWIND_STOPS, "reason" => stop::NAMES[r as usize]),
                    )
                })
                .collect(),
            frames_table: frames("eh_frame"),
            frames_fp: frames("frame_pointer"),
            events_sent: events("sent"),
            events_lost: events("lost"),
        }
    }

    /// The kernel's counts are cumulative: the metrics take them as they are.
    fn update(&self, counters: &aya::maps::PerCpuArray<aya::maps::MapData, u64>) {
        for (index, c) in &self.stops {
            c.absolute(loader::counter(counters, *index));
        }
        self.frames_table
            .absolute(loader::counter(counters, counter::FRAMES_TABLE));
        self.frames_fp
            .absolute(loader::counter(counters, counter::FRAMES_FP));
        self.events_sent
            .absolute(loader::counter(counters, counter::EVENTS_SENT));
        self.events_lost
            .absolute(loader::counter(counters, counter::EVENTS_LOST));
    }
}

/// What `stackline ebpf-check` reports: how loading the profiler's programs went. The
/// top-level fields are the entry program's; `programs` has each program that loaded.
#[derive(Debug, serde::Serialize)]
pub struct CheckReport {
    pub kernel: String,
    pub loaded: bool,
    pub error: Option<String>,
    pub attempts: u32,
    pub log_bytes: usize,
    pub buffer_bytes: u32,
    /// Bytes the whole log needed, where the kernel says (6.4+).
    pub needed_bytes: Option<u32>,
    pub truncated: bool,
    pub insns_processed: Option<u64>,
    pub programs: Vec<ProgramReport>,
}

/// One program's load, in `ebpf-check`'s report.
#[derive(Debug, serde::Serialize)]
pub struct ProgramReport {
    pub name: String,
    /// False for the program the kernel refused (its log is the one that says why).
    pub loaded: bool,
    pub attempts: u32,
    pub log_bytes: usize,
    pub truncated: bool,
    /// Instructions the verifier processed (with `--stats` or a level), of its limit of 1,000,000.
    pub insns_processed: Option<u64>,
}

/// Loads the built-in profiler programs (entry and the mode's walker) with `log` settings,
/// attaching nothing, and reports what happened: a quick way to see whether a node's
/// kernel runs the agent.
pub fn check(log: &VerifierLogConfig, unwind: &UnwindConfig) -> CheckReport {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let mut seen: Vec<(String, VerifierLog, bool)> = Vec::new();
    let r = loader::load(
        &LoadRequest {
            object: loader::OBJECT,
            log: log.settings(),
            config: shared::Config {
                include_idle: 0,
                kernel_stacks: 1,
                mode: unwind.program_mode(),
                max_frames: unwind.max_frames,
                generation: 0,
                _pad: 0,
            },
            cpus: &[],
            frequency: 1,
            offsets: None,
        },
        &mut |name, l| {
            record_log(log, name, l);
            seen.push((name.to_owned(), l.clone(), true))
        },
    );
    // The program the kernel refused, with its log (written where the user asked).
    if let Err(LoadError::Program { failure, program }) = &r {
        record_log(log, program, &failure.log);
        seen.push((program.to_string(), failure.log.clone(), false));
    }
    let error = r.as_ref().err().map(|e| e.to_string());
    let entry = seen
        .iter()
        .find(|(n, _, _)| n == PROGRAM)
        .map(|(_, l, _)| l.clone());
    let log = match (&r, entry) {
        (Err(LoadError::Program { failure, program }), _) if program == PROGRAM => {
            Some(failure.log.clone())
        }
        (_, s) => s,
    }
    .unwrap_or_default();
    CheckReport {
        kernel,
        loaded: r.is_ok(),
        error,
        attempts: log.attempts,
        log_bytes: log.text.len(),
        buffer_bytes: log.buffer_bytes,
        needed_bytes: log.needed_bytes,
        truncated: log.truncated,
        insns_processed: log.stats().map(|s| s.insns_processed),
        programs: seen
            .iter()
            .map(|(name, l, loaded)| ProgramReport {
                name: name.clone(),
                loaded: *loaded,
                attempts: l.attempts,
                log_bytes: l.text.len(),
                truncated: l.truncated,
                insns_processed: l.stats().map(|s| s.insns_processed),
            })
            .collect(),
    }
}
