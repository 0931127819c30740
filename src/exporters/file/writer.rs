//! The file itself: encoding records, appending them whole, syncing and rotating.
//!
//! Records are written straight to the file (no user-space buffer), one `write` per
//! record. If a write fails part-way (ENOSPC, EIO), the file is truncated back to where
//! the record began, so a reader never meets a torn record (which would break the
//! length-prefixed framing, or leave half a JSON line, for the rest of the file).
//! A failed reopen after rotation is retried with the next record.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prost::Message;

use super::{FileExporterConfig, FileFormat};
use crate::exporters::shell::{Outcome, Writer as ShellWriter};
use crate::otlp::{Checked, ProfilesRequest, sample_count};

pub(super) struct Writer {
    path: PathBuf,
    format: FileFormat,
    max_bytes: Option<u64>,
    max_backups: usize,
    mode: u32,
    /// `None` after a failed reopen: tried again on the next write.
    file: Option<File>,
    /// Bytes of whole records in the file.
    size: u64,
    sync_every: std::time::Duration,
    /// When the oldest record not yet synced was written; None: all synced.
    dirty_since: Option<Instant>,
}

/// Opens for appending, never through a symlink, creating with `mode`.
fn open(path: &Path, mode: u32) -> io::Result<(File, u64)> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok((f, meta.len()))
}

impl Writer {
    /// Opens (creating the directory if needed) the file to append to.
    pub(super) fn open(cfg: &FileExporterConfig) -> io::Result<Self> {
        if let Some(dir) = cfg.path.parent()
            && !dir.as_os_str().is_empty()
        {
            fs::create_dir_all(dir)?;
        }
        let (file, size) = open(&cfg.path, cfg.file_mode.0)?;
        Ok(Writer {
            path: cfg.path.clone(),
            format: cfg.format,
            max_bytes: cfg
                .rotation
                .enabled
                .then_some(cfg.rotation.max_megabytes << 20),
            max_backups: cfg.rotation.max_backups,
            mode: cfg.file_mode.0,
            file: Some(file),
            size,
            sync_every: cfg.flush_interval,
            dirty_since: None,
        })
    }

    /// Encodes one request as one record.
    pub(super) fn encode(&self, req: &ProfilesRequest) -> io::Result<Vec<u8>> {
        match self.format {
            FileFormat::Json => {
                let mut v = crate::otlp::json::to_vec(req);
                v.push(b'\n');
                Ok(v)
            }
            FileFormat::Proto => {
                let len = req.encoded_len();
                let len32 = u32::try_from(len).map_err(|_| {
                    io::Error::other(format!("a {len}-byte request does not fit a proto record"))
                })?;
                let mut v = Vec::with_capacity(4 + len);
                v.extend_from_slice(&len32.to_be_bytes());
                req.encode(&mut v).map_err(io::Error::other)?;
                Ok(v)
            }
        }
    }

    /// Appends one record whole, or not at all.
    pub(super) fn append(&mut self, record: &[u8]) -> io::Result<()> {
        if let Some(max) = self.max_bytes
            && self.size > 0
            && self.size + record.len() as u64 > max
        {
            self.rotate()?;
        }
        if self.file.is_none() {
            let (f, size) = open(&self.path, self.mode)?;
            self.file = Some(f);
            self.size = size;
        }
        let Some(f) = self.file.as_mut() else {
            return Err(io::Error::other("no file open"));
        };
        if let Err(e) = f.write_all(record) {
            // Roll back whatever part of the record reached the file.
            if let Err(t) = f.set_len(self.size) {
                // The file now ends in a torn record: start a new one rather than append to it.
                self.file = None;
                return Err(io::Error::other(format!(
                    "{e}; and truncating back to the last whole record failed: {t}"
                )));
            }
            return Err(e);
        }
        self.size += record.len() as u64;
        self.dirty_since.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Closes the file, as a failed reopen leaves it (for tests).
    #[cfg(test)]
    pub(super) fn close_file(&mut self) {
        self.file = None;
    }

    /// Syncs the file to disk.
    pub(super) fn sync(&mut self) -> io::Result<()> {
        if let (true, Some(f)) = (self.dirty_since.is_some(), &self.file) {
            f.sync_data()?;
        }
        self.dirty_since = None;
        Ok(())
    }

    fn backup_name(&self, millis: u128) -> PathBuf {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = match self.path.extension() {
            Some(ext) => format!("{stem}-{millis}.{}", ext.to_string_lossy()),
            None => format!("{stem}-{millis}"),
        };
        self.path.with_file_name(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(f) = &self.file {
            f.sync_data()?;
        }
        let mut millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        while self.backup_name(millis).exists() {
            millis += 1;
        }
        // The current file may be gone already (a failed reopen, or removed by hand).
        if self.path.exists() {
            fs::rename(&self.path, self.backup_name(millis))?;
        }
        self.file = None;
        self.size = 0;
        let (f, size) = open(&self.path, self.mode)?;
        self.file = Some(f);
        self.size = size;
        if self.max_backups > 0 {
            let mut backups = self.backups()?;
            backups.sort();
            let excess = backups.len().saturating_sub(self.max_backups);
            for (_, old) in backups.into_iter().take(excess) {
                fs::remove_file(old)?;
            }
        }
        Ok(())
    }

    /// Rotated files of this path, with their timestamps.
    pub(super) fn backups(&self) -> io::Result<Vec<(u128, PathBuf)>> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ext = self
            .path
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let ts = name
                .strip_prefix(&format!("{stem}-"))
                .and_then(|r| r.strip_suffix(&ext))
                .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|t| t.parse::<u128>().ok());
            if let Some(ts) = ts {
                out.push((ts, entry.path()));
            }
        }
        Ok(out)
    }
}

impl ShellWriter for Writer {
    fn write(&mut self, req: Checked) -> Outcome {
        let n = sample_count(&req);
        let written = self.encode(&req).and_then(|rec| self.append(&rec));
        match written {
            Ok(()) => {
                // The exporter's flush comes `sync_every` after a write; this only
                // catches a stream of writes that keeps it waiting.
                if self
                    .dirty_since
                    .is_some_and(|t| t.elapsed() >= self.sync_every)
                {
                    // A failed sync is reported; the record itself is in the file.
                    if let Err(e) = self.sync() {
                        return Outcome {
                            sent: n,
                            failed: 0,
                            error: Some(format!("fsync failed: {e}")),
                        };
                    }
                }
                Outcome::sent(n)
            }
            Err(e) => Outcome::failed(n, format!("{}: {e}", self.path.display())),
        }
    }

    fn flush(&mut self) -> Outcome {
        match self.sync() {
            Ok(()) => Outcome::default(),
            Err(e) => Outcome {
                error: Some(format!("fsync of {} failed: {e}", self.path.display())),
                ..Default::default()
            },
        }
    }
}
