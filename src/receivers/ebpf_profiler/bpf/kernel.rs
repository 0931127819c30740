//! Facts about the running kernel the unwinder needs, found at start: where a task's
//! saved user registers are. The program reads them when a sample interrupted the
//! kernel (a system call, a page fault): `task->stack` plus a fixed offset. rustc emits
//! no CO-RE relocations, so the offsets are computed here, from the kernel's BTF and
//! configuration, and handed to the program as read-only globals.

use std::io::Read;

/// Where the user `pt_regs` of the current task are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskOffsets {
    /// Offset of `stack` in `struct task_struct`.
    pub task_stack: u64,
    /// Offset of the user `pt_regs` from the start of the task's stack.
    pub pt_regs: u64,
    /// Offsets of `mm` and `self_exec_id` in `struct task_struct` (0: unknown): the
    /// process image selection verdicts are tied to.
    pub task_mm: u64,
    pub task_exec_id: u64,
}

/// `sizeof(struct pt_regs)` on x86_64.
const PT_REGS_SIZE: u64 = 168;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "cannot read the kernel's BTF at /sys/kernel/btf/vmlinux (kernels need CONFIG_DEBUG_INFO_BTF; without it, samples taken in the kernel get no user stack in the native unwinding modes)"
    )]
    ReadBtf(#[source] std::io::Error),
    #[error(
        "the kernel's BTF at /sys/kernel/btf/vmlinux is unusable: {0}; samples taken in the kernel get no user stack in the native unwinding modes"
    )]
    Btf(String),
}

/// `task_struct.stack`'s offset from `btf`, the kernel's BTF.
pub fn task_stack_offset(btf: &[u8]) -> Result<u64, KernelError> {
    Ok(task_struct_offsets(btf, &["stack"])?[0])
}

/// The offsets of `members` of `struct task_struct`, from `btf`, the kernel's BTF.
///
/// One pass over the type section to the struct and its members, with every read
/// bounds-checked: a full BTF parse (as btfparse does) took 220 ms of the agent's start.
pub fn task_struct_offsets(btf: &[u8], members: &[&str]) -> Result<Vec<u64>, KernelError> {
    let bad = |what: &str| KernelError::Btf(what.to_string());
    let u16_at = |at: usize| -> Option<u16> {
        Some(u16::from_le_bytes(btf.get(at..at + 2)?.try_into().ok()?))
    };
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(btf.get(at..at + 4)?.try_into().ok()?))
    };
    // Header: magic, version, flags, hdr_len, type_off, type_len, str_off, str_len.
    if u16_at(0) != Some(0xeb9f) {
        return Err(bad("not little-endian BTF (bad magic)"));
    }
    let field = |i: usize| u32_at(4 + 4 * i).map(|v| v as usize);
    let (Some(hdr_len), Some(type_off), Some(type_len), Some(str_off), Some(str_len)) =
        (field(0), field(1), field(2), field(3), field(4))
    else {
        return Err(bad("BTF header cut short"));
    };
    let types = hdr_len.saturating_add(type_off);
    let types_end = types.saturating_add(type_len);
    let strings = hdr_len.saturating_add(str_off);
    let strings_end = strings.saturating_add(str_len).min(btf.len());
    let name = |off: u32| -> Option<&[u8]> {
        let at = strings.checked_add(off as usize)?;
        let rest = btf.get(at..strings_end)?;
        Some(&rest[..rest.iter().position(|&b| b == 0)?])
    };
    let mut at = types;
    while at + 12 <= types_end {
        let (Some(name_off), Some(info)) = (u32_at(at), u32_at(at + 4)) else {
            break;
        };
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let kind_flag = info >> 31 != 0;
        // Bytes that follow the 12-byte common part, by kind (include/uapi/linux/btf.h).
        let extra = match kind {
            1 | 14 | 17 => 4,     // INT, VAR, DECL_TAG
            3 => 12,              // ARRAY
            4 | 5 => 12 * vlen,   // STRUCT, UNION: members
            6 | 13 => 8 * vlen,   // ENUM, FUNC_PROTO
            15 | 19 => 12 * vlen, // DATASEC, ENUM64
            2 | 7..=12 | 16 | 18 => 0,
            _ => return Err(bad(&format!("unknown BTF kind {kind}"))),
        };
        if kind == 4 && name(name_off) == Some(b"task_struct") && vlen > 0 {
            let mut found: Vec<Option<u64>> = vec![None; members.len()];
            for m in 0..vlen {
                let mat = at + 12 + 12 * m;
                let (Some(mname), Some(offset)) = (u32_at(mat), u32_at(mat + 8)) else {
                    return Err(bad("task_struct's members cut short"));
                };
                let Some(i) = members
                    .iter()
                    .position(|w| name(mname) == Some(w.as_bytes()))
                else {
                    continue;
                };
                // With kind_flag, the low 24 bits are the bit offset.
                let bits = if kind_flag {
                    offset & 0xff_ffff
                } else {
                    offset
                };
                if bits % 8 != 0 {
                    return Err(bad(&format!("task_struct.{} is a bit field", members[i])));
                }
                found[i] = Some(bits as u64 / 8);
            }
            return found
                .iter()
                .zip(members)
                .map(|(f, m)| f.ok_or_else(|| bad(&format!("task_struct has no member `{m}`"))))
                .collect();
        }
        at += 12 + extra;
    }
    Err(bad("no struct task_struct"))
}

