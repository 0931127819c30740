//! The otlphttp exporter: retries as the backend says, counts what it rejects; agents reach a gateway over HTTP and gRPC with tokens.

use super::*;

/// What the scripted backend saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    path: String,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

/// An OTLP/HTTP backend that answers from a script (then 200), recording every request.
#[derive(Clone, Default)]
struct Scripted {
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Mutex<std::collections::VecDeque<axum::response::Response>>>,
}

impl Scripted {
    async fn serve(self) -> std::net::SocketAddr {
        use axum::response::IntoResponse;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let me = self.clone();
                async move {
                    let body = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
                        let mut out = Vec::new();
                        flate2::read::GzDecoder::new(&body[..])
                            .read_to_end(&mut out)
                            .unwrap();
                        out
                    } else {
                        body.to_vec()
                    };
                    let json = headers
                        .get("content-type")
                        .is_some_and(|v| v == "application/json");
                    me.seen.lock().unwrap().push(Seen {
                        at: Instant::now(),
                        path: uri.path().to_owned(),
                        headers,
                        body,
                    });
                    let next = me.script.lock().unwrap().pop_front();
                    next.unwrap_or_else(|| {
                        if json {
                            return ([("content-type", "application/json")], "{}").into_response();
                        }
                        (
                            [("content-type", "application/x-protobuf")],
                            ExportProfilesServiceResponse::default().encode_to_vec(),
                        )
                            .into_response()
                    })
                }
            },
        );
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        addr
    }

    fn push(&self, status: u16, headers: &[(&'static str, &'static str)], body: Vec<u8>) {
        let mut r = axum::response::Response::new(axum::body::Body::from(body));
        *r.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            r.headers_mut()
                .insert(*k, axum::http::HeaderValue::from_static(v));
        }
        self.script.lock().unwrap().push_back(r);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    missing = "python_otlp",
    ignore = "needs Python's opentelemetry-proto (pip install opentelemetry-proto)"
)]
async fn the_otlphttp_exporter_retries_as_told_and_counts_what_the_backend_rejects() {
    let backend = Scripted::default();
    // First attempt: 503 with Retry-After: 2; second: 429 without it; then accepted.
    backend.push(503, &[("retry-after", "2")], b"overloaded".to_vec());
    backend.push(429, &[], b"slow down".to_vec());
    let addr = backend.clone().serve().await;
    let json_backend = Scripted::default();
    let json_addr = json_backend.clone().serve().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "exporter-token").unwrap();
    let agent = Stackline::start(
        dir.path(),
        &format!(
            r#"
receivers: {{ otlp: {{ protocols: {{ grpc: {{ endpoint: "{{OTLP}}" }} }} }} }}
exporters:
  otlphttp:
    endpoint: http://{addr}
    headers: {{ X-Scope-OrgID: tenant-a }}
    auth: {{ bearer_token_file: "{{DIR}}/token" }}
    retry_on_failure: {{ initial_interval: 100ms, max_interval: 200ms, max_elapsed_time: 60s }}
  otlphttp/json:
    profiles_endpoint: http://{json_addr}/custom/profiles
    encoding: json
    compression: none
service:
  pipelines:
    profiles: {{ receivers: [otlp], exporters: [otlphttp] }}
    profiles/json: {{ receivers: [otlp], exporters: [otlphttp/json] }}
  telemetry: {{ metrics: {{ address: "{{METRICS}}" }} }}
"#
        ),
    );
    let mut c = client(agent.endpoint()).await;
    let sent = request("agent", 0, 30, 6);
    c.export(sent.clone()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(20), async || {
            agent
                .metric(
                    "otelcol_exporter_sent_profile_samples_total",
                    &[("exporter", "otlphttp")],
                )
                .await
                == 30.0
        })
        .await,
        "{}",
        agent.logs()
    );
    let seen: Vec<Seen> = backend
        .seen()
        .into_iter()
        .filter(|s| s.path == PATH)
        .collect();
    assert_eq!(seen.len(), 3, "503, 429, then 200");
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "Retry-After: 2 was not honoured: {gap:?}"
    );
    assert!(seen[2].at - seen[1].at < Duration::from_secs(1));
    for s in &seen {
        assert_eq!(s.headers["content-type"], "application/x-protobuf");
        assert_eq!(s.headers["content-encoding"], "gzip");
        assert_eq!(s.headers["x-scope-orgid"], "tenant-a");
        assert_eq!(s.headers["authorization"], "Bearer exporter-token");
        let got = ProfilesRequest::decode(&s.body[..]).unwrap();
        assert_eq!(stackline::otlp::sample_count(&got), 30);
    }

    // The JSON exporter used its own URL, and what it sent is read by the official parser.
    assert!(
        eventually(Duration::from_secs(10), async || !json_backend
            .seen()
            .is_empty())
        .await
    );
    let json: Vec<Seen> = json_backend
        .seen()
        .into_iter()
        .filter(|s| s.path == "/custom/profiles")
        .collect();
    assert!(!json.is_empty());
    assert_eq!(json[0].headers["content-type"], "application/json");
    assert!(json[0].headers.get("content-encoding").is_none());
    let lines = dir.path().join("sent.jsonl");
    std::fs::write(&lines, [&json[0].body[..], b"\n"].concat()).unwrap();
    if let Some(back) = official_parse(&lines) {
        assert_eq!(stackline::otlp::sample_count(&back[0]), 30);
    }

    // A partial success: the rejected profiles are counted, not the whole request as sent.
    let partial = ExportProfilesServiceResponse {
        partial_success: Some(stackline::otlp::collector::ExportProfilesPartialSuccess {
            rejected_profiles: 1,
            error_message: "profile too old".into(),
        }),
    };
    backend.push(
        200,
        &[("content-type", "application/x-protobuf")],
        partial.encode_to_vec(),
    );
    c.export(request("agent", 30, 10, 6)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            agent
                .metric(
                    "stackline_exporter_rejected_profiles_total",
                    &[("exporter", "otlphttp")],
                )
                .await
                == 1.0
        })
        .await
    );
    // A permanent error: counted as failed, not retried.
    backend.push(400, &[], b"bad request".to_vec());
    let before = backend.seen().len();
    c.export(request("agent", 40, 5, 6)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            agent
                .metric(
                    "otelcol_exporter_send_failed_profile_samples_total",
                    &[("exporter", "otlphttp")],
                )
                .await
                >= 5.0
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after: Vec<Seen> = backend.seen()[before..]
        .iter()
        .filter(|s| s.path == PATH)
        .cloned()
        .collect();
    assert_eq!(after.len(), 1, "a 400 must not be retried");

    // Every sample accounted for.
    agent.sigterm();
    let mut agent = agent;
    assert!(agent.wait(Duration::from_secs(30)).success());
    let sums = agent.exporter_summaries();
    for name in ["exporter/otlphttp", "exporter/otlphttp/json"] {
        let s = &sums[name];
        assert_eq!(s["accepted"], 45, "{name}: {s:?}");
        assert_eq!(
            s["accepted"],
            s["sent"] + s["failed"] + s["dropped"],
            "{name}: {s:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_reach_a_gateway_over_otlp_http_and_grpc_with_tokens() {
    let gdir = tempfile::tempdir().unwrap();
    let gw = gateway(gdir.path(), "");
    let adir = tempfile::tempdir().unwrap();
    std::fs::write(adir.path().join("token"), "s3cret-token").unwrap();
    std::fs::write(adir.path().join("wrong"), "not-the-token").unwrap();
    let agent = Stackline::start(
        adir.path(),
        &format!(
            r#"
receivers: {{ otlp: {{ protocols: {{ grpc: {{ endpoint: "{{OTLP}}" }} }} }} }}
exporters:
  otlphttp/proto: {{ endpoint: "http://{http}", auth: {{ bearer_token_file: "{{DIR}}/token" }} }}
  otlphttp/json: {{ endpoint: "http://{http}", encoding: json, auth: {{ bearer_token_file: "{{DIR}}/token" }} }}
  otlp/grpc: {{ endpoint: "{grpc}", tls: {{ insecure: true }}, auth: {{ bearer_token_file: "{{DIR}}/token" }} }}
  otlp/wrong: {{ endpoint: "{grpc}", tls: {{ insecure: true }}, auth: {{ bearer_token_file: "{{DIR}}/wrong" }} }}
service:
  pipelines: {{ profiles: {{ receivers: [otlp], exporters: [otlphttp/proto, otlphttp/json, otlp/grpc, otlp/wrong] }} }}
  telemetry: {{ metrics: {{ address: "{{METRICS}}" }} }}
"#,
            http = gw.http,
            grpc = gw.otlp
        ),
    );
    let mut c = client(agent.endpoint()).await;
    c.export(request("agent", 0, 20, 5)).await.unwrap();
    // Three good copies arrive; the wrong token is refused and counted as failed at once.
    let out = gdir.path().join("out.jsonl");
    assert!(
        eventually(Duration::from_secs(20), async || samples_in(
            &read_json_lines(&out)
        ) == 60)
        .await,
        "{}",
        agent.logs()
    );
    assert!(
        eventually(Duration::from_secs(10), async || {
            agent
                .metric(
                    "otelcol_exporter_send_failed_profile_samples_total",
                    &[("exporter", "otlp/wrong")],
                )
                .await
                == 20.0
        })
        .await
    );
    assert!(agent.logs().contains("Unauthenticated"), "{}", agent.logs());
    assert_eq!(
        gw.metric(
            "otelcol_receiver_refused_profile_samples_total",
            &[("transport", "grpc"), ("reason", "unauthenticated")]
        )
        .await,
        1.0
    );
}
