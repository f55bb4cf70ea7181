//! Slow and half-finished requests, and websocket frames refused on their declared
//! length (issue #10): raw TCP against the gateway, where a client can stop halfway.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{ADMIN_TOKEN, Backend, GatewayProcess, spawn_app_with, token_of};

/// actix-web's default linger: after a response that closes the connection, the server
/// reads (and drops) what the client still sends for up to this long, so that the
/// client reads the answer rather than a reset.
const LINGER: Duration = Duration::from_secs(1);
/// Scheduling slack on a 2-core machine running other tests.
const SLACK: Duration = Duration::from_millis(1500);

/// What came back on a raw connection.
struct Outcome {
    text: String,
    /// Since the start: when the first byte of the answer arrived, and when the server
    /// closed the connection (end of stream or reset).
    first_byte: Option<Duration>,
    closed: Option<Duration>,
}

impl Outcome {
    fn status(&self) -> u16 {
        self.text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {:?}", self.text))
    }

    fn closes(&self) -> bool {
        self.text
            .split("\r\n\r\n")
            .next()
            .is_some_and(|head| head.to_ascii_lowercase().contains("connection: close"))
    }
}

/// Reads until the server closes the connection or `limit` passes.
async fn read_until_closed<R: AsyncRead + Unpin>(
    r: &mut R,
    started: Instant,
    limit: Duration,
) -> Outcome {
    let deadline = tokio::time::Instant::from_std(started + limit);
    let mut out = Outcome {
        text: String::new(),
        first_byte: None,
        closed: None,
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                out.closed = Some(started.elapsed());
                return out;
            }
            Ok(Ok(n)) => {
                out.first_byte.get_or_insert_with(|| started.elapsed());
                out.text.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            Err(_) => return out,
        }
    }
}

/// One response on a connection that stays open: head and `Content-Length` body.
async fn read_one_response(s: &mut TcpStream) -> (u16, String) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "closed before a whole response");
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).into_owned();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length: usize = text[..end]
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        if data.len() >= end + 4 + length {
            let status = text.split(' ').nth(1).unwrap().parse().unwrap();
            return (status, text);
        }
    }
}

/// A request head announcing 1000 bytes, and 11 of them.
fn partial_sized(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\n{extra}Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"partial\":"
    )
    .into_bytes()
}

/// A chunked request with one chunk and no end.
fn partial_chunked(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\n{extra}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    .into_bytes()
}

async fn open(port: u16, request: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(request).await.expect("write");
    s
}

#[actix_web::test]
async fn half_sent_bodies_are_answered_408_and_closed_within_the_body_timeout() {
    const TIMEOUT: Duration = Duration::from_secs(1);
    let app = spawn_app_with(Backend::Sqlite, |c| c.http_body_timeout_ms = 1000)
        .await
        .unwrap();
    let channel = app
        .public_channel("slow", false, "response_content = \"ok\";")
        .await;
    let path = format!("/api/token/v1/{}", token_of(&channel));
    let started = Instant::now();
    let mut conns = Vec::new();
    for i in 0..50 {
        let request = if i % 2 == 0 {
            partial_sized(&path, "")
        } else {
            partial_chunked(&path, "")
        };
        conns.push(open(app.port, &request).await);
    }
    // Every route that reads a body is covered, not only webhooks.
    let auth = format!("Authorization: Bearer {ADMIN_TOKEN}\r\n");
    for admin_path in ["/admin/v1/channels", "/admin/v1/events"] {
        conns.push(open(app.port, &partial_sized(admin_path, &auth)).await);
    }
    let outcomes = join_all(
        conns
            .iter_mut()
            .map(|s| read_until_closed(s, started, Duration::from_secs(15))),
    )
    .await;
    for (i, out) in outcomes.iter().enumerate() {
        assert_eq!(out.status(), 408, "connection {i}: {}", out.text);
        assert!(out.text.contains("\"body_timeout\""), "{}", out.text);
        assert!(out.closes(), "408 says Connection: close: {}", out.text);
        let answered = out.first_byte.unwrap();
        assert!(
            answered >= TIMEOUT - Duration::from_millis(100) && answered <= TIMEOUT + SLACK,
            "connection {i} answered after {answered:?}"
        );
        let closed = out
            .closed
            .unwrap_or_else(|| panic!("connection {i} was left open"));
        assert!(
            closed <= TIMEOUT + LINGER + SLACK,
            "connection {i} closed after {closed:?}"
        );
    }
    let stats = &app.state.conn_stats;
    assert_eq!(
        stats
            .body_timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        52
    );
    assert!(
        stats
            .closed_unread_body
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 52
    );
    let metrics = app.send(app.client.get(app.url("/metrics")), None).await;
    assert!(
        metrics
            .text()
            .contains("oktell_http_body_timeouts_total 52"),
        "{}",
        metrics.text()
    );
    // The node goes on serving whole requests.
    let r = app.webhook(&token_of(&channel), "POST", "", "{}").await;
    assert_eq!(r.status, 200);
}

