//! DeliveryWorker: sends webhook deliveries from the durable outbox.
//!
//! A publish stores events only; the worker writes their outbox rows (one per event and
//! matching subscription) behind the log, in bounded chunks, when its claims run low
//! (`db::subscriptions::fan_out`, advancing the domain's outbox cursor in the same
//! transaction). Each round claims due rows with a lease (a conditional update, so nodes sharing a
//! database never send the same row at once; a node that dies leaves its leases to run
//! out and another node takes the rows), sends them signed per Standard Webhooks, and
//! records every attempt. 2xx is delivered; 410 disables the subscription; anything else
//! is retried after the configured delays (with jitter, or the receiver's Retry-After
//! when longer) until they run out. A subscription failing for `disable_after` is
//! disabled and one `subscription.disabled` event is emitted. Attempts are recorded
//! (with what they do to the subscription, as targeted updates) only while the lease
//! taken at claim time is still this node's: `db::subscriptions::record_attempt`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::web::Bytes;
use futures_util::StreamExt;

use crate::db::models::{Delivery, DeliveryAttempt, Event, Subscription};
use crate::db::subscriptions::{
    self as rows, AttemptResult, DELIVERED, FAILED, PENDING, Recorded, SubscriptionChange,
};
use crate::db::{Database, Urgency, events as log, now_millis};
use crate::events::DeliveriesDue;
use crate::events::signing::signature_header;
use crate::net::targets::{CheckedResolver, check_literal};

/// First bytes of a response kept with an attempt.
const RESPONSE_KEPT: usize = 4096;
/// A claimed row stays ours at least this long.
const LEASE_MS: i64 = 60_000;
/// What a lease covers beyond the attempt itself (bounded by the delivery timeout):
/// checking the target before it and recording the attempt after it.
const LEASE_MARGIN_MS: i64 = 30_000;

/// Attempts recorded per transaction at most.
const RECORD_BATCH: usize = 64;

/// Batches of attempts recorded at once on PostgreSQL: while one commits, the next is
/// written (each costs a few round trips whatever its size). SQLite has one writer, so
/// one batch at a time there, as large as what ended meanwhile.
const RECORDERS: usize = 2;

/// While a claim that left full subscriptions out found nothing, claims are this far
/// apart (each walks the full subscriptions' due rows).
const SKIPPING_CLAIM_EVERY: Duration = Duration::from_millis(100);

/// Deliveries rows written per fan-out transaction at most (whole events, at least
/// one): on SQLite the write lock is held a few milliseconds, and publishes wait for it.
const FAN_OUT_ROWS: usize = 512;

/// Deliveries of one subscription a node holds (sending or waiting for a slot), per
/// delivery it may send to it at once.
const HELD_PER_SLOT: usize = 4;

