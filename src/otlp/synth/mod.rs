//! Synthetic requests for tests and benchmarks.
//!
//! Each sample carries a unique `seq` attribute and a stack drawn from a small pool of
//! functions, so requests share most of their dictionary entries (what merging must
//! deduplicate) while every sample stays identifiable after any merge or split.

pub mod hostile;

use super::ProfilesRequest;
use super::collector::ExportProfilesServiceRequest;
use super::common::{AnyValue, InstrumentationScope, KeyValue, any_value};
use super::profiles::{
    Function, KeyValueAndUnit, Line, Link, Location, Mapping, Profile, ProfilesDictionary,
    ResourceProfiles, Sample, ScopeProfiles, Stack, ValueType,
};
use super::resource::Resource;

/// Attribute key holding each synthetic sample's sequence number.
pub const SEQ_KEY: &str = "seq";

/// Function names of the synthetic pool.
pub fn function_name(i: u64) -> String {
    format!("app::module{}::function_{}", i % 7, i)
}

/// The leaf-first function names of sample `seq`'s stack (1 to 6 frames from a pool of `pool`).
pub fn expected_stack(seq: u64, pool: u64) -> Vec<String> {
    let depth = 1 + seq % 6;
    (0..depth)
        .map(|d| function_name((seq.wrapping_mul(31).wrapping_add(d * 17)) % pool))
        .collect()
}

/// A dictionary holding only the zero value of each table.
fn zero_dictionary(strings: Vec<String>) -> ProfilesDictionary {
    ProfilesDictionary {
        string_table: strings,
        mapping_table: vec![Mapping::default()],
        location_table: vec![Location::default()],
        function_table: vec![Function::default()],
        link_table: vec![Default::default()],
        attribute_table: vec![KeyValueAndUnit::default()],
        stack_table: vec![Stack::default()],
    }
}

/// The protobuf encoding of a request whose one profile holds `n` empty samples: two
/// bytes each on the wire and far more once decoded (tests of the decode limits).
pub fn empty_samples_wire(n: usize) -> Vec<u8> {
    let wrap = |tag: u8, inner: &[u8]| {
        let mut v = vec![tag];
        prost::encoding::encode_varint(inner.len() as u64, &mut v);
        v.extend_from_slice(inner);
        v
    };
    // Profile.samples (field 2), each empty.
    let samples = [0x12u8, 0x00].repeat(n);
    // request.resource_profiles (1) → scope_profiles (2) → profiles (2).
    wrap(0x0a, &wrap(0x12, &wrap(0x12, &samples)))
}

