//! Settings of the `otlp` receiver.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::{ConfigError, Validate};

/// `receivers.otlp`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpReceiverConfig {
    /// The protocols served; each one listed is on. Default: gRPC only.
    #[serde(default = "default_protocols")]
    pub protocols: Protocols,
    /// What one request may expand to once decoded (both protocols): `max_samples`,
    /// `max_stacks`, `max_locations`, `max_stack_depth`, `max_decoded_size_mib`. A request over a limit is
    /// refused before it is decoded (gRPC RESOURCE_EXHAUSTED, HTTP 413).
    #[serde(default)]
    pub limits: crate::otlp::limits::DecodeLimits,
    /// Bytes of requests the receiver holds at once, both protocols together, from
    /// decoding until the answer (their estimated decoded size, as `limits` measures
    /// it). A request that does not fit is refused at once (gRPC RESOURCE_EXHAUSTED,
    /// HTTP 503 with `Retry-After`), so the client retries later or elsewhere. Default
    /// 256 (MiB): several requests at the 32 MiB message limit.
    #[serde(default = "default_max_in_flight_mib")]
    pub max_in_flight_mib: u64,
}

fn default_max_in_flight_mib() -> u64 {
    256
}

impl Default for OtlpReceiverConfig {
    fn default() -> Self {
        OtlpReceiverConfig {
            protocols: default_protocols(),
            limits: Default::default(),
            max_in_flight_mib: default_max_in_flight_mib(),
        }
    }
}

fn default_protocols() -> Protocols {
    Protocols {
        grpc: Some(GrpcConfig::default()),
        http: None,
    }
}

/// `receivers.otlp.protocols`: as in the collector, a protocol is served when its key
/// is present (`grpc:` alone takes the defaults).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protocols {
    /// The gRPC server (`opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export`).
    #[serde(default, deserialize_with = "present")]
    pub grpc: Option<GrpcConfig>,
    /// OTLP/HTTP: `POST /v1development/profiles`, protobuf or JSON.
    #[serde(default, deserialize_with = "present")]
    pub http: Option<HttpConfig>,
}

/// A key that is present is on, even with no value (`http:` means "http with defaults").
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(Option::<T>::deserialize(d)?.unwrap_or_default()))
}

/// `receivers.otlp.protocols.http`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `host:port` to listen on. Default `127.0.0.1:4318`.
    pub endpoint: String,
    /// Largest request body accepted, in MiB, after decompression. Default 32.
    pub max_request_body_size_mib: u64,
    /// Require `Authorization: Bearer <token>`; others get 401.
    pub auth: Option<crate::auth::AuthConfig>,
    /// Serve HTTPS instead of plaintext (same files as the gRPC `tls`).
    pub tls: Option<ServerTlsConfig>,
    /// Connections open at once; further ones are closed on accept and counted in
    /// `stackline_http_connections_refused_total`. Default 1024 (one per agent that sends here).
    pub max_connections: usize,
    /// Time a client has to send a request's headers (and to finish the TLS handshake).
    /// Default `10s`.
    #[serde(with = "crate::config::units::duration")]
    pub read_header_timeout: std::time::Duration,
    /// Time a client has to send a request's whole body once its headers are in; then
    /// it is answered 408 and counted. Default `30s`.
    #[serde(with = "crate::config::units::duration")]
    pub read_timeout: std::time::Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            endpoint: "127.0.0.1:4318".into(),
            max_request_body_size_mib: 32,
            auth: None,
            tls: None,
            max_connections: 1024,
            read_header_timeout: std::time::Duration::from_secs(10),
            read_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// `receivers.otlp.protocols.grpc`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// `host:port` to listen on. Default `127.0.0.1:4317`; use `0.0.0.0:4317` to accept
    /// from other hosts (e.g. as a gateway behind a Kubernetes Service).
    pub endpoint: String,
    /// Largest request accepted, in MiB, after decompression. Default 32.
    pub max_recv_msg_size_mib: u64,
    /// Serve TLS instead of plaintext. Default: plaintext.
    pub tls: Option<ServerTlsConfig>,
    /// Require `authorization: Bearer <token>` metadata; others get UNAUTHENTICATED.
    pub auth: Option<crate::auth::AuthConfig>,
    /// Requests in flight on one connection (HTTP/2 streams). Default 100.
    pub max_concurrent_streams: u32,
    /// Connections open at once; further ones are closed on accept and counted in
    /// `stackline_http_connections_refused_total{listener="otlp/grpc"}`. Default 1024
    /// (one per agent that sends here).
    pub max_connections: usize,
    /// Time a client has to finish the TLS handshake (in plaintext, to send its first
    /// bytes); then the connection is closed and counted. Default `10s`.
    #[serde(with = "crate::config::units::duration")]
    pub handshake_timeout: std::time::Duration,
    /// As the collector's `keepalive.server_parameters`.
    pub keepalive: Keepalive,
}

/// `protocols.grpc.keepalive`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Keepalive {
    pub server_parameters: ServerParameters,
}

/// `protocols.grpc.keepalive.server_parameters`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerParameters {
    /// Close a connection after this long (clients reconnect, and spread over replicas
    /// that were added since). Default: never.
    #[serde(with = "crate::config::units::duration::option")]
    pub max_connection_age: Option<std::time::Duration>,
    /// Time requests on a closing connection get to finish, counted from
    /// `max_connection_age`; then the connection is closed with whatever is still in flight
    /// (the clients retry it). Needs `max_connection_age`. Default: unlimited.
    #[serde(with = "crate::config::units::duration::option")]
    pub max_connection_age_grace: Option<std::time::Duration>,
    /// Ping an idle client after this long. Default `2h`.
    #[serde(with = "crate::config::units::duration")]
    pub time: std::time::Duration,
    /// Close the connection when a ping is not answered within this. Default `20s`.
    #[serde(with = "crate::config::units::duration")]
    pub timeout: std::time::Duration,
}

