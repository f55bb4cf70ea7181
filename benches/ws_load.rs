//! Load client of the websocket benchmark (`benches/ws_run.sh`).
//!
//! Opens `--sessions` websockets to `--url` (at most `--connect-concurrency` handshakes in
//! flight, so that the server's accept backlog is not overrun), holds them all, then has
//! every session do `--messages` round trips at once (sequential per session: send a text
//! frame, wait for the same text back, repeat), timing each round trip. With `--pid`, the
//! server's RSS (and open descriptors) are read from `/proc/<pid>` before connecting, with
//! every session held (before any message), and after the messages (sessions still held).
//!
//! Prints progress on stderr and one JSON object on stdout (one line). Everything is
//! bounded by `--timeout-s`; a run that hits it reports what it has with `"timed_out": true`.
//!
//! Usage:
//!   ws_load --url ws://127.0.0.1:18091/ws/token/v1/x [--sessions 10000] [--messages 10]
//!           [--connect-concurrency 500] [--source-addresses 1] [--pid <server pid>] [--timeout-s 120]
//!           [--settle-ms 1000] [--label bare]
//!
//! Runs on one thread (tokio current-thread runtime): the client costs the same CPU
//! whichever server it measures; on a 2-core machine it shares the cores with the server.

#[path = "shared/ws_client.rs"]
mod ws_client;
use ws_client::{error_kind, percentile_ms};
#[path = "shared/proc_stats.rs"]
mod proc_stats;
use proc_stats::{CpuSpan, fd_count, rss_kib};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;

