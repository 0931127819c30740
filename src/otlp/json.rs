//! OTLP/JSON encoding of requests (the file exporter's `format: json`).

use super::ProfilesRequest;

/// One request as OTLP/JSON.
pub fn to_vec(req: &ProfilesRequest) -> Vec<u8> {
    serde_json::to_vec(req).unwrap_or_default()
}
