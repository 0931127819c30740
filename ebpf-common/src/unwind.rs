//! Native unwinding without frame pointers: the compact rules derived from `.eh_frame`,
//! the row lookup and one unwind step. Shared, as is, by the eBPF program (which walks
//! live stacks) and by user space (which builds the rows, and walks core files in
//! tests): the logic that is tested is the logic that runs in the kernel.
//!
//! Rows: each executable's `.eh_frame` becomes, per 4 KiB page of its text, a sorted
//! list of 8-byte rows; a page's rows start with one at offset 0 holding the rule in
//! effect at the page start, so a lookup never needs a neighbouring page. Rows are
//! packed into chunks of [`CHUNK_ROWS`]; a page's rows never straddle two chunks.
//!
//! An executable's table is one array of chunks: first a page directory (a
//! [`DirHeader`], then one [`PageInfo`] per page of its text, in order), then the row
//! chunks. A lookup is two array accesses and a binary search, no hashing. x86_64 only.

/// Text is indexed in pages of `1 << PAGE_BITS` bytes.
pub const PAGE_BITS: u32 = 12;
pub const PAGE_SIZE: u64 = 1 << PAGE_BITS;
/// Rows per chunk (a power of two): one chunk is one BPF array element.
pub const CHUNK_ROWS: usize = 1024;
pub const CHUNK_MASK: u32 = CHUNK_ROWS as u32 - 1;
/// Binary-search steps that always suffice within a chunk.
pub const SEARCH_STEPS: u32 = 11;

/// One unwinding rule, in effect from `pc_low` (an offset in its page) to the next row.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Row {
    pub pc_low: u16,
    /// [`cfa`] kind, with [`cfa::SCALED`] when `cfa_off` counts 8-byte units.
    pub cfa: u8,
    /// [`rbp`] kind.
    pub rbp: u8,
    /// CFA offset from its register (or the PLT threshold).
    pub cfa_off: u16,
    /// Where RBP was saved, relative to the CFA (with [`rbp::SAVED`]).
    pub rbp_off: i16,
}

/// A chunk of rows.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Chunk {
    pub rows: [Row; CHUNK_ROWS],
}

/// Where a page's rows are: `count` rows from `first` in chunk `chunk`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageInfo {
    pub chunk: u32,
    pub first: u16,
    pub count: u16,
}

/// The first entries of a table's directory: which pages it covers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirHeader {
    /// Page number (ELF virtual address >> PAGE_BITS) of the first directory entry.
    pub first_page: u64,
    /// Directory entries (pages from `first_page`).
    pub pages: u32,
    /// Chunks the directory takes, before the row chunks.
    pub dir_chunks: u32,
}

/// Directory entries the header takes (16 bytes = 2 entries).
pub const DIR_HEADER: u64 = 2;

impl DirHeader {
    /// The header as the first [`DIR_HEADER`] directory entries it is stored in: the
    /// same bytes that [`lookup`] reads back as a header.
    pub fn as_entries(&self) -> [PageInfo; 2] {
        let entry = |b: [u8; 8]| PageInfo {
            chunk: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            first: u16::from_ne_bytes([b[4], b[5]]),
            count: u16::from_ne_bytes([b[6], b[7]]),
        };
        let (p, d) = (self.pages.to_ne_bytes(), self.dir_chunks.to_ne_bytes());
        [
            entry(self.first_page.to_ne_bytes()),
            entry([p[0], p[1], p[2], p[3], d[0], d[1], d[2], d[3]]),
        ]
    }
}

impl Row {
    /// A directory entry in a row's slot of a chunk: the same bytes, which [`entries`]
    /// reads back as the entry.
    pub fn from_entry(e: PageInfo) -> Row {
        let c = e.chunk.to_ne_bytes();
        Row {
            pc_low: u16::from_ne_bytes([c[0], c[1]]),
            cfa: c[2],
            rbp: c[3],
            cfa_off: e.first,
            rbp_off: e.count as i16,
        }
    }
}

/// A chunk seen as directory entries.
#[inline(always)]
pub fn entries(c: &Chunk) -> &[PageInfo; CHUNK_ROWS] {
    // SAFETY: Row and PageInfo are both 8-byte #[repr(C)] plain integers.
    unsafe { &*(c as *const Chunk as *const [PageInfo; CHUNK_ROWS]) }
}

