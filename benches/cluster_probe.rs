//! Load client of the cluster benchmark (`benches/cluster_run.sh`): what crosses nodes.
//!
//! `propagation`: creates a public channel (wait on, reply `v0`) through `--admin`, waits
//! until every `--watch` node serves it, then makes `--changes` updates one after the
//! other (reply `v1`, `v2`, ...). For each, `t0` is taken just before the PATCH is sent;
//! every watched node is polled (keep-alive, back to back) until it answers the new
//! reply; the latency is (that answer read) - `t0`. Reported: p50 / p99 / max over all
//! (change, node) pairs.
//!
//! `ws-send`: creates a public channel through `--admin` whose webhook runs
//! `ws_send(code, text)`; opens `--sessions` websockets spread over `--holders` (each
//! greets with its session code); then `--concurrency` callers post `--messages`
//! webhooks to `--caller`, round robin over the sessions. The text carries the send time
//! (one monotonic clock, this process's); a frame's latency is (read) - (just before its
//! POST). Reported: pushes/s (frames read / time from first POST to last frame) and
//! p50 / p99 / max. With `--caller` one of the holders, the same numbers for a session
//! on the calling node: the baseline of the same run.
//!
//! One JSON object on stdout; progress on stderr; bounded by `--timeout-s`.
//!
//! Usage:
//!   cluster_probe propagation --admin http://127.0.0.1:P1 --watch http://127.0.0.1:P2,... \
//!                 --admin-token T [--changes 100] [--timeout-s 120]
//!   cluster_probe ws-send --admin http://... --caller http://... --holders http://...,... \
//!                 --admin-token T [--sessions 100] [--messages 20000] [--concurrency 32]

#[path = "shared/ws_client.rs"]
mod ws_client;
use ws_client::percentile_ms;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

struct Args {
    mode: String,
    admin: String,
    watch: Vec<String>,
    caller: String,
    holders: Vec<String>,
    admin_token: String,
    changes: usize,
    sessions: usize,
    messages: usize,
    concurrency: usize,
    timeout_s: u64,
    label: String,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    let mode = it
        .next()
        .ok_or("a mode is required: propagation or ws-send")?;
    let mut a = Args {
        mode,
        admin: String::new(),
        watch: Vec::new(),
        caller: String::new(),
        holders: Vec::new(),
        admin_token: String::new(),
        changes: 100,
        sessions: 100,
        messages: 20_000,
        concurrency: 32,
        timeout_s: 120,
        label: String::new(),
    };
    let list = |v: &str| -> Vec<String> {
        v.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.trim_end_matches('/').to_string())
            .collect()
    };
    let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{v}: {e}"));
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--admin" => a.admin = value.trim_end_matches('/').to_string(),
            "--watch" => a.watch = list(&value),
            "--caller" => a.caller = value.trim_end_matches('/').to_string(),
            "--holders" => a.holders = list(&value),
            "--admin-token" => a.admin_token = value,
            "--changes" => a.changes = num(&value)?.max(1),
            "--sessions" => a.sessions = num(&value)?.max(1),
            "--messages" => a.messages = num(&value)?.max(1),
            "--concurrency" => a.concurrency = num(&value)?.max(1),
            "--timeout-s" => a.timeout_s = num(&value)? as u64,
            "--label" => a.label = value,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.admin.is_empty() || a.admin_token.is_empty() {
        return Err("--admin and --admin-token are required".into());
    }
    Ok(a)
}

fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
}

async fn admin(a: &Args, method: &str, path: &str, body: Value) -> Result<Value, String> {
    let method = method.parse().map_err(|e| format!("{e}"))?;
    let mut res = client()
        .request(method, format!("{}{path}", a.admin))
        .insert_header(("Authorization", format!("Bearer {}", a.admin_token)))
        .send_json(&body)
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let status = res.status().as_u16();
    let body = res.body().await.map_err(|e| format!("{path}: {e}"))?;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if !(200..300).contains(&status) {
        return Err(format!("{path}: {status} {v}"));
    }
    Ok(v)
}

