//! HTTP listeners cap their connections and close silent clients.

use super::*;

/// Whether the server closed `s` (read returns 0 or an error) within `within`.
fn closed_within(s: &mut std::net::TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => true, // an error response counts as an answer that ends the connection
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_listeners_cap_connections_and_close_silent_clients() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), ", max_connections: 2, read_header_timeout: 3s");
    let open = async || {
        gw.metric("stackline_http_connections", &[("listener", "otlp/http")])
            .await
    };
    // The probes that saw the listener come up are gone.
    assert!(eventually(Duration::from_secs(10), async || open().await == 0.0).await);
    // Two clients connect and say nothing.
    let mut quiet: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(gw.http).unwrap())
        .collect();
    // Once the server holds both (a busy machine may take a while to start it)...
    let held = eventually(Duration::from_secs(3), async || open().await == 2.0).await;
    assert!(
        held,
        "the server did not take the two connections: {}",
        gw.get("/metrics").await.1
    );
    // ...a third takes the place of the one idle the longest, which is closed at once.
    let third = std::net::TcpStream::connect(gw.http).unwrap();
    assert!(
        closed_within(&mut quiet[0], Duration::from_secs(2)),
        "the oldest idle connection was kept past the cap"
    );
    assert!(
        gw.metric(
            "stackline_http_connections_refused_total",
            &[("listener", "otlp/http"), ("reason", "idle_evicted")]
        )
        .await
            >= 1.0
    );
    // The silent ones are closed once the header-read time is over.
    let t = Instant::now();
    for q in [&mut quiet[1], &mut { third }] {
        assert!(
            closed_within(q, Duration::from_secs(8)),
            "a silent client kept its connection"
        );
    }
    assert!(t.elapsed() < Duration::from_secs(8));
    drop(quiet);
    assert!(eventually(Duration::from_secs(10), async || open().await == 0.0).await);
    // Connections with a request in flight (headers in, body awaited) are not idle:
    // past the cap, a new connection is refused at once instead.
    let mut busy: Vec<_> = (0..2)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(gw.http).unwrap();
            c.write_all(format!("POST {PATH} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer s3cret-token\r\ncontent-type: application/x-protobuf\r\ncontent-length: 1000\r\n\r\n").as_bytes())
                .unwrap();
            c
        })
        .collect();
    assert!(eventually(Duration::from_secs(3), async || open().await == 2.0).await);
    // Give the server the time to start both requests.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fourth = std::net::TcpStream::connect(gw.http).unwrap();
    assert!(
        closed_within(&mut fourth, Duration::from_secs(2)),
        "a connection over the cap was kept while every other one was busy"
    );
    assert!(
        gw.metric(
            "stackline_http_connections_refused_total",
            &[
                ("listener", "otlp/http"),
                ("reason", "too_many_connections")
            ]
        )
        .await
            >= 1.0
    );
    for b in &mut busy {
        assert!(
            !closed_within(b, Duration::from_millis(300)),
            "a connection with a request in flight was closed"
        );
    }
    drop(busy);
    assert!(eventually(Duration::from_secs(10), async || open().await == 0.0).await);
    // And the listener serves again.
    let r = reqwest::Client::new()
        .post(format!("http://{}{PATH}", gw.http))
        .header("content-type", "application/x-protobuf")
        .bearer_auth("s3cret-token")
        .body(request("after", 0, 3, 2).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The metrics listener has the same bounds: a client trickling its headers is cut off.
    let mut slow = std::net::TcpStream::connect(gw.metrics).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(15)));
}
