//! Keeping the kernel's unwind maps in step with the processes being sampled, on a
//! thread of its own (building a table takes milliseconds; the sample reader must not wait).
//!
//! For every sampled process it is told about (by the sample reader, which reads
//! `/proc/PID/maps` at first sight, on exec, pid reuse and when the program asks), it
//! maps each executable mapping to its executable's table id and loads the table if
//! needed; the process's address ranges go into the mapping index. Executables are
//! keyed by GNU build ID (else a hash of their first and last 4 KiB and length) together
//! with the file's identity (device, inode, size, change time), so a library shared by
//! many processes has one table, and a file that claims another's build ID has its own. Tables are evicted least recently
//! used first to stay within `unwind.max_memory`.

use super::rules::{Chunk, MappingInfo};
use super::table::{Table, bias};
use crate::host::elf::{Segment, segments, segments_in};
use crate::host::proc::MapEntry;
use crate::receivers::ebpf_profiler::bpf::loader::TableMaps;
use crate::receivers::ebpf_profiler::bpf::{pod, sys};
use crate::receivers::ebpf_profiler::process::{Listener, ProcessEvent};
use crate::receivers::ebpf_profiler::shared::{MAPPING_KEY_BITS, MappingKeyData};
use crate::telemetry::names;
use aya::maps::lpm_trie::Key;
use metrics::{Counter, Gauge, Histogram};
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::os::fd::AsFd;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Instant;
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_cover_a_range_exactly() {
        for (start, end) in [
            (0x55d0c0a21000u64, 0x55d0c0b00000u64),
            (0x7f0000001000, 0x7f0000001000 + 0x1d5000),
            (0x1000, 0x2000),
            (0, 0x10),
        ] {
            let p = prefixes(start, end);
            let mut a = start;
            for &(addr, bits) in &p {
                assert_eq!(addr, a, "contiguous");
                let size = 1u64 << (64 - bits);
                assert_eq!(addr % size, 0, "aligned");
                a += size;
            }
            assert_eq!(a, end);
            assert!(p.len() <= 2 * 64);
        }
    }
}

mod index;
mod tables;
use index::*;
use tables::*;

/// What the manager is told: by the process model (through [`Handle`]'s [`Listener`]),
/// and by its builder thread.
pub enum Msg {
    /// A process's current executable mappings (at first sight, exec, pid reuse, or refresh).
    Process { pid: u32, maps: Vec<MapEntry> },
    /// The process is gone: its ranges can go.
    Gone(u32),
    /// A report interval ended; these processes were sampled in it.
    Interval(Vec<u32>),
    /// From the builder: an executable's table (or why it has none), and how long it took.
    Built {
        id: u64,
        table: Result<Table, super::table::TableError>,
        took: std::time::Duration,
    },
    /// The reader dropped its handle: stop (the builder holds a sender too, so the
    /// channel alone would never close, and the two threads would keep the maps open).
    Stop,
}

/// The manager's end the reader holds. Dropping it stops the manager.
pub struct Handle {
    tx: SyncSender<Msg>,
    dropped: Counter,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Waits for room: the manager is draining, and must see this.
        let _ = self.tx.send(Msg::Stop);
    }
}

impl Handle {
    /// Sends without waiting: if the manager is behind, the message is dropped and
    /// counted (the process is re-sent at the next refresh or request).
    pub fn send(&self, msg: Msg) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(msg) {
            self.dropped.increment(1);
        }
    }
}

/// The manager follows the process model: tables for what is mapped, ranges dropped for
/// what is gone, and each interval's sampled processes to rank what to keep.
impl Listener for Handle {
    fn on(&mut self, event: &ProcessEvent<'_>) {
        self.send(match *event {
            ProcessEvent::Mapped { pid, maps } => Msg::Process {
                pid,
                maps: maps.to_vec(),
            },
            ProcessEvent::Gone { pid } => Msg::Gone(pid),
            ProcessEvent::Interval { sampled } => Msg::Interval(sampled.to_vec()),
        });
    }
}

