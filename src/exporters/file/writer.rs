//! The file itself: encoding records, appending, flushing and rotating.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use super::{FileExporterConfig, FileFormat};
use crate::otlp::ProfilesRequest;

pub(super) struct Writer {
    path: PathBuf,
    format: FileFormat,
    max_bytes: Option<u64>,
    max_backups: usize,
    out: BufWriter<File>,
    size: u64,
}

fn open(path: &Path) -> io::Result<(BufWriter<File>, u64)> {
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    let size = f.metadata()?.len();
    Ok((BufWriter::with_capacity(256 << 10, f), size))
}

impl Writer {
    /// Opens (creating the directory if needed) the file to append to.
    pub(super) fn open(cfg: &FileExporterConfig) -> io::Result<Self> {
        if let Some(dir) = cfg.path.parent()
            && !dir.as_os_str().is_empty()
        {
            fs::create_dir_all(dir)?;
        }
        let (out, size) = open(&cfg.path)?;
        Ok(Writer {
            path: cfg.path.clone(),
            format: cfg.format,
            max_bytes: cfg.rotation.as_ref().map(|r| r.max_megabytes << 20),
            max_backups: cfg.rotation.as_ref().map_or(0, |r| r.max_backups),
            out,
            size,
        })
    }

    /// Encodes one request as one record.
    pub(super) fn encode(&self, req: &ProfilesRequest) -> io::Result<Vec<u8>> {
        match self.format {
            FileFormat::Json => {
                let mut v = serde_json::to_vec(req).map_err(io::Error::other)?;
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

    /// Appends a record, rotating first if it would take the file past the limit.
    pub(super) fn append(&mut self, record: &[u8]) -> io::Result<()> {
        if let Some(max) = self.max_bytes
            && self.size > 0
            && self.size + record.len() as u64 > max
        {
            self.rotate()?;
        }
        self.out.write_all(record)?;
        self.size += record.len() as u64;
        Ok(())
    }

    pub(super) fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
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
        self.out.flush()?;
        let mut millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        while self.backup_name(millis).exists() {
            millis += 1;
        }
        fs::rename(&self.path, self.backup_name(millis))?;
        let (out, size) = open(&self.path)?;
        self.out = out;
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
                .and_then(|t| t.parse::<u128>().ok());
            if let Some(ts) = ts {
                out.push((ts, entry.path()));
            }
        }
        Ok(out)
    }
}