/// The kernel's build configuration, from /boot or /proc/config.gz, if either is there.
fn kernel_config() -> Option<String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    if let Ok(c) = std::fs::read_to_string(format!("/boot/config-{}", release.trim())) {
        return Some(c);
    }
    let gz = std::fs::read("/proc/config.gz").ok()?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// Offset of the user `pt_regs` from a task's stack base on x86_64: the top of the
/// stack (THREAD_SIZE: 16 KiB, 32 KiB with KASAN), less the padding FRED kernels keep
/// there (16 bytes), less the registers themselves.
pub fn pt_regs_offset(config: Option<&str>) -> u64 {
    let has = |opt: &str| config.is_some_and(|c| c.lines().any(|l| l.trim() == format!("{opt}=y")));
    let thread_size = if has("CONFIG_KASAN") {
        32 << 10
    } else {
        16 << 10
    };
    let padding = if has("CONFIG_X86_FRED") { 16 } else { 0 };
    thread_size - padding - PT_REGS_SIZE
}

/// The running kernel's offsets. The program checks what it reads there (user code
/// and stack segments), so an offset that is off shows as `read_fault` stops, not as
/// wrong stacks.
pub fn task_offsets() -> Result<TaskOffsets, KernelError> {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").map_err(KernelError::ReadBtf)?;
    let at = task_struct_offsets(&btf, &["stack", "mm", "self_exec_id"])?;
    Ok(TaskOffsets {
        task_stack: at[0],
        pt_regs: pt_regs_offset(kernel_config().as_deref()),
        task_mm: at[1],
        task_exec_id: at[2],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_kernels_task_stack_and_pt_regs_offsets() {
        let Ok(btf) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            crate::testing::skip("task offsets", "this kernel has no BTF");
            return;
        };
        let t = std::time::Instant::now();
        let off = task_stack_offset(&btf).unwrap();
        eprintln!(
            "task_struct.stack at {off} ({:?} to parse the BTF)",
            t.elapsed()
        );
        // `stack` sits right after thread_info and __state in every x86_64 layout.
        assert!((8..=64).contains(&off), "{off}");
        let all = task_struct_offsets(&btf, &["stack", "mm", "self_exec_id"]).unwrap();
        assert_eq!(all[0], off);
        assert!(all[1] > off && all[1] < 16384, "mm at {}", all[1]);
        assert!(all[2] > off && all[2] < 16384, "self_exec_id at {}", all[2]);
        // Cut short or garbled BTF is an error, never a panic or a wrong offset.
        for cut in [0, 3, 24, 100, 4096, btf.len() / 2] {
            let r = task_stack_offset(&btf[..cut.min(btf.len())]);
            assert!(r.is_err() || r.as_ref().ok() == Some(&off), "{cut}: {r:?}");
        }
        let mut garbled = btf.clone();
        for b in garbled.iter_mut().skip(24).step_by(7) {
            *b = b.wrapping_mul(31);
        }
        let _ = task_stack_offset(&garbled);
        assert_eq!(pt_regs_offset(None), 0x3f58);
        assert_eq!(pt_regs_offset(Some("CONFIG_X86_FRED=y\n")), 0x3f48);
        assert_eq!(pt_regs_offset(Some("# CONFIG_KASAN is not set\n")), 0x3f58);
    }
}