#[actix_web::test]
async fn bodies_refused_before_they_were_read_close_their_connection() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.max_body_bytes = 1000)
        .await
        .unwrap();
    let channel = app
        .public_channel("refuser", false, "response_content = \"ok\";")
        .await;
    let known = format!("/api/token/v1/{}", token_of(&channel));

    // A chunked POST to an unknown token whose client goes on sending: 404, then the
    // connection is closed (it was drained for as long as the client kept sending).
    let started = Instant::now();
    let s = open(
        app.port,
        &partial_chunked("/api/token/v1/no-such-token", ""),
    )
    .await;
    let (mut r, mut w) = s.into_split();
    let writer = actix_web::rt::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(20));
        loop {
            every.tick().await;
            if w.write_all(b"5\r\nhello\r\n").await.is_err() {
                return;
            }
        }
    });
    let out = read_until_closed(&mut r, started, Duration::from_secs(10)).await;
    writer.abort();
    assert_eq!(out.status(), 404, "{}", out.text);
    assert!(out.text.contains("channel_not_found"), "{}", out.text);
    assert!(out.closes(), "{}", out.text);
    let closed = out.closed.expect("the connection is closed");
    assert!(closed <= LINGER + SLACK, "closed after {closed:?}");

    // The same with refusals of other kinds: 401 before an admin body, 413 partway
    // through a chunked webhook body, 404 with a Content-Length body half sent.
    let mut too_big = partial_chunked(&known, "");
    too_big.extend_from_slice(format!("4b0\r\n{}\r\n", "x".repeat(1200)).as_bytes());
    for (request, status) in [
        (partial_chunked("/admin/v1/channels", ""), 401),
        (too_big, 413),
        (partial_sized("/api/token/v1/no-such-token", ""), 404),
    ] {
        let started = Instant::now();
        let mut s = open(app.port, &request).await;
        let out = read_until_closed(&mut s, started, Duration::from_secs(10)).await;
        assert_eq!(out.status(), status, "{}", out.text);
        assert!(out.closes(), "{}", out.text);
        let closed = out.closed.expect("the connection is closed");
        assert!(closed <= LINGER + SLACK, "closed after {closed:?}");
    }

    // A whole body that was simply not needed keeps its keep-alive connection.
    let mut s = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    s.write_all(
        b"POST /api/token/v1/no-such-token HTTP/1.1\r\nHost: gateway\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await
    .unwrap();
    let (status, text) = read_one_response(&mut s).await;
    assert_eq!(status, 404);
    assert!(
        !text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_one_response(&mut s).await.0, 200);

    assert!(
        app.state
            .conn_stats
            .closed_unread_body
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 4
    );
}

#[actix_web::test]
async fn idle_keep_alive_connections_are_closed() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.http_keep_alive_s = 1)
        .await
        .unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_one_response(&mut s).await.0, 200);
    let idle_from = Instant::now();
    let out = read_until_closed(&mut s, idle_from, Duration::from_secs(10)).await;
    let closed = out.closed.expect("the idle connection is closed");
    // Well before actix's default of 5 s.
    assert!(
        closed <= Duration::from_secs(1) + SLACK,
        "closed after {closed:?}"
    );
}

