//! Building an executable's unwind table from its `.eh_frame` (or `.debug_frame`), with
//! gimli and object: every FDE's rows become compact [`Row`]s, sorted, closed with an
//! INVALID row where the next FDE does not start right after, identical neighbours
//! merged, then split into 4 KiB pages packed into chunks (see `ebpf/src/unwind.rs`).

use super::rules::{CHUNK_ROWS, Chunk, DIR_HEADER, DirHeader, PageInfo, Row, cfa, rbp};
use super::rules::{PAGE_BITS, PAGE_SIZE};
use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, LittleEndian, RegisterRule,
    UnwindContext, UnwindSection, X86_64,
};
use object::{Object, ObjectSection, ObjectSegment};

mod fdes;
use fdes::*;
pub use fdes::{Fde, Rule, fdes};

/// What building a table found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    pub fdes: u32,
    /// Rows after merging, before paging.
    pub rows: u32,
    /// Rows with a rule we do not follow (they end a walk with `invalid_rule`).
    pub unsupported: u32,
    pub signal_fdes: u32,
    pub plt_rows: u32,
    /// FDEs gimli could not evaluate (skipped: their range has no rule).
    pub bad_fdes: u32,
    /// Rows dropped because a page had more than a chunk holds.
    pub dropped_rows: u32,
}

/// An executable's table, ready to load: its chunks as the kernel array holds them
/// (the page directory, then the rows).
pub struct Table {
    pub chunks: Vec<Chunk>,
    /// Pages with rows.
    pub pages: usize,
    pub stats: TableStats,
}

impl Table {
    /// Bytes the table takes in the kernel.
    pub fn bytes(&self) -> u64 {
        (self.chunks.len() * std::mem::size_of::<Chunk>()) as u64
    }

    /// The rule that applies to `vaddr`, found as the eBPF program finds it.
    pub fn lookup(&self, vaddr: u64) -> Option<Row> {
        super::rules::lookup(|i| self.chunks.get(i as usize), vaddr).ok()
    }
}

/// The array the kernel holds: a directory of `pages` (header, then one entry per page
/// from the first to the last, empty where a page has no rows), then `rows`.
fn with_directory(pages: &[(u64, PageInfo)], rows: Vec<Chunk>) -> Vec<Chunk> {
    let (first, n) = match (pages.first(), pages.last()) {
        (Some(f), Some(l)) => (f.0, (l.0 - f.0 + 1) as usize),
        _ => (0, 0),
    };
    let total = DIR_HEADER as usize + n;
    let dir_chunks = total.div_ceil(CHUNK_ROWS);
    let mut dir = vec![PageInfo::default(); dir_chunks * CHUNK_ROWS];
    for (p, info) in pages {
        dir[DIR_HEADER as usize + (p - first) as usize] = PageInfo {
            chunk: info.chunk + dir_chunks as u32,
            ..*info
        };
    }
    let header = DirHeader {
        first_page: first,
        pages: n as u32,
        dir_chunks: dir_chunks as u32,
    };
    dir[..DIR_HEADER as usize].copy_from_slice(&header.as_entries());
    let mut out: Vec<Chunk> = dir
        .chunks(CHUNK_ROWS)
        .map(|c| {
            let mut chunk = Chunk {
                rows: [Row::default(); CHUNK_ROWS],
            };
            for (r, e) in chunk.rows.iter_mut().zip(c) {
                *r = Row::from_entry(*e);
            }
            chunk
        })
        .collect();
    out.extend(rows);
    out
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("not an ELF file")]
    Elf(#[source] object::Error),
    #[error("no .eh_frame or .debug_frame")]
    NoFrames,
    #[error("reading the frame section failed")]
    Frames(#[source] gimli::Error),
    #[error("building the table panicked (a bug; counted with the component's panics)")]
    Panicked,
    /// Past the memory bound, found before the table is built in full.
    #[error("{what} is larger than the unwind table budget allows ({limit}; unwind.max_memory)")]
    TooLarge { what: String, limit: u64 },
}

/// What building one table may take. The rows read from the frame section are held
/// (16 bytes each, before merging) until the table is packed; a crafted section packs
/// a row into two bytes. So both the section and the rows are bounded before they are
/// read, not after: a table is refused as soon as either passes its bound.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Bytes of the `.eh_frame` or `.debug_frame` section.
    pub section_bytes: u64,
    /// Rows read from it, all FDEs together.
    pub rows: u64,
}

impl Bounds {
    /// For a budget of `max_memory` bytes of tables: a section no larger than the
    /// budget, and rows whose raw form takes no more than it.
    pub fn for_budget(max_memory: u64) -> Bounds {
        Bounds {
            section_bytes: max_memory,
            rows: max_memory / 16,
        }
    }

    pub const NONE: Bounds = Bounds {
        section_bytes: u64::MAX,
        rows: u64::MAX,
    };
}

/// Builds the table of an ELF file's bytes.
pub fn build<'d, R: object::ReadRef<'d>>(data: R) -> Result<Table, TableError> {
    build_within(data, Bounds::NONE)
}

/// Builds the table of an ELF file's bytes, refused as soon as it passes `bounds`.
pub fn build_within<'d, R: object::ReadRef<'d>>(
    data: R,
    bounds: Bounds,
) -> Result<Table, TableError> {
    let (fdes, mut stats) = fdes_within(data, bounds)?;
    Ok(paginate(intervals(fdes, &mut stats), stats))
}

