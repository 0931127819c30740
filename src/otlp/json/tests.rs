use super::*;
use crate::otlp::common::any_value::Value as V;
use crate::otlp::synth::{every_field, request};

fn err(json: &str) -> String {
    from_slice(json.as_bytes()).unwrap_err().to_string()
}

#[test]
fn every_field_survives_a_round_trip_and_nothing_is_null() {
    let r = every_field();
    let bytes = to_vec(&r);
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(!text.contains("null"), "{text}");
    assert!(!text.contains('\n'));
    assert_eq!(from_slice(&bytes).unwrap(), r);
    let r = request("svc", 0, 50, 8);
    assert_eq!(from_slice(&to_vec(&r)).unwrap(), r);
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
    let e = err(r#"{"resourceProfiles":[{"scopeProfiles":[{"profiles":[{"period":"ten"}]}]}]}"#);
    assert!(
        e.contains("resourceProfiles[0].scopeProfiles[0].profiles[0].period"),
        "{e}"
    );
    assert!(from_slice(b"[1, 2]").is_err());
}

#[test]
fn snake_case_keys_and_numbers_for_64_bit_integers_still_parse() {
    let r = from_slice(
        br#"{
          "resource_profiles": [{"scope_profiles": [{"profiles": [{
            "time_unix_nano": 1700000000000000000, "duration_nano": "7", "period": -3,
            "dropped_attributes_count": 2.0, "attribute_indices": [1, "2"],
            "sample_type": {"type_strindex": 1, "unit_strindex": "2"},
            "samples": [{"stack_index": 1, "link_index": 0, "values": [1, "-2", 3.0],
                         "timestamps_unix_nano": [10, "11", 1e3]}]
          }]}]}],
          "dictionary": {
            "mapping_table": [{"memory_start": 4096, "memory_limit": "8192", "file_offset": 0}],
            "location_table": [{"mapping_index": 0, "address": 4660,
                                "lines": [{"function_index": 0, "line": 12, "column": "3"}]}],
            "function_table": [{"name_strindex": 1, "system_name_strindex": 1, "start_line": 9}],
            "link_table": [{"trace_id": "00ff", "span_id": "AB01"}],
            "string_table": ["", "main"],
            "attribute_table": [{"key_strindex": 1, "value": {"int_value": 42}}],
            "stack_table": [{"location_indices": [0]}]
          }
        }"#,
    )
    .unwrap();
    let p = &r.resource_profiles[0].scope_profiles[0].profiles[0];
    assert_eq!(p.time_unix_nano, 1_700_000_000_000_000_000);
    assert_eq!((p.duration_nano, p.period), (7, -3));
    assert_eq!(p.dropped_attributes_count, 2);
    assert_eq!(p.attribute_indices, [1, 2]);
    assert_eq!(p.sample_type.map(|t| t.unit_strindex), Some(2));
    assert_eq!(p.samples[0].values, [1, -2, 3]);
    assert_eq!(p.samples[0].timestamps_unix_nano, [10, 11, 1000]);
    let d = r.dictionary.unwrap();
    assert_eq!(d.mapping_table[0].memory_limit, 8192);
    assert_eq!(d.location_table[0].address, 4660);
    assert_eq!(d.location_table[0].lines[0].column, 3);
    assert_eq!(d.function_table[0].start_line, 9);
    assert_eq!(d.link_table[0].trace_id, [0x00, 0xff]);
    assert_eq!(d.link_table[0].span_id, [0xab, 0x01]);
    assert_eq!(d.string_table, ["", "main"]);
    let v = d.attribute_table[0]
        .value
        .as_ref()
        .and_then(|v| v.value.clone());
    assert_eq!(v, Some(V::IntValue(42)));
    assert_eq!(d.stack_table[0].location_indices, [0]);
}

#[test]
fn null_is_the_default_and_camel_case_wins_over_snake_case() {
    let r = from_slice(
        br#"{"resourceProfiles": null, "dictionary": {"stringTable": null,
             "stackTable": [{"locationIndices": null}],
             "linkTable": [{"trace_id": "01", "traceId": "02", "span_id": "03"},
                           {"spanId": null, "span_id": "04"}]}}"#,
    )
    .unwrap();
    assert!(r.resource_profiles.is_empty());
    let d = r.dictionary.unwrap();
    assert!(d.string_table.is_empty());
    assert!(d.stack_table[0].location_indices.is_empty());
    assert_eq!(d.link_table[0].trace_id, [2]);
    assert_eq!(d.link_table[0].span_id, [3]);
    // A null lowerCamelCase key hides the snake_case one, as it did.
    assert!(d.link_table[1].span_id.is_empty());
    // In a list, null is not a default but an error.
    let e = err(r#"{"dictionary":{"stackTable":[{},null]}}"#);
    assert!(e.contains("dictionary.stackTable[1]"), "{e}");
}

