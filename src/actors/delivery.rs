//! DeliveryWorker: sends webhook deliveries from the durable outbox.
//!
//! Each round claims due rows with a lease (a conditional update, so nodes sharing a
//! database never send the same row at once; a node that dies leaves its leases to run
//! out and another node takes the rows), sends them signed per Standard Webhooks, and
//! records every attempt. 2xx is delivered; 410 disables the subscription; anything else
//! is retried after the configured delays (with jitter, or the receiver's Retry-After
//! when longer) until they run out. A subscription failing for `disable_after` is
//! disabled and a `subscription.disabled` event is emitted.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::StreamExt;

use crate::db::models::{Delivery, DeliveryAttempt, Event, Subscription};
use crate::db::subscriptions::{self as rows, DELIVERED, FAILED, PENDING};
use crate::db::{Database, events as log, now_millis};
use crate::events::webhooks::{check_target, signature_header};

/// First bytes of a response kept with an attempt.
const RESPONSE_KEPT: usize = 4096;
/// A claimed row stays ours this long (longer than one request can take).
const LEASE_MS: i64 = 60_000;

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub retry_delays_ms: Vec<u64>,
    pub timeout: Duration,
    pub disable_after_ms: i64,
    pub concurrency: usize,
    pub poll: Duration,
    pub allow_private: bool,
    /// Which certificates https:// receivers may present (see `net::tls`).
    pub tls: Arc<rustls::ClientConfig>,
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub gave_up: AtomicU64,
    pub in_flight: AtomicUsize,
    pub latency_micros: AtomicU64,
    pub attempts: AtomicU64,
}

pub struct DeliveryWorker {
    db: Database,
    domain: String,
    config: DeliveryConfig,
    events: Option<crate::events::EventService>,
    stats: Arc<DeliveryStats>,
    client: Option<awc::Client>,
    claiming: bool,
    /// Rows claimed and not yet recorded (their leases are ours).
    claimed: std::collections::HashSet<String>,
    /// Shutting down: claim nothing more.
    draining: bool,
    logger: slog::Logger,
}

impl DeliveryWorker {
    pub fn new(
        db: Database,
        domain: &str,
        config: DeliveryConfig,
        stats: Arc<DeliveryStats>,
        logger: &slog::Logger,
    ) -> DeliveryWorker {
        DeliveryWorker {
            db,
            domain: domain.to_string(),
            config,
            events: None,
            stats,
            client: None,
            claiming: false,
            claimed: std::collections::HashSet::new(),
            draining: false,
            logger: logger.new(slog::o!("actor" => "delivery_worker")),
        }
    }

