//! Plain values in and out of bytes: ring-buffer records and map values are `aya::Pod`
//! types (`#[repr(C)]` plain integers, see the `stackline-ebpf-common` crate), so any
//! bytes of the right length are a valid value.

use aya::Pod;

/// The `T` at the start of `bytes`, or None if there are fewer than its size.
pub fn read<T: Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked; T is Pod, valid for any bit pattern; the read is
    // unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

/// The bytes of `value`, as a map update takes them.
pub fn bytes_of<T: Pod>(value: &T) -> &[u8] {
    // SAFETY: T is Pod: its size_of bytes are initialised (no padding) and are its value.
    unsafe { std::slice::from_raw_parts(value as *const T as *const u8, std::mem::size_of::<T>()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stackline_ebpf_common::shared::Event;

    #[test]
    fn reads_back_what_it_wrote_and_refuses_short_input() {
        let e = Event {
            pid: 7,
            kind: 2,
            addr: 0x1234_5678,
        };
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(bytes_of(&e));
        let back: Event = read(&bytes[1..]).unwrap();
        assert_eq!((back.pid, back.kind, back.addr), (7, 2, 0x1234_5678));
        assert!(read::<Event>(&bytes[1..bytes.len() - 1]).is_none());
    }
}