/// How many more deliveries of a subscription a claim may take when this node holds
/// `held` of them and may send `cap` at once.
fn room(cap: usize, held: usize) -> usize {
    (HELD_PER_SLOT * cap).saturating_sub(held)
}

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
    /// Of those, at most this many to one subscription.
    pub per_subscription: usize,
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
    /// Woken while a claim ran: claim again when it ends (new rows may have come after
    /// its query).
    wake_again: bool,
    /// The last claim found nothing and nothing has changed since that could make one
    /// find something (a publish, the poll, a subscription or the node getting room):
    /// an attempt that ends does not claim again then (each claim is a round of
    /// statements).
    nothing_due: bool,
    /// When a claim that left full subscriptions out last found nothing.
    skipped_in_vain: Option<Instant>,
    /// A claim is scheduled (see `SKIPPING_CLAIM_EVERY`).
    claim_later: bool,
    /// The next claim first writes the deliveries rows of new events: the last claim
    /// found nothing, or reached the middle of the events this node last wrote rows for
    /// (`fan_mark`). Rows are written about as fast as they are sent, not as fast as
    /// events are published (a backlog stays in the log, one row per event).
    fan_out_next: bool,
    /// Claiming a first attempt of an event above this id asks for the next fan-out.
    fan_mark: i64,
    /// How long a claim holds (see `lease_ms`).
    lease_ms: i64,
    /// Rows claimed and not yet recorded (their leases are ours).
    claimed: HashSet<String>,
    /// Attempts being sent, per subscription (bounded by `per_subscription`).
    sending: HashMap<String, usize>,
    /// Claimed deliveries of subscriptions that had no free slot, in claim order.
    waiting: HashMap<String, std::collections::VecDeque<Job>>,
    /// Finished attempts waiting to be recorded; recorded a batch per transaction, the
    /// next batch as soon as the last one committed.
    to_record: Vec<Finished>,
    /// Batches being recorded now (at most `RECORDERS`, 1 on SQLite).
    recording: usize,
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
            wake_again: false,
            nothing_due: false,
            skipped_in_vain: None,
            claim_later: false,
            fan_out_next: true,
            fan_mark: 0,
            lease_ms: lease_ms(timeout),
            claimed: HashSet::new(),
            sending: HashMap::new(),
            waiting: HashMap::new(),
            to_record: Vec::new(),
            recording: 0,
            draining: false,
            logger: logger.new(slog::o!("actor" => "delivery_worker")),
        }
    }

    fn claim(&mut self, ctx: &mut Context<Self>) {
        let free = self
            .config
            .concurrency
            .saturating_sub(self.stats.in_flight.load(Ordering::Relaxed));
        if self.draining || free == 0 {
            return;
        }
        if self.claiming {
            self.wake_again = true;
            return;
        }
        // Of one subscription this node holds (sending, or leased and waiting for a
        // slot) at most `HELD_PER_SLOT` times what it may send at once: one receiver
        // cannot take a whole batch. A subscription with less room than it may send at
        // once is not read at all (so that claims stay large: each costs a round of
        // statements, whatever its size).
        let cap = self.config.per_subscription;
        let held: HashMap<String, usize> = self
            .sending
            .keys()
            .map(|id| (id.clone(), self.held(id)))
            .collect();
        let full: Vec<String> = held
            .iter()
            .filter(|(_, n)| room(cap, **n) < cap)
            .map(|(id, _)| id.clone())
            .collect();
        // Leaving full subscriptions out costs the claim query a walk over their due
        // rows (a saturated receiver's backlog): while one found nothing, the next
        // waits `SKIPPING_CLAIM_EVERY` instead of running for every publish.
        if !full.is_empty()
            && let Some(at) = self.skipped_in_vain
        {
            let since = at.elapsed();
            if since < SKIPPING_CLAIM_EVERY {
                if !self.claim_later {
                    self.claim_later = true;
                    ctx.run_later(SKIPPING_CLAIM_EVERY - since, |act, ctx| {
                        act.claim_later = false;
                        act.skipped_in_vain = None;
                        act.claim(ctx);
                    });
                }
                return;
            }
        }
        let skipping = !full.is_empty();
        let fan_out = self.fan_out_next;
        self.claiming = true;
        self.wake_again = false;
        let (db, domain, lease_ms) = (self.db.clone(), self.domain.clone(), self.lease_ms);
        let limit = free as i64;
        // Storage only: targets are checked when the delivery connects (names resolved
        // then, by the client's resolver), never while a connection is held here.
        let work = async move {
            let gate_db = db.clone();
            db.run(move |c| {
                let now = now_millis();
                let fanned = if fan_out {
                    rows::fan_out(c, &domain, FAN_OUT_ROWS, now, gate_db.write_gate())?
                } else {
                    rows::FannedOut::default()
                };
                let room = |id: &str| room(cap, held.get(id).copied().unwrap_or(0));
                let claimed = rows::claim_due(
                    c,
                    &rows::Claim {
                        domain: &domain,
                        now,
                        lease_ms,
                        limit,
                        room: &room,
                        full: &full,
                        gate: gate_db.write_gate(),
                    },
                )?;
                // A batch is mostly many events for few subscriptions: one query each.
                let mut sub_ids: Vec<&str> =
                    claimed.iter().map(|d| d.subscription_id.as_str()).collect();
                sub_ids.sort_unstable();
                sub_ids.dedup();
                let subs: HashMap<String, Subscription> = rows::find_many(c, &domain, &sub_ids)?
                    .into_iter()
                    .map(|s| (s.id.clone(), s))
                    .collect();
                let mut event_ids: Vec<i64> = claimed.iter().map(|d| d.event_id).collect();
                event_ids.sort_unstable();
                event_ids.dedup();
                // Each event's payload is rendered once, whatever the number of its
                // subscriptions.
                let payloads: HashMap<i64, Bytes> = log::find_many(c, &domain, &event_ids)?
                    .iter()
                    .map(|e| (e.id, payload(e)))
                    .collect();
                let jobs = claimed
                    .into_iter()
                    .map(|d| {
                        let sub = subs.get(&d.subscription_id).cloned();
                        let body = payloads.get(&d.event_id).cloned();
                        (d, sub, body)
                    })
                    .collect::<Vec<_>>();
                Ok((jobs, fanned))
            })
            .await
        };
        ctx.spawn(work.into_actor(self).map(move |result, act, ctx| {
            act.claiming = false;
            match result {
                Ok((jobs, fanned)) => {
                    if fanned.rows > 0 {
                        act.fan_mark = fanned.from + (fanned.to - fanned.from) / 2;
                    }
                    let reached_mark = jobs
                        .iter()
                        .any(|(d, ..)| d.attempts == 0 && d.event_id > act.fan_mark);
                    act.fan_out_next =
                        jobs.is_empty() || reached_mark || (fanned.more && fanned.rows == 0);
                    // A fan-out is wanted and this claim did not write rows first: claim
                    // again at once, writing them (else they would wait for a wake).
                    let more = !jobs.is_empty()
                        || act.wake_again
                        || fanned.more
                        || (act.fan_out_next && !fan_out);
                    act.nothing_due = !more;
                    act.skipped_in_vain = (skipping && jobs.is_empty()).then(Instant::now);
                    act.claimed.extend(jobs.iter().map(|(d, ..)| d.id.clone()));
                    for job in jobs {
                        act.start(ctx, job);
                    }
                    if more {
                        // There may be more due rows: look again right away.
                        ctx.notify(DeliveriesDue);
                    }
                }
                Err(e) => {
                    act.fan_out_next = true;
                    slog::warn!(act.logger, "claiming deliveries failed"; "error" => %e)
                }
            }
        }));
    }

    /// Sends a claimed delivery now, or once its subscription has a free slot.
    fn start(&mut self, ctx: &mut Context<Self>, job: Job) {
        let sending = self.sending.get(&job.0.subscription_id).copied();
        if sending.unwrap_or(0) >= self.config.per_subscription {
            self.waiting
                .entry(job.0.subscription_id.clone())
                .or_default()
                .push_back(job);
            return;
        }
        self.send(ctx, job);
    }

    /// Deliveries of a subscription this node holds: sending, or waiting for a slot.
    fn held(&self, subscription_id: &str) -> usize {
        self.sending.get(subscription_id).copied().unwrap_or(0)
            + self.waiting.get(subscription_id).map_or(0, |q| q.len())
    }

    /// Claims unless the last claim found nothing and nothing changed since.
    fn claim_if_due(&mut self, ctx: &mut Context<Self>) {
        if !self.nothing_due {
            self.claim(ctx);
        }
    }

    /// An attempt of this subscription ended: its slot goes to the next one waiting.
    fn sent(&mut self, ctx: &mut Context<Self>, subscription_id: &str) {
        // Did this end give the subscription (or the node) room for a claim again?
        let cap = self.config.per_subscription;
        let held = self.held(subscription_id);
        let node_was_full =
            self.stats.in_flight.load(Ordering::Relaxed) + 1 >= self.config.concurrency;
        let opens = room(cap, held) < cap && room(cap, held.saturating_sub(1)) >= cap;
        if opens || node_was_full {
            self.nothing_due = false;
            self.skipped_in_vain = None;
        }
        if let Some(n) = self.sending.get_mut(subscription_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.sending.remove(subscription_id);
            }
        }
        let next = self
            .waiting
            .get_mut(subscription_id)
            .and_then(|q| q.pop_front());
        if self
            .waiting
            .get(subscription_id)
            .is_some_and(|q| q.is_empty())
        {
            self.waiting.remove(subscription_id);
        }
        if let Some(job) = next {
            self.send(ctx, job);
        }
    }

    fn send(&mut self, ctx: &mut Context<Self>, (delivery, sub, body): Job) {
        let attempt_no = delivery.attempts + 1;
        let (Some(sub), Some(body)) = (sub, body) else {
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
        let timestamp = now_millis() / 1000;
        let signature = signature_header(&sub, now_millis(), &delivery.id, timestamp, &body);
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
        *self.sending.entry(sub.id.clone()).or_insert(0) += 1;
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
            act.sent(ctx, &delivery.subscription_id);
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
            act.claim_if_due(ctx);
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
        let change = match (&sub, &outcome) {
            (None, _) | (_, Outcome::GiveUp(_)) => SubscriptionChange::None,
            // A subscription that was not failing when claimed needs no write (should
            // an attempt recorded meanwhile have started its failure clock, the next
            // delivered claim after it stops it).
            (Some(s), Outcome::Delivered(_)) if s.failing_since == 0 => SubscriptionChange::None,
            (Some(_), Outcome::Delivered(_)) => SubscriptionChange::Healthy,
            (Some(_), Outcome::Gone) => SubscriptionChange::Gone,
            (Some(_), Outcome::Retry(..) | Outcome::RetryStatus(..)) => {
                SubscriptionChange::Failing {
                    disable_after_ms: self.config.disable_after_ms,
                }
            }
        };
        self.to_record.push(Finished {
            attempt: DeliveryAttempt {
                delivery_id: delivery.id,
                attempt: attempt_no,
                at: now,
                status: code,
                latency_ms,
                response,
                error,
            },
            subscription_id: delivery.subscription_id,
            status,
            next_attempt_at: next,
            delivered_at,
            lease_until: delivery.lease_until,
            change,
            now,
            sub,
        });
        self.record(ctx);
    }

    /// Records what finished since the last batch, in one transaction; the rows stay
    /// claimed (their leases ours) until it committed.
    fn record(&mut self, ctx: &mut Context<Self>) {
        let recorders = match self.db.backend() {
            crate::db::Backend::Postgres => RECORDERS,
            crate::db::Backend::Sqlite => 1,
        };
        if self.recording >= recorders || self.to_record.is_empty() {
            return;
        }
        self.recording += 1;
        // A bounded batch: on SQLite it holds the one write lock, and a publish (someone
        // waits for its acknowledgement) must not wait behind a long transaction.
        let batch: Vec<Finished> = if self.to_record.len() > RECORD_BATCH {
            let rest = self.to_record.split_off(RECORD_BATCH);
            std::mem::replace(&mut self.to_record, rest)
        } else {
            std::mem::take(&mut self.to_record)
        };
        let db = self.db.clone();
        let save = async move {
            let (batch, saved) = db
                .write(Urgency::Background, move |c| {
                    let rows: Vec<AttemptResult<'_>> = batch.iter().map(Finished::row).collect();
                    let saved = rows::record_attempts(c, &rows);
                    drop(rows);
                    Ok((batch, saved))
                })
                .await?;
            Ok::<_, crate::db::StoreError>((batch, saved?))
        };
        ctx.spawn(save.into_actor(self).map(|result, act, ctx| {
            act.recording -= 1;
            match result {
                Ok((batch, saved)) => {
                    for (done, recorded) in batch.into_iter().zip(saved) {
                        act.recorded(done, recorded);
                    }
                }
                Err(e) => {
                    // Not recorded: the leases run out and the rows are sent again (at
                    // least once, with the same webhook-id).
                    slog::error!(act.logger, "recording delivery attempts failed"; "error" => %e);
                }
            }
            act.record(ctx);
        }));
    }

    fn recorded(&mut self, done: Finished, recorded: Recorded) {
        self.claimed.remove(&done.attempt.delivery_id);
        let disabled = match recorded {
            Recorded::LeaseLost => {
                self.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
                slog::warn!(self.logger, "delivery lease lost before the attempt was recorded; another node owns it now";
                    "delivery" => &done.attempt.delivery_id, "attempt" => done.attempt.attempt);
                return;
            }
            Recorded::Saved { disabled } => disabled,
        };
        match done.status {
            DELIVERED => self.stats.delivered.fetch_add(1, Ordering::Relaxed),
            FAILED => self.stats.gave_up.fetch_add(1, Ordering::Relaxed),
            _ => self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed),
        };
        // Only the attempt whose conditional update disabled the subscription gets here
        // with a reason: one event per disable.
        let (Some(reason), Some(sub)) = (disabled, done.sub) else {
            return;
        };
        slog::warn!(self.logger, "subscription disabled"; "subscription" => &sub.id, "reason" => &reason);
        let Some(events) = self.events.clone() else {
            return;
        };
        let logger = self.logger.clone();
        actix::spawn(async move {
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
        });
    }
}