/// The rule for `vaddr` (an ELF virtual address) in a table whose chunks `chunk`
/// returns: the directory's header and entry, then the page's rows. `Err` says why
/// there is none (`NO_TABLE` if the table is not loaded, `INVALID_RULE` for an address
/// no FDE covers).
#[inline(always)]
pub fn lookup<'a>(mut chunk: impl FnMut(u32) -> Option<&'a Chunk>, vaddr: u64) -> Result<Row, u8> {
    let dir0 = chunk(0).ok_or(stop::NO_TABLE)?;
    // SAFETY: the header is the chunk's first 16 bytes, plain integers.
    let hdr = unsafe { &*(dir0 as *const Chunk as *const DirHeader) };
    let idx = (vaddr >> PAGE_BITS).wrapping_sub(hdr.first_page);
    if idx >= hdr.pages as u64 {
        return Err(stop::INVALID_RULE);
    }
    // Opaque, so the compiler compares `e` itself and does not rewrite the test as
    // `idx < CHUNK_ROWS - 2` on another register: verifiers before 6.8 or so do not
    // carry that bound over to `e`, and refuse the indexing below.
    let e = core::hint::black_box(DIR_HEADER + idx);
    let info = if e < CHUNK_ROWS as u64 {
        entries(dir0)[(e as u32 & CHUNK_MASK) as usize]
    } else {
        let d = chunk((e / CHUNK_ROWS as u64) as u32).ok_or(stop::NO_TABLE)?;
        entries(d)[(e as u32 & CHUNK_MASK) as usize]
    };
    if info.count == 0 {
        return Err(stop::INVALID_RULE);
    }
    let rows = chunk(info.chunk).ok_or(stop::NO_TABLE)?;
    find_row(
        &rows.rows,
        info.first as u32,
        info.count as u32,
        (vaddr & (PAGE_SIZE - 1)) as u16,
    )
    .ok_or(stop::INVALID_RULE)
}

/// What the mapping index says about an address range of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingInfo {
    /// The executable's table id; 0 = no table (JIT or anonymous code): walk by frame pointer.
    pub exe_id: u64,
    /// Runtime address minus ELF virtual address.
    pub bias: u64,
    /// The mapping's range, so the next frames in it need no lookup.
    pub start: u64,
    pub end: u64,
}

/// CFA rules.
pub mod cfa {
    /// No rule here: a gap between functions, or a rule we do not follow.
    pub const INVALID: u8 = 0;
    /// CFA = RSP + off.
    pub const RSP: u8 = 1;
    /// CFA = RBP + off.
    pub const RBP: u8 = 2;
    /// A lazy PLT entry: CFA = RSP + 8, or RSP + 16 once `pc & 15 >= off` (the entry pushed).
    pub const PLT: u8 = 3;
    /// The return address is undefined: the outermost frame (`_start`, a thread's entry).
    pub const STOP: u8 = 4;
    /// A signal trampoline: the interrupted registers are in the signal frame.
    pub const SIGNAL: u8 = 5;
    /// Flag: `cfa_off` is in 8-byte units (large frames).
    pub const SCALED: u8 = 0x80;
    pub const KIND_MASK: u8 = 0x7f;
}

/// RBP rules.
pub mod rbp {
    /// Unchanged.
    pub const SAME: u8 = 0;
    /// Saved at CFA + rbp_off.
    pub const SAVED: u8 = 1;
    /// Unknown after this frame (a rule we do not follow).
    pub const LOST: u8 = 2;
}

/// Why a walk ended (also the index of its counter, after [`stop::FIRST_COUNTER`]).
pub mod stop {
    /// Still walking.
    pub const NONE: u8 = 0;
    /// Reached the outermost frame.
    pub const COMPLETE: u8 = 1;
    /// `max_frames` reached.
    pub const TRUNCATED: u8 = 2;
    /// An address in no known mapping of the process.
    pub const NO_MAPPING: u8 = 3;
    /// A mapping without (or not yet with) an unwind table, and no frame pointer to follow.
    pub const NO_TABLE: u8 = 4;
    /// A rule that cannot be followed (a gap, an unsupported expression, RBP unknown).
    pub const INVALID_RULE: u8 = 5;
    /// The stack could not be read there.
    pub const READ_FAULT: u8 = 6;
    pub const COUNT: u8 = 7;
    pub const NAMES: [&str; COUNT as usize] = [
        "none",
        "complete",
        "truncated",
        "no_mapping",
        "no_table",
        "invalid_rule",
        "read_fault",
    ];
}

/// The registers a walk carries from frame to frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub pc: u64,
    pub sp: u64,
    pub bp: u64,
    /// Non-zero: RBP holds the caller's value (zero after a rule we do not follow).
    pub bp_known: u32,
    /// Non-zero: `pc` is a return address: look up `pc - 1` (the call may be a
    /// function's last instruction).
    pub is_return: u32,
}

impl Regs {
    /// The address whose rule applies to this frame.
    #[inline(always)]
    pub fn lookup_pc(&self) -> u64 {
        self.pc.wrapping_sub(self.is_return as u64)
    }
}

/// Reads the stack being walked.
pub trait Memory {
    fn read(&mut self, addr: u64) -> Option<u64>;
    /// Two consecutive words at `addr`.
    fn read_pair(&mut self, addr: u64) -> Option<[u64; 2]>;
}

