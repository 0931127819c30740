//! Loading the collector-style YAML configuration.
//!
//! Files are read in order and merged with figment (later files override earlier
//! ones key by key), `${env:VAR}` references are expanded inside values, and the
//! result is split into the four top-level sections. Component sections stay as raw
//! values here: each component's factory parses and validates its own part (see
//! [`parse_component`]), and `pipeline::graph` reports every error at once.

mod env;
mod error;
pub mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Yaml};
use figment::value::{Dict, Value};
use serde::Deserialize;
use serde::de::DeserializeOwned;

pub use error::{ConfigError, ConfigErrors};

/// A component id: `type` or `type/name`, e.g. `otlp/backend`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ComponentId {
    pub type_name: String,
    pub name: Option<String>,
}

impl ComponentId {
    /// Parses `type[/name]`. The type is lowercase letters, digits and `_`; the name is any non-empty text.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (t, name) = match s.split_once('/') {
            Some((t, n)) => (t, Some(n)),
            None => (s, None),
        };
        if t.is_empty()
            || !t
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(format!(
                "invalid component id `{s}`: the type must be lowercase letters, digits or `_`, written as `type` or `type/name`"
            ));
        }
        if name.is_some_and(|n| n.is_empty() || n.contains('/')) {
            return Err(format!(
                "invalid component id `{s}`: the name after `/` must be non-empty and contain no further `/`"
            ));
        }
        Ok(ComponentId {
            type_name: t.to_owned(),
            name: name.map(str::to_owned),
        })
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{}/{}", self.type_name, n),
            None => f.write_str(&self.type_name),
        }
    }
}

/// One pipeline under `service.pipelines`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Receiver ids that feed this pipeline.
    #[serde(default)]
    pub receivers: Vec<String>,
    /// Processor ids, applied in order. Each pipeline gets its own instance of each.
    #[serde(default)]
    pub processors: Vec<String>,
    /// Exporter ids the pipeline fans out to.
    #[serde(default)]
    pub exporters: Vec<String>,
}

/// `service.telemetry.metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the HTTP listener that serves `/metrics` (Prometheus text) and `/health`.
    pub address: String,
    /// `basic` (default) serves metrics; `none` turns the listener off.
    pub level: MetricsLevel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsLevel {
    None,
    Basic,
    Normal,
    Detailed,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            address: "127.0.0.1:8888".into(),
            level: MetricsLevel::Basic,
        }
    }
}

/// `service.telemetry.logs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// `error`, `warn`, `info` (default), `debug` or `trace`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            level: "info".into(),
        }
    }
}

/// `service.telemetry`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub metrics: MetricsConfig,
    pub logs: LogsConfig,
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `service`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Pipelines by id: `profiles` or `profiles/<name>`.
    #[serde(default)]
    pub pipelines: BTreeMap<String, PipelineConfig>,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// How long, after SIGINT/SIGTERM, data in flight may take to drain before what is
    /// left is counted as dropped and the process exits.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            pipelines: BTreeMap::new(),
            telemetry: TelemetryConfig::default(),
            shutdown_timeout: default_shutdown_timeout(),
        }
    }
}

/// The whole configuration, with component sections still raw.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub receivers: BTreeMap<String, Value>,
    pub processors: BTreeMap<String, Value>,
    pub exporters: BTreeMap<String, Value>,
    pub service: ServiceConfig,
    /// Where the configuration came from, for messages.
    pub sources: Vec<String>,
    /// Problems found in the top-level sections; reported with the components' own
    /// errors by `pipeline::Graph::build`, so the user sees every error at once.
    pub problems: ConfigErrors,
}

const TOP_LEVEL: &[&str] = &["receivers", "processors", "exporters", "service"];

impl Config {
    /// Reads, merges and env-expands the given files (later ones override earlier ones).
    pub fn load(files: &[PathBuf]) -> Result<Config, ConfigErrors> {
        let mut sources = Vec::new();
        let mut texts = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(f).map_err(|e| {
                ConfigErrors::one(
                    "",
                    format!(
                        "cannot read config file {}: {e}; check the path given to --config",
                        f.display()
                    ),
                )
            })?;
            texts.push((f.display().to_string(), text));
            sources.push(f.display().to_string());
        }
        let mut cfg = Self::from_yaml_texts(&texts)?;
        cfg.sources = sources;
        Ok(cfg)
    }

    /// Parses one YAML document (used for the built-in default config and in tests).
    pub fn from_yaml(name: &str, text: &str) -> Result<Config, ConfigErrors> {
        let mut cfg = Self::from_yaml_texts(&[(name.to_owned(), text.to_owned())])?;
        cfg.sources = vec![name.to_owned()];
        Ok(cfg)
    }

    fn from_yaml_texts(texts: &[(String, String)]) -> Result<Config, ConfigErrors> {
        let mut figment = Figment::new();
        for (name, text) in texts {
            // Parse each file on its own first so a syntax error names its file.
            let dict: Dict = if text.trim().is_empty() {
                Dict::new()
            } else {
                Figment::from(Yaml::string(text))
                    .extract()
                    .map_err(|e| ConfigErrors::one("", format!("{name}: {}", e.kind)))?
            };
            figment = figment.merge(Serialized::defaults(dict));
        }
        let mut root: Dict = figment
            .extract()
            .map_err(|e| ConfigErrors::one("", e.kind.to_string()))?;

        let mut errors = ConfigErrors::default();
        for (key, value) in root.iter_mut() {
            env::expand(value, key, &mut errors);
        }
        for key in root.keys() {
            if !TOP_LEVEL.contains(&key.as_str()) {
                errors.push(
                    key,
                    format!(
                        "unknown top-level section, expected one of `{}`",
                        TOP_LEVEL.join("`, `")
                    ),
                );
            }
        }
        let mut section = |name: &str| -> BTreeMap<String, Value> {
            match root.get(name) {
                None | Some(Value::Empty(..)) => BTreeMap::new(),
                Some(v) => match v.deserialize::<BTreeMap<String, Value>>() {
                    Ok(m) => m,
                    Err(e) => {
                        errors.extend_figment(name, e);
                        BTreeMap::new()
                    }
                },
            }
        };
        let receivers = section("receivers");
        let processors = section("processors");
        let exporters = section("exporters");
        let service = parse_service(root.get("service"), &mut errors);
        Ok(Config {
            receivers,
            processors,
            exporters,
            service,
            sources: Vec::new(),
            problems: errors,
        })
    }
}

