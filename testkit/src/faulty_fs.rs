//! A file system that fails on demand: one flat directory of files held in memory,
//! mounted with FUSE in this process, whose writes, syncs, truncations, creations,
//! renames and removals return EIO while [`FaultyFs::fail`] is on. The kernel here has
//! no device-mapper `error` target, and a full tmpfs gives ENOSPC, not EIO.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow,
};

const ROOT: u64 = 1;
/// Attributes are not cached by the kernel: sizes change under it.
const TTL: Duration = Duration::ZERO;

/// The mounted file system; unmounted when dropped.
pub struct FaultyFs {
    failing: Arc<AtomicBool>,
    _session: fuser::BackgroundSession,
}

impl FaultyFs {
    /// Mounts an empty file system at `dir` (created if missing).
    pub fn mount(dir: &Path) -> FaultyFs {
        std::fs::create_dir_all(dir).unwrap();
        let failing = Arc::new(AtomicBool::new(false));
        let fs = Files {
            failing: failing.clone(),
            files: HashMap::new(),
            next: ROOT + 1,
        };
        let session = fuser::spawn_mount2(
            fs,
            dir,
            &[
                MountOption::FSName("stackline-faulty".into()),
                MountOption::RW,
            ],
        )
        .unwrap_or_else(|e| {
            panic!(
                "cannot mount the FUSE file system at {}: {e}",
                dir.display()
            )
        });
        FaultyFs {
            failing,
            _session: session,
        }
    }

    /// From now on, every write-like operation fails with EIO (`true`), or works (`false`).
    pub fn fail(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }
}

struct File {
    name: Vec<u8>,
    data: Vec<u8>,
    mtime: SystemTime,
}

struct Files {
    failing: Arc<AtomicBool>,
    files: HashMap<u64, File>,
    next: u64,
}

impl Files {
    fn failing(&self) -> bool {
        self.failing.load(Ordering::SeqCst)
    }

    fn find(&self, name: &OsStr) -> Option<u64> {
        use std::os::unix::ffi::OsStrExt;
        self.files
            .iter()
            .find(|(_, f)| f.name == name.as_bytes())
            .map(|(&ino, _)| ino)
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, size, perm, mtime) = if ino == ROOT {
            (FileType::Directory, 0, 0o755, SystemTime::UNIX_EPOCH)
        } else {
            let f = self.files.get(&ino)?;
            (FileType::RegularFile, f.data.len() as u64, 0o644, f.mtime)
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm,
            nlink: if ino == ROOT { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

impl Filesystem for Files {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match (parent == ROOT).then(|| self.find(name)).flatten() {
            Some(ino) => reply.entry(&TTL, &self.attr(ino).unwrap(), 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(libc::ENOENT),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        if let Some(size) = size {
            if self.failing() {
                return reply.error(libc::EIO);
            }
            match self.files.get_mut(&ino) {
                Some(f) => {
                    f.data.resize(size as usize, 0);
                    f.mtime = SystemTime::now();
                }
                None => return reply.error(libc::ENOENT),
            }
        }
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(libc::ENOENT),
        }
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        use std::os::unix::ffi::OsStrExt;
        if parent != ROOT {
            return reply.error(libc::ENOENT);
        }
        if self.failing() {
            return reply.error(libc::EIO);
        }
        let ino = match self.find(name) {
            Some(ino) => ino,
            None => {
                let ino = self.next;
                self.next += 1;
                self.files.insert(
                    ino,
                    File {
                        name: name.as_bytes().to_vec(),
                        data: Vec::new(),
                        mtime: SystemTime::now(),
                    },
                );
                ino
            }
        };
        reply.created(&TTL, &self.attr(ino).unwrap(), 0, 0, 0);
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        if self.files.contains_key(&ino) {
            reply.opened(0, 0);
        } else {
            reply.error(libc::ENOENT);
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        match self.files.get(&ino) {
            Some(f) => {
                let start = (offset.max(0) as usize).min(f.data.len());
                let end = (start + size as usize).min(f.data.len());
                reply.data(&f.data[start..end]);
            }
            None => reply.error(libc::ENOENT),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        if self.failing() {
            return reply.error(libc::EIO);
        }
        match self.files.get_mut(&ino) {
            Some(f) => {
                let start = offset.max(0) as usize;
                if f.data.len() < start + data.len() {
                    f.data.resize(start + data.len(), 0);
                }
                f.data[start..start + data.len()].copy_from_slice(data);
                f.mtime = SystemTime::now();
                reply.written(data.len() as u32);
            }
            None => reply.error(libc::ENOENT),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lo: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        if self.failing() {
            reply.error(libc::EIO);
        } else {
            reply.ok();
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        if self.failing() {
            return reply.error(libc::EIO);
        }
        match (parent == ROOT).then(|| self.find(name)).flatten() {
            Some(ino) => {
                self.files.remove(&ino);
                reply.ok();
            }
            None => reply.error(libc::ENOENT),
        }
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        _flags: u32,
        reply: ReplyEmpty,
    ) {
        use std::os::unix::ffi::OsStrExt;
        if self.failing() {
            return reply.error(libc::EIO);
        }
        if parent != ROOT || newparent != ROOT {
            return reply.error(libc::ENOENT);
        }
        let Some(ino) = self.find(name) else {
            return reply.error(libc::ENOENT);
        };
        if let Some(old) = self.find(newname) {
            self.files.remove(&old);
        }
        self.files.get_mut(&ino).unwrap().name = newname.as_bytes().to_vec();
        reply.ok();
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        use std::os::unix::ffi::OsStrExt;
        if ino != ROOT {
            return reply.error(libc::ENOTDIR);
        }
        let mut entries: Vec<(u64, FileType, Vec<u8>)> = vec![
            (ROOT, FileType::Directory, b".".to_vec()),
            (ROOT, FileType::Directory, b"..".to_vec()),
        ];
        let mut files: Vec<_> = self.files.iter().collect();
        files.sort_by_key(|(ino, _)| **ino);
        entries.extend(
            files
                .into_iter()
                .map(|(&ino, f)| (ino, FileType::RegularFile, f.name.clone())),
        );
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(*ino, (i + 1) as i64, *kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }
}
