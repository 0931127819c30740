//! Reading samples: a blocking thread drains the ring buffers, turns each record into
//! the interval's profile and sends one OTLP request per report interval (and a last,
//! partial one on shutdown) into the pipeline; the program's counters become metrics.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::EbpfProfilerConfig;
use super::bpf::loader::{self, PROGRAM, Profiler};
use super::bpf::{pod, sys};
use super::profile::{DecodedSample, IntervalProfile, Resolver};
use super::select::{Initial, Selector};
use super::shared::{Event, counter};
use super::unwind::{self, manager};
use crate::pipeline::{Context, Envelope, Fanout};
use crate::telemetry::names;

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

/// Reads samples until shutdown, on a blocking thread (reading /proc blocks), sending
/// one profile per report interval, and a last partial one on shutdown.
pub(super) async fn read_samples(
    profiler: Profiler,
    initial: Initial,
    cfg: &EbpfProfilerConfig,
    ctx: &Context,
    out: &Fanout,
) -> std::io::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    // Shutdown tells the reader to send its last, partial interval and end.
    let watch = {
        let (stop, shutdown) = (stop.clone(), ctx.shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            stop.store(true, Ordering::SeqCst);
        })
    };
    let (cfg, out, rt) = (cfg.clone(), out.clone(), tokio::runtime::Handle::current());
    let live = Live {
        id: ctx.id.to_string(),
        reload: ctx.reload.clone(),
    };
    let reader = tokio::task::spawn_blocking(move || {
        reader_loop(profiler, initial, &cfg, live, &stop, &out, &rt)
    })
    .await;
    watch.abort();
    match reader {
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

/// Where the reader hears of a reloaded configuration.
struct Live {
    /// The receiver's key in `receivers`.
    id: String,
    reload: crate::pipeline::Reloads,
}

impl Live {
    /// The receiver's new settings, if the configuration was reloaded since the last call.
    fn changed(&mut self) -> Option<Result<EbpfProfilerConfig, String>> {
        if !self.reload.has_changed().unwrap_or(false) {
            return None;
        }
        let cfg = self.reload.borrow_and_update().clone()?;
        Some(match cfg.receivers.get(&self.id) {
            None => Err(format!(
                "the reloaded configuration has no receivers.{}; restart to remove it",
                self.id
            )),
            Some(v) => crate::config::parse_component::<EbpfProfilerConfig>(v).map_err(|errs| {
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
        })
    }
}

/// Applies a reloaded configuration: selection and probabilistic profiling change in
/// the running program; anything else waits for a restart, and says so.
fn reload(
    selector: &mut Selector,
    running: &mut EbpfProfilerConfig,
    new: Result<EbpfProfilerConfig, String>,
    id: &str,
) {
    let new = match new {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(receiver = id, "reload not applied: {e}");
            return;
        }
    };
    match selector.reload(&new.selection, &new.probabilistic) {
        Ok(()) => {
            tracing::info!(
                receiver = id,
                include = new.selection.include.len(),
                exclude = new.selection.exclude.len(),
                budget = ?new.selection.budget.as_ref().map(|b| b.samples_per_second),
                fraction = new.probabilistic.fraction,
                "selection reloaded"
            );
            running.selection = new.selection.clone();
            running.probabilistic = new.probabilistic.clone();
        }
        Err(e) => tracing::error!(
            receiver = id,
            "selection reload failed, the previous rules stay: {e}"
        ),
    }
    let mut rest = new;
    rest.selection = running.selection.clone();
    rest.probabilistic = running.probabilistic.clone();
    if format!("{rest:?}") != format!("{running:?}") {
        tracing::warn!(
            receiver = id,
            "the reloaded configuration changes settings of receivers.{id} other than selection and probabilistic: those take effect at the next restart"
        );
    }
}

fn reader_loop(
    mut p: Profiler,
    initial: Initial,
    cfg: &EbpfProfilerConfig,
    mut live: Live,
    stop: &AtomicBool,
    out: &Fanout,
    rt: &tokio::runtime::Handle,
) -> std::io::Result<()> {
    let mut offset = sys::monotonic_to_unix_offset_ns();
    let host = if cfg.host_name.trim().is_empty() {
        hostname()
    } else {
        cfg.host_name.trim().to_owned()
    };
    let mut resolver = Resolver::new();
    if let Some(tables) = p.tables.take() {
        let manager = manager::spawn(tables, cfg.unwind.max_memory.as_u64())?;
        resolver.processes.subscribe(Box::new(manager));
    }
    let mut running = cfg.clone();
    let mut selector = match p.select.take() {
        Some(maps) => Selector::new(maps, initial),
        None => return Err(std::io::Error::other("the selection maps are missing")),
    };
    let unwind_meters = UnwindMeters::new();
    let samples_total = metrics::counter!(names::EBPF_SAMPLES);
    let ringbuf_lost = metrics::counter!(names::EBPF_SAMPLES_LOST, "reason" => "ring_buffer_full");
    let undecodable = metrics::counter!(names::EBPF_SAMPLES_LOST, "reason" => "undecodable");
    let invalid = metrics::counter!(names::EBPF_SAMPLES_LOST, "reason" => "invalid_profile");
    let run_seconds = metrics::gauge!(names::EBPF_PROGRAM_RUN_SECONDS, "program" => PROGRAM);
    let runs = metrics::counter!(names::EBPF_PROGRAM_RUNS, "program" => PROGRAM);
    // The process-change programs' handles, made once like the sampler's.
    let proc_meters: Vec<_> = p
        .proc_programs
        .iter()
        .map(|(name, _, _)| {
            (
                metrics::gauge!(names::EBPF_PROGRAM_RUN_SECONDS, "program" => *name),
                metrics::counter!(names::EBPF_PROGRAM_RUNS, "program" => *name),
            )
        })
        .collect();
    let mut last_lost = loader::counter(&p.counters, counter::RINGBUF_FULL);
    let mut interval = IntervalProfile::new(unix_now_ns(), cfg.sampling_frequency);
    interval.sampling_fraction = selector.fraction();
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
        if let Some(new) = live.changed() {
            reload(&mut selector, &mut running, new, &live.id);
        }
        if let Some(events) = &mut p.events {
            while let Some(item) = events.next() {
                if let Some(e) = pod::read::<Event>(&item) {
                    resolver.processes.requested(e.pid, now);
                }
            }
        }
        let boundary = stopping || now >= next_report;
        let mut flipped = false;
        // Samples taken after the switch, read by the last drain: the next interval's.
        let mut carry: Vec<(DecodedSample, u64)> = Vec::new();
        let mut flip_ns = u64::MAX;
        let mut read = 0;
        loop {
            while let Some(item) = p.samples.next() {
                if !started {
                    started = true;
                    let cpu = sys::process_cpu_seconds();
                    metrics::gauge!(names::EBPF_STARTUP_CPU_SECONDS).set(cpu);
                    tracing::info!(cpu_ms = (cpu * 1e3).round(), "first sample read");
                }
                if sample.decode_from(&item) {
                    if sample.select_pending
                        && !selector.admit(
                            sample.tgid,
                            sample.image_tag,
                            &sample.comm,
                            &resolver.processes,
                            now,
                        )
                    {
                        continue;
                    }
                    let unix = (sample.ktime_ns as i128 + offset).max(0) as u64;
                    if sample.ktime_ns >= flip_ns {
                        carry.push((sample.clone(), unix));
                    } else {
                        interval.add(&sample, unix, &mut resolver, now);
                    }
                    read += 1;
                } else {
                    undecodable.increment(1);
                }
            }
            if boundary && !flipped {
                // The next interval's settings (probabilistic profiling's coin) go into
                // the program first, then the ring is drained once more: what was taken
                // before the switch belongs to this interval, not to the next.
                // Taken after this, a sample is the next interval's; if that one is
                // paused, there are no such samples (those taken while the switch is
                // being written belong to this one). On shutdown nothing switches: every
                // sample goes into the last interval.
                let before = sys::monotonic_ns();
                if selector.next_interval(&resolver.processes, stopping) && !stopping {
                    flip_ns = before;
                }
                flipped = true;
                continue;
            }
            break;
        }
        samples_total.increment(read);
        // The program's run time, as fresh as the sample count (one system call per
        // wake-up), so that the two can be set against each other at any scrape.
        if let Ok((run_ns, run_cnt)) = sys::prog_run_stats(p.program_fd.as_fd()) {
            run_seconds.set(run_ns as f64 / 1e9);
            runs.absolute(run_cnt);
        }
        if boundary {
            let lost = loader::counter(&p.counters, counter::RINGBUF_FULL);
            ringbuf_lost.increment(lost.saturating_sub(last_lost));
            last_lost = lost;
            unwind_meters.update(&p.counters);
            selector.update_skips(&p.counters);
            // The process-change programs run per exec and per process end, not per
            // sample: their time is reported apart, once an interval.
            for ((_, fd, _), (seconds, count)) in p.proc_programs.iter().zip(&proc_meters) {
                if let Ok((run_ns, run_cnt)) = sys::prog_run_stats(fd.as_fd()) {
                    seconds.set(run_ns as f64 / 1e9);
                    count.absolute(run_cnt);
                }
            }
            if now >= next_map_memory {
                map_memory(&p);
                next_map_memory = now + MAP_MEMORY_EVERY;
            }
            let end = unix_now_ns();
            let done = std::mem::replace(
                &mut interval,
                IntervalProfile::new(end, cfg.sampling_frequency),
            );
            interval.sampling_fraction = selector.fraction();
            for (s, unix) in carry.drain(..) {
                interval.add(&s, unix, &mut resolver, now);
            }
            if !done.is_empty() {
                // Checked like any input, here on the reader's thread: an invalid profile
                // would be a bug in building it, and is counted rather than sent.
                let req = done.finish(end, &host);
                let n = crate::otlp::sample_count(&req);
                match crate::otlp::Checked::new(req) {
                    // Straight into the pipeline, waiting while it is full (the ring
                    // buffers hold what arrives meanwhile); what downstream does not take
                    // is counted by the fanout.
                    Ok(req) => {
                        let _ = rt.block_on(out.send(Envelope::unacked(req)));
                    }
                    Err(e) => {
                        invalid.increment(n);
                        tracing::error!(error = %e, samples = n, "the interval's profile has a bad index (a bug); dropped (counted)");
                    }
                }
            }
            resolver.processes.next_interval(now);
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
