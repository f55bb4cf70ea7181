//! Load client of the event fan-out benchmark (`benches/events_run.sh`).
//!
//! Opens `--subscribers` websocket subscriptions to an eventing channel
//! (`{base}/ws/token/v1/{token}/subscribe`, at most `--connect-concurrency` handshakes and
//! subscribes in flight), sends `{"op":"subscribe"}` on each and waits for every
//! `{"op":"subscribed",...}`. Then it publishes events one at a time through
//! `POST {base}/admin/v1/events` (`{"type":"bench.tick","data":{"k":k,"sent_ns":...}}`) and
//! waits until every held subscriber got event k before publishing k + 1.
//!
//! Timing uses one clock, this process's monotonic `Instant`: `t0` is taken just before the
//! POST is sent; a subscriber's latency for event k is (the moment its task read the event
//! frame) - `t0`. Reported over every (subscriber, measured event) pair: p50 / p90 / p99 /
//! max; per event, the "complete fan-out" time (the last subscriber's latency), p50 and max
//! over the events; and the publish acknowledgement (POST sent -> 201 and its body read).
//! The first `--warmup-events` events are published and checked the same way but left out
//! of the latency figures (first-use costs: statements, buffers).
//!
//! Checks: every subscription answered `subscribed`; every held subscriber got every event
//! exactly once, in order, with the id the publish returned; nothing else arrived.
//!
//! Prints progress on stderr and one JSON object on stdout (one line). Everything is
//! bounded by `--timeout-s`; each event's wait by `--event-timeout-s`. A run that hits a
//! bound reports what it has (`"timed_out": true` / `"events_incomplete"`).
//!
//! Usage:
//!   event_fanout --base http://127.0.0.1:18101 --token <eventing channel token>
//!                --admin-token <admin token> [--subscribers 10000] [--events 20]
//!                [--warmup-events 1] [--connect-concurrency 500] [--source-addresses 1] [--timeout-s 180]
//!                [--event-timeout-s 30] [--settle-ms 1000] [--pid <server pid>] [--label x]
//!                [--subscribe-bases http://node1,http://node2,...  (subscribers round robin;
//!                 events are published through --base)]
//!
//! Runs on one thread (an actix/tokio current-thread runtime, as `ws_load`): on a 2-core
//! machine the client shares the cores with the gateway, and the time its one thread takes
//! to read 10,000 frames is part of the measured latency (a floor, the same on every
//! backend).

#![recursion_limit = "256"]

#[path = "shared/ws_client.rs"]
mod ws_client;
use ws_client::{error_kind, percentile_ms};
// Only the server's RSS: its descriptors are not reported here.
#[allow(dead_code)]
#[path = "shared/proc_stats.rs"]
mod proc_stats;
use proc_stats::{CpuSpan, rss_kib};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;

struct Args {
    base: String,
    token: String,
    admin_token: String,
    subscribers: usize,
    events: usize,
    warmup_events: usize,
    connect_concurrency: usize,
    /// Connections come from 127.0.0.1 .. 127.0.0.N (past ~28,000 per source address).
    source_addresses: usize,
    timeout_s: u64,
    event_timeout_s: u64,
    settle_ms: u64,
    pid: Option<u32>,
    label: String,
    /// Nodes the subscribers connect to, round robin (default: `base`); events are
    /// published through `base`.
    subscribe_bases: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        base: String::new(),
        token: String::new(),
        admin_token: String::new(),
        subscribers: 10_000,
        events: 20,
        warmup_events: 1,
        connect_concurrency: 500,
        source_addresses: 1,
        timeout_s: 180,
        event_timeout_s: 30,
        settle_ms: 1000,
        pid: None,
        label: String::new(),
        subscribe_bases: Vec::new(),
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
            "--base" => a.base = value.trim_end_matches('/').to_string(),
            "--token" => a.token = value,
            "--admin-token" => a.admin_token = value,
            "--subscribers" => a.subscribers = num(&value)? as usize,
            "--events" => a.events = num(&value)? as usize,
            "--warmup-events" => a.warmup_events = num(&value)? as usize,
            "--connect-concurrency" => a.connect_concurrency = num(&value)?.max(1) as usize,
            "--source-addresses" => a.source_addresses = num(&value)?.clamp(1, 254) as usize,
            "--timeout-s" => a.timeout_s = num(&value)?,
            "--event-timeout-s" => a.event_timeout_s = num(&value)?.max(1),
            "--settle-ms" => a.settle_ms = num(&value)?,
            "--pid" => a.pid = Some(num(&value)? as u32),
            "--label" => a.label = value,
            "--subscribe-bases" => {
                a.subscribe_bases = value
                    .split(',')
                    .filter(|b| !b.is_empty())
                    .map(|b| b.trim_end_matches('/').to_string())
                    .collect()
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.base.is_empty() || a.token.is_empty() || a.admin_token.is_empty() {
        return Err("--base, --token and --admin-token are required".into());
    }
    if !a.base.starts_with("http://") {
        return Err("--base must be http://host:port".into());
    }
    Ok(a)
}

/// What the subscriber tasks tell the main task.
enum Report {
    Subscribed(usize),
    ConnectFailed(String),
    SubscribeFailed(String),
    /// An event frame of this benchmark: the subscriber, its `data.k` and `id`, and when
    /// the subscriber's task read it.
    Event {
        sub: usize,
        k: i64,
        id: i64,
        at: Instant,
    },
    /// Any other text frame after `subscribed`.
    Other(String),
    /// The connection went away after `subscribed`.
    Lost(usize, String),
}

/// The kind of an unexpected frame: its op (and code), else its first characters.
fn frame_kind(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => {
            let op = v.get("op").and_then(Value::as_str).unwrap_or("?");
            match v.get("code").and_then(Value::as_str) {
                Some(code) => format!("{op} {code}"),
                None => match v.get("type").and_then(Value::as_str) {
                    Some(t) => format!("{op} {t}"),
                    None => op.to_string(),
                },
            }
        }
        Err(_) => format!("text {}", text.chars().take(40).collect::<String>()),
    }
}

