//! Kubernetes and container attribution from a process's cgroup path, without asking an
//! API server: runtimes name the cgroup after the container id, and the kubelet names
//! the pod's cgroup after the pod UID.
//!
//! The forms recognized, in cgroup v2 (`0::PATH`) and in any v1 hierarchy (`N:ctrl:PATH`):
//!
//! | runtime | systemd cgroup driver | cgroupfs driver |
//! |---|---|---|
//! | containerd (CRI) | `…/kubepods-<qos>-pod<UID_>.slice/cri-containerd-<ID>.scope` | `/kubepods/<qos>/pod<UID>/<ID>` |
//! | CRI-O | `…/kubepods-<qos>-pod<UID_>.slice/crio-<ID>.scope` | `/kubepods/<qos>/pod<UID>/crio-<ID>` |
//! | Docker | `/system.slice/docker-<ID>.scope` | `/docker/<ID>` |
//! | Podman | `…/libpod-<ID>.scope` | `/libpod_parent/libpod-<ID>` |
//!
//! `<ID>` is 64 hex digits. With the systemd driver the pod UID's dashes are written as
//! underscores; it is reported with dashes, as the API server spells it. CRI-O's
//! `crio-conmon-<ID>` is its monitor process, outside the container: not attributed.

/// What a cgroup path says about a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attribution {
    /// `container.id`: 64 lowercase hex digits.
    pub container_id: Option<String>,
    /// `k8s.pod.uid`: a UUID with dashes.
    pub pod_uid: Option<String>,
}

impl Attribution {
    /// Reads `/proc/PID/cgroup` text. The first hierarchy that names a container wins
    /// (they agree when several do).
    pub fn parse(cgroup: &str) -> Attribution {
        let mut out = Attribution::default();
        for line in cgroup.lines() {
            // `hierarchy-id:controllers:path`; the path itself may contain ':'.
            let mut f = line.splitn(3, ':');
            let (Some(_), Some(_), Some(path)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let a = from_path(path);
            if out.container_id.is_none() {
                out.container_id = a.container_id;
            }
            if out.pod_uid.is_none() {
                out.pod_uid = a.pod_uid;
            }
            if out.container_id.is_some() && out.pod_uid.is_some() {
                break;
            }
        }
        out
    }
}

fn from_path(path: &str) -> Attribution {
    let mut a = Attribution::default();
    for part in path.split('/') {
        if a.pod_uid.is_none() {
            a.pod_uid = pod_uid(part);
        }
        if let Some(id) = container_id(part) {
            // The innermost container wins (nested cgroups below a container are its own).
            a.container_id.get_or_insert(id);
        }
    }
    a
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A container id in one path component, in any of the runtimes' spellings.
fn container_id(part: &str) -> Option<String> {
    let part = part.strip_suffix(".scope").unwrap_or(part);
    if part.starts_with("crio-conmon-") {
        return None;
    }
    let id = [
        "cri-containerd-",
        "crio-",
        "docker-",
        "libpod-",
        "containerd-",
    ]
    .iter()
    .find_map(|p| part.strip_prefix(p))
    .unwrap_or(part);
    is_id(id).then(|| id.to_ascii_lowercase())
}

/// A pod UID in one path component: `pod<UID>` (cgroupfs) or `kubepods-<qos>-pod<UID_>.slice`
/// and `kubepods-pod<UID_>.slice` (systemd).
fn pod_uid(part: &str) -> Option<String> {
    let part = part.strip_suffix(".slice").unwrap_or(part);
    let uid = match part.strip_prefix("kubepods-") {
        Some(rest) => {
            let (qos, uid) = rest.rsplit_once("pod")?;
            if !(qos.is_empty() || qos.ends_with('-')) {
                return None;
            }
            uid
        }
        None => part.strip_prefix("pod")?,
    };
    let uid = uid.replace('_', "-");
    is_uuid(&uid).then(|| uid.to_ascii_lowercase())
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Where the cgroup v2 hierarchy is mounted in this mount namespace: `/sys/fs/cgroup`,
/// or `/sys/fs/cgroup/unified` on a hybrid (v1 + v2) host. From /proc/self/mountinfo.
pub fn v2_mount() -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        // `id parent major:minor root mount-point options… - fstype source super-options`
        let (left, right) = line.split_once(" - ")?;
        (right.split(' ').next()? == "cgroup2").then(|| left.split(' ').nth(4).map(Into::into))?
    })
}

