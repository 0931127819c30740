//! The bytes of one request in the queue on disk.
//!
//! A record describes itself, so that it can be found and checked without redb (see
//! `salvage.rs`): `magic (4) | header crc32 (4) | seq (8) | samples (8) | profiles (8)
//! | payload length (4) | payload crc32 (4) | payload`. The header CRC covers the 32
//! bytes after it (the payload CRC among them), so a candidate found by its magic is
//! rejected after reading 40 bytes unless its header is whole.
//!
//! Records written before the sequence number was in them (`crc32 (4) | samples (8) |
//! profiles (8) | payload`, the CRC over the rest) are still read.

use bytes::Bytes;

use super::Encoded;

/// The redb table records are kept in, by sequence number.
pub(super) const TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("requests");

pub(super) const MAGIC: [u8; 4] = *b"SLQ\x02";
/// Everything before the payload.
pub(super) const HEADER: usize = 40;
const V1_HEADER: usize = 20;

pub(super) fn encode(seq: u64, item: &Encoded) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + item.bytes.len());
    v.extend_from_slice(&MAGIC);
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&item.samples.to_le_bytes());
    v.extend_from_slice(&item.profiles.to_le_bytes());
    // A request is far below 4 GiB (max_request_body_size_mib, the decode limits).
    v.extend_from_slice(&(item.bytes.len() as u32).to_le_bytes());
    v.extend_from_slice(&crc32fast::hash(&item.bytes).to_le_bytes());
    v.extend_from_slice(&item.bytes);
    let h = crc32fast::hash(&v[8..HEADER]);
    v[4..8].copy_from_slice(&h.to_le_bytes());
    v
}

/// A checked header: the record's sequence number, and its whole length.
pub(super) struct Header {
    pub seq: u64,
    pub len: u64,
    pub payload_crc: u32,
}

/// The header at the start of `h` (at least HEADER bytes), if it is one.
pub(super) fn header(h: &[u8]) -> Option<Header> {
    let h = h.get(..HEADER)?;
    if h[..4] != MAGIC || crc32fast::hash(&h[8..]) != u32_at(h, 4) {
        return None;
    }
    Some(Header {
        seq: u64_at(h, 8),
        len: HEADER as u64 + u64::from(u32_at(h, 32)),
        payload_crc: u32_at(h, 36),
    })
}

/// The request in a whole record, if it is undamaged.
pub(super) fn decode(v: &[u8]) -> Option<Encoded> {
    if let Some(h) = header(v) {
        let payload = &v[HEADER..];
        if payload.len() as u64 != h.len - HEADER as u64
            || crc32fast::hash(payload) != h.payload_crc
        {
            return None;
        }
        return Some(Encoded {
            samples: u64_at(v, 16),
            profiles: u64_at(v, 24),
            bytes: Bytes::copy_from_slice(payload),
        });
    }
    decode_v1(v)
}

fn decode_v1(v: &[u8]) -> Option<Encoded> {
    if v.len() < V1_HEADER || crc32fast::hash(&v[4..]) != u32_at(v, 0) {
        return None;
    }
    Some(Encoded {
        samples: u64_at(v, 4),
        profiles: u64_at(v, 12),
        bytes: Bytes::copy_from_slice(&v[V1_HEADER..]),
    })
}

fn u32_at(v: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&v[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(v: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&v[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u64) -> Encoded {
        Encoded {
            samples: n,
            profiles: 1,
            bytes: Bytes::from(vec![n as u8; 100]),
        }
    }

    #[test]
    fn a_record_reads_back_and_any_flipped_byte_is_caught() {
        let r = encode(7, &item(3));
        let h = header(&r).unwrap();
        assert_eq!((h.seq, h.len), (7, r.len() as u64));
        assert_eq!(decode(&r).unwrap().samples, 3);
        for i in 0..r.len() {
            let mut bad = r.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad).is_none(), "byte {i}");
        }
        assert!(decode(&r[..r.len() - 1]).is_none());
    }

    #[test]
    fn records_of_the_earlier_layout_are_still_read() {
        let mut v = vec![0; 4];
        v.extend_from_slice(&5u64.to_le_bytes());
        v.extend_from_slice(&1u64.to_le_bytes());
        v.extend_from_slice(b"payload");
        let crc = crc32fast::hash(&v[4..]);
        v[..4].copy_from_slice(&crc.to_le_bytes());
        let got = decode(&v).unwrap();
        assert_eq!((got.samples, &got.bytes[..]), (5, &b"payload"[..]));
    }
}
