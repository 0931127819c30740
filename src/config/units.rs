//! Units in configuration values: durations (`200ms`, `5s`, `3m`) and byte sizes
//! (`64KiB`, `8MiB`, or a plain integer of bytes).

use serde::{Deserialize, Deserializer};

pub use bytesize::ByteSize;

/// Serde helper for `Duration` fields: `#[serde(with = "crate::config::units::duration")]`.
pub use humantime_serde as duration;

/// Deserializes a byte size from `64KiB`-style text or an integer number of bytes.
pub fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(ByteSize::b(n)),
        Raw::Text(s) => s.trim().parse::<ByteSize>().map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid byte size `{s}`: {e}; write e.g. `64KiB`, `8MiB` or a number of bytes"
            ))
        }),
    }
}

/// Checks a `host:port` endpoint: a port number after the last `:` and a non-empty host.
pub fn parse_endpoint(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct S {
        #[serde(deserialize_with = "byte_size")]
        size: ByteSize,
    }

    #[test]
    fn byte_sizes_parse_in_all_forms() {
        for (text, bytes) in [
            ("size: 64KiB", 64 * 1024),
            ("size: 8MiB", 8 << 20),
            ("size: 1000", 1000),
            ("size: 2 KB", 2000),
        ] {
            let s: S = figment::Figment::from(figment::providers::Serialized::defaults(
                serde_yaml_like(text),
            ))
            .extract()
            .unwrap();
            assert_eq!(s.size.as_u64(), bytes, "{text}");
        }
    }

    fn serde_yaml_like(text: &str) -> figment::value::Dict {
        use figment::providers::Format;
        figment::Figment::from(figment::providers::Yaml::string(text))
            .extract()
            .unwrap()
    }
}