const SERVICE_KEYS: &[&str] = &["pipelines", "telemetry", "shutdown_timeout"];

/// Parses `service` part by part (each pipeline on its own), so one bad part does not
/// hide the errors of the others.
fn parse_service(value: Option<&Value>, errors: &mut ConfigErrors) -> ServiceConfig {
    let mut service = ServiceConfig::default();
    let dict = match value {
        None | Some(Value::Empty(..)) => return service,
        Some(Value::Dict(_, d)) => d,
        Some(_) => {
            errors.push(
                "service",
                "must be a mapping with `pipelines` and `telemetry`",
            );
            return service;
        }
    };
    for (key, v) in dict {
        let path = format!("service.{key}");
        match key.as_str() {
            "pipelines" => match v.deserialize::<BTreeMap<String, Value>>() {
                Ok(ps) => {
                    for (id, p) in ps {
                        match p.deserialize::<PipelineConfig>() {
                            Ok(p) => {
                                service.pipelines.insert(id, p);
                            }
                            Err(e) => errors.extend_figment(&format!("{path}.{id}"), e),
                        }
                    }
                }
                Err(e) => errors.extend_figment(&path, e),
            },
            "telemetry" => match v.deserialize::<TelemetryConfig>() {
                Ok(t) => service.telemetry = t,
                Err(e) => errors.extend_figment(&path, e),
            },
            "shutdown_timeout" => {
                #[derive(Deserialize)]
                struct D(#[serde(with = "humantime_serde")] Duration);
                match v.deserialize::<D>() {
                    Ok(D(d)) => service.shutdown_timeout = d,
                    Err(e) => errors.extend_figment(&path, e),
                }
            }
            _ => errors.push(
                &path,
                format!(
                    "unknown field, expected one of `{}`",
                    SERVICE_KEYS.join("`, `")
                ),
            ),
        }
    }
    service
}

/// Checks of a component's settings beyond what their types enforce.
pub trait Validate {
    /// Returns every problem found, each with its path relative to the component.
    fn validate(&self) -> Vec<ConfigError> {
        Vec::new()
    }
}

/// Deserializes and validates one component's settings. An absent or empty section
/// gives the defaults. Error paths are relative to the component.
///
/// Serde stops at the first bad field; to report every one, the offending key is
/// removed and parsing repeated, so a typo in one setting does not hide a bad value
/// in another.
pub fn parse_component<T: DeserializeOwned + Validate>(
    value: &Value,
) -> Result<T, Vec<ConfigError>> {
    let mut value = match value {
        Value::Empty(..) => Value::from(Dict::new()),
        v => v.clone(),
    };
    let mut errs = ConfigErrors::default();
    let mut removed: Vec<String> = Vec::new();
    // Bounded: each round removes one key of a finite tree.
    for _ in 0..64 {
        match value.deserialize::<T>() {
            Ok(cfg) => {
                // Checks on a removed key would judge its default, not what the user wrote.
                let extra = cfg
                    .validate()
                    .into_iter()
                    .filter(|e| !removed.contains(&e.path));
                errs.0.extend(extra);
                return errs.into_result(cfg).map_err(|e| e.0);
            }
            Err(e) => {
                let path = e.path.clone();
                errs.extend_figment("", e);
                if path.is_empty() || !remove_key(&mut value, &path) {
                    break;
                }
                removed.push(path.join("."));
            }
        }
    }
    Err(errs.0)
}

/// Removes the key at `path` from a tree of dictionaries; false if there is none.
fn remove_key(value: &mut Value, path: &[String]) -> bool {
    let Value::Dict(_, dict) = value else {
        return false;
    };
    match path {
        [] => false,
        [last] => dict.remove(last).is_some(),
        [first, rest @ ..] => dict.get_mut(first).is_some_and(|v| remove_key(v, rest)),
    }
}

/// Resolves a path relative to the process's working directory, for messages.
pub fn display_path(p: &Path) -> String {
    match std::env::current_dir() {
        Ok(cwd) if p.is_relative() => cwd.join(p).display().to_string(),
        _ => p.display().to_string(),
    }
}
