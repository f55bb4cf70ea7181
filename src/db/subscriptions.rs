//! Queries on webhook subscriptions and their outbox. All blocking.

use diesel::prelude::*;

use super::models::{Delivery, DeliveryAttempt, Subscription};
use super::schema::{channels, deliveries, delivery_attempts, subscriptions};
use super::{AnyConnection, StoreError};

pub const PENDING: &str = "pending";
pub const DELIVERED: &str = "delivered";
pub const FAILED: &str = "failed";

pub fn insert(conn: &mut AnyConnection, s: &Subscription) -> Result<(), StoreError> {
    diesel::insert_into(subscriptions::table)
        .values(s)
        .execute(conn)?;
    Ok(())
}

// Subscriptions are changed by targeted updates only, never by writing back a row read
// earlier: the API (rotation, enable) and delivery workers on every node change them
// concurrently, and a whole-row write would revert what the other did meanwhile.

/// Starts a secret rotation: the current secret becomes the previous one (valid until
/// `previous_until`), `secret` the current one. The row as it is now, if it exists.
pub fn rotate_secret(
    conn: &mut AnyConnection,
    domain: &str,
    id: &str,
    secret: &str,
    previous_until: i64,
    now: i64,
) -> Result<Option<Subscription>, StoreError> {
    conn.transaction::<_, StoreError, _>(|c| {
        diesel::update(
            subscriptions::table
                .filter(subscriptions::domain.eq(domain))
                .filter(subscriptions::id.eq(id)),
        )
        .set((
            subscriptions::previous_secret.eq(subscriptions::secret),
            subscriptions::secret.eq(secret),
            subscriptions::previous_secret_until.eq(previous_until),
            subscriptions::updated_at.eq(now),
        ))
        .execute(c)?;
        find(c, domain, id)
    })
}

/// Enables a subscription again, restarting its failure clock. The row as it is now.
pub fn enable(
    conn: &mut AnyConnection,
    domain: &str,
    id: &str,
    now: i64,
) -> Result<Option<Subscription>, StoreError> {
    conn.transaction::<_, StoreError, _>(|c| {
        diesel::update(
            subscriptions::table
                .filter(subscriptions::domain.eq(domain))
                .filter(subscriptions::id.eq(id)),
        )
        .set((
            subscriptions::enabled.eq(true),
            subscriptions::disabled_reason.eq(""),
            subscriptions::failing_since.eq(0_i64),
            subscriptions::updated_at.eq(now),
        ))
        .execute(c)?;
        find(c, domain, id)
    })
}

pub fn list_for_channel(
    conn: &mut AnyConnection,
    domain: &str,
    channel_id: &str,
) -> Result<Vec<Subscription>, StoreError> {
    Ok(subscriptions::table
        .filter(subscriptions::domain.eq(domain))
        .filter(subscriptions::channel_id.eq(channel_id))
        .order(subscriptions::created_at.asc())
        .select(Subscription::as_select())
        .load(conn)?)
}

pub fn find(
    conn: &mut AnyConnection,
    domain: &str,
    id: &str,
) -> Result<Option<Subscription>, StoreError> {
    Ok(subscriptions::table
        .filter(subscriptions::domain.eq(domain))
        .filter(subscriptions::id.eq(id))
        .select(Subscription::as_select())
        .first(conn)
        .optional()?)
}

/// Deletes a subscription with its deliveries and their attempts, in one transaction:
/// nothing of it is sent after this commits, and nothing is left that no one can read.
pub fn delete(conn: &mut AnyConnection, domain: &str, id: &str) -> Result<bool, StoreError> {
    conn.transaction::<_, StoreError, _>(|c| {
        let n = diesel::delete(
            subscriptions::table
                .filter(subscriptions::domain.eq(domain))
                .filter(subscriptions::id.eq(id)),
        )
        .execute(c)?;
        if n == 0 {
            return Ok(false);
        }
        delete_deliveries_of(c, &[id.to_string()])?;
        Ok(true)
    })
}

