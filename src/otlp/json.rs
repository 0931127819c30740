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
//! Written by hand for the profiles schema: the serde derives of the generated types
//! write bytes as arrays and empty messages as `null`, which conformant readers refuse.

use base64::Engine;
use serde_json::{Map, Value, json};

use super::ProfilesRequest;
use super::common::{
    AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use super::profiles::{
    Function, KeyValueAndUnit, Line, Link, Location, Mapping, Profile, ProfilesDictionary,
    ResourceProfiles, Sample, ScopeProfiles, Stack, ValueType,
};
use super::resource::Resource;

/// One request as OTLP/JSON (one line: no newlines inside).
pub fn to_vec(req: &ProfilesRequest) -> Vec<u8> {
    serde_json::to_vec(&request(req)).unwrap_or_default()
}

/// Why a JSON body is not an OTLP profiles request.
#[derive(Debug, thiserror::Error)]
#[error("not OTLP/JSON: {0}")]
pub struct JsonError(String);

/// Parses an OTLP/JSON `ExportProfilesServiceRequest`.
pub fn from_slice(bytes: &[u8]) -> Result<ProfilesRequest, JsonError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| JsonError(e.to_string()))?;
    let mut p = Parser { path: Vec::new() };
    p.request(&v)
}

// ---------------------------------------------------------------- writing

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

// ---------------------------------------------------------------- reading

/// Reads values into messages, keeping the path for error messages.
struct Parser {
    path: Vec<String>,
}

/// Nested arrays deeper than this are refused (a request is not a tree that deep).
const MAX_DEPTH: usize = 32;

impl Parser {
    fn err(&self, what: impl std::fmt::Display) -> JsonError {
        JsonError(format!("{}: {what}", self.path.join(".")))
    }

    fn at<T>(
        &mut self,
        name: impl Into<String>,
        f: impl FnOnce(&mut Self) -> Result<T, JsonError>,
    ) -> Result<T, JsonError> {
        if self.path.len() > MAX_DEPTH {
            return Err(self.err("nested too deep"));
        }
        self.path.push(name.into());
        let r = f(self);
        self.path.pop();
        r
    }

