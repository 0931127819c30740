//! TLS written once: server-side TLS for the HTTP listeners (from the same PEM files as
//! the gRPC receiver's `tls` settings), and the checks every TLS client's files get
//! when the configuration is validated.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Builds an acceptor presenting `cert_file` (chain) with `key_file`; with
/// `client_ca_file`, clients must show a certificate signed by one of its CAs.
/// Errors name the file and what is wrong with it.
pub fn acceptor(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("cannot read {}: {e}", ca.display()))?
            {
                let c = c.map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "{} and {} do not make a usable certificate and key: {e}",
            cert_file.display(),
            key_file.display()
        )
    })?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// The checks every TLS client's `tls` files get at validation (the `otlp` and
/// `otlphttp` exporters): `cert_file` and `key_file` come together, and each file named
/// is readable. Paths in the errors are relative to the component (`tls.ca_file`).
pub fn validate_client_files(
    ca_file: Option<&Path>,
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
) -> Vec<crate::config::ConfigError> {
    use crate::config::ConfigError;
    let mut errs = Vec::new();
    if cert_file.is_some() != key_file.is_some() {
        errs.push(ConfigError::new(
            "tls",
            "cert_file and key_file go together (mutual TLS needs both)",
        ));
    }
    for (name, f) in [
        ("ca_file", ca_file),
        ("cert_file", cert_file),
        ("key_file", key_file),
    ] {
        if let Some(f) = f
            && std::fs::metadata(f).is_err()
        {
            errs.push(ConfigError::new(
                format!("tls.{name}"),
                format!("cannot read {}", f.display()),
            ));
        }
    }
    errs
}
