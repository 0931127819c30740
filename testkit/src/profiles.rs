//! Reading profiles back: OTLP/JSON lines, samples flattened into frames, and the official Python parser as an independent reader.

use std::path::Path;

use stackline::otlp::ProfilesRequest;

/// Every request in an OTLP/JSON-lines file.
pub fn read_json_lines(path: &Path) -> Vec<ProfilesRequest> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| stackline::otlp::json::from_slice(l.as_bytes()).unwrap())
        .collect()
}

/// One frame of a decoded sample.
#[derive(Debug, Clone)]
pub struct Frame {
    pub address: u64,
    pub mapping_start: u64,
    pub mapping_limit: u64,
    pub file_offset: u64,
    pub filename: String,
    pub build_id: Option<String>,
    /// `kernel` or `native`.
    pub frame_type: String,
    /// `frame_pointer` when a native walk reached this frame by frame pointer, else empty.
    pub unwind_method: String,
    /// Function names of the location's lines, innermost first (after symbolization).
    pub functions: Vec<String>,
}

/// A sample with its attributes and frames (leaf first), resolved through the dictionary.
#[derive(Debug, Clone)]
pub struct FlatSample {
    pub attrs: std::collections::BTreeMap<String, String>,
    pub frames: Vec<Frame>,
    pub timestamps: Vec<u64>,
    pub profile_time: u64,
    pub profile_duration: u64,
    pub period: i64,
    pub types: (String, String, String, String),
    pub host: String,
}

fn any_to_string(v: &Option<stackline::otlp::common::AnyValue>) -> String {
    use stackline::otlp::common::any_value::Value;
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

/// Flattens every sample of `req`.
pub fn flatten(req: &ProfilesRequest) -> Vec<FlatSample> {
    let d = req.dictionary.clone().unwrap_or_default();
    let s = |i: i32| d.string_table.get(i as usize).cloned().unwrap_or_default();
    let attr = |i: i32| {
        let a = d
            .attribute_table
            .get(i as usize)
            .cloned()
            .unwrap_or_default();
        (s(a.key_strindex), any_to_string(&a.value))
    };
    let mut out = Vec::new();
    for rp in &req.resource_profiles {
        let host = rp
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "host.name"))
            .map(|kv| any_to_string(&kv.value))
            .unwrap_or_default();
        for p in rp.scope_profiles.iter().flat_map(|s| &s.profiles) {
            let st = p.sample_type.unwrap_or_default();
            let pt = p.period_type.unwrap_or_default();
            for smp in &p.samples {
                let frames: Vec<Frame> = d
                    .stack_table
                    .get(smp.stack_index as usize)
                    .map(|s| s.location_indices.clone())
                    .unwrap_or_default()
                    .iter()
                    .map(|&li| {
                        let l = d.location_table[li as usize].clone();
                        let m = d.mapping_table[l.mapping_index as usize].clone();
                        let mattrs: Vec<(String, String)> =
                            m.attribute_indices.iter().map(|&a| attr(a)).collect();
                        let lattrs: Vec<(String, String)> =
                            l.attribute_indices.iter().map(|&a| attr(a)).collect();
                        Frame {
                            address: l.address,
                            mapping_start: m.memory_start,
                            mapping_limit: m.memory_limit,
                            file_offset: m.file_offset,
                            filename: s(m.filename_strindex),
                            build_id: mattrs
                                .iter()
                                .find(|(k, _)| k == "process.executable.build_id.gnu")
                                .map(|(_, v)| v.clone()),
                            frame_type: lattrs
                                .iter()
                                .find(|(k, _)| k == "profile.frame.type")
                                .map(|(_, v)| v.clone())
                                .unwrap_or_default(),
                            unwind_method: lattrs
                                .iter()
                                .find(|(k, _)| k == "stackline.unwind.method")
                                .map(|(_, v)| v.clone())
                                .unwrap_or_default(),
                            functions: l
                                .lines
                                .iter()
                                .map(|line| {
                                    s(d.function_table[line.function_index as usize].name_strindex)
                                })
                                .collect(),
                        }
                    })
                    .collect();
                // A Sample with a timestamp per event (and no values) stands for as many
                // events: one FlatSample each, so tests count events.
                let events: Vec<Vec<u64>> =
                    if smp.values.is_empty() && smp.timestamps_unix_nano.len() > 1 {
                        smp.timestamps_unix_nano.iter().map(|&t| vec![t]).collect()
                    } else {
                        vec![smp.timestamps_unix_nano.clone()]
                    };
                for timestamps in events {
                    out.push(FlatSample {
                        attrs: smp.attribute_indices.iter().map(|&a| attr(a)).collect(),
                        frames: frames.clone(),
                        timestamps,
                        profile_time: p.time_unix_nano,
                        profile_duration: p.duration_nano,
                        period: p.period,
                        types: (
                            s(st.type_strindex),
                            s(st.unit_strindex),
                            s(pt.type_strindex),
                            s(pt.unit_strindex),
                        ),
                        host: host.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Parses each OTLP/JSON line of `path` with the official parser and returns the
/// requests it read, as protobuf decoded here; None if Python or the protos are missing.
pub fn official_parse(path: &Path) -> Option<Vec<ProfilesRequest>> {
    let script = r#"
import sys
from google.protobuf import json_format
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as p
out = open(sys.argv[2], "wb")
for n, line in enumerate(open(sys.argv[1], encoding="utf-8")):
    m = p.ExportProfilesServiceRequest()
    try:
        json_format.Parse(line, m)
    except Exception as e:
        sys.exit(f"line {n + 1}: {e}")
    b = m.SerializeToString()
    out.write(len(b).to_bytes(4, "big") + b)
"#;
    let out = path.with_extension("official.binpb");
    let r = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .arg(&out)
        .output();
    match r {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            if err.contains("No module named") {
                stackline::testing::skip(
                    "OTLP/JSON conformance",
                    "pip install opentelemetry-proto==1.45.2 (.ci/run installs it)",
                );
                return None;
            }
            panic!("the official parser refused the file: {err}");
        }
        Err(e) => {
            stackline::testing::skip("OTLP/JSON conformance", &format!("python3: {e}"));
            return None;
        }
    }
    let bytes = std::fs::read(&out).unwrap();
    let mut rest = &bytes[..];
    let mut reqs = Vec::new();
    while !rest.is_empty() {
        let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        reqs.push(<ProfilesRequest as prost::Message>::decode(&rest[4..4 + n]).unwrap());
        rest = &rest[4 + n..];
    }
    Some(reqs)
}