/// The open-file limit of a process, from /proc.
fn open_file_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// A whole request on a new connection; its status, or `None` if not answered in `limit`.
async fn fresh_request(port: u16, request: &[u8], limit: Duration) -> Option<u16> {
    let started = Instant::now();
    let connect = tokio::time::timeout(limit, TcpStream::connect(("127.0.0.1", port)));
    let mut s = connect.await.ok()?.ok()?;
    s.write_all(request).await.ok()?;
    let out = read_until_closed(&mut s, started, limit).await;
    out.first_byte?;
    Some(out.status())
}

#[actix_web::test]
async fn half_finished_connections_past_the_fd_limit_do_not_starve_normal_requests() {
    const FD_LIMIT: u64 = 256;
    const ATTACKERS: usize = 400;
    let dir = std::env::temp_dir().join(format!("oktell-fds-{}", uuid::Uuid::new_v4().simple()));
    let limit = format!("--nofile={FD_LIMIT}:{FD_LIMIT}");
    let mut gateway = GatewayProcess::start_wrapped(
        &dir,
        &["--http-body-timeout-ms".into(), "1000".into()],
        &["prlimit", &limit],
    )
    .await;
    assert_eq!(open_file_limit(gateway.child.id()), Some(FD_LIMIT));
    let channel = gateway
        .create_channel(json!({
            "code": "busy", "kind": "public", "wait_for_completion": true,
            "webhook_scenario": "response_content = \"served\";",
        }))
        .await;
    let known = format!("/api/token/v1/{}", token_of(&channel));
    let port = gateway.port;

    // More half-finished connections than the node has file descriptors, each one
    // opened again as soon as the node closes it, for the whole attack.
    let attack_until = Instant::now() + Duration::from_secs(6);
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|i| {
            let path = if i % 2 == 0 {
                "/api/token/v1/no-such-token".to_string()
            } else {
                known.clone()
            };
            let request = if i % 4 < 2 {
                partial_chunked(&path, "")
            } else {
                partial_sized(&path, "")
            };
            actix_web::rt::spawn(async move {
                let mut cut = 0u32;
                while Instant::now() < attack_until {
                    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
                        continue;
                    };
                    if s.write_all(&request).await.is_err() {
                        continue;
                    }
                    let out =
                        read_until_closed(&mut s, Instant::now(), Duration::from_secs(30)).await;
                    assert!(
                        out.closed.is_some(),
                        "a half-finished connection was left open"
                    );
                    cut += 1;
                }
                cut
            })
        })
        .collect();

    // Meanwhile, whole requests on new connections are answered, each within 10 s.
    let health = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n".to_vec();
    let webhook = format!(
        "POST {known} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{{}}"
    )
    .into_bytes();
    let mut served = 0;
    let mut slowest = Duration::ZERO;
    while Instant::now() < attack_until {
        for (request, what) in [(&health, "healthz"), (&webhook, "webhook")] {
            let asked = Instant::now();
            let status = fresh_request(port, request, Duration::from_secs(10)).await;
            assert_eq!(status, Some(200), "{what} during the attack");
            slowest = slowest.max(asked.elapsed());
            served += 1;
        }
    }
    let cut: u32 = join_all(attackers)
        .await
        .into_iter()
        .map(|r| r.expect("attacker task"))
        .sum();
    assert!(
        cut as usize > ATTACKERS,
        "half-finished connections were closed and opened again: {cut}"
    );
    assert!(
        served >= 4,
        "only {served} requests served during the attack"
    );
    assert!(
        gateway.child.try_wait().unwrap().is_none(),
        "the gateway is still running"
    );
    eprintln!(
        "fd limit {FD_LIMIT}: {cut} half-finished connections cut, {served} requests served, slowest {slowest:?}"
    );
}

// ---- websocket frames ----