/// A request with samples `first..first + n`, from a service named `service`.
pub fn request(service: &str, first: u64, n: u64, pool: u64) -> ProfilesRequest {
    let mut d = zero_dictionary(vec![String::new()]);
    // Deliberately no interning here: duplicates within one request are legal input
    // and the merge must remove them.
    let s = |d: &mut ProfilesDictionary, v: &str| {
        d.string_table.push(v.to_owned());
        (d.string_table.len() - 1) as i32
    };
    let exe = s(&mut d, "/usr/bin/app");
    d.mapping_table.push(Mapping {
        memory_start: 0x40_0000,
        memory_limit: 0x80_0000,
        file_offset: 0,
        filename_strindex: exe,
        attribute_indices: vec![],
    });
    let sample_type = ValueType {
        type_strindex: s(&mut d, "samples"),
        unit_strindex: s(&mut d, "count"),
    };
    let period_type = ValueType {
        type_strindex: s(&mut d, "cpu"),
        unit_strindex: s(&mut d, "nanoseconds"),
    };
    let mut samples = Vec::with_capacity(n as usize);
    for seq in first..first + n {
        let mut locs = Vec::new();
        for name in expected_stack(seq, pool) {
            let f = s(&mut d, &name);
            let file = s(&mut d, "src/app.rs");
            d.function_table.push(Function {
                name_strindex: f,
                system_name_strindex: f,
                filename_strindex: file,
                start_line: 10,
            });
            let fi = (d.function_table.len() - 1) as i32;
            let fnum: u64 = name
                .rsplit('_')
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            d.location_table.push(Location {
                mapping_index: 1,
                address: 0x40_1000 + fnum * 0x40,
                lines: vec![Line {
                    function_index: fi,
                    line: 10 + fnum as i64,
                    column: 0,
                }],
                attribute_indices: vec![],
            });
            locs.push((d.location_table.len() - 1) as i32);
        }
        d.stack_table.push(Stack {
            location_indices: locs,
        });
        let stack_index = (d.stack_table.len() - 1) as i32;
        let key = s(&mut d, SEQ_KEY);
        d.attribute_table.push(KeyValueAndUnit {
            key_strindex: key,
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(seq as i64)),
            }),
            unit_strindex: 0,
        });
        samples.push(Sample {
            stack_index,
            attribute_indices: vec![(d.attribute_table.len() - 1) as i32],
            link_index: 0,
            values: vec![1],
            timestamps_unix_nano: vec![1_700_000_000_000_000_000 + seq],
        });
    }
    ExportProfilesServiceRequest {
        resource_profiles: vec![ResourceProfiles {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(service.into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_profiles: vec![ScopeProfiles {
                scope: Some(InstrumentationScope {
                    name: "synth".into(),
                    ..Default::default()
                }),
                profiles: vec![Profile {
                    sample_type: Some(sample_type),
                    samples,
                    time_unix_nano: 1_700_000_000_000_000_000,
                    duration_nano: 1_000_000_000,
                    period_type: Some(period_type),
                    period: 50_000_000,
                    ..Default::default()
                }],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
        dictionary: Some(d),
    }
}

/// Every sample of `req` as (seq, leaf-first function names, service name).
/// Samples without a `seq` attribute are reported with `u64::MAX`.
pub fn decode_samples(req: &ProfilesRequest) -> Vec<(u64, Vec<String>, String)> {
    let d = super::view::Dict::of(req).0;
    let st = |i: i32| d.string_table.get(i as usize).cloned().unwrap_or_default();
    let mut out = Vec::new();
    for rp in &req.resource_profiles {
        let service = rp
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for p in rp.scope_profiles.iter().flat_map(|s| &s.profiles) {
            for s in &p.samples {
                let seq = s
                    .attribute_indices
                    .iter()
                    .filter_map(|&a| d.attribute_table.get(a as usize))
                    .find(|a| st(a.key_strindex) == SEQ_KEY)
                    .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                        any_value::Value::IntValue(v) => Some(*v as u64),
                        _ => None,
                    })
                    .unwrap_or(u64::MAX);
                let names = d
                    .stack_table
                    .get(s.stack_index as usize)
                    .map(|s| s.location_indices.clone())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|&l| d.location_table.get(l as usize))
                    .filter_map(|l| l.lines.first())
                    .filter_map(|line| d.function_table.get(line.function_index as usize))
                    .map(|f| st(f.name_strindex))
                    .collect();
                out.push((seq, names, service.clone()));
            }
        }
    }
    out
}

/// Whether any dictionary table holds the same entry twice (index 0 excluded).
pub fn duplicate_entries(req: &ProfilesRequest) -> Vec<String> {
    use prost::Message;
    use std::collections::HashSet;
    let Some(d) = req.dictionary.as_ref() else {
        return Vec::new();
    };
    fn dups<T: Message>(name: &str, t: &[T], out: &mut Vec<String>) {
        let mut seen = HashSet::new();
        for (i, e) in t.iter().enumerate() {
            if !seen.insert(e.encode_to_vec()) {
                out.push(format!("{name}[{i}]"));
            }
        }
    }
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, s) in d.string_table.iter().enumerate() {
        if !seen.insert(s) {
            out.push(format!("string_table[{i}]"));
        }
    }
    dups("mapping_table", &d.mapping_table, &mut out);
    dups("location_table", &d.location_table, &mut out);
    dups("function_table", &d.function_table, &mut out);
    dups("link_table", &d.link_table, &mut out);
    dups("attribute_table", &d.attribute_table, &mut out);
    dups("stack_table", &d.stack_table, &mut out);
    out
}

/// Where a synthetic native request maps its binary.
pub const NATIVE_BASE: u64 = 0x5555_0000_0000;

