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
}

/// `sizeof(struct pt_regs)` on x86_64.
const PT_REGS_SIZE: u64 = 168;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "cannot read the kernel's BTF at /sys/kernel/btf/vmlinux: {0} (kernels need CONFIG_DEBUG_INFO_BTF; without it, samples taken in the kernel get no user stack in the native unwinding modes)"
    )]
    Btf(String),
}

struct Bytes(Vec<u8>);

impl btfparse::Readable for Bytes {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = offset as usize;
        match self.0.get(start..start + buffer.len()) {
            Some(src) => {
                buffer.copy_from_slice(src);
                Ok(())
            }
            None => Err(btfparse::Error::new(
                btfparse::ErrorKind::IOError,
                "read past the end of the BTF data",
            )),
        }
    }
}

/// `task_struct.stack`'s offset from `btf`, the kernel's BTF.
pub fn task_stack_offset(btf: &[u8]) -> Result<u64, KernelError> {
    let info = btfparse::TypeInformation::new(&Bytes(btf.to_vec()))
        .map_err(|e| KernelError::Btf(format!("{e:?}")))?;
    let id = info
        .id_of("task_struct")
        .ok_or_else(|| KernelError::Btf("no struct task_struct".into()))?;
    match info.offset_of(id, "stack") {
        Ok((_, btfparse::Offset::ByteOffset(o))) => Ok(o as u64),
        Ok((_, other)) => Err(KernelError::Btf(format!(
            "task_struct.stack is a bit field ({other:?})"
        ))),
        Err(e) => Err(KernelError::Btf(format!("task_struct.stack: {e:?}"))),
    }
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
    let btf =
        std::fs::read("/sys/kernel/btf/vmlinux").map_err(|e| KernelError::Btf(e.to_string()))?;
    Ok(TaskOffsets {
        task_stack: task_stack_offset(&btf)?,
        pt_regs: pt_regs_offset(kernel_config().as_deref()),
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
        assert_eq!(pt_regs_offset(None), 0x3f58);
        assert_eq!(pt_regs_offset(Some("CONFIG_X86_FRED=y\n")), 0x3f48);
        assert_eq!(pt_regs_offset(Some("# CONFIG_KASAN is not set\n")), 0x3f58);
    }
}
