//! The process model: what the receiver knows of each sampled process (its maps,
//! executable and cgroup, read from `/proc` at first sight and cached, so short-lived
//! processes still resolve after they exit), kept current as processes exec, map
//! libraries, reuse a pid or go away.
//!
//! Whatever needs to follow processes subscribes with a [`Listener`] and is told what the
//! model learns ([`ProcessEvent`]): the unwind-table manager builds tables for the
//! mappings it hears of and forgets processes that are gone. Reading a process has no
//! other side effect.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::bpf::sys;
use crate::host::proc::{MapEntry, ProcessInfo};

/// What the process model learned.
#[derive(Debug, Clone, Copy)]
pub enum ProcessEvent<'a> {
    /// A process's maps were read (at first sight, after an exec, on a re-read the
    /// program or a sample asked for): every read is announced, changed or not.
    Mapped { pid: u32, maps: &'a [MapEntry] },
    /// A process left the model: it exited, or went unsampled for long.
    Gone { pid: u32 },
    /// A report interval ended; these processes were sampled in it.
    Interval { sampled: &'a [u32] },
}

/// Told every [`ProcessEvent`], in order, on the reader's thread: it should hand work
/// elsewhere rather than do it here.
pub trait Listener: Send {
    fn on(&mut self, event: &ProcessEvent<'_>);
}

/// How long a process may go unsampled before it is dropped.
const EVICT_AFTER: Duration = Duration::from_secs(120);
/// How long an exited process is kept after its last sample.
const EXITED_AFTER: Duration = Duration::from_secs(1);
/// Least time between two re-reads of one process's maps.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// The same, when the eBPF program asks (it asks at most every 20 ms per process):
/// at first, and again once a re-read found new mappings.
const REQUEST_REFRESH_MIN: Duration = Duration::from_millis(20);
/// The most it waits once re-reads keep finding nothing new.
const REQUEST_REFRESH_MAX: Duration = Duration::from_secs(1);

struct Cached {
    info: Option<ProcessInfo>,
    /// The main thread's comm when last seen: it changes exactly when the process execs.
    main_comm: Option<String>,
    refreshed: Instant,
    /// Least time before the program's next request re-reads the maps: short while
    /// re-reads find new mappings (a process starting, a library loaded), doubling up
    /// to REQUEST_REFRESH_MAX while they find nothing (code with no table: JIT, …).
    request_wait: Duration,
    /// CLOCK_MONOTONIC (the samples' clock) when the maps were last read: a sample taken
    /// after it may be in a mapping made since.
    read_ns: u64,
    /// The last re-read for an address in no mapping did not find it either (anonymous
    /// code, memory unmapped since): such misses re-read at most every REFRESH_EVERY.
    futile: bool,
    seen: Instant,
    /// Report interval in which the start time was last compared.
    checked: u64,
}

impl Cached {
    /// Takes a fresh read, made at `read_ns`.
    fn refreshed_with(&mut self, fresh: ProcessInfo, now: Instant, read_ns: u64) {
        self.info = Some(fresh);
        self.refreshed = now;
        self.read_ns = read_ns;
        self.futile = false;
    }
}

/// Reads processes and tells the listeners what it read.
#[derive(Default)]
struct Announcer {
    listeners: Vec<Box<dyn Listener>>,
}

impl Announcer {
    fn read(&mut self, pid: u32) -> std::io::Result<ProcessInfo> {
        let info = ProcessInfo::read(pid)?;
        self.announce(&ProcessEvent::Mapped {
            pid,
            maps: &info.maps,
        });
        Ok(info)
    }

    fn announce(&mut self, event: &ProcessEvent<'_>) {
        for l in &mut self.listeners {
            l.on(event);
        }
    }
}

/// The processes the receiver has sampled, cached; see the module doc.
#[derive(Default)]
pub struct Processes {
    procs: HashMap<u32, Cached>,
    out: Announcer,
    /// Processes sampled in the current interval.
    sampled: HashSet<u32>,
    /// Current report interval: each process's start time is compared once per interval,
    /// so a reused pid is never resolved against the maps of the process it replaced.
    interval: u64,
}

impl Processes {
    /// Tells `listener` everything learned from now on.
    pub fn subscribe(&mut self, listener: Box<dyn Listener>) {
        self.out.listeners.push(listener);
    }

    /// The program could not unwind through an address of `pid`: re-read the process
    /// (at most every `request_wait`), so its new mappings (exec, dlopen) are announced.
    pub fn requested(&mut self, pid: u32, now: Instant) {
        let Processes { procs, out, .. } = self;
        match procs.get_mut(&pid) {
            Some(c) if now.duration_since(c.refreshed) >= c.request_wait => {
                c.refreshed = now;
                c.read_ns = sys::monotonic_ns();
                if let Ok(fresh) = out.read(pid) {
                    let same = c.info.as_ref().is_some_and(|old| old.maps == fresh.maps);
                    c.request_wait = if same {
                        (c.request_wait * 2).min(REQUEST_REFRESH_MAX)
                    } else {
                        REQUEST_REFRESH_MIN
                    };
                    c.info = Some(fresh);
                }
            }
            Some(_) => {}
            None => {
                self.cached(pid, now);
            }
        }
    }

    /// The cache entry of a process: read at first sight, its start time compared once
    /// per interval.
    fn cached(&mut self, pid: u32, now: Instant) -> &mut Cached {
        let interval = self.interval;
        let Processes { procs, out, .. } = self;
        let entry = procs.entry(pid).or_insert_with(|| Cached {
            read_ns: sys::monotonic_ns(),
            info: out.read(pid).ok(),
            main_comm: None,
            futile: false,
            refreshed: now,
            request_wait: REQUEST_REFRESH_MIN,
            seen: now,
            checked: interval,
        });
        entry.seen = now;
        if entry.checked != interval {
            entry.checked = interval;
            let cached_start = entry.info.as_ref().map(|i| i.start_time);
            // A different start time (or none, after a failed read) means another process
            // now has this pid. If the pid is gone, keep what was read at first sight.
            let read_ns = sys::monotonic_ns();
            if let Ok(start) = crate::host::proc::start_time(pid)
                && cached_start != Some(start)
                && let Ok(fresh) = out.read(pid)
            {
                entry.refreshed_with(fresh, now, read_ns);
            }
        }
        entry
    }

    /// The process a sample came from. A new comm on the main thread means the process
    /// exec'd (its pid and start time stay the same), so it is read again at once.
    pub fn sampled(
        &mut self,
        pid: u32,
        tid: u32,
        comm: &str,
        now: Instant,
    ) -> Option<&ProcessInfo> {
        self.sampled.insert(pid);
        self.cached(pid, now);
        let Processes { procs, out, .. } = self;
        let c = procs.get_mut(&pid)?;
        if pid == tid {
            match &c.main_comm {
                Some(old) if old != comm => {
                    let read_ns = sys::monotonic_ns();
                    if let Ok(fresh) = out.read(pid) {
                        c.refreshed_with(fresh, now, read_ns);
                    }
                    c.main_comm = Some(comm.to_owned());
                }
                Some(_) => {}
                None => c.main_comm = Some(comm.to_owned()),
            }
        }
        c.info.as_ref()
    }

    /// The mapping of a user address taken at `ktime_ns`, re-reading the maps when the
    /// address is in none of them: the process exec'd, its loader mapped a library, it
    /// called dlopen, or its pid was reused. A sample taken after the last read is
    /// re-read for at once: the address was mapped when it was taken, so the maps read
    /// now have it unless it was unmapped since. On a busy machine a new process's first
    /// read often lands between exec and its loader mapping libc. Once such a re-read
    /// has not found its address either, misses wait REFRESH_EVERY.
    pub fn user_mapping(
        &mut self,
        pid: u32,
        addr: u64,
        ktime_ns: u64,
        now: Instant,
    ) -> Option<MapEntry> {
        if let Some(m) = self
            .cached(pid, now)
            .info
            .as_ref()
            .and_then(|p| p.mapping_for(addr))
        {
            return Some(m.clone());
        }
        let Processes { procs, out, .. } = self;
        let c = procs.get_mut(&pid)?;
        let newer = ktime_ns > c.read_ns && !c.futile;
        if newer || now.duration_since(c.refreshed) >= REFRESH_EVERY {
            c.refreshed = now;
            c.read_ns = sys::monotonic_ns();
            if let Ok(fresh) = out.read(pid) {
                c.info = Some(fresh);
            }
            let found = c.info.as_ref()?.mapping_for(addr).cloned();
            c.futile = found.is_none();
            return found;
        }
        c.info.as_ref()?.mapping_for(addr).cloned()
    }

    /// What the model read of `pid`, if it has read it (no read here).
    pub fn info(&self, pid: u32) -> Option<&ProcessInfo> {
        self.procs.get(&pid)?.info.as_ref()
    }

    /// Starts a new report interval: drops processes not sampled for a while and
    /// announces them gone, then announces the processes sampled in the one that ended.
    pub fn next_interval(&mut self, now: Instant) {
        self.interval += 1;
        let Processes { procs, out, .. } = self;
        procs.retain(|&pid, c| {
            let idle = now.duration_since(c.seen);
            // An exited process goes once its last samples are surely read (they were
            // taken over a second ago, and the ring was drained just before this): on a
            // node that starts many short-lived processes, keeping each for
            // EVICT_AFTER held tens of MiB of maps.
            let keep = idle < EVICT_AFTER
                && (idle < EXITED_AFTER || std::fs::exists(format!("/proc/{pid}")).unwrap_or(true));
            if !keep {
                out.announce(&ProcessEvent::Gone { pid });
            }
            keep
        });
        let sampled: Vec<u32> = self.sampled.drain().collect();
        self.out
            .announce(&ProcessEvent::Interval { sampled: &sampled });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Heard(Arc<Mutex<Vec<String>>>);

    impl Listener for Heard {
        fn on(&mut self, event: &ProcessEvent<'_>) {
            let line = match event {
                ProcessEvent::Mapped { pid, maps } => format!("mapped {pid} {}", !maps.is_empty()),
                ProcessEvent::Gone { pid } => format!("gone {pid}"),
                ProcessEvent::Interval { sampled } => format!("interval {sampled:?}"),
            };
            self.0.lock().unwrap().push(line);
        }
    }

    /// A real child process: the model announces its maps at first sight, the
    /// processes sampled at the end of an interval, and the process gone once it has
    /// exited and its last samples are surely read.
    #[test]
    fn announces_what_it_learns_of_a_real_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        // Until its exec is done the child is a copy of this test binary, and for a
        // moment after /proc/PID/exe names sleep its memory is still empty (the kernel
        // switches the executable before it maps its segments): wait for the mapping.
        let exec_done = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|p| p.to_string_lossy().ends_with("sleep"))
            || !std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| {
                m.lines()
                    .any(|l| l.contains(" r-xp ") && l.ends_with("/sleep"))
            })
        {
            assert!(Instant::now() < exec_done, "the child never exec'd sleep");
            std::thread::sleep(Duration::from_millis(5));
        }
        let heard = Heard::default();
        let mut model = Processes::default();
        model.subscribe(Box::new(heard.clone()));
        let t0 = Instant::now();
        let info = model
            .sampled(pid, pid, "sleep", t0)
            .expect("the child is readable");
        assert!(info.exe_path.ends_with("sleep"), "{}", info.exe_path);
        // Known now: a second sample reads nothing and announces nothing.
        model.sampled(pid, pid, "sleep", t0);
        model.next_interval(t0);
        child.kill().unwrap();
        child.wait().unwrap();
        model.next_interval(t0 + EXITED_AFTER + Duration::from_millis(1));
        assert_eq!(
            *heard.0.lock().unwrap(),
            vec![
                format!("mapped {pid} true"),
                format!("interval [{pid}]"),
                format!("gone {pid}"),
                "interval []".to_owned(),
            ]
        );
    }
}
