//! Binding a listener, and the record of what every listener bound.
//!
//! A listener's address may be given with port 0 (`127.0.0.1:0`): the kernel then picks a
//! free port. The process tells which it got in its log (`stackline is running` lists
//! every listener) and in the `--ready-file` it writes once the whole pipeline runs, so
//! that a program (a test harness, a supervisor running several instances on one host)
//! reads the addresses instead of choosing ports in advance and hoping they stay free.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::net::TcpListener;

/// A listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {endpoint} ({key}): {source}")]
pub struct BindError {
    /// The configured address.
    pub endpoint: String,
    /// The config key that set it, e.g. `receivers.otlp.protocols.grpc.endpoint`.
    pub key: String,
    #[source]
    pub source: std::io::Error,
}

/// What every listener of this process bound, by the config key of its address. One
/// table per process: listeners are opened by components far apart in the graph, and
/// the table is only read to report them.
static BOUND: Mutex<BTreeMap<String, SocketAddr>> = Mutex::new(BTreeMap::new());

/// Binds `endpoint` (host:port, port 0 for any free port) for the listener configured
/// at `key`, and records the address it got.
pub async fn bind(key: &str, endpoint: &str) -> Result<(TcpListener, SocketAddr), BindError> {
    let err = |source| BindError {
        endpoint: endpoint.to_owned(),
        key: key.to_owned(),
        source,
    };
    let listener = TcpListener::bind(endpoint).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    BOUND
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key.to_owned(), local);
    Ok((listener, local))
}

/// Every listener bound so far: config key → address.
pub fn bound() -> BTreeMap<String, SocketAddr> {
    BOUND.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// What `--ready-file` holds: written once the pipeline runs, removed on a clean exit.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Ready {
    pub pid: u32,
    /// Config key of each listener's address → the address it bound.
    pub listeners: BTreeMap<String, SocketAddr>,
}

/// Writes `path` whole or not at all (a reader never sees half a file): a temporary
/// file beside it, then a rename.
pub fn write_ready_file(path: &std::path::Path) -> std::io::Result<()> {
    let ready = Ready {
        pid: std::process::id(),
        listeners: bound(),
    };
    let text = serde_json::to_string_pretty(&ready).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text + "\n")?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn port_zero_is_recorded_as_the_port_bound() {
        let (l, addr) = bind("test.port_zero.endpoint", "127.0.0.1:0")
            .await
            .unwrap();
        assert_ne!(addr.port(), 0);
        assert_eq!(l.local_addr().unwrap(), addr);
        assert_eq!(bound()["test.port_zero.endpoint"], addr);
        // A second listener on the same port fails and names the key.
        let e = bind("test.taken.endpoint", &addr.to_string())
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("test.taken.endpoint") && msg.contains(&addr.to_string()),
            "{msg}"
        );
        assert_eq!(e.source.kind(), std::io::ErrorKind::AddrInUse);
    }

    #[test]
    fn the_ready_file_is_json_a_program_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready.json");
        write_ready_file(&path).unwrap();
        let r: Ready = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(r.pid, std::process::id());
        assert!(!dir.path().join("ready.json.tmp").exists());
    }
}
