//! A directory that file-per-interval exporters (pprof, flamegraph) write into:
//! created at start (so a bad path is a start error), files written whole (temp file,
//! then rename), and retention by count or age, oldest first.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::ConfigError;
use crate::host::fs::create_new;

/// How files are named, created and kept (the exporters' `max_files`, `max_age` and
/// `file_mode`).
#[derive(Debug, Clone, Copy)]
pub struct RetentionConfig {
    /// Files of each kind kept; the oldest are deleted first. 0 = no limit.
    pub max_files: usize,
    /// Files older than this are deleted.
    pub max_age: Option<Duration>,
    /// What the exporter's file names start with (`profile-`): retention deletes only
    /// regular files named `PREFIX` + timestamp + … + suffix, never other files that
    /// happen to share the directory.
    pub prefix: &'static str,
    /// Permissions of the files created (`file_mode`).
    pub mode: u32,
}

impl RetentionConfig {
    pub fn validate(&self, errs: &mut Vec<ConfigError>) {
        if self.max_age.is_some_and(|a| a.is_zero()) {
            errs.push(ConfigError::new("max_age", "must be greater than 0"));
        }
    }
}

pub struct OutputDir {
    dir: PathBuf,
    retention: RetentionConfig,
}

impl OutputDir {
    /// Creates the directory if needed and checks it is writable.
    pub fn open(dir: &Path, retention: RetentionConfig) -> io::Result<OutputDir> {
        fs::create_dir_all(dir)?;
        let probe = dir.join(format!(".stackline-write-probe-{}", std::process::id()));
        let _ = fs::remove_file(&probe);
        create_new(&probe, retention.mode)?;
        fs::remove_file(&probe)?;
        Ok(OutputDir {
            dir: dir.to_path_buf(),
            retention,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes `name` whole, then applies retention to files ending like it (`suffix`).
    /// An existing file is never overwritten: `-1`, `-2`… go before the suffix.
    pub fn write(&self, name: &str, suffix: &str, bytes: &[u8]) -> io::Result<PathBuf> {
        // Re-created if someone removed it meanwhile.
        fs::create_dir_all(&self.dir)?;
        let stem = name.strip_suffix(suffix).unwrap_or(name);
        let tmp = crate::host::fs::write_aside(&self.dir, name, self.retention.mode, bytes)?;
        // Renamed without replacing anything: a name taken meanwhile, by a file or a
        // symlink, is left alone and the next `-N` is tried.
        let mut n = 0;
        let path = loop {
            let path = if n == 0 {
                self.dir.join(name)
            } else {
                self.dir.join(format!("{stem}-{n}{suffix}"))
            };
            match crate::host::fs::rename_noreplace(&tmp, &path) {
                Ok(()) => break path,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 10_000 => n += 1,
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
            }
        };
        self.retain(suffix)?;
        Ok(path)
    }

    /// Whether `name` is one this exporter writes: prefix, a [`timestamp`], suffix.
    fn ours(&self, name: &str, suffix: &str) -> bool {
        let Some(rest) = name.strip_prefix(self.retention.prefix) else {
            return false;
        };
        let b = rest.as_bytes();
        name.ends_with(suffix)
            && b.len() > 9
            && b[..8].iter().all(u8::is_ascii_digit)
            && b[8] == b'T'
    }

    fn retain(&self, suffix: &str) -> io::Result<()> {
        let mut files: Vec<(SystemTime, PathBuf)> = fs::read_dir(&self.dir)?
            .flatten()
            .filter(|e| self.ours(&e.file_name().to_string_lossy(), suffix))
            // DirEntry::metadata does not follow symlinks: only regular files are ours.
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                m.is_file().then_some(())?;
                Some((m.modified().ok()?, e.path()))
            })
            .collect();
        files.sort();
        let now = SystemTime::now();
        let mut keep = files.len();
        for (i, (mtime, path)) in files.iter().enumerate() {
            let too_many = self.retention.max_files > 0 && keep > self.retention.max_files;
            let too_old = self
                .retention
                .max_age
                .is_some_and(|age| now.duration_since(*mtime).unwrap_or_default() > age);
            // Never delete the file just written (the newest).
            if (too_many || too_old) && i + 1 < files.len() {
                fs::remove_file(path)?;
                keep -= 1;
            }
        }
        Ok(())
    }
}

/// `20261126T032200.123Z` for a Unix time in nanoseconds: sortable and safe in file names.
pub fn timestamp(unix_nanos: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(unix_nanos);
    let s = humantime::format_rfc3339_millis(t).to_string();
    s.replace(['-', ':'], "")
}

/// A file-name-safe form of a process or executable name.
pub fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn policy(max_files: usize, max_age: Option<Duration>) -> RetentionConfig {
        RetentionConfig {
            max_files,
            max_age,
            prefix: "p-",
            mode: 0o640,
        }
    }

