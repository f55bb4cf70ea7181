//! Load client of the soak benchmark (`benches/soak_run.sh`): a bounded mixed load on one
//! gateway, with the gateway's resident memory and open descriptors sampled as it goes.
//!
//! For `--duration-s`, in intervals of `--interval-s`, at once:
//!
//! - webhooks at a fixed offered rate (`shared/fixed_rate.rs`, open loop, latency from
//!   when each request was due) to `--webhook-url`;
//! - events published at a fixed rate (`POST --event-url`, one event a request, with the
//!   admin token), which the gateway delivers to the webhook subscriptions the script
//!   made (the receiver counts them);
//! - `--ws-sessions` websocket sessions to `--ws-url` (`shared/ws_client.rs`), each doing
//!   `--ws-messages` round trips (send a text frame, wait for the echo) `--ws-gap-ms`
//!   apart, then closing and opening a new session: sessions come and go all the time.
//!
//! The webhook and event loads restart each interval with new connections (connections
//! come and go too). In the middle of each interval the gateway's `VmRSS` and open
//! descriptors are read from `/proc/<--pid>` (`shared/proc_stats.rs`). One JSON line per
//! interval on stdout: `{"i", "t_s", "rss_kib", "fds", "webhooks": {...}, "events":
//! {...}, "ws": {...}}`; a line `{"idle": ...}` before the load starts; after it, the
//! sessions are closed and a last line `{"end": {...}, "totals": {...}}` has the idle
//! sample again and the counts of the whole run.
//!
//! Usage:
//!   soak_load --pid <gateway pid> --webhook-url http://127.0.0.1:P/api/token/v1/<t>
//!             --event-url http://127.0.0.1:P/admin/v1/events --admin-token <a>
//!             --ws-url ws://127.0.0.1:P/ws/token/v1/<t> [--duration-s 600] [--interval-s 10]
//!             [--webhook-rate 200] [--webhook-connections 16] [--event-rate 20]
//!             [--ws-sessions 50] [--ws-messages 20] [--ws-gap-ms 250] [--timeout-ms 5000]
//!
//! One thread (tokio current-thread runtime), like the other load clients.

#[path = "shared/fixed_rate.rs"]
mod fixed_rate;
#[path = "shared/ws_client.rs"]
mod ws_client;
use ws_client::{error_kind, percentile_ms};
// The server's RSS and descriptors: its CPU is not reported here.
#[allow(dead_code)]
#[path = "shared/proc_stats.rs"]
mod proc_stats;
use proc_stats::{fd_count, rss_kib};

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