/// Starts the manager thread, and the builder thread it hands table builds to (so a
/// large executable's build never delays the mapping index of other processes).
pub fn spawn(maps: TableMaps, max_memory: u64) -> std::io::Result<Handle> {
    let (tx, rx) = sync_channel(1024);
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<(u64, Source)>();
    let built = tx.clone();
    std::thread::Builder::new()
        .name("unwind-build".into())
        .spawn(move || build_loop(jobs_rx, built, super::table::Bounds::for_budget(max_memory)))?;
    let mut m = Manager::new(maps, max_memory, jobs_tx);
    std::thread::Builder::new()
        .name("unwind-tables".into())
        .spawn(move || {
            m.run(rx);
            // The maps' fds close here, so a reloaded receiver does not keep the old
            // programs' maps in the kernel.
            drop(m);
            tracing::debug!("unwind table manager stopped");
        })?;
    Ok(Handle {
        tx,
        dropped: metrics::counter!(names::EBPF_SAMPLES_LOST, "reason" => "unwind_request_dropped"),
    })
}

struct Meters {
    refused_cap: Counter,
    refused_full: Counter,
    bytes: Gauge,
    tables: Gauge,
    pending: Gauge,
    build: Histogram,
    evictions: Counter,
}

struct Manager {
    maps: TableMaps,
    max_memory: u64,
    used: u64,
    interval: u64,
    files: HashMap<FileKey, Option<FileInfo>>,
    loaded: HashMap<u64, Loaded>,
    /// Executables without a usable table (no .eh_frame, or larger than the budget).
    no_table: HashSet<u64>,
    procs: HashMap<u32, Vec<Range>>,
    vdso: Option<Option<(FileInfo, std::sync::Arc<[u8]>)>>,
    /// Tables handed to the builder and not back yet.
    pending: HashSet<u64>,
    jobs: std::sync::mpsc::Sender<(u64, Source)>,
    meters: Meters,
}

impl Manager {
    fn new(maps: TableMaps, max_memory: u64, jobs: std::sync::mpsc::Sender<(u64, Source)>) -> Self {
        Manager {
            maps,
            max_memory,
            used: 0,
            interval: 0,
            files: HashMap::new(),
            loaded: HashMap::new(),
            no_table: HashSet::new(),
            procs: HashMap::new(),
            vdso: None,
            pending: HashSet::new(),
            jobs,
            meters: Meters {
                refused_cap: metrics::counter!(names::EBPF_UNWIND_MAPPINGS_REFUSED, "reason" => "process_cap"),
                refused_full: metrics::counter!(names::EBPF_UNWIND_MAPPINGS_REFUSED, "reason" => "index_full"),
                bytes: metrics::gauge!(names::EBPF_UNWIND_TABLE_BYTES),
                tables: metrics::gauge!(names::EBPF_UNWIND_TABLES),
                pending: metrics::gauge!(names::EBPF_UNWIND_TABLES_PENDING),
                build: metrics::histogram!(names::EBPF_UNWIND_TABLE_BUILD_SECONDS),
                evictions: metrics::counter!(names::EBPF_UNWIND_TABLE_EVICTIONS),
            },
        }
    }

    fn run(&mut self, rx: Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            if matches!(msg, Msg::Stop) {
                // Dropping `self.jobs` with the manager ends the builder after its build.
                return;
            }
            // A bug here must not take unwinding down for good: the message is dropped.
            let r = crate::pipeline::catch("receiver/ebpf_profiler/unwind-tables", || match msg {
                Msg::Stop => {}
                Msg::Process { pid, maps } => self.process(pid, &maps),
                Msg::Gone(pid) => self.gone(pid),
                Msg::Interval(pids) => self.next_interval(&pids),
                Msg::Built { id, table, took } => self.built(id, table, took),
            });
            if r.is_err() {
                self.files.clear();
            }
        }
    }
}
