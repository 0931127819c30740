//! Building an executable's unwind table from its `.eh_frame` (or `.debug_frame`), with
//! gimli and object: every FDE's rows become compact [`Row`]s, sorted, closed with an
//! INVALID row where the next FDE does not start right after, identical neighbours
//! merged, then split into 4 KiB pages packed into chunks (see `ebpf/src/unwind.rs`).

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, LittleEndian, RegisterRule,
    UnwindContext, UnwindSection, X86_64,
};
use object::{Object, ObjectSection, ObjectSegment};

use super::rules::{CHUNK_ROWS, Chunk, DIR_HEADER, DirHeader, PageInfo, Row, cfa, rbp};
use super::rules::{PAGE_BITS, PAGE_SIZE};

/// A rule as it applies to an address range (before it is split into pages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub cfa: u8,
    pub cfa_off: u16,
    pub rbp: u8,
    pub rbp_off: i16,
}

impl Rule {
    pub const INVALID: Rule = Rule {
        cfa: cfa::INVALID,
        cfa_off: 0,
        rbp: rbp::SAME,
        rbp_off: 0,
    };

    fn row(self, pc_low: u16) -> Row {
        Row {
            pc_low,
            cfa: self.cfa,
            rbp: self.rbp,
            cfa_off: self.cfa_off,
            rbp_off: self.rbp_off,
        }
    }

    pub fn of(row: &Row) -> Rule {
        Rule {
            cfa: row.cfa,
            cfa_off: row.cfa_off,
            rbp: row.rbp,
            rbp_off: row.rbp_off,
        }
    }
}

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
    #[error("not an ELF file: {0}")]
    Elf(String),
    #[error("no .eh_frame or .debug_frame")]
    NoFrames,
    #[error("reading the frame section failed: {0}")]
    Frames(String),
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

/// The x86_64 lazy-PLT CFA expression: `rsp + 8 + ((rip & 15) >= N) << 3`, with N in byte 6.
fn plt_threshold(expr: &[u8]) -> Option<u16> {
    match expr {
        [
            0x77,
            0x08,
            0x80,
            0x00,
            0x3f,
            0x1a,
            n @ 0x30..=0x3f,
            0x2a,
            0x33,
            0x24,
            0x22,
        ] => Some((*n - 0x30) as u16),
        _ => None,
    }
}

/// glibc's and musl's `__restore_rt`: `mov $15, %rax; syscall` (rt_sigreturn).
const RESTORE_RT: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

/// An FDE's rows, as (start address, rule).
#[derive(Debug, Clone)]
pub struct Fde {
    pub start: u64,
    pub end: u64,
    pub rows: Vec<(u64, Rule)>,
}

fn cfa_off(off: i64) -> Option<(u8, u16)> {
    if (0..=u16::MAX as i64).contains(&off) {
        Some((0, off as u16))
    } else if off > 0 && off % 8 == 0 && off / 8 <= u16::MAX as i64 {
        Some((cfa::SCALED, (off / 8) as u16))
    } else {
        None
    }
}

/// The compact rule of one gimli row, or None if it cannot be followed.
fn rule_of<R: gimli::Reader>(
    row: &gimli::UnwindTableRow<R::Offset>,
    section: &impl UnwindSection<R>,
    ra_register: gimli::Register,
) -> Option<Rule> {
    // A register without a rule has the ABI's default: for RBP on x86_64 "same value";
    // compilers always give the return address one.
    match row.register(ra_register) {
        Some(RegisterRule::Undefined) => {
            return Some(Rule {
                cfa: cfa::STOP,
                ..Rule::INVALID
            });
        }
        Some(RegisterRule::Offset(-8)) => {}
        _ => return None,
    }
    let (kind, off) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let kind = match *register {
                X86_64::RSP => cfa::RSP,
                X86_64::RBP => cfa::RBP,
                _ => return None,
            };
            let (scaled, off) = cfa_off(*offset)?;
            (kind | scaled, off)
        }
        CfaRule::Expression(e) => {
            let expr = e.get(section).ok()?;
            let bytes = expr.0.to_slice().ok()?;
            (cfa::PLT, plt_threshold(&bytes)?)
        }
    };
    let (rbp_kind, rbp_off) = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue) => (rbp::SAME, 0),
        Some(RegisterRule::Offset(o)) if (i16::MIN as i64..=i16::MAX as i64).contains(&o) => {
            (rbp::SAVED, o as i16)
        }
        _ => (rbp::LOST, 0),
    };
    Some(Rule {
        cfa: kind,
        cfa_off: off,
        rbp: rbp_kind,
        rbp_off,
    })
}