impl Default for ServerParameters {
    fn default() -> Self {
        ServerParameters {
            max_connection_age: None,
            max_connection_age_grace: None,
            time: std::time::Duration::from_secs(2 * 3600),
            timeout: std::time::Duration::from_secs(20),
        }
    }
}

/// `tls` of a receiver protocol.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate (chain) the server presents.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
    /// PEM CA(s) client certificates must be signed by: set it to require mutual TLS.
    pub client_ca_file: Option<PathBuf>,
}

impl ServerTlsConfig {
    fn validate(&self, at: &str, errs: &mut Vec<ConfigError>) {
        for (name, f) in [
            ("cert_file", Some(&self.cert_file)),
            ("key_file", Some(&self.key_file)),
            ("client_ca_file", self.client_ca_file.as_ref()),
        ] {
            if let Some(f) = f
                && std::fs::metadata(f).is_err()
            {
                errs.push(ConfigError::new(
                    format!("{at}.{name}"),
                    format!("cannot read {}", f.display()),
                ));
            }
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            endpoint: "127.0.0.1:4317".into(),
            max_recv_msg_size_mib: 32,
            tls: None,
            auth: None,
            max_concurrent_streams: 100,
            max_connections: 1024,
            handshake_timeout: std::time::Duration::from_secs(10),
            keepalive: Keepalive::default(),
        }
    }
}

impl Validate for OtlpReceiverConfig {
    fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let p = &self.protocols;
        if p.grpc.is_none() && p.http.is_none() {
            errs.push(ConfigError::new(
                "protocols",
                "no protocol is on; list `grpc:` and/or `http:`",
            ));
        }
        if self.max_in_flight_mib == 0 {
            errs.push(ConfigError::new(
                "max_in_flight_mib",
                "must be at least 1 (no request would ever fit)",
            ));
        }
        let l = &self.limits;
        for (name, v) in [
            ("max_samples", l.max_samples),
            ("max_stacks", l.max_stacks),
            ("max_locations", l.max_locations),
            ("max_stack_depth", l.max_stack_depth),
            ("max_decoded_size_mib", l.max_decoded_size_mib),
        ] {
            if v == 0 {
                errs.push(ConfigError::new(
                    format!("limits.{name}"),
                    "must be at least 1 (it bounds what one request may hold)",
                ));
            }
        }
        if let Some(g) = &p.grpc {
            if g.max_connections == 0 {
                errs.push(ConfigError::new(
                    "protocols.grpc.max_connections",
                    "must be at least 1",
                ));
            }
            if g.max_concurrent_streams == 0 {
                errs.push(ConfigError::new(
                    "protocols.grpc.max_concurrent_streams",
                    "must be at least 1",
                ));
            }
            let sp = &g.keepalive.server_parameters;
            for (name, d) in [
                ("max_connection_age", sp.max_connection_age),
                ("time", Some(sp.time)),
                ("timeout", Some(sp.timeout)),
            ] {
                if d.is_some_and(|d| d.is_zero()) {
                    errs.push(ConfigError::new(
                        format!("protocols.grpc.keepalive.server_parameters.{name}"),
                        "must be greater than 0",
                    ));
                }
            }
            if sp.max_connection_age_grace.is_some() && sp.max_connection_age.is_none() {
                errs.push(ConfigError::new(
                    "protocols.grpc.keepalive.server_parameters.max_connection_age_grace",
                    "counts from max_connection_age, which is not set: set both, or neither",
                ));
            }
            check_endpoint("protocols.grpc.endpoint", &g.endpoint, &mut errs);
            check_mib(
                "protocols.grpc.max_recv_msg_size_mib",
                g.max_recv_msg_size_mib,
                &mut errs,
            );
            if let Some(t) = &g.tls {
                t.validate("protocols.grpc.tls", &mut errs);
            }
            if let Some(a) = &g.auth {
                a.validate("protocols.grpc.auth", &mut errs);
            }
        }
        if let Some(h) = &p.http {
            check_endpoint("protocols.http.endpoint", &h.endpoint, &mut errs);
            check_mib(
                "protocols.http.max_request_body_size_mib",
                h.max_request_body_size_mib,
                &mut errs,
            );
            if let Some(a) = &h.auth {
                a.validate("protocols.http.auth", &mut errs);
            }
            if let Some(t) = &h.tls {
                t.validate("protocols.http.tls", &mut errs);
            }
            if h.max_connections == 0 {
                errs.push(ConfigError::new(
                    "protocols.http.max_connections",
                    "must be at least 1, e.g. 1024",
                ));
            }
            if h.read_header_timeout.is_zero() {
                errs.push(ConfigError::new(
                    "protocols.http.read_header_timeout",
                    "must be greater than 0, e.g. `10s`",
                ));
            }
        }
        errs
    }
}

/// A listener's `endpoint` must be `host:port`.
fn check_endpoint(path: &str, endpoint: &str, errs: &mut Vec<ConfigError>) {
    if crate::config::units::parse_endpoint(endpoint).is_none() {
        errs.push(ConfigError::new(
            path,
            format!("`{endpoint}` is not a `host:port` address"),
        ));
    }
}

/// A size limit in MiB: from 1 to 2048 (gRPC and HTTP bodies alike).
fn check_mib(path: &str, mib: u64, errs: &mut Vec<ConfigError>) {
    if mib == 0 || mib > 2048 {
        errs.push(ConfigError::new(
            path,
            format!("{mib} is out of range; give a size in MiB from 1 to 2048"),
        ));
    }
}