/// The deliveries (any status) of these subscriptions, and their attempts.
fn delete_deliveries_of(
    c: &mut AnyConnection,
    subscription_ids: &[String],
) -> Result<(), StoreError> {
    let ids: Vec<String> = deliveries::table
        .filter(deliveries::subscription_id.eq_any(subscription_ids))
        .select(deliveries::id)
        .load(c)?;
    // Bounded statements (SQLite limits bound parameters).
    for chunk in ids.chunks(500) {
        diesel::delete(
            delivery_attempts::table.filter(delivery_attempts::delivery_id.eq_any(chunk)),
        )
        .execute(c)?;
        diesel::delete(deliveries::table.filter(deliveries::id.eq_any(chunk))).execute(c)?;
    }
    Ok(())
}

/// Deletes every subscription of a channel with their deliveries and attempts (the
/// channel is being deleted; call inside its transaction). Returns how many.
pub fn delete_for_channel(
    c: &mut AnyConnection,
    domain: &str,
    channel_id: &str,
) -> Result<usize, StoreError> {
    let ids: Vec<String> = subscriptions::table
        .filter(subscriptions::domain.eq(domain))
        .filter(subscriptions::channel_id.eq(channel_id))
        .select(subscriptions::id)
        .load(c)?;
    if ids.is_empty() {
        return Ok(0);
    }
    delete_deliveries_of(c, &ids)?;
    diesel::delete(subscriptions::table.filter(subscriptions::id.eq_any(&ids))).execute(c)?;
    Ok(ids.len())
}

/// What one round of [`purge_ended`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub deliveries: usize,
    pub attempts: usize,
    /// A full batch: there may be more.
    pub more: bool,
}

/// Deletes up to `batch` deliveries of the domain that ended before `before_ms`
/// (delivered: by `delivered_at`; failed: by the time they failed, `next_attempt_at`),
/// with their attempts, in one transaction. Pending deliveries are never touched.
pub fn purge_ended(
    conn: &mut AnyConnection,
    domain: &str,
    before_ms: i64,
    batch: i64,
) -> Result<Purged, StoreError> {
    conn.transaction::<_, StoreError, _>(|c| {
        let ended = deliveries::status
            .eq(DELIVERED)
            .and(deliveries::delivered_at.lt(before_ms))
            .or(deliveries::status
                .eq(FAILED)
                .and(deliveries::next_attempt_at.lt(before_ms)));
        let ids: Vec<String> = deliveries::table
            .filter(deliveries::domain.eq(domain))
            .filter(ended)
            .select(deliveries::id)
            .limit(batch)
            .load(c)?;
        if ids.is_empty() {
            return Ok(Purged::default());
        }
        // The same condition again: a row sent again (recover, resend) meanwhile stays.
        let gone: Vec<String> = deliveries::table
            .filter(deliveries::id.eq_any(&ids))
            .filter(ended)
            .select(deliveries::id)
            .load(c)?;
        let attempts = diesel::delete(
            delivery_attempts::table.filter(delivery_attempts::delivery_id.eq_any(&gone)),
        )
        .execute(c)?;
        let deliveries_n = diesel::delete(
            deliveries::table
                .filter(deliveries::id.eq_any(&gone))
                .filter(ended),
        )
        .execute(c)?;
        Ok(Purged {
            deliveries: deliveries_n,
            attempts,
            more: ids.len() as i64 == batch,
        })
    })
}

/// Enabled subscriptions of the domain with their channel's event type patterns (for
/// writing the outbox, see [`fan_out`]).
pub fn enabled_with_channel_types(
    conn: &mut AnyConnection,
    domain: &str,
) -> Result<Vec<(Subscription, String)>, StoreError> {
    Ok(subscriptions::table
        .inner_join(channels::table.on(channels::id.eq(subscriptions::channel_id)))
        .filter(subscriptions::domain.eq(domain))
        .filter(subscriptions::enabled.eq(true))
        .filter(channels::enabled.eq(true))
        .select((Subscription::as_select(), channels::event_types))
        .load(conn)?)
}