/// FDEs → one sorted list of (address, rule) changes, INVALID where no FDE covers.
fn intervals(mut fdes: Vec<Fde>, stats: &mut TableStats) -> Vec<(u64, Rule)> {
    fdes.sort_by_key(|f| (f.start, f.end));
    let mut out: Vec<(u64, Rule)> = Vec::new();
    let push = |out: &mut Vec<(u64, Rule)>, addr: u64, rule: Rule| {
        // Overlapping FDEs (e.g. a signal trampoline's moved a byte early): the later wins.
        while out.last().is_some_and(|l| l.0 > addr) {
            out.pop();
        }
        if let Some(last) = out.last_mut() {
            if last.0 == addr {
                last.1 = rule;
                // Merge with the row before if the replacement made them equal.
                if out.len() >= 2 && out[out.len() - 2].1 == rule {
                    out.pop();
                }
                return;
            }
            if last.1 == rule {
                return;
            }
        }
        out.push((addr, rule));
    };
    for (i, f) in fdes.iter().enumerate() {
        for &(a, r) in &f.rows {
            if a >= f.start && a < f.end {
                push(&mut out, a, r);
            }
        }
        let next_start = fdes.get(i + 1).map(|n| n.start);
        if next_start != Some(f.end) {
            push(&mut out, f.end, Rule::INVALID);
        }
    }
    stats.rows = out.len() as u32;
    out
}

/// Splits sorted rule changes into pages (each starting with the rule in effect at
/// its start) and packs the pages' rows into chunks.
fn paginate(changes: Vec<(u64, Rule)>, mut stats: TableStats) -> Table {
    let mut pages = Vec::new();
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut used = CHUNK_ROWS; // forces a first chunk
    let mut i = 0;
    let mut current = Rule::INVALID;
    while i < changes.len() {
        let page = changes[i].0 >> PAGE_BITS;
        let page_start = page << PAGE_BITS;
        let mut rows = vec![current.row(0)];
        while i < changes.len() && changes[i].0 >> PAGE_BITS == page {
            let (addr, rule) = changes[i];
            let low = (addr - page_start) as u16;
            if low == 0 {
                rows[0] = rule.row(0);
            } else {
                rows.push(rule.row(low));
            }
            current = rule;
            i += 1;
        }
        // A page whose every rule is INVALID needs no entry: a lookup miss means the same.
        if !rows.iter().all(|r| r.cfa == cfa::INVALID) {
            if rows.len() > CHUNK_ROWS {
                stats.dropped_rows += (rows.len() - CHUNK_ROWS + 1) as u32;
                rows.truncate(CHUNK_ROWS - 1);
                rows.push(Rule::INVALID.row(rows.last().map_or(0, |r| r.pc_low + 1)));
            }
            if used + rows.len() > CHUNK_ROWS {
                chunks.push(Chunk {
                    rows: [Row::default(); CHUNK_ROWS],
                });
                used = 0;
            }
            let chunk = chunks.len() - 1;
            chunks[chunk].rows[used..used + rows.len()].copy_from_slice(&rows);
            pages.push((
                page,
                PageInfo {
                    chunk: chunk as u32,
                    first: used as u16,
                    count: rows.len() as u16,
                },
            ));
            used += rows.len();
        }
        // Pages with no rule change inherit `current` through their first row: fill
        // every page the current rule spans until the next change.
        if let Some(&(next, _)) = changes.get(i)
            && current.cfa != cfa::INVALID
        {
            let mut p = page + 1;
            while p < next >> PAGE_BITS {
                let row = [current.row(0)];
                if used + 1 > CHUNK_ROWS {
                    chunks.push(Chunk {
                        rows: [Row::default(); CHUNK_ROWS],
                    });
                    used = 0;
                }
                let chunk = chunks.len() - 1;
                chunks[chunk].rows[used] = row[0];
                pages.push((
                    p,
                    PageInfo {
                        chunk: chunk as u32,
                        first: used as u16,
                        count: 1,
                    },
                ));
                used += 1;
                p += 1;
            }
        }
    }
    Table {
        pages: pages.len(),
        chunks: with_directory(&pages, chunks),
        stats,
    }
}

/// Runtime address minus ELF virtual address for an executable mapping of `data` at
/// `start` with (page-aligned) file offset `offset`: `start - offset + p_offset - p_vaddr`
/// of the executable load segment the mapping holds. The segment's own offset may be
/// mid-page (the mapping then starts at the page below it, sharing that page with the
/// segment before).
pub fn bias(segs: &[crate::host::elf::Segment], start: u64, offset: u64) -> Option<u64> {
    let segs: Vec<(u64, u64, u64, bool)> = segs
        .iter()
        .map(|s| (s.offset, s.filesz, s.vaddr, s.executable))
        .collect();
    let page = |o: u64| o & !(PAGE_SIZE - 1);
    let holds = |&&(off, size, _, _): &&(u64, u64, u64, bool)| {
        offset >= page(off) && offset < off + size.max(1)
    };
    let seg = segs
        .iter()
        .filter(|s| s.3)
        .find(holds)
        .or_else(|| segs.iter().find(holds))?;
    Some(
        start
            .wrapping_sub(offset)
            .wrapping_add(seg.0)
            .wrapping_sub(seg.2),
    )
}
