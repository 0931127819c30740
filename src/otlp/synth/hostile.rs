//! Requests shaped to cost a gateway far more than their size, one per way a request
//! can amplify work: for the tests that bound time and memory per shape
//! (`tests/hostile.rs`) and the bench that prices each per input byte
//! (`benches/gateway_cpu.rs`). Each is valid OTLP within the receiver's default limits
//! (`limits.*`, 32 MiB on the wire), so it reaches every stage.

use super::native_request;
use crate::otlp::ProfilesRequest;
use crate::otlp::common::{AnyValue, any_value};
use crate::otlp::profiles::{Function, KeyValueAndUnit, Line, Location, Sample, Stack};

/// Frames in the deepest stack the receiver accepts by default (`limits.max_stack_depth`).
pub const MAX_STACK_DEPTH: usize = 16_384;

/// One shape of the corpus.
pub struct Shape {
    pub name: &'static str,
    pub request: ProfilesRequest,
    /// Whether the default limits let it through (else it is refused before decoding).
    pub within_limits: bool,
}

/// Every shape.
pub fn shapes() -> Vec<Shape> {
    let shape = |name, request, within_limits| Shape {
        name,
        request,
        within_limits,
    };
    vec![
        shape(
            "deepest stack, 1 sample",
            deep_stack(MAX_STACK_DEPTH, 1),
            true,
        ),
        shape(
            "deepest stack shared by 50,000 samples with process.pid",
            deep_stack(MAX_STACK_DEPTH, 50_000),
            true,
        ),
        shape(
            "200,000 one-frame stacks and samples",
            many_stacks(200_000),
            true,
        ),
        shape(
            "1,000 samples with 1,000 attributes each",
            many_attributes(1_000, 1_000),
            true,
        ),
        shape("8 function names of 1 MiB", long_strings(8, 1 << 20), true),
        shape(
            "340,000 one-frame stacks (near the decoded-size limit)",
            many_stacks(340_000),
            true,
        ),
        shape(
            "999,999 samples, stacks and locations (over the decoded size)",
            many_stacks(999_999),
            false,
        ),
    ]
}

/// A native request of one mapping, with `process.pid` on its samples (what makes the
/// symbolizer look at the process of each sample).
fn base() -> ProfilesRequest {
    native_request("/usr/bin/app", None, (0, 0), &[0x1000], Some(4242))
}

fn samples(req: &mut ProfilesRequest) -> &mut Vec<Sample> {
    &mut req.resource_profiles[0].scope_profiles[0].profiles[0].samples
}

/// One stack of `depth` distinct symbolized locations, `n` samples on it.
pub fn deep_stack(depth: usize, n: usize) -> ProfilesRequest {
    let mut req = base();
    let d = req.dictionary.as_mut().unwrap();
    let name = d.string_table.len() as i32;
    d.string_table.push("f".into());
    d.function_table.push(Function {
        name_strindex: name,
        system_name_strindex: name,
        filename_strindex: 0,
        start_line: 1,
    });
    let f = d.function_table.len() as i32 - 1;
    let first = d.location_table.len() as i32;
    for i in 0..depth {
        d.location_table.push(Location {
            mapping_index: 1,
            address: d.mapping_table[1].memory_start + 0x1000 + 16 * i as u64,
            lines: vec![Line {
                function_index: f,
                line: i as i64,
                column: 0,
            }],
            attribute_indices: vec![],
        });
    }
    d.stack_table[1].location_indices = (first..first + depth as i32).collect();
    let one = samples(&mut req)[0].clone();
    *samples(&mut req) = vec![one; n];
    req
}

/// `n` samples, each on its own one-frame stack at its own location.
pub fn many_stacks(n: usize) -> ProfilesRequest {
    let mut req = base();
    let d = req.dictionary.as_mut().unwrap();
    let start = d.mapping_table[1].memory_start;
    let pid = samples(&mut req)[0].attribute_indices.clone();
    let d = req.dictionary.as_mut().unwrap();
    d.location_table.truncate(1);
    d.stack_table.truncate(1);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        d.location_table.push(Location {
            mapping_index: 1,
            address: start + 0x1000 + i as u64,
            lines: vec![],
            attribute_indices: vec![],
        });
        d.stack_table.push(Stack {
            location_indices: vec![i as i32 + 1],
        });
        out.push(Sample {
            stack_index: i as i32 + 1,
            attribute_indices: pid.clone(),
            values: vec![1],
            ..Default::default()
        });
    }
    *samples(&mut req) = out;
    req
}

/// `n` samples on one stack, each carrying every one of `attrs` distinct attributes.
pub fn many_attributes(n: usize, attrs: usize) -> ProfilesRequest {
    let mut req = base();
    let d = req.dictionary.as_mut().unwrap();
    let first = d.attribute_table.len() as i32;
    for i in 0..attrs {
        let key = d.string_table.len() as i32;
        d.string_table.push(format!("key.{i}"));
        d.attribute_table.push(KeyValueAndUnit {
            key_strindex: key,
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(i as i64)),
            }),
            unit_strindex: 0,
        });
    }
    let mut one = samples(&mut req)[0].clone();
    one.attribute_indices = (first..first + attrs as i32).collect();
    *samples(&mut req) = vec![one; n];
    req
}

/// One stack of `n` frames whose functions have names of `len` bytes.
pub fn long_strings(n: usize, len: usize) -> ProfilesRequest {
    let mut req = deep_stack(n, 1);
    let d = req.dictionary.as_mut().unwrap();
    let base_fn = d.function_table.len() as i32;
    for i in 0..n {
        let name = d.string_table.len() as i32;
        d.string_table
            .push(std::iter::repeat_n(char::from(b'a' + (i % 26) as u8), len).collect());
        d.function_table.push(Function {
            name_strindex: name,
            system_name_strindex: name,
            filename_strindex: 0,
            start_line: 1,
        });
    }
    let stack = d.stack_table[1].location_indices.clone();
    for (i, &l) in stack.iter().enumerate() {
        d.location_table[l as usize].lines[0].function_index = base_fn + i as i32;
    }
    req
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_shape_is_valid_and_within_the_default_limits() {
        let limits = crate::otlp::limits::DecodeLimits::default();
        for s in super::shapes() {
            crate::otlp::check(&s.request).unwrap_or_else(|e| panic!("{}: {e}", s.name));
            let wire = prost::Message::encode_to_vec(&s.request);
            assert!(wire.len() < 32 << 20, "{}: {} bytes", s.name, wire.len());
            let fp = crate::otlp::limits::footprint(&wire).unwrap();
            assert_eq!(
                limits.allow(&fp).is_ok(),
                s.within_limits,
                "{}: {fp:?}",
                s.name
            );
        }
    }
}
