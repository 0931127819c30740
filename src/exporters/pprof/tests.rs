use std::io::Read;

use prost::Message;

use super::convert::{convert, encode_gzip};
use super::proto;
use crate::otlp::ProfilesRequest;
use crate::otlp::common::{AnyValue, any_value};
use crate::otlp::profiles::{KeyValueAndUnit, Line};
use crate::otlp::synth::{decode_samples, request, valid};
use crate::otlp::{merge, sample_count};

/// Adds pid, tid, thread name and container attributes to every sample: pid 100 for
/// even seqs, 200 for odd ones.
fn with_process_attrs(mut r: ProfilesRequest) -> ProfilesRequest {
    let d = r.dictionary.as_mut().unwrap();
    let add =
        |d: &mut crate::otlp::profiles::ProfilesDictionary, key: &str, v: any_value::Value| {
            d.string_table.push(key.into());
            d.attribute_table.push(KeyValueAndUnit {
                key_strindex: d.string_table.len() as i32 - 1,
                value: Some(AnyValue { value: Some(v) }),
                unit_strindex: 0,
            });
            d.attribute_table.len() as i32 - 1
        };
    let p100 = add(d, "process.pid", any_value::Value::IntValue(100));
    let p200 = add(d, "process.pid", any_value::Value::IntValue(200));
    let tid = add(d, "thread.id", any_value::Value::IntValue(7));
    let tname = add(
        d,
        "thread.name",
        any_value::Value::StringValue("worker-1".into()),
    );
    let cid = add(
        d,
        "container.id",
        any_value::Value::StringValue("abc123".into()),
    );
    let exe = add(
        d,
        "process.executable.name",
        any_value::Value::StringValue("app".into()),
    );
    // An inlined frame on location 1: two lines, innermost first.
    let loc = &mut d.location_table[1];
    let outer = loc.lines[0];
    loc.lines.insert(
        0,
        Line {
            function_index: outer.function_index + 1,
            line: 99,
            column: 3,
        },
    );
    for (i, s) in r.resource_profiles[0].scope_profiles[0].profiles[0]
        .samples
        .iter_mut()
        .enumerate()
    {
        s.attribute_indices
            .extend([if i % 2 == 0 { p100 } else { p200 }, tid, tname, cid, exe]);
        s.values = vec![1 + i as i64 % 3];
    }
    r
}

fn gunzip_decode(bytes: &[u8]) -> proto::Profile {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut raw)
        .unwrap();
    proto::Profile::decode(raw.as_slice()).unwrap()
}

/// Each pprof sample as (leaf-first function names of all lines, value, labels).
/// (leaf-first function names, value, sorted labels) of one sample.
type FlatSample = (Vec<String>, i64, Vec<(String, String)>);

