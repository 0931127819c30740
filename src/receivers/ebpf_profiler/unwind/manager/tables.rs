//! Executables' tables: which file a mapping is (its identity), building its table off the manager's thread, loading it into the kernel's map-of-maps within the memory budget, and unloading the least used.

use super::*;

/// A file's identity on its device.
pub(super) type FileKey = (String, u64);

/// What a mapped file gave: its table id (0 = none) and its load segments (for the bias).
/// The file itself is not kept open: it is opened again when its table must be built.
#[derive(Clone)]
pub(super) struct FileInfo {
    pub(super) exe_id: u64,
    pub(super) segments: std::sync::Arc<[Segment]>,
}

/// What the builder reads a table from: a file (through `pread`, only the sections it
/// needs; never mapped, so its owner truncating it cannot hurt), or bytes (the vDSO).
#[derive(Clone)]
pub(super) enum Source {
    File(std::sync::Arc<std::fs::File>),
    Bytes(std::sync::Arc<[u8]>),
}

impl Source {
    pub(super) fn len(&self) -> u64 {
        match self {
            Source::File(f) => f.metadata().map_or(u64::MAX, |m| m.len()),
            Source::Bytes(b) => b.len() as u64,
        }
    }

    pub(super) fn build(
        &self,
        bounds: super::super::table::Bounds,
    ) -> Result<Table, super::super::table::TableError> {
        match self {
            Source::File(f) => {
                super::super::table::build_within(&object::ReadCache::new(&**f), bounds)
            }
            Source::Bytes(b) => super::super::table::build_within(&b[..], bounds),
        }
    }
}

pub(super) struct Loaded {
    pub(super) bytes: u64,
    pub(super) last_used: u64,
}

pub(super) fn build_result(result: &'static str) -> Counter {
    metrics::counter!(names::EBPF_UNWIND_TABLE_BUILDS, "result" => result)
}

/// Builds tables as they are asked for, smallest file first among those waiting.
pub(super) fn build_loop(
    jobs: Receiver<(u64, Source)>,
    done: SyncSender<Msg>,
    bounds: super::super::table::Bounds,
) {
    let mut waiting: Vec<(u64, Source)> = Vec::new();
    loop {
        if waiting.is_empty() {
            match jobs.recv() {
                Ok(j) => waiting.push(j),
                Err(_) => return,
            }
        }
        while let Ok(j) = jobs.try_recv() {
            waiting.push(j);
        }
        let Some(i) = (0..waiting.len()).min_by_key(|&i| waiting[i].1.len()) else {
            continue;
        };
        let (id, f) = waiting.swap_remove(i);
        let t0 = Instant::now();
        let table =
            crate::pipeline::catch("receiver/ebpf_profiler/unwind-build", || f.build(bounds))
                .unwrap_or(Err(super::super::table::TableError::Panicked));
        let msg = Msg::Built {
            id,
            table,
            took: t0.elapsed(),
        };
        if done.send(msg).is_err() {
            return;
        }
    }
}

/// A file's identity on this host: device, inode, size and change time. Two files
/// that declare the same build ID are still two files: a process that runs an ELF
/// carrying libc's build ID must not change how every other process's libc is unwound.
pub(super) fn identity(f: &std::fs::File) -> Option<(u64, u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata().ok()?;
    Some((m.dev(), m.ino(), m.size(), m.ctime(), m.ctime_nsec()))
}

/// The table id of an executable: a hash of its build ID (else of its first and last
/// 4 KiB and its length) and of the file's identity where there is one (not for the
/// vDSO). Never 0 (which means "no table").
pub(super) fn exe_id<'d, R: object::ReadRef<'d>>(
    data: R,
    file: Option<(u64, u64, u64, i64, i64)>,
) -> u64 {
    let from_id = crate::host::elf::build_id_in(data)
        .filter(|id| id.as_str().len() >= 16)
        .map(|id| id.prefix_u64());
    let id = from_id.unwrap_or_else(|| {
        let len = data.len().unwrap_or(0);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        data.read_bytes_at(0, len.min(4096))
            .unwrap_or(&[])
            .hash(&mut h);
        data.read_bytes_at(len.saturating_sub(4096), len.min(4096))
            .unwrap_or(&[])
            .hash(&mut h);
        len.hash(&mut h);
        h.finish()
    });
    let id = match file {
        None => id,
        Some(ident) => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (id, ident).hash(&mut h);
            h.finish()
        }
    };
    id.max(1)
}

