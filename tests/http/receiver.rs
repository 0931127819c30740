//! The OTLP/HTTP receiver: protobuf and JSON in, what it must refuse refused, and TLS.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_receiver_takes_protobuf_and_json_and_refuses_what_it_must() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), "");
    let url = format!("http://{}{PATH}", gw.http);
    let http = reqwest::Client::new();
    let post = |ctype: &'static str,
                body: Vec<u8>,
                token: Option<&'static str>,
                enc: Option<&'static str>| {
        let mut r = http.post(&url).header("content-type", ctype).body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(e) = enc {
            r = r.header("content-encoding", e);
        }
        r.send()
    };

    // Protobuf, gzip-compressed.
    let a = request("http-proto", 0, 40, 8);
    let r = post(
        "application/x-protobuf",
        gzip(&a.encode_to_vec()),
        Some("s3cret-token"),
        Some("gzip"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-protobuf");
    let resp = ExportProfilesServiceResponse::decode(r.bytes().await.unwrap()).unwrap();
    assert!(
        resp.partial_success
            .is_none_or(|p| p.rejected_profiles == 0)
    );

    // OTLP/JSON, plain.
    let b = request("http-json", 100, 25, 8);
    let r = post(
        "application/json",
        stackline::otlp::json::to_vec(&b),
        Some("s3cret-token"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");

    let accepted = || async {
        gw.metric(
            "otelcol_receiver_accepted_profile_samples_total",
            &[("transport", "http")],
        )
        .await
    };
    assert_eq!(accepted().await, 65.0);

    // Refusals: none of them may reach the pipeline.
    let refused = |reason: &'static str| {
        let gw = &gw;
        async move {
            gw.metric(
                "otelcol_receiver_refused_profile_samples_total",
                &[("transport", "http"), ("reason", reason)],
            )
            .await
        }
    };
    let body = a.encode_to_vec();
    let r = post("application/x-protobuf", body.clone(), None, None)
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = post("application/x-protobuf", body.clone(), Some("wrong"), None)
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(refused("unauthenticated").await, 2.0);

    let r = post(
        "application/x-protobuf",
        vec![0xff, 0xff, 0xff, 0x0f],
        Some("s3cret-token"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let msg = r.text().await.unwrap();
    let r = post(
        "application/json",
        b"{\"resourceProfiles\": 7}".to_vec(),
        Some("s3cret-token"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let json_msg = r.text().await.unwrap();
    assert!(json_msg.contains("resourceProfiles"), "{json_msg}");
    assert!(!msg.is_empty());
    // A request whose references point nowhere: decoded, then refused by the checks.
    let mut bad = request("bad", 0, 3, 2);
    bad.resource_profiles[0].scope_profiles[0].profiles[0].samples[0].stack_index = 9999;
    let r = post(
        "application/x-protobuf",
        bad.encode_to_vec(),
        Some("s3cret-token"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("stack_index"));
    assert!(refused("invalid_request").await >= 3.0);

    // Too large: 2 MiB plain, and a gzip bomb of a few KB that inflates past 1 MiB.
    let r = post(
        "application/x-protobuf",
        vec![0u8; 2 << 20],
        Some("s3cret-token"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 413);
    let bomb = gzip(&vec![0u8; 16 << 20]);
    assert!(bomb.len() < 64 << 10);
    let r = post(
        "application/x-protobuf",
        bomb,
        Some("s3cret-token"),
        Some("gzip"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 413);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("max_request_body_size_mib")
    );
    assert_eq!(refused("too_large").await, 2.0);

    // Within the body limit but over a decode limit (receivers.otlp.limits, set to
    // 100,000 samples here): 200,000 empty samples, in protobuf and in JSON.
    let mut many = request("many", 0, 1, 1);
    many.resource_profiles[0].scope_profiles[0].profiles[0].samples =
        vec![Default::default(); 200_000];
    for (ctype, body) in [
        ("application/x-protobuf", many.encode_to_vec()),
        ("application/json", stackline::otlp::json::to_vec(&many)),
    ] {
        let r = post(ctype, gzip(&body), Some("s3cret-token"), Some("gzip"))
            .await
            .unwrap();
        assert_eq!(r.status(), 413, "{ctype}");
        let text = r.text().await.unwrap();
        assert!(
            text.contains("200000 samples") && text.contains("limits.max_samples"),
            "{text}"
        );
    }
    assert_eq!(refused("over_limit").await, 400_000.0);

    let r = post("text/plain", body.clone(), Some("s3cret-token"), None)
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = post(
        "application/x-protobuf",
        body.clone(),
        Some("s3cret-token"),
        Some("br"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 415);

    // Only the two good requests were accepted and written.
    assert_eq!(accepted().await, 65.0);
    let out = dir.path().join("out.jsonl");
    assert!(
        eventually(Duration::from_secs(10), async || samples_in(
            &read_json_lines(&out)
        ) == 65)
        .await
    );

    // gRPC: the same token file.
    let mut c = client(gw.endpoint()).await;
    let e = c.export(request("grpc", 0, 5, 2)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let mut req = tonic::Request::new(request("grpc", 0, 5, 2));
    req.metadata_mut()
        .insert("authorization", "Bearer s3cret-token".parse().unwrap());
    c.export(req).await.unwrap();
    assert_eq!(
        gw.metric(
            "otelcol_receiver_refused_profile_samples_total",
            &[("transport", "grpc"), ("reason", "unauthenticated")]
        )
        .await,
        1.0
    );

    // A rotated token is picked up without a restart, and the old one stops working.
    std::fs::write(dir.path().join("token"), "rotated-token").unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            post(
                "application/x-protobuf",
                body.clone(),
                Some("rotated-token"),
                None,
            )
            .await
            .unwrap()
            .status()
                == 200
        })
        .await
    );
    let r = post(
        "application/x-protobuf",
        body.clone(),
        Some("s3cret-token"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_receiver_serves_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let extra = format!(
        ", tls: {{ cert_file: \"{}\", key_file: \"{}\" }}",
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let gw = gateway(dir.path(), &extra);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let r = https
        .post(format!("https://localhost:{}{PATH}", gw.http.port()))
        .header("content-type", "application/x-protobuf")
        .bearer_auth("s3cret-token")
        .body(request("tls", 0, 7, 2).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP to the TLS port gets no answer, and the failed handshake is counted.
    assert!(
        reqwest::get(format!("http://{}{PATH}", gw.http))
            .await
            .is_err()
    );
    assert!(
        eventually(Duration::from_secs(5), async || {
            gw.metric(
                "stackline_http_connections_refused_total",
                &[("listener", "otlp/http"), ("reason", "tls_handshake")],
            )
            .await
                >= 1.0
        })
        .await
    );
}
