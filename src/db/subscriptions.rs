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

pub fn update(conn: &mut AnyConnection, s: &Subscription) -> Result<(), StoreError> {
    diesel::update(subscriptions::table.filter(subscriptions::id.eq(&s.id)))
        .set(s)
        .execute(conn)?;
    Ok(())
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

pub fn delete(conn: &mut AnyConnection, domain: &str, id: &str) -> Result<bool, StoreError> {
    let n = diesel::delete(
        subscriptions::table
            .filter(subscriptions::domain.eq(domain))
            .filter(subscriptions::id.eq(id)),
    )
    .execute(conn)?;
    diesel::delete(
        deliveries::table
            .filter(deliveries::subscription_id.eq(id))
            .filter(deliveries::status.eq(PENDING)),
    )
    .execute(conn)?;
    Ok(n == 1)
}

/// Enabled subscriptions of the domain with their channel's event type patterns (for
/// writing the outbox in an event's transaction).
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

pub fn insert_deliveries(conn: &mut AnyConnection, rows: &[Delivery]) -> Result<(), StoreError> {
    for row in rows {
        diesel::insert_into(deliveries::table)
            .values(row)
            .execute(conn)?;
    }
    Ok(())
}

/// Takes up to `limit` due deliveries of the domain for `lease_ms`: pending, due, and not
/// leased (or whose lease ran out: a node that died mid-delivery). Each row is claimed by
/// a conditional update, so two nodes never send the same one at once.
pub fn claim_due(
    conn: &mut AnyConnection,
    domain: &str,
    now: i64,
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<Delivery>, StoreError> {
    let candidates: Vec<Delivery> = deliveries::table
        .filter(deliveries::domain.eq(domain))
        .filter(deliveries::status.eq(PENDING))
        .filter(deliveries::next_attempt_at.le(now))
        .filter(deliveries::lease_until.lt(now))
        .order(deliveries::next_attempt_at.asc())
        .limit(limit)
        .select(Delivery::as_select())
        .load(conn)?;
    let mut claimed = Vec::with_capacity(candidates.len());
    for mut d in candidates {
        let n = diesel::update(
            deliveries::table
                .filter(deliveries::id.eq(&d.id))
                .filter(deliveries::status.eq(PENDING))
                .filter(deliveries::lease_until.lt(now)),
        )
        .set(deliveries::lease_until.eq(now + lease_ms))
        .execute(conn)?;
        // Won: the row is as read (the update only matched it unchanged), now leased.
        if n == 1 {
            d.lease_until = now + lease_ms;
            claimed.push(d);
        }
    }
    Ok(claimed)
}

/// Records an attempt and the delivery's new state, releasing its lease.
pub fn record_attempt(
    conn: &mut AnyConnection,
    attempt: &DeliveryAttempt,
    status: &str,
    next_attempt_at: i64,
    delivered_at: i64,
) -> Result<(), StoreError> {
    conn.transaction::<_, StoreError, _>(|c| {
        diesel::insert_into(delivery_attempts::table)
            .values(attempt)
            .execute(c)?;
        diesel::update(deliveries::table.filter(deliveries::id.eq(&attempt.delivery_id)))
            .set((
                deliveries::status.eq(status),
                deliveries::attempts.eq(attempt.attempt),
                deliveries::next_attempt_at.eq(next_attempt_at),
                deliveries::lease_until.eq(0_i64),
                deliveries::last_status.eq(attempt.status),
                deliveries::last_error.eq(&attempt.error),
                deliveries::delivered_at.eq(delivered_at),
            ))
            .execute(c)?;
        Ok(())
    })
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
pub fn backlog(conn: &mut AnyConnection, domain: &str) -> Result<(i64, Option<i64>), StoreError> {
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
    Ok((count, oldest))
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
    let row = Delivery {
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
    };
    insert_deliveries(conn, std::slice::from_ref(&row))?;
    Ok(row.id)
}
