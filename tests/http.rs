//! OTLP over HTTP both ways, bearer-token auth on every protocol, and the bounds of the
//! HTTP listeners, against the real binary, real sockets and a real HTTP client.

use stackline_testkit as common;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use prost::Message;
use stackline::otlp::ProfilesRequest;
use stackline::otlp::collector::ExportProfilesServiceResponse;
use stackline::otlp::synth::request;

const PATH: &str = "/v1development/profiles";

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn samples_in(reqs: &[ProfilesRequest]) -> u64 {
    reqs.iter().map(stackline::otlp::sample_count).sum()
}

/// A gateway: OTLP over gRPC and HTTP, both behind the token in `{DIR}/token`, into a
/// JSON-lines file.
fn gateway(dir: &std::path::Path, http_extra: &str) -> Stackline {
    std::fs::write(dir.join("token"), "s3cret-token\n").unwrap();
    let cfg = format!(
        r#"
receivers:
  otlp:
    limits: {{ max_samples: 100000 }}
    protocols:
      grpc: {{ endpoint: "{{OTLP}}", auth: {{ bearer_token_file: "{{DIR}}/token" }} }}
      http: {{ endpoint: "{{HTTP}}", auth: {{ bearer_token_file: "{{DIR}}/token" }}, max_request_body_size_mib: 1 {http_extra} }}
exporters:
  file: {{ path: "{{DIR}}/out.jsonl", format: json, flush_interval: 100ms }}
service:
  pipelines: {{ profiles: {{ receivers: [otlp], exporters: [file] }} }}
  telemetry: {{ metrics: {{ address: "{{METRICS}}" }} }}
"#
    );
    Stackline::start(dir, &cfg)
}

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

/// Whether the server closed `s` (read returns 0 or an error) within `within`.
fn closed_within(s: &mut std::net::TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => true, // an error response counts as an answer that ends the connection
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_listeners_cap_connections_and_close_silent_clients() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), ", max_connections: 2, read_header_timeout: 3s");
    let open = async || {
        gw.metric("stackline_http_connections", &[("listener", "otlp/http")])
            .await
    };
    // The probes that saw the listener come up are gone.
    assert!(eventually(Duration::from_secs(10), async || open().await == 0.0).await);
    // Two clients connect and say nothing.
    let mut quiet: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(gw.http).unwrap())
        .collect();
    // Once the server holds both (a busy machine may take a while to start it)...
    let held = eventually(Duration::from_secs(3), async || open().await == 2.0).await;
    assert!(
        held,
        "the server did not take the two connections: {}",
        gw.get("/metrics").await.1
    );
    // ...a third takes the place of the one idle the longest, which is closed at once.
    let third = std::net::TcpStream::connect(gw.http).unwrap();
    assert!(
        closed_within(&mut quiet[0], Duration::from_secs(2)),
        "the oldest idle connection was kept past the cap"
    );
    assert!(
        gw.metric(
            "stackline_http_connections_refused_total",
            &[("listener", "otlp/http"), ("reason", "idle_evicted")]
        )
        .await
            >= 1.0
    );
    // The silent ones are closed once the header-read time is over.
    let t = Instant::now();
    for q in [&mut quiet[1], &mut { third }] {
        assert!(
            closed_within(q, Duration::from_secs(8)),
            "a silent client kept its connection"
        );
    }
    assert!(t.elapsed() < Duration::from_secs(8));
    drop(quiet);
    assert!(eventually(Duration::from_secs(10), async || open().await == 0.0).await);
    // Connections with a request in flight (headers in, body awaited) are not idle:
    // past the cap, a new connection is refused at once instead.
    let mut busy: Vec<_> = (0..2)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(gw.http).unwrap();
            c.write_all(format!("POST {PATH} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer s3cret-token\r\ncontent-type: application/x-protobuf\r\ncontent-length: 1000\r\n\r\n").as_bytes())
                .unwrap();
            c
        })
        .collect();
    assert!(eventually(Duration::from_secs(3), async || open().await == 2.0).await);
    // Give the server the time to start both requests.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fourth = std::net::TcpStream::connect(gw.http).unwrap();
    assert!(
        closed_within(&mut fourth, Duration::from_secs(2)),
        "a connection over the cap was kept while every other one was busy"
    );
    assert!(
        gw.metric(
            "stackline_http_connections_refused_total",
            &[
                ("listener", "otlp/http"),
                ("reason", "too_many_connections")
            ]
        )
        .await
            >= 1.0
    );
    for b in &mut busy {
        assert!(
            !closed_within(b, Duration::from_millis(300)),
            "a connection with a request in flight was closed"
        );
    }
    drop(busy);
    assert!(eventually(Duration::from_secs(10), async || open().await == 0.0).await);
    // And the listener serves again.
    let r = reqwest::Client::new()
        .post(format!("http://{}{PATH}", gw.http))
        .header("content-type", "application/x-protobuf")
        .bearer_auth("s3cret-token")
        .body(request("after", 0, 3, 2).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The metrics listener has the same bounds: a client trickling its headers is cut off.
    let mut slow = std::net::TcpStream::connect(gw.metrics).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(15)));
}

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
