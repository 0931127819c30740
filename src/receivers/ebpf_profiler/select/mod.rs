//! Choosing what to profile: selection rules, budgets and probabilistic profiling,
//! decided in the eBPF program before it walks a stack (`ebpf/src/select.rs`).
//!
//! - [`rules`]: the configuration checked and compiled into rule masks.
//! - [`Selector`]: writes them into the program's maps (at load and on every reload,
//!   without reloading the program), decides in user space what only user space can
//!   (executable, build ID, process name, container id) once per process and pushes the
//!   verdict into the program, flips the probabilistic coin each interval, and turns the
//!   program's counts into metrics.
//!
//! How a process is decided: the program looks up its cached verdict; without one it
//! ORs the rule masks of its pid, uid and each of its cgroup's ancestors, and caches
//! that for a second. If a rule that only user space can evaluate might change the
//! outcome, the sample is taken and user space decides it, then writes a final verdict
//! (kept for 10 s, then redone: a pid can be reused) so the process's next samples are
//! decided in the kernel.

pub mod rules;

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::bpf::loader::{self, SelectMaps};
use super::config::{ProbabilisticConfig, SelectionConfig};
use super::process::Processes;
use super::shared::{self, SelectConfig, Verdict, counter, select};
use crate::telemetry::names;
pub use rules::{Compiled, compile};

/// What the program's selection maps hold, as a pure function of the rules: written at
/// load, and on each reload.
pub fn write(
    m: &mut SelectMaps,
    rules: &Compiled,
    generation: u32,
    paused: bool,
    cgroup_ids: &HashMap<u64, u64>,
) -> io::Result<()> {
    let io = |e: aya::maps::MapError| io::Error::other(e);
    // Replace each map's entries: remove what is not wanted, then write the rest.
    let pids: HashMap<u32, u64> = rules.pids.iter().fold(HashMap::new(), |mut acc, (p, bit)| {
        *acc.entry(*p).or_default() |= bit;
        acc
    });
    let uids: HashMap<u32, u64> = rules.uids.iter().fold(HashMap::new(), |mut acc, (u, bit)| {
        *acc.entry(*u).or_default() |= bit;
        acc
    });
    for k in m.pids.keys().filter_map(Result::ok).collect::<Vec<_>>() {
        if !pids.contains_key(&k) {
            let _ = m.pids.remove(&k);
        }
    }
    for (k, v) in &pids {
        m.pids.insert(k, v, 0).map_err(io)?;
    }
    for k in m.uids.keys().filter_map(Result::ok).collect::<Vec<_>>() {
        if !uids.contains_key(&k) {
            let _ = m.uids.remove(&k);
        }
    }
    for (k, v) in &uids {
        m.uids.insert(k, v, 0).map_err(io)?;
    }
    for k in m.cgroups.keys().filter_map(Result::ok).collect::<Vec<_>>() {
        if !cgroup_ids.contains_key(&k) {
            let _ = m.cgroups.remove(&k);
        }
    }
    for (k, v) in cgroup_ids {
        m.cgroups.insert(k, v, 0).map_err(io)?;
    }
    let mut flags = 0;
    if paused {
        flags |= select::PAUSED;
    }
    if rules.active() {
        flags |= select::ACTIVE;
    }
    if rules.user_include() {
        flags |= select::USER_INCLUDE;
    }
    if !rules.user.is_empty() {
        flags |= select::USER_RULES;
    }
    let (cost, burst, per_cgroup) = rules.budget.unwrap_or((0, 0, false));
    if per_cgroup {
        flags |= select::BUDGET_PER_CGROUP;
    }
    // Last: the new generation tells the program its cached verdicts are stale.
    m.select
        .set(
            0,
            SelectConfig {
                flags,
                generation,
                include_mask: rules.include_mask,
                exclude_mask: rules.exclude_mask,
                budget_cost_ns: cost,
                budget_burst_ns: burst,
            },
            0,
        )
        .map_err(io)
}

/// Where cgroup rules are looked up: `cgroup_root` (empty counts as unset, so that a
/// config may say `${env:STACKLINE_CGROUP_ROOT:-}`), else this process's cgroup2 mount.
fn cgroup_root(sel: &SelectionConfig) -> Option<PathBuf> {
    sel.cgroup_root
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
        .or_else(crate::host::cgroup::v2_mount)
}