/// What one [`fan_out`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FannedOut {
    /// Deliveries rows written.
    pub rows: usize,
    /// Events are left above the cursor: call again.
    pub more: bool,
    /// The cursor before and after (equal: not moved).
    pub from: i64,
    pub to: i64,
}

/// Writes the deliveries rows of the events above the domain's outbox cursor, oldest
/// first, about `max_rows` of them (whole events, at least one), and moves the cursor
/// past those events, in one transaction. An event goes to the subscriptions that are
/// enabled now, of an enabled channel, made before it (`after_event_id`), whose and
/// whose channel's type patterns match it.
///
/// Why the cursor is safe: event ids are allocated under the `event_logs` row lock,
/// held until the publish commits, so the events any reader sees are always a gap-free
/// prefix of the log; rows are written for events up to the log's committed head only.
/// On PostgreSQL nodes take turns at the cursor row (`FOR UPDATE SKIP LOCKED`: a node
/// that finds it taken leaves the work to the node holding it); on SQLite the writer
/// waits for this node's write turn (`gate`, as a background writer) and takes the
/// write lock first.
pub fn fan_out(
    conn: &mut AnyConnection,
    domain: &str,
    max_rows: usize,
    now: i64,
    gate: Option<&super::WriteGate>,
) -> Result<FannedOut, StoreError> {
    use super::schema::{event_logs, events, outbox_cursors};
    // Most calls find nothing to do: two point reads, no transaction, no write turn.
    let cursor = super::events::outbox_cursor(conn, domain)?;
    let head = super::events::head(conn, domain)?.map(|h| h.last_id);
    match (cursor, head) {
        (Some(cursor), Some(head)) if cursor < head => {}
        _ => return Ok(FannedOut::default()),
    }
    let _turn = gate.map(|g| g.enter(super::Urgency::Background));
    conn.transaction::<_, StoreError, _>(|c| {
        let cursor: Option<i64> = match c {
            AnyConnection::Postgresql(pg) => outbox_cursors::table
                .filter(outbox_cursors::domain.eq(domain))
                .select(outbox_cursors::last_id)
                .for_update()
                .skip_locked()
                .first::<i64>(pg)
                .optional()?,
            AnyConnection::Sqlite(_) => {
                // Write first: the write lock at once, not a read snapshot that
                // cannot be upgraded later.
                diesel::update(outbox_cursors::table.filter(outbox_cursors::domain.eq(domain)))
                    .set(outbox_cursors::last_id.eq(outbox_cursors::last_id))
                    .execute(c)?;
                super::events::outbox_cursor(c, domain)?
            }
        };
        let Some(cursor) = cursor else {
            // Another node is at it.
            return Ok(FannedOut::default());
        };
        // The committed head: every event up to it is visible to the reads below.
        let head: i64 = event_logs::table
            .filter(event_logs::domain.eq(domain))
            .select(event_logs::last_id)
            .first(c)?;
        if head <= cursor {
            return Ok(FannedOut::default());
        }
        let subscribers: Vec<(String, i64, Vec<String>, Vec<String>)> =
            enabled_with_channel_types(c, domain)?
                .into_iter()
                .filter(|(s, _)| s.after_event_id < head)
                .map(|(s, channel_types)| {
                    (
                        s.id,
                        s.after_event_id,
                        super::events::parse_types(&channel_types),
                        super::events::parse_types(&s.event_types),
                    )
                })
                .collect();
        let mut rows: Vec<Delivery> = Vec::new();
        let new_cursor = if subscribers.is_empty() {
            // No one to deliver to: nothing is owed for these events.
            head
        } else {
            let per_event = subscribers.len().max(1);
            let limit = (max_rows / per_event).clamp(1, 10_000) as i64;
            let due: Vec<(i64, String)> = events::table
                .filter(events::domain.eq(domain))
                .filter(events::id.gt(cursor))
                .filter(events::id.le(head))
                .order(events::id.asc())
                .limit(limit)
                .select((events::id, events::event_type))
                .load(c)?;
            for (id, t) in &due {
                for (sub, after, channel_types, types) in &subscribers {
                    if *id > *after
                        && crate::events::patterns::any_matches(channel_types, t)
                        && crate::events::patterns::any_matches(types, t)
                    {
                        rows.push(pending_delivery(domain, sub, *id, now));
                    }
                }
            }
            // Fewer than asked for: every event up to the head was read (those missing
            // were purged).
            match due.last() {
                Some((last, _)) if due.len() as i64 == limit => *last,
                _ => head,
            }
        };
        insert_deliveries(c, &rows)?;
        diesel::update(outbox_cursors::table.filter(outbox_cursors::domain.eq(domain)))
            .set(outbox_cursors::last_id.eq(new_cursor))
            .execute(c)?;
        Ok(FannedOut {
            rows: rows.len(),
            more: new_cursor < head,
            from: cursor,
            to: new_cursor,
        })
    })
}

