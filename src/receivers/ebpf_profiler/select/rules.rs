//! The selection rules as the program and user space use them: numbered, checked, and
//! split into what the kernel evaluates (cgroup, pid, uid: masks in maps) and what only
//! user space can (executable, build ID, process name, container id).

use globset::{GlobBuilder, GlobMatcher};

use super::super::config::{BudgetPer, Rule, SelectionConfig};
use super::super::shared::MAX_RULES;
use crate::config::{ConfigError, Validate};

/// A matcher only user space can evaluate.
#[derive(Debug, Clone)]
pub enum UserMatcher {
    Executable(GlobMatcher),
    ProcessName(GlobMatcher),
    /// Lowercase hex.
    BuildId(String),
    /// Lowercase hex, 12 to 64 digits: a prefix of the id.
    ContainerId(String),
}

/// What user space knows of a process, for [`UserMatcher`]s.
#[derive(Debug, Default)]
pub struct ProcessFacts<'a> {
    pub exe_path: &'a str,
    pub name: &'a str,
    pub container_id: Option<&'a str>,
    /// Read only when a build-ID rule asks (see [`Compiled::needs_build_id`]).
    pub build_id: Option<&'a str>,
}

impl UserMatcher {
    pub fn matches(&self, p: &ProcessFacts<'_>) -> bool {
        match self {
            UserMatcher::Executable(g) => g.is_match(p.exe_path),
            UserMatcher::ProcessName(g) => g.is_match(p.name),
            UserMatcher::BuildId(id) => p.build_id == Some(id.as_str()),
            UserMatcher::ContainerId(id) => {
                p.container_id.is_some_and(|c| c.starts_with(id.as_str()))
            }
        }
    }
}

/// The rules compiled: rule `i` is bit `i` of every mask (includes first, then excludes).
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    /// The `rule` label of each.
    pub names: Vec<String>,
    pub include_mask: u64,
    pub exclude_mask: u64,
    /// Cgroup paths (resolved to ids when the maps are written, and again each interval:
    /// a pod's cgroup may appear after the agent starts).
    pub cgroups: Vec<(String, u64)>,
    pub pids: Vec<(u32, u64)>,
    pub uids: Vec<(u32, u64)>,
    /// Rules only user space evaluates, by bit.
    pub user: Vec<(u64, UserMatcher)>,
    /// Nanoseconds of credit per sample and the burst, and whether per cgroup.
    pub budget: Option<(u64, u64, bool)>,
}

impl Compiled {
    /// Whether any rule exists.
    pub fn active(&self) -> bool {
        !self.names.is_empty()
    }

    /// Whether some include rule is one only user space evaluates.
    pub fn user_include(&self) -> bool {
        self.user
            .iter()
            .any(|(bit, _)| bit & self.include_mask != 0)
    }

    pub fn needs_build_id(&self) -> bool {
        self.user
            .iter()
            .any(|(_, m)| matches!(m, UserMatcher::BuildId(_)))
    }

    /// The user-space rules `p` matches.
    pub fn user_mask(&self, p: &ProcessFacts<'_>) -> u64 {
        self.user
            .iter()
            .filter(|(_, m)| m.matches(p))
            .fold(0, |acc, (bit, _)| acc | bit)
    }

    /// The verdict on a process that matches `mask`, with every rule decided: `Ok(rule)`
    /// to sample it (the including rule, if any), `Err(rule)` to skip it (the excluding
    /// rule; None: include rules exist and none matched).
    pub fn decide(&self, mask: u64) -> Result<Option<usize>, Option<usize>> {
        let lowest = |m: u64| (m != 0).then(|| m.trailing_zeros() as usize);
        if mask & self.exclude_mask != 0 {
            return Err(lowest(mask & self.exclude_mask));
        }
        if mask & self.include_mask != 0 {
            return Ok(lowest(mask & self.include_mask));
        }
        if self.include_mask != 0 {
            return Err(None);
        }
        Ok(None)
    }
}

