//! Local webhook receiver of the webhook delivery benchmark (`benches/webhooks_run.sh`).
//!
//! An actix-web server (1 worker, loopback) that answers `204 No Content` to every POST
//! (any path) at once and keeps, per delivery:
//!
//! - the count, and the distinct `webhook-id` header values (a repeated id is a duplicate
//!   delivery of the same outbox row),
//! - the distinct event ids (`id` of the body) and publisher sequence numbers (`data.i`),
//! - the time between the event's `data.sent_ms` (unix ms, put there by the publisher just
//!   before its POST to the gateway) and the arrival here (unix time, this machine's clock:
//!   the publisher runs on the same machine),
//! - whether the Standard Webhooks headers are there and, once the subscription's secret
//!   was given with `PUT /secret`, whether `webhook-signature` verifies
//!   (`v1,` base64 HMAC-SHA256 of `id.timestamp.body`, the key being the base64 after
//!   `whsec_`). Checked independently of the gateway's own code.
//!
//! Other routes:
//!
//! - `GET /stats`: `{received, distinct_ids, p50_ms, p99_ms, first_at_ms, last_at_ms, ...}`
//!   (`first_at_ms` / `last_at_ms`: unix ms of the first / last delivery; null before any),
//! - `GET /count`: `{received, distinct_ids, last_at_ms}` only, cheap to poll,
//! - `DELETE /stats`: forget everything (after the probe delivery),
//! - `PUT /secret`: the subscription's `whsec_...` secret as the body,
//! - `PUT /secret/{name}`: the secret of the subscription delivering to `/hook/{name}`
//!   (several subscriptions to one receiver; `/stats` then also has `per_hook`: for each
//!   path, deliveries and e2e p50/p99, to see whether they were served fairly).
//!
//! Usage: `webhook_sink --listen 127.0.0.1:18111`

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::Method;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

#[derive(Default)]
struct Stats {
    received: u64,
    ids: HashSet<String>,
    event_ids: HashSet<i64>,
    seqs: HashSet<i64>,
    /// Arrival - data.sent_ms, in µs, per delivery that carried sent_ms.
    latencies_us: Vec<i64>,
    first_at_us: Option<i64>,
    last_at_us: Option<i64>,
    missing_headers: u64,
    bad_body: u64,
    signature_checked: u64,
    bad_signature: u64,
    /// Deliveries whose webhook-timestamp is more than 5 minutes off (the spec's tolerance).
    stale_timestamp: u64,
    /// Deliveries of event ids lower than one already received (concurrent sends reorder).
    out_of_order: u64,
    max_event_id: i64,
    /// Per delivery path: e2e latencies (µs).
    per_hook: std::collections::HashMap<String, Vec<i64>>,
}

struct Sink {
    stats: Mutex<Stats>,
    key: Mutex<Option<Vec<u8>>>,
    /// Secrets per `/hook/{name}` path.
    keys: Mutex<std::collections::HashMap<String, Vec<u8>>>,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn signature_ok(key: &[u8], id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    header
        .split_whitespace()
        .any(|sig| sig.strip_prefix("v1,") == Some(expected.as_str()))
}

fn percentile_ms(sorted_us: &[i64], p: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted_us.len()) - 1;
    Some(sorted_us[idx] as f64 / 1000.0)
}

async fn delivery(req: HttpRequest, body: web::Bytes, sink: web::Data<Sink>) -> HttpResponse {
    let at = now_us();
    let id = header(&req, "webhook-id");
    let timestamp = header(&req, "webhook-timestamp");
    let signature = header(&req, "webhook-signature");
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let path = req.path().to_string();
    let key = match path.strip_prefix("/hook/") {
        Some(name) => sink.keys.lock().unwrap().get(name).cloned(),
        None => None,
    }
    .or_else(|| sink.key.lock().unwrap().clone());
    let signature_verdict = match (&key, id, timestamp, signature) {
        (Some(key), Some(id), Some(ts), Some(sig)) => Some(signature_ok(key, id, ts, &body, sig)),
        _ => None,
    };
    let mut st = sink.stats.lock().unwrap();
    st.received += 1;
    st.first_at_us.get_or_insert(at);
    st.last_at_us = Some(at);
    match (id, timestamp, signature) {
        (Some(id), Some(ts), Some(_)) => {
            st.ids.insert(id.to_string());
            let stale = ts
                .parse::<i64>()
                .map(|ts| (at / 1_000_000 - ts).abs() > 300)
                .unwrap_or(true);
            if stale {
                st.stale_timestamp += 1;
            }
        }
        _ => st.missing_headers += 1,
    }
    if let Some(ok) = signature_verdict {
        st.signature_checked += 1;
        if !ok {
            st.bad_signature += 1;
        }
    }
    let event_id = parsed
        .as_ref()
        .and_then(|v| v.get("id"))
        .and_then(Value::as_i64);
    let data = parsed.as_ref().and_then(|v| v.get("data"));
    let sent_ms = data.and_then(|d| d.get("sent_ms")).and_then(Value::as_f64);
    let seq = data.and_then(|d| d.get("i")).and_then(Value::as_i64);
    match (event_id, sent_ms) {
        (Some(eid), Some(sent_ms)) => {
            st.event_ids.insert(eid);
            if eid < st.max_event_id {
                st.out_of_order += 1;
            }
            st.max_event_id = st.max_event_id.max(eid);
            if let Some(seq) = seq {
                st.seqs.insert(seq);
            }
            let latency = at - (sent_ms * 1000.0) as i64;
            st.latencies_us.push(latency);
            st.per_hook.entry(path).or_default().push(latency);
        }
        _ => st.bad_body += 1,
    }
    HttpResponse::NoContent().finish()
}