/// The id of the cgroup at `path` (absolute, under the v2 mount `mount`): its
/// directory's inode number, which is what the kernel's `bpf_get_current_cgroup_id`
/// and `bpf_get_current_ancestor_cgroup_id` return for it.
pub fn v2_id(mount: &std::path::Path, path: &str) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let rel = path.trim_start_matches('/');
    let dir = if rel.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(rel)
    };
    let m = std::fs::metadata(&dir)?;
    if !m.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a cgroup directory",
            dir.display()
        )));
    }
    Ok(m.ino())
}

/// The path (under `mount`) of the cgroup with id `id`, by a walk of the hierarchy
/// (bounded: at most 100,000 directories).
pub fn v2_find(mount: &std::path::Path, id: u64) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![mount.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        seen += 1;
        if seen > 100_000 {
            return None;
        }
        if std::fs::metadata(&dir).is_ok_and(|m| m.ino() == id) {
            let rel = dir.strip_prefix(mount).ok()?;
            return Some(format!("/{}", rel.display()));
        }
        if let Ok(rd) = std::fs::read_dir(&dir) {
            stack.extend(
                rd.filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    None
}

/// A process's cgroup v2 path (the `0::` line of `/proc/PID/cgroup`), as this process's
/// cgroup namespace shows it.
pub fn v2_path(cgroup: &str) -> Option<&str> {
    cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1ac2d0e8b34a7c9a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef";
    const UID: &str = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";

    fn both(text: &str) -> (Option<String>, Option<String>) {
        let a = Attribution::parse(text);
        (a.container_id, a.pod_uid)
    }

    #[test]
    fn recognizes_every_runtime_and_driver() {
        let uid_ = UID.replace('-', "_");
        let k8s = [
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
            ),
            format!("0::/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope"),
            format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/docker-{ID}.scope"
            ),
            format!("12:pids:/kubepods/burstable/pod{UID}/{ID}\n0::/"),
            format!("4:memory:/kubepods/besteffort/pod{UID}/crio-{ID}"),
            format!("0::/kubepods/pod{UID}/{ID}"),
        ];
        for cg in &k8s {
            assert_eq!(both(cg), (Some(ID.into()), Some(UID.into())), "{cg}");
        }
        let plain = [
            format!("0::/system.slice/docker-{ID}.scope"),
            format!("0::/system.slice/docker-{ID}.scope/init.scope"),
            format!("11:cpu,cpuacct:/docker/{ID}"),
            format!(
                "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
            ),
            format!("0::/default/{ID}"),
        ];
        for cg in &plain {
            assert_eq!(both(cg), (Some(ID.into()), None), "{cg}");
        }
    }

    #[test]
    fn finds_the_v2_mount_and_a_cgroups_id_and_path() {
        let Some(mount) = v2_mount() else {
            crate::testing::skip("cgroup v2 ids", "no cgroup2 hierarchy is mounted here");
            return;
        };
        let root = v2_id(&mount, "/").unwrap();
        assert_eq!(v2_find(&mount, root).as_deref(), Some("/"));
        // A cgroup of this process (its own, from /proc/self/cgroup) resolves both ways.
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = v2_path(&own).expect("a 0:: line");
        let id = v2_id(&mount, path).unwrap();
        assert_eq!(v2_find(&mount, id).as_deref(), Some(path));
        assert!(v2_id(&mount, "/no/such/cgroup").is_err());
        assert_eq!(v2_path("1:name=systemd:/a\n0::/b/c\n"), Some("/b/c"));
    }

    #[test]
    fn attributes_nothing_that_is_not_a_container() {
        for cg in [
            "0::/user.slice/user-0.slice/session-3.scope".to_owned(),
            "0::/".to_owned(),
            "garbage".to_owned(),
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/crio-conmon-{ID}.scope",
                UID.replace('-', "_")
            ),
            format!("0::/system.slice/docker-{}.scope", &ID[..63]),
            "0::/system.slice/podman.service".to_owned(),
            "0::/kubepods.slice/kubepods-podnotauuid.slice".to_owned(),
        ] {
            assert_eq!(Attribution::parse(&cg).container_id, None, "{cg}");
        }
        // The conmon process still belongs to its pod.
        let conmon = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/crio-conmon-{ID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(both(&conmon), (None, Some(UID.into())));
        // Upper case is normalized.
        assert_eq!(
            both(&format!(
                "0::/kubepods/pod{}/{}",
                UID.to_uppercase(),
                ID.to_uppercase()
            )),
            (Some(ID.into()), Some(UID.into()))
        );
    }
}