/// A masked client frame header (mask 0: the payload goes as is) declaring `len` bytes.
fn frame_header(first: u8, len: u64) -> Vec<u8> {
    let mut h = vec![first];
    if len < 126 {
        h.push(0x80 | len as u8);
    } else if len <= u64::from(u16::MAX) {
        h.push(0x80 | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(0x80 | 127);
        h.extend_from_slice(&len.to_be_bytes());
    }
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = frame_header(first, payload.len() as u64);
    f.extend_from_slice(payload);
    f
}

/// A websocket handshake on a raw connection; the stream is left at the first frame.
async fn upgrade(port: u16, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let b = tokio::time::timeout(Duration::from_secs(10), s.read_u8())
            .await
            .expect("handshake in time")
            .expect("handshake reads");
        head.push(b);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// Reads server frames until a close frame; its code (`None`: the connection ended
/// first, or nothing came within `limit`).
async fn close_code<R: AsyncRead + Unpin>(r: &mut R, limit: Duration) -> Option<u16> {
    let read = async {
        loop {
            let first = r.read_u8().await.ok()?;
            let len = match r.read_u8().await.ok()? & 0x7F {
                126 => u64::from(r.read_u16().await.ok()?),
                127 => r.read_u64().await.ok()?,
                n => u64::from(n),
            };
            let mut payload = vec![0u8; len as usize];
            r.read_exact(&mut payload).await.ok()?;
            if first & 0x0F == 0x8 {
                return Some(u16::from_be_bytes([*payload.first()?, *payload.get(1)?]));
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok().flatten()
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[actix_web::test]
async fn frames_declaring_more_than_the_limit_are_refused_before_they_are_buffered() {
    const STREAM: usize = 200 << 20;
    const HUGE: u64 = 1 << 40;
    let gateway = GatewayProcess::start().await;
    let pid = gateway.child.id();
    let public = gateway
        .create_channel(json!({
            "code": "frames", "kind": "public",
            "websocket_scenario": "response_content = startparam(2);",
        }))
        .await;
    let eventing = gateway
        .create_channel(json!({"code": "feed", "kind": "eventing"}))
        .await;
    let paths = [
        format!("/ws/token/v1/{}", token_of(&public)),
        format!("/ws/token/v1/{}/subscribe", token_of(&eventing)),
    ];
    for path in &paths {
        // Refused on the header alone: no byte of the payload has been sent.
        let mut s = upgrade(gateway.port, path).await;
        s.write_all(&frame_header(0x81, HUGE)).await.unwrap();
        assert_eq!(
            close_code(&mut s, Duration::from_secs(10)).await,
            Some(1009),
            "{path}: closed on the declared length"
        );

        // The header, then 200 MB as fast as the node takes them: 1009, and the node's
        // memory stays where it was.
        let s = upgrade(gateway.port, path).await;
        let (mut r, mut w) = s.into_split();
        let baseline = rss_bytes(pid);
        let writer = actix_web::rt::spawn(async move {
            let mut sent = 0;
            if w.write_all(&frame_header(0x81, HUGE)).await.is_err() {
                return sent;
            }
            let chunk = vec![0u8; 64 * 1024];
            while sent < STREAM {
                if w.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len();
            }
            sent
        });
        let reader =
            actix_web::rt::spawn(async move { close_code(&mut r, Duration::from_secs(30)).await });
        let mut peak = baseline;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut every = tokio::time::interval(Duration::from_millis(10));
        while !(writer.is_finished() && reader.is_finished()) {
            assert!(Instant::now() < deadline, "{path}: the stream did not end");
            peak = peak.max(rss_bytes(pid));
            every.tick().await;
        }
        let sent = writer.await.unwrap();
        assert_eq!(reader.await.unwrap(), Some(1009), "{path}: close code");
        let growth = peak.saturating_sub(baseline);
        eprintln!(
            "{path}: {sent} bytes sent, RSS growth {} KiB",
            growth / 1024
        );
        assert!(
            growth < 20 << 20,
            "{path}: RSS grew by {} MiB while streaming",
            growth >> 20
        );
    }

    // A fragmented message is limited as it grows: the continuation that passes
    // ws_max_message_bytes (64 KiB) closes 1009 before the message is complete.
    let mut s = upgrade(gateway.port, &paths[0]).await;
    let piece = vec![b'a'; 40 * 1024];
    s.write_all(&frame(0x01, &piece)).await.unwrap(); // text, not final
    s.write_all(&frame(0x00, &piece)).await.unwrap(); // continuation, not final
    assert_eq!(
        close_code(&mut s, Duration::from_secs(10)).await,
        Some(1009),
        "a fragmented message past the limit"
    );

    let metrics = awc::Client::default()
        .get(format!("{}/metrics", gateway.base))
        .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
        .send()
        .await
        .unwrap()
        .body()
        .limit(16 << 20)
        .await
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("oktell_ws_frames_refused_total 4"),
        "{metrics}"
    );
}
