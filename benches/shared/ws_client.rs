//! What the websocket load clients (`ws_load`, `event_fanout`, `cluster_probe`) share:
//! the connect step (one connection of many, from one of several loopback source
//! addresses) and percentiles.
//!
//! A client on one source address runs out of ephemeral ports near 28,000 connections
//! to one server port; spreading connections over 127.0.0.1 .. 127.0.0.N lifts that
//! (Linux routes all of 127.0.0.0/8 to loopback).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// The small-buffer config both clients use for many idle connections.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Opens `url` (ws://host:port/...) from source address 127.0.0.(1 + n % sources),
/// within `limit`. `Err` is a short reason.
pub async fn connect(url: &str, n: usize, sources: usize, limit: Duration) -> Result<Ws, String> {
    let attempt = async {
        let server = server_addr(url)?;
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {}", e.kind()))?;
        if sources > 1 {
            let last = 1 + (n % sources.min(254)) as u8;
            socket
                .bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), 0)))
                .map_err(|e| format!("bind 127.0.0.{last}: {}", e.kind()))?;
        }
        let stream = socket
            .connect(server)
            .await
            .map_err(|e| format!("connect: {}", e.kind()))?;
        let _ = stream.set_nodelay(true);
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            url,
            MaybeTlsStream::Plain(stream),
            Some(config()),
        )
        .await
        .map_err(|e| error_kind(&e))?;
        Ok(ws)
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("handshake timed out ({} s)", limit.as_secs())),
    }
}

/// host:port of a ws:// URL whose host is an IPv4 literal (the benchmarks' loopback).
fn server_addr(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("not a ws:// URL: {url}"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .parse()
        .map_err(|_| format!("not an ip:port in {url}"))
}

/// A short name for an error (counted by kind in the reports): its first 80 characters.
pub fn error_kind(e: &dyn std::fmt::Display) -> String {
    e.to_string().chars().take(80).collect()
}

/// The p-th percentile (nearest rank) of sorted microseconds, in milliseconds.
pub fn percentile_ms(sorted_us: &[u64], p: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted_us.len()) - 1;
    Some(sorted_us[idx] as f64 / 1000.0)
}
