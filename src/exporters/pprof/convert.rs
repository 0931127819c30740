//! OTLP profiles → pprof `Profile`s: sample types, period, time and duration, functions,
//! locations with their lines (inlined frames in order) and mappings (with build ID and
//! what symbol information they carry), a deduplicated string table, and sample labels.

use crate::otlp::semconv;
use std::collections::HashMap;

use super::proto;
use crate::otlp::ProfilesRequest;
use crate::otlp::profiles::Profile;
use crate::otlp::view::{self, Dict, as_text, weight};

/// pprof label keys for well-known OTLP sample attributes.
fn label_key(otlp: &str) -> &str {
    match otlp {
        semconv::PROCESS_PID => "pid",
        semconv::THREAD_ID => "tid",
        semconv::THREAD_NAME => "thread_name",
        semconv::CONTAINER_ID => "container_id",
        semconv::PROCESS_EXECUTABLE_NAME => "process_name",
        other => other,
    }
}

/// One pprof profile and what it covers.
pub struct Converted {
    /// With `split_by: process`: the process's pid and executable name.
    pub process: Option<(i64, String)>,
    /// The sample type, e.g. `samples`, when a request held several.
    pub sample_type: String,
    pub profile: proto::Profile,
}

#[derive(Default)]
struct Builder {
    p: proto::Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<i32, u64>,
    locations: HashMap<i32, u64>,
    mappings: HashMap<i32, u64>,
    start: Option<u64>,
    end: u64,
}

impl Builder {
    fn new() -> Self {
        let mut b = Builder::default();
        b.string("");
        b
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.p.string_table.len() as i64;
        self.p.string_table.push(s.to_owned());
        self.strings.insert(s.to_owned(), i);
        i
    }

    fn mapping(&mut self, d: Dict, i: i32) -> u64 {
        let Some(m) = d.mapping(i) else { return 0 };
        if let Some(&id) = self.mappings.get(&i) {
            return id;
        }
        let id = self.p.mapping.len() as u64 + 1;
        let filename = self.string(d.string(m.filename_strindex));
        let bid = d.build_id(m).and_then(Result::ok);
        let build_id = self.string(bid.as_ref().map_or("", |b| b.as_str()));
        self.p.mapping.push(proto::Mapping {
            id,
            memory_start: m.memory_start,
            memory_limit: m.memory_limit,
            file_offset: m.file_offset,
            filename,
            build_id,
            ..Default::default()
        });
        self.mappings.insert(i, id);
        id
    }

    fn function(&mut self, d: Dict, i: i32) -> u64 {
        let Some(f) = d.function(i) else { return 0 };
        if let Some(&id) = self.functions.get(&i) {
            return id;
        }
        let id = self.p.function.len() as u64 + 1;
        let (name, system_name, filename) = (
            self.string(d.string(f.name_strindex)),
            self.string(d.string(f.system_name_strindex)),
            self.string(d.string(f.filename_strindex)),
        );
        self.p.function.push(proto::Function {
            id,
            name,
            system_name,
            filename,
            start_line: f.start_line,
        });
        self.functions.insert(i, id);
        id
    }

    fn location(&mut self, d: Dict, i: i32) -> u64 {
        if let Some(&id) = self.locations.get(&i) {
            return id;
        }
        let Some(l) = d.location(i) else { return 0 };
        let id = self.p.location.len() as u64 + 1;
        let mapping_id = self.mapping(d, l.mapping_index);
        let lines: Vec<proto::Line> = l
            .lines
            .iter()
            .map(|line| proto::Line {
                function_id: self.function(d, line.function_index),
                line: line.line,
                column: line.column,
            })
            .collect();
        if mapping_id > 0 {
            let m = &mut self.p.mapping[mapping_id as usize - 1];
            let named = l.lines.iter().any(|x| {
                d.function(x.function_index)
                    .is_some_and(|f| f.name_strindex > 0)
            });
            let filed = l.lines.iter().any(|x| {
                d.function(x.function_index)
                    .is_some_and(|f| f.filename_strindex > 0)
            });
            m.has_functions |= named;
            m.has_filenames |= filed;
            m.has_line_numbers |= l.lines.iter().any(|x| x.line > 0);
            m.has_inline_frames |= l.lines.len() > 1;
        }
        self.p.location.push(proto::Location {
            id,
            mapping_id,
            address: l.address,
            line: lines,
            is_folded: false,
        });
        self.locations.insert(i, id);
        id
    }

    fn header(&mut self, d: Dict, p: &Profile) {
        if self.p.sample_type.is_empty() {
            let (t, u) = p.sample_type.map_or(("samples", "count"), |vt| {
                (d.string(vt.type_strindex), d.string(vt.unit_strindex))
            });
            let st = proto::ValueType {
                r#type: self.string(t),
                unit: self.string(u),
            };
            self.p.sample_type.push(st);
            if let Some(pt) = p.period_type {
                let pt = proto::ValueType {
                    r#type: self.string(d.string(pt.type_strindex)),
                    unit: self.string(d.string(pt.unit_strindex)),
                };
                self.p.period_type = Some(pt);
                self.p.period = p.period;
            }
        }
        if p.time_unix_nano > 0 {
            self.start = Some(
                self.start
                    .map_or(p.time_unix_nano, |s| s.min(p.time_unix_nano)),
            );
            self.end = self
                .end
                .max(p.time_unix_nano.saturating_add(p.duration_nano));
        }
    }