impl Manager {
    /// The file behind mapping `m` of `pid`, read at most once per file; with it, when
    /// just opened, the source to build its table from.
    pub(super) fn file(&mut self, pid: u32, m: &MapEntry) -> Option<(FileInfo, Option<Source>)> {
        if m.path == "[vdso]" {
            if self.vdso.is_none() {
                self.vdso = Some(own_vdso().and_then(|data| {
                    let data: std::sync::Arc<[u8]> = data.into();
                    let info = FileInfo {
                        exe_id: exe_id(&data[..], None),
                        segments: segments_in(&data[..])?.into(),
                    };
                    Some((info, data))
                }));
            }
            let (info, data) = self.vdso.clone().flatten()?;
            return Some((info, Some(Source::Bytes(data))));
        }
        let key = (m.dev.clone(), m.inode);
        if let Some(f) = self.files.get(&key) {
            return f.clone().map(|f| (f, None));
        }
        let file = crate::host::open::open_mapped(pid, m.start, m.end, &m.path).ok()?;
        let info = segments(&file).map(|segs| FileInfo {
            exe_id: exe_id(&object::ReadCache::new(&file), identity(&file)),
            segments: segs.into(),
        });
        // Bound the cache: files come and go with processes.
        if self.files.len() > 8192 {
            self.files.clear();
        }
        self.files.insert(key, info.clone());
        info.map(|i| (i, Some(Source::File(std::sync::Arc::new(file)))))
    }

    /// The id the mapping index should carry for `f`: its table's, handed to the
    /// builder if need be (until it is loaded, the program falls back to frame pointers
    /// and asks again); 0 if it can have none. `open` gives the file when the table
    /// must be built (it was just opened, or is opened again).
    pub(super) fn table_id(
        &mut self,
        f: &FileInfo,
        source: Option<Source>,
        open: impl FnOnce() -> Option<Source>,
    ) -> u64 {
        let id = f.exe_id;
        if let Some(l) = self.loaded.get_mut(&id) {
            l.last_used = self.interval;
            return id;
        }
        if self.no_table.contains(&id) {
            return 0;
        }
        if !self.pending.contains(&id) {
            let Some(src) = source.or_else(open) else {
                return 0;
            };
            self.pending.insert(id);
            if self.jobs.send((id, src)).is_err() {
                self.pending.remove(&id);
            }
        }
        self.meters.pending.set(self.pending.len() as f64);
        id
    }

    /// A table is built: loaded within the budget, or remembered as impossible.
    pub(super) fn built(
        &mut self,
        id: u64,
        table: Result<Table, super::super::table::TableError>,
        took: std::time::Duration,
    ) {
        self.pending.remove(&id);
        self.meters.pending.set(self.pending.len() as f64);
        self.meters.build.record(took.as_secs_f64());
        let table = match table {
            Ok(t) => t,
            Err(e @ super::super::table::TableError::TooLarge { .. }) => {
                tracing::warn!(exe_id = format!("{id:x}"), error = %crate::telemetry::chain(&e), "an unwind table was refused before it was built; its frames fall back to frame pointers");
                build_result("too_large").increment(1);
                self.no_table.insert(id);
                return;
            }
            Err(e) => {
                tracing::debug!(exe_id = format!("{id:x}"), error = %crate::telemetry::chain(&e), "no unwind table");
                build_result("no_frames").increment(1);
                self.no_table.insert(id);
                return;
            }
        };
        let bytes = table.bytes();
        if bytes > self.max_memory {
            build_result("too_large").increment(1);
            self.no_table.insert(id);
            return;
        }
        self.make_room(bytes);
        match self.load(id, &table) {
            Ok(()) => {
                build_result("loaded").increment(1);
                self.used += bytes;
                self.loaded.insert(
                    id,
                    Loaded {
                        bytes,
                        last_used: self.interval,
                    },
                );
                self.meters.bytes.set(self.used as f64);
                self.meters.tables.set(self.loaded.len() as f64);
            }
            Err(e) => {
                tracing::warn!(exe_id = format!("{id:x}"), error = %e, "cannot load an unwind table; its frames fall back to frame pointers");
                build_result("map_full").increment(1);
                self.unload(id);
            }
        }
    }

    /// Evicts least recently used tables until `bytes` more fit the budget.
    pub(super) fn make_room(&mut self, bytes: u64) {
        while self.used + bytes > self.max_memory {
            let Some((&victim, _)) = self.loaded.iter().min_by_key(|(_, l)| l.last_used) else {
                return;
            };
            if let Some(l) = self.loaded.remove(&victim) {
                self.unload(victim);
                self.used -= l.bytes;
                self.meters.evictions.increment(1);
            }
        }
        self.meters.bytes.set(self.used as f64);
        self.meters.tables.set(self.loaded.len() as f64);
    }

    /// Writes a table into the kernel: its chunks (directory, then rows) into a new
    /// array sized for it, then the array into the map-of-maps.
    pub(super) fn load(&mut self, id: u64, t: &Table) -> std::io::Result<()> {
        let inner = sys::map_create(
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
            4,
            std::mem::size_of::<Chunk>() as u32,
            t.chunks.len().max(1) as u32,
            sys::BPF_F_INNER_MAP,
            None,
            "unwind_rows",
        )?;
        for (i, c) in t.chunks.iter().enumerate() {
            sys::map_update(
                inner.as_fd(),
                &(i as u32).to_ne_bytes(),
                Some(pod::bytes_of(c)),
            )?;
        }
        sys::map_update(
            self.maps.tables.as_fd(),
            &id.to_ne_bytes(),
            Some(&(std::os::fd::AsRawFd::as_raw_fd(&inner) as u32).to_ne_bytes()),
        )
    }

    pub(super) fn unload(&mut self, id: u64) {
        let _ = sys::map_update(self.maps.tables.as_fd(), &id.to_ne_bytes(), None);
    }
}