#[test]
fn attribute_values_read_every_case() {
    let r = from_slice(
        br#"{"resourceProfiles":[{"resource":{"attributes":[
            {"key":"s","value":{"stringValue":"x"}},
            {"key":"b","value":{"boolValue":true}},
            {"key":"d","value":{"doubleValue":"-Infinity"}},
            {"key":"n","value":{"doubleValue":"NaN"}},
            {"key":"f","value":{"double_value":2}},
            {"key":"u","value":{"bytesValue":"-_8="}},
            {"key":"i","value":{"stringValueStrindex":3}},
            {"key":"k","value":{"kvlistValue":{"values":[{"key":"a"}]}}},
            {"key":"two","value":{"intValue":"1","stringValue":"first wins"}},
            {"key":"none","value":{"arrayValue":null}}
        ]}}]}"#,
    )
    .unwrap();
    let attrs = &r.resource_profiles[0].resource.as_ref().unwrap().attributes;
    let v: Vec<_> = attrs
        .iter()
        .map(|kv| kv.value.as_ref().unwrap().value.clone())
        .collect();
    assert_eq!(v[0], Some(V::StringValue("x".into())));
    assert_eq!(v[1], Some(V::BoolValue(true)));
    assert_eq!(v[2], Some(V::DoubleValue(f64::NEG_INFINITY)));
    assert!(matches!(v[3], Some(V::DoubleValue(d)) if d.is_nan()));
    assert_eq!(v[4], Some(V::DoubleValue(2.0)));
    // URL-safe base64 as a fallback.
    assert_eq!(v[5], Some(V::BytesValue(vec![0xfb, 0xff])));
    assert_eq!(v[6], Some(V::StringValueStrindex(3)));
    assert!(matches!(&v[7], Some(V::KvlistValue(l)) if l.values[0].key == "a"));
    assert_eq!(v[8], Some(V::StringValue("first wins".into())));
    assert_eq!(v[9], None);
}

#[test]
fn a_million_objects_in_an_unknown_field_read_as_an_empty_request() {
    // About 8 MiB. Read as a generic tree first this was some hundreds of MB of maps;
    // skipped token by token it allocates nothing (not asserted here: the test process
    // shares its RSS with every other test).
    let n = 1_000_000;
    let mut body = Vec::with_capacity(8 * n + 16);
    body.extend_from_slice(br#"{"x":["#);
    for i in 0..n {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(br#"{"a":0}"#);
    }
    body.extend_from_slice(b"]}");
    assert!(body.len() > 7 << 20);
    let r = from_slice_limited(&body, 1 << 10).unwrap();
    assert_eq!(r, ProfilesRequest::default());
}

#[test]
fn unknown_fields_are_ignored_at_every_level() {
    let r = from_slice(
        br#"{"u":1,"resourceProfiles":[{"u":[{"deep":{"er":[1,"2",null]}}],
             "resource":{"u":{},"attributes":[{"key":"k","u":2,"value":{"u":3,"intValue":"5"}}]},
             "scopeProfiles":[{"scope":{"name":"s","u":true},"u":null,
               "profiles":[{"u":"x","samples":[{"stackIndex":1,"u":{"v":[]}},{"u":0}]}]}]}],
             "dictionary":{"u":[1,2],"stackTable":[{"u":9},{"locationIndices":[0],"u":"9"}],
               "locationTable":[{"lines":[{"u":{},"line":"4"}]}],
               "stringTable":[""],"futureTable":[{"a":0}]}}"#,
    )
    .unwrap();
    let rp = &r.resource_profiles[0];
    let kv = &rp.resource.as_ref().unwrap().attributes[0];
    assert_eq!(kv.value.as_ref().unwrap().value, Some(V::IntValue(5)));
    let sp = &rp.scope_profiles[0];
    assert_eq!(sp.scope.as_ref().unwrap().name, "s");
    let samples = &sp.profiles[0].samples;
    assert_eq!(samples.len(), 2);
    assert_eq!(samples[0].stack_index, 1);
    assert_eq!(samples[1], Default::default());
    let d = r.dictionary.unwrap();
    assert_eq!(d.stack_table.len(), 2);
    assert_eq!(d.stack_table[1].location_indices, [0]);
    assert_eq!(d.location_table[0].lines[0].line, 4);
}