    fn claim(&mut self, ctx: &mut Context<Self>) {
        let free = self
            .config
            .concurrency
            .saturating_sub(self.stats.in_flight.load(Ordering::Relaxed));
        if self.claiming || self.draining || free == 0 {
            return;
        }
        self.claiming = true;
        let (db, domain, allow_private) = (
            self.db.clone(),
            self.domain.clone(),
            self.config.allow_private,
        );
        let work = async move {
            db.run(move |c| {
                let now = now_millis();
                let claimed = rows::claim_due(c, &domain, now, LEASE_MS, free as i64)?;
                // A batch is mostly many events for few subscriptions: look each
                // subscription up (and check its target, which resolves DNS) once.
                let mut subs: HashMap<String, (Option<Subscription>, Result<(), String>)> =
                    HashMap::new();
                let mut jobs = Vec::with_capacity(claimed.len());
                for d in claimed {
                    if !subs.contains_key(&d.subscription_id) {
                        let sub = rows::find(c, &domain, &d.subscription_id)?;
                        // Checked at send time: DNS may have changed since the subscribe.
                        let target_ok = sub
                            .as_ref()
                            .map(|s| check_target(&s.url, allow_private))
                            .unwrap_or(Ok(()));
                        subs.insert(d.subscription_id.clone(), (sub, target_ok));
                    }
                    let (sub, target_ok) = subs[&d.subscription_id].clone();
                    let event = log::find(c, &domain, d.event_id)?;
                    jobs.push((d, sub, event, target_ok));
                }
                Ok(jobs)
            })
            .await
        };
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| {
            act.claiming = false;
            match result {
                Ok(jobs) => {
                    let full = !jobs.is_empty();
                    act.claimed.extend(jobs.iter().map(|(d, ..)| d.id.clone()));
                    for job in jobs {
                        act.send(ctx, job);
                    }
                    if full {
                        // There may be more due rows: look again right away.
                        ctx.notify(Wake);
                    }
                }
                Err(e) => slog::warn!(act.logger, "claiming deliveries failed"; "error" => %e),
            }
        }));
    }

    fn send(
        &mut self,
        ctx: &mut Context<Self>,
        (delivery, sub, event, target_ok): (
            Delivery,
            Option<Subscription>,
            Option<Event>,
            Result<(), String>,
        ),
    ) {
        let attempt_no = delivery.attempts + 1;
        let (Some(sub), Some(event)) = (sub, event) else {
            // The subscription or the event is gone: nothing to deliver.
            self.finish(
                ctx,
                delivery,
                None,
                attempt_no,
                Outcome::GiveUp("subscription or event gone".into()),
                0,
                String::new(),
            );
            return;
        };
        if !sub.enabled {
            self.finish(
                ctx,
                delivery,
                Some(sub),
                attempt_no,
                Outcome::GiveUp("subscription disabled".into()),
                0,
                String::new(),
            );
            return;
        }
        if let Err(why) = target_ok {
            self.finish(
                ctx,
                delivery,
                Some(sub),
                attempt_no,
                Outcome::Retry(format!("target refused: {why}"), None),
                0,
                String::new(),
            );
            return;
        }
        let client = self.client.get_or_insert_with(|| {
            awc::Client::builder()
                .connector(awc::Connector::new().rustls_0_23(self.config.tls.clone()))
                .disable_redirects()
                .timeout(Duration::from_secs(60))
                .finish()
        });
        let body = serde_json::json!({
            "id": event.id,
            "type": event.event_type,
            "occurred_at": crate::channels::rfc3339_millis(event.occurred_at),
            "data": serde_json::from_str::<serde_json::Value>(&event.data).unwrap_or(serde_json::Value::Null),
        })
        .to_string();
        let timestamp = now_millis() / 1000;
        let signature =
            signature_header(&sub, now_millis(), &delivery.id, timestamp, body.as_bytes());
        let request = client
            .post(&sub.url)
            .timeout(self.config.timeout)
            .insert_header(("content-type", "application/json"))
            .insert_header((
                "user-agent",
                concat!("oktell-gateway/", env!("CARGO_PKG_VERSION")),
            ))
            .insert_header(("webhook-id", delivery.id.clone()))
            .insert_header(("webhook-timestamp", timestamp.to_string()))
            .insert_header(("webhook-signature", signature));
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let call = async move {
            let mut res = request.send_body(body).await.map_err(|e| e.to_string())?;
            let status = res.status().as_u16();
            let retry_after = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            // Keep the first bytes only; never buffer a huge answer.
            let mut kept = Vec::new();
            while kept.len() < RESPONSE_KEPT {
                match res.next().await {
                    Some(Ok(chunk)) => kept
                        .extend_from_slice(&chunk[..chunk.len().min(RESPONSE_KEPT - kept.len())]),
                    _ => break,
                }
            }
            Ok::<_, String>((
                status,
                retry_after,
                String::from_utf8_lossy(&kept).into_owned(),
            ))
        };
        ctx.spawn(call.into_actor(self).map(move |result, act, ctx| {
            act.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            let latency = started.elapsed();
            act.stats.attempts.fetch_add(1, Ordering::Relaxed);
            act.stats
                .latency_micros
                .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
            let ms = latency.as_millis() as i64;
            match result {
                Ok((status, _, text)) if (200..300).contains(&status) => act.finish(
                    ctx,
                    delivery,
                    Some(sub),
                    attempt_no,
                    Outcome::Delivered(status),
                    ms,
                    text,
                ),
                Ok((410, _, text)) => act.finish(
                    ctx,
                    delivery,
                    Some(sub),
                    attempt_no,
                    Outcome::Gone,
                    ms,
                    text,
                ),
                Ok((status, retry_after, text)) => act.finish(
                    ctx,
                    delivery,
                    Some(sub),
                    attempt_no,
                    Outcome::Retry(format!("answered {status}"), retry_after.map(|s| s * 1000))
                        .with_status(status),
                    ms,
                    text,
                ),
                Err(e) => act.finish(
                    ctx,
                    delivery,
                    Some(sub),
                    attempt_no,
                    Outcome::Retry(e, None),
                    ms,
                    String::new(),
                ),
            }
            act.claim(ctx);
        }));
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        ctx: &mut Context<Self>,
        delivery: Delivery,
        sub: Option<Subscription>,
        attempt_no: i32,
        outcome: Outcome,
        latency_ms: i64,
        response: String,
    ) {
        let now = now_millis();
        let (status, next, delivered_at, code, error, disable): (
            &str,
            i64,
            i64,
            i32,
            String,
            Option<String>,
        ) = match &outcome {
            Outcome::Delivered(code) => {
                (DELIVERED, now, now, i32::from(*code), String::new(), None)
            }
            Outcome::Gone => (
                FAILED,
                now,
                0,
                410,
                "410 Gone".into(),
                Some("the receiver answered 410 Gone".into()),
            ),
            Outcome::GiveUp(why) => (FAILED, now, 0, 0, why.clone(), None),
            Outcome::Retry(why, retry_after) | Outcome::RetryStatus(why, retry_after, _) => {
                let code = if let Outcome::RetryStatus(_, _, c) = &outcome {
                    i32::from(*c)
                } else {
                    0
                };
                match self.config.retry_delays_ms.get((attempt_no - 1) as usize) {
                    Some(delay) => {
                        let jittered = jitter(*delay);
                        let wait = retry_after
                            .map_or(jittered, |r| r.max(jittered))
                            .min(86_400_000);
                        (PENDING, now + wait as i64, 0, code, why.clone(), None)
                    }
                    None => (FAILED, now, 0, code, why.clone(), None),
                }
            }
        };
        match status {
            DELIVERED => self.stats.delivered.fetch_add(1, Ordering::Relaxed),
            FAILED => self.stats.gave_up.fetch_add(1, Ordering::Relaxed),
            _ => self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed),
        };
        self.claimed.remove(&delivery.id);
        let attempt = DeliveryAttempt {
            delivery_id: delivery.id.clone(),
            attempt: attempt_no,
            at: now,
            status: code,
            latency_ms,
            response,
            error,
        };
        let (db, domain, disable_after) = (
            self.db.clone(),
            self.domain.clone(),
            self.config.disable_after_ms,
        );
        let status = status.to_string();
        let events = self.events.clone();
        let logger = self.logger.clone();
        let save = async move {
            let saved = db
                .run(move |c| {
                    rows::record_attempt(c, &attempt, &status, next, delivered_at)?;
                    let Some(mut sub) = sub else { return Ok(None) };
                    let mut disabled = None;
                    if status == DELIVERED {
                        if sub.failing_since != 0 {
                            sub.failing_since = 0;
                            sub.updated_at = now;
                            rows::update(c, &sub)?;
                        }
                    } else {
                        if sub.failing_since == 0 {
                            sub.failing_since = now;
                        }
                        let reason = disable.or_else(|| {
                            (now - sub.failing_since >= disable_after)
                                .then(|| "failing for too long".to_string())
                        });
                        if let Some(reason) = reason {
                            sub.enabled = false;
                            sub.disabled_reason = reason.clone();
                            disabled = Some((sub.id.clone(), sub.url.clone(), reason));
                        }
                        sub.updated_at = now;
                        rows::update(c, &sub)?;
                    }
                    let _ = domain;
                    Ok(disabled)
                })
                .await;
            match saved {
                Ok(Some((id, url, reason))) => {
                    slog::warn!(logger, "subscription disabled"; "subscription" => &id, "reason" => &reason);
                    if let Some(events) = events {
                        let new = crate::events::EventInput {
                            event_type: "subscription.disabled".into(),
                            data: serde_json::json!({ "subscription_id": id, "url": url, "reason": reason }),
                            occurred_at: None,
                            idempotency_key: None,
                        };
                        if let Ok(v) = new.validate(None, now_millis()) {
                            let _ = events.publish(vec![v]).await;
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    slog::error!(logger, "recording a delivery attempt failed"; "error" => %e)
                }
            }
        };
        ctx.spawn(save.into_actor(self));
    }
}