/// Says which cgroup rules match nothing now (their directory is missing under `mount`,
/// or there is no cgroup v2 mount): they are tried again at every interval.
fn warn_unresolved(rules: &Compiled, mount: Option<&std::path::Path>) {
    for (path, bit) in &rules.cgroups {
        let name = &rules.names[bit.trailing_zeros() as usize];
        match mount {
            None => {
                tracing::warn!(rule = %name, "no cgroup v2 hierarchy is mounted here: the cgroup rule `{path}` matches nothing; set selection.cgroup_root to the host's cgroup2 mount")
            }
            Some(m) => {
                if let Err(e) = crate::host::cgroup::v2_id(m, path) {
                    tracing::warn!(rule = %name, "cgroup rule `{path}` matches nothing yet ({e}, under {}); it is looked up again at every report interval", m.display());
                }
            }
        }
    }
}

/// Cgroup rule paths → ids (an id may serve several rules). A path that does not exist
/// (yet) is left out, and tried again at the next interval.
pub fn cgroup_ids(rules: &Compiled, mount: Option<&std::path::Path>) -> HashMap<u64, u64> {
    let mut out = HashMap::new();
    let Some(mount) = mount else {
        return out;
    };
    for (path, bit) in &rules.cgroups {
        if let Ok(id) = crate::host::cgroup::v2_id(mount, path) {
            *out.entry(id).or_default() |= bit;
        }
    }
    out
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
        let rules = compile(sel).map_err(|errs| {
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        Ok(Initial {
            rules,
            fraction: prob.fraction,
            paused: !coin(prob.fraction),
            mount: cgroup_root(sel),
        })
    }

    pub fn write(&self, m: &mut SelectMaps) -> io::Result<()> {
        let ids = cgroup_ids(&self.rules, self.mount.as_deref());
        write(m, &self.rules, 1, self.paused, &ids)
    }
}

/// How long a user-space verdict is remembered here after it was made: the program
/// keeps its copy as long as the process image lives, so this only bounds the memory.
const DECIDED_FOR: Duration = Duration::from_secs(60);

/// The receiver's side of selection; see the module doc.
pub struct Selector {
    maps: SelectMaps,
    rules: Compiled,
    fraction: f64,
    paused: bool,
    generation: u32,
    mount: Option<PathBuf>,
    cgroup_ids: HashMap<u64, u64>,
    /// User-space verdicts: (pid, image tag) → (rules matched, when).
    decided: HashMap<(u32, u32), (u64, Instant)>,
    /// Samples user space decided, per rule: [taken, skipped].
    user_counts: Vec<[u64; 2]>,
    user_not_selected: u64,
    /// Budget skips already counted, and the target's label, per target key (named
    /// when first seen, while the process is surely known).
    budget_seen: HashMap<u64, (u64, String)>,
    meters: Meters,
}

struct Meters {
    skipped: [(u32, metrics::Counter); 3],
    intervals: [metrics::Counter; 2],
    reloads: [metrics::Counter; 2],
}

impl Selector {
    pub fn new(maps: SelectMaps, initial: Initial) -> Selector {
        let skipped =
            |r: &'static str| metrics::counter!(names::EBPF_SELECTION_SKIPPED, "reason" => r);
        let intervals = |s: &'static str| metrics::counter!(names::EBPF_PROBABILISTIC_INTERVALS, "sampled" => s);
        let reloads =
            |s: &'static str| metrics::counter!(names::EBPF_SELECTION_RELOADS, "result" => s);
        let cgroup_ids = cgroup_ids(&initial.rules, initial.mount.as_deref());
        warn_unresolved(&initial.rules, initial.mount.as_deref());
        let s = Selector {
            maps,
            user_counts: vec![[0; 2]; initial.rules.names.len()],
            rules: initial.rules,
            fraction: initial.fraction,
            paused: initial.paused,
            generation: 1,
            mount: initial.mount,
            cgroup_ids,
            decided: HashMap::new(),
            user_not_selected: 0,
            budget_seen: HashMap::new(),
            meters: Meters {
                skipped: [
                    (counter::NOT_SELECTED, skipped("not_selected")),
                    (counter::BUDGET_SKIPPED, skipped("budget")),
                    (counter::PAUSED_SKIPPED, skipped("paused")),
                ],
                intervals: [intervals("true"), intervals("false")],
                reloads: [reloads("applied"), reloads("failed")],
            },
        };
        s.meters.intervals[s.paused as usize].increment(1);
        s
    }

    /// The fraction of intervals sampled, when it is below 1 (for the profiles).
    pub fn fraction(&self) -> Option<f64> {
        (self.fraction < 1.0).then_some(self.fraction)
    }

    /// New rules and fraction, applied to the running program. The coin of the current
    /// interval stands; a new fraction applies from the next.
    pub fn reload(
        &mut self,
        sel: &SelectionConfig,
        prob: &ProbabilisticConfig,
    ) -> Result<(), String> {
        let r = compile(sel)
            .map_err(|errs| {
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .and_then(|rules| {
                let mount = cgroup_root(sel);
                let ids = cgroup_ids(&rules, mount.as_deref());
                warn_unresolved(&rules, mount.as_deref());
                write(
                    &mut self.maps,
                    &rules,
                    self.generation + 1,
                    self.paused,
                    &ids,
                )
                .map_err(|e| format!("writing the rules into the program's maps failed: {e}"))?;
                self.generation += 1;
                self.cgroup_ids = ids;
                self.mount = mount;
                self.user_counts = vec![[0; 2]; rules.names.len()];
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
    /// exist and none matches). Decides each process image (pid and `image_tag`) once and
    /// tells the program, so its next samples are decided there.
    pub fn admit(&mut self, pid: u32, image_tag: u32, now: Instant) -> bool {
        if self.rules.user.is_empty() {
            return true;
        }
        let mask = match self.decided.get(&(pid, image_tag)) {
            Some((mask, _)) => *mask,
            None => {
                let mask = self.decide(pid, image_tag);
                self.decided.insert((pid, image_tag), (mask, now));
                mask
            }
        };
        match self.rules.decide(mask) {
            Ok(rule) => {
                if let Some(r) = rule {
                    self.user_counts[r][0] += 1;
                }
                true
            }
            Err(Some(r)) => {
                self.user_counts[r][1] += 1;
                false
            }
            Err(None) => {
                self.user_not_selected += 1;
                false
            }
        }
    }

    /// Every rule for `pid`: the kernel's part from the verdict the program cached when
    /// it took the sample, the rest read from /proc now (not from the process model's
    /// cache: the process may have just exec'd, or been moved into a container's
    /// cgroup). Written back to the program as final if the process is still the image
    /// the sample came from.
    fn decide(&mut self, pid: u32, image_tag: u32) -> u64 {
        let cached =
            self.maps.verdicts.get(&pid, 0).ok().filter(|v| {
                v.generation == self.generation && shared::image_tag(v.image) == image_tag
            });
        let kernel = cached.map_or_else(|| self.kernel_mask_from_proc(pid), |v| v.mask);
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| {
                p.to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_owned()
            })
            .unwrap_or_default();
        let container = crate::host::cgroup::Attribution::parse(
            &std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default(),
        )
        .container_id;
        let build_id = if self.rules.needs_build_id() {
            crate::host::elf::build_id_at(std::path::Path::new(&format!("/proc/{pid}/exe")))
                .ok()
                .flatten()
                .map(|b| b.to_string())
        } else {
            None
        };
        let facts = rules::ProcessFacts {
            exe_path: &exe,
            name: name.trim_end_matches('\n'),
            container_id: container.as_deref(),
            build_id: build_id.as_deref(),
        };
        let mask = kernel | self.rules.user_mask(&facts);
        if let Some(v) = cached {
            let v = Verdict {
                mask,
                flags: select::FINAL,
                ..v
            };
            if let Err(e) = self.maps.verdicts.insert(pid, v, 0) {
                tracing::debug!(pid, error = %e, "cannot write a selection verdict; the process's samples are decided in user space");
            }
        }
        mask
    }

    /// The kernel rules for `pid` read from /proc, when the program's verdict was evicted.
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

    /// A report interval ended: the next one's coin, cgroup rules re-resolved (a pod's
    /// cgroup may have appeared or been recreated), and the counts as metrics. Returns
    /// whether the coming interval is sampled.
    pub fn next_interval(&mut self, processes: &Processes) -> bool {
        let paused = !coin(self.fraction);
        let ids = cgroup_ids(&self.rules, self.mount.as_deref());
        if paused != self.paused || ids != self.cgroup_ids {
            // New cgroup ids need no new generation: the cached verdicts of a second ago
            // expire by themselves.
            match write(&mut self.maps, &self.rules, self.generation, paused, &ids) {
                Ok(()) => {
                    self.paused = paused;
                    self.cgroup_ids = ids;
                }
                Err(e) => tracing::warn!(error = %e, "cannot update the selection maps"),
            }
        }
        self.meters.intervals[self.paused as usize].increment(1);
        self.decided.retain(|_, (_, at)| at.elapsed() < DECIDED_FOR);
        self.update_metrics(processes);
        !self.paused
    }

    fn update_metrics(&mut self, processes: &Processes) {
        let kernel: Vec<u64> = (0..self.rules.names.len() as u32 * 2)
            .map(|i| {
                self.maps
                    .rules
                    .get(&i, 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0)
            })
            .collect();
        for (r, name) in self.rules.names.iter().enumerate() {
            for (k, result) in ["taken", "skipped"].into_iter().enumerate() {
                // The program's counters are cumulative across reloads of the rules: the
                // metric is their sum with user space's, by rule name.
                let n = kernel[r * 2 + k] + self.user_counts[r][k];
                metrics::counter!(names::EBPF_SELECTION_SAMPLES, "rule" => name.clone(), "result" => result)
                    .absolute(n);
            }
        }
        // Processes per rule, from the program's verdicts on live processes.
        let mut per_rule = vec![0u64; self.rules.names.len()];
        for (pid, v) in self.maps.verdicts.iter().filter_map(Result::ok) {
            if v.generation == self.generation
                && std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                for (r, n) in per_rule.iter_mut().enumerate() {
                    if v.mask & (1 << r) != 0 {
                        *n += 1;
                    }
                }
            }
        }
        for (r, name) in self.rules.names.iter().enumerate() {
            metrics::gauge!(names::EBPF_SELECTION_PROCESSES, "rule" => name.clone())
                .set(per_rule[r] as f64);
        }
        // Budget skips per target.
        if self.rules.budget.is_some() {
            let per_cgroup = self.rules.budget.is_some_and(|b| b.2);
            let mut seen = HashMap::new();
            let entries: Vec<(u64, u64)> = self
                .maps
                .budgets
                .iter()
                .filter_map(Result::ok)
                .map(|(k, b)| (k, b.skipped))
                .collect();
            for (key, skipped) in entries {
                let (before, target) = match self.budget_seen.remove(&key) {
                    Some(known) => known,
                    None => {
                        let target = if per_cgroup {
                            format!("cgroup/{}", self.cgroup_path(key))
                        } else {
                            let exe = processes
                                .info(key as u32)
                                .map(|i| i.exe_name.clone())
                                .filter(|n| !n.is_empty())
                                .unwrap_or_else(|| "unknown".into());
                            format!("process/{exe}")
                        };
                        (0, target)
                    }
                };
                if skipped > before {
                    metrics::counter!(names::EBPF_SELECTION_BUDGET_SKIPPED, "target" => target.clone())
                        .increment(skipped - before);
                }
                seen.insert(key, (skipped, target));
            }
            self.budget_seen = seen;
        }
    }

    /// A cgroup's path from its id, by a search of the v2 hierarchy (only for budget
    /// labels, once per interval and target that skipped).
    fn cgroup_path(&self, id: u64) -> String {
        let Some(mount) = &self.mount else {
            return id.to_string();
        };
        crate::host::cgroup::v2_find(mount, id).unwrap_or_else(|| id.to_string())
    }

    /// The program's skip counters and user space's, as the skip metric.
    pub fn update_skips(&self, counters: &aya::maps::PerCpuArray<aya::maps::MapData, u64>) {
        for (index, c) in &self.meters.skipped {
            let mut n = loader::counter(counters, *index);
            if *index == counter::NOT_SELECTED {
                n += self.user_not_selected;
            }
            c.absolute(n);
        }
    }
}