#[test]
fn a_wrong_type_for_a_known_field_names_its_path() {
    let sample = |v: &str| {
        format!(
            r#"{{"resourceProfiles":[{{"scopeProfiles":[{{"profiles":[{{"samples":[{{}},{{}},{{}},{{"stackIndex":{v}}}]}}]}}]}}]}}"#
        )
    };
    let at = "resourceProfiles[0].scopeProfiles[0].profiles[0].samples[3].stackIndex: ";
    for v in [r#""x""#, "{}", "[1]", "true", "1.5", "4294967296"] {
        let e = err(&sample(v));
        assert!(
            e.starts_with("not OTLP/JSON: ") && e.contains(at),
            "{v}: {e}"
        );
    }
    for (json, at) in [
        (r#"{"resourceProfiles": 7}"#, "resourceProfiles: "),
        (r#"{"resourceProfiles": [7]}"#, "resourceProfiles[0]: "),
        (
            r#"{"dictionary":{"attributeTable":[{"value":{"boolValue":1}}]}}"#,
            "dictionary.attributeTable[0].value.boolValue: ",
        ),
        (
            r#"{"dictionary":{"linkTable":[{"traceId":"xyz"}]}}"#,
            "dictionary.linkTable[0].traceId: ",
        ),
        (
            r#"{"dictionary":{"stringTable":["", 5]}}"#,
            "dictionary.stringTable[1]: ",
        ),
        (
            r#"{"resourceProfiles":[{"scopeProfiles":[{"profiles":[{"originalPayload":"@@"}]}]}]}"#,
            "resourceProfiles[0].scopeProfiles[0].profiles[0].originalPayload: ",
        ),
        // Malformed JSON inside a known field: the path to where it broke.
        (
            r#"{"dictionary":{"stackTable":[{"locationIndices":[1,}]}}"#,
            "dictionary.stackTable[0].locationIndices[1]: ",
        ),
    ] {
        let e = err(json);
        assert!(e.contains(at), "{json}: {e}");
    }
    for bad in ["", "null", "[1, 2]", "{} {}", r#"{"x": }"#, "{\"a\":1"] {
        assert!(from_slice(bad.as_bytes()).is_err(), "{bad}");
    }
}

#[test]
fn attribute_values_nested_past_max_depth_are_refused() {
    // dictionary.attributeTable[0].value, then two steps per level: arrayValue, values[0].
    let nested = |levels: usize| {
        let mut v = r#"{"intValue":"1"}"#.to_owned();
        for _ in 0..levels {
            v = format!(r#"{{"arrayValue":{{"values":[{v}]}}}}"#);
        }
        format!(r#"{{"dictionary":{{"attributeTable":[{{"value":{v}}}]}}}}"#)
    };
    from_slice(nested(10).as_bytes()).unwrap();
    for levels in [20, 40, 200] {
        let e = err(&nested(levels));
        assert!(e.contains(&format!("more than {}", read::MAX_DEPTH)), "{e}");
    }
}

#[test]
fn the_budget_refuses_many_samples_and_names_the_setting() {
    let mut many = request("many", 0, 1, 1);
    many.resource_profiles[0].scope_profiles[0].profiles[0].samples = vec![
        crate::otlp::profiles::Sample {
            values: vec![1],
            ..Default::default()
        };
        100_000
    ];
    let bytes = to_vec(&many);
    let e = from_slice_limited(&bytes, 1 << 20).unwrap_err().to_string();
    assert!(e.contains("limits.max_decoded_size_mib"), "{e}");
    assert!(e.contains("1 MiB"), "{e}");
    assert!(e.contains("samples["), "{e}");
    assert_eq!(from_slice_limited(&bytes, 512 << 20).unwrap(), many);
    // Strings count too: one long string over a small limit.
    let long = format!(
        r#"{{"dictionary":{{"stringTable":["{}"]}}}}"#,
        "a".repeat(5000)
    );
    let e = from_slice_limited(long.as_bytes(), 4096)
        .unwrap_err()
        .to_string();
    assert!(e.contains("limits.max_decoded_size_mib"), "{e}");
    assert!(from_slice_limited(long.as_bytes(), 1 << 20).is_ok());
}

#[test]
fn a_long_decimal_double_reads_to_the_nearest_value_and_round_trips() {
    // Found by the otlp_json fuzz target: 86 nines and `1.5` read one bit off the
    // nearest double (serde_json's fast path), and its shortest form then read back as
    // another value. With `float_roundtrip` every decimal reads correctly rounded.
    let digits = format!("{}1.5", "9".repeat(86));
    let body = format!(
        r#"{{"resourceProfiles":[{{"resource":{{"attributes":[{{"key":"d","value":{{"doubleValue":{digits}}}}}]}}}}]}}"#
    );
    let r = from_slice(body.as_bytes()).unwrap();
    let v = r.resource_profiles[0].resource.as_ref().unwrap().attributes[0]
        .value
        .as_ref()
        .unwrap()
        .value
        .clone();
    let want: f64 = digits.parse().unwrap();
    assert_eq!(v, Some(V::DoubleValue(want)));
    let again = from_slice(&to_vec(&r)).unwrap();
    assert_eq!(
        prost::Message::encode_to_vec(&again),
        prost::Message::encode_to_vec(&r)
    );
}