/// A new outbox row: the event is due for the subscription now, first attempt.
pub fn pending_delivery(domain: &str, subscription_id: &str, event_id: i64, now: i64) -> Delivery {
    Delivery {
        id: format!("msg_{}", uuid::Uuid::now_v7().simple()),
        domain: domain.to_string(),
        subscription_id: subscription_id.to_string(),
        event_id,
        status: PENDING.to_string(),
        attempts: 0,
        next_attempt_at: now,
        lease_until: 0,
        last_status: 0,
        last_error: String::new(),
        created_at: now,
        delivered_at: 0,
    }
}

pub fn insert_deliveries(conn: &mut AnyConnection, rows: &[Delivery]) -> Result<(), StoreError> {
    for chunk in rows.chunks(super::events::INSERT_CHUNK) {
        super::insert_rows!(conn, deliveries::table, chunk)?;
    }
    Ok(())
}

/// What [`claim_due`] takes.
#[derive(Clone, Copy)]
pub struct Claim<'a> {
    pub domain: &'a str,
    pub now: i64,
    pub lease_ms: i64,
    pub limit: i64,
    /// How many more deliveries of a subscription this node may take.
    pub room: &'a dyn Fn(&str) -> usize,
    /// Subscriptions left out of the query (no room).
    pub full: &'a [String],
    /// This node's SQLite write turn (None on PostgreSQL).
    pub gate: Option<&'a super::WriteGate>,
}

