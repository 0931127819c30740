//! Bearer-token authentication, from a file that may change at any time (a Kubernetes
//! Secret mounted as a volume is rewritten in place): the token is re-read when the
//! file's size or modification time changes, checked at most once a second.
//!
//! The file holds one token per line. A client (an exporter) sends the first; a server
//! (a receiver, the pprof endpoint) accepts any, so a token is rotated without a
//! moment where the two sides disagree: add the new one first, drop the old one later.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use crate::config::ConfigError;

/// `auth`: a bearer token read from a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// File holding the token (surrounding whitespace is ignored). Re-read when it
    /// changes. Several lines: a server accepts any of them, a client sends the first.
    pub bearer_token_file: PathBuf,
}

impl AuthConfig {
    pub fn validate(&self, at: &str, errs: &mut Vec<ConfigError>) {
        match read_token(&self.bearer_token_file) {
            Ok(t) if t.is_empty() => errs.push(ConfigError::new(
                format!("{at}.bearer_token_file"),
                format!("{} holds no token", self.bearer_token_file.display()),
            )),
            Ok(_) => {}
            Err(e) => errs.push(ConfigError::new(
                format!("{at}.bearer_token_file"),
                format!("cannot read {}: {e}", self.bearer_token_file.display()),
            )),
        }
    }
}

/// The file's tokens: its non-empty lines, trimmed. Empty when there are none.
fn read_token(path: &Path) -> std::io::Result<Vec<String>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

#[derive(Debug)]
struct Cached {
    tokens: Vec<String>,
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

/// A token file, kept current.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    cached: Mutex<Cached>,
}

/// How often the file's metadata is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

impl TokenFile {
    pub fn open(cfg: &AuthConfig) -> std::io::Result<Self> {
        let tokens = read_token(&cfg.bearer_token_file)?;
        if tokens.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} holds no token", cfg.bearer_token_file.display()),
            ));
        }
        let stamp = stamp(&cfg.bearer_token_file);
        Ok(TokenFile {
            path: cfg.bearer_token_file.clone(),
            cached: Mutex::new(Cached {
                tokens,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The token to send: the first line. If the file cannot be read any more, the last
    /// tokens read stay in use (a failed rotation must not lock every client out).
    pub fn token(&self) -> String {
        self.tokens().swap_remove(0)
    }

    /// The current tokens (at least one).
    fn tokens(&self) -> Vec<String> {
        let mut c = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if c.checked.elapsed() >= CHECK_EVERY {
            c.checked = Instant::now();
            let now = stamp(&self.path);
            if now.is_some()
                && now != c.stamp
                && let Ok(t) = read_token(&self.path)
                && !t.is_empty()
            {
                tracing::info!(path = %self.path.display(), tokens = t.len(), "bearer token file changed; using the new token(s)");
                c.tokens = t;
                c.stamp = now;
            }
        }
        c.tokens.clone()
    }

    /// Whether an `authorization` header value carries one of the current tokens.
    pub fn allows(&self, header: Option<&str>) -> bool {
        let Some(given) = header.and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        }) else {
            return false;
        };
        let given = given.trim().as_bytes();
        // Every token is compared (no early return), as each comparison is.
        self.tokens()
            .iter()
            .fold(false, |ok, t| constant_time_eq(given, t.as_bytes()) | ok)
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Compares without returning early, so the time taken says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8;
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0);
    }
    diff == 0 && a.len() == b.len()
}

/// Whether a `host:port` listens on loopback only.
pub fn is_loopback(endpoint: &str) -> bool {
    let host = endpoint
        .rsplit_once(':')
        .map_or(endpoint, |(h, _)| h)
        .trim_matches(['[', ']']);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Warns when a listener takes connections from other hosts with neither TLS nor auth.
pub fn warn_if_open(what: &str, endpoint: &str, tls: bool, auth: bool) {
    if !is_loopback(endpoint) && !tls && !auth {
        tracing::warn!(
            listener = what,
            endpoint,
            "listening beyond loopback without TLS or auth: anyone who can reach it can send data; set tls and auth (bearer_token_file)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_the_token_and_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let t = TokenFile::open(&AuthConfig {
            bearer_token_file: path.clone(),
        })
        .unwrap();
        assert!(t.allows(Some("Bearer first")));
        assert!(!t.allows(Some("Bearer firs")));
        assert!(!t.allows(Some("Bearer firstx")));
        assert!(!t.allows(Some("first")));
        assert!(!t.allows(None));
        std::fs::write(&path, "second-token").unwrap();
        // Picked up at the next check.
        let until = Instant::now() + Duration::from_secs(5);
        while !t.allows(Some("Bearer second-token")) {
            assert!(Instant::now() < until, "the new token was not picked up");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(!t.allows(Some("Bearer first")));
        // A vanished file keeps the last token.
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(CHECK_EVERY);
        assert!(t.allows(Some("Bearer second-token")));
    }

    #[test]
    fn a_file_of_several_tokens_accepts_each_and_sends_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        // Rotation: the new token first, the old one still accepted.
        std::fs::write(&path, "  new-token \n\nold-token\n").unwrap();
        let t = TokenFile::open(&AuthConfig {
            bearer_token_file: path.clone(),
        })
        .unwrap();
        assert_eq!(t.token(), "new-token");
        assert!(t.allows(Some("Bearer new-token")));
        assert!(t.allows(Some("Bearer old-token")));
        assert!(!t.allows(Some("Bearer new-token\nold-token")));
        assert!(!t.allows(Some("Bearer ")));
        std::fs::write(&path, "\n \n").unwrap();
        assert!(
            TokenFile::open(&AuthConfig {
                bearer_token_file: path
            })
            .is_err(),
            "a file with no token must not be opened"
        );
    }
}
