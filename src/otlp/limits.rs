//! Bounds on what one request may expand to once decoded, checked on the protobuf
//! wire before anything is allocated for it.
//!
//! A few kilobytes of gzip can carry millions of empty samples: two bytes each on the
//! wire, about 80 in memory, more in every stage after. [`prescan`] walks the encoded
//! request once (no allocation, no decoding of values), counts samples, stacks and
//! locations, and estimates the memory the decoded request takes; a request over any
//! limit is refused before `prost` decodes it.

use prost::encoding::{WireType, decode_key, decode_varint};
use serde::Deserialize;

use super::profiles::{
    Function, KeyValueAndUnit, Line, Link, Location, Mapping, Profile, ResourceProfiles, Sample,
    ScopeProfiles, Stack,
};

/// `receivers.otlp.limits`: per request, applied to both protocols.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeLimits {
    /// Samples in one request. Default 1,000,000 (an agent on a 128-CPU node at
    /// 999 Hz sends about 128,000 per second).
    pub max_samples: u64,
    /// Entries of the dictionary's stack table. Default 1,000,000.
    pub max_stacks: u64,
    /// Entries of the dictionary's location table. Default 1,000,000.
    pub max_locations: u64,
    /// Entries (frames) of any one stack. Default 16,384: perf keeps 127 frames, the
    /// eBPF receiver 256; a deep recursion in a JIT runtime reaches a few thousand.
    /// Every stage's work per stack is linear in this.
    pub max_stack_depth: u64,
    /// Estimated memory of the decoded request, in MiB. Default 128: the stages after
    /// the receiver (checks, symbolizer, batch) hold up to about three times the decoded
    /// request at their peak (`tests/hostile.rs` prints it per shape), so one request
    /// at the limit peaks near 384 MiB, within a 1 GiB gateway.
    pub max_decoded_size_mib: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_samples: 1_000_000,
            max_stacks: 1_000_000,
            max_locations: 1_000_000,
            max_stack_depth: 16_384,
            max_decoded_size_mib: 128,
        }
    }
}

/// Why a request was refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrescanError {
    /// Over a limit: the message names the setting.
    #[error(
        "the request holds {found} {what}, more than {setting} ({limit}); send smaller requests or raise the limit"
    )]
    TooLarge {
        what: &'static str,
        setting: &'static str,
        found: u64,
        limit: u64,
    },
    /// Not valid protobuf (the decoder would refuse it too).
    #[error("cannot decode the request: {0}")]
    Malformed(String),
}

/// What a request expands to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub samples: u64,
    pub stacks: u64,
    pub locations: u64,
    /// Entries of the deepest stack.
    pub deepest_stack: u64,
    /// Estimated bytes of the decoded request in memory.
    pub decoded_bytes: u64,
}

