//! DeliveryWorker: sends webhook deliveries from the durable outbox.
//!
//! Each round claims due rows with a lease (a conditional update, so nodes sharing a
//! database never send the same row at once; a node that dies leaves its leases to run
//! out and another node takes the rows), sends them signed per Standard Webhooks, and
//! records every attempt. 2xx is delivered; 410 disables the subscription; anything else
//! is retried after the configured delays (with jitter, or the receiver's Retry-After
//! when longer) until they run out. A subscription failing for `disable_after` is
//! disabled and one `subscription.disabled` event is emitted. Attempts are recorded
//! (with what they do to the subscription, as targeted updates) only while the lease
//! taken at claim time is still this node's: `db::subscriptions::record_attempt`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::StreamExt;

use crate::db::models::{Delivery, DeliveryAttempt, Event, Subscription};
use crate::db::subscriptions::{
    self as rows, AttemptResult, DELIVERED, FAILED, PENDING, Recorded, SubscriptionChange,
};
use crate::db::{Database, events as log, now_millis};
use crate::events::webhooks::signature_header;
use crate::net::targets::{CheckedResolver, check_literal};

/// First bytes of a response kept with an attempt.
const RESPONSE_KEPT: usize = 4096;
/// A claimed row stays ours at least this long.
const LEASE_MS: i64 = 60_000;
/// What a lease covers beyond the attempt itself (bounded by the delivery timeout):
/// checking the target before it and recording the attempt after it.
const LEASE_MARGIN_MS: i64 = 30_000;

/// The lease of a claimed delivery: it outlives the attempt, whatever the timeout.
fn lease_ms(timeout: Duration) -> i64 {
    let timeout = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX / 4);
    LEASE_MS.max(timeout.saturating_add(LEASE_MARGIN_MS))
}

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
    /// Attempts not recorded: the lease was no longer this node's by then.
    pub leases_lost: AtomicU64,
}

