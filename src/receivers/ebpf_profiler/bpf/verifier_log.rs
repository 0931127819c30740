//! Loading a program so the verifier log can never be the reason it fails.
//!
//! The kernel answers `ENOSPC` when the log does not fit the caller's buffer — before
//! Linux 6.4 even for a valid program; since 6.4 the log rotates but a truncated log
//! still gives `ENOSPC`, with the size it needed in `log_true_size`. Here the buffer
//! starts at `size`, grows straight to `log_true_size` when the kernel reports it and
//! doubles otherwise, up to `max_size`; past that the program is loaded with logging
//! off and the truncated log is kept with how many bytes it needed. With a level set,
//! the log is kept for programs that load too, and its closing statistics are parsed.

use std::os::fd::OwnedFd;

use super::sys::{ProgLoad, errno_name, prog_load};

/// The kernel's upper bound on `log_size` (`UINT_MAX >> 2`).
pub const KERNEL_MAX_LOG_SIZE: u32 = u32::MAX >> 2;
/// The kernel's lower bound on `log_size` when a level is set.
pub const KERNEL_MIN_LOG_SIZE: u32 = 128;
/// Bytes added to the size a 6.4+ kernel reports it needs (see [`next_step`]).
pub(crate) const LOG_SLACK: u32 = 4096;
/// `BPF_LOG_STATS`.
const LOG_STATS: u32 = 4;

/// How to ask for the verifier log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings {
    /// 0 = off, 1 = branches (`BPF_LOG_LEVEL1`), 2 = every instruction (`BPF_LOG_LEVEL2`).
    pub level: u32,
    /// Add the verifier's statistics (`BPF_LOG_STATS`).
    pub stats: bool,
    /// First buffer size, in bytes.
    pub size: u32,
    /// Largest buffer tried, in bytes.
    pub max_size: u32,
}

/// The log of one load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifierLog {
    pub text: String,
    /// The log was cut short because it needed more than `max_size`.
    pub truncated: bool,
    /// Bytes the full log needs, where the kernel said (6.4+).
    pub needed_bytes: Option<u32>,
    /// Size of the buffer the final text came from.
    pub buffer_bytes: u32,
    /// `BPF_PROG_LOAD` calls made.
    pub attempts: u32,
}

/// The verifier's closing statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifierStats {
    pub insns_processed: u64,
    pub total_states: u64,
    pub peak_states: u64,
    pub verification_time_usec: Option<u64>,
}

impl VerifierLog {
    /// The last `n` non-empty lines, where the verifier says why it stopped.
    pub fn last_lines(&self, n: usize) -> String {
        let lines: Vec<&str> = self.text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Parses `processed N insns … total_states N peak_states N` and `verification time N usec`.
    pub fn stats(&self) -> Option<VerifierStats> {
        let mut s = VerifierStats::default();
        let mut found = false;
        for line in self.text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let after = |key: &str| {
                words
                    .iter()
                    .position(|w| *w == key)
                    .and_then(|i| words.get(i + 1))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            if line.starts_with("processed ") && line.contains(" insns") {
                s.insns_processed = after("processed").unwrap_or(0);
                s.total_states = after("total_states").unwrap_or(0);
                s.peak_states = after("peak_states").unwrap_or(0);
                found = true;
            } else if line.starts_with("verification time ") {
                s.verification_time_usec = after("time");
                found = true;
            }
        }
        found.then_some(s)
    }
}

/// A program the kernel refused.
#[derive(Debug)]
pub struct LoadFailure {
    pub errno: i32,
    pub log: VerifierLog,
}

impl LoadFailure {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self.errno {
            libc::EACCES => "verifier_rejected",
            libc::EPERM => "permission_denied",
            libc::E2BIG => "too_large",
            libc::EINVAL => "invalid",
            libc::ENOSPC => "no_space",
            libc::ENOMEM => "out_of_memory",
            _ => "other",
        }
    }

    /// What to do about it.
    pub fn hint(&self) -> String {
        match self.errno {
            libc::EPERM => "run as root, or grant CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN on kernels before 5.8); on kernels before 5.11 RLIMIT_MEMLOCK must also allow the program".into(),
            libc::EACCES => "the verifier rejected the program: its last lines above say which instruction and why".into(),
            libc::E2BIG => "the program is too large or too complex for this kernel's verifier limits".into(),
            libc::EINVAL => "this kernel does not accept the program or one of its attributes (program type, helper, or instruction not supported by this kernel version)".into(),
            libc::ENOSPC => format!(
                "not the verifier log, which is sized automatically ({} of {} bytes used): a kernel resource is full, e.g. a map at max_entries",
                self.log.text.len(),
                self.log.buffer_bytes
            ),
            libc::ENOMEM => "the kernel could not allocate memory for the program (or RLIMIT_MEMLOCK is too low on kernels before 5.11)".into(),
            _ => "see the verifier log".into(),
        }
    }

