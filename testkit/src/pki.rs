//! Certificates and secrets: an rcgen CA with server and client certificates, and scripts/gen-secrets.sh.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A test PKI: a CA, and a server and a client certificate it signed (server valid for
/// `localhost` and 127.0.0.1), written as PEM files into `dir`.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()]);
        let (client_cert, client_key) = leaf(vec!["agent".into()]);
        let write = |name: &str, pem: &str| {
            let p = dir.join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        Pki {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
        }
    }

    pub fn server_tls(&self) -> tonic::transport::ServerTlsConfig {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        ServerTlsConfig::new()
            .identity(Identity::from_pem(
                std::fs::read(&self.server_cert).unwrap(),
                std::fs::read(&self.server_key).unwrap(),
            ))
            .client_ca_root(Certificate::from_pem(std::fs::read(&self.ca).unwrap()))
    }

    /// TLS for a client; with `identity`, it presents the client certificate.
    pub fn client_tls(&self, identity: bool) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut t = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&self.ca).unwrap()))
            .domain_name("localhost");
        if identity {
            t = t.identity(Identity::from_pem(
                std::fs::read(&self.client_cert).unwrap(),
                std::fs::read(&self.client_key).unwrap(),
            ));
        }
        t
    }
}

/// Runs scripts/gen-secrets.sh into `dir/secrets` and returns that directory.
pub fn gen_secrets(dir: &Path) -> PathBuf {
    let out = dir.join("secrets");
    let st = Command::new("bash")
        .arg(Path::new(crate::REPO).join("scripts/gen-secrets.sh"))
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "scripts/gen-secrets.sh failed");
    out
}
