//! Configuration errors: each carries the full path of the setting it is about.

use std::fmt;

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path, e.g. `exporters.otlp/backend.retry_on_failure.max_interval`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Prepends `prefix` to the path (used when a component's relative errors are reported).
    pub fn under(mut self, prefix: &str) -> Self {
        self.path = join(prefix, &self.path);
        self
    }
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}.{b}"),
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found, reported together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn one(path: &str, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError::new(path, message)])
    }
    pub fn push(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(ConfigError::new(path, message));
    }
    pub fn extend_under(&mut self, prefix: &str, errs: Vec<ConfigError>) {
        self.0.extend(errs.into_iter().map(|e| e.under(prefix)));
    }
    /// Adds every error of a figment/serde failure, with its path under `prefix`.
    pub fn extend_figment(&mut self, prefix: &str, err: figment::Error) {
        for e in err {
            let path = join(prefix, &e.path.join("."));
            let message = match &e.kind {
                figment::error::Kind::UnknownField(field, expected) => format!(
                    "unknown field `{field}`, expected one of `{}`",
                    expected.join("`, `")
                ),
                figment::error::Kind::UnknownVariant(v, expected) => format!(
                    "unknown value `{v}`, expected one of `{}`",
                    expected.join("`, `")
                ),
                kind => kind.to_string(),
            };
            self.push(&path, message);
        }
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn into_result<T>(self, ok: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() { Ok(ok) } else { Err(self) }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "invalid configuration ({n} error{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
