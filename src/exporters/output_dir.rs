//! A directory that file-per-interval exporters (pprof, flamegraph) write into:
//! created at start (so a bad path is a start error), files written whole (temp file,
//! then rename), and retention by count or age, oldest first.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::ConfigError;

/// How many files, or how old, to keep (the exporters' `max_files` and `max_age`).
#[derive(Debug, Clone, Copy)]
pub struct RetentionConfig {
    /// Files of each kind kept; the oldest are deleted first. 0 = no limit.
    pub max_files: usize,
    /// Files older than this are deleted.
    pub max_age: Option<Duration>,
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
        let probe = dir.join(".stackline-write-probe");
        fs::write(&probe, b"")?;
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
        let mut path = self.dir.join(name);
        let mut n = 0;
        while path.exists() {
            n += 1;
            path = self.dir.join(format!("{stem}-{n}{suffix}"));
        }
        let name = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self.dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, bytes)?;
        fs::rename(&tmp, &path)?;
        self.retain(suffix)?;
        Ok(path)
    }

    fn retain(&self, suffix: &str) -> io::Result<()> {
        let mut files: Vec<(SystemTime, PathBuf)> = fs::read_dir(&self.dir)?
            .flatten()
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.ends_with(suffix) && !n.starts_with('.')
            })
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
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

    #[test]
    fn keeps_max_files_per_kind_oldest_deleted_first_and_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let d = OutputDir::open(
            &tmp.path().join("out"),
            RetentionConfig {
                max_files: 3,
                max_age: None,
            },
        )
        .unwrap();
        for i in 0..5 {
            d.write(&format!("p-{i}.pb.gz"), ".pb.gz", b"x").unwrap();
            // Distinct modification times, oldest first.
            std::thread::sleep(Duration::from_millis(15));
        }
        d.write("f-0.svg", ".svg", b"<svg/>").unwrap();
        assert_eq!(
            names(d.path()),
            vec!["f-0.svg", "p-2.pb.gz", "p-3.pb.gz", "p-4.pb.gz"]
        );
        // The same name again gets a suffix instead of replacing the file.
        std::thread::sleep(Duration::from_millis(15));
        let second = d.write("p-4.pb.gz", ".pb.gz", b"y").unwrap();
        assert_eq!(second.file_name().unwrap(), "p-4-1.pb.gz");
        assert_eq!(fs::read(d.path().join("p-4.pb.gz")).unwrap(), b"x");
        assert_eq!(
            names(d.path()),
            vec!["f-0.svg", "p-3.pb.gz", "p-4-1.pb.gz", "p-4.pb.gz"]
        );
    }

    #[test]
    fn deletes_files_of_the_same_kind_older_than_max_age() {
        let tmp = tempfile::tempdir().unwrap();
        let d = OutputDir::open(
            tmp.path(),
            RetentionConfig {
                max_files: 0,
                max_age: Some(Duration::from_millis(100)),
            },
        )
        .unwrap();
        d.write("a.svg", ".svg", b"1").unwrap();
        std::thread::sleep(Duration::from_millis(250));
        d.write("b.svg", ".svg", b"2").unwrap();
        assert_eq!(names(tmp.path()), vec!["b.svg"]);
        std::thread::sleep(Duration::from_millis(250));
        // Retention is per kind: a .pb.gz write leaves the old .svg alone…
        d.write("c.pb.gz", ".pb.gz", b"3").unwrap();
        assert_eq!(names(tmp.path()), vec!["b.svg", "c.pb.gz"]);
        // …and the next .svg write removes it.
        d.write("d.svg", ".svg", b"4").unwrap();
        assert_eq!(names(tmp.path()), vec!["c.pb.gz", "d.svg"]);
    }

    #[test]
    fn timestamps_sort_and_names_are_safe() {
        assert_eq!(timestamp(1_795_661_213_938_178_723), "20261126T024653.938Z");
        assert_eq!(safe_name("my app/../x;y"), "my_app_.._x_y");
    }
}
