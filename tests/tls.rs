//! TLS on both hops of a gateway, with mutual authentication: an agent's client →
//! the OTLP receiver, and the OTLP exporter → the backend. Real certificates (rcgen),
//! real tonic servers and clients, the real binary.

use stackline_testkit as common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use stackline::otlp::collector::profiles_service_client::ProfilesServiceClient;
use stackline::otlp::synth::request;
use tonic::transport::{Channel, Endpoint};

async fn tls_client(
    port: u16,
    tls: tonic::transport::ClientTlsConfig,
) -> Result<ProfilesServiceClient<Channel>, tonic::transport::Error> {
    let ch = Endpoint::from_shared(format!("https://localhost:{port}"))?
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(ProfilesServiceClient::new(ch))
}

/// A gateway config: the OTLP receiver with `receiver_tls` (a `tls: {…}` entry, or
/// nothing), and an OTLP exporter to `localhost:backend_port` trusting `ca` and
/// presenting the client certificate of `pki`.
fn gateway(receiver_tls: &str, backend_port: u16, ca: &std::path::Path, pki: &Pki) -> String {
    format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: "{{OTLP}}"
        {receiver_tls}
exporters:
  otlp/backend:
    endpoint: "localhost:{backend_port}"
    tls: {{ ca_file: "{ca}", cert_file: "{cc}", key_file: "{ck}" }}
    retry_on_failure: {{ initial_interval: 100ms, max_interval: 200ms }}
service:
  pipelines: {{ profiles: {{ receivers: [otlp], exporters: [otlp/backend] }} }}
  telemetry: {{ metrics: {{ address: "{{METRICS}}" }} }}
"#,
        ca = ca.display(),
        cc = pki.client_cert.display(),
        ck = pki.client_key.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_on_both_hops_delivers_and_refuses_unauthenticated_peers() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let reserved = ReservedPort::new();
    let backend_port = reserved.addr().port();
    let backend = Backend::default();
    let _stop = backend.serve_tls(reserved, pki.server_tls()).await;

    let s = Stackline::start(
        dir.path(),
        &gateway(
            &format!(
                r#"tls: {{ cert_file: "{}", key_file: "{}", client_ca_file: "{}" }}"#,
                pki.server_cert.display(),
                pki.server_key.display(),
                pki.ca.display()
            ),
            backend_port,
            &pki.ca,
            &pki,
        ),
    );
    let port = s.otlp.port();

    // An authenticated agent: delivered to the backend over TLS.
    let mut c = tls_client(port, pki.client_tls(true)).await.unwrap();
    c.export(request("svc", 0, 100, 5)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || backend.samples().len()
            == 100)
        .await,
        "{}",
        s.logs()
    );
    assert_eq!(
        s.metric("otelcol_exporter_send_failed_profile_samples_total", &[])
            .await,
        0.0
    );

    // Without a client certificate, or in plaintext: refused, nothing accepted.
    let no_cert = match tls_client(port, pki.client_tls(false)).await {
        Ok(mut c) => c.export(request("svc", 100, 5, 5)).await.is_err(),
        Err(_) => true,
    };
    assert!(no_cert, "a client without a certificate was accepted");
    let mut plain = client(format!("http://127.0.0.1:{port}")).await;
    assert!(plain.export(request("svc", 200, 5, 5)).await.is_err());
    assert_eq!(
        s.metric("otelcol_receiver_accepted_profile_samples_total", &[])
            .await,
        100.0
    );
    assert_eq!(backend.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exporter_that_does_not_trust_the_backend_delivers_nothing_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let other = tempfile::tempdir().unwrap();
    let stranger = Pki::new(other.path());
    let reserved = ReservedPort::new();
    let backend_port = reserved.addr().port();
    let backend = Backend::default();
    let _stop = backend.serve_tls(reserved, pki.server_tls()).await;
    let s = Stackline::start(
        dir.path(),
        // Trusts another CA than the one that signed the backend.
        &gateway("", backend_port, &stranger.ca, &pki),
    );
    client(s.endpoint())
        .await
        .export(request("svc", 0, 10, 5))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            let (code, body) = s.get("/health").await;
            code == 503 && body.contains("exporter/otlp/backend")
        })
        .await,
        "{}",
        s.logs()
    );
    assert!(backend.samples().is_empty());
    assert!(s.logs().contains("retrying in"), "{}", s.logs());
}

#[test]
fn tls_settings_are_validated() {
    use stackline::config::Config;
    use stackline::pipeline::{Factories, Graph};
    let cfg = Config::from_yaml(
        "t.yaml",
        r#"
receivers: { otlp: { protocols: { grpc: { tls: { cert_file: /nonexistent/s.pem, key_file: /nonexistent/s.key } } } } }
exporters:
  otlp/a: { endpoint: "http://h:1" }
  otlp/b: { endpoint: "https://h:1", tls: { insecure: true } }
  otlp/c: { endpoint: "h:1", tls: { cert_file: /etc/hostname } }
service: { pipelines: { profiles: { receivers: [otlp], exporters: [otlp/a, otlp/b, otlp/c] } } }
"#,
    )
    .unwrap();
    let errs: Vec<String> = Graph::build(&cfg, &Factories::builtin())
        .err()
        .unwrap()
        .0
        .iter()
        .map(|e| e.to_string())
        .collect();
    for want in [
        "receivers.otlp.protocols.grpc.tls.cert_file: cannot read /nonexistent/s.pem",
        "receivers.otlp.protocols.grpc.tls.key_file: cannot read /nonexistent/s.key",
        "exporters.otlp/a.tls.insecure: the endpoint says http:// (plaintext): set `tls: { insecure: true }` to send without TLS",
        "exporters.otlp/b.tls.insecure: is true but the endpoint says https://; drop the scheme or set insecure: false",
        "exporters.otlp/c.tls: cert_file and key_file go together (mutual TLS needs both)",
    ] {
        assert!(
            errs.iter().any(|e| e == want),
            "missing {want} in {errs:#?}"
        );
    }
}
