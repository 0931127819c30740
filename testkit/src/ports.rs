//! Ports on 127.0.0.1 held without racing other tests, and the ports a process listens on.

use std::net::SocketAddr;

/// A port on 127.0.0.1 held by this test and not yet listening: a client that connects
/// is refused, as by a backend that is down, and no other process can take the port
/// until [`ReservedPort::listen`] turns it into a listener on the same socket. (Choosing
/// a port by binding and releasing it races with every other test that does the same.)
pub struct ReservedPort(socket2::Socket);

impl ReservedPort {
    pub fn new() -> ReservedPort {
        ReservedPort::on("127.0.0.1")
    }

    /// A port on `ip` (e.g. another loopback address).
    pub fn on(ip: &str) -> ReservedPort {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let addr: SocketAddr = format!("{ip}:0").parse().unwrap();
        s.bind(&addr.into()).unwrap();
        ReservedPort(s)
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.local_addr().unwrap().as_socket().unwrap()
    }

    /// Starts listening on the reserved port.
    pub fn listen(self) -> tokio::net::TcpListener {
        self.0.listen(1024).unwrap();
        self.0.set_nonblocking(true).unwrap();
        tokio::net::TcpListener::from_std(std::net::TcpListener::from(self.0)).unwrap()
    }
}

/// The TCP ports process `pid` listens on (IPv4 and IPv6), read from /proc: for a
/// program of someone else's that was given port 0 and does not say what it bound.
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEX_IP:HEX_PORT; state 0A is LISTEN; field 9 the inode.
            if f.len() > 9
                && f[3] == "0A"
                && inodes.iter().any(|i| i == f[9])
                && let Some(p) = f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                ports.push(p);
            }
        }
    }
    ports
}

impl Default for ReservedPort {
    fn default() -> Self {
        ReservedPort::new()
    }
}