/// The last row at or before `pc_low` among `count` rows from `first` (the first row
/// of a page is at offset 0, so there always is one): a binary search of fixed length,
/// without data-dependent branches (the verifier walks one path through it, not one
/// per outcome) and with masked indices. Each step halves the candidates and moves the
/// base forward when the middle row starts at or before `pc_low`: about 12 instructions.
#[inline(always)]
pub fn find_row(rows: &[Row; CHUNK_ROWS], first: u32, count: u32, pc_low: u16) -> Option<Row> {
    if count == 0 {
        return None;
    }
    // Opaque to the compiler: with the target's range unknown, it cannot turn the sign
    // arithmetic below back into a comparison and a branch.
    let target = core::hint::black_box(pc_low as i64);
    let mut base = first as u64;
    let mut n = count as u64;
    let mut i = 0;
    while i < SEARCH_STEPS {
        let half = n >> 1;
        let v = rows[((base + half) as u32 & CHUNK_MASK) as usize].pc_low as i64;
        // All ones when v <= target, else zero.
        let take = !((target - v) >> 63) as u64;
        base += half & take;
        n -= half;
        i += 1;
    }
    let row = rows[(base as u32 & CHUNK_MASK) as usize];
    if row.pc_low > pc_low { None } else { Some(row) }
}

/// Offset of the interrupted registers (`uc.uc_mcontext`) from the stack pointer with
/// which a signal handler returned into the trampoline (after `ret` popped `pretcode`).
const SIGCONTEXT: u64 = 40;

/// One step by `row`: the caller's registers, or why the walk ends. On an error the
/// registers are as they were.
#[inline(always)]
pub fn step<M: Memory>(row: Row, regs: &mut Regs, mem: &mut M) -> Result<(), u8> {
    let off = if row.cfa & cfa::SCALED != 0 {
        (row.cfa_off as u64) << 3
    } else {
        row.cfa_off as u64
    };
    let cfa = match row.cfa & cfa::KIND_MASK {
        cfa::RSP => regs.sp.wrapping_add(off),
        cfa::RBP => {
            if regs.bp_known == 0 {
                return Err(stop::INVALID_RULE);
            }
            regs.bp.wrapping_add(off)
        }
        cfa::PLT => regs.sp + if (regs.pc & 15) >= off { 16 } else { 8 },
        cfa::STOP => return Err(stop::COMPLETE),
        cfa::SIGNAL => {
            let mc = regs.sp.wrapping_add(SIGCONTEXT);
            let bp = mem.read(mc + 80).ok_or(stop::READ_FAULT)?;
            let [sp, pc] = mem.read_pair(mc + 120).ok_or(stop::READ_FAULT)?;
            regs.pc = pc;
            regs.sp = sp;
            regs.bp = bp;
            regs.bp_known = 1;
            // The interrupted instruction, not a return address.
            regs.is_return = 0;
            return if pc == 0 { Err(stop::COMPLETE) } else { Ok(()) };
        }
        _ => return Err(stop::INVALID_RULE),
    };
    // The caller's frame is above this one: a CFA at or below SP is a wrong rule (and
    // this keeps every walk finite).
    if cfa <= regs.sp {
        return Err(stop::INVALID_RULE);
    }
    // The return address is at CFA-8; RBP is usually saved right below it, at CFA-16.
    let (ra, bp) = if row.rbp == rbp::SAVED && row.rbp_off == -16 {
        let [bp, ra] = mem.read_pair(cfa - 16).ok_or(stop::READ_FAULT)?;
        (ra, bp)
    } else {
        let ra = mem.read(cfa - 8).ok_or(stop::READ_FAULT)?;
        let bp = if row.rbp == rbp::SAVED {
            mem.read(cfa.wrapping_add(row.rbp_off as i64 as u64))
                .ok_or(stop::READ_FAULT)?
        } else {
            regs.bp
        };
        (ra, bp)
    };
    match row.rbp {
        rbp::SAVED => {
            regs.bp = bp;
            regs.bp_known = 1;
        }
        rbp::LOST => regs.bp_known = 0,
        _ => {}
    }
    regs.pc = ra;
    regs.sp = cfa;
    regs.is_return = 1;
    if ra == 0 {
        return Err(stop::COMPLETE);
    }
    Ok(())
}

/// One step by frame pointer, for code without a table: `[rbp]` is the caller's RBP,
/// `[rbp + 8]` the return address. `why` is the reason reported if it cannot be taken.
#[inline(always)]
pub fn fp_step<M: Memory>(regs: &mut Regs, mem: &mut M, why: u8) -> Result<(), u8> {
    let bp = regs.bp;
    // RBP 0 ends a frame-pointer chain (`_start` and thread entries clear it).
    if regs.bp_known != 0 && bp == 0 {
        return Err(stop::COMPLETE);
    }
    if regs.bp_known == 0 || bp < regs.sp || bp & 7 != 0 {
        return Err(why);
    }
    let [next_bp, ra] = mem.read_pair(bp).ok_or(why)?;
    regs.sp = bp + 16;
    regs.bp = next_bp;
    regs.pc = ra;
    regs.is_return = 1;
    if ra == 0 {
        return Err(stop::COMPLETE);
    }
    Ok(())
}
