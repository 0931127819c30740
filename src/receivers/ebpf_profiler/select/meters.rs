//! Selection's metrics: the program's counts (per rule, per budget target, per skip
//! reason) and user space's, under the rules' names.

use std::collections::HashMap;
use std::path::Path;

use super::super::bpf::loader::{self, SelectMaps};
use super::super::process::Processes;
use super::super::shared::{MAX_RULES, counter};
use crate::telemetry::names;

pub struct Meters {
    skipped: [(u32, metrics::Counter); 3],
    pub intervals: [metrics::Counter; 2],
    pub reloads: [metrics::Counter; 2],
    /// The program's per-rule counts when last read, by slot (`2 * bit + skipped`):
    /// they are cumulative and kept across reloads, while a bit may name another rule
    /// after one, so the metrics take their differences under the current names.
    kernel_last: Vec<u64>,
    /// Samples user space decided since the last update, per rule: [taken, skipped].
    pub user: Vec<[u64; 2]>,
    pub user_not_selected: u64,
    /// Budget skips already counted, and the target's label, per target key.
    budget_seen: HashMap<u64, (u64, String)>,
}

impl Meters {
    pub fn new(rules: usize) -> Meters {
        let skipped =
            |r: &'static str| metrics::counter!(names::EBPF_SELECTION_SKIPPED, "reason" => r);
        let intervals = |s: &'static str| metrics::counter!(names::EBPF_PROBABILISTIC_INTERVALS, "sampled" => s);
        let reloads =
            |s: &'static str| metrics::counter!(names::EBPF_SELECTION_RELOADS, "result" => s);
        Meters {
            skipped: [
                (counter::NOT_SELECTED, skipped("not_selected")),
                (counter::BUDGET_SKIPPED, skipped("budget")),
                (counter::PAUSED_SKIPPED, skipped("paused")),
            ],
            intervals: [intervals("true"), intervals("false")],
            reloads: [reloads("applied"), reloads("failed")],
            kernel_last: vec![0; 2 * MAX_RULES],
            user: vec![[0; 2]; rules],
            user_not_selected: 0,
            budget_seen: HashMap::new(),
        }
    }

    /// Adds what was counted since the last call to each rule's series (`names` are the
    /// rules the counts were made under: call it before a reload renumbers them).
    pub fn rules(&mut self, maps: &SelectMaps, names: &[String]) {
        for (r, name) in names.iter().enumerate() {
            for (k, result) in ["taken", "skipped"].into_iter().enumerate() {
                let slot = (2 * r + k) as u32;
                let now: u64 = maps
                    .rules
                    .get(&slot, 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(self.kernel_last[slot as usize]);
                let delta = now.saturating_sub(self.kernel_last[slot as usize])
                    + std::mem::take(&mut self.user[r][k]);
                self.kernel_last[slot as usize] = now;
                metrics::counter!(names::EBPF_SELECTION_SAMPLES, "rule" => name.clone(), "result" => result)
                    .increment(delta);
            }
        }
    }

    /// Rules renumbered: user space's counts start over for the new ones.
    pub fn renumbered(&mut self, rules: usize, budget_changed: bool) {
        self.user = vec![[0; 2]; rules];
        if budget_changed {
            self.budget_seen.clear();
        }
    }

    /// The program's skip counters and user space's, as the skip metric.
    pub fn skips(&self, counters: &aya::maps::PerCpuArray<aya::maps::MapData, u64>) {
        for (index, c) in &self.skipped {
            let mut n = loader::counter(counters, *index);
            if *index == counter::NOT_SELECTED {
                n += self.user_not_selected;
            }
            c.absolute(n);
        }
    }

    /// Live processes per rule, from the program's verdicts under `generation`.
    pub fn processes(&self, maps: &SelectMaps, names: &[String], generation: u32) {
        let mut per_rule = vec![0u64; names.len()];
        for (pid, v) in maps.verdicts.iter().filter_map(Result::ok) {
            if v.generation == generation && Path::new(&format!("/proc/{pid}")).exists() {
                for (r, n) in per_rule.iter_mut().enumerate() {
                    if v.mask & (1 << r) != 0 {
                        *n += 1;
                    }
                }
            }
        }
        for (r, name) in names.iter().enumerate() {
            metrics::gauge!(names::EBPF_SELECTION_PROCESSES, "rule" => name.clone())
                .set(per_rule[r] as f64);
        }
    }

    /// Budget skips per target since the last call. A target is named when it first
    /// skips (a process by its executable, a cgroup by its path under `mount`).
    pub fn budgets(
        &mut self,
        maps: &SelectMaps,
        per_cgroup: bool,
        mount: Option<&Path>,
        processes: &Processes,
    ) {
        // Deduplicated: an eviction during the walk makes the kernel restart it.
        let entries: HashMap<u64, u64> = maps
            .budgets
            .iter()
            .filter_map(Result::ok)
            .map(|(k, b)| (k, b.skipped))
            .collect();
        let mut seen = HashMap::new();
        for (key, skipped) in entries {
            let known = self.budget_seen.remove(&key);
            let before = known.as_ref().map_or(0, |k| k.0);
            let target = match known {
                Some((_, t)) => Some(t),
                None if skipped > 0 => Some(if per_cgroup {
                    let path = mount.and_then(|m| crate::host::cgroup::v2_find(m, key));
                    // `cgroup/system.slice/x.service`; the id if the path is not found.
                    let path = path.unwrap_or_else(|| key.to_string());
                    format!("cgroup/{}", path.trim_start_matches('/'))
                } else {
                    let exe = processes
                        .info(key as u32)
                        .map(|i| i.exe_name.clone())
                        .filter(|n| !n.is_empty())
                        .unwrap_or_else(|| "unknown".into());
                    format!("process/{exe}")
                }),
                None => None,
            };
            if let Some(target) = target {
                if skipped > before {
                    metrics::counter!(names::EBPF_SELECTION_BUDGET_SKIPPED, "target" => target.clone())
                        .increment(skipped - before);
                }
                seen.insert(key, (skipped, target));
            }
        }
        self.budget_seen = seen;
    }
}