    /// One message: errno and meaning, the verifier's last lines, and the hint.
    pub fn describe(&self, program: &str) -> String {
        let mut m = format!(
            "loading eBPF program `{program}` failed: {}",
            errno_name(self.errno)
        );
        let tail = self.log.last_lines(8);
        if !tail.is_empty() {
            m.push_str("; verifier log ends with:\n");
            m.push_str(&tail);
            m.push('\n');
        } else {
            m.push_str("; ");
        }
        m.push_str("hint: ");
        m.push_str(&self.hint());
        m
    }
}

/// A loaded program and its log (empty when logging is off).
#[derive(Debug)]
pub struct Loaded {
    pub fd: OwnedFd,
    pub log: VerifierLog,
}

fn text_of(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Loads `prog` as `settings` ask. With logging off and a rejected program, it loads
/// once more at level 1 so the failure still carries the verifier's reason.
pub fn load(prog: &ProgLoad<'_>, settings: &LogSettings) -> Result<Loaded, LoadFailure> {
    let flags = settings.level.min(2) | if settings.stats { LOG_STATS } else { 0 };
    if flags == 0 {
        let (r, _) = prog_load(prog, None);
        return match r {
            Ok(fd) => Ok(Loaded {
                fd,
                log: VerifierLog {
                    attempts: 1,
                    ..Default::default()
                },
            }),
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(0);
                let diag = load_logged(prog, 1, settings);
                let mut log = match diag {
                    Ok(l) => l.log, // loaded the second time: a transient failure
                    Err(f) => f.log,
                };
                log.attempts += 1;
                Err(LoadFailure { errno, log })
            }
        };
    }
    load_logged(prog, flags, settings)
}

/// What to do after `ENOSPC` with a `size`-byte buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The log had room: ENOSPC means something else.
    NotTheLog,
    /// Try again with this many bytes.
    Grow(u32),
    /// The log needs more than `max`: load without it.
    GiveUp,
}

/// Kernels since 6.4 report the size the log needed (`true_size`); older ones fill the
/// buffer to its last byte, and then doubling is the only way to find the size.
pub(crate) fn next_step(size: u32, true_size: u32, text_len: usize, max: u32) -> Step {
    let full = if true_size > 0 {
        true_size > size
    } else {
        text_len + 1 >= size as usize
    };
    if !full {
        return Step::NotTheLog;
    }
    if size >= max {
        return Step::GiveUp;
    }
    let want = if true_size > size {
        // The retry's log is not byte-identical: its `verification time N usec`
        // line can gain a digit on a busy machine, and a retry at exactly the
        // reported size would then come back ENOSPC once more.
        true_size.saturating_add(LOG_SLACK)
    } else {
        size.saturating_mul(2)
    };
    // Past max, one last try at max keeps as much of the log as allowed.
    Step::Grow(want.min(max))
}

fn load_logged(prog: &ProgLoad<'_>, flags: u32, s: &LogSettings) -> Result<Loaded, LoadFailure> {
    let max = s.max_size.clamp(KERNEL_MIN_LOG_SIZE, KERNEL_MAX_LOG_SIZE);
    let mut size = s.size.clamp(KERNEL_MIN_LOG_SIZE, max);
    let mut attempts = 0;
    loop {
        let mut buf = vec![0u8; size as usize];
        let (r, true_size) = prog_load(prog, Some((&mut buf, flags)));
        attempts += 1;
        let text = text_of(&buf);
        let log = |truncated, needed| VerifierLog {
            text: text.clone(),
            truncated,
            needed_bytes: needed,
            buffer_bytes: size,
            attempts,
        };
        let err = match r {
            Ok(fd) => {
                return Ok(Loaded {
                    fd,
                    log: log(false, (true_size > 0).then_some(true_size)),
                });
            }
            Err(e) => e.raw_os_error().unwrap_or(0),
        };
        let step = if err == libc::ENOSPC {
            next_step(size, true_size, text.len(), max)
        } else {
            Step::NotTheLog
        };
        match step {
            Step::NotTheLog => {
                return Err(LoadFailure {
                    errno: err,
                    log: log(false, (true_size > 0).then_some(true_size)),
                });
            }
            Step::Grow(next) => {
                size = next;
                continue;
            }
            Step::GiveUp => {}
        }
        // The full log would pass max_size: keep what we have and load without a log.
        let needed = (true_size > size).then_some(true_size);
        let (r, _) = prog_load(prog, None);
        attempts += 1;
        let kept = VerifierLog {
            text,
            truncated: true,
            needed_bytes: needed,
            buffer_bytes: size,
            attempts,
        };
        return match r {
            Ok(fd) => Ok(Loaded { fd, log: kept }),
            Err(e) => Err(LoadFailure {
                errno: e.raw_os_error().unwrap_or(0),
                log: kept,
            }),
        };
    }
}

#[cfg(test)]
mod tests;
