use super::*;
use crate::exporters::shell::Encoded;

fn rec(seq: u64) -> Vec<u8> {
    record::encode(
        seq,
        &Encoded {
            samples: seq,
            profiles: 1,
            bytes: bytes::Bytes::from(vec![seq as u8; 1000 + (seq % 997) as usize]),
        },
    )
}

#[test]
fn finds_whole_records_at_or_above_the_floor_once_each_across_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let mut file = vec![0x55u8; 300];
    // Settled records, a damaged one, two copies of one, one over a chunk boundary.
    for s in [1, 2, 10, 11, 11] {
        file.extend_from_slice(&rec(s));
        file.extend_from_slice(&[0; 17]);
    }
    let mut damaged = rec(12);
    damaged[500] ^= 1;
    file.extend_from_slice(&damaged);
    file.resize(CHUNK - 20, 0);
    file.extend_from_slice(&rec(13));
    let mut torn = rec(14);
    torn.truncate(200);
    file.extend_from_slice(&torn);
    std::fs::write(&path, &file).unwrap();

    let mut got = Vec::new();
    let held = Held {
        floor: 10,
        reserved: 0,
    };
    let found = scan(&path, held, |s, r| {
        got.push((s, record::decode(&r).unwrap().samples));
        Ok(())
    })
    .unwrap();
    assert_eq!(got, [(10, 10), (11, 11), (13, 13)]);
    assert_eq!(
        found,
        Found {
            records: 3,
            settled: 2,
            ..Found::default()
        }
    );
}

#[test]
fn a_record_inside_another_records_payload_is_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let inner = rec(99);
    let outer = record::encode(
        5,
        &Encoded {
            samples: 1,
            profiles: 1,
            bytes: bytes::Bytes::from(inner),
        },
    );
    std::fs::write(&path, &outer).unwrap();
    let mut got = Vec::new();
    scan(&path, Held::default(), |s, _| {
        got.push(s);
        Ok(())
    })
    .unwrap();
    assert_eq!(got, [5]);
}

#[test]
fn forged_headers_cost_a_bounded_scan_and_never_end_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    // Headers that claim the rest of the file (their payload CRC is wrong), then
    // headers of numbers the queue never handed out, then the real records.
    let mut file = Vec::new();
    let forged_len = |seq: u64, len: u32| {
        let mut h = rec(seq)[..record::HEADER].to_vec();
        h[32..36].copy_from_slice(&len.to_le_bytes());
        let crc = crc32fast::hash(&h[8..]);
        h[4..8].copy_from_slice(&crc.to_le_bytes());
        h
    };
    for _ in 0..50 {
        file.extend_from_slice(&forged_len(3, 3_000_000));
    }
    file.extend_from_slice(&rec(u64::MAX));
    file.extend_from_slice(&rec(1_000_000));
    file.resize(3_100_000, 0);
    for s in [3, 4] {
        file.extend_from_slice(&rec(s));
    }
    std::fs::write(&path, &file).unwrap();
    let mut got = Vec::new();
    let held = Held {
        floor: 1,
        reserved: 100,
    };
    let found = scan(&path, held, |s, _| {
        got.push(s);
        Ok(())
    })
    .unwrap();
    assert_eq!(got, [3, 4]);
    assert_eq!(found.foreign, 2);
    // The forged lengths used the work allowed, so some were not checked, and the
    // real records after them were still found.
    assert!(found.cut_short);
}

#[test]
fn the_marks_read_back_and_a_damaged_one_reads_as_zero() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q.redb");
    let (m, v) = Marks::open(&q).unwrap();
    assert_eq!(v, Held::default());
    m.set_floor(1234);
    m.reserve(5000).unwrap();
    m.reserve(9000).unwrap();
    drop(m);
    let (m, v) = Marks::open(&q).unwrap();
    assert_eq!((v.floor, v.reserved), (1234, 9000));
    // The next reservation goes over the older slot; tearing it leaves the other.
    m.reserve(13000).unwrap();
    drop(m);
    let p = q.with_extension("floor");
    let mut b = std::fs::read(&p).unwrap();
    b[0] ^= 1;
    let newest = RESERVED_AT
        .iter()
        .map(|&at| at as usize)
        .find(|&at| b[at..at + 8] == 13000u64.to_le_bytes())
        .unwrap();
    b[newest] ^= 1;
    std::fs::write(&p, b).unwrap();
    let v = Marks::open(&q).unwrap().1;
    assert_eq!((v.floor, v.reserved), (0, 9000));
}
