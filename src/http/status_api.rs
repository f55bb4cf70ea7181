//! The admin reads behind the status page that no other endpoint gives: each channel's
//! recent traffic (`GET /admin/v1/stats/history`, from the sampler of
//! `actors::stats_history`) and the eventing side at a glance
//! (`GET /admin/v1/stats/eventing`). Admin token required.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::admin::Admin;
use super::error::ApiError;
use super::openapi::ErrorResponse;
use crate::actors::stats_history::BUCKETS;
use crate::channels::rfc3339_millis;
use crate::events::subscriptions::SubscriptionService;
use crate::http::state::{AppState, InDomain};

pub fn routes(cfg: &mut web::ServiceConfig) {
    let resource =
        |path: &str| web::resource(path).default_service(web::to(super::admin::method_not_allowed));
    cfg.service(resource("/admin/v1/stats/history").route(web::get().to(history)))
        .service(resource("/admin/v1/stats/eventing").route(web::get().to(eventing)));
}

/// One channel's recent traffic on this node.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChannelTraffic {
    pub id: String,
    pub code: String,
    /// Webhook requests and websocket messages per sample, oldest first; the last
    /// sample ended at `sampled_at`. Fewer than `buckets` while the channel is new here.
    pub requests: Vec<u64>,
    /// Failed runs (script errors, timeouts, runs refused as busy) per sample, aligned
    /// with `requests`.
    pub errors: Vec<u64>,
    /// Requests since the last sample.
    pub requests_now: u64,
    /// Failed runs since the last sample.
    pub errors_now: u64,
}

/// The recent traffic of the domain's channels served here.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TrafficHistory {
    /// Milliseconds between samples (`status_sample_ms`).
    pub sample_ms: u64,
    /// Samples kept per channel, at most.
    pub buckets: usize,
    /// When the last sample was taken (RFC 3339); absent before the first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampled_at: Option<String>,
    /// By code.
    pub channels: Vec<ChannelTraffic>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    /// Only this channel (none listed when this node does not serve it).
    channel_id: Option<String>,
}

/// Each channel's requests and errors per sample over the last `buckets` samples (15
/// minutes at the default), as this node counted them.
#[utoipa::path(get, path = "/admin/v1/stats/history", tag = "operations", params(HistoryQuery),
    responses((status = 200, description = "Recent traffic by channel", body = TrafficHistory),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn history(
    _: Admin,
    domain: InDomain,
    q: web::Query<HistoryQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let h = &state.stats_history;
    let channels = h
        .channels(&domain.name, q.channel_id.as_deref())
        .into_iter()
        .map(|s| ChannelTraffic {
            id: s.id,
            code: s.code,
            requests: s.requests,
            errors: s.errors,
            requests_now: s.now.requests,
            errors_now: s.now.errors,
        })
        .collect();
    HttpResponse::Ok().json(TrafficHistory {
        sample_ms: state.config.status_sample_ms,
        buckets: BUCKETS,
        sampled_at: h.sampled_at().map(rfc3339_millis),
        channels,
    })
}

/// The webhook delivery outbox of the domain (shared by its nodes).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OutboxView {
    /// Deliveries waiting to be sent.
    pub pending: i64,
    /// Age of the oldest waiting delivery, seconds (0 when none waits).
    pub oldest_pending_age_s: f64,
    /// Events published whose delivery rows are not written yet.
    pub events_behind: i64,
}

/// Delivery attempts of this node since it started.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryCounts {
    pub delivered: u64,
    /// Failed attempts that will be tried again.
    pub retried: u64,
    /// Deliveries given up.
    pub failed: u64,
    /// Attempts under way.
    pub in_flight: u64,
}

/// The domain's webhook subscriptions by state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubscriptionCounts {
    pub total: u64,
    pub enabled: u64,
    /// Enabled, with deliveries failing (`failing_since` set).
    pub failing: u64,
    pub disabled: u64,
}

/// A subscription that needs a look: failing or disabled.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubscriptionAttention {
    pub id: String,
    pub channel_id: String,
    pub url: String,
    pub enabled: bool,
    /// Why it was disabled (disabled ones).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub disabled_reason: String,
    /// Since when its deliveries fail (RFC 3339), if they do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<String>,
}

/// The eventing side at a glance.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventingSummary {
    pub domain: String,
    /// Absent when the database did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox: Option<OutboxView>,
    pub deliveries: DeliveryCounts,
    pub subscriptions: SubscriptionCounts,
    /// Failing and disabled subscriptions, disabled first, at most 50.
    pub attention: Vec<SubscriptionAttention>,
    /// Open event websockets on this node.
    pub event_subscribers: u64,
}

/// At most this many subscriptions are listed in `attention`.
const ATTENTION: usize = 50;

/// The domain's delivery outbox (pending, oldest age), this node's delivery counters,
/// and the subscriptions that are failing or disabled.
#[utoipa::path(get, path = "/admin/v1/stats/eventing", tag = "operations",
    responses((status = 200, description = "The eventing side", body = EventingSummary),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn eventing(
    _: Admin,
    domain: InDomain,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    use std::sync::atomic::Ordering::Relaxed;
    let name = domain.name.clone();
    let outbox = state
        .db
        .run(move |c| crate::db::subscriptions::backlog(c, &name))
        .await
        .ok()
        .map(|b| OutboxView {
            pending: b.pending,
            oldest_pending_age_s: b.oldest.map_or(0.0, |t| {
                ((crate::db::now_millis() - t).max(0) as f64) / 1000.0
            }),
            events_behind: b.events_behind,
        });
    let subs = SubscriptionService::new(state.db.clone(), &domain.name)
        .list(None)
        .await?;
    let count = |f: &dyn Fn(&crate::db::models::Subscription) -> bool| {
        subs.iter().filter(|s| f(s)).count() as u64
    };
    let subscriptions = SubscriptionCounts {
        total: subs.len() as u64,
        enabled: count(&|s| s.enabled),
        failing: count(&|s| s.enabled && s.failing_since != 0),
        disabled: count(&|s| !s.enabled),
    };
    let mut needing: Vec<_> = subs
        .iter()
        .filter(|s| !s.enabled || s.failing_since != 0)
        .collect();
    needing.sort_by_key(|s| (s.enabled, s.failing_since));
    let attention = needing
        .into_iter()
        .take(ATTENTION)
        .map(|s| SubscriptionAttention {
            id: s.id.clone(),
            channel_id: s.channel_id.clone(),
            url: s.url.clone(),
            enabled: s.enabled,
            disabled_reason: s.disabled_reason.clone(),
            failing_since: (s.failing_since != 0).then(|| rfc3339_millis(s.failing_since)),
        })
        .collect();
    let ds = &domain.delivery_stats;
    Ok(HttpResponse::Ok().json(EventingSummary {
        domain: domain.name.clone(),
        outbox,
        deliveries: DeliveryCounts {
            delivered: ds.delivered.load(Relaxed),
            retried: ds.failed_attempts.load(Relaxed),
            failed: ds.gave_up.load(Relaxed),
            in_flight: ds.in_flight.load(Relaxed) as u64,
        },
        subscriptions,
        attention,
        event_subscribers: domain.events.stats.subscribers.load(Relaxed) as u64,
    }))
}
