//! Choosing what to profile: selection rules, budgets and probabilistic profiling,
//! decided in the eBPF program before it walks a stack (`ebpf/src/select.rs`).
//!
//! - [`rules`]: the configuration checked and compiled into rule masks.
//! - `maps`: the rules written into the program's maps; cgroup paths to ids.
//! - `meters`: the program's counts and user space's as metrics.
//! - [`Selector`]: keeps the maps current (at load, on every reload, and as cgroups
//!   appear), decides in user space what only user space can (executable, build ID,
//!   process name, container id) once per process image and pushes the verdict into the
//!   program, and flips the probabilistic coin each interval.
//!
//! How a process is decided: the program keeps a verdict per process, valid while the
//! process keeps its cgroup and uid under the same rules (and, with user-space rules,
//! its image: address space and exec count). Without one it ORs the rule masks of its
//! pid, uid and cgroup ancestors. If a rule only user space evaluates could still
//! change the outcome, the sample is taken and marked pending; user space decides the
//! process, writes a final verdict (redone after 10 s in the map, for pid reuse), and drops the
//! sample if it is excluded, counting it under the rule.

mod maps;
mod meters;
pub mod rules;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::bpf::loader::SelectMaps;
use super::config::{ProbabilisticConfig, SelectionConfig};
use super::process::Processes;
use super::shared::{self, Verdict, select};
use maps::{cgroup_ids, cgroup_root, warn_unresolved, write};
use meters::Meters;
pub use rules::{Compiled, compile};