enum Outcome {
    Delivered(u16),
    Gone,
    GiveUp(String),
    Retry(String, Option<u64>),
    RetryStatus(String, Option<u64>, u16),
}

impl Outcome {
    fn with_status(self, status: u16) -> Outcome {
        match self {
            Outcome::Retry(why, after) => Outcome::RetryStatus(why, after, status),
            other => other,
        }
    }
}

/// ±20% so that many retries do not land at the same instant.
fn jitter(ms: u64) -> u64 {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let unit = f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX); // 0..1
    (ms as f64 * (0.8 + 0.4 * unit)) as u64
}

impl Actor for DeliveryWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.config.poll, |act, ctx| act.claim(ctx));
        ctx.notify(Wake);
    }
}

/// New deliveries may be due: look now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake;

impl Handler<Wake> for DeliveryWorker {
    type Result = ();
    fn handle(&mut self, _: Wake, ctx: &mut Context<Self>) {
        self.claim(ctx);
    }
}

/// Gives the worker the event service (for `subscription.disabled`), after both exist.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UseEvents(pub crate::events::EventService);

impl Handler<UseEvents> for DeliveryWorker {
    type Result = ();
    fn handle(&mut self, msg: UseEvents, _: &mut Context<Self>) {
        self.events = Some(msg.0);
    }
}

/// Shutdown: stop claiming; answers the rows still in flight (their leases to give back
/// once the drain time is up).
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct Drain;

impl Handler<Drain> for DeliveryWorker {
    type Result = Vec<String>;
    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> Vec<String> {
        self.draining = true;
        self.claimed.iter().cloned().collect()
    }
}