async fn stats(sink: web::Data<Sink>) -> HttpResponse {
    let st = sink.stats.lock().unwrap();
    let mut lat = st.latencies_us.clone();
    let snapshot = json!({
        "received": st.received,
        "distinct_ids": st.ids.len(),
        "distinct_event_ids": st.event_ids.len(),
        "distinct_seqs": st.seqs.len(),
        "first_at_ms": st.first_at_us.map(|u| u as f64 / 1000.0),
        "last_at_ms": st.last_at_us.map(|u| u as f64 / 1000.0),
        "missing_headers": st.missing_headers,
        "bad_body": st.bad_body,
        "signature_checked": st.signature_checked,
        "bad_signature": st.bad_signature,
        "stale_timestamp": st.stale_timestamp,
        "out_of_order": st.out_of_order,
    });
    let per_hook: serde_json::Map<String, Value> = st
        .per_hook
        .iter()
        .map(|(path, lat)| {
            let mut lat = lat.clone();
            lat.sort_unstable();
            (
                path.clone(),
                json!({"received": lat.len(), "p50_ms": percentile_ms(&lat, 50.0), "p99_ms": percentile_ms(&lat, 99.0)}),
            )
        })
        .collect();
    drop(st);
    lat.sort_unstable();
    let mut snapshot = snapshot;
    let extra = json!({
        "latency_samples": lat.len(),
        "p50_ms": percentile_ms(&lat, 50.0),
        "p90_ms": percentile_ms(&lat, 90.0),
        "p99_ms": percentile_ms(&lat, 99.0),
        "max_ms": lat.last().map(|&u| u as f64 / 1000.0),
        "min_ms": lat.first().map(|&u| u as f64 / 1000.0),
        "per_hook": per_hook,
    });
    if let (Some(a), Some(b)) = (snapshot.as_object_mut(), extra.as_object()) {
        a.extend(b.clone());
    }
    HttpResponse::Ok().json(snapshot)
}

/// The counts only (cheap to poll while a run goes on).
async fn count(sink: web::Data<Sink>) -> HttpResponse {
    let st = sink.stats.lock().unwrap();
    HttpResponse::Ok().json(json!({
        "received": st.received,
        "distinct_ids": st.ids.len(),
        "last_at_ms": st.last_at_us.map(|u| u as f64 / 1000.0),
    }))
}

async fn reset(sink: web::Data<Sink>) -> HttpResponse {
    *sink.stats.lock().unwrap() = Stats::default();
    HttpResponse::NoContent().finish()
}

/// The key of a `whsec_...` secret; Err: why it is not one.
fn decode_secret(body: &[u8]) -> Result<Vec<u8>, String> {
    let text = String::from_utf8_lossy(body).trim().to_string();
    let encoded = text.strip_prefix("whsec_").unwrap_or(&text);
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("not base64 after whsec_: {e}\n"))
}

async fn set_secret(body: web::Bytes, sink: web::Data<Sink>) -> HttpResponse {
    match decode_secret(&body) {
        Ok(key) => {
            *sink.key.lock().unwrap() = Some(key);
            HttpResponse::NoContent().finish()
        }
        Err(why) => HttpResponse::BadRequest().body(why),
    }
}

async fn set_hook_secret(
    name: web::Path<String>,
    body: web::Bytes,
    sink: web::Data<Sink>,
) -> HttpResponse {
    match decode_secret(&body) {
        Ok(key) => {
            sink.keys.lock().unwrap().insert(name.into_inner(), key);
            HttpResponse::NoContent().finish()
        }
        Err(why) => HttpResponse::BadRequest().body(why),
    }
}

async fn other(req: HttpRequest, body: web::Bytes, sink: web::Data<Sink>) -> HttpResponse {
    if req.method() == Method::POST {
        delivery(req, body, sink).await
    } else {
        HttpResponse::MethodNotAllowed().finish()
    }
}

fn main() -> std::io::Result<()> {
    let mut listen = "127.0.0.1:18111".to_string();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            // `cargo bench` passes `--bench` to harness=false targets: ignore it.
            "--bench" => {}
            "--listen" => listen = it.next().expect("--listen needs a value"),
            other => {
                eprintln!("webhook_sink: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let sink = web::Data::new(Sink {
        stats: Mutex::new(Stats::default()),
        key: Mutex::new(None),
        keys: Mutex::new(std::collections::HashMap::new()),
    });
    actix_web::rt::System::new().block_on(async move {
        eprintln!("webhook_sink listening on {listen}");
        HttpServer::new(move || {
            App::new()
                .app_data(sink.clone())
                .app_data(web::PayloadConfig::new(1 << 20))
                .route("/stats", web::get().to(stats))
                .route("/stats", web::delete().to(reset))
                .route("/count", web::get().to(count))
                .route("/secret", web::put().to(set_secret))
                .route("/secret/{name}", web::put().to(set_hook_secret))
                .default_service(web::to(other))
        })
        .workers(1)
        .backlog(1024)
        .bind(&listen)?
        .run()
        .await
    })
}