/// Takes up to `limit` due deliveries of the domain for `lease_ms`: pending, due, and not
/// leased (or whose lease ran out: a node that died mid-delivery), oldest first, and of
/// each subscription no more than `room(subscription)` (one receiver cannot take the
/// whole batch; a subscription with no room is not even read). One transaction claims
/// the batch: on PostgreSQL the candidate rows are locked (`FOR UPDATE SKIP LOCKED`, so
/// nodes claiming at once take different rows); on SQLite the candidates are read
/// without the write lock, then leased by one conditional `UPDATE ... RETURNING` in
/// this node's write turn (`gate`), and only the rows it returns are ours.
pub fn claim_due(conn: &mut AnyConnection, claim: &Claim<'_>) -> Result<Vec<Delivery>, StoreError> {
    let Claim {
        domain,
        now,
        lease_ms,
        limit,
        room,
        full,
        gate,
    } = *claim;
    macro_rules! due {
        () => {
            deliveries::table
                .filter(deliveries::domain.eq(domain))
                .filter(deliveries::status.eq(PENDING))
                .filter(deliveries::next_attempt_at.le(now))
                .filter(deliveries::lease_until.lt(now))
                .filter(deliveries::subscription_id.ne_all(full))
                .order(deliveries::next_attempt_at.asc())
                .limit(limit)
                .select(Delivery::as_select())
        };
    }
    let lease_until = now + lease_ms;
    // Of the candidates, those within their subscription's room.
    let keep = |rows: Vec<Delivery>| -> Vec<Delivery> {
        let mut taken: std::collections::HashMap<String, usize> = Default::default();
        rows.into_iter()
            .filter(|d| {
                let n = taken.entry(d.subscription_id.clone()).or_insert(0);
                *n += 1;
                *n <= room(&d.subscription_id)
            })
            .collect()
    };
    let mut claimed: Vec<Delivery> = match conn {
        AnyConnection::Postgresql(c) => c.transaction::<_, StoreError, _>(|c| {
            // The outbox can grow by thousands of rows between two ANALYZEs; with stale
            // statistics the planner sorts every pending row (a bitmap scan, then a
            // sort spilling to disk: 35 ms per claim at 40,000 pending) instead of
            // reading the due index in order and stopping at `limit`. Ask for the
            // latter whatever the statistics say.
            diesel::connection::SimpleConnection::batch_execute(
                c,
                "SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off; \
                 SET LOCAL enable_sort = off",
            )?;
            let rows = keep(due!().for_update().skip_locked().load(c)?);
            let ids: Vec<&str> = rows.iter().map(|d| d.id.as_str()).collect();
            if !ids.is_empty() {
                diesel::update(deliveries::table.filter(deliveries::id.eq_any(&ids)))
                    .set(deliveries::lease_until.eq(lease_until))
                    .execute(c)?;
            }
            Ok(rows)
        })?,
        AnyConnection::Sqlite(c) => {
            // Read without the write lock (WAL readers never wait), then lease what is
            // still free in one short write: publishes are not held up by the scan.
            let rows = keep(due!().load(c)?);
            let ids: Vec<&str> = rows.iter().map(|d| d.id.as_str()).collect();
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let _turn = gate.map(|g| g.enter(super::Urgency::Background));
            let won: std::collections::HashSet<String> = diesel::update(
                deliveries::table
                    .filter(deliveries::id.eq_any(&ids))
                    .filter(deliveries::status.eq(PENDING))
                    .filter(deliveries::lease_until.lt(now)),
            )
            .set(deliveries::lease_until.eq(lease_until))
            .returning(deliveries::id)
            .get_results::<String>(c)?
            .into_iter()
            .collect();
            rows.into_iter().filter(|d| won.contains(&d.id)).collect()
        }
    };
    for d in &mut claimed {
        d.lease_until = lease_until;
    }
    Ok(claimed)
}

/// Subscriptions by id (those that exist).
pub fn find_many(
    conn: &mut AnyConnection,
    domain: &str,
    ids: &[&str],
) -> Result<Vec<Subscription>, StoreError> {
    Ok(subscriptions::table
        .filter(subscriptions::domain.eq(domain))
        .filter(subscriptions::id.eq_any(ids))
        .select(Subscription::as_select())
        .load(conn)?)
}

/// What an attempt's outcome does to its subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionChange {
    /// Nothing (e.g. the subscription was disabled, or the event is gone).
    None,
    /// Delivered: the failure clock stops, if it ran.
    Healthy,
    /// Failed: the failure clock starts, if it did not run; a subscription failing for
    /// `disable_after_ms` is disabled.
    Failing { disable_after_ms: i64 },
    /// The receiver answered 410 Gone: disabled at once.
    Gone,
}

/// What recording an attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The lease was no longer ours (it ran out and another node took the delivery, or
    /// it was given back or reset): nothing was written.
    LeaseLost,
    /// Written; `disabled` is the reason when this attempt disabled the subscription
    /// (exactly one attempt does, whatever else runs at the same time).
    Saved { disabled: Option<String> },
}

/// The new state of a delivery after an attempt.
#[derive(Debug, Clone)]
pub struct AttemptResult<'a> {
    pub attempt: &'a DeliveryAttempt,
    pub subscription_id: &'a str,
    pub status: &'a str,
    pub next_attempt_at: i64,
    pub delivered_at: i64,
    /// The lease this node took when it claimed the delivery.
    pub lease_until: i64,
    pub change: SubscriptionChange,
    pub now: i64,
}