async fn subscriber(
    sub: usize,
    url: Arc<String>,
    sources: usize,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    reports: mpsc::UnboundedSender<Report>,
) {
    // The permit paces handshake + subscribe, so that the accept backlog is not overrun.
    let permit = gate.acquire().await;
    let connected = ws_client::connect(&url, sub, sources, Duration::from_secs(15)).await;
    let mut ws = match connected {
        Ok(ws) => ws,
        Err(why) => {
            let _ = reports.send(Report::ConnectFailed(why));
            return;
        }
    };
    let subscribed = timeout(Duration::from_secs(15), async {
        ws.send(Message::text(r#"{"op":"subscribe"}"#))
            .await
            .map_err(|e| format!("send subscribe: {}", error_kind(&e)))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let kind = frame_kind(t.as_str());
                    return if kind == "subscribed" {
                        Ok(())
                    } else {
                        Err(format!("answered {kind}"))
                    };
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(format!("closed by server: {frame:?}"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("read: {}", error_kind(&e))),
                None => return Err("connection ended".into()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("no subscribed within 15 s".into()));
    drop(permit);
    if let Err(why) = subscribed {
        let _ = reports.send(Report::SubscribeFailed(why));
        return;
    }
    let _ = reports.send(Report::Subscribed(sub));

    // Live: forward every frame, timestamped as soon as it is read. Pings are answered by
    // tungstenite (the pong is queued when the ping is read and flushed by the next read).
    loop {
        tokio::select! {
            r = stop.wait_for(|v| *v) => { let _ = r; break; }
            msg = ws.next() => {
                let at = Instant::now();
                match msg {
                    Some(Ok(Message::Text(t))) => {
                        let report = match serde_json::from_str::<Value>(t.as_str()) {
                            Ok(v) if v.get("op").and_then(Value::as_str) == Some("event")
                                && v.get("type").and_then(Value::as_str) == Some("bench.tick") =>
                            {
                                let k = v.pointer("/data/k").and_then(Value::as_i64);
                                let id = v.get("id").and_then(Value::as_i64);
                                match (k, id) {
                                    (Some(k), Some(id)) => Report::Event { sub, k, id, at },
                                    _ => Report::Other("event without data.k or id".into()),
                                }
                            }
                            _ => Report::Other(frame_kind(t.as_str())),
                        };
                        let _ = reports.send(report);
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let _ = reports.send(Report::Lost(sub, format!("closed by server: {frame:?}")));
                        return;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        let _ = reports.send(Report::Lost(sub, format!("read: {}", error_kind(&e))));
                        return;
                    }
                    None => {
                        let _ = reports.send(Report::Lost(sub, "connection ended".into()));
                        return;
                    }
                }
            }
        }
    }
    let _ = timeout(Duration::from_secs(5), ws.close(None)).await;
}

fn bump(map: &mut BTreeMap<String, usize>, key: String) {
    if map.len() < 20 || map.contains_key(&key) {
        *map.entry(key).or_default() += 1;
    } else {
        *map.entry("(other)".into()).or_default() += 1;
    }
}

/// One published event, as the main task sees it.
struct Published {
    /// Just before the POST was sent.
    t0: Instant,
    /// The id the publish returned (None: the publish failed).
    id: Option<i64>,
    /// Latencies (µs) of the subscribers that got it.
    latencies: Vec<u64>,
}

#[derive(Default)]
struct State {
    subscribed: usize,
    connect_errors: usize,
    connect_error_kinds: BTreeMap<String, usize>,
    subscribe_errors: usize,
    subscribe_error_kinds: BTreeMap<String, usize>,
    lost: usize,
    lost_kinds: BTreeMap<String, usize>,
    other_frames: usize,
    other_frame_kinds: BTreeMap<String, usize>,
    duplicates: usize,
    out_of_order: usize,
    id_mismatch: usize,
    /// Events of a k that was not published (yet).
    unknown_k: usize,
    /// Per subscriber: subscribed and not lost since.
    live: Vec<bool>,
    /// Per subscriber: the last k it got (-1: none yet) and how many distinct events.
    last_k: Vec<i64>,
    got: Vec<usize>,
    published: Vec<Published>,
}

impl State {
    fn handle(&mut self, r: Report) {
        match r {
            Report::Subscribed(sub) => {
                self.subscribed += 1;
                self.live[sub] = true;
            }
            Report::ConnectFailed(k) => {
                self.connect_errors += 1;
                bump(&mut self.connect_error_kinds, k);
            }
            Report::SubscribeFailed(k) => {
                self.subscribe_errors += 1;
                bump(&mut self.subscribe_error_kinds, k);
            }
            Report::Lost(sub, k) => {
                self.lost += 1;
                self.live[sub] = false;
                bump(&mut self.lost_kinds, k);
            }
            Report::Other(k) => {
                self.other_frames += 1;
                bump(&mut self.other_frame_kinds, k);
            }
            Report::Event { sub, k, id, at } => {
                let Some(p) = usize::try_from(k)
                    .ok()
                    .and_then(|k| self.published.get_mut(k))
                else {
                    self.unknown_k += 1;
                    return;
                };
                let last = self.last_k[sub];
                if k == last {
                    self.duplicates += 1;
                    return;
                }
                if k < last {
                    self.out_of_order += 1;
                    return;
                }
                if p.id.is_some_and(|expected| expected != id) {
                    self.id_mismatch += 1;
                }
                self.last_k[sub] = k;
                self.got[sub] += 1;
                p.latencies
                    .push(at.saturating_duration_since(p.t0).as_micros() as u64);
            }
        }
    }

    fn held(&self) -> usize {
        self.subscribed.saturating_sub(self.lost)
    }
}

/// Handles reports for `period`.
async fn drain_for(rx: &mut mpsc::UnboundedReceiver<Report>, st: &mut State, period: Duration) {
    let settle = tokio::time::sleep(period);
    tokio::pin!(settle);
    loop {
        tokio::select! {
            _ = &mut settle => return,
            r = rx.recv() => match r {
                Some(r) => st.handle(r),
                None => return,
            }
        }
    }
}

/// POSTs event k; Ok((id, ack µs)) on 201.
async fn publish(
    client: &awc::Client,
    url: &str,
    admin_token: &str,
    k: usize,
    t0: Instant,
) -> Result<(i64, u64), String> {
    let sent_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let body = json!({ "type": "bench.tick", "data": { "k": k, "sent_ns": sent_ns } });
    let mut resp = client
        .post(url)
        .insert_header(("Authorization", format!("Bearer {admin_token}")))
        .send_json(&body)
        .await
        .map_err(|e| format!("POST: {}", error_kind(&e)))?;
    let status = resp.status();
    let bytes = resp
        .body()
        .await
        .map_err(|e| format!("reading the answer: {}", error_kind(&e)))?;
    let ack_us = t0.elapsed().as_micros() as u64;
    if status.as_u16() != 201 {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&bytes)
                .chars()
                .take(200)
                .collect::<String>()
        ));
    }
    let id = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("id").and_then(Value::as_i64))
        .ok_or_else(|| "201 without an id".to_string())?;
    Ok((id, ack_us))
}

async fn run(args: Args) -> Value {
    let began = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_s);
    let mut timed_out = false;
    let rss_before = rss_kib(args.pid);

    let bases = if args.subscribe_bases.is_empty() {
        vec![args.base.clone()]
    } else {
        args.subscribe_bases.clone()
    };
    let ws_urls: Vec<Arc<String>> = bases
        .iter()
        .map(|b| {
            Arc::new(format!(
                "ws://{}/ws/token/v1/{}/subscribe",
                b.trim_start_matches("http://"),
                args.token
            ))
        })
        .collect();
    let publish_url = format!("{}/admin/v1/events", args.base);
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (tx, mut rx) = mpsc::unbounded_channel();
    for sub in 0..args.subscribers {
        tokio::spawn(subscriber(
            sub,
            ws_urls[sub % ws_urls.len()].clone(),
            args.source_addresses,
            gate.clone(),
            stop_rx.clone(),
            tx.clone(),
        ));
    }
    drop(tx);

    // --- phase 1: connect and subscribe ------------------------------------------------------
    let mut st = State {
        live: vec![false; args.subscribers],
        last_k: vec![-1; args.subscribers],
        got: vec![0; args.subscribers],
        ..State::default()
    };
    let connect_started = Instant::now();
    let mut next_report = Instant::now() + Duration::from_secs(2);
    while st.subscribed + st.connect_errors + st.subscribe_errors < args.subscribers {
        match timeout_at(deadline, rx.recv()).await {
            Ok(Some(r)) => st.handle(r),
            Ok(None) => break,
            Err(_) => {
                timed_out = true;
                break;
            }
        }
        if Instant::now() >= next_report {
            eprintln!(
                "[event_fanout {}] subscribing: {} subscribed, {} failed, {:.1} s",
                args.label,
                st.subscribed,
                st.connect_errors + st.subscribe_errors,
                connect_started.elapsed().as_secs_f64()
            );
            next_report = Instant::now() + Duration::from_secs(2);
        }
    }
    let subscribe_s = connect_started.elapsed().as_secs_f64();
    eprintln!(
        "[event_fanout {}] subscribed {} of {} in {subscribe_s:.2} s ({} connect errors, {} subscribe errors)",
        args.label, st.subscribed, args.subscribers, st.connect_errors, st.subscribe_errors
    );
    drain_for(&mut rx, &mut st, Duration::from_millis(args.settle_ms)).await;
    let held_at_start = st.held();
    let rss_held = rss_kib(args.pid);

    // --- phase 2: publish one event at a time --------------------------------------------------
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(args.event_timeout_s))
        .finish();
    let total_events = args.warmup_events + args.events;
    let mut acks_us = Vec::new();
    let mut publish_errors = BTreeMap::new();
    let mut events_incomplete = Vec::new();
    let mut complete_us: Vec<Option<u64>> = Vec::new();
    let phase2_started = Instant::now();
    // CPU used during the publishing phase, by the server and by this client: on a
    // machine whose cores both share, which of the two bounds the fan-out.
    let cpu = CpuSpan::start(args.pid);
    if !timed_out {
        for k in 0..total_events {
            let t0 = Instant::now();
            st.published.push(Published {
                t0,
                id: None,
                latencies: Vec::with_capacity(st.held()),
            });
            match publish(&client, &publish_url, &args.admin_token, k, t0).await {
                Ok((id, ack)) => {
                    st.published[k].id = Some(id);
                    if k >= args.warmup_events {
                        acks_us.push(ack);
                    }
                }
                Err(why) => {
                    bump(&mut publish_errors, why);
                    complete_us.push(None);
                    events_incomplete.push(k);
                    continue;
                }
            }
            // Wait for every held subscriber (one that is lost meanwhile is not waited for).
            let event_deadline = deadline
                .min(tokio::time::Instant::now() + Duration::from_secs(args.event_timeout_s));
            while st.published[k].latencies.len() < st.held() {
                match timeout_at(event_deadline, rx.recv()).await {
                    Ok(Some(r)) => st.handle(r),
                    Ok(None) => break,
                    Err(_) => {
                        if tokio::time::Instant::now() >= deadline {
                            timed_out = true;
                        }
                        break;
                    }
                }
            }
            let p = &st.published[k];
            let complete = p.latencies.len() >= st.held();
            if !complete {
                events_incomplete.push(k);
                eprintln!(
                    "[event_fanout {}] event {k}: only {} of {} subscribers got it",
                    args.label,
                    p.latencies.len(),
                    st.held()
                );
            }
            complete_us.push(
                complete
                    .then(|| p.latencies.iter().copied().max())
                    .flatten(),
            );
            if timed_out {
                break;
            }
        }
    }
    let phase2_s = phase2_started.elapsed().as_secs_f64();
    let (server_cpu_ms_per_event, client_cpu_ms_per_event) = cpu.used().per(st.published.len());
    // Late, duplicate or stray frames.
    drain_for(&mut rx, &mut st, Duration::from_millis(500)).await;
    let rss_after = rss_kib(args.pid);
    let held_at_end = st.held();
    let live_at_end = st.live.clone();

    let _ = stop_tx.send(true);
    let _ = timeout(Duration::from_secs(10), async {
        while let Some(r) = rx.recv().await {
            st.handle(r);
        }
    })
    .await;

    // --- figures --------------------------------------------------------------------------------
    let published_ok = st.published.iter().filter(|p| p.id.is_some()).count();
    let deliveries: usize = st.published.iter().map(|p| p.latencies.len()).sum();
    let mut latencies: Vec<u64> = st
        .published
        .iter()
        .skip(args.warmup_events)
        .flat_map(|p| p.latencies.iter().copied())
        .collect();
    latencies.sort_unstable();
    let measured_complete: Vec<Option<u64>> = complete_us
        .iter()
        .skip(args.warmup_events)
        .copied()
        .collect();
    let mut complete_sorted: Vec<u64> = measured_complete.iter().flatten().copied().collect();
    complete_sorted.sort_unstable();
    acks_us.sort_unstable();
    // Subscribers still held at the end of the publishing that missed a published event.
    let subscribers_missing_events = live_at_end
        .iter()
        .zip(&st.got)
        .filter(|&(&live, &got)| live && got < published_ok)
        .count();
    let round = |v: Option<f64>| v.map(|x| (x * 1000.0).round() / 1000.0);
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "label": args.label,
        "base": args.base,
        "subscribers": args.subscribers,
        "connect_concurrency": args.connect_concurrency,
        "subscribed": st.subscribed,
        "connect_errors": st.connect_errors,
        "connect_error_kinds": st.connect_error_kinds,
        "subscribe_errors": st.subscribe_errors,
        "subscribe_error_kinds": st.subscribe_error_kinds,
        "subscribe_s": round(Some(subscribe_s)),
        "held_at_start": held_at_start,
        "held_at_end": held_at_end,
        "lost": st.lost,
        "lost_kinds": st.lost_kinds,
        "events": args.events,
        "warmup_events": args.warmup_events,
        "published": published_ok,
        "publish_errors": publish_errors,
        "events_incomplete": events_incomplete,
        "deliveries": deliveries,
        "deliveries_expected": held_at_start * total_events,
        "subscribers_missing_events": subscribers_missing_events,
        "duplicates": st.duplicates,
        "out_of_order": st.out_of_order,
        "id_mismatch": st.id_mismatch,
        "unknown_k": st.unknown_k,
        "other_frames": st.other_frames,
        "other_frame_kinds": st.other_frame_kinds,
        "samples": latencies.len(),
        "fanout_p50_ms": round(percentile_ms(&latencies, 50.0)),
        "fanout_p90_ms": round(percentile_ms(&latencies, 90.0)),
        "fanout_p99_ms": round(percentile_ms(&latencies, 99.0)),
        "fanout_max_ms": round(latencies.last().map(|&u| ms(u))),
        "complete_p50_ms": round(percentile_ms(&complete_sorted, 50.0)),
        "complete_max_ms": round(complete_sorted.last().map(|&u| ms(u))),
        "complete_ms_per_event": measured_complete.iter().map(|c| round(c.map(ms))).collect::<Vec<_>>(),
        "warmup_complete_ms": complete_us.iter().take(args.warmup_events).map(|c| round(c.map(ms))).collect::<Vec<_>>(),
        "ack_p50_ms": round(percentile_ms(&acks_us, 50.0)),
        "ack_p99_ms": round(percentile_ms(&acks_us, 99.0)),
        "ack_max_ms": round(acks_us.last().map(|&u| ms(u))),
        "publish_phase_s": round(Some(phase2_s)),
        "server_cpu_ms_per_event": round(server_cpu_ms_per_event),
        "client_cpu_ms_per_event": round(client_cpu_ms_per_event),
        "server_pid": args.pid,
        "rss_before_kib": rss_before,
        "rss_held_kib": rss_held,
        "rss_after_kib": rss_after,
        "timed_out": timed_out,
        "elapsed_s": round(Some(began.elapsed().as_secs_f64())),
    })
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("event_fanout: {e}");
            std::process::exit(2);
        }
    };
    // awc needs an actix (tokio current-thread + LocalSet) runtime; the subscriber tasks
    // run on the same thread through tokio::spawn.
    let result = actix_rt::System::new().block_on(run(args));
    println!("{result}");
    // Connections that did not close in time are dropped with the process.
    std::process::exit(0);
}