/// Reads every FDE of `section` into `out`.
fn read_fdes<R: gimli::Reader, S: UnwindSection<R>>(
    section: &S,
    bases: &BaseAddresses,
    text: &dyn Fn(u64, usize) -> Option<Vec<u8>>,
    stats: &mut TableStats,
    out: &mut Vec<Fde>,
    max_rows: u64,
) -> Result<(), TableError>
where
    S::Offset: std::hash::Hash,
{
    let mut held: u64 = 0;
    let mut ctx = Box::new(UnwindContext::new());
    let mut cies = std::collections::HashMap::new();
    let mut entries = section.entries(bases);
    loop {
        let entry = match entries.next() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            // A damaged section: keep what was read.
            Err(e) if !out.is_empty() => {
                tracing::debug!(error = %e, "frame section ends in an unreadable entry");
                break;
            }
            Err(e) => return Err(TableError::Frames(e.to_string())),
        };
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let fde = match partial.parse(|s, b, off| {
            if let Some(c) = cies.get(&off) {
                return Ok(Clone::clone(c));
            }
            let c = s.cie_from_offset(b, off)?;
            cies.insert(off, c.clone());
            Ok(c)
        }) {
            Ok(f) => f,
            Err(_) => {
                stats.bad_fdes += 1;
                continue;
            }
        };
        let (start, end) = (fde.initial_address(), fde.end_address());
        if end <= start {
            continue;
        }
        stats.fdes += 1;
        let signal = fde.is_signal_trampoline()
            || (end - start == RESTORE_RT.len() as u64
                && text(start, RESTORE_RT.len()).as_deref() == Some(&RESTORE_RT[..]));
        if signal {
            stats.signal_fdes += 1;
            // One byte early: a return into the trampoline is looked up at pc - 1.
            let rule = Rule {
                cfa: cfa::SIGNAL,
                ..Rule::INVALID
            };
            out.push(Fde {
                start: start.saturating_sub(1),
                end,
                rows: vec![(start.saturating_sub(1), rule)],
            });
            continue;
        }
        let ra = fde.cie().return_address_register();
        let mut rows = Vec::new();
        let table = fde.rows(section, bases, &mut ctx);
        let Ok(mut table) = table else {
            stats.bad_fdes += 1;
            continue;
        };
        let mut bad = false;
        loop {
            match table.next_row() {
                Ok(Some(row)) => {
                    let rule = rule_of(row, section, ra).unwrap_or_else(|| {
                        stats.unsupported += 1;
                        Rule::INVALID
                    });
                    if rule.cfa & cfa::KIND_MASK == cfa::PLT {
                        stats.plt_rows += 1;
                    }
                    rows.push((row.start_address(), rule));
                    held += 1;
                    if held > max_rows {
                        return Err(TableError::TooLarge {
                            what: format!("the frame section's rows (over {max_rows})"),
                            limit: max_rows,
                        });
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    bad = true;
                    break;
                }
            }
        }
        if bad {
            stats.bad_fdes += 1;
            rows.clear();
            rows.push((start, Rule::INVALID));
        }
        out.push(Fde { start, end, rows });
    }
    Ok(())
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

/// Every FDE of an ELF file's bytes, with its rows as compact rules (before merging).
pub fn fdes<'d, R: object::ReadRef<'d>>(data: R) -> Result<(Vec<Fde>, TableStats), TableError> {
    fdes_within(data, Bounds::NONE)
}

fn fdes_within<'d, R: object::ReadRef<'d>>(
    data: R,
    bounds: Bounds,
) -> Result<(Vec<Fde>, TableStats), TableError> {
    let file = object::File::parse(data).map_err(|e| TableError::Elf(e.to_string()))?;
    // Checked before a section is read: its data is read whole.
    let sized = |size: u64| -> Result<(), TableError> {
        if size > bounds.section_bytes {
            return Err(TableError::TooLarge {
                what: format!("a {size}-byte frame section"),
                limit: bounds.section_bytes,
            });
        }
        Ok(())
    };
    let mut stats = TableStats::default();
    let mut fdes = Vec::new();
    // Only the bytes asked for: through a `ReadCache`, a segment's `data_range` reads and
    // keeps the whole segment (12 MB for a large binary's text).
    let text_bytes = |addr: u64, len: usize| -> Option<Vec<u8>> {
        file.segments().find_map(|seg| {
            let (a, (off, size)) = (seg.address(), seg.file_range());
            let at = addr.checked_sub(a)?;
            (at.checked_add(len as u64)? <= size)
                .then(|| data.read_bytes_at(off.checked_add(at)?, len as u64).ok())
                .flatten()
                .map(<[u8]>::to_vec)
        })
    };
    let text_addr = file.section_by_name(".text").map_or(0, |s| s.address());
    if let Some(eh) = file.section_by_name(".eh_frame") {
        sized(eh.size())?;
        let data = eh.data().map_err(|e| TableError::Frames(e.to_string()))?;
        let mut bases = BaseAddresses::default()
            .set_eh_frame(eh.address())
            .set_text(text_addr);
        if let Some(hdr) = file.section_by_name(".eh_frame_hdr") {
            bases = bases.set_eh_frame_hdr(hdr.address());
        }
        if let Some(got) = file.section_by_name(".got") {
            bases = bases.set_got(got.address());
        }
        let section = EhFrame::new(data, LittleEndian);
        read_fdes(
            &section,
            &bases,
            &text_bytes,
            &mut stats,
            &mut fdes,
            bounds.rows,
        )?;
    }
    if fdes.is_empty()
        && let Some(df) = file.section_by_name(".debug_frame")
    {
        sized(df.size())?;
        let data = df.data().map_err(|e| TableError::Frames(e.to_string()))?;
        let mut section = DebugFrame::new(data, LittleEndian);
        section.set_address_size(8);
        read_fdes(
            &section,
            &BaseAddresses::default(),
            &text_bytes,
            &mut stats,
            &mut fdes,
            bounds.rows,
        )?;
    }
    if fdes.is_empty() {
        return Err(TableError::NoFrames);
    }
    Ok((fdes, stats))
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
