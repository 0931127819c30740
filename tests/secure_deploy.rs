//! The shipped gateway and agent configurations, run as shipped (only their ports moved
//! to free ones) with the files `scripts/gen-secrets.sh` makes: the agent's profiles
//! reach the gateway over TLS with the token, and a client without the token, or
//! without TLS, is refused.

use stackline_testkit as common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn env(secrets: &Path) -> Vec<(String, String)> {
    vec![
        ("STACKLINE_TLS_DIR".into(), secrets.display().to_string()),
        (
            "STACKLINE_TOKEN_FILE".into(),
            secrets.join("token").display().to_string(),
        ),
    ]
}

/// The shipped gateway, its listeners on free loopback ports, forwarding to a backend
/// that is down (its queue holds the data) and writing ./stackline-out/profiles.jsonl.
fn gateway(dir: &Path, secrets: &Path) -> Stackline {
    let ports = dir.join("ports.yaml");
    std::fs::write(
        &ports,
        r#"
receivers:
  otlp:
    protocols:
      grpc: { endpoint: "127.0.0.1:0" }
      http: { endpoint: "127.0.0.1:0" }
processors:
  symbolizer: { decompress_dir: "" }
service:
  telemetry: { metrics: { address: "127.0.0.1:0" } }
"#,
    )
    .unwrap();
    let mut env = env(secrets);
    env.push(("STACKLINE_BACKEND".into(), "127.0.0.1:9".into()));
    env.push((
        "STACKLINE_QUEUE_DIR".into(),
        dir.join("queue").display().to_string(),
    ));
    Stackline::start_files(dir, &[repo("config/gateway.yaml"), ports], &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(missing = "openssl", ignore = "needs openssl")]
async fn the_shipped_gateway_refuses_clients_without_the_token_or_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = gen_secrets(dir.path());
    let gw = gateway(dir.path(), &secrets);
    let ca = std::fs::read(secrets.join("ca.crt")).unwrap();
    let token = std::fs::read_to_string(secrets.join("token")).unwrap();
    let token = token.trim();
    let req = || stackline::otlp::synth::request("svc", 0, 5, 3);

    // gRPC over TLS, verified against the generated CA under the agents' name.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .domain_name("stackline-gateway");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", gw.otlp))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS to the gateway");
    let mut c =
        stackline::otlp::collector::profiles_service_client::ProfilesServiceClient::new(channel);
    let e = c.export(req()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let mut with_token = tonic::Request::new(req());
    with_token
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    c.export(with_token).await.expect("with the token");

    // Plaintext gRPC gets no answer a client could take for success.
    let plain = async {
        let mut p =
            stackline::otlp::collector::profiles_service_client::ProfilesServiceClient::connect(
                format!("http://{}", gw.otlp),
            )
            .await?;
        p.export(req())
            .await
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error>)?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(15), plain)
            .await
            .is_ok_and(|r| r.is_err()),
        "a plaintext gRPC client got through"
    );

    // OTLP/HTTP: 401 without the token, 200 with it, over TLS.
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .resolve(
            "stackline-gateway",
            std::net::SocketAddr::new([127, 0, 0, 1].into(), gw.http.port()),
        )
        .build()
        .unwrap();
    let url = format!(
        "https://stackline-gateway:{}/v1development/profiles",
        gw.http.port()
    );
    let body = prost::Message::encode_to_vec(&req());
    let post = |auth: bool| {
        let mut r = https
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(body.clone());
        if auth {
            r = r.bearer_auth(token);
        }
        r.send()
    };
    assert_eq!(post(false).await.unwrap().status().as_u16(), 401);
    assert_eq!(post(true).await.unwrap().status().as_u16(), 200);
    // Plain HTTP to the TLS port is not served.
    let plain = reqwest::Client::new()
        .post(format!("http://{}/v1development/profiles", gw.http))
        .body(body.clone())
        .timeout(Duration::from_secs(15))
        .send()
        .await;
    assert!(
        plain.as_ref().map_or(true, |r| !r.status().is_success()),
        "plain HTTP got {:?}",
        plain.map(|r| r.status())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    any(missing = "openssl", missing = "root"),
    ignore = "needs openssl, root"
)]
async fn the_shipped_agent_sends_to_the_shipped_gateway_over_tls_with_the_token() {
    if !bpf_available("secure deployment") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secrets = gen_secrets(dir.path());
    let gw = gateway(dir.path(), &secrets);
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let ports = agent_dir.join("ports.yaml");
    std::fs::write(
        &ports,
        // Sooner than the shipped 5 s, so the test is short.
        "receivers: { ebpf_profiler: { report_interval: 1s } }\nservice: { telemetry: { metrics: { address: \"127.0.0.1:0\" } } }\n",
    )
    .unwrap();
    let mut env = env(&secrets);
    env.push(("STACKLINE_GATEWAY".into(), gw.otlp.to_string()));
    let agent = Stackline::start_files(&agent_dir, &[repo("config/agent.yaml"), ports], &env);
    let accepted = eventually(Duration::from_secs(60), async || {
        gw.metric(
            "otelcol_receiver_accepted_profile_samples_total",
            &[("transport", "grpc")],
        )
        .await
            > 0.0
    })
    .await;
    assert!(
        accepted,
        "the gateway accepted nothing from the agent\nagent:\n{}\ngateway:\n{}",
        agent.logs(),
        gw.logs()
    );
    let unauthenticated = gw
        .metric(
            "otelcol_receiver_refused_profile_samples_total",
            &[("reason", "unauthenticated")],
        )
        .await;
    assert_eq!(unauthenticated, 0.0, "{}", gw.logs());
}