fn pprof_samples(p: &proto::Profile) -> Vec<FlatSample> {
    let s = |i: i64| p.string_table[i as usize].clone();
    let func = |id: u64| p.function.iter().find(|f| f.id == id).unwrap();
    let mut out: Vec<_> = p
        .sample
        .iter()
        .map(|smp| {
            let names = smp
                .location_id
                .iter()
                .flat_map(|id| p.location.iter().find(|l| l.id == *id).unwrap().line.iter())
                .map(|l| s(func(l.function_id).name))
                .collect();
            let mut labels: Vec<(String, String)> = smp
                .label
                .iter()
                .map(|l| {
                    (
                        s(l.key),
                        if l.str != 0 {
                            s(l.str)
                        } else {
                            l.num.to_string()
                        },
                    )
                })
                .collect();
            labels.sort();
            (names, smp.value[0], labels)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn round_trip_keeps_every_sample_value_stack_line_and_label() {
    let req = merge(&[
        valid(with_process_attrs(request("svc", 0, 40, 9))),
        valid(with_process_attrs(request("svc", 40, 40, 9))),
    ]);
    let converted = convert(&req, false);
    assert_eq!(converted.len(), 1);
    let p = gunzip_decode(&encode_gzip(&converted[0].profile).unwrap());

    // Header.
    let s = |i: i64| p.string_table[i as usize].as_str();
    assert_eq!(s(0), "");
    assert_eq!(
        (s(p.sample_type[0].r#type), s(p.sample_type[0].unit)),
        ("samples", "count")
    );
    let pt = p.period_type.unwrap();
    assert_eq!(
        (s(pt.r#type), s(pt.unit), p.period),
        ("cpu", "nanoseconds", 50_000_000)
    );
    assert_eq!(
        (p.time_nanos, p.duration_nanos),
        (1_700_000_000_000_000_000, 1_000_000_000)
    );
    // No duplicate strings.
    let mut st = p.string_table.clone();
    st.sort();
    st.dedup();
    assert_eq!(st.len(), p.string_table.len());

    // Every sample, with its stack (inlined lines included) and labels.
    let d = req.dictionary.as_ref().unwrap();
    let mut want: Vec<_> = crate::otlp::view::profiles(&req)
        .flat_map(|p| &p.samples)
        .map(|smp| {
            let names: Vec<String> = d.stack_table[smp.stack_index as usize]
                .location_indices
                .iter()
                .flat_map(|&l| d.location_table[l as usize].lines.iter())
                .map(|line| {
                    d.string_table
                        [d.function_table[line.function_index as usize].name_strindex as usize]
                        .clone()
                })
                .collect();
            let mut labels: Vec<(String, String)> = smp
                .attribute_indices
                .iter()
                .map(|&a| {
                    let kv = &d.attribute_table[a as usize];
                    let key = match d.string_table[kv.key_strindex as usize].as_str() {
                        "process.pid" => "pid",
                        "thread.id" => "tid",
                        "thread.name" => "thread_name",
                        "container.id" => "container_id",
                        "process.executable.name" => "process_name",
                        k => k,
                    };
                    (
                        key.to_owned(),
                        crate::otlp::view::as_text(kv.value.as_ref().unwrap()).unwrap(),
                    )
                })
                .collect();
            labels.sort();
            (names, smp.values.iter().sum::<i64>(), labels)
        })
        .collect();
    want.sort();
    assert_eq!(pprof_samples(&p), want);
    assert_eq!(p.sample.len() as u64, sample_count(&req));

    // Lines keep numbers and inline order; mappings say what they carry.
    let inlined: Vec<&proto::Location> = p.location.iter().filter(|l| l.line.len() == 2).collect();
    assert!(!inlined.is_empty());
    assert!(
        inlined
            .iter()
            .all(|l| l.line[0].line == 99 && l.line[0].column == 3)
    );
    let m = &p.mapping[0];
    assert_eq!(s(m.filename), "/usr/bin/app");
    assert!(m.has_functions && m.has_filenames && m.has_line_numbers && m.has_inline_frames);
    assert_eq!((m.memory_start, m.memory_limit), (0x40_0000, 0x80_0000));
    assert!(
        p.location
            .iter()
            .all(|l| l.mapping_id == m.id && l.address >= m.memory_start)
    );
    let f = &p.function[0];
    assert_eq!(s(f.filename), "src/app.rs");
    assert_eq!(f.start_line, 10);
}

#[test]
fn split_by_process_gives_each_process_its_own_profile() {
    let req = with_process_attrs(request("svc", 0, 30, 5));
    let mut parts = convert(&req, true);
    parts.sort_by_key(|c| c.process.clone());
    assert_eq!(
        parts
            .iter()
            .map(|c| c.process.clone().unwrap())
            .collect::<Vec<_>>(),
        vec![(100, "app".to_owned()), (200, "app".to_owned())]
    );
    assert_eq!(
        parts[0].profile.sample.len() + parts[1].profile.sample.len(),
        30
    );
    for part in &parts {
        let pid = part.process.as_ref().unwrap().0;
        for (_, _, labels) in pprof_samples(&part.profile) {
            assert!(labels.contains(&("pid".into(), pid.to_string())));
        }
    }
    let seqs: Vec<u64> = decode_samples(&req).iter().map(|s| s.0).collect();
    assert_eq!(seqs.len(), 30);
}

#[tokio::test]
async fn a_directory_that_cannot_be_created_is_a_clear_start_error() {
    use crate::config::ComponentId;
    use crate::pipeline::{Context, Exporter, Input};
    let (_tx, rx) = crate::pipeline::channel::channel();
    let ctx = Context::standalone("exporter", ComponentId::parse("pprof").unwrap());
    let cfg = super::PprofExporterConfig {
        // /proc refuses new directories, even to root.
        directory: "/proc/stackline-test/pprof".into(),
        ..Default::default()
    };
    let err = Box::new(super::PprofExporter { cfg })
        .start(ctx, Input::new(rx, None))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "cannot write pprof files to /proc/stackline-test/pprof (exporters.pprof.directory)"
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pull_endpoint_serves_at_most_max_subscribers_at_once() {
    use crate::config::ComponentId;
    use crate::pipeline::{Context, Exporter, Input};
    let (_tx, rx) = crate::pipeline::channel::channel();
    // An id of its own: the table of bound listeners is one per process.
    let ctx = Context::standalone("exporter", ComponentId::parse("pprof/max_subs").unwrap());
    let cfg = super::PprofExporterConfig {
        directory: "".into(),
        endpoint: Some("127.0.0.1:0".into()),
        max_subscribers: 2,
        ..Default::default()
    };
    let _task = Box::new(super::PprofExporter { cfg })
        .start(ctx, Input::new(rx, None))
        .await
        .unwrap();
    let addr = crate::net::listen::bound()["exporters.pprof/max_subs.endpoint"];
    let url = format!("http://{addr}/debug/pprof/profile?seconds=3");
    let pulls: Vec<_> = (0..2)
        .map(|_| tokio::spawn(reqwest::get(url.clone())))
        .collect();
    // The third, while both collect, is refused with a time to come back.
    let mut third = None;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let r = reqwest::get(url.replace("seconds=3", "seconds=1"))
            .await
            .unwrap();
        if r.status() == 503 {
            third = Some(r);
            break;
        }
    }
    let third = third.expect("a third subscriber was never refused");
    assert_eq!(third.headers()["retry-after"], "1");
    assert!(third.text().await.unwrap().contains("max_subscribers"));
    for p in pulls {
        assert_eq!(p.await.unwrap().unwrap().status(), 200);
    }
    // Once they are done, a new one is served.
    let r = reqwest::get(url.replace("seconds=3", "seconds=1"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn the_pull_endpoint_binds_loopback_unless_it_has_auth() {
    use crate::config::Validate;
    let with = |endpoint: &str, auth: bool| super::PprofExporterConfig {
        directory: "".into(),
        endpoint: Some(endpoint.into()),
        auth: auth.then(|| crate::auth::AuthConfig {
            bearer_token_file: "/nonexistent/token".into(),
        }),
        ..Default::default()
    };
    assert_eq!(super::endpoint_address("6060"), "127.0.0.1:6060");
    assert_eq!(super::endpoint_address(":6060"), "127.0.0.1:6060");
    assert!(with("6060", false).validate().is_empty());
    assert!(with("localhost:6060", false).validate().is_empty());
    let errs = with("0.0.0.0:6060", false).validate();
    assert!(
        errs.iter()
            .any(|e| e.to_string().contains("auth") && e.to_string().contains("endpoint")),
        "{errs:?}"
    );
    // With auth the address is allowed (and the token file is checked).
    let errs = with("0.0.0.0:6060", true).validate();
    assert!(
        errs.iter()
            .all(|e| e.to_string().contains("bearer_token_file")),
        "{errs:?}"
    );
}

/// With `auth`, a pull needs the token; what one pull holds is bounded by
/// `max_window_mib`, and what does not fit is counted, not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pull_endpoint_takes_a_token_and_holds_at_most_its_window() {
    use crate::config::ComponentId;
    use crate::otlp::synth::{request, valid};
    use crate::pipeline::{Context, Exporter, Input};
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "pull-token\n").unwrap();
    let (tx, rx) = crate::pipeline::channel::channel();
    let ctx = Context::standalone("exporter", ComponentId::parse("pprof/auth").unwrap());
    let cfg = super::PprofExporterConfig {
        directory: "".into(),
        endpoint: Some("127.0.0.1:0".into()),
        auth: Some(crate::auth::AuthConfig {
            bearer_token_file: token,
        }),
        max_window_mib: 1,
        ..Default::default()
    };
    let _task = Box::new(super::PprofExporter { cfg })
        .start(ctx, Input::new(rx, None))
        .await
        .unwrap();
    let addr = crate::net::listen::bound()["exporters.pprof/auth.endpoint"];
    let url = format!("http://{addr}/debug/pprof/profile?seconds=2");
    let c = reqwest::Client::new();
    assert_eq!(c.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(
        c.get(&url)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let pull = tokio::spawn(c.get(&url).bearer_auth("pull-token").send());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // A small request fits the 1 MiB window; a large one (about 2 MiB) does not.
    let small = request("small", 0, 10, 4);
    let mut large = request("large", 100, 20_000, 4);
    for s in &mut large.resource_profiles[0].scope_profiles[0].profiles[0].samples {
        s.timestamps_unix_nano = vec![1; 12];
    }
    assert!(prost::Message::encoded_len(&large) > 1 << 20);
    tx.send(valid(small).into()).await.unwrap();
    tx.send(valid(large).into()).await.unwrap();
    let r = pull.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_end(&mut raw)
        .unwrap();
    let p = super::proto::Profile::decode(&raw[..]).unwrap();
    let total: i64 = p.sample.iter().map(|s| s.value[0]).sum();
    assert_eq!(
        total, 10,
        "only the request that fits the window is in the pull"
    );
}

/// Found by `cargo fuzz run otlp_path`: a profile whose time plus duration passes
/// u64::MAX overflowed in the conversion (and in folding).
#[test]
fn times_and_offsets_at_the_end_of_their_range_convert_without_overflow() {
    let mut req = crate::otlp::synth::request("overflow", 0, 5, 3);
    let p = &mut req.resource_profiles[0].scope_profiles[0].profiles[0];
    p.time_unix_nano = u64::MAX - 1;
    p.duration_nano = u64::MAX;
    for m in &mut req.dictionary.as_mut().unwrap().mapping_table[1..] {
        m.file_offset = u64::MAX;
    }
    crate::otlp::check(&req).unwrap();
    assert!(!super::convert::convert(&req, false).is_empty());
    let folded = crate::exporters::flamegraph::fold(&req, true);
    assert!(folded.total > 0);
}

#[test]
fn equal_samples_become_one_pprof_sample_and_one_folded_line() {
    // 10,000 samples of one stack and one attribute set, plus one of another stack.
    let mut req = request("svc", 0, 2, 3);
    let p = &mut req.resource_profiles[0].scope_profiles[0].profiles[0];
    let (first, other) = (p.samples[0].clone(), p.samples[1].clone());
    assert_ne!(first.stack_index, other.stack_index);
    let w = crate::otlp::view::weight(&first);
    p.samples = vec![first; 10_000];
    p.samples.push(other.clone());
    crate::otlp::check(&req).unwrap();
    let converted = convert(&req, false);
    let samples = &converted[0].profile.sample;
    assert_eq!(samples.len(), 2);
    assert_eq!(samples[0].value, vec![w * 10_000]);
    assert_eq!(samples[1].value, vec![crate::otlp::view::weight(&other)]);
    let folded = crate::exporters::flamegraph::fold(&req, false);
    assert_eq!(folded.lines.len(), 2);
    assert_eq!(folded.total, w * 10_000 + crate::otlp::view::weight(&other));
}
