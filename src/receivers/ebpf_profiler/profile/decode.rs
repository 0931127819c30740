//! Decoding the ring buffer's sample records.

use super::super::bpf::pod;
use super::super::shared::{
    COMM_LEN, FRAME_BY_FP, MAX_KERNEL_FRAMES, MAX_USER_FRAMES, RecordHeader,
};

/// A sample decoded from the ring buffer. The reader keeps one and decodes every
/// record into it, so its buffers are reused rather than allocated per sample.
#[derive(Debug, Clone, Default)]
pub struct DecodedSample {
    pub tgid: u32,
    pub tid: u32,
    pub cpu: u32,
    pub ktime_ns: u64,
    pub comm: String,
    /// The raw `comm` bytes, NUL-padded (a cheap key for the thread).
    pub comm_raw: [u8; COMM_LEN],
    /// User frames, leaf first (return addresses after the first).
    pub user: Vec<u64>,
    /// Bit i set: user frame i was reached by frame pointer (its code had no table).
    pub user_by_fp: u128,
    pub user_error: Option<i64>,
    pub kernel: Vec<u64>,
    pub kernel_error: Option<i64>,
    /// Why the native walk ended (`unwind::stop`; 0 in frame-pointer mode).
    pub stop: u8,
    /// User space still has selection rules to decide this process by.
    pub select_pending: bool,
    /// The process image's tag (`shared::image_tag`; 0: unknown).
    pub image_tag: u32,
}

const HEADER: usize = std::mem::size_of::<RecordHeader>();

impl DecodedSample {
    /// Decodes one ring-buffer record (a header, then its frames) into `self`, reusing
    /// its buffers; false (and `self` left unspecified) if the record is cut short.
    pub fn decode_from(&mut self, bytes: &[u8]) -> bool {
        let Some(h) = pod::read::<RecordHeader>(bytes) else {
            return false;
        };
        let (k, u) = (h.kernel_len as usize, h.user_len as usize);
        if k > MAX_KERNEL_FRAMES || u > MAX_USER_FRAMES {
            return false;
        }
        let Some(frames) = bytes.get(HEADER..HEADER + (k + u) * 8) else {
            return false;
        };
        let mut words = frames
            .chunks_exact(8)
            .map(|w| u64::from_ne_bytes(w.try_into().unwrap_or_default()));
        self.kernel.clear();
        self.kernel
            .extend(words.by_ref().take(k).filter(|&a| a != 0));
        self.user.clear();
        self.user_by_fp = 0;
        for a in words {
            if a & FRAME_BY_FP != 0 && self.user.len() < 128 {
                self.user_by_fp |= 1 << self.user.len();
            }
            let a = a & !FRAME_BY_FP;
            if a != 0 {
                self.user.push(a);
            }
        }
        let comm_end = h.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        if self.comm_raw != h.comm {
            self.comm_raw = h.comm;
            self.comm.clear();
            self.comm
                .push_str(&String::from_utf8_lossy(&h.comm[..comm_end]));
        }
        self.tgid = h.tgid;
        self.tid = h.tid;
        self.cpu = h.cpu;
        self.ktime_ns = h.ktime_ns;
        self.user_error = (h.user_error < 0).then_some(h.user_error as i64);
        self.kernel_error = (h.kernel_error < 0).then_some(h.kernel_error as i64);
        self.stop = h.stop;
        self.select_pending = h.select_pending != 0;
        self.image_tag = h.image_tag;
        true
    }
}
