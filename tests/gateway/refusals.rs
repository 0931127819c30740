//! Bad requests are refused while the process keeps serving; the memory limiter refuses with a retryable status and counts it.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_the_process_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let backend_port = ReservedPort::new();
    let backend_addr = backend_port.addr().to_string();
    let backend = Backend::default();
    let _stop = backend.serve(backend_port).await;
    let mut s = Stackline::start(dir.path(), &gateway_config(&backend_addr, ""));
    let mut c = client(s.endpoint()).await;

    type Mutation = fn(&mut ProfilesRequest);
    let mutations: Vec<(Mutation, &str)> = vec![
        (
            |r| r.resource_profiles[0].scope_profiles[0].profiles[0].samples[1].stack_index = 999,
            "samples[1].stack_index: stack_table index 999 is out of range",
        ),
        (
            |r| r.dictionary.as_mut().unwrap().stack_table[1].location_indices[0] = 5000,
            "stack_table[1].location_indices[0]: location_table index 5000 is out of range",
        ),
        (
            |r| r.dictionary.as_mut().unwrap().location_table[1].lines[0].function_index = -2,
            "function_table index -2 is out of range",
        ),
        (
            |r| r.dictionary.as_mut().unwrap().function_table[2].name_strindex = 77_777,
            "function_table[2].name_strindex: string_table index 77777 is out of range",
        ),
        (
            |r| {
                r.resource_profiles[0].scope_profiles[0].profiles[0].samples[0].attribute_indices =
                    vec![4242]
            },
            "attribute_table index 4242 is out of range",
        ),
        (
            |r| r.dictionary.as_mut().unwrap().location_table[1].mapping_index = 31,
            "mapping_table index 31 is out of range",
        ),
    ];
    for (mutate, expected) in mutations {
        let mut r = request("svc", 0, 3, POOL);
        mutate(&mut r);
        let e = c.export(r).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains(expected),
            "{} does not contain {expected}",
            e.message()
        );
    }

    // Bytes that are not a protobuf message at all.
    let cfg: OtlpExporterConfig = serde_json::from_value(serde_json::json!({
        "endpoint": s.otlp.to_string(), "tls": {"insecure": true}, "compression": "none"
    }))
    .unwrap();
    let raw = GrpcSender::new(&cfg, "otlp").unwrap();
    let garbage = Encoded {
        bytes: bytes::Bytes::from_static(&[0xff, 0xff, 0xff, 0x0f, 0x0a]),
        samples: 0,
        profiles: 0,
    };
    let e = raw.send(&garbage).await.unwrap_err();
    assert!(
        e.to_string().contains("Internal") || e.to_string().contains("decode"),
        "{e}"
    );

    // A few KB of gzip that would decode to 1,500,000 empty samples (3 MB of protobuf,
    // within max_recv_msg_size_mib; over 100 MB decoded): refused on the wire, naming
    // the limit and its setting.
    let bomb = stackline::otlp::synth::empty_samples_wire(1_500_000);
    let cfg: OtlpExporterConfig = serde_json::from_value(serde_json::json!({
        "endpoint": s.otlp.to_string(), "tls": {"insecure": true}, "compression": "gzip"
    }))
    .unwrap();
    let gz = GrpcSender::new(&cfg, "otlp").unwrap();
    let e = gz
        .send(&Encoded {
            bytes: bomb.into(),
            samples: 1_500_000,
            profiles: 1,
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ResourceExhausted")
            && e.contains("1500000 samples")
            && e.contains("limits.max_samples"),
        "{e}"
    );

    // Over max_recv_msg_size_mib (4 MiB).
    let big = request("svc", 0, 40_000, 40_000);
    assert!(prost::Message::encoded_len(&big) > 4 << 20);
    let e = c.export(big).await.unwrap_err();
    assert_ne!(e.code(), Code::Ok);

    // Still serving.
    assert!(s.is_running());
    c.export(request("svc", 100, 10, POOL)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || backend.samples().len()
            == 10)
        .await
    );
    // 6 requests of 3 bad samples, the garbage (1, its samples unknown), the bomb.
    assert_eq!(
        s.metric(
            "otelcol_receiver_refused_profile_samples_total",
            &[("receiver", "otlp")]
        )
        .await,
        18.0 + 1.0 + 1_500_000.0
    );
    let peak = s.peak_rss_mib();
    eprintln!("gateway peak RSS after the hostile requests: {peak} MiB");
    assert!(peak < 200, "peak RSS {peak} MiB");
    assert_eq!(
        s.metric(
            "otelcol_receiver_accepted_profile_samples_total",
            &[("receiver", "otlp")]
        )
        .await,
        10.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_limiter_refuses_with_a_retryable_status_and_counts_what_it_refused() {
    // Two gateways: one allowed far more than it uses, one allowed less than it has.
    for (limit, refuse) in [(4096, false), (2, true)] {
        let dir = tempfile::tempdir().unwrap();
        let backend_port = ReservedPort::new();
        let backend_addr = backend_port.addr().to_string();
        let backend = Backend::default();
        let _stop = backend.serve(backend_port).await;
        let cfg = gateway_config(&backend_addr, "")
            .replace(
                "processors:\n",
                &format!(
                    "processors:\n  memory_limiter: {{ check_interval: 50ms, limit_mib: {limit}, spike_limit_mib: 1 }}\n"
                ),
            )
            .replace("processors: [batch]", "processors: [memory_limiter, batch]");
        let s = Stackline::start(dir.path(), &cfg);
        let mut c = client(s.endpoint()).await;
        // The limiter measures on its own timer; give it a first measurement.
        assert!(
            eventually(Duration::from_secs(10), async || s
                .metric("stackline_memory_limiter_rss_bytes", &[])
                .await
                > 0.0)
            .await
        );
        let r = c.export(request("svc", 0, 10, POOL)).await;
        if refuse {
            let e = r.unwrap_err();
            // UNAVAILABLE: the collector's exporters (and ours) retry it.
            assert_eq!(e.code(), Code::Unavailable, "{e:?}");
            assert!(e.message().contains("memory limiter"), "{}", e.message());
            assert_eq!(
                s.metric("stackline_memory_limiter_refusing", &[]).await,
                1.0
            );
            assert_eq!(
                s.metric("otelcol_processor_refused_profile_samples_total", &[])
                    .await,
                10.0
            );
            // Refused to a client that retries: not lost, so not counted as dropped.
            assert_eq!(
                s.metric(
                    "stackline_pipeline_dropped_samples_total",
                    &[("reason", "memory_limit")]
                )
                .await,
                0.0
            );
            assert!(backend.samples().is_empty());
        } else {
            r.unwrap();
            assert!(
                eventually(Duration::from_secs(10), async || backend.samples().len()
                    == 10)
                .await
            );
            assert_eq!(
                s.metric("stackline_memory_limiter_refusing", &[]).await,
                0.0
            );
        }
    }
}
