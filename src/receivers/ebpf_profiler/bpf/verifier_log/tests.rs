//! Against the running kernel: loads real programs. Skipped, loudly, only where BPF
//! is unavailable (not root).

use aya_obj::generated::{bpf_insn, bpf_prog_type};

use super::*;

const MOV64_IMM: u8 = 0xb7;
const ADD64_IMM: u8 = 0x07;
const EXIT: u8 = 0x95;

fn insn(code: u8, dst: u8, imm: i32) -> bpf_insn {
    bpf_insn {
        code,
        _bitfield_align_1: [],
        _bitfield_1: bpf_insn::new_bitfield_1(dst, 0),
        off: 0,
        imm,
    }
}

/// A valid 2,002-instruction program: r0 = 0, then 2,000 times r0 += 1, exit.
fn valid_program() -> Vec<bpf_insn> {
    let mut v = vec![insn(MOV64_IMM, 0, 0)];
    v.extend((0..2000).map(|_| insn(ADD64_IMM, 0, 1)));
    v.push(insn(EXIT, 0, 0));
    v
}

/// Exits without setting r0: the verifier rejects it with "R0 !read_ok".
fn invalid_program() -> Vec<bpf_insn> {
    vec![insn(EXIT, 0, 0)]
}

fn bpf_available() -> bool {
    crate::testing::root_or_skip(
        "verifier_log",
        "loading BPF programs needs root (or CAP_BPF)",
    )
}

fn load_with(
    insns: &[bpf_insn],
    level: u32,
    stats: bool,
    size: u32,
    max: u32,
) -> Result<Loaded, LoadFailure> {
    let license = c"GPL";
    load(
        &ProgLoad {
            prog_type: bpf_prog_type::BPF_PROG_TYPE_SOCKET_FILTER as u32,
            name: "vlog_test",
            insns,
            license,
            kern_version: 0,
        },
        &LogSettings {
            level,
            stats,
            size,
            max_size: max,
        },
    )
}

#[test]
#[cfg_attr(missing = "root", ignore = "needs root")]
fn level_2_with_a_1_kib_buffer_loads_and_keeps_the_whole_log() {
    if !bpf_available() {
        return;
    }
    let l =
        load_with(&valid_program(), 2, false, 1024, 512 << 20).expect("a valid program must load");
    assert!(!l.log.truncated);
    assert!(
        l.log.text.contains("processed 2002 insns"),
        "{}",
        l.log.last_lines(3)
    );
    // 6.4+: one ENOSPC, then straight to the size the kernel reported (plus
    // LOG_SLACK, for a retry whose timing line is a digit longer).
    let needed = l.log.needed_bytes.expect("log_true_size on this kernel");
    assert!(needed > 1024);
    assert_eq!(l.log.attempts, 2);
    assert!(
        l.log.buffer_bytes >= needed && l.log.buffer_bytes <= needed + LOG_SLACK + 16,
        "buffer {} for a log of {needed}",
        l.log.buffer_bytes
    );
    assert_eq!(l.log.text.len() + 1, needed as usize);
    let s = l.log.stats().unwrap();
    assert_eq!(s.insns_processed, 2002);
    eprintln!("level 2 log of the 2,002-insn program: {needed} bytes");
}

#[test]
#[cfg_attr(missing = "root", ignore = "needs root")]
fn past_max_size_it_loads_without_a_log_and_keeps_the_truncated_one() {
    if !bpf_available() {
        return;
    }
    let l = load_with(&valid_program(), 2, false, 1024, 8192).expect("a valid program must load");
    assert!(l.log.truncated);
    assert_eq!(l.log.buffer_bytes, 8192);
    assert!(l.log.needed_bytes.unwrap() > 8192);
    assert!(l.log.text.len() > 4096 && l.log.text.len() < 8192);
    // 1 KiB, then max_size, then without a log.
    assert_eq!(l.log.attempts, 3);
}

#[test]
#[cfg_attr(missing = "root", ignore = "needs root")]
fn logging_off_loads_once_and_stats_alone_give_statistics() {
    if !bpf_available() {
        return;
    }
    let l = load_with(&valid_program(), 0, false, 1024, 1 << 20).unwrap();
    assert_eq!((l.log.attempts, l.log.text.as_str()), (1, ""));
    let l = load_with(&valid_program(), 0, true, 1024, 1 << 20).unwrap();
    let s = l.log.stats().expect("BPF_LOG_STATS output");
    assert_eq!(s.insns_processed, 2002);
    assert!(s.verification_time_usec.is_some(), "{}", l.log.text);
}

#[test]
#[cfg_attr(missing = "root", ignore = "needs root")]
fn a_rejected_program_carries_errno_verifier_lines_and_a_hint() {
    if !bpf_available() {
        return;
    }
    for level in [0, 1, 2] {
        let f = load_with(&invalid_program(), level, false, 1024, 1 << 20).unwrap_err();
        assert_eq!(f.errno, libc::EACCES, "level {level}");
        assert_eq!(f.reason(), "verifier_rejected");
        assert!(
            f.log.text.contains("R0 !read_ok"),
            "level {level}: {}",
            f.log.text
        );
        let msg = f.describe("vlog_test");
        assert!(
            msg.starts_with("loading eBPF program `vlog_test` failed: EACCES (Permission denied)"),
            "{msg}"
        );
        assert!(
            msg.contains("R0 !read_ok") && msg.contains("hint: the verifier rejected"),
            "{msg}"
        );
    }
}

#[test]
fn size_decisions_for_both_kernel_generations() {
    let max = 1 << 20;
    // 6.4+: the kernel says what it needs.
    assert_eq!(
        next_step(1024, 162_172, 1023, max),
        Step::Grow(162_172 + LOG_SLACK)
    );
    assert_eq!(next_step(1024, max - 10, 1023, max), Step::Grow(max));
    assert_eq!(next_step(1024, 4_000_000, 1023, max), Step::Grow(max));
    assert_eq!(
        next_step(max, 4_000_000, max as usize - 1, max),
        Step::GiveUp
    );
    assert_eq!(next_step(1024, 900, 899, max), Step::NotTheLog);
    // Before 6.4: no true size; a full buffer means the log did not fit, so double.
    assert_eq!(next_step(1024, 0, 1023, max), Step::Grow(2048));
    assert_eq!(next_step(1024, 0, 500, max), Step::NotTheLog);
    assert_eq!(
        next_step(max / 2 + 1, 0, max as usize / 2, max),
        Step::Grow(max)
    );
}

#[test]
fn stats_parse_from_the_verifier_summary() {
    let log = VerifierLog {
        text: "0: (b7) r0 = 0\nverification time 3330 usec\nstack depth 40+0\nprocessed 784 insns (limit 1000000) max_states_per_insn 2 total_states 33 peak_states 31 mark_read 0\n".into(),
        ..Default::default()
    };
    assert_eq!(
        log.stats(),
        Some(VerifierStats {
            insns_processed: 784,
            total_states: 33,
            peak_states: 31,
            verification_time_usec: Some(3330)
        })
    );
    assert_eq!(
        log.last_lines(1),
        "processed 784 insns (limit 1000000) max_states_per_insn 2 total_states 33 peak_states 31 mark_read 0"
    );
    assert_eq!(VerifierLog::default().stats(), None);
}