/// A request with one sample per virtual address of an ELF file (each a one-frame
/// stack, so each frame is a leaf), mapped as the kernel maps the file's executable
/// segment — `(file offset, vaddr)` — at [`NATIVE_BASE`]. The mapping names
/// `path_in_mapping` and, when given, the build ID; samples carry `pid` when given.
pub fn native_request(
    path_in_mapping: &str,
    build_id: Option<&str>,
    text_segment: (u64, u64),
    vaddrs: &[u64],
    pid: Option<i64>,
) -> ProfilesRequest {
    let (seg_off, seg_vaddr) = text_segment;
    let start = NATIVE_BASE + (seg_vaddr & !0xfff);
    let mut d = zero_dictionary(vec![
        String::new(),
        path_in_mapping.into(),
        "process.executable.build_id.gnu".into(),
        "process.pid".into(),
    ]);
    let attr = |d: &mut ProfilesDictionary, key: i32, v: any_value::Value| {
        d.attribute_table.push(KeyValueAndUnit {
            key_strindex: key,
            value: Some(AnyValue { value: Some(v) }),
            unit_strindex: 0,
        });
        d.attribute_table.len() as i32 - 1
    };
    let mapping_attrs = build_id
        .map(|id| vec![attr(&mut d, 2, any_value::Value::StringValue(id.into()))])
        .unwrap_or_default();
    let sample_attrs = pid
        .map(|p| vec![attr(&mut d, 3, any_value::Value::IntValue(p))])
        .unwrap_or_default();
    d.mapping_table.push(Mapping {
        memory_start: start,
        memory_limit: start + (1 << 40),
        file_offset: seg_off & !0xfff,
        filename_strindex: 1,
        attribute_indices: mapping_attrs,
    });
    let mut samples = Vec::with_capacity(vaddrs.len());
    for &v in vaddrs {
        d.location_table.push(Location {
            mapping_index: 1,
            address: start + (v - (seg_vaddr & !0xfff)),
            lines: vec![],
            attribute_indices: vec![],
        });
        d.stack_table.push(Stack {
            location_indices: vec![d.location_table.len() as i32 - 1],
        });
        samples.push(Sample {
            stack_index: d.stack_table.len() as i32 - 1,
            attribute_indices: sample_attrs.clone(),
            values: vec![1],
            ..Default::default()
        });
    }
    ExportProfilesServiceRequest {
        resource_profiles: vec![ResourceProfiles {
            scope_profiles: vec![ScopeProfiles {
                profiles: vec![Profile {
                    samples,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
        dictionary: Some(d),
    }
}

/// A request with every field of the profiles schema set to something other than its
/// default, every kind of attribute value among them: for encoders and their readers.
pub fn every_field() -> ProfilesRequest {
    use super::common::{ArrayValue, EntityRef, KeyValueList};
    let kv = |k: &str, v: any_value::Value| KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        key_strindex: 0,
    };
    let values = vec![
        kv(
            "s",
            any_value::Value::StringValue("text ü \"quoted\"".into()),
        ),
        kv("b", any_value::Value::BoolValue(true)),
        kv("i", any_value::Value::IntValue(-9_007_199_254_740_993)),
        kv("d", any_value::Value::DoubleValue(1.5)),
        kv(
            "bytes",
            any_value::Value::BytesValue(vec![0, 1, 2, 250, 255]),
        ),
        kv(
            "a",
            any_value::Value::ArrayValue(ArrayValue {
                values: vec![AnyValue {
                    value: Some(any_value::Value::IntValue(7)),
                }],
            }),
        ),
        kv(
            "kv",
            any_value::Value::KvlistValue(KeyValueList {
                values: vec![kv("inner", any_value::Value::StringValue("x".into()))],
            }),
        ),
    ];
    let mut d = zero_dictionary(vec![
        String::new(),
        "samples".into(),
        "count".into(),
        "cpu".into(),
        "nanoseconds".into(),
        "main".into(),
        "/usr/bin/app".into(),
        "key".into(),
    ]);
    d.mapping_table.push(Mapping {
        memory_start: 0x7f00_0000_0000,
        memory_limit: u64::MAX,
        file_offset: 0x1000,
        filename_strindex: 6,
        attribute_indices: vec![1],
    });
    d.function_table.push(Function {
        name_strindex: 5,
        system_name_strindex: 5,
        filename_strindex: 6,
        start_line: 42,
    });
    d.location_table.push(Location {
        mapping_index: 1,
        address: 0x7f00_0000_1234,
        lines: vec![Line {
            function_index: 1,
            line: 43,
            column: 7,
        }],
        attribute_indices: vec![1],
    });
    d.link_table.push(Link {
        trace_id: (1..=16).collect(),
        span_id: (1..=8).collect(),
    });
    d.attribute_table.push(KeyValueAndUnit {
        key_strindex: 7,
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValueStrindex(5)),
        }),
        unit_strindex: 2,
    });
    d.stack_table.push(Stack {
        location_indices: vec![1],
    });
    ExportProfilesServiceRequest {
        resource_profiles: vec![ResourceProfiles {
            resource: Some(Resource {
                attributes: values.clone(),
                dropped_attributes_count: 3,
                entity_refs: vec![EntityRef {
                    schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
                    r#type: "host".into(),
                    id_keys: vec!["host.id".into()],
                    description_keys: vec!["host.name".into()],
                }],
            }),
            scope_profiles: vec![ScopeProfiles {
                scope: Some(InstrumentationScope {
                    name: "stackline".into(),
                    version: "0.1.0".into(),
                    attributes: values,
                    dropped_attributes_count: 1,
                }),
                profiles: vec![Profile {
                    sample_type: Some(ValueType {
                        type_strindex: 1,
                        unit_strindex: 2,
                    }),
                    samples: vec![Sample {
                        stack_index: 1,
                        attribute_indices: vec![1],
                        link_index: 1,
                        values: vec![1, -2],
                        timestamps_unix_nano: vec![1_795_661_213_938_178_723, u64::MAX],
                    }],
                    time_unix_nano: 1_795_661_213_000_000_000,
                    duration_nano: 5_000_000_000,
                    period_type: Some(ValueType {
                        type_strindex: 3,
                        unit_strindex: 4,
                    }),
                    period: 10_101_010,
                    profile_id: (0..16).collect(),
                    dropped_attributes_count: 2,
                    original_payload_format: "pprof".into(),
                    original_payload: vec![0x1f, 0x8b, 0, 255],
                    attribute_indices: vec![1],
                }],
                schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
            }],
            schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
        }],
        dictionary: Some(d),
    }
}

/// `req` as the pipeline carries it; for tests and benches, whose requests are valid.
pub fn valid(req: ProfilesRequest) -> super::Checked {
    super::Checked::new(req).expect("a synthetic request is valid")
}
