//! Read-only access to a request's samples through its dictionary, for exporters that
//! turn OTLP into other formats. Out-of-range indices read as the zero value, never panic.

use super::ProfilesRequest;
use super::common::{AnyValue, any_value};
use super::profiles::{Function, Location, Mapping, Profile, ProfilesDictionary, Sample};
use super::semconv;

static EMPTY_DICT: std::sync::LazyLock<ProfilesDictionary> =
    std::sync::LazyLock::new(ProfilesDictionary::default);

/// A request's dictionary, with safe lookups.
#[derive(Clone, Copy)]
pub struct Dict<'a>(pub &'a ProfilesDictionary);

impl<'a> Dict<'a> {
    pub fn of(req: &'a ProfilesRequest) -> Self {
        Dict(req.dictionary.as_ref().unwrap_or(&EMPTY_DICT))
    }
    pub fn string(&self, i: i32) -> &'a str {
        self.0
            .string_table
            .get(i as usize)
            .map_or("", String::as_str)
    }
    pub fn location(&self, i: i32) -> Option<&'a Location> {
        (i > 0)
            .then(|| self.0.location_table.get(i as usize))
            .flatten()
    }
    pub fn mapping(&self, i: i32) -> Option<&'a Mapping> {
        (i > 0)
            .then(|| self.0.mapping_table.get(i as usize))
            .flatten()
    }
    pub fn function(&self, i: i32) -> Option<&'a Function> {
        (i > 0)
            .then(|| self.0.function_table.get(i as usize))
            .flatten()
    }
    /// Location indices of a stack, leaf first.
    pub fn stack(&self, i: i32) -> &'a [i32] {
        self.0
            .stack_table
            .get(i as usize)
            .map_or(&[], |s| s.location_indices.as_slice())
    }
    /// An attribute as (key, value).
    pub fn attribute(&self, i: i32) -> Option<(&'a str, &'a AnyValue)> {
        let a = self.0.attribute_table.get(i as usize).filter(|_| i > 0)?;
        Some((self.string(a.key_strindex), a.value.as_ref()?))
    }
    /// The value of attribute `key` among `indices`.
    pub fn find_attribute(&self, indices: &[i32], key: &str) -> Option<&'a AnyValue> {
        indices
            .iter()
            .filter_map(|&i| self.attribute(i))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
    /// Whether a location's attributes mark it a kernel frame
    /// (`profile.frame.type = kernel`): the one test every stage uses.
    pub fn is_kernel_frame(&self, location_attrs: &[i32]) -> bool {
        // Compared in place: the symbolizer asks once per location.
        matches!(
            self.find_attribute(location_attrs, semconv::PROFILE_FRAME_TYPE)
                .and_then(|v| v.value.as_ref()),
            Some(any_value::Value::StringValue(t)) if t == semconv::FRAME_TYPE_KERNEL
        )
    }
    /// The process a sample came from: its `process.pid` (0 if absent) and
    /// `process.executable.name`.
    pub fn process(&self, sample_attrs: &[i32]) -> (i64, Option<String>) {
        let pid = self
            .find_attribute(sample_attrs, semconv::PROCESS_PID)
            .and_then(as_int)
            .unwrap_or(0);
        let exe = self
            .find_attribute(sample_attrs, semconv::PROCESS_EXECUTABLE_NAME)
            .and_then(as_text);
        (pid, exe)
    }

    /// A mapping's GNU build ID attribute.
    /// The mapping's GNU build ID, parsed (None when absent or not a string).
    pub fn build_id(
        &self,
        m: &Mapping,
    ) -> Option<Result<crate::host::elf::BuildId, crate::host::elf::BuildIdError>> {
        match self
            .find_attribute(
                &m.attribute_indices,
                semconv::PROCESS_EXECUTABLE_BUILD_ID_GNU,
            )?
            .value
            .as_ref()?
        {
            any_value::Value::StringValue(s) => Some(crate::host::elf::BuildId::parse(s)),
            _ => None,
        }
    }
}

/// A string or integer form of an attribute value.
pub fn as_text(v: &AnyValue) -> Option<String> {
    match v.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

pub fn as_int(v: &AnyValue) -> Option<i64> {
    match v.value.as_ref()? {
        any_value::Value::IntValue(i) => Some(*i),
        any_value::Value::StringValue(s) => s.parse().ok(),
        _ => None,
    }
}

/// The weight of a sample: the sum of its values, or one per timestamp when it has
/// timestamps but no values (as the eBPF profilers send events), or 1.
pub fn weight(s: &Sample) -> i64 {
    if !s.values.is_empty() {
        s.values.iter().sum()
    } else {
        (s.timestamps_unix_nano.len() as i64).max(1)
    }
}

/// Every profile of a request.
pub fn profiles(req: &ProfilesRequest) -> impl Iterator<Item = &Profile> {
    req.resource_profiles
        .iter()
        .flat_map(|r| &r.scope_profiles)
        .flat_map(|s| &s.profiles)
}