struct Args {
    pid: Option<u32>,
    webhook_url: String,
    event_url: String,
    admin_token: String,
    ws_url: String,
    duration_s: u64,
    interval_s: u64,
    webhook_rate: f64,
    webhook_connections: usize,
    event_rate: f64,
    ws_sessions: usize,
    ws_messages: usize,
    ws_gap_ms: u64,
    timeout_ms: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        pid: None,
        webhook_url: String::new(),
        event_url: String::new(),
        admin_token: String::new(),
        ws_url: String::new(),
        duration_s: 600,
        interval_s: 10,
        webhook_rate: 200.0,
        webhook_connections: 16,
        event_rate: 20.0,
        ws_sessions: 50,
        ws_messages: 20,
        ws_gap_ms: 250,
        timeout_ms: 5000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` passes `--bench` to harness=false targets: ignore it.
        if flag == "--bench" {
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<f64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--pid" => a.pid = Some(num(&value)? as u32),
            "--webhook-url" => a.webhook_url = value,
            "--event-url" => a.event_url = value,
            "--admin-token" => a.admin_token = value,
            "--ws-url" => a.ws_url = value,
            "--duration-s" => a.duration_s = num(&value)? as u64,
            "--interval-s" => a.interval_s = (num(&value)? as u64).max(1),
            "--webhook-rate" => a.webhook_rate = num(&value)?,
            "--webhook-connections" => a.webhook_connections = num(&value)? as usize,
            "--event-rate" => a.event_rate = num(&value)?,
            "--ws-sessions" => a.ws_sessions = num(&value)? as usize,
            "--ws-messages" => a.ws_messages = (num(&value)? as usize).max(1),
            "--ws-gap-ms" => a.ws_gap_ms = num(&value)? as u64,
            "--timeout-ms" => a.timeout_ms = num(&value)? as u64,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.pid.is_none() || a.webhook_url.is_empty() || a.event_url.is_empty() || a.ws_url.is_empty()
    {
        return Err("--pid, --webhook-url, --event-url and --ws-url are required".into());
    }
    Ok(a)
}

/// What the websocket sessions did since the last interval's report.
#[derive(Default)]
struct WsTally {
    opened: u64,
    closed: u64,
    /// Round trips answered with the echo, µs.
    round_trips_us: Vec<u64>,
    /// Replies other than the echo (e.g. a gateway error frame).
    other_replies: u64,
    errors: BTreeMap<String, u64>,
}

impl WsTally {
    fn error(&mut self, why: String) {
        *self.errors.entry(why).or_default() += 1;
    }
}

/// One session slot: open a session, do the round trips, close it, open the next, until
/// `stop`. Every outcome goes to `tally`.
async fn ws_slot(
    n: usize,
    args: Rc<Args>,
    first_delay: Duration,
    mut stop: watch::Receiver<bool>,
    tally: Rc<RefCell<WsTally>>,
) {
    let gap = Duration::from_millis(args.ws_gap_ms);
    let reply_limit = Duration::from_millis(args.timeout_ms);
    // Slots start spread over one session's life, so sessions end and open evenly.
    tokio::select! {
        _ = tokio::time::sleep(first_delay) => {}
        _ = stop.wait_for(|v| *v) => return,
    }
    while !*stop.borrow() {
        let mut ws = match ws_client::connect(&args.ws_url, n, 1, Duration::from_secs(15)).await {
            Ok(ws) => ws,
            Err(why) => {
                tally.borrow_mut().error(format!("connect: {why}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tally.borrow_mut().opened += 1;
        for i in 0..args.ws_messages {
            let payload = format!("{n}:{i}");
            let sent = Instant::now();
            if let Err(e) = ws.send(Message::text(payload.clone())).await {
                tally
                    .borrow_mut()
                    .error(format!("send: {}", error_kind(&e)));
                break;
            }
            let reply = timeout(reply_limit, async {
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => return Ok(t.as_str() == payload),
                        Some(Ok(Message::Close(frame))) => {
                            return Err(format!("closed by server: {frame:?}"));
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Err(format!("read: {}", error_kind(&e))),
                        None => return Err("connection ended".into()),
                    }
                }
            })
            .await
            .unwrap_or_else(|_| Err("no reply in time".into()));
            match reply {
                Ok(true) => tally
                    .borrow_mut()
                    .round_trips_us
                    .push(sent.elapsed().as_micros() as u64),
                Ok(false) => tally.borrow_mut().other_replies += 1,
                Err(why) => {
                    tally.borrow_mut().error(why);
                    break;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(gap) => {}
                _ = stop.wait_for(|v| *v) => break,
            }
        }
        // A clean close: our close frame, then the server's (read until the end).
        let _ = timeout(Duration::from_secs(5), async {
            let _ = ws.close(None).await;
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        tally.borrow_mut().closed += 1;
    }
}

fn round3(v: Option<f64>) -> Option<f64> {
    v.map(|x| (x * 1000.0).round() / 1000.0)
}

/// An HTTP load's interval as JSON.
fn http_json(out: &fixed_rate::Outcome) -> Value {
    let ok = out.ok();
    json!({
        "sent": out.sent,
        "ok": ok,
        "statuses": out.statuses,
        "errors": out.errors,
        "late": out.late,
        "p50_ms": round3(percentile_ms(&out.latencies_us, 50.0)),
        "p99_ms": round3(percentile_ms(&out.latencies_us, 99.0)),
        "max_ms": round3(out.latencies_us.last().map(|v| *v as f64 / 1000.0)),
    })
}

fn http_load(
    url: &str,
    headers: Vec<(String, String)>,
    body: &[u8],
    rate: f64,
    conns: usize,
    args: &Args,
) -> fixed_rate::Load {
    let (addr, path) = fixed_rate::split_url(url);
    fixed_rate::Load {
        addr,
        method: "POST".into(),
        path,
        headers,
        body: body.to_vec(),
        rate,
        duration: Duration::from_secs(args.interval_s),
        connections: conns,
        timeout: Duration::from_millis(args.timeout_ms),
    }
}

async fn soak(args: Args) {
    let args = Rc::new(args);
    let began = Instant::now();
    let sample = || (rss_kib(args.pid), fd_count(args.pid));
    let (rss, fds) = sample();
    println!("{}", json!({"idle": {"rss_kib": rss, "fds": fds}}));

    let webhooks = http_load(
        &args.webhook_url,
        Vec::new(),
        br#"{"order":42,"items":[{"sku":"A-1","qty":2}]}"#,
        args.webhook_rate,
        args.webhook_connections,
        &args,
    );
    let events = http_load(
        &args.event_url,
        vec![(
            "Authorization".into(),
            format!("Bearer {}", args.admin_token),
        )],
        br#"{"type":"soak.tick","data":{"soak":true}}"#,
        args.event_rate,
        // A publish is one short transaction: a few connections keep up.
        4,
        &args,
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let tally = Rc::new(RefCell::new(WsTally::default()));
    let life = Duration::from_millis(args.ws_gap_ms * args.ws_messages as u64);
    let mut slots = Vec::new();
    for n in 0..args.ws_sessions {
        let first_delay = life.mul_f64(n as f64 / args.ws_sessions.max(1) as f64);
        slots.push(tokio::task::spawn_local(ws_slot(
            n,
            args.clone(),
            first_delay,
            stop_rx.clone(),
            tally.clone(),
        )));
    }

    let intervals = args.duration_s.div_ceil(args.interval_s);
    let mut totals = BTreeMap::<&str, u64>::new();
    for i in 0..intervals {
        let half = Duration::from_secs(args.interval_s) / 2;
        let mid = async {
            tokio::time::sleep(half).await;
            (began.elapsed().as_secs_f64(), sample())
        };
        // (A rate of 0 sends nothing and returns at once.)
        let (wh, ev, (t_s, (rss, fds))) = tokio::join!(
            fixed_rate::run(webhooks.clone()),
            fixed_rate::run(events.clone()),
            mid
        );
        let mut ws = std::mem::take(&mut *tally.borrow_mut());
        ws.round_trips_us.sort_unstable();
        let (wh, ev) = (http_json(&wh), http_json(&ev));
        for (key, v) in [
            ("webhooks_sent", wh["sent"].as_u64()),
            ("webhooks_ok", wh["ok"].as_u64()),
            ("events_sent", ev["sent"].as_u64()),
            ("events_ok", ev["ok"].as_u64()),
            ("ws_opened", Some(ws.opened)),
            ("ws_closed", Some(ws.closed)),
            ("ws_round_trips", Some(ws.round_trips_us.len() as u64)),
            ("ws_other_replies", Some(ws.other_replies)),
            ("ws_errors", Some(ws.errors.values().sum())),
        ] {
            *totals.entry(key).or_default() += v.unwrap_or(0);
        }
        let line = json!({
            "i": i,
            "t_s": round3(Some(t_s)),
            "rss_kib": rss,
            "fds": fds,
            "webhooks": wh,
            "events": ev,
            "ws": {
                "opened": ws.opened,
                "closed": ws.closed,
                "round_trips": ws.round_trips_us.len(),
                "p50_ms": round3(percentile_ms(&ws.round_trips_us, 50.0)),
                "p99_ms": round3(percentile_ms(&ws.round_trips_us, 99.0)),
                "other_replies": ws.other_replies,
                "errors": ws.errors,
            },
        });
        println!("{line}");
    }

    // Close every session (bounded), let the gateway let go of them, sample it idle.
    let _ = stop_tx.send(true);
    let _ = timeout(Duration::from_secs(15), async {
        for slot in slots {
            let _ = slot.await;
        }
    })
    .await;
    let last = std::mem::take(&mut *tally.borrow_mut());
    *totals.entry("ws_closed").or_default() += last.closed;
    *totals.entry("ws_errors").or_default() += last.errors.values().sum::<u64>();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, fds) = sample();
    println!(
        "{}",
        json!({
            "end": {"t_s": round3(Some(began.elapsed().as_secs_f64())), "rss_kib": rss, "fds": fds},
            "totals": totals,
        })
    );
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak_load: {e}");
            std::process::exit(2);
        }
    };
    fixed_rate::block_on(soak(args));
}