impl DecodeLimits {
    /// Whether `f` is within the limits; the error names the setting to raise.
    pub fn allow(&self, f: &Footprint) -> Result<(), PrescanError> {
        let over = |what, setting, found: u64, limit: u64| {
            (found > limit).then_some(PrescanError::TooLarge {
                what,
                setting,
                found,
                limit,
            })
        };
        let mib = f.decoded_bytes.div_ceil(1 << 20);
        match over("samples", "limits.max_samples", f.samples, self.max_samples)
            .or_else(|| over("stacks", "limits.max_stacks", f.stacks, self.max_stacks))
            .or_else(|| {
                over(
                    "locations",
                    "limits.max_locations",
                    f.locations,
                    self.max_locations,
                )
            })
            .or_else(|| {
                over(
                    "frames in one stack",
                    "limits.max_stack_depth",
                    f.deepest_stack,
                    self.max_stack_depth,
                )
            })
            .or_else(|| {
                over(
                    "MiB once decoded",
                    "limits.max_decoded_size_mib",
                    mib,
                    self.max_decoded_size_mib,
                )
            }) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Calls `f(field, wire type, payload)` for each field of the message in `buf`; the
/// payload of a varint or fixed field is empty.
fn fields(
    mut buf: &[u8],
    mut f: impl FnMut(u32, WireType, &[u8]) -> Result<(), PrescanError>,
) -> Result<(), PrescanError> {
    let bad = |e: prost::DecodeError| PrescanError::Malformed(e.to_string());
    while !buf.is_empty() {
        let (tag, wt) = decode_key(&mut buf).map_err(bad)?;
        let skip = |buf: &mut &[u8], n: usize| -> Result<(), PrescanError> {
            if buf.len() < n {
                return Err(PrescanError::Malformed("buffer underflow".into()));
            }
            *buf = &buf[n..];
            Ok(())
        };
        match wt {
            WireType::Varint => {
                decode_varint(&mut buf).map_err(bad)?;
                f(tag, wt, &[])?;
            }
            WireType::SixtyFourBit => {
                skip(&mut buf, 8)?;
                f(tag, wt, &[])?;
            }
            WireType::ThirtyTwoBit => {
                skip(&mut buf, 4)?;
                f(tag, wt, &[])?;
            }
            WireType::LengthDelimited => {
                let len = decode_varint(&mut buf).map_err(bad)?;
                if len > buf.len() as u64 {
                    return Err(PrescanError::Malformed("buffer underflow".into()));
                }
                let (payload, rest) = buf.split_at(len as usize);
                buf = rest;
                f(tag, wt, payload)?;
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err(PrescanError::Malformed(format!(
                    "field {tag}: groups are not part of OTLP"
                )));
            }
        }
    }
    Ok(())
}

fn size<T>() -> u64 {
    std::mem::size_of::<T>() as u64
}

/// Packed integers take at least one byte each on the wire and at most 8 in memory.
const PACKED: u64 = 8;

/// Attribute values nest (arrays, key-value lists): an empty `KeyValue` is 2 bytes on
/// the wire and about 60 in memory.
const NESTED: u64 = 32;

/// Walks an `ExportProfilesServiceRequest` and measures what it decodes to.
pub fn footprint(req: &[u8]) -> Result<Footprint, PrescanError> {
    let mut fp = Footprint {
        decoded_bytes: req.len() as u64,
        ..Footprint::default()
    };
    fields(req, |tag, _, rp| {
        match tag {
            // resource_profiles → scope_profiles → profiles → samples
            1 => {
                fp.decoded_bytes += size::<ResourceProfiles>();
                fields(rp, |tag, _, sp| {
                    match tag {
                        // The resource: attributes nest values of their own.
                        1 => fp.decoded_bytes += sp.len() as u64 * NESTED,
                        2 => {
                            fp.decoded_bytes += size::<ScopeProfiles>();
                            fields(sp, |tag, _, p| {
                                if tag == 1 {
                                    fp.decoded_bytes += p.len() as u64 * NESTED;
                                }
                                if tag == 2 {
                                    fp.decoded_bytes += size::<Profile>();
                                    fields(p, |tag, _, s| {
                                        if tag == 2 {
                                            fp.samples += 1;
                                            fp.decoded_bytes +=
                                                size::<Sample>() + s.len() as u64 * PACKED;
                                        }
                                        Ok(())
                                    })?;
                                }
                                Ok(())
                            })?;
                        }
                        _ => {}
                    }
                    Ok(())
                })?
            }
            // dictionary
            2 => fields(rp, |tag, _, e| {
                let len = e.len() as u64;
                fp.decoded_bytes += match tag {
                    1 => size::<Mapping>() + len * PACKED,
                    2 => {
                        fp.locations += 1;
                        let mut lines = 0;
                        fields(e, |tag, _, _| {
                            lines += (tag == 3) as u64;
                            Ok(())
                        })?;
                        size::<Location>() + lines * size::<Line>() + len * PACKED
                    }
                    3 => size::<Function>(),
                    4 => size::<Link>() + len,
                    5 => size::<String>() + len,
                    6 => size::<KeyValueAndUnit>() + len * NESTED,
                    7 => {
                        fp.stacks += 1;
                        // location_indices (field 1), packed or not: one varint each.
                        let mut depth = 0u64;
                        fields(e, |tag, wt, packed| {
                            if tag == 1 {
                                depth += match wt {
                                    WireType::LengthDelimited => {
                                        packed.iter().filter(|&&b| b < 0x80).count() as u64
                                    }
                                    _ => 1,
                                };
                            }
                            Ok(())
                        })?;
                        fp.deepest_stack = fp.deepest_stack.max(depth);
                        size::<Stack>() + len * PACKED / 2
                    }
                    _ => len,
                };
                Ok(())
            })?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(fp)
}

/// Refuses a request over `limits` before it is decoded.
pub fn prescan(req: &[u8], limits: &DecodeLimits) -> Result<Footprint, PrescanError> {
    let fp = footprint(req)?;
    limits.allow(&fp)?;
    Ok(fp)
}

/// The footprint of a request already decoded (JSON bodies), by the same measure.
pub fn footprint_of(req: &super::ProfilesRequest) -> Footprint {
    let d = super::view::Dict::of(req).0;
    let samples = super::sample_count(req);
    Footprint {
        samples,
        stacks: d.stack_table.len() as u64,
        locations: d.location_table.len() as u64,
        deepest_stack: d
            .stack_table
            .iter()
            .map(|s| s.location_indices.len() as u64)
            .max()
            .unwrap_or(0),
        decoded_bytes: samples * size::<Sample>()
            + (d.stack_table.len() as u64) * size::<Stack>()
            + (d.location_table.len() as u64) * size::<Location>(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn counts_what_the_decoder_would_build() {
        let req = crate::otlp::synth::request("limits", 0, 300, 7);
        let bytes = req.encode_to_vec();
        let fp = footprint(&bytes).unwrap();
        let d = crate::otlp::view::Dict::of(&req).0;
        assert_eq!(fp.samples, crate::otlp::sample_count(&req));
        assert_eq!(fp.stacks, d.stack_table.len() as u64);
        assert_eq!(fp.locations, d.location_table.len() as u64);
        assert!(fp.decoded_bytes > bytes.len() as u64);
    }

    #[test]
    fn millions_of_empty_samples_are_refused_by_count_and_by_size() {
        // One profile with 3,000,000 empty samples: 6 MB on the wire.
        let req = crate::otlp::synth::empty_samples_wire(3_000_000);
        let e = prescan(&req, &DecodeLimits::default()).unwrap_err();
        assert!(e.to_string().contains("limits.max_samples"), "{e}");
        let loose = DecodeLimits {
            max_samples: u64::MAX,
            max_decoded_size_mib: 64,
            ..DecodeLimits::default()
        };
        let e = prescan(&req, &loose).unwrap_err();
        assert!(e.to_string().contains("limits.max_decoded_size_mib"), "{e}");
    }

    #[test]
    fn empty_scopes_count_toward_the_decoded_size() {
        // 16 MB of empty ScopeProfiles in one resource: no sample, but gigabytes decoded.
        let mut scopes = Vec::with_capacity(16 << 20);
        for _ in 0..(8 << 20) {
            scopes.extend_from_slice(&[0x12, 0x00]);
        }
        let mut req = vec![0x0a];
        prost::encoding::encode_varint(scopes.len() as u64, &mut req);
        req.extend_from_slice(&scopes);
        let e = prescan(&req, &DecodeLimits::default()).unwrap_err();
        assert!(e.to_string().contains("limits.max_decoded_size_mib"), "{e}");
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [&[0x0a, 0x05, 0x01][..], &[0xff; 12], &[0x0b], &[0x0a, 0x80]] {
            assert!(matches!(footprint(bad), Err(PrescanError::Malformed(_))));
        }
    }
}