/// Records attempts, in one transaction (a batch costs one commit and a handful of
/// statements): for each, the delivery's new state (releasing its lease) only if the
/// lease is still the one this node took, then the attempt row, then what the outcome
/// does to the subscription (targeted updates; a subscription already made healthy
/// earlier in the batch is not touched again). One answer per attempt, in order.
///
/// Delivered attempts of one claim (one lease value) and one status code are recorded
/// by one conditional update that answers which rows it changed (those whose lease was
/// still ours); the other outcomes one by one.
pub fn record_attempts(
    conn: &mut AnyConnection,
    batch: &[AttemptResult<'_>],
) -> Result<Vec<Recorded>, StoreError> {
    conn.transaction::<_, StoreError, _>(|c| {
        let mut held: Vec<Option<bool>> = vec![None; batch.len()];
        let mut groups: std::collections::BTreeMap<(i64, i32), Vec<usize>> = Default::default();
        for (i, r) in batch.iter().enumerate() {
            if r.status == DELIVERED {
                groups
                    .entry((r.lease_until, r.attempt.status))
                    .or_default()
                    .push(i);
            }
        }
        for ((lease, code), members) in groups {
            let ids: Vec<&str> = members
                .iter()
                .map(|&i| batch[i].attempt.delivery_id.as_str())
                .collect();
            let at = members
                .iter()
                .map(|&i| batch[i].delivered_at)
                .max()
                .unwrap_or(0);
            macro_rules! record_delivered {
                ($c:expr) => {
                    diesel::update(
                        deliveries::table
                            .filter(deliveries::id.eq_any(&ids))
                            .filter(deliveries::status.eq(PENDING))
                            .filter(deliveries::lease_until.eq(lease)),
                    )
                    .set((
                        deliveries::status.eq(DELIVERED),
                        deliveries::attempts.eq(deliveries::attempts + 1),
                        deliveries::next_attempt_at.eq(at),
                        deliveries::lease_until.eq(0_i64),
                        deliveries::last_status.eq(code),
                        deliveries::last_error.eq(""),
                        deliveries::delivered_at.eq(at),
                    ))
                    .returning(deliveries::id)
                    .get_results::<String>($c)?
                };
            }
            // The rows whose lease was still ours (the others: another node's now).
            let updated: std::collections::HashSet<String> = match c {
                AnyConnection::Postgresql(c) => record_delivered!(c),
                AnyConnection::Sqlite(c) => record_delivered!(c),
            }
            .into_iter()
            .collect();
            for &i in &members {
                held[i] = Some(updated.contains(&batch[i].attempt.delivery_id));
            }
        }
        for (i, r) in batch.iter().enumerate() {
            if held[i].is_some() {
                continue;
            }
            let n = diesel::update(
                deliveries::table
                    .filter(deliveries::id.eq(&r.attempt.delivery_id))
                    .filter(deliveries::status.eq(PENDING))
                    .filter(deliveries::lease_until.eq(r.lease_until)),
            )
            .set((
                deliveries::status.eq(r.status),
                deliveries::attempts.eq(r.attempt.attempt),
                deliveries::next_attempt_at.eq(r.next_attempt_at),
                deliveries::lease_until.eq(0_i64),
                deliveries::last_status.eq(r.attempt.status),
                deliveries::last_error.eq(&r.attempt.error),
                deliveries::delivered_at.eq(r.delivered_at),
            ))
            .execute(c)?;
            held[i] = Some(n == 1);
        }
        let attempts: Vec<&DeliveryAttempt> = batch
            .iter()
            .zip(&held)
            .filter(|(_, h)| **h == Some(true))
            .map(|(r, _)| r.attempt)
            .collect();
        for chunk in attempts.chunks(super::events::INSERT_CHUNK) {
            super::insert_rows!(c, delivery_attempts::table, chunk.to_vec())?;
        }
        let mut healthy: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(batch.len());
        for (r, h) in batch.iter().zip(held) {
            if h != Some(true) {
                out.push(Recorded::LeaseLost);
                continue;
            }
            let disabled = match r.change {
                SubscriptionChange::Healthy if healthy.contains(r.subscription_id) => None,
                change => {
                    if change == SubscriptionChange::Healthy {
                        healthy.insert(r.subscription_id);
                    } else if change != SubscriptionChange::None {
                        healthy.remove(r.subscription_id);
                    }
                    change_subscription(c, r.subscription_id, change, r.now)?
                }
            };
            out.push(Recorded::Saved { disabled });
        }
        Ok(out)
    })
}

fn change_subscription(
    c: &mut AnyConnection,
    id: &str,
    change: SubscriptionChange,
    now: i64,
) -> Result<Option<String>, StoreError> {
    let this = subscriptions::table.filter(subscriptions::id.eq(id));
    let disable = |c: &mut AnyConnection, reason: &str, failing_before: Option<i64>| {
        let target = this.filter(subscriptions::enabled.eq(true));
        let n = match failing_before {
            Some(before) => diesel::update(
                target
                    .filter(subscriptions::failing_since.ne(0_i64))
                    .filter(subscriptions::failing_since.le(before)),
            )
            .set((
                subscriptions::enabled.eq(false),
                subscriptions::disabled_reason.eq(reason),
                subscriptions::updated_at.eq(now),
            ))
            .execute(c)?,
            None => diesel::update(target)
                .set((
                    subscriptions::enabled.eq(false),
                    subscriptions::disabled_reason.eq(reason),
                    subscriptions::updated_at.eq(now),
                ))
                .execute(c)?,
        };
        Ok::<_, StoreError>((n == 1).then(|| reason.to_string()))
    };
    match change {
        SubscriptionChange::None => Ok(None),
        SubscriptionChange::Healthy => {
            diesel::update(this.filter(subscriptions::failing_since.ne(0_i64)))
                .set((
                    subscriptions::failing_since.eq(0_i64),
                    subscriptions::updated_at.eq(now),
                ))
                .execute(c)?;
            Ok(None)
        }
        SubscriptionChange::Failing { disable_after_ms } => {
            diesel::update(this.filter(subscriptions::failing_since.eq(0_i64)))
                .set((
                    subscriptions::failing_since.eq(now),
                    subscriptions::updated_at.eq(now),
                ))
                .execute(c)?;
            disable(c, "failing for too long", Some(now - disable_after_ms))
        }
        SubscriptionChange::Gone => {
            diesel::update(this.filter(subscriptions::failing_since.eq(0_i64)))
                .set((
                    subscriptions::failing_since.eq(now),
                    subscriptions::updated_at.eq(now),
                ))
                .execute(c)?;
            disable(c, "the receiver answered 410 Gone", None)
        }
    }
}

/// Gives back the leases this node holds (shutdown), so another node can send at once.
pub fn release_leases(conn: &mut AnyConnection, ids: &[String]) -> Result<(), StoreError> {
    for id in ids {
        diesel::update(deliveries::table.filter(deliveries::id.eq(id)))
            .set(deliveries::lease_until.eq(0_i64))
            .execute(conn)?;
    }
    Ok(())
}

pub fn attempts_of_subscription(
    conn: &mut AnyConnection,
    subscription_id: &str,
    limit: i64,
) -> Result<Vec<(Delivery, Vec<DeliveryAttempt>)>, StoreError> {
    let ds: Vec<Delivery> = deliveries::table
        .filter(deliveries::subscription_id.eq(subscription_id))
        .order(deliveries::event_id.desc())
        .limit(limit)
        .select(Delivery::as_select())
        .load(conn)?;
    let mut out = Vec::with_capacity(ds.len());
    for d in ds {
        let attempts = delivery_attempts::table
            .filter(delivery_attempts::delivery_id.eq(&d.id))
            .order(delivery_attempts::attempt.asc())
            .select(DeliveryAttempt::as_select())
            .load(conn)?;
        out.push((d, attempts));
    }
    Ok(out)
}

/// Pending deliveries of the domain and the age of the oldest (for metrics).
/// What a domain's outbox holds back: deliveries waiting, the oldest one's creation,
/// and the events published whose delivery rows are not written yet (the outbox
/// cursor's lag behind the log).
#[derive(Debug, Clone, Copy)]
pub struct OutboxBacklog {
    pub pending: i64,
    pub oldest: Option<i64>,
    pub events_behind: i64,
}

pub fn backlog(conn: &mut AnyConnection, domain: &str) -> Result<OutboxBacklog, StoreError> {
    let head = super::events::head(conn, domain)?.map_or(0, |h| h.last_id);
    let cursor = super::events::outbox_cursor(conn, domain)?.unwrap_or(head);
    let count: i64 = deliveries::table
        .filter(deliveries::domain.eq(domain))
        .filter(deliveries::status.eq(PENDING))
        .count()
        .get_result(conn)?;
    let oldest: Option<i64> = deliveries::table
        .filter(deliveries::domain.eq(domain))
        .filter(deliveries::status.eq(PENDING))
        .select(diesel::dsl::min(deliveries::created_at))
        .first(conn)?;
    Ok(OutboxBacklog {
        pending: count,
        oldest,
        events_behind: (head - cursor).max(0),
    })
}

/// Every subscription of the domain, optionally of one channel.
pub fn list_all(
    conn: &mut AnyConnection,
    domain: &str,
    channel_id: Option<&str>,
) -> Result<Vec<Subscription>, StoreError> {
    let mut q = subscriptions::table
        .filter(subscriptions::domain.eq(domain))
        .into_boxed();
    if let Some(c) = channel_id {
        q = q.filter(subscriptions::channel_id.eq(c.to_string()));
    }
    Ok(q.order(subscriptions::created_at.asc())
        .select(Subscription::as_select())
        .load(conn)?)
}

/// Failed deliveries of a subscription for events after `since` go back to pending,
/// with a fresh retry schedule. Returns how many.
pub fn recover(
    conn: &mut AnyConnection,
    subscription_id: &str,
    since_event: i64,
    now: i64,
) -> Result<usize, StoreError> {
    Ok(diesel::update(
        deliveries::table
            .filter(deliveries::subscription_id.eq(subscription_id))
            .filter(deliveries::status.eq(FAILED))
            .filter(deliveries::event_id.gt(since_event)),
    )
    .set((
        deliveries::status.eq(PENDING),
        deliveries::attempts.eq(0),
        deliveries::next_attempt_at.eq(now),
        deliveries::lease_until.eq(0_i64),
    ))
    .execute(conn)?)
}

/// Sends one event to a subscription again: its delivery row goes back to pending (same
/// webhook-id, so receivers that dedupe see the same message), or a new row is made.
pub fn resend(
    conn: &mut AnyConnection,
    domain: &str,
    subscription_id: &str,
    event_id: i64,
    now: i64,
) -> Result<String, StoreError> {
    let existing: Option<String> = deliveries::table
        .filter(deliveries::subscription_id.eq(subscription_id))
        .filter(deliveries::event_id.eq(event_id))
        .select(deliveries::id)
        .first(conn)
        .optional()?;
    if let Some(id) = existing {
        diesel::update(deliveries::table.filter(deliveries::id.eq(&id)))
            .set((
                deliveries::status.eq(PENDING),
                deliveries::attempts.eq(0),
                deliveries::next_attempt_at.eq(now),
                deliveries::lease_until.eq(0_i64),
            ))
            .execute(conn)?;
        return Ok(id);
    }
    let row = pending_delivery(domain, subscription_id, event_id, now);
    insert_deliveries(conn, std::slice::from_ref(&row))?;
    Ok(row.id)
}