/// A webhook call; (status, body).
async fn call(client: &awc::Client, base: &str, token: &str, body: String) -> (u16, Vec<u8>) {
    match client
        .post(format!("{base}/api/token/v1/{token}"))
        .send_body(body)
        .await
    {
        Ok(mut res) => {
            let status = res.status().as_u16();
            (
                status,
                res.body().await.map(|b| b.to_vec()).unwrap_or_default(),
            )
        }
        Err(_) => (0, Vec::new()),
    }
}

/// Polls `base` until `token` answers `want`; the moment it did, or None at `deadline`.
async fn until_answers(
    client: &awc::Client,
    base: &str,
    token: &str,
    want: &[u8],
    deadline: Instant,
) -> Option<Instant> {
    while Instant::now() < deadline {
        let (status, body) = call(client, base, token, String::new()).await;
        if status == 200 && body == want {
            return Some(Instant::now());
        }
    }
    None
}

fn summary(mut us: Vec<u64>) -> Value {
    us.sort_unstable();
    json!({
        "samples": us.len(),
        "p50_ms": percentile_ms(&us, 50.0),
        "p99_ms": percentile_ms(&us, 99.0),
        "max_ms": percentile_ms(&us, 100.0),
    })
}

async fn propagation(a: &Args) -> Result<Value, String> {
    let deadline = Instant::now() + Duration::from_secs(a.timeout_s);
    let code = format!("prop-{}", uuid::Uuid::new_v4().simple());
    let created = admin(
        a,
        "POST",
        "/admin/v1/channels",
        json!({"code": code, "kind": "public", "wait_for_completion": true,
               "webhook_scenario": "response_content = \"v0\";"}),
    )
    .await?;
    let token = created["token"].as_str().ok_or("no token")?.to_string();
    let id = created["id"].as_str().ok_or("no id")?.to_string();
    let watchers: Vec<awc::Client> = a.watch.iter().map(|_| client()).collect();
    for (base, c) in a.watch.iter().zip(&watchers) {
        until_answers(c, base, &token, b"v0", deadline)
            .await
            .ok_or_else(|| format!("{base} never served the new channel"))?;
    }
    let mut latencies = Vec::with_capacity(a.changes * a.watch.len());
    for i in 1..=a.changes {
        let want = format!("v{i}");
        let t0 = Instant::now();
        admin(
            a,
            "PATCH",
            &format!("/admin/v1/channels/{id}"),
            json!({"webhook_scenario": format!("response_content = \"{want}\";")}),
        )
        .await?;
        let polls = a
            .watch
            .iter()
            .zip(&watchers)
            .map(|(base, c)| until_answers(c, base, &token, want.as_bytes(), deadline));
        for seen in futures_util::future::join_all(polls).await {
            let seen = seen.ok_or_else(|| format!("change {i} never arrived"))?;
            latencies.push((seen - t0).as_micros() as u64);
        }
    }
    let _ = admin(
        a,
        "DELETE",
        &format!("/admin/v1/channels/{id}"),
        Value::Null,
    )
    .await;
    Ok(
        json!({"mode": "propagation", "label": a.label, "changes": a.changes,
              "nodes_watched": a.watch.len(), "latency": summary(latencies)}),
    )
}

