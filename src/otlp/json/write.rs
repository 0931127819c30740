//! The writing half: builds the JSON tree of a request field by field, leaving out
//! defaults, then serializes it. Requests written are ours, so their size is bounded by
//! what we hold in memory already.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::otlp::ProfilesRequest;
use crate::otlp::common::{AnyValue, EntityRef, InstrumentationScope, KeyValue, any_value};
use crate::otlp::profiles::{
    Function, KeyValueAndUnit, Line, Link, Location, Mapping, Profile, ProfilesDictionary,
    ResourceProfiles, Sample, ScopeProfiles, Stack, ValueType,
};
use crate::otlp::resource::Resource;

/// One request as OTLP/JSON (one line: no newlines inside).
pub fn to_vec(req: &ProfilesRequest) -> Vec<u8> {
    serde_json::to_vec(&request(req)).unwrap_or_default()
}

/// Builds an object from (key, value) pairs, leaving out `None`s.
fn obj(fields: impl IntoIterator<Item = (&'static str, Option<Value>)>) -> Value {
    let mut m = Map::new();
    for (k, v) in fields {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    }
    Value::Object(m)
}

fn u64s(v: u64) -> Option<Value> {
    (v != 0).then(|| Value::String(v.to_string()))
}
fn i64s(v: i64) -> Option<Value> {
    (v != 0).then(|| Value::String(v.to_string()))
}
fn i32n(v: i32) -> Option<Value> {
    (v != 0).then(|| json!(v))
}
fn u32n(v: u32) -> Option<Value> {
    (v != 0).then(|| json!(v))
}
fn text(v: &str) -> Option<Value> {
    (!v.is_empty()).then(|| Value::String(v.to_owned()))
}
fn b64(v: &[u8]) -> Option<Value> {
    (!v.is_empty()).then(|| Value::String(base64::engine::general_purpose::STANDARD.encode(v)))
}
fn hex(v: &[u8]) -> Option<Value> {
    (!v.is_empty()).then(|| Value::String(v.iter().map(|b| format!("{b:02x}")).collect()))
}
fn list<T>(items: &[T], f: impl Fn(&T) -> Value) -> Option<Value> {
    (!items.is_empty()).then(|| Value::Array(items.iter().map(f).collect()))
}
fn i32s(v: &[i32]) -> Option<Value> {
    list(v, |x| json!(x))
}

fn request(r: &ProfilesRequest) -> Value {
    obj([
        (
            "resourceProfiles",
            list(&r.resource_profiles, resource_profiles),
        ),
        ("dictionary", r.dictionary.as_ref().map(dictionary)),
    ])
}

fn resource_profiles(r: &ResourceProfiles) -> Value {
    obj([
        ("resource", r.resource.as_ref().map(resource)),
        ("scopeProfiles", list(&r.scope_profiles, scope_profiles)),
        ("schemaUrl", text(&r.schema_url)),
    ])
}

fn resource(r: &Resource) -> Value {
    obj([
        ("attributes", list(&r.attributes, key_value)),
        ("droppedAttributesCount", u32n(r.dropped_attributes_count)),
        ("entityRefs", list(&r.entity_refs, entity_ref)),
    ])
}

fn entity_ref(e: &EntityRef) -> Value {
    obj([
        ("schemaUrl", text(&e.schema_url)),
        ("type", text(&e.r#type)),
        ("idKeys", list(&e.id_keys, |k| json!(k))),
        ("descriptionKeys", list(&e.description_keys, |k| json!(k))),
    ])
}

fn scope_profiles(s: &ScopeProfiles) -> Value {
    obj([
        ("scope", s.scope.as_ref().map(scope)),
        ("profiles", list(&s.profiles, profile)),
        ("schemaUrl", text(&s.schema_url)),
    ])
}

fn scope(s: &InstrumentationScope) -> Value {
    obj([
        ("name", text(&s.name)),
        ("version", text(&s.version)),
        ("attributes", list(&s.attributes, key_value)),
        ("droppedAttributesCount", u32n(s.dropped_attributes_count)),
    ])
}

fn value_type(v: &ValueType) -> Value {
    obj([
        ("typeStrindex", i32n(v.type_strindex)),
        ("unitStrindex", i32n(v.unit_strindex)),
    ])
}

fn profile(p: &Profile) -> Value {
    obj([
        ("sampleType", p.sample_type.as_ref().map(value_type)),
        ("samples", list(&p.samples, sample)),
        ("timeUnixNano", u64s(p.time_unix_nano)),
        ("durationNano", u64s(p.duration_nano)),
        ("periodType", p.period_type.as_ref().map(value_type)),
        ("period", i64s(p.period)),
        ("profileId", hex(&p.profile_id)),
        ("droppedAttributesCount", u32n(p.dropped_attributes_count)),
        ("originalPayloadFormat", text(&p.original_payload_format)),
        ("originalPayload", b64(&p.original_payload)),
        ("attributeIndices", i32s(&p.attribute_indices)),
    ])
}

fn sample(s: &Sample) -> Value {
    obj([
        ("stackIndex", i32n(s.stack_index)),
        ("attributeIndices", i32s(&s.attribute_indices)),
        ("linkIndex", i32n(s.link_index)),
        ("values", list(&s.values, |v| json!(v.to_string()))),
        (
            "timestampsUnixNano",
            list(&s.timestamps_unix_nano, |v| json!(v.to_string())),
        ),
    ])
}

fn dictionary(d: &ProfilesDictionary) -> Value {
    obj([
        ("mappingTable", list(&d.mapping_table, mapping)),
        ("locationTable", list(&d.location_table, location)),
        ("functionTable", list(&d.function_table, function)),
        ("linkTable", list(&d.link_table, link)),
        ("stringTable", list(&d.string_table, |s| json!(s))),
        (
            "attributeTable",
            list(&d.attribute_table, key_value_and_unit),
        ),
        ("stackTable", list(&d.stack_table, stack)),
    ])
}

fn mapping(m: &Mapping) -> Value {
    obj([
        ("memoryStart", u64s(m.memory_start)),
        ("memoryLimit", u64s(m.memory_limit)),
        ("fileOffset", u64s(m.file_offset)),
        ("filenameStrindex", i32n(m.filename_strindex)),
        ("attributeIndices", i32s(&m.attribute_indices)),
    ])
}

fn location(l: &Location) -> Value {
    obj([
        ("mappingIndex", i32n(l.mapping_index)),
        ("address", u64s(l.address)),
        ("lines", list(&l.lines, line)),
        ("attributeIndices", i32s(&l.attribute_indices)),
    ])
}

fn line(l: &Line) -> Value {
    obj([
        ("functionIndex", i32n(l.function_index)),
        ("line", i64s(l.line)),
        ("column", i64s(l.column)),
    ])
}

fn function(f: &Function) -> Value {
    obj([
        ("nameStrindex", i32n(f.name_strindex)),
        ("systemNameStrindex", i32n(f.system_name_strindex)),
        ("filenameStrindex", i32n(f.filename_strindex)),
        ("startLine", i64s(f.start_line)),
    ])
}

fn link(l: &Link) -> Value {
    obj([("traceId", hex(&l.trace_id)), ("spanId", hex(&l.span_id))])
}

fn stack(s: &Stack) -> Value {
    obj([("locationIndices", i32s(&s.location_indices))])
}

fn key_value_and_unit(a: &KeyValueAndUnit) -> Value {
    obj([
        ("keyStrindex", i32n(a.key_strindex)),
        ("value", a.value.as_ref().map(any_value)),
        ("unitStrindex", i32n(a.unit_strindex)),
    ])
}

fn key_value(kv: &KeyValue) -> Value {
    obj([
        ("key", text(&kv.key)),
        ("value", kv.value.as_ref().map(any_value)),
        ("keyStrindex", i32n(kv.key_strindex)),
    ])
}

fn any_value(v: &AnyValue) -> Value {
    use any_value::Value as V;
    match &v.value {
        None => json!({}),
        Some(V::StringValue(s)) => json!({ "stringValue": s }),
        Some(V::BoolValue(b)) => json!({ "boolValue": b }),
        Some(V::IntValue(i)) => json!({ "intValue": i.to_string() }),
        // JSON has no NaN or infinities: the protobuf mapping spells them as strings.
        Some(V::DoubleValue(d)) if d.is_nan() => json!({ "doubleValue": "NaN" }),
        Some(V::DoubleValue(d)) if d.is_infinite() => {
            json!({ "doubleValue": if *d > 0.0 { "Infinity" } else { "-Infinity" } })
        }
        Some(V::DoubleValue(d)) => json!({ "doubleValue": d }),
        Some(V::ArrayValue(a)) => {
            json!({ "arrayValue": obj([("values", list(&a.values, any_value))]) })
        }
        Some(V::KvlistValue(l)) => {
            json!({ "kvlistValue": obj([("values", list(&l.values, key_value))]) })
        }
        Some(V::BytesValue(b)) => json!({
            "bytesValue": base64::engine::general_purpose::STANDARD.encode(b)
        }),
        Some(V::StringValueStrindex(i)) => json!({ "stringValueStrindex": i }),
    }
}
