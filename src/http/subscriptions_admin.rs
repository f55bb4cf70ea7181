//! `/admin/v1/subscriptions`: operators look at webhook subscriptions and their
//! deliveries, re-enable a disabled one, and resend.

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::admin::Admin;
use super::error::ApiError;
use super::openapi::ErrorResponse;
use crate::channels::{ValidationError, rfc3339_millis};
use crate::db::models::Subscription;
use crate::db::{events as log, now_millis, subscriptions as rows};
use crate::events::subscriptions::SubscriptionService;
use crate::events::webhooks::SubscriptionView;
use crate::http::state::{AppState, DomainState, InDomain};

pub fn routes(cfg: &mut web::ServiceConfig) {
    let resource =
        |path: &str| web::resource(path).default_service(web::to(super::admin::method_not_allowed));
    cfg.service(resource("/admin/v1/subscriptions").route(web::get().to(list)))
        .service(resource("/admin/v1/subscriptions/{id}").route(web::get().to(get)))
        .service(resource("/admin/v1/subscriptions/{id}/enable").route(web::post().to(enable)))
        .service(resource("/admin/v1/subscriptions/{id}/recover").route(web::post().to(recover)))
        .service(
            resource("/admin/v1/subscriptions/{id}/resend/{event_id}")
                .route(web::post().to(resend)),
        );
}

async fn load(state: &AppState, domain: &DomainState, id: &str) -> Result<Subscription, ApiError> {
    Ok(SubscriptionService::new(state.db.clone(), &domain.name)
        .find(id)
        .await?)
}

fn admin_view(s: &Subscription) -> serde_json::Value {
    let mut v = serde_json::to_value(SubscriptionView::new(s, false)).unwrap_or_default();
    v["channel_id"] = s.channel_id.clone().into();
    v["failing_since"] = if s.failing_since == 0 {
        serde_json::Value::Null
    } else {
        rfc3339_millis(s.failing_since).into()
    };
    v
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this channel's subscriptions.
    channel_id: Option<String>,
}

/// Every webhook subscription of the domain.
#[utoipa::path(get, path = "/admin/v1/subscriptions", tag = "eventing channels", params(ListQuery),
    responses((status = 200, description = "Subscriptions"),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn list(
    _: Admin,
    domain: InDomain,
    q: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let subs = SubscriptionService::new(state.db.clone(), &domain.name)
        .list(q.channel_id.as_deref())
        .await?;
    let items: Vec<_> = subs.iter().map(admin_view).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "total": items.len(), "items": items })))
}

/// One subscription with its latest deliveries (newest first) and their attempts.
#[utoipa::path(get, path = "/admin/v1/subscriptions/{id}", tag = "eventing channels",
    params(("id" = String, Path, description = "Subscription id")),
    responses((status = 200, description = "The subscription and its deliveries"),
        (status = 404, description = "No such subscription", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn get(
    _: Admin,
    domain: InDomain,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let sub = load(&state, &domain, &id).await?;
    let sid = sub.id.clone();
    let deliveries = state
        .db
        .run(move |c| rows::attempts_of_subscription(c, &sid, 50))
        .await?;
    let deliveries: Vec<_> = deliveries
        .iter()
        .map(|(d, attempts)| {
            serde_json::json!({
                "id": d.id,
                "event_id": d.event_id,
                "status": d.status,
                "attempts": attempts.iter().map(|a| serde_json::json!({
                    "attempt": a.attempt,
                    "at": rfc3339_millis(a.at),
                    "status": a.status,
                    "latency_ms": a.latency_ms,
                    "response": a.response,
                    "error": a.error,
                })).collect::<Vec<_>>(),
                "next_attempt_at": (d.status == rows::PENDING).then(|| rfc3339_millis(d.next_attempt_at)),
            })
        })
        .collect();
    let mut v = admin_view(&sub);
    v["deliveries"] = deliveries.into();
    Ok(HttpResponse::Ok().json(v))
}

/// Re-enable a disabled subscription (its failure clock restarts).
#[utoipa::path(post, path = "/admin/v1/subscriptions/{id}/enable", tag = "eventing channels",
    params(("id" = String, Path, description = "Subscription id")),
    responses((status = 200, description = "Enabled"), (status = 404, description = "No such subscription", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn enable(
    _: Admin,
    domain: InDomain,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let sub = SubscriptionService::new(state.db.clone(), &domain.name)
        .enable(&id)
        .await?;
    Ok(HttpResponse::Ok().json(admin_view(&sub)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RecoverQuery {
    /// Failed deliveries of events after this id (default 0: all kept).
    since: Option<i64>,
}

/// Send the subscription's failed deliveries again (events after `since`).
#[utoipa::path(post, path = "/admin/v1/subscriptions/{id}/recover", tag = "eventing channels",
    params(("id" = String, Path, description = "Subscription id"), RecoverQuery),
    responses((status = 202, description = "Queued again"), (status = 404, description = "No such subscription", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn recover(
    _: Admin,
    domain: InDomain,
    id: web::Path<String>,
    q: web::Query<RecoverQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let sub = load(&state, &domain, &id).await?;
    let since = q.since.unwrap_or(0);
    let queued = state
        .db
        .run(move |c| rows::recover(c, &sub.id, since, now_millis()))
        .await?;
    domain.events.wake_delivery();
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "queued": queued })))
}

/// Send one stored event to the subscription again.
#[utoipa::path(post, path = "/admin/v1/subscriptions/{id}/resend/{event_id}", tag = "eventing channels",
    params(("id" = String, Path, description = "Subscription id"), ("event_id" = i64, Path, description = "Event id")),
    responses((status = 202, description = "Queued"), (status = 404, description = "No such subscription or event", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn resend(
    _: Admin,
    domain: InDomain,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (id, event) = path.into_inner();
    let event_id: i64 = event
        .parse()
        .map_err(|_| ApiError::from(ValidationError::new("event_id", "must be an event id")))?;
    let sub = load(&state, &domain, &id).await?;
    let name = domain.name.clone();
    let queued = state
        .db
        .run(move |c| {
            if log::find(c, &name, event_id)?.is_none() {
                return Ok(None);
            }
            rows::resend(c, &name, &sub.id, event_id, now_millis()).map(Some)
        })
        .await?
        .ok_or_else(|| ApiError::not_found("event_not_found", "no stored event with this id"))?;
    domain.events.wake_delivery();
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "delivery_id": queued })))
}
