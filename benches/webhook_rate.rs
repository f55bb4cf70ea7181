//! Load client of the execution history benchmark (`benches/history_run.sh`): POSTs a
//! small JSON body to a webhook URL at a fixed offered rate (open loop,
//! `shared/fixed_rate.rs`) and prints one JSON line: requests sent, answers by status,
//! errors, latency p50/p99/max from when each request was due, and how many requests
//! left late (the client itself fell behind: the offered rate was not really offered).
//!
//! Usage:
//!   webhook_rate --url http://127.0.0.1:18121/api/token/v1/<token> [--rate 10000]
//!                [--duration-s 10] [--connections 256] [--timeout-ms 5000] [--label x]
//!
//! One thread (tokio current-thread runtime).

#[path = "shared/fixed_rate.rs"]
mod fixed_rate;
// Only its percentiles: the websocket connect helpers are not used here.
#[allow(dead_code)]
#[path = "shared/ws_client.rs"]
mod ws_client;
use ws_client::percentile_ms;

use std::time::Duration;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(url) = arg(&args, "--url") else {
        eprintln!(
            "usage: webhook_rate --url http://host:port/path [--rate N] [--duration-s S] [--connections C]"
        );
        std::process::exit(2);
    };
    let num = |name: &str, default: f64| {
        arg(&args, name)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(default)
    };
    let (addr, path) = fixed_rate::split_url(&url);
    let load = fixed_rate::Load {
        addr,
        method: "POST".into(),
        path,
        headers: Vec::new(),
        body: br#"{"order":42,"items":[{"sku":"A-1","qty":2}]}"#.to_vec(),
        rate: num("--rate", 10_000.0),
        duration: Duration::from_secs_f64(num("--duration-s", 10.0)),
        connections: num("--connections", 256.0) as usize,
        timeout: Duration::from_millis(num("--timeout-ms", 5000.0) as u64),
    };
    let (rate, duration) = (load.rate, load.duration);
    let out = fixed_rate::block_on(fixed_rate::run(load));
    let ok = out.ok();
    let line = serde_json::json!({
        "label": arg(&args, "--label").unwrap_or_default(),
        "offered_rate": rate,
        "duration_s": duration.as_secs_f64(),
        "sent": out.sent,
        "ok": ok,
        "achieved_rate": ok as f64 / out.elapsed.as_secs_f64().max(1e-9),
        "statuses": out.statuses,
        "errors": out.errors,
        "late": out.late,
        "p50_ms": percentile_ms(&out.latencies_us, 50.0),
        "p99_ms": percentile_ms(&out.latencies_us, 99.0),
        "max_ms": out.latencies_us.last().map(|v| *v as f64 / 1000.0),
    });
    println!("{line}");
}