    fn finish(mut self) -> proto::Profile {
        // pprof takes the first mapping for the main binary: user mappings first,
        // the kernel ([kernel.kallsyms] and modules, in the upper half) last.
        let kernel = |m: &proto::Mapping| {
            m.memory_start >= 0xffff_8000_0000_0000
                || self
                    .p
                    .string_table
                    .get(m.filename as usize)
                    .is_some_and(|f| f == "[kernel.kallsyms]")
        };
        let mut order: Vec<usize> = (0..self.p.mapping.len()).collect();
        order.sort_by_key(|&i| kernel(&self.p.mapping[i]));
        let mut new_id = vec![0u64; self.p.mapping.len() + 1];
        let mut mappings = Vec::with_capacity(order.len());
        for (pos, &i) in order.iter().enumerate() {
            let mut m = self.p.mapping[i].clone();
            new_id[m.id as usize] = pos as u64 + 1;
            m.id = pos as u64 + 1;
            mappings.push(m);
        }
        self.p.mapping = mappings;
        for l in &mut self.p.location {
            l.mapping_id = new_id.get(l.mapping_id as usize).copied().unwrap_or(0);
        }
        if let Some(s) = self.start {
            self.p.time_nanos = s as i64;
            self.p.duration_nanos = self.end.saturating_sub(s) as i64;
        }
        self.p
    }
}

/// Converts a request: one profile per sample type, and per process with `split`.
///
/// Linear in samples plus distinct stacks: samples with the same stack and attributes
/// become one pprof sample carrying their summed weight (pprof readers sum them anyway),
/// so a stack's location list is built once, not once per sample.
pub fn convert(req: &ProfilesRequest, split: bool) -> Vec<Converted> {
    use std::collections::hash_map::Entry;
    let d = Dict::of(req);
    // (sample type, process when split) → its profile under construction.
    type Key = (String, Option<(i64, String)>);
    let mut builders: Vec<(Key, Builder)> = Vec::new();
    let mut by_key: HashMap<Key, usize> = HashMap::new();
    // (builder, stack, attributes) → that builder's pprof sample for them.
    let mut merged: HashMap<(usize, i32, &[i32]), usize> = HashMap::new();
    for p in view::profiles(req) {
        let sample_type = p
            .sample_type
            .map_or("samples", |vt| d.string(vt.type_strindex));
        // Within a profile, equal attributes mean the same process: looked up once.
        let mut builder_of: HashMap<&[i32], usize> = HashMap::new();
        for s in &p.samples {
            let attrs = s.attribute_indices.as_slice();
            let idx = match builder_of.get(attrs) {
                Some(&i) => i,
                None => {
                    let process = split.then(|| {
                        let (pid, exe) = d.process(attrs);
                        (pid, exe.unwrap_or_default())
                    });
                    let i = *by_key
                        .entry((sample_type.to_owned(), process))
                        .or_insert_with_key(|k| {
                            builders.push((k.clone(), Builder::new()));
                            builders.len() - 1
                        });
                    builders[i].1.header(d, p);
                    builder_of.insert(attrs, i);
                    i
                }
            };
            let b = &mut builders[idx].1;
            let w = weight(s);
            match merged.entry((idx, s.stack_index, attrs)) {
                Entry::Occupied(e) => {
                    let v = &mut b.p.sample[*e.get()].value[0];
                    *v = v.saturating_add(w);
                }
                Entry::Vacant(e) => {
                    let location_id = d
                        .stack(s.stack_index)
                        .iter()
                        .map(|&l| b.location(d, l))
                        .filter(|&id| id > 0)
                        .collect();
                    let label = labels(b, d, attrs);
                    e.insert(b.p.sample.len());
                    b.p.sample.push(proto::Sample {
                        location_id,
                        value: vec![w],
                        label,
                    });
                }
            }
        }
    }
    builders
        .into_iter()
        .map(|((sample_type, process), b)| Converted {
            process,
            sample_type,
            profile: b.finish(),
        })
        .collect()
}

/// A sample's attributes as pprof labels: integers as `num`, the rest as text.
fn labels(b: &mut Builder, d: Dict, attrs: &[i32]) -> Vec<proto::Label> {
    attrs
        .iter()
        .filter_map(|&a| d.attribute(a))
        .filter_map(|(k, v)| {
            let key = b.string(label_key(k));
            match v.value.as_ref()? {
                crate::otlp::common::any_value::Value::IntValue(n) => Some(proto::Label {
                    key,
                    num: *n,
                    ..Default::default()
                }),
                _ => {
                    let text = as_text(v)?;
                    Some(proto::Label {
                        key,
                        str: b.string(&text),
                        ..Default::default()
                    })
                }
            }
        })
        .collect()
}

/// gzip-compressed protobuf, as pprof files and the HTTP endpoint carry it.
pub fn encode_gzip(p: &proto::Profile) -> std::io::Result<Vec<u8>> {
    use prost::Message;
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&p.encode_to_vec())?;
    gz.finish()
}
