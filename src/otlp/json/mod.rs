//! OTLP/JSON for profiles requests, both ways: the file exporter's `format: json`, the
//! OTLP/HTTP exporter's `encoding: json` and the OTLP/HTTP receiver.
//!
//! The OTLP/JSON rules (the protobuf JSON mapping, with OTLP's exceptions):
//! - keys in lowerCamelCase (the decoder also takes the proto's snake_case names);
//! - bytes in base64, except trace, span and profile ids, which are hex;
//! - 64-bit integers as decimal strings (the decoder also takes numbers);
//! - fields with their default value are left out; never `null` (the decoder reads
//!   `null` as the default);
//! - unknown fields are ignored, as OTLP asks of receivers.
//!
//! Writing (`write.rs`) is by hand for the profiles schema: the serde derives of the
//! generated types write bytes as arrays and empty messages as `null`, which conformant
//! readers refuse.
//!
//! Reading (`read.rs`, `fields.rs`, `scalars.rs`) streams: serde visitors build the `prost` messages
//! as the tokens go by, and skip unknown fields with `IgnoredAny` without building
//! anything. A generic JSON tree first would let any body amplify: 32 MiB of
//! `{"x":[{"a":0},{"a":0},…]}` is a few million maps in a tree, gigabytes, all of it
//! ignored afterwards. What is kept is counted as it is built, against
//! `limits.max_decoded_size_mib` ([`from_slice_limited`]), before more is allocated.

mod fields;
mod read;
mod scalars;
mod write;

#[cfg(test)]
mod tests;

pub use write::to_vec;

use super::ProfilesRequest;

/// Why a JSON body is not an OTLP profiles request (or is one too large to read).
#[derive(Debug, thiserror::Error)]
#[error("not OTLP/JSON: {message}")]
pub struct JsonError {
    message: String,
    over_limit: bool,
}

impl JsonError {
    /// The body was refused for what it would take once decoded, not for its form
    /// (`limits.max_decoded_size_mib`): a 413 for HTTP, not a 400.
    pub fn is_over_limit(&self) -> bool {
        self.over_limit
    }
}

/// Parses an OTLP/JSON `ExportProfilesServiceRequest`, with no bound on its decoded
/// size: for our own files and tests, not for bodies from the network.
pub fn from_slice(bytes: &[u8]) -> Result<ProfilesRequest, JsonError> {
    from_slice_limited(bytes, u64::MAX)
}

/// Parses an OTLP/JSON `ExportProfilesServiceRequest`, refusing it as soon as the
/// estimated memory of what has been built passes `max_decoded_bytes`.
pub fn from_slice_limited(
    bytes: &[u8],
    max_decoded_bytes: u64,
) -> Result<ProfilesRequest, JsonError> {
    read::request(bytes, max_decoded_bytes)
}