fn compiled(sel: &SelectionConfig) -> Result<Compiled, String> {
    compile(sel).map_err(|errs| {
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// The first interval's coin, and each one's after.
fn coin(fraction: f64) -> bool {
    fraction >= 1.0 || fastrand::f64() < fraction
}

/// What a load writes before the program is attached: the rules, and the first
/// interval's coin.
pub struct Initial {
    pub rules: Compiled,
    pub fraction: f64,
    pub paused: bool,
    pub mount: Option<PathBuf>,
}

impl Initial {
    pub fn new(sel: &SelectionConfig, prob: &ProbabilisticConfig) -> Result<Initial, String> {
        Ok(Initial {
            rules: compiled(sel)?,
            fraction: prob.fraction,
            paused: !coin(prob.fraction),
            mount: cgroup_root(sel),
        })
    }

    pub fn write(&self, m: &mut SelectMaps) -> std::io::Result<()> {
        let ids = cgroup_ids(&self.rules, self.mount.as_deref());
        write(m, &self.rules, 1, self.paused, &ids)
    }
}

/// How long a user-space decision is reused: less than the program keeps the verdict
/// it wrote ([`select::FINAL_TTL_NS`]), so that a redo reads `/proc` again.
const DECIDED_FOR: Duration = Duration::from_secs(9);

/// The receiver's side of selection; see the module doc.
pub struct Selector {
    maps: SelectMaps,
    rules: Compiled,
    fraction: f64,
    paused: bool,
    generation: u32,
    mount: Option<PathBuf>,
    cgroup_ids: HashMap<u64, u64>,
    /// User-space rules' part of a decision: (pid, image tag, cgroup id) → (mask, when).
    decided: HashMap<(u32, u32, u64), (u64, Instant)>,
    meters: Meters,
}

impl Selector {
    pub fn new(maps: SelectMaps, initial: Initial) -> Selector {
        let cgroup_ids = cgroup_ids(&initial.rules, initial.mount.as_deref());
        warn_unresolved(&initial.rules, initial.mount.as_deref());
        let s = Selector {
            maps,
            meters: Meters::new(initial.rules.names.len()),
            rules: initial.rules,
            fraction: initial.fraction,
            paused: initial.paused,
            generation: 1,
            mount: initial.mount,
            cgroup_ids,
            decided: HashMap::new(),
        };
        s.meters.intervals[s.paused as usize].increment(1);
        s
    }

    /// The fraction of intervals sampled, when it is below 1 (for the profiles).
    pub fn fraction(&self) -> Option<f64> {
        (self.fraction < 1.0).then_some(self.fraction)
    }

    /// New rules and fraction, applied to the running program. The coin of the current
    /// interval stands; a new fraction applies from the next. If the maps cannot be
    /// written, the previous rules are written back and stay.
    pub fn reload(
        &mut self,
        sel: &SelectionConfig,
        prob: &ProbabilisticConfig,
    ) -> Result<(), String> {
        let r = compiled(sel).and_then(|rules| {
            let mount = cgroup_root(sel);
            let ids = cgroup_ids(&rules, mount.as_deref());
            warn_unresolved(&rules, mount.as_deref());
            // Counts so far belong to the rules they were made under.
            self.meters.rules(&self.maps, &self.rules.names);
            let next = self.generation + 1;
            if let Err(e) = write(&mut self.maps, &rules, next, self.paused, &ids) {
                // Back to the previous rules, under a generation no verdict has yet.
                let back = write(
                    &mut self.maps,
                    &self.rules,
                    next + 1,
                    self.paused,
                    &self.cgroup_ids,
                );
                self.generation = next + 1;
                return Err(format!(
                    "writing the rules into the program's maps failed ({e}); the previous rules stay{}",
                    back.err()
                        .map(|b| format!(", but rewriting them failed too ({b})"))
                        .unwrap_or_default()
                ));
            }
            self.generation = next;
            self.meters
                .renumbered(rules.names.len(), rules.budget != self.rules.budget);
            if rules.budget != self.rules.budget {
                // Buckets of another rate or target kind (a cgroup id may equal a pid).
                let keys: Vec<u64> = self.maps.budgets.keys().filter_map(Result::ok).collect();
                for k in keys {
                    let _ = self.maps.budgets.remove(&k);
                }
            }
            self.cgroup_ids = ids;
            self.mount = mount;
            self.rules = rules;
            self.fraction = prob.fraction;
            self.decided.clear();
            Ok(())
        });
        self.meters.reloads[r.is_err() as usize].increment(1);
        r
    }

    /// Whether a sample the program left to user space (`select_pending`) is kept: true
    /// unless a rule only user space evaluates excludes its process (or include rules
    /// exist and none matches). Writes the whole verdict into the program, so that the
    /// process's next samples are decided there. `comm` (the thread's) stands in for
    /// the process's name if the process is gone.
    pub fn admit(
        &mut self,
        pid: u32,
        image_tag: u32,
        comm: &str,
        processes: &Processes,
        now: Instant,
    ) -> bool {
        if self.rules.user.is_empty() {
            return true;
        }
        // The verdict the program made when it took the sample (or a later one).
        let cached =
            self.maps.verdicts.get(&pid, 0).ok().filter(|v| {
                v.generation == self.generation && shared::image_tag(v.image) == image_tag
            });
        let cgroup = cached.map_or(0, |v| v.cgroup);
        let key = (pid, image_tag, cgroup);
        let user = match self.decided.get(&key) {
            Some((mask, at)) if now.duration_since(*at) < DECIDED_FOR => *mask,
            _ => {
                let mask = self.user_mask(pid, comm, processes);
                self.decided.insert(key, (mask, now));
                mask
            }
        };
        let mask = match cached {
            Some(v) => {
                if v.flags & select::FINAL == 0 || v.mask != v.mask | user {
                    let whole = Verdict {
                        mask: v.mask | user,
                        flags: select::FINAL,
                        at_ns: super::bpf::sys::monotonic_ns(),
                        ..v
                    };
                    if let Err(e) = self.maps.verdicts.insert(pid, whole, 0) {
                        tracing::debug!(pid, error = %e, "cannot write a selection verdict; the process's samples are decided in user space");
                    }
                }
                v.mask | user
            }
            // Evicted, or the process changed since: decide this sample from /proc.
            None => self.kernel_mask_from_proc(pid) | user,
        };
        match self.rules.decide(mask) {
            Ok(rule) => {
                if let Some(r) = rule {
                    self.meters.user[r][0] += 1;
                }
                true
            }
            Err(Some(r)) => {
                self.meters.user[r][1] += 1;
                false
            }
            Err(None) => {
                self.meters.user_not_selected += 1;
                false
            }
        }
    }

    /// The user-space rules `pid` matches, read from /proc now (the process may have
    /// just exec'd or joined a container's cgroup), or, if it is gone, from what the
    /// process model read of it.
    fn user_mask(&self, pid: u32, comm: &str, processes: &Processes) -> u64 {
        let known = processes.info(pid);
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| {
                p.to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_owned()
            })
            .ok()
            .or_else(|| known.map(|i| i.exe_path.clone()))
            .unwrap_or_default();
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|n| n.trim_end_matches('\n').to_owned())
            .unwrap_or_else(|_| comm.to_owned());
        let container = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .map(|c| crate::host::cgroup::Attribution::parse(&c).container_id)
            .unwrap_or_else(|| known.and_then(|i| i.cgroup.container_id.clone()));
        let build_id = if self.rules.needs_build_id() {
            crate::host::elf::build_id_at(std::path::Path::new(&format!("/proc/{pid}/exe")))
                .ok()
                .flatten()
                .map(|b| b.to_string())
        } else {
            None
        };
        self.rules.user_mask(&rules::ProcessFacts {
            exe_path: &exe,
            name: &name,
            container_id: container.as_deref(),
            build_id: build_id.as_deref(),
        })
    }

    /// The kernel rules for `pid` read from /proc, when the program's verdict is gone.
    /// Cgroup rules compare paths as this process's cgroup namespace shows them.
    fn kernel_mask_from_proc(&self, pid: u32) -> u64 {
        let mut mask = 0;
        for (p, bit) in &self.rules.pids {
            if *p == pid {
                mask |= bit;
            }
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok());
        for (u, bit) in &self.rules.uids {
            if Some(*u) == uid {
                mask |= bit;
            }
        }
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if let Some(path) = crate::host::cgroup::v2_path(&cgroup) {
            for (rule, bit) in &self.rules.cgroups {
                let under = path == rule
                    || rule.is_empty()
                    || path
                        .strip_prefix(rule.as_str())
                        .is_some_and(|r| r.starts_with('/'));
                if under {
                    mask |= bit;
                }
            }
        }
        mask
    }

    /// A report interval ends: the next one's coin (not when `stopping`), cgroup rules
    /// looked up again (a pod's cgroup may have appeared or been recreated), and the
    /// counts as metrics. Returns whether the coming interval is sampled.
    pub fn next_interval(&mut self, processes: &Processes, stopping: bool) -> bool {
        let paused = if stopping {
            self.paused
        } else {
            !coin(self.fraction)
        };
        let ids = cgroup_ids(&self.rules, self.mount.as_deref());
        let moved = ids != self.cgroup_ids;
        if paused != self.paused || moved {
            // New cgroup ids change what cached verdicts would say: a new generation.
            let generation = self.generation + moved as u32;
            match write(&mut self.maps, &self.rules, generation, paused, &ids) {
                Ok(()) => {
                    self.paused = paused;
                    self.cgroup_ids = ids;
                    self.generation = generation;
                    if moved {
                        self.decided.clear();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot update the selection maps"),
            }
        }
        if !stopping {
            self.meters.intervals[self.paused as usize].increment(1);
        }
        self.decided.retain(|_, (_, at)| at.elapsed() < DECIDED_FOR);
        self.meters.rules(&self.maps, &self.rules.names);
        self.meters
            .processes(&self.maps, &self.rules.names, self.generation);
        if let Some((_, _, per_cgroup)) = self.rules.budget {
            self.meters
                .budgets(&self.maps, per_cgroup, self.mount.as_deref(), processes);
        }
        !self.paused
    }

    /// The program's skip counters and user space's, as the skip metric.
    pub fn update_skips(&self, counters: &aya::maps::PerCpuArray<aya::maps::MapData, u64>) {
        self.meters.skips(counters);
    }
}
