//! Connection limits on real sockets (slowloris and its cousins): a stalled head is cut
//! off, a kept-alive connection may idle longer than that, connections over the cap are
//! told so and closed, and the answers hyper writes itself come in the envelope.

mod common;

use std::time::Duration;

use common::{Echo, Proxy};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

async fn gateway(extra: &[&str]) -> (Echo, Proxy) {
    let auth = Echo::start("auth").await;
    let mut args = vec![
        "--mode=gateway".to_owned(),
        format!("--route=auth={}", auth.url),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let gateway = Proxy::start(&args).await;
    (auth, gateway)
}

fn address(proxy: &Proxy) -> String {
    proxy.url.trim_start_matches("http://").to_owned()
}

/// Everything the peer sends until it closes, or `None` if it is still open after `patience`.
async fn until_closed(tcp: &mut TcpStream, patience: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(patience, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| seen)
}

const GET: &[u8] = b"GET /api/v1/auth/x HTTP/1.1\r\nHost: finflow\r\n\r\n";

#[tokio::test]
async fn a_head_that_stalls_is_cut_off_after_the_head_timeout() {
    let (_auth, gw) = gateway(&["--header-read-timeout-ms=300"]).await;
    let mut tcp = TcpStream::connect(address(&gw)).await.unwrap();
    tcp.write_all(b"GET /api/v1/auth/x HTTP/1.1\r\nHost: finflow\r\n")
        .await
        .unwrap();
    let closed = until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert_eq!(closed, Some(Vec::new()), "closed, without an answer");

    // A connection that never sends a byte gets no longer.
    let mut silent = TcpStream::connect(address(&gw)).await.unwrap();
    assert!(
        until_closed(&mut silent, Duration::from_secs(5))
            .await
            .is_some()
    );
}

#[tokio::test]
async fn a_kept_alive_connection_may_idle_past_the_head_timeout_until_the_idle_timeout() {
    let (auth, gw) = gateway(&["--header-read-timeout-ms=300", "--idle-timeout-secs=2"]).await;
    let mut tcp = TcpStream::connect(address(&gw)).await.unwrap();
    let mut buf = vec![0u8; 65536];
    for _ in 0..2 {
        tcp.write_all(GET).await.unwrap();
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        // Idle for longer than the head timeout: still open.
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    assert_eq!(auth.hits(), 2);
    let closed = until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "closed by the idle timeout");
}

#[tokio::test]
async fn connections_over_the_cap_get_a_503_in_the_envelope_and_are_closed() {
    let (_auth, gw) = gateway(&["--max-connections=2"]).await;
    let _first = TcpStream::connect(address(&gw)).await.unwrap();
    let _second = TcpStream::connect(address(&gw)).await.unwrap();
    let mut third = TcpStream::connect(address(&gw)).await.unwrap();
    let answer = until_closed(&mut third, Duration::from_secs(5))
        .await
        .expect("closed");
    let text = String::from_utf8(answer).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["error"]["code"], "DEPENDENCY_UNAVAILABLE");
    assert_eq!(body["error"]["details"]["reason"], "too_many_connections");

    // A place frees when a connection closes.
    drop(_first);
    let mut again = None;
    for _ in 0..50 {
        let mut tcp = TcpStream::connect(address(&gw)).await.unwrap();
        tcp.write_all(GET).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tcp.read(&mut buf).await.unwrap_or(0);
        if buf[..n].starts_with(b"HTTP/1.1 200") {
            again = Some(());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "served once a place is free");
}

#[tokio::test]
async fn an_oversized_head_gets_431_in_the_envelope() {
    let (auth, gw) = gateway(&[]).await;
    let mut tcp = TcpStream::connect(address(&gw)).await.unwrap();
    let padding = "a".repeat(1 << 20);
    let request =
        format!("GET /api/v1/auth/x HTTP/1.1\r\nHost: finflow\r\nX-Padding: {padding}\r\n\r\n");
    let (mut read, mut write) = tcp.split();
    let writing = async {
        // The proxy stops reading at its limit: the rest may be refused.
        let _ = write.write_all(request.as_bytes()).await;
    };
    let reading = async {
        let mut seen = Vec::new();
        let _ = read.read_to_end(&mut seen).await;
        seen
    };
    let ((), seen) = tokio::join!(writing, reading);
    let text = String::from_utf8(seen).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an answer");
    assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "HEADERS_TOO_LARGE");
    assert_eq!(auth.hits(), 0);
}