    /// A name of ours: prefix, timestamp, suffix.
    fn n(i: u32, suffix: &str) -> String {
        format!("p-20261126T00000{i}.000Z{suffix}")
    }

    #[test]
    fn keeps_max_files_per_kind_oldest_deleted_first_and_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let d = OutputDir::open(&tmp.path().join("out"), policy(3, None)).unwrap();
        for i in 0..5 {
            d.write(&n(i, ".pb.gz"), ".pb.gz", b"x").unwrap();
            // Distinct modification times, oldest first.
            std::thread::sleep(Duration::from_millis(15));
        }
        d.write(&n(0, ".svg"), ".svg", b"<svg/>").unwrap();
        assert_eq!(
            names(d.path()),
            vec![n(0, ".svg"), n(2, ".pb.gz"), n(3, ".pb.gz"), n(4, ".pb.gz")]
        );
        // The same name again gets a suffix instead of replacing the file.
        std::thread::sleep(Duration::from_millis(15));
        let second = d.write(&n(4, ".pb.gz"), ".pb.gz", b"y").unwrap();
        assert_eq!(
            second.file_name().unwrap().to_string_lossy(),
            "p-20261126T000004.000Z-1.pb.gz"
        );
        assert_eq!(fs::read(d.path().join(n(4, ".pb.gz"))).unwrap(), b"x");
        assert_eq!(
            names(d.path()),
            vec![
                n(0, ".svg"),
                n(3, ".pb.gz"),
                "p-20261126T000004.000Z-1.pb.gz".into(),
                n(4, ".pb.gz"),
            ]
        );
    }

    #[test]
    fn deletes_files_of_the_same_kind_older_than_max_age() {
        let tmp = tempfile::tempdir().unwrap();
        let d = OutputDir::open(tmp.path(), policy(0, Some(Duration::from_millis(100)))).unwrap();
        d.write(&n(1, ".svg"), ".svg", b"1").unwrap();
        std::thread::sleep(Duration::from_millis(250));
        d.write(&n(2, ".svg"), ".svg", b"2").unwrap();
        assert_eq!(names(tmp.path()), vec![n(2, ".svg")]);
        std::thread::sleep(Duration::from_millis(250));
        // Retention is per kind: a .pb.gz write leaves the old .svg alone…
        d.write(&n(3, ".pb.gz"), ".pb.gz", b"3").unwrap();
        assert_eq!(names(tmp.path()), vec![n(2, ".svg"), n(3, ".pb.gz")]);
        // …and the next .svg write removes it.
        d.write(&n(4, ".svg"), ".svg", b"4").unwrap();
        assert_eq!(names(tmp.path()), vec![n(3, ".pb.gz"), n(4, ".svg")]);
    }

    #[test]
    fn writes_no_file_through_a_symlink_and_deletes_only_its_own() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::write(&outside, b"precious").unwrap();
        let out = tmp.path().join("out");
        let d = OutputDir::open(&out, policy(1, None)).unwrap();
        // Someone else's files, and links planted at the names the exporter would use.
        fs::write(out.join("notes.svg"), b"mine").unwrap();
        fs::write(out.join("p-draft.svg"), b"mine too").unwrap();
        symlink(&outside, out.join(n(1, ".svg"))).unwrap();
        symlink(&outside, out.join(format!(".{}.tmp", n(2, ".svg")))).unwrap();
        d.write(&n(1, ".svg"), ".svg", b"a").unwrap();
        d.write(&n(2, ".svg"), ".svg", b"b").unwrap();
        d.write(&n(3, ".svg"), ".svg", b"c").unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"precious");
        let left = names(&out);
        for keep in ["notes.svg", "p-draft.svg"] {
            assert!(left.contains(&keep.to_string()), "{left:?}");
        }
        // The link at n(1) is not a file of ours: kept; our own older files went.
        assert!(left.contains(&n(1, ".svg")), "{left:?}");
        assert!(!left.contains(&n(2, ".svg")), "{left:?}");
        let mode = fs::metadata(out.join(n(3, ".svg")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[test]
    fn timestamps_sort_and_names_are_safe() {
        assert_eq!(timestamp(1_795_661_213_938_178_723), "20261126T024653.938Z");
        assert_eq!(safe_name("my app/../x;y"), "my_app_.._x_y");
    }
}
