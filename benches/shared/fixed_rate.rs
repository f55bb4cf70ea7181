//! An open-loop HTTP/1.1 load at a fixed offered rate, for the load clients that need
//! one (`webhook_rate`, `soak_load`): request i is due at start + i / rate whatever happened to the
//! ones before, and its latency is counted from when it was due (a request that waited
//! for a free connection counts that wait: no coordinated omission). Keep-alive
//! connections, one request in flight on each; plain HTTP on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What to send, how often, for how long.
#[derive(Debug, Clone)]
pub struct Load {
    /// `host:port`
    pub addr: String,
    pub method: String,
    pub path: String,
    /// More request headers (e.g. `Authorization`), besides Host, Content-Type and
    /// Content-Length.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub rate: f64,
    pub duration: Duration,
    pub connections: usize,
    /// A request not answered within this is an error.
    pub timeout: Duration,
}

/// What came of it.
#[derive(Debug, Default)]
pub struct Outcome {
    pub sent: u64,
    /// Latencies (µs from due to answered) of 2xx answers, sorted.
    pub latencies_us: Vec<u64>,
    /// Answers by status (non-2xx included), and failures by kind.
    pub statuses: std::collections::BTreeMap<u16, u64>,
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Requests that left more than 10 ms after they were due (the client fell behind).
    pub late: u64,
    pub elapsed: Duration,
}

/// Runs `work` to its end on a current-thread runtime with a `LocalSet` (`run` spawns
/// its connections with `spawn_local`): the load clients are one thread each. Exits the
/// process when no runtime can be made.
pub fn block_on<F: std::future::Future>(work: F) -> F::Output {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        }
    };
    tokio::task::LocalSet::new().block_on(&runtime, work)
}

/// `host:port` and path of an `http://host:port/path` URL (the path `/` when none).
pub fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    }
}

impl Outcome {
    /// Requests answered 2xx.
    pub fn ok(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }
}

struct Shared {
    next: AtomicU64,
    late: AtomicU64,
}

/// Runs the load; returns when every request was answered or failed.
pub async fn run(load: Load) -> Outcome {
    let total = (load.rate * load.duration.as_secs_f64()).round() as u64;
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        late: AtomicU64::new(0),
    });
    let load = Arc::new(load);
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for _ in 0..load.connections.max(1) {
        let (load, shared) = (load.clone(), shared.clone());
        tasks.push(tokio::task::spawn_local(async move {
            connection(&load, &shared, start, total).await
        }));
    }
    let mut out = Outcome::default();
    for t in tasks {
        if let Ok(part) = t.await {
            out.sent += part.sent;
            out.latencies_us.extend(part.latencies_us);
            for (k, v) in part.statuses {
                *out.statuses.entry(k).or_default() += v;
            }
            for (k, v) in part.errors {
                *out.errors.entry(k).or_default() += v;
            }
        }
    }
    out.late = shared.late.load(Ordering::Relaxed);
    out.elapsed = start.elapsed();
    out.latencies_us.sort_unstable();
    out
}

async fn connection(load: &Load, shared: &Shared, start: Instant, total: u64) -> Outcome {
    let mut out = Outcome::default();
    let mut stream: Option<TcpStream> = None;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        load.method,
        load.path,
        load.addr,
        load.body.len()
    );
    for (name, value) in &load.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(&load.body);
    let mut buf = Vec::with_capacity(4096);
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            return out;
        }
        let due = start + Duration::from_secs_f64(i as f64 / load.rate);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        } else if now - due > Duration::from_millis(10) {
            shared.late.fetch_add(1, Ordering::Relaxed);
        }
        out.sent += 1;
        let answered = tokio::time::timeout(
            load.timeout,
            exchange(&mut stream, load, &request, &mut buf),
        )
        .await;
        match answered {
            Ok(Ok(status)) => {
                *out.statuses.entry(status).or_default() += 1;
                if (200..300).contains(&status) {
                    out.latencies_us.push(due.elapsed().as_micros() as u64);
                }
            }
            Ok(Err(e)) => {
                stream = None;
                *out.errors.entry(e).or_default() += 1;
            }
            Err(_) => {
                stream = None;
                *out.errors.entry("timeout".into()).or_default() += 1;
            }
        }
    }
}

/// One request on the connection (opened when there is none); the answer's status.
async fn exchange(
    stream: &mut Option<TcpStream>,
    load: &Load,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> Result<u16, String> {
    if stream.is_none() {
        let s = TcpStream::connect(&load.addr)
            .await
            .map_err(|e| format!("connect: {}", e.kind()))?;
        let _ = s.set_nodelay(true);
        *stream = Some(s);
    }
    let Some(s) = stream.as_mut() else {
        return Err("no connection".into());
    };
    s.write_all(request)
        .await
        .map_err(|e| format!("write: {}", e.kind()))?;
    buf.clear();
    // Head, then as much body as Content-Length says.
    let (status, body_at, length, close) = loop {
        let mut chunk = [0u8; 4096];
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {}", e.kind()))?;
        if n == 0 {
            return Err("closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u16>().ok())
                .ok_or("bad status line")?;
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let close = head.lines().any(|l| l.starts_with("connection: close"));
            break (status, end + 4, length, close);
        }
    };
    while buf.len() < body_at + length {
        let mut chunk = [0u8; 4096];
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {}", e.kind()))?;
        if n == 0 {
            return Err("closed mid-body".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if close {
        *stream = None;
    }
    Ok(status)
}
