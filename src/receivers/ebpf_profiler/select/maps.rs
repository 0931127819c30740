//! Writing the rules into the program's maps, and finding cgroup rules' ids.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use super::super::bpf::loader::SelectMaps;
use super::super::config::SelectionConfig;
use super::super::shared::{SelectConfig, select};
use super::rules::Compiled;

/// Replaces a map's entries with `want`.
fn replace<K, V>(
    map: &mut aya::maps::HashMap<aya::maps::MapData, K, V>,
    want: &HashMap<K, V>,
) -> io::Result<()>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod,
{
    for k in map.keys().filter_map(Result::ok).collect::<Vec<_>>() {
        if !want.contains_key(&k) {
            let _ = map.remove(&k);
        }
    }
    for (k, v) in want {
        map.insert(k, v, 0).map_err(io::Error::other)?;
    }
    Ok(())
}

fn masks<K: Copy + Eq + std::hash::Hash>(items: &[(K, u64)]) -> HashMap<K, u64> {
    items.iter().fold(HashMap::new(), |mut acc, (k, bit)| {
        *acc.entry(*k).or_default() |= bit;
        acc
    })
}

/// Writes `rules` into the program's maps. `SELECT` goes last: its new generation tells
/// the program that verdicts cached before it are stale (including any made from the
/// half-written maps meanwhile).
pub fn write(
    m: &mut SelectMaps,
    rules: &Compiled,
    generation: u32,
    paused: bool,
    cgroup_ids: &HashMap<u64, u64>,
) -> io::Result<()> {
    replace(&mut m.pids, &masks(&rules.pids))?;
    replace(&mut m.uids, &masks(&rules.uids))?;
    replace(&mut m.cgroups, cgroup_ids)?;
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
    if !rules.uids.is_empty() {
        flags |= select::UID_RULES;
    }
    let (cost, burst, per_cgroup) = rules.budget.unwrap_or((0, 0, false));
    if per_cgroup {
        flags |= select::BUDGET_PER_CGROUP;
    }
    let c = SelectConfig {
        flags,
        generation,
        include_mask: rules.include_mask,
        exclude_mask: rules.exclude_mask,
        budget_cost_ns: cost,
        budget_burst_ns: burst,
    };
    m.select.set(0, c, 0).map_err(io::Error::other)
}

/// Where cgroup rules are looked up: `cgroup_root` (empty counts as unset, so that a
/// config may say `${env:STACKLINE_CGROUP_ROOT:-}`), else this process's cgroup2 mount.
pub fn cgroup_root(sel: &SelectionConfig) -> Option<PathBuf> {
    sel.cgroup_root
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
        .or_else(crate::host::cgroup::v2_mount)
}

/// Cgroup rule paths → ids (an id may serve several rules). A path that does not exist
/// (yet) is left out, and tried again at the next interval.
pub fn cgroup_ids(rules: &Compiled, mount: Option<&Path>) -> HashMap<u64, u64> {
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

/// Says which cgroup rules match nothing now (their directory is missing under `mount`,
/// or there is no cgroup v2 mount): they are tried again at every interval.
pub fn warn_unresolved(rules: &Compiled, mount: Option<&Path>) {
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
