//! Scalars: integers (as strings or numbers), doubles, booleans, strings and bytes.
//! Strings and bytes count what they allocate against the budget first.

use std::fmt;

use base64::Engine;
use serde::de::{self, Deserializer, Visitor};

use super::read::{Ctx, Kind};

/// Shows at most the start of a string in an error message: the body's strings can be
/// megabytes long, and the message goes back to the client.
fn shown(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((end, _)) => format!("`{}…`", &s[..end]),
        None => format!("`{s}`"),
    }
}

/// Scalars needing no context: (name, how serde is asked, visitor).
macro_rules! scalar {
    ($kind:ident, $out:ty, $ask:ident, $visitor:ident) => {
        #[derive(Clone, Copy)]
        pub(super) struct $kind;
        impl Kind for $kind {
            type Out = $out;
            fn read<'de, D: Deserializer<'de>>(self, _: &mut Ctx, d: D) -> Result<$out, D::Error> {
                d.$ask($visitor)
            }
        }
    };
}

scalar!(U64, u64, deserialize_any, U64Visitor);
scalar!(I64, i64, deserialize_any, I64Visitor);
scalar!(Bool, bool, deserialize_bool, BoolVisitor);
scalar!(F64, f64, deserialize_any, F64Visitor);

struct U64Visitor;
impl Visitor<'_> for U64Visitor {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an unsigned 64-bit integer (a decimal string or a number)")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v)
            .map_err(|_| E::custom(format_args!("{v} is not an unsigned 64-bit integer")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        // An integral float (`5.0`, `1e3`) is taken, saturating past the range.
        if v.fract() == 0.0 && v >= 0.0 {
            Ok(v as u64)
        } else {
            Err(E::custom(format_args!(
                "{v} is not an unsigned 64-bit integer"
            )))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        v.parse().map_err(|_| {
            E::custom(format_args!(
                "{} is not an unsigned 64-bit integer",
                shown(v)
            ))
        })
    }
}

struct I64Visitor;
impl Visitor<'_> for I64Visitor {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a 64-bit integer (a decimal string or a number)")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        // Past i64::MAX the reader before this one went through f64, which saturates.
        Ok(i64::try_from(v).unwrap_or(i64::MAX))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        if v.fract() == 0.0 {
            Ok(v as i64)
        } else {
            Err(E::custom(format_args!("{v} is not a 64-bit integer")))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        v.parse()
            .map_err(|_| E::custom(format_args!("{} is not a 64-bit integer", shown(v))))
    }
}

/// A 32-bit integer: read as 64 bits, then range-checked.
#[derive(Clone, Copy)]
pub(super) struct I32;
impl Kind for I32 {
    type Out = i32;
    fn read<'de, D: Deserializer<'de>>(self, ctx: &mut Ctx, d: D) -> Result<i32, D::Error> {
        let n = I64.read(ctx, d)?;
        i32::try_from(n).map_err(|_| de::Error::custom(format_args!("{n} does not fit 32 bits")))
    }
}

#[derive(Clone, Copy)]
pub(super) struct U32;
impl Kind for U32 {
    type Out = u32;
    fn read<'de, D: Deserializer<'de>>(self, ctx: &mut Ctx, d: D) -> Result<u32, D::Error> {
        let n = U64.read(ctx, d)?;
        u32::try_from(n).map_err(|_| de::Error::custom(format_args!("{n} does not fit 32 bits")))
    }
}

struct BoolVisitor;
impl Visitor<'_> for BoolVisitor {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("true or false")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }
}

struct F64Visitor;
impl Visitor<'_> for F64Visitor {
    type Value = f64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number (or \"NaN\", \"Infinity\", \"-Infinity\")")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        // JSON has no NaN or infinities: the protobuf mapping spells them as strings.
        match v {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            other => other
                .parse()
                .map_err(|_| E::custom(format_args!("{} is not a number", shown(other)))),
        }
    }
}

/// Strings and bytes: their visitors count what they allocate.
macro_rules! text {
    ($kind:ident, $out:ty, $expecting:literal, |$ctx:ident, $s:ident| $body:expr) => {
        #[derive(Clone, Copy)]
        pub(super) struct $kind;
        impl Kind for $kind {
            type Out = $out;
            fn read<'de, D: Deserializer<'de>>(
                self,
                ctx: &mut Ctx,
                d: D,
            ) -> Result<$out, D::Error> {
                struct V<'c>(&'c mut Ctx);
                impl Visitor<'_> for V<'_> {
                    type Value = $out;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, $s: &str) -> Result<$out, E> {
                        let $ctx = self.0;
                        $body
                    }
                }
                d.deserialize_str(V(ctx))
            }
        }
    };
}

text!(Str, String, "a string", |ctx, s| {
    ctx.charge(s.len())?;
    Ok(s.to_owned())
});

text!(Base64, Vec<u8>, "a base64 string", |ctx, s| {
    ctx.charge(base64::decoded_len_estimate(s.len()))?;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(s))
        .map_err(|e| E::custom(format_args!("not base64: {e}")))
});

text!(Hex, Vec<u8>, "a hex string", |ctx, s| {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(E::custom(format_args!("{} is not hex", shown(s))));
    }
    ctx.charge(s.len() / 2)?;
    let nibble = |b: u8| match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    };
    let mut out = Vec::with_capacity(s.len() / 2);
    for pair in s.as_bytes().chunks_exact(2) {
        if let [hi, lo] = pair {
            out.push(nibble(*hi) << 4 | nibble(*lo));
        }
    }
    Ok(out)
});