    /// The object's field `camel` (or its snake_case `snake`); None when absent or null.
    fn field<'v>(&self, o: &'v Value, camel: &str, snake: &str) -> Option<&'v Value> {
        let m = o.as_object()?;
        m.get(camel)
            .or_else(|| m.get(snake))
            .filter(|v| !v.is_null())
    }

    fn object<'v>(&self, v: &'v Value) -> Result<&'v Value, JsonError> {
        if v.is_object() {
            Ok(v)
        } else {
            Err(self.err(format!("expected an object, found {}", kind(v))))
        }
    }

    fn u64(&self, v: &Value) -> Result<u64, JsonError> {
        match v {
            Value::Number(n) => n
                .as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                        .map(|f| f as u64)
                })
                .ok_or_else(|| self.err(format!("{n} is not an unsigned 64-bit integer"))),
            Value::String(s) => s
                .parse()
                .map_err(|_| self.err(format!("`{s}` is not an unsigned 64-bit integer"))),
            other => Err(self.err(format!("expected an integer, found {}", kind(other)))),
        }
    }

    fn i64(&self, v: &Value) -> Result<i64, JsonError> {
        match v {
            Value::Number(n) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                .ok_or_else(|| self.err(format!("{n} is not a 64-bit integer"))),
            Value::String(s) => s
                .parse()
                .map_err(|_| self.err(format!("`{s}` is not a 64-bit integer"))),
            other => Err(self.err(format!("expected an integer, found {}", kind(other)))),
        }
    }

    fn i32(&self, v: &Value) -> Result<i32, JsonError> {
        let n = self.i64(v)?;
        i32::try_from(n).map_err(|_| self.err(format!("{n} does not fit 32 bits")))
    }

    fn u32(&self, v: &Value) -> Result<u32, JsonError> {
        let n = self.u64(v)?;
        u32::try_from(n).map_err(|_| self.err(format!("{n} does not fit 32 bits")))
    }

    fn string(&self, v: &Value) -> Result<String, JsonError> {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| self.err(format!("expected a string, found {}", kind(v))))
    }

    fn bytes_b64(&self, v: &Value) -> Result<Vec<u8>, JsonError> {
        let s = self.string(v)?;
        let e = &base64::engine::general_purpose::STANDARD;
        e.decode(&s)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(&s))
            .map_err(|e| self.err(format!("not base64: {e}")))
    }

    fn bytes_hex(&self, v: &Value) -> Result<Vec<u8>, JsonError> {
        let s = self.string(v)?;
        if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.err(format!("`{s}` is not hex")));
        }
        Ok((0..s.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
            .collect())
    }

    fn list<T>(
        &mut self,
        o: &Value,
        camel: &str,
        snake: &str,
        mut f: impl FnMut(&mut Self, &Value) -> Result<T, JsonError>,
    ) -> Result<Vec<T>, JsonError> {
        let Some(v) = self.field(o, camel, snake) else {
            return Ok(Vec::new());
        };
        let Some(items) = v.as_array() else {
            return Err(self.err(format!("{camel}: expected an array, found {}", kind(v))));
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            out.push(self.at(format!("{camel}[{i}]"), |p| f(p, item))?);
        }
        Ok(out)
    }

    fn opt<T>(
        &mut self,
        o: &Value,
        camel: &str,
        snake: &str,
        f: impl FnOnce(&mut Self, &Value) -> Result<T, JsonError>,
    ) -> Result<Option<T>, JsonError> {
        match self.field(o, camel, snake) {
            None => Ok(None),
            Some(v) => self.at(camel, |p| f(p, v)).map(Some),
        }
    }

    fn scalar<T: Default>(
        &mut self,
        o: &Value,
        camel: &str,
        snake: &str,
        f: impl FnOnce(&Self, &Value) -> Result<T, JsonError>,
    ) -> Result<T, JsonError> {
        match self.field(o, camel, snake) {
            None => Ok(T::default()),
            Some(v) => self.at(camel, |p| f(p, v)),
        }
    }

    fn request(&mut self, v: &Value) -> Result<ProfilesRequest, JsonError> {
        let o = self.object(v)?;
        Ok(ProfilesRequest {
            resource_profiles: self.list(o, "resourceProfiles", "resource_profiles", |p, v| {
                p.resource_profiles(v)
            })?,
            dictionary: self.opt(o, "dictionary", "dictionary", |p, v| p.dictionary(v))?,
        })
    }

    fn resource_profiles(&mut self, v: &Value) -> Result<ResourceProfiles, JsonError> {
        let o = self.object(v)?;
        Ok(ResourceProfiles {
            resource: self.opt(o, "resource", "resource", |p, v| p.resource(v))?,
            scope_profiles: self.list(o, "scopeProfiles", "scope_profiles", |p, v| {
                p.scope_profiles(v)
            })?,
            schema_url: self.scalar(o, "schemaUrl", "schema_url", Self::string)?,
        })
    }

    fn resource(&mut self, v: &Value) -> Result<Resource, JsonError> {
        let o = self.object(v)?;
        Ok(Resource {
            attributes: self.list(o, "attributes", "attributes", |p, v| p.key_value(v))?,
            dropped_attributes_count: self.scalar(
                o,
                "droppedAttributesCount",
                "dropped_attributes_count",
                Self::u32,
            )?,
            entity_refs: self.list(o, "entityRefs", "entity_refs", |p, v| p.entity_ref(v))?,
        })
    }

    fn entity_ref(&mut self, v: &Value) -> Result<EntityRef, JsonError> {
        let o = self.object(v)?;
        Ok(EntityRef {
            schema_url: self.scalar(o, "schemaUrl", "schema_url", Self::string)?,
            r#type: self.scalar(o, "type", "type", Self::string)?,
            id_keys: self.list(o, "idKeys", "id_keys", |p, v| p.string(v))?,
            description_keys: self
                .list(o, "descriptionKeys", "description_keys", |p, v| p.string(v))?,
        })
    }

    fn scope_profiles(&mut self, v: &Value) -> Result<ScopeProfiles, JsonError> {
        let o = self.object(v)?;
        Ok(ScopeProfiles {
            scope: self.opt(o, "scope", "scope", |p, v| p.scope(v))?,
            profiles: self.list(o, "profiles", "profiles", |p, v| p.profile(v))?,
            schema_url: self.scalar(o, "schemaUrl", "schema_url", Self::string)?,
        })
    }

    fn scope(&mut self, v: &Value) -> Result<InstrumentationScope, JsonError> {
        let o = self.object(v)?;
        Ok(InstrumentationScope {
            name: self.scalar(o, "name", "name", Self::string)?,
            version: self.scalar(o, "version", "version", Self::string)?,
            attributes: self.list(o, "attributes", "attributes", |p, v| p.key_value(v))?,
            dropped_attributes_count: self.scalar(
                o,
                "droppedAttributesCount",
                "dropped_attributes_count",
                Self::u32,
            )?,
        })
    }

    fn value_type(&mut self, v: &Value) -> Result<ValueType, JsonError> {
        let o = self.object(v)?;
        Ok(ValueType {
            type_strindex: self.scalar(o, "typeStrindex", "type_strindex", Self::i32)?,
            unit_strindex: self.scalar(o, "unitStrindex", "unit_strindex", Self::i32)?,
        })
    }

    fn profile(&mut self, v: &Value) -> Result<Profile, JsonError> {
        let o = self.object(v)?;
        Ok(Profile {
            sample_type: self.opt(o, "sampleType", "sample_type", |p, v| p.value_type(v))?,
            samples: self.list(o, "samples", "samples", |p, v| p.sample(v))?,
            time_unix_nano: self.scalar(o, "timeUnixNano", "time_unix_nano", Self::u64)?,
            duration_nano: self.scalar(o, "durationNano", "duration_nano", Self::u64)?,
            period_type: self.opt(o, "periodType", "period_type", |p, v| p.value_type(v))?,
            period: self.scalar(o, "period", "period", Self::i64)?,
            profile_id: self.scalar(o, "profileId", "profile_id", Self::bytes_hex)?,
            dropped_attributes_count: self.scalar(
                o,
                "droppedAttributesCount",
                "dropped_attributes_count",
                Self::u32,
            )?,
            original_payload_format: self.scalar(
                o,
                "originalPayloadFormat",
                "original_payload_format",
                Self::string,
            )?,
            original_payload: self.scalar(
                o,
                "originalPayload",
                "original_payload",
                Self::bytes_b64,
            )?,
            attribute_indices: self
                .list(o, "attributeIndices", "attribute_indices", |p, v| p.i32(v))?,
        })
    }

    fn sample(&mut self, v: &Value) -> Result<Sample, JsonError> {
        let o = self.object(v)?;
        Ok(Sample {
            stack_index: self.scalar(o, "stackIndex", "stack_index", Self::i32)?,
            attribute_indices: self
                .list(o, "attributeIndices", "attribute_indices", |p, v| p.i32(v))?,
            link_index: self.scalar(o, "linkIndex", "link_index", Self::i32)?,
            values: self.list(o, "values", "values", |p, v| p.i64(v))?,
            timestamps_unix_nano: self.list(
                o,
                "timestampsUnixNano",
                "timestamps_unix_nano",
                |p, v| p.u64(v),
            )?,
        })
    }

    fn dictionary(&mut self, v: &Value) -> Result<ProfilesDictionary, JsonError> {
        let o = self.object(v)?;
        Ok(ProfilesDictionary {
            mapping_table: self.list(o, "mappingTable", "mapping_table", |p, v| p.mapping(v))?,
            location_table: self
                .list(o, "locationTable", "location_table", |p, v| p.location(v))?,
            function_table: self
                .list(o, "functionTable", "function_table", |p, v| p.function(v))?,
            link_table: self.list(o, "linkTable", "link_table", |p, v| p.link(v))?,
            string_table: self.list(o, "stringTable", "string_table", |p, v| p.string(v))?,
            attribute_table: self.list(o, "attributeTable", "attribute_table", |p, v| {
                p.key_value_and_unit(v)
            })?,
            stack_table: self.list(o, "stackTable", "stack_table", |p, v| p.stack(v))?,
        })
    }

    fn mapping(&mut self, v: &Value) -> Result<Mapping, JsonError> {
        let o = self.object(v)?;
        Ok(Mapping {
            memory_start: self.scalar(o, "memoryStart", "memory_start", Self::u64)?,
            memory_limit: self.scalar(o, "memoryLimit", "memory_limit", Self::u64)?,
            file_offset: self.scalar(o, "fileOffset", "file_offset", Self::u64)?,
            filename_strindex: self.scalar(
                o,
                "filenameStrindex",
                "filename_strindex",
                Self::i32,
            )?,
            attribute_indices: self
                .list(o, "attributeIndices", "attribute_indices", |p, v| p.i32(v))?,
        })
    }

    fn location(&mut self, v: &Value) -> Result<Location, JsonError> {
        let o = self.object(v)?;
        Ok(Location {
            mapping_index: self.scalar(o, "mappingIndex", "mapping_index", Self::i32)?,
            address: self.scalar(o, "address", "address", Self::u64)?,
            lines: self.list(o, "lines", "lines", |p, v| p.line(v))?,
            attribute_indices: self
                .list(o, "attributeIndices", "attribute_indices", |p, v| p.i32(v))?,
        })
    }

    fn line(&mut self, v: &Value) -> Result<Line, JsonError> {
        let o = self.object(v)?;
        Ok(Line {
            function_index: self.scalar(o, "functionIndex", "function_index", Self::i32)?,
            line: self.scalar(o, "line", "line", Self::i64)?,
            column: self.scalar(o, "column", "column", Self::i64)?,
        })
    }

    fn function(&mut self, v: &Value) -> Result<Function, JsonError> {
        let o = self.object(v)?;
        Ok(Function {
            name_strindex: self.scalar(o, "nameStrindex", "name_strindex", Self::i32)?,
            system_name_strindex: self.scalar(
                o,
                "systemNameStrindex",
                "system_name_strindex",
                Self::i32,
            )?,
            filename_strindex: self.scalar(
                o,
                "filenameStrindex",
                "filename_strindex",
                Self::i32,
            )?,
            start_line: self.scalar(o, "startLine", "start_line", Self::i64)?,
        })
    }

    fn link(&mut self, v: &Value) -> Result<Link, JsonError> {
        let o = self.object(v)?;
        Ok(Link {
            trace_id: self.scalar(o, "traceId", "trace_id", Self::bytes_hex)?,
            span_id: self.scalar(o, "spanId", "span_id", Self::bytes_hex)?,
        })
    }

    fn stack(&mut self, v: &Value) -> Result<Stack, JsonError> {
        let o = self.object(v)?;
        Ok(Stack {
            location_indices: self
                .list(o, "locationIndices", "location_indices", |p, v| p.i32(v))?,
        })
    }

    fn key_value_and_unit(&mut self, v: &Value) -> Result<KeyValueAndUnit, JsonError> {
        let o = self.object(v)?;
        Ok(KeyValueAndUnit {
            key_strindex: self.scalar(o, "keyStrindex", "key_strindex", Self::i32)?,
            value: self.opt(o, "value", "value", |p, v| p.any_value(v))?,
            unit_strindex: self.scalar(o, "unitStrindex", "unit_strindex", Self::i32)?,
        })
    }

    fn key_value(&mut self, v: &Value) -> Result<KeyValue, JsonError> {
        let o = self.object(v)?;
        Ok(KeyValue {
            key: self.scalar(o, "key", "key", Self::string)?,
            value: self.opt(o, "value", "value", |p, v| p.any_value(v))?,
            key_strindex: self.scalar(o, "keyStrindex", "key_strindex", Self::i32)?,
        })
    }

    fn any_value(&mut self, v: &Value) -> Result<AnyValue, JsonError> {
        use any_value::Value as V;
        let o = self.object(v)?;
        let value = if let Some(s) = self.field(o, "stringValue", "string_value") {
            Some(V::StringValue(self.at("stringValue", |p| p.string(s))?))
        } else if let Some(b) = self.field(o, "boolValue", "bool_value") {
            Some(V::BoolValue(b.as_bool().ok_or_else(|| {
                self.err("boolValue: expected true or false")
            })?))
        } else if let Some(i) = self.field(o, "intValue", "int_value") {
            Some(V::IntValue(self.at("intValue", |p| p.i64(i))?))
        } else if let Some(d) = self.field(o, "doubleValue", "double_value") {
            let f = match d {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => match s.as_str() {
                    "NaN" => Some(f64::NAN),
                    "Infinity" => Some(f64::INFINITY),
                    "-Infinity" => Some(f64::NEG_INFINITY),
                    other => other.parse().ok(),
                },
                _ => None,
            };
            Some(V::DoubleValue(
                f.ok_or_else(|| self.err("doubleValue: expected a number"))?,
            ))
        } else if let Some(a) = self.field(o, "arrayValue", "array_value") {
            let values = self.at("arrayValue", |p| {
                let a = p.object(a)?;
                p.list(a, "values", "values", |p, v| p.any_value(v))
            })?;
            Some(V::ArrayValue(ArrayValue { values }))
        } else if let Some(l) = self.field(o, "kvlistValue", "kvlist_value") {
            let values = self.at("kvlistValue", |p| {
                let l = p.object(l)?;
                p.list(l, "values", "values", |p, v| p.key_value(v))
            })?;
            Some(V::KvlistValue(KeyValueList { values }))
        } else if let Some(b) = self.field(o, "bytesValue", "bytes_value") {
            Some(V::BytesValue(self.at("bytesValue", |p| p.bytes_b64(b))?))
        } else if let Some(i) = self.field(o, "stringValueStrindex", "string_value_strindex") {
            Some(V::StringValueStrindex(
                self.at("stringValueStrindex", |p| p.i32(i))?,
            ))
        } else {
            None
        };
        Ok(AnyValue { value })
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::synth::every_field;

    #[test]
    fn every_field_survives_a_round_trip_and_nothing_is_null() {
        let r = every_field();
        let bytes = to_vec(&r);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains("null"), "{text}");
        assert!(!text.contains('\n'));
        assert_eq!(from_slice(&bytes).unwrap(), r);
    }

    #[test]
    fn reads_numbers_strings_and_snake_case_and_says_where_it_fails() {
        let r = from_slice(
            br#"{"resource_profiles":[{"scopeProfiles":[{"profiles":[{"timeUnixNano":5,"period":"10","profileId":"0a0b"}]}]}]}"#,
        )
        .unwrap();
        let p = &r.resource_profiles[0].scope_profiles[0].profiles[0];
        assert_eq!(
            (p.time_unix_nano, p.period, p.profile_id.clone()),
            (5, 10, vec![10, 11])
        );
        let e = from_slice(
            br#"{"resourceProfiles":[{"scopeProfiles":[{"profiles":[{"period":"ten"}]}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("resourceProfiles[0].scopeProfiles[0].profiles[0].period"),
            "{e}"
        );
        assert!(from_slice(b"[1, 2]").is_err());
    }
}
