//! OTLP profiles data model and the dictionary operations every component needs.
//!
//! Profiles travel through the pipeline as [`ProfilesRequest`]s: the
//! `ExportProfilesServiceRequest` of OTLP profiles v1development (proto v1.10).
//! Every sample, stack, location, function, mapping, attribute and link refers
//! to the request's shared `ProfilesDictionary` by index, and index 0 of every
//! table is that table's zero value.
//!
//! This module is the one place that understands those indices:
//! - [`sample_count`] counts samples (the unit of every pipeline metric);
//! - [`check`] verifies every index is inside its table (receivers refuse requests that fail);
//! - [`merge`] combines requests into one, re-interning the dictionaries so the result holds no duplicate entries;
//! - [`split`] cuts a request into requests of at most N samples, each with a dictionary holding only what it references.

mod builder;
mod check;
pub mod json;
pub mod limits;
pub mod semconv;
#[cfg(any(test, feature = "test-support"))]
pub mod synth;
pub mod view;

pub use builder::{DictionaryBuilder, merge, split};
pub use check::{Checked, IndexError, check};

pub use opentelemetry_proto::tonic::collector::profiles::v1development as collector;
pub use opentelemetry_proto::tonic::common::v1 as common;
pub use opentelemetry_proto::tonic::profiles::v1development as profiles;
pub use opentelemetry_proto::tonic::resource::v1 as resource;

/// The OTLP/HTTP path for profiles (served by the `otlp` receiver, posted to by the
/// `otlphttp` exporter).
pub const HTTP_PATH: &str = "/v1development/profiles";

/// The gRPC service that receives profiles, and the path of its `Export` method.
pub const GRPC_SERVICE: &str =
    "opentelemetry.proto.collector.profiles.v1development.ProfilesService";
pub const GRPC_EXPORT_PATH: &str =
    "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export";

/// The unit of data that flows between pipeline stages.
pub type ProfilesRequest = collector::ExportProfilesServiceRequest;

/// Number of samples in a request: the item count used by every `*_profile_samples_total` metric.
#[cfg(test)]
mod tests;

pub fn sample_count(req: &ProfilesRequest) -> u64 {
    view::profiles(req).map(|p| p.samples.len() as u64).sum()
}