/// A claimed delivery with what it needs to be sent: its subscription and its event's
/// payload (None: gone since).
type Job = (Delivery, Option<Subscription>, Option<Bytes>);

/// The JSON body of an event's deliveries.
fn payload(event: &Event) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "id": event.id,
            "type": event.event_type,
            "occurred_at": crate::channels::rfc3339_millis(event.occurred_at),
            "data": serde_json::from_str::<serde_json::Value>(&event.data).unwrap_or(serde_json::Value::Null),
        })
        .to_string(),
    )
}

/// An attempt that ended, waiting to be recorded.
struct Finished {
    attempt: DeliveryAttempt,
    subscription_id: String,
    status: &'static str,
    next_attempt_at: i64,
    delivered_at: i64,
    lease_until: i64,
    change: SubscriptionChange,
    now: i64,
    /// For the `subscription.disabled` event, should this attempt disable it.
    sub: Option<Subscription>,
}

impl Finished {
    fn row(&self) -> AttemptResult<'_> {
        AttemptResult {
            attempt: &self.attempt,
            subscription_id: &self.subscription_id,
            status: self.status,
            next_attempt_at: self.next_attempt_at,
            delivered_at: self.delivered_at,
            lease_until: self.lease_until,
            change: self.change,
            now: self.now,
        }
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
        ctx.run_interval(self.config.poll, |act, ctx| {
            act.nothing_due = false;
            act.fan_out_next = true;
            act.claim(ctx);
        });
        ctx.notify(DeliveriesDue);
    }
}

impl Handler<DeliveriesDue> for DeliveryWorker {
    type Result = ();
    fn handle(&mut self, _: DeliveriesDue, ctx: &mut Context<Self>) {
        self.nothing_due = false;
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
