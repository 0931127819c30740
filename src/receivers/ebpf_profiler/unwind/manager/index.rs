//! The mapping index: each process's executable ranges as LPM-trie prefixes pointing at their table, updated as the process model announces mappings and exits.

use super::*;

/// One range of a process in the mapping index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Range {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) exe_id: u64,
    pub(super) bias: u64,
}

/// Entries of the mapping index (an LPM trie of 2^20) one process may hold.
pub(super) const MAX_PREFIXES_PER_PROCESS: usize = 16 << 10;

/// The LPM prefixes covering `[start, end)`: (address, prefix bits of the address).
pub fn prefixes(start: u64, end: u64) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    let mut a = start;
    while a < end {
        let mut bits = if a == 0 {
            63
        } else {
            a.trailing_zeros().min(63)
        };
        while bits > 0 && a.checked_add(1u64 << bits).is_none_or(|e| e > end) {
            bits -= 1;
        }
        out.push((a, 64 - bits));
        match a.checked_add(1u64 << bits) {
            Some(n) => a = n,
            None => break,
        }
    }
    out
}

/// This process's vDSO image (the same in every process of this kernel).
pub(super) fn own_vdso() -> Option<Vec<u8>> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let m = crate::host::proc::parse_maps(&maps)
        .into_iter()
        .find(|m| m.path == "[vdso]")?;
    let mut data = vec![0u8; (m.end - m.start) as usize];
    let f = std::fs::File::open("/proc/self/mem").ok()?;
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut data, m.start).ok()?;
    Some(data)
}

impl Manager {
    /// Tells the program to forget the mappings its CPUs remember: one was removed or changed.
    pub(super) fn bump_generation(&mut self) {
        self.maps.settings.generation = self.maps.settings.generation.wrapping_add(1);
        if let Err(e) = self.maps.config.set(0, self.maps.settings, 0) {
            tracing::debug!(error = %e, "cannot update the program's settings");
        }
    }

    /// Inserts (or removes) a range's prefixes; an insert that fails part-way (the
    /// index is full) is undone and reported as false, so it is tried again later.
    pub(super) fn set_range(&mut self, pid: u32, r: &Range, insert: bool) -> bool {
        let all = prefixes(r.start, r.end);
        for (i, &(addr, bits)) in all.iter().enumerate() {
            // The pid's 32 bits, then the address's `bits`.
            let key = Key::new(
                MAPPING_KEY_BITS - 64 + bits,
                MappingKeyData {
                    pid_be: pid.to_be(),
                    addr_be: addr.to_be(),
                },
            );
            let res = if insert {
                let info = MappingInfo {
                    exe_id: r.exe_id,
                    bias: r.bias,
                    start: r.start,
                    end: r.end,
                };
                self.maps.mappings.insert(&key, info, 0)
            } else {
                self.maps.mappings.remove(&key)
            };
            if let Err(e) = res
                && insert
            {
                tracing::debug!(pid, error = %e, "cannot add a mapping to the unwind index");
                let done = all[..i].to_vec();
                for (addr, bits) in done {
                    let key = Key::new(
                        MAPPING_KEY_BITS - 64 + bits,
                        MappingKeyData {
                            pid_be: pid.to_be(),
                            addr_be: addr.to_be(),
                        },
                    );
                    let _ = self.maps.mappings.remove(&key);
                }
                return false;
            }
        }
        true
    }

    pub(super) fn process(&mut self, pid: u32, maps: &[MapEntry]) {
        let mut want = Vec::new();
        for m in maps.iter().filter(|m| m.executable) {
            let anon = m.path.is_empty() || (m.path.starts_with('[') && m.path != "[vdso]");
            let (exe_id, bias) = if anon || m.inode == 0 && m.path != "[vdso]" {
                // JIT or other anonymous code: frame pointers only, without asking again.
                (0, 0)
            } else {
                match self.file(pid, m) {
                    Some((f, source)) => {
                        let id = self.table_id(&f, source, || {
                            crate::host::open::open_mapped(pid, m.start, m.end, &m.path)
                                .ok()
                                .map(|f| Source::File(std::sync::Arc::new(f)))
                        });
                        let offset = if m.path == "[vdso]" { 0 } else { m.offset };
                        match bias(&f.segments, m.start, offset) {
                            Some(b) if id != 0 => (id, b),
                            _ => (0, 0),
                        }
                    }
                    None => (0, 0),
                }
            };
            want.push(Range {
                start: m.start,
                end: m.end,
                exe_id,
                bias,
            });
        }
        // Sets, not Vec::contains: a process may have tens of thousands of ranges, and
        // a quadratic diff kept this thread (and every other process's ranges) waiting
        // for seconds on each re-read of such a process.
        let old: HashSet<Range> = self
            .procs
            .remove(&pid)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let wanted: HashSet<Range> = want.iter().copied().collect();
        let mut removed = false;
        for r in old.iter().filter(|r| !wanted.contains(r)) {
            self.set_range(pid, r, false);
            removed = true;
        }
        if removed {
            self.bump_generation();
        }
        // One process may hold at most MAX_PREFIXES_PER_PROCESS entries of the index,
        // so that one with tens of thousands of executable mappings cannot fill it for
        // everyone. Ranges left out (past the cap, or refused by a full index) are not
        // remembered as in the index, so the next read of the process tries them again.
        let mut kept = Vec::with_capacity(want.len());
        let mut used = 0;
        for r in want {
            let n = prefixes(r.start, r.end).len();
            if used + n > MAX_PREFIXES_PER_PROCESS {
                self.meters.refused_cap.increment(1);
                continue;
            }
            if old.contains(&r) || self.set_range(pid, &r, true) {
                used += n;
                kept.push(r);
            } else {
                self.meters.refused_full.increment(1);
            }
        }
        self.procs.insert(pid, kept);
    }

    pub(super) fn gone(&mut self, pid: u32) {
        if let Some(ranges) = self.procs.remove(&pid) {
            for r in &ranges {
                self.set_range(pid, r, false);
            }
            self.bump_generation();
        }
    }

    pub(super) fn next_interval(&mut self, pids: &[u32]) {
        for pid in pids {
            if let Some(ranges) = self.procs.get(pid) {
                for r in ranges {
                    if let Some(l) = self.loaded.get_mut(&r.exe_id) {
                        l.last_used = self.interval;
                    }
                }
            }
        }
        self.interval += 1;
    }
}
