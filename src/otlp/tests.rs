use super::profiles::Sample;
use super::synth::{decode_samples, duplicate_entries, expected_stack, request, valid};
use super::*;

fn all_samples(reqs: &[ProfilesRequest]) -> Vec<(u64, Vec<String>, String)> {
    let mut v: Vec<_> = reqs.iter().flat_map(decode_samples).collect();
    v.sort();
    v
}

#[test]
fn synthetic_requests_decode_to_what_they_encode() {
    let r = request("a", 10, 5, 20);
    assert_eq!(sample_count(&r), 5);
    check(&r).unwrap();
    let s = decode_samples(&r);
    assert_eq!(s[0], (10, expected_stack(10, 20), "a".into()));
    // The generator does not intern, so its output has duplicates to remove.
    assert!(!duplicate_entries(&r).is_empty());
}

#[test]
fn merge_keeps_every_sample_and_leaves_no_duplicate_entries() {
    let inputs: Vec<_> = (0..8)
        .map(|i| request(if i % 2 == 0 { "a" } else { "b" }, i * 50, 50, 12))
        .collect();
    let checked: Vec<Checked> = inputs.iter().cloned().map(valid).collect();
    let merged = merge(&checked);
    check(&merged).unwrap();
    assert_eq!(sample_count(&merged), 400);
    assert_eq!(duplicate_entries(&merged), Vec::<String>::new());
    assert_eq!(
        all_samples(std::slice::from_ref(&*merged)),
        all_samples(&inputs)
    );
    // Equal resources merge: two services, one scope each.
    assert_eq!(merged.resource_profiles.len(), 2);
    assert!(
        merged
            .resource_profiles
            .iter()
            .all(|r| r.scope_profiles.len() == 1)
    );
    // 12 functions in the pool: far fewer entries than the inputs carried.
    let d = merged.dictionary.as_ref().unwrap();
    assert_eq!(d.function_table.len(), 13);
    assert_eq!(d.location_table.len(), 13);
}

#[test]
fn split_respects_the_limit_and_keeps_order_and_content() {
    let merged = merge(&[
        valid(request("a", 0, 333, 9)),
        valid(request("b", 333, 100, 9)),
    ]);
    let parts = split(merged.clone(), 100);
    assert_eq!(parts.len(), 5);
    let sizes: Vec<u64> = parts.iter().map(|p| sample_count(p)).collect();
    assert_eq!(sizes, vec![100, 100, 100, 100, 33]);
    for p in &parts {
        check(p).unwrap();
        assert!(duplicate_entries(p).is_empty());
        // Each part's dictionary holds only what its own samples need.
        let d = p.dictionary.as_ref().unwrap();
        assert!(d.attribute_table.len() as u64 <= sample_count(p) + 1);
    }
    let parts: Vec<ProfilesRequest> = parts.into_iter().map(Checked::into_inner).collect();
    assert_eq!(
        all_samples(&parts),
        all_samples(std::slice::from_ref(&*merged))
    );
    // No limit, or a limit above the count: unchanged.
    assert_eq!(split(merged.clone(), 0), vec![merged.clone()]);
    assert_eq!(split(merged.clone(), 10_000), vec![merged]);
}

#[test]
fn check_names_the_table_index_and_place() {
    let mut r = request("a", 0, 3, 5);
    let profile = &mut r.resource_profiles[0].scope_profiles[0].profiles[0];
    profile.samples[2].stack_index = 999;
    let e = check(&r).unwrap_err();
    assert_eq!(e.table, "stack_table");
    assert_eq!(e.index, 999);
    assert_eq!(
        e.to_string(),
        format!(
            "resource_profiles[0].scope_profiles[0].profiles[0].samples[2].stack_index: stack_table index 999 is out of range (the table has {} entries)",
            e.len
        )
    );

    for (mutate, table) in [
        (
            (|r: &mut ProfilesRequest| {
                r.dictionary.as_mut().unwrap().stack_table[1].location_indices[0] = -4
            }) as fn(&mut ProfilesRequest),
            "location_table",
        ),
        (
            |r: &mut ProfilesRequest| {
                r.dictionary.as_mut().unwrap().location_table[1].lines[0].function_index = 10_000
            },
            "function_table",
        ),
        (
            |r: &mut ProfilesRequest| {
                r.dictionary.as_mut().unwrap().function_table[1].name_strindex = 10_000
            },
            "string_table",
        ),
        (
            |r: &mut ProfilesRequest| {
                r.dictionary.as_mut().unwrap().location_table[1].mapping_index = 7
            },
            "mapping_table",
        ),
        (
            |r: &mut ProfilesRequest| {
                r.resource_profiles[0].scope_profiles[0].profiles[0].samples[0].attribute_indices =
                    vec![500]
            },
            "attribute_table",
        ),
        (
            |r: &mut ProfilesRequest| {
                r.resource_profiles[0].scope_profiles[0].profiles[0].samples[0].link_index = 3
            },
            "link_table",
        ),
    ] {
        let mut r = request("a", 0, 3, 5);
        mutate(&mut r);
        let e = check(&r).unwrap_err();
        assert_eq!(e.table, table, "{e}");
        // The pipeline's type refuses the same input: merge never sees it.
        assert_eq!(Checked::new(r).unwrap_err(), e);
    }
}

#[test]
fn index_zero_is_valid_even_without_a_dictionary() {
    let mut r = request("a", 0, 1, 3);
    r.dictionary = None;
    let p = &mut r.resource_profiles[0].scope_profiles[0].profiles[0];
    p.sample_type = None;
    p.period_type = None;
    p.samples = vec![Sample {
        values: vec![4],
        ..Default::default()
    }];
    let m = merge([&valid(r)]);
    assert_eq!(sample_count(&m), 1);
}

/// Not a timed assertion: prints how long splitting a request of 3,000,000 empty
/// samples takes (`cargo test --release --lib split_of_millions -- --ignored --nocapture`).
#[test]
#[ignore = "a measurement that prints a time, not a check; run it with --ignored --nocapture"]
fn split_of_millions_of_samples_prints_its_time() {
    let mut req = crate::otlp::synth::request("big", 0, 1, 1);
    let p = &mut req.resource_profiles[0].scope_profiles[0].profiles[0];
    p.samples = vec![Default::default(); 3_000_000];
    let t = std::time::Instant::now();
    let parts = split(valid(req), 8192);
    eprintln!(
        "split 3,000,000 samples into {} parts in {:?}",
        parts.len(),
        t.elapsed()
    );
}