/// Checks one rule; `at` is its path in the configuration.
fn check(rule: &Rule, at: &str, errs: &mut Vec<ConfigError>) -> Option<Matcher> {
    let mut found = Vec::new();
    if let Some(c) = &rule.cgroup {
        found.push("cgroup");
        if !c.starts_with('/') || c.split('/').any(|p| p == "..") {
            errs.push(ConfigError::new(
                format!("{at}.cgroup"),
                format!("`{c}` must be an absolute cgroup v2 path without `..`, e.g. /system.slice/nginx.service"),
            ));
        }
    }
    if rule.pid.is_some() {
        found.push("pid");
    }
    if rule.uid.is_some() {
        found.push("uid");
    }
    let mut glob = |key: &str, g: &str| match GlobBuilder::new(g).literal_separator(true).build() {
        Ok(g) => Some(g.compile_matcher()),
        Err(e) => {
            errs.push(ConfigError::new(
                format!("{at}.{key}"),
                format!("`{g}` is not a valid glob: {e}"),
            ));
            None
        }
    };
    let mut user = None;
    if let Some(g) = &rule.executable {
        found.push("executable");
        user = glob("executable", g).map(UserMatcher::Executable);
    }
    if let Some(g) = &rule.process_name {
        found.push("process_name");
        user = glob("process_name", g).map(UserMatcher::ProcessName);
    }
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(b) = &rule.build_id {
        found.push("build_id");
        if b.len() < 2 || b.len() % 2 != 0 || !hex(b) {
            errs.push(ConfigError::new(format!("{at}.build_id"), format!("`{b}` is not a build ID; give its hex digits, as `file` or `readelf -n` print them")));
        } else {
            user = Some(UserMatcher::BuildId(b.to_ascii_lowercase()));
        }
    }
    if let Some(c) = &rule.container_id {
        found.push("container_id");
        let c = c
            .trim_start_matches("containerd://")
            .trim_start_matches("docker://")
            .trim_start_matches("cri-o://");
        if !(12..=64).contains(&c.len()) || !hex(c) {
            errs.push(ConfigError::new(format!("{at}.container_id"), format!("`{c}` is not a container id; give 12 to 64 of its hex digits, as `crictl ps` or `docker ps` print them")));
        } else {
            user = Some(UserMatcher::ContainerId(c.to_ascii_lowercase()));
        }
    }
    match found.len() {
        1 => Some(match user {
            Some(u) => Matcher::User(u),
            None => Matcher::Kernel,
        }),
        0 => {
            errs.push(ConfigError::new(at, "has no matcher; give one of cgroup, container_id, executable, build_id, process_name, pid or uid"));
            None
        }
        _ => {
            errs.push(ConfigError::new(at, format!("has {} matchers ({}); a rule has exactly one (write one rule per matcher: a process matching any include rule is included)", found.len(), found.join(", "))));
            None
        }
    }
}

enum Matcher {
    Kernel,
    User(UserMatcher),
}

/// Checks the rules and numbers them.
pub fn compile(sel: &SelectionConfig) -> Result<Compiled, Vec<ConfigError>> {
    let mut errs = Vec::new();
    let total = sel.include.len() + sel.exclude.len();
    if total > MAX_RULES {
        errs.push(ConfigError::new(
            "selection",
            format!("has {total} rules; at most {MAX_RULES} (include and exclude together)"),
        ));
        return Err(errs);
    }
    let mut c = Compiled::default();
    let mut names = std::collections::HashSet::new();
    for (list, rules) in [("include", &sel.include), ("exclude", &sel.exclude)] {
        for (i, rule) in rules.iter().enumerate() {
            let at = format!("selection.{list}[{i}]");
            let bit = 1u64 << c.names.len();
            let name = rule.name.clone().unwrap_or_else(|| format!("{list}/{i}"));
            if !names.insert(name.clone()) {
                errs.push(ConfigError::new(
                    format!("{at}.name"),
                    format!("`{name}` names another rule too; names must be unique"),
                ));
            }
            c.names.push(name);
            if list == "include" {
                c.include_mask |= bit;
            } else {
                c.exclude_mask |= bit;
            }
            match check(rule, &at, &mut errs) {
                Some(Matcher::User(u)) => c.user.push((bit, u)),
                Some(Matcher::Kernel) => {
                    if let Some(p) = &rule.cgroup {
                        c.cgroups.push((p.trim_end_matches('/').to_owned(), bit));
                    }
                    if let Some(p) = rule.pid {
                        c.pids.push((p, bit));
                    }
                    if let Some(u) = rule.uid {
                        c.uids.push((u, bit));
                    }
                }
                None => {}
            }
        }
    }
    if let Some(b) = &sel.budget {
        if !(1..=100_000).contains(&b.samples_per_second) {
            errs.push(ConfigError::new(
                "selection.budget.samples_per_second",
                format!("{} is out of range; use 1 to 100000", b.samples_per_second),
            ));
        } else {
            let cost = 1_000_000_000 / b.samples_per_second as u64;
            // A tenth of a second's worth (at least one sample) may be taken at once.
            let burst = cost * (b.samples_per_second as u64 / 10).max(1);
            c.budget = Some((cost, burst, b.per == BudgetPer::Cgroup));
        }
    }
    if errs.is_empty() { Ok(c) } else { Err(errs) }
}