struct Args {
    url: String,
    sessions: usize,
    messages: usize,
    connect_concurrency: usize,
    /// Connections come from 127.0.0.1 .. 127.0.0.N (past ~28,000 per source address).
    source_addresses: usize,
    pid: Option<u32>,
    timeout_s: u64,
    settle_ms: u64,
    label: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        url: String::new(),
        sessions: 10_000,
        messages: 10,
        connect_concurrency: 500,
        source_addresses: 1,
        pid: None,
        timeout_s: 120,
        settle_ms: 1000,
        label: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` passes `--bench` to harness=false targets: ignore it.
        if flag == "--bench" {
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--url" => a.url = value,
            "--sessions" => a.sessions = num(&value)? as usize,
            "--messages" => a.messages = num(&value)? as usize,
            "--connect-concurrency" => a.connect_concurrency = num(&value)?.max(1) as usize,
            "--source-addresses" => a.source_addresses = num(&value)?.clamp(1, 254) as usize,
            "--pid" => a.pid = Some(num(&value)? as u32),
            "--timeout-s" => a.timeout_s = num(&value)?,
            "--settle-ms" => a.settle_ms = num(&value)?,
            "--label" => a.label = value,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.url.is_empty() {
        return Err("--url is required".into());
    }
    Ok(a)
}

enum Event {
    Connected,
    ConnectFailed(String),
    /// The session finished its round trips: latencies in µs of those answered with the
    /// echo, and the kinds of the other replies (e.g. a gateway error frame).
    Done(Vec<u64>, Vec<String>),
    /// The session failed while doing its round trips (with those it completed).
    Failed {
        completed: Vec<u64>,
        why: String,
    },
    /// The connection went away while it was only held (before or after the messages).
    Lost {
        before_start: bool,
        why: String,
    },
}

/// Waits until `flag` turns true while answering the server's pings (tungstenite queues
/// the pong when the ping is read). Err: the connection went away.
async fn hold<S>(ws: &mut S, flag: &mut watch::Receiver<bool>) -> Result<(), String>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        tokio::select! {
            r = flag.wait_for(|v| *v) => { let _ = r; return Ok(()); }
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(frame))) => return Err(format!("closed by server: {frame:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(error_kind(&e)),
                None => return Err("connection ended".into()),
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    id: usize,
    url: Arc<String>,
    sources: usize,
    messages: usize,
    gate: Arc<Semaphore>,
    mut start: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    events: mpsc::UnboundedSender<Event>,
) {
    let connected = {
        let _permit = gate.acquire().await;
        ws_client::connect(&url, id, sources, Duration::from_secs(15)).await
    };
    let mut ws = match connected {
        Ok(ws) => ws,
        Err(why) => {
            let _ = events.send(Event::ConnectFailed(why));
            return;
        }
    };
    let _ = events.send(Event::Connected);
    if let Err(why) = hold(&mut ws, &mut start).await {
        let why = format!("before messages: {why}");
        let _ = events.send(Event::Lost {
            before_start: true,
            why,
        });
        return;
    }
    let mut latencies = Vec::with_capacity(messages);
    let mut other_replies = Vec::new();
    for i in 0..messages {
        let payload = format!("{id}:{i}");
        let sent = Instant::now();
        if let Err(e) = ws.send(Message::text(payload.clone())).await {
            let why = format!("send: {}", error_kind(&e));
            let _ = events.send(Event::Failed {
                completed: latencies,
                why,
            });
            return;
        }
        let outcome = loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str() == payload => break Ok(true),
                // Another reply (the gateway answers a failed run with an error frame and
                // keeps the session): counted, and the session goes on.
                Some(Ok(Message::Text(t))) => {
                    other_replies.push(reply_kind(t.as_str()));
                    break Ok(false);
                }
                Some(Ok(Message::Close(frame))) => {
                    break Err(format!("closed by server: {frame:?}"));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Err(format!("read: {}", error_kind(&e))),
                None => break Err("connection ended".into()),
            }
        };
        match outcome {
            Ok(true) => latencies.push(sent.elapsed().as_micros() as u64),
            Ok(false) => {}
            Err(why) => {
                let _ = events.send(Event::Failed {
                    completed: latencies,
                    why,
                });
                return;
            }
        }
    }
    let _ = events.send(Event::Done(latencies, other_replies));
    if let Err(why) = hold(&mut ws, &mut stop).await {
        let why = format!("after messages: {why}");
        let _ = events.send(Event::Lost {
            before_start: false,
            why,
        });
        return;
    }
    let _ = timeout(Duration::from_secs(5), ws.close(None)).await;
}

/// A reply that is not the echo: the gateway's `{"error": {"code": ...}}` by its code,
/// anything else by its first characters.
fn reply_kind(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| {
            v.pointer("/error/code")?
                .as_str()
                .map(|c| format!("error {c}"))
        })
        .unwrap_or_else(|| format!("text {}", text.chars().take(40).collect::<String>()))
}

fn bump(map: &mut BTreeMap<String, usize>, key: String) {
    if map.len() < 20 || map.contains_key(&key) {
        *map.entry(key).or_default() += 1;
    } else {
        *map.entry("(other)".into()).or_default() += 1;
    }
}

#[derive(Default)]
struct Stats {
    connected: usize,
    connect_errors: usize,
    connect_error_kinds: BTreeMap<String, usize>,
    lost: usize,
    lost_before_start: usize,
    lost_kinds: BTreeMap<String, usize>,
    done: usize,
    failed: usize,
    failed_kinds: BTreeMap<String, usize>,
    other_replies: usize,
    other_reply_kinds: BTreeMap<String, usize>,
    latencies: Vec<u64>,
}

impl Stats {
    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Connected => self.connected += 1,
            Event::ConnectFailed(k) => {
                self.connect_errors += 1;
                bump(&mut self.connect_error_kinds, k);
            }
            Event::Done(l, others) => {
                self.done += 1;
                self.latencies.extend(l);
                for k in others {
                    self.other_replies += 1;
                    bump(&mut self.other_reply_kinds, k);
                }
            }
            Event::Failed { completed, why } => {
                self.failed += 1;
                self.latencies.extend(completed);
                bump(&mut self.failed_kinds, why);
            }
            Event::Lost { before_start, why } => {
                self.lost += 1;
                if before_start {
                    self.lost_before_start += 1;
                }
                bump(&mut self.lost_kinds, why);
            }
        }
    }
}

/// Handles events for `period`.
async fn drain_for(rx: &mut mpsc::UnboundedReceiver<Event>, st: &mut Stats, period: Duration) {
    let settle = tokio::time::sleep(period);
    tokio::pin!(settle);
    loop {
        tokio::select! {
            _ = &mut settle => return,
            ev = rx.recv() => match ev {
                Some(ev) => st.handle(ev),
                None => return,
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ws_load: {e}");
            std::process::exit(2);
        }
    };
    let began = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_s);
    let mut timed_out = false;

    let rss_before = rss_kib(args.pid);
    let fds_before = fd_count(args.pid);

    let url = Arc::new(args.url.clone());
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let (start_tx, start_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (tx, mut rx) = mpsc::unbounded_channel();
    for id in 0..args.sessions {
        tokio::spawn(session(
            id,
            url.clone(),
            args.source_addresses,
            args.messages,
            gate.clone(),
            start_rx.clone(),
            stop_rx.clone(),
            tx.clone(),
        ));
    }
    drop(tx);

    // --- phase 1: connect ---------------------------------------------------------------
    let mut st = Stats::default();
    let connect_started = Instant::now();
    let mut next_report = Instant::now() + Duration::from_secs(2);
    while st.connected + st.connect_errors < args.sessions {
        match timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) => st.handle(ev),
            Ok(None) => break,
            Err(_) => {
                timed_out = true;
                break;
            }
        }
        if Instant::now() >= next_report {
            eprintln!(
                "[ws_load {}] connecting: {} open, {} failed, {:.1} s",
                args.label,
                st.connected,
                st.connect_errors,
                connect_started.elapsed().as_secs_f64()
            );
            next_report = Instant::now() + Duration::from_secs(2);
        }
    }
    let connect_s = connect_started.elapsed().as_secs_f64();
    eprintln!(
        "[ws_load {}] connected {} of {} in {connect_s:.2} s ({} errors)",
        args.label, st.connected, args.sessions, st.connect_errors
    );

    // Let the server finish its side of the last handshakes, then measure it idle.
    drain_for(&mut rx, &mut st, Duration::from_millis(args.settle_ms)).await;
    let rss_held = rss_kib(args.pid);
    let fds_held = fd_count(args.pid);
    let held_before_messages = st.connected - st.lost;

    // --- phase 2: every session does its round trips at once ---------------------------
    eprintln!(
        "[ws_load {}] {} sessions held; {} round trips each, all at once",
        args.label, held_before_messages, args.messages
    );
    // CPU of the server and of this client over the round trips: per message, the
    // figure that decides a ratio when both share the machine's cores.
    let cpu = CpuSpan::start(args.pid);
    let _ = start_tx.send(true);
    let messages_started = Instant::now();
    // Every connected session ends phase 2 with Done, Failed, or Lost before the start.
    while !timed_out && st.done + st.failed + st.lost_before_start < st.connected {
        match timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) => st.handle(ev),
            Ok(None) => break,
            Err(_) => {
                timed_out = true;
                break;
            }
        }
    }
    let wall_s = messages_started.elapsed().as_secs_f64();
    let cpu_used = cpu.used();

    // Sessions still held after the messages (give the server a moment to drop any).
    drain_for(&mut rx, &mut st, Duration::from_millis(500)).await;
    let rss_after = rss_kib(args.pid);
    let fds_after = fd_count(args.pid);
    let held_at_end = st.connected - st.lost - st.failed;

    // --- close everything (bounded) ------------------------------------------------------
    let _ = stop_tx.send(true);
    let _ = timeout(Duration::from_secs(10), async {
        while let Some(ev) = rx.recv().await {
            st.handle(ev);
        }
    })
    .await;
    let Stats {
        connected,
        connect_errors,
        connect_error_kinds,
        lost,
        lost_kinds,
        done: done_sessions,
        failed: failed_sessions,
        failed_kinds,
        other_replies,
        other_reply_kinds,
        mut latencies,
        ..
    } = st;
    latencies.sort_unstable();
    let total = latencies.len();
    let per_conn = |after: Option<u64>| match (rss_before, after) {
        (Some(b), Some(a)) if held_before_messages > 0 => {
            Some((a as f64 - b as f64) / held_before_messages as f64)
        }
        _ => None,
    };
    let round = |v: Option<f64>| v.map(|x| (x * 1000.0).round() / 1000.0);
    let (server_cpu_ms, client_cpu_ms) = cpu_used.per(total);
    let us = |ms: Option<f64>| ms.map(|ms| ms * 1000.0);
    let result = json!({
        "label": args.label,
        "url": args.url,
        "sessions": args.sessions,
        "messages_per_session": args.messages,
        "connect_concurrency": args.connect_concurrency,
        "connected": connected,
        "connect_errors": connect_errors,
        "connect_error_kinds": connect_error_kinds,
        "connect_s": round(Some(connect_s)),
        "held_before_messages": held_before_messages,
        "held_at_end": held_at_end,
        "lost": lost,
        "lost_kinds": lost_kinds,
        "sessions_done": done_sessions,
        "sessions_failed": failed_sessions,
        "failed_kinds": failed_kinds,
        "round_trips": total,
        "other_replies": other_replies,
        "other_reply_kinds": other_reply_kinds,
        "round_trips_expected": held_before_messages * args.messages,
        "wall_s": round(Some(wall_s)),
        "msgs_per_s": if wall_s > 0.0 { (total as f64 / wall_s).round() } else { 0.0 },
        "p50_ms": round(percentile_ms(&latencies, 50.0)),
        "p90_ms": round(percentile_ms(&latencies, 90.0)),
        "p99_ms": round(percentile_ms(&latencies, 99.0)),
        "max_ms": round(latencies.last().map(|&u| u as f64 / 1000.0)),
        "server_pid": args.pid,
        "server_cpu_us_per_message": round(us(server_cpu_ms)),
        "client_cpu_us_per_message": round(us(client_cpu_ms)),
        "rss_before_kib": rss_before,
        "rss_held_kib": rss_held,
        "rss_after_messages_kib": rss_after,
        "rss_per_conn_kib": round(per_conn(rss_held)),
        "rss_per_conn_after_messages_kib": round(per_conn(rss_after)),
        "server_fds_before": fds_before,
        "server_fds_held": fds_held,
        "server_fds_after_messages": fds_after,
        "timed_out": timed_out,
        "elapsed_s": round(Some(began.elapsed().as_secs_f64())),
    });
    println!("{result}");
    // Sessions that did not close in time are dropped with the process.
    std::process::exit(0);
}
