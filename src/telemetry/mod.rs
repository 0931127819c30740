//! Self-telemetry: Prometheus metrics and `/health` on one HTTP listener, and logs.

mod health;
pub mod names;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

pub use health::{Health, HealthReporter, Status};

/// An error and its causes, `outer: inner: …`, for logs and health: a `Display` of
/// the error alone would drop what its `source` holds (the kernel's errno, an I/O
/// error, the parser's reason).
pub fn chain<'a>(e: &'a (dyn std::error::Error + 'static)) -> Chain<'a> {
    Chain(e)
}

/// See [`chain`].
pub struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once; later calls return the same handle.
/// Returns `None` if another recorder was installed first (then metrics go there).
pub fn install_recorder() -> Option<PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let handle = PrometheusBuilder::new().install_recorder().ok()?;
            names::describe();
            metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            Some(handle)
        })
        .clone()
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "cannot listen for metrics on {address}: {source}; change service.telemetry.metrics.address or set service.telemetry.metrics.level: none"
    )]
    Bind {
        address: String,
        source: std::io::Error,
    },
}

/// Serves `/metrics` and `/health` until `shutdown` fires. Returns the bound address.
pub async fn serve(
    address: &str,
    handle: Option<PrometheusHandle>,
    health: Health,
    shutdown: CancellationToken,
) -> Result<SocketAddr, TelemetryError> {
    let (listener, local) = crate::net::bind("service.telemetry.metrics.address", address)
        .await
        .map_err(|e| TelemetryError::Bind {
            address: address.to_owned(),
            source: e.source,
        })?;
    if let Some(h) = handle.clone() {
        // Histograms and summaries need periodic upkeep to bound their memory.
        let token = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => h.run_upkeep(),
                }
            }
        });
    }
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move {
                    match handle {
                        Some(h) => (
                            StatusCode::OK,
                            [("content-type", "text/plain; version=0.0.4")],
                            h.render(),
                        )
                            .into_response(),
                        None => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "metrics recorder not installed",
                        )
                            .into_response(),
                    }
                }
            }),
        )
        .route("/health", get(ready).with_state(health.clone()))
        .route("/health/ready", get(ready).with_state(health.clone()))
        .route("/health/live", get(live).with_state(health));
    tokio::spawn(crate::net::serve_http(
        "telemetry",
        listener,
        app,
        None,
        crate::net::Limits::default(),
        shutdown,
        Duration::from_secs(2),
    ));
    Ok(local)
}

/// `/health` and `/health/ready`: 200 when every component is running, else 503
/// naming those that are not (for readiness probes and load balancers).
async fn ready(axum::extract::State(health): axum::extract::State<Health>) -> impl IntoResponse {
    let (ok, components) = health.snapshot();
    let unhealthy: Vec<&String> = components
        .iter()
        .filter(|(_, s)| **s != Status::Running)
        .map(|(k, _)| k)
        .collect();
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "unhealthy" },
        "unhealthy": unhealthy,
        "components": components,
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body))
}

/// `/health/live`: 503 only when a stage is dead or stuck (for liveness probes: a
/// restart helps then, and only then). A backend outage leaves it at 200.
async fn live(axum::extract::State(health): axum::extract::State<Health>) -> impl IntoResponse {
    let not_live = health.not_live();
    let code = if not_live.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if not_live.is_empty() { "live" } else { "not_live" },
        "not_live": not_live,
    });
    (code, axum::Json(body))
}

/// Sets up logging to stderr at `level` (`RUST_LOG` overrides it).
pub fn init_logs(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
