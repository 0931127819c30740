//! Reading `.eh_frame` (and `.debug_frame`) with gimli: each FDE's rows as compact rules, within the bounds a table may take.

use super::*;

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

    pub(super) fn row(self, pc_low: u16) -> Row {
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

/// The x86_64 lazy-PLT CFA expression: `rsp + 8 + ((rip & 15) >= N) << 3`, with N in byte 6.
pub(super) fn plt_threshold(expr: &[u8]) -> Option<u16> {
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
pub(super) const RESTORE_RT: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

/// An FDE's rows, as (start address, rule).
#[derive(Debug, Clone)]
pub struct Fde {
    pub start: u64,
    pub end: u64,
    pub rows: Vec<(u64, Rule)>,
}

pub(super) fn cfa_off(off: i64) -> Option<(u8, u16)> {
    if (0..=u16::MAX as i64).contains(&off) {
        Some((0, off as u16))
    } else if off > 0 && off % 8 == 0 && off / 8 <= u16::MAX as i64 {
        Some((cfa::SCALED, (off / 8) as u16))
    } else {
        None
    }
}

/// The compact rule of one gimli row, or None if it cannot be followed.
pub(super) fn rule_of<R: gimli::Reader>(
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
pub(super) fn read_fdes<R: gimli::Reader, S: UnwindSection<R>>(
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
            Err(e) => return Err(TableError::Frames(e)),
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

/// Every FDE of an ELF file's bytes, with its rows as compact rules (before merging).
pub fn fdes<'d, R: object::ReadRef<'d>>(data: R) -> Result<(Vec<Fde>, TableStats), TableError> {
    fdes_within(data, Bounds::NONE)
}

pub(super) fn fdes_within<'d, R: object::ReadRef<'d>>(
    data: R,
    bounds: Bounds,
) -> Result<(Vec<Fde>, TableStats), TableError> {
    let file = object::File::parse(data).map_err(TableError::Elf)?;
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
        let data = eh.data().map_err(TableError::Elf)?;
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
        let data = df.data().map_err(TableError::Elf)?;
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
