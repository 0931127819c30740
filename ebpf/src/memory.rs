//! Reading the sampled thread's memory: one read per stack window, which the walkers serve frames from.

use super::*;

/// Reads `len` bytes of the sampled process's memory at `addr` into `dst`.
#[inline(always)]
pub(super) fn read_user(dst: *mut c_void, len: u64, addr: u64) -> bool {
    // SAFETY: the helper writes at most `len` bytes into `dst` (callers pass room for
    // them), or fails without faulting.
    unsafe { bpf_probe_read_user(dst, len as u32, addr as *const c_void) == 0 }
}

/// The sampled thread's stack, read a window at a time: a walk reads upwards from the
/// interrupted stack pointer, and one read of [`WINDOW_BYTES`] serves the frames in it,
/// where each frame would otherwise pay a read of its own. The window is read at one
/// place only, at the start of each unwinder run ([`Window::fill`]): a read at every
/// access site multiplied the verifier's work. Reads outside it go to memory directly.
pub(super) struct Window<'a>(pub(super) &'a mut StackWindow);

impl Window<'_> {
    /// Makes the window start at `sp` unless it already holds the next few frames
    /// from there. A window that would run past the stack's last page is cut at the
    /// end of `sp`'s page.
    #[inline(always)]
    pub(super) fn fill(&mut self, sp: u64) {
        let w = &mut *self.0;
        let off = sp.wrapping_sub(w.base);
        if off < w.len && w.len - off >= WINDOW_BYTES / 2 || sp & 7 != 0 {
            return;
        }
        w.len = 0;
        let dst = w.words.as_mut_ptr() as *mut c_void;
        let mut len = WINDOW_BYTES;
        if !read_user(dst, len, sp) {
            len = PAGE_SIZE - (sp & (PAGE_SIZE - 1));
            if len > WINDOW_BYTES {
                len = WINDOW_BYTES;
            }
            if !read_user(dst, len, sp) {
                return;
            }
        }
        w.base = sp;
        w.len = len;
    }

    /// The index of the word at `addr`, if the window holds the `n` bytes from it.
    #[inline(always)]
    pub(super) fn at(&self, addr: u64, n: u64) -> Option<usize> {
        let w = &*self.0;
        let off = addr.wrapping_sub(w.base);
        if addr & 7 == 0 && off < w.len && w.len - off >= n {
            Some(((off >> 3) as u32 & WINDOW_MASK) as usize)
        } else {
            None
        }
    }
}

impl Memory for Window<'_> {
    #[inline(always)]
    fn read(&mut self, addr: u64) -> Option<u64> {
        if let Some(i) = self.at(addr, 8) {
            return Some(self.0.words[i]);
        }
        let mut v = 0u64;
        if read_user(&mut v as *mut u64 as *mut c_void, 8, addr) {
            Some(v)
        } else {
            None
        }
    }

    #[inline(always)]
    fn read_pair(&mut self, addr: u64) -> Option<[u64; 2]> {
        if let Some(i) = self.at(addr, 16) {
            return Some([
                self.0.words[i],
                self.0.words[((i as u32 + 1) & WINDOW_MASK) as usize],
            ]);
        }
        // Uninitialised: a zeroing would be a byte-wise memset the verifier walks.
        let mut v = core::mem::MaybeUninit::<[u64; 2]>::uninit();
        if read_user(v.as_mut_ptr() as *mut c_void, 16, addr) {
            // SAFETY: on success all 16 bytes were written.
            Some(unsafe { v.assume_init() })
        } else {
            None
        }
    }
}