async fn ws_send(a: &Args) -> Result<Value, String> {
    let deadline = Instant::now() + Duration::from_secs(a.timeout_s);
    let code = format!("push-{}", uuid::Uuid::new_v4().simple());
    let created = admin(
        a,
        "POST",
        "/admin/v1/channels",
        json!({"code": code, "kind": "public", "wait_for_completion": true, "ws_hello": true,
               "webhook_scenario":
                   "let b = startparam(4); let i = b.index_of(\" \"); \
                    response_content = if i < 0 { \"false\" } \
                        else { to_json(ws_send(b.sub_string(0, i), b)) };"}),
    )
    .await?;
    let token = created["token"].as_str().ok_or("no token")?.to_string();
    let id = created["id"].as_str().ok_or("no id")?.to_string();
    let probe = client();
    for base in a.holders.iter().chain(std::iter::once(&a.caller)) {
        until_answers(&probe, base, &token, b"false", deadline)
            .await
            .ok_or_else(|| format!("{base} never served the new channel"))?;
    }
    // Sessions, each reading its frames: "<code> <sent_us>".
    let start = Instant::now();
    let received = Arc::new(AtomicUsize::new(0));
    let last_us = Arc::new(AtomicU64::new(0));
    let (lat_tx, mut lat_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let mut codes = Vec::with_capacity(a.sessions);
    for n in 0..a.sessions {
        let base = &a.holders[n % a.holders.len()];
        let url = format!(
            "ws://{}/ws/token/v1/{token}",
            base.trim_start_matches("http://")
        );
        let mut ws = ws_client::connect(&url, n, 1, Duration::from_secs(15)).await?;
        let hello = match ws.next().await {
            Some(Ok(Message::Text(t))) => serde_json::from_str::<Value>(&t).unwrap_or(Value::Null),
            other => return Err(format!("no hello: {other:?}")),
        };
        codes.push(
            hello["code"]
                .as_str()
                .ok_or("hello without code")?
                .to_string(),
        );
        let (received, last_us, lat_tx) = (received.clone(), last_us.clone(), lat_tx.clone());
        tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(t) = msg {
                    let now = start.elapsed().as_micros() as u64;
                    if let Some(sent) = t.rsplit(' ').next().and_then(|s| s.parse::<u64>().ok()) {
                        let _ = lat_tx.send(now.saturating_sub(sent));
                        received.fetch_add(1, Ordering::Relaxed);
                        last_us.fetch_max(now, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    drop(lat_tx);
    // Every session is in the cluster's directory before measuring (its node writes
    // it in batches): a warm-up push to each until the caller finds it. The readers
    // ignore these frames (no send time at the end).
    for code in &codes {
        loop {
            let (status, reply) = call(&probe, &a.caller, &token, format!("{code} warm-up")).await;
            if status == 200 && reply == b"true" {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "session {code} was never found through {}",
                    a.caller
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Callers.
    let next = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let codes = Arc::new(codes);
    let first_post_us = start.elapsed().as_micros() as u64;
    let callers = (0..a.concurrency).map(|_| {
        let (next, refused, codes, token) =
            (next.clone(), refused.clone(), codes.clone(), token.clone());
        let (caller, messages) = (a.caller.clone(), a.messages);
        async move {
            let c = client();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= messages || Instant::now() >= deadline {
                    return;
                }
                let code = &codes[n % codes.len()];
                let body = format!("{code} {}", start.elapsed().as_micros());
                let (status, reply) = call(&c, &caller, &token, body).await;
                if status != 200 || reply != b"true" {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    futures_util::future::join_all(callers).await;
    let sent = a.messages.min(next.load(Ordering::Relaxed)) - refused.load(Ordering::Relaxed);
    while received.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut lat = Vec::with_capacity(sent);
    while let Ok(us) = lat_rx.try_recv() {
        lat.push(us);
    }
    let got = received.load(Ordering::Relaxed);
    let span_s = (last_us
        .load(Ordering::Relaxed)
        .saturating_sub(first_post_us)) as f64
        / 1e6;
    let _ = admin(
        a,
        "DELETE",
        &format!("/admin/v1/channels/{id}"),
        Value::Null,
    )
    .await;
    Ok(
        json!({"mode": "ws-send", "label": a.label, "caller": a.caller, "holders": a.holders,
              "sessions": a.sessions, "messages": a.messages, "concurrency": a.concurrency,
              "refused_or_failed": refused.load(Ordering::Relaxed), "received": got,
              "pushes_per_s": if span_s > 0.0 { got as f64 / span_s } else { 0.0 },
              "latency": summary(lat)}),
    )
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cluster_probe: {e}");
            std::process::exit(2);
        }
    };
    let result = actix_rt::System::new().block_on(async {
        match args.mode.as_str() {
            "propagation" => propagation(&args).await,
            "ws-send" => ws_send(&args).await,
            other => Err(format!("unknown mode {other}")),
        }
    });
    match result {
        Ok(v) => println!("{v}"),
        Err(e) => {
            println!("{}", json!({"error": e}));
            std::process::exit(1);
        }
    }
    std::process::exit(0);
}
