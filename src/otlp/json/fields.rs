//! Which keys each message of a profiles request has, and how each value is read: the
//! schema half of the reader, the machinery being in `read.rs`.

use serde::de::{Deserializer, MapAccess};

use super::read::{Ctx, Field, Kind, Message, Msg};
use super::scalars::{Base64, Bool, F64, Hex, I32, I64, Str, U32, U64};
use crate::otlp::ProfilesRequest;
use crate::otlp::common::{
    AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use crate::otlp::profiles::{
    Function, KeyValueAndUnit, Line, Link, Location, Mapping, Profile, ProfilesDictionary,
    ResourceProfiles, Sample, ScopeProfiles, Stack, ValueType,
};
use crate::otlp::resource::Resource;

type Fields = &'static [(&'static str, &'static str)];

fn msg<M: Message>() -> Msg<M> {
    Msg::new()
}

impl Message for ProfilesRequest {
    const FIELDS: Fields = &[
        ("resourceProfiles", "resource_profiles"),
        ("dictionary", "dictionary"),
    ];
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error> {
        match v.name() {
            "resourceProfiles" => self.resource_profiles = v.list(msg())?,
            "dictionary" => self.dictionary = v.read(msg())?,
            _ => v.skip()?,
        }
        Ok(())
    }
}

impl Message for ResourceProfiles {
    const FIELDS: Fields = &[
        ("resource", "resource"),
        ("scopeProfiles", "scope_profiles"),
        ("schemaUrl", "schema_url"),
    ];
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error> {
        match v.name() {
            "resource" => self.resource = v.read(msg())?,
            "scopeProfiles" => self.scope_profiles = v.list(msg())?,
            "schemaUrl" => self.schema_url = v.or_default(Str)?,
            _ => v.skip()?,
        }
        Ok(())
    }
}

impl Message for Resource {
    const FIELDS: Fields = &[
        ("attributes", "attributes"),
        ("droppedAttributesCount", "dropped_attributes_count"),
        ("entityRefs", "entity_refs"),
    ];
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error> {
        match v.name() {
            "attributes" => self.attributes = v.list(msg())?,
            "droppedAttributesCount" => self.dropped_attributes_count = v.or_default(U32)?,
            "entityRefs" => self.entity_refs = v.list(msg())?,
            _ => v.skip()?,
        }
        Ok(())
    }
}

impl Message for EntityRef {
    const FIELDS: Fields = &[
        ("schemaUrl", "schema_url"),
        ("type", "type"),
        ("idKeys", "id_keys"),
        ("descriptionKeys", "description_keys"),
    ];
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error> {
        match v.name() {
            "schemaUrl" => self.schema_url = v.or_default(Str)?,
            "type" => self.r#type = v.or_default(Str)?,
            "idKeys" => self.id_keys = v.list(Str)?,
            "descriptionKeys" => self.description_keys = v.list(Str)?,
            _ => v.skip()?,
        }
        Ok(())
    }
}

impl Message for ScopeProfiles {
    const FIELDS: Fields = &[
        ("scope", "scope"),
        ("profiles", "profiles"),
        ("schemaUrl", "schema_url"),
    ];
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error> {
        match v.name() {
            "scope" => self.scope = v.read(msg())?,
            "profiles" => self.profiles = v.list(msg())?,
            "schemaUrl" => self.schema_url = v.or_default(Str)?,
            _ => v.skip()?,
        }
        Ok(())
    }
}

impl Message for InstrumentationScope {
    const FIELDS: Fields = &[
        ("name", "name"),
        ("version", "version"),
        ("attributes", "attributes"),
        ("droppedAttributesCount", "dropped_attributes_count"),
    ];
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error> {
        match v.name() {
            "name" => self.name = v.or_default(Str)?,
            "version" => self.version = v.or_default(Str)?,
            "attributes" => self.attributes = v.list(msg())?,
            "droppedAttributesCount" => self.dropped_attributes_count = v.or_default(U32)?,
            _ => v.skip()?,
        }
        Ok(())
    }
}

impl Message for ValueType {
    const FIELDS: Fields = &[
        ("typeStrindex", "type_strindex"),
        ("unitStrindex", "unit_strindex"),
    ];
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error> {
        match v.name() {
            "typeStrindex" => self.type_strindex = v.or_default(I32)?,
            "unitStrindex" => self.unit_strindex = v.or_default(I32)?,
            _ => v.skip()?,
        }
        Ok(())
    }
}

impl Message for Profile {
    const FIELDS: Fields = &[
        ("sampleType", "sample_type"),
        ("samples", "samples"),
        ("timeUnixNano", "time_unix_nano"),
        ("durationNano", "duration_nano"),
        ("periodType", "period_type"),
        ("period", "period"),
        ("profileId", "profile_id"),
        ("droppedAttributesCount", "dropped_attributes_count"),
        ("originalPayloadFormat", "original_payload_format"),
        ("originalPayload", "original_payload"),
        ("attributeIndices", "attribute_indices"),
    ];
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error> {
        match v.name() {
            "sampleType" => self.sample_type = v.read(msg())?,
            "samples" => self.samples = v.list(msg())?,
            "timeUnixNano" => self.time_unix_nano = v.or_default(U64)?,
            "durationNano" => self.duration_nano = v.or_default(U64)?,
            "periodType" => self.period_type = v.read(msg())?,
            "period" => self.period = v.or_default(I64)?,
            "profileId" => self.profile_id = v.or_default(Hex)?,
            "droppedAttributesCount" => self.dropped_attributes_count = v.or_default(U32)?,
            "originalPayloadFormat" => self.original_payload_format = v.or_default(Str)?,
            "originalPayload" => self.original_payload = v.or_default(Base64)?,
            "attributeIndices" => self.attribute_indices = v.list(I32)?,
            _ => v.skip()?,
        }
        Ok(())
    }
}

impl Message for Sample {
    const FIELDS: Fields = &[
        ("stackIndex", "stack_index"),
        ("attributeIndices", "attribute_indices"),
        ("linkIndex", "link_index"),
        ("values", "values"),
        ("timestampsUnixNano", "timestamps_unix_nano"),
    ];
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error> {
        match v.name() {
            "stackIndex" => self.stack_index = v.or_default(I32)?,
            "attributeIndices" => self.attribute_indices = v.list(I32)?,
            "linkIndex" => self.link_index = v.or_default(I32)?,
            "values" => self.values = v.list(I64)?,
            "timestampsUnixNano" => self.timestamps_unix_nano = v.list(U64)?,
            _ => v.skip()?,
        }
        Ok(())
    }
}

impl Message for ProfilesDictionary {
    const FIELDS: Fields = &[
        ("mappingTable", "mapping_table"),
        ("locationTable", "location_table"),
        ("functionTable", "function_table"),
        ("linkTable", "link_table"),
        ("stringTable", "string_table"),
        ("attributeTable", "attribute_table"),
        ("stackTable", "stack_table"),
    ];
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error> {
        match v.name() {
            "mappingTable" => self.mapping_table = v.list(msg())?,
            "locationTable" => self.location_table = v.list(msg())?,
            "functionTable" => self.function_table = v.list(msg())?,
            "linkTable" => self.link_table = v.list(msg())?,
            "stringTable" => self.string_table = v.list(Str)?,
            "attributeTable" => self.attribute_table = v.list(msg())?,
            "stackTable" => self.stack_table = v.list(msg())?,
            _ => v.skip()?,
        }
        Ok(())
    }
}

impl Message for Mapping {
    const FIELDS: Fields = &[
        ("memoryStart", "memory_start"),
        ("memoryLimit", "memory_limit"),
        ("fileOffset", "file_offset"),
        ("filenameStrindex", "filename_strindex"),
        ("attributeIndices", "attribute_indices"),
    ];
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error> {
        match v.name() {
            "memoryStart" => self.memory_start = v.or_default(U64)?,
            "memoryLimit" => self.memory_limit = v.or_default(U64)?,
            "fileOffset" => self.file_offset = v.or_default(U64)?,
            "filenameStrindex" => self.filename_strindex = v.or_default(I32)?,
            "attributeIndices" => self.attribute_indices = v.list(I32)?,
            _ => v.skip()?,
        }
        Ok(())
    }
}

impl Message for Location {
    const FIELDS: Fields = &[
        ("mappingIndex", "mapping_index"),
        ("address", "address"),
        ("lines", "lines"),
        ("attributeIndices", "attribute_indices"),
    ];
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error> {
        match v.name() {
            "mappingIndex" => self.mapping_index = v.or_default(I32)?,
            "address" => self.address = v.or_default(U64)?,
            "lines" => self.lines = v.list(msg())?,
            "attributeIndices" => self.attribute_indices = v.list(I32)?,
            _ => v.skip()?,
        }
        Ok(())
    }
}

impl Message for Line {
    const FIELDS: Fields = &[
        ("functionIndex", "function_index"),
        ("line", "line"),
        ("column", "column"),
    ];
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error> {
        match v.name() {
            "functionIndex" => self.function_index = v.or_default(I32)?,
            "line" => self.line = v.or_default(I64)?,
            "column" => self.column = v.or_default(I64)?,
            _ => v.skip()?,
        }
        Ok(())
    }
}

impl Message for Function {
    const FIELDS: Fields = &[
        ("nameStrindex", "name_strindex"),
        ("systemNameStrindex", "system_name_strindex"),
        ("filenameStrindex", "filename_strindex"),
        ("startLine", "start_line"),
    ];
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error> {
        match v.name() {
            "nameStrindex" => self.name_strindex = v.or_default(I32)?,
            "systemNameStrindex" => self.system_name_strindex = v.or_default(I32)?,
            "filenameStrindex" => self.filename_strindex = v.or_default(I32)?,
            "startLine" => self.start_line = v.or_default(I64)?,
            _ => v.skip()?,
        }
        Ok(())
    }
}

impl Message for Link {
    const FIELDS: Fields = &[("traceId", "trace_id"), ("spanId", "span_id")];
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error> {
        match v.name() {
            "traceId" => self.trace_id = v.or_default(Hex)?,
            "spanId" => self.span_id = v.or_default(Hex)?,
            _ => v.skip()?,
        }
        Ok(())
    }
}

impl Message for Stack {
    const FIELDS: Fields = &[("locationIndices", "location_indices")];
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error> {
        match v.name() {
            "locationIndices" => self.location_indices = v.list(I32)?,
            _ => v.skip()?,
        }
        Ok(())
    }
}

impl Message for KeyValueAndUnit {
    const FIELDS: Fields = &[
        ("keyStrindex", "key_strindex"),
        ("value", "value"),
        ("unitStrindex", "unit_strindex"),
    ];
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error> {
        match v.name() {
            "keyStrindex" => self.key_strindex = v.or_default(I32)?,
            "value" => self.value = v.read(Any)?,
            "unitStrindex" => self.unit_strindex = v.or_default(I32)?,
            _ => v.skip()?,
        }
        Ok(())
    }
}

impl Message for KeyValue {
    const FIELDS: Fields = &[
        ("key", "key"),
        ("value", "value"),
        ("keyStrindex", "key_strindex"),
    ];
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error> {
        match v.name() {
            "key" => self.key = v.or_default(Str)?,
            "value" => self.value = v.read(Any)?,
            "keyStrindex" => self.key_strindex = v.or_default(I32)?,
            _ => v.skip()?,
        }
        Ok(())
    }
}

impl Message for ArrayValue {
    const FIELDS: Fields = &[("values", "values")];
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error> {
        match v.name() {
            "values" => self.values = v.list(Any)?,
            _ => v.skip()?,
        }
        Ok(())
    }
}

impl Message for KeyValueList {
    const FIELDS: Fields = &[("values", "values")];
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error> {
        match v.name() {
            "values" => self.values = v.list(msg())?,
            _ => v.skip()?,
        }
        Ok(())
    }
}

/// An `AnyValue`: its oneof is read as every case given, then one kept.
#[derive(Clone, Copy)]
struct Any;

impl Kind for Any {
    type Out = AnyValue;
    fn read<'de, D: Deserializer<'de>>(self, ctx: &mut Ctx, d: D) -> Result<AnyValue, D::Error> {
        let c = msg::<AnyCases>().read(ctx, d)?;
        use any_value::Value as V;
        // More than one case is not valid protobuf JSON; the reader before this one
        // kept the first in this order, and so does this one.
        let value = c
            .string
            .map(V::StringValue)
            .or(c.boolean.map(V::BoolValue))
            .or(c.int.map(V::IntValue))
            .or(c.double.map(V::DoubleValue))
            .or(c.array.map(V::ArrayValue))
            .or(c.kvlist.map(V::KvlistValue))
            .or(c.bytes.map(V::BytesValue))
            .or(c.string_strindex.map(V::StringValueStrindex));
        Ok(AnyValue { value })
    }
}

/// The cases of one `AnyValue` as given (`null` is not given).
#[derive(Default)]
struct AnyCases {
    string: Option<String>,
    boolean: Option<bool>,
    int: Option<i64>,
    double: Option<f64>,
    array: Option<ArrayValue>,
    kvlist: Option<KeyValueList>,
    bytes: Option<Vec<u8>>,
    string_strindex: Option<i32>,
}

impl Message for AnyCases {
    const FIELDS: Fields = &[
        ("stringValue", "string_value"),
        ("boolValue", "bool_value"),
        ("intValue", "int_value"),
        ("doubleValue", "double_value"),
        ("arrayValue", "array_value"),
        ("kvlistValue", "kvlist_value"),
        ("bytesValue", "bytes_value"),
        ("stringValueStrindex", "string_value_strindex"),
    ];
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error> {
        match v.name() {
            "stringValue" => self.string = v.read(Str)?,
            // Not depth-checked, as before: they cannot nest.
            "boolValue" => self.boolean = v.unchecked(Bool)?,
            "intValue" => self.int = v.read(I64)?,
            "doubleValue" => self.double = v.unchecked(F64)?,
            "arrayValue" => self.array = v.read(msg())?,
            "kvlistValue" => self.kvlist = v.read(msg())?,
            "bytesValue" => self.bytes = v.read(Base64)?,
            "stringValueStrindex" => self.string_strindex = v.read(I32)?,
            _ => v.skip()?,
        }
        Ok(())
    }
}