pub struct DeliveryWorker {
    db: Database,
    domain: String,
    config: DeliveryConfig,
    events: Option<crate::events::EventService>,
    stats: Arc<DeliveryStats>,
    client: Option<awc::Client>,
    claiming: bool,
    /// How long a claim holds (see `lease_ms`).
    lease_ms: i64,
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
        let timeout = config.timeout;
        DeliveryWorker {
            db,
            domain: domain.to_string(),
            config,
            events: None,
            stats,
            client: None,
            claiming: false,
            lease_ms: lease_ms(timeout),
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
        let (db, domain, lease_ms) = (self.db.clone(), self.domain.clone(), self.lease_ms);
        // Storage only: targets are checked when the delivery connects (names resolved
        // then, by the client's resolver), never while a connection is held here.
        let work = async move {
            db.run(move |c| {
                let now = now_millis();
                let claimed = rows::claim_due(c, &domain, now, lease_ms, free as i64)?;
                // A batch is mostly many events for few subscriptions: look each
                // subscription up once.
                let mut subs: HashMap<String, Option<Subscription>> = HashMap::new();
                let mut jobs = Vec::with_capacity(claimed.len());
                for d in claimed {
                    if !subs.contains_key(&d.subscription_id) {
                        let sub = rows::find(c, &domain, &d.subscription_id)?;
                        subs.insert(d.subscription_id.clone(), sub);
                    }
                    let sub = subs.get(&d.subscription_id).cloned().flatten();
                    let event = log::find(c, &domain, d.event_id)?;
                    jobs.push((d, sub, event));
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
        (delivery, sub, event): (Delivery, Option<Subscription>, Option<Event>),
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
        // An IP literal is checked here; a name is resolved and checked by the client's
        // resolver, which connects only to the addresses it checked (no rebinding).
        if let Err(why) = check_literal(&sub.url, self.config.allow_private) {
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
        // The attempt must end (timeout) and be recorded while the lease is ours; a
        // claim that took too long to get here is left for its lease to run out.
        let timeout = self.config.timeout;
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX / 4);
        if now_millis() + timeout_ms + LEASE_MARGIN_MS / 2 > delivery.lease_until {
            slog::warn!(self.logger, "delivery not sent: too little of its lease is left"; "delivery" => &delivery.id);
            self.claimed.remove(&delivery.id);
            return;
        }
        let client = self.client.get_or_insert_with(|| {
            let resolver = CheckedResolver {
                allow_private: self.config.allow_private,
                timeout: crate::net::dns::DNS_TIMEOUT,
            };
            let tcp =
                actix_tls::connect::Connector::new(actix_tls::connect::Resolver::custom(resolver))
                    .service();
            awc::Client::builder()
                .connector(
                    awc::Connector::new()
                        .connector(tcp)
                        .rustls_0_23(self.config.tls.clone()),
                )
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
            .timeout(timeout)
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
        // The whole attempt (answer and kept bytes) is bounded, so the lease outlives it.
        let call = async move {
            tokio::time::timeout(timeout, call)
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {} ms", timeout.as_millis())))
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
        let (status, next, delivered_at, code, error): (&str, i64, i64, i32, String) =
            match &outcome {
                Outcome::Delivered(code) => (DELIVERED, now, now, i32::from(*code), String::new()),
                Outcome::Gone => (FAILED, now, 0, 410, "410 Gone".into()),
                Outcome::GiveUp(why) => (FAILED, now, 0, 0, why.clone()),
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
                            (PENDING, now + wait as i64, 0, code, why.clone())
                        }
                        None => (FAILED, now, 0, code, why.clone()),
                    }
                }
            };
        self.claimed.remove(&delivery.id);
        let change = match (&sub, &outcome) {
            (None, _) | (_, Outcome::GiveUp(_)) => SubscriptionChange::None,
            (Some(_), Outcome::Delivered(_)) => SubscriptionChange::Healthy,
            (Some(_), Outcome::Gone) => SubscriptionChange::Gone,
            (Some(_), Outcome::Retry(..) | Outcome::RetryStatus(..)) => {
                SubscriptionChange::Failing {
                    disable_after_ms: self.config.disable_after_ms,
                }
            }
        };
        let attempt = DeliveryAttempt {
            delivery_id: delivery.id.clone(),
            attempt: attempt_no,
            at: now,
            status: code,
            latency_ms,
            response,
            error,
        };
        let db = self.db.clone();
        let status = status.to_string();
        let events = self.events.clone();
        let stats = self.stats.clone();
        let logger = self.logger.clone();
        let save = async move {
            let subscription_id = delivery.subscription_id.clone();
            let saved = db
                .run(move |c| {
                    rows::record_attempt(
                        c,
                        &AttemptResult {
                            attempt: &attempt,
                            subscription_id: &subscription_id,
                            status: &status,
                            next_attempt_at: next,
                            delivered_at,
                            lease_until: delivery.lease_until,
                            change,
                            now,
                        },
                    )
                    .map(|recorded| (recorded, status))
                })
                .await;
            let disabled = match saved {
                Ok((Recorded::LeaseLost, _)) => {
                    stats.leases_lost.fetch_add(1, Ordering::Relaxed);
                    slog::warn!(logger, "delivery lease lost before the attempt was recorded; another node owns it now";
                        "delivery" => &delivery.id, "attempt" => attempt_no);
                    return;
                }
                Ok((Recorded::Saved { disabled }, status)) => {
                    match status.as_str() {
                        DELIVERED => stats.delivered.fetch_add(1, Ordering::Relaxed),
                        FAILED => stats.gave_up.fetch_add(1, Ordering::Relaxed),
                        _ => stats.failed_attempts.fetch_add(1, Ordering::Relaxed),
                    };
                    disabled
                }
                Err(e) => {
                    slog::error!(logger, "recording a delivery attempt failed"; "delivery" => &delivery.id, "error" => %e);
                    return;
                }
            };
            // Only the attempt whose conditional update disabled the subscription gets
            // here with a reason: one event per disable.
            if let (Some(reason), Some(sub)) = (disabled, sub) {
                slog::warn!(logger, "subscription disabled"; "subscription" => &sub.id, "reason" => &reason);
                if let Some(events) = events {
                    let new = crate::events::EventInput {
                        event_type: "subscription.disabled".into(),
                        data: serde_json::json!({ "subscription_id": sub.id, "url": sub.url, "reason": reason }),
                        occurred_at: None,
                        idempotency_key: None,
                    };
                    if let Ok(v) = new.validate(None, now_millis())
                        && let Err(e) = events.publish(vec![v]).await
                    {
                        slog::error!(logger, "publishing subscription.disabled failed"; "subscription" => &sub.id, "error" => %e);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_outlives_the_attempt() {
        assert_eq!(lease_ms(Duration::from_secs(15)), LEASE_MS);
        assert_eq!(
            lease_ms(Duration::from_secs(120)),
            120_000 + LEASE_MARGIN_MS
        );
        assert!(lease_ms(Duration::MAX) > 0);
    }
}