impl Validate for SelectionConfig {
    fn validate(&self) -> Vec<ConfigError> {
        compile(self).err().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(f: impl FnOnce(&mut Rule)) -> Rule {
        let mut r = Rule::default();
        f(&mut r);
        r
    }

    #[test]
    fn rules_are_numbered_includes_first_and_exclude_wins() {
        let sel = SelectionConfig {
            include: vec![
                rule(|r| r.cgroup = Some("/a/".into())),
                rule(|r| r.executable = Some("/usr/bin/*".into())),
            ],
            exclude: vec![rule(|r| {
                r.uid = Some(0);
                r.name = Some("root".into());
            })],
            budget: None,
            cgroup_root: None,
        };
        let c = compile(&sel).unwrap();
        assert_eq!(c.names, ["include/0", "include/1", "root"]);
        assert_eq!((c.include_mask, c.exclude_mask), (0b011, 0b100));
        assert_eq!(c.cgroups, [("/a".to_owned(), 1)]);
        assert_eq!(c.uids, [(0, 4)]);
        assert!(c.user_include());
        assert_eq!(c.decide(0b001), Ok(Some(0)));
        assert_eq!(c.decide(0b110), Err(Some(2)));
        assert_eq!(c.decide(0), Err(None));
        let facts = ProcessFacts {
            exe_path: "/usr/bin/xz",
            name: "xz",
            ..Default::default()
        };
        assert_eq!(c.user_mask(&facts), 0b010);
        // `*` stays within a directory.
        let deeper = ProcessFacts {
            exe_path: "/usr/bin/x/xz",
            ..Default::default()
        };
        assert_eq!(c.user_mask(&deeper), 0);
        // Exclude rules alone: everything else is sampled.
        let only_exclude = compile(&SelectionConfig {
            exclude: vec![rule(|r| r.pid = Some(7))],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(only_exclude.decide(0), Ok(None));
    }

    #[test]
    fn bad_rules_say_where_and_what_to_write() {
        let sel = SelectionConfig {
            include: vec![
                rule(|_| {}),
                rule(|r| {
                    r.pid = Some(1);
                    r.uid = Some(2);
                }),
                rule(|r| r.cgroup = Some("kubepods".into())),
                rule(|r| r.container_id = Some("abc".into())),
                rule(|r| r.executable = Some("[".into())),
            ],
            exclude: vec![rule(|r| r.build_id = Some("xyz".into()))],
            cgroup_root: None,
            budget: Some(super::super::super::config::BudgetConfig {
                samples_per_second: 0,
                per: BudgetPer::Process,
            }),
        };
        let errs = compile(&sel).unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let all = text.join("\n");
        for want in [
            "selection.include[0]",
            "has no matcher",
            "has 2 matchers (pid, uid)",
            "selection.include[2].cgroup",
            "selection.include[3].container_id",
            "selection.include[4].executable",
            "selection.exclude[0].build_id",
            "selection.budget.samples_per_second",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        let many = SelectionConfig {
            include: (0..65).map(|p| rule(|r| r.pid = Some(p))).collect(),
            ..Default::default()
        };
        assert!(
            compile(&many).unwrap_err()[0]
                .to_string()
                .contains("at most 64")
        );
    }

    #[test]
    fn container_ids_match_by_prefix_with_or_without_the_runtime() {
        let c = compile(&SelectionConfig {
            include: vec![rule(|r| {
                r.container_id = Some("containerd://ABCDEF012345".into())
            })],
            ..Default::default()
        })
        .unwrap();
        let id = format!("abcdef012345{}", "0".repeat(52));
        let facts = ProcessFacts {
            container_id: Some(&id),
            ..Default::default()
        };
        assert_eq!(c.user_mask(&facts), 1);
        assert_eq!(c.user_mask(&ProcessFacts::default()), 0);
    }
}

#[cfg(test)]
mod bits {
    use super::super::super::shared::lowest_bit;

    /// The program counts a sample under the lowest rule of a mask with this, not
    /// `trailing_zeros` (see its doc); they must agree on every bit.
    #[test]
    fn lowest_bit_is_trailing_zeros() {
        assert_eq!(lowest_bit(0), 64);
        for i in 0..64 {
            for high in [0u64, u64::MAX, 0x8000_0000_0000_0000, 0x5555_5555_5555_5555] {
                let m = (high << i) | (1u64 << i);
                assert_eq!(lowest_bit(m), m.trailing_zeros(), "{m:#x}");
            }
        }
    }
}
