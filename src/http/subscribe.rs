//! `/api/token/v1/{token}/subscribe[/{id}[/rotate-secret]]`: webhook subscriptions of an
//! eventing channel. The token in the path is the credential.

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};

use super::error::ApiError;
use super::read_body;
use crate::channels::{KIND_EVENTING, ValidationError};
use crate::db::models::Subscription;
use crate::db::{now_millis, subscriptions as rows};
use crate::events::signing::new_secret;
use crate::events::subscriptions::{SubscriptionError, SubscriptionService};
use crate::events::webhooks::{SubscriptionInput, SubscriptionView};
use crate::http::state::AppState;

/// The old secret keeps signing beside the new one this long after a rotation.
const ROTATION_OVERLAP_MS: i64 = 24 * 60 * 60 * 1000;

fn not_found() -> ApiError {
    ApiError::not_found(
        "subscription_not_found",
        "no subscription with this id on this channel",
    )
}

pub async fn handle(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    token: &str,
    rest: &str,
) -> Result<HttpResponse, ApiError> {
    let handle = state.channel_for_token(token, KIND_EVENTING)?;
    super::channel_guards::check_peer(&handle, req, state, KIND_EVENTING)?;
    let channel_id = handle.channel.id.clone();
    let domain = handle.channel.domain.as_str();
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (req.method(), parts.as_slice()) {
        (&Method::POST, []) => create(req, payload, state, domain, channel_id).await,
        (&Method::GET, []) => list(state, domain, channel_id).await,
        (&Method::GET, [id]) => get(state, domain, channel_id, id).await,
        (&Method::DELETE, [id]) => delete(state, domain, channel_id, id).await,
        (&Method::POST, [id, "rotate-secret"]) => rotate(state, domain, channel_id, id).await,
        (_, []) => Err(ApiError::method_not_allowed("GET, POST")),
        (_, [_]) => Err(ApiError::method_not_allowed("GET, DELETE")),
        (_, [_, "rotate-secret"]) => Err(ApiError::method_not_allowed("POST")),
        _ => Err(ApiError::not_found("not_found", "no such route")),
    }
}

async fn load(
    state: &AppState,
    domain: &str,
    channel_id: &str,
    id: &str,
) -> Result<Subscription, ApiError> {
    let (domain, id) = (domain.to_string(), id.to_string());
    let found = state.db.run(move |c| rows::find(c, &domain, &id)).await?;
    found
        .filter(|s| s.channel_id == channel_id)
        .ok_or_else(not_found)
}

/// Subscribe a URL to the channel's events. The answer carries the signing secret.
#[utoipa::path(post, path = "/api/token/v1/{token}/subscribe", tag = "eventing channels", params(("token" = String, Path, description = "The eventing channel's local token")),
    request_body = SubscriptionInput,
    responses((status = 201, description = "Subscribed", body = SubscriptionView),
        (status = 400, description = "Invalid input, naming the field", body = super::openapi::ErrorResponse),
        (status = 404, description = "No eventing channel with this token here", body = super::openapi::ErrorResponse),
        (status = 409, description = "The channel has as many subscriptions as it may (`too_many_subscriptions`)", body = super::openapi::ErrorResponse)))]
async fn create(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    domain: &str,
    channel_id: String,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(req, payload, 64 * 1024).await?;
    let mut de = serde_json::Deserializer::from_slice(&body);
    let input: SubscriptionInput = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path.is_empty() || path == "." || path == "?" {
            "body".to_string()
        } else {
            path
        };
        ApiError::from(ValidationError::new(&field, e.inner().to_string()))
    })?;
    let sub = SubscriptionService::new(state.db.clone(), domain)
        .create(&channel_id, input, state.config.allow_private_targets)
        .await?;
    Ok(HttpResponse::Created().json(SubscriptionView::new(&sub, true)))
}

/// The channel's subscriptions (without secrets).
#[utoipa::path(get, path = "/api/token/v1/{token}/subscribe", tag = "eventing channels", params(("token" = String, Path, description = "The eventing channel's local token")),
    responses((status = 200, description = "Subscriptions"),
        (status = 404, description = "No eventing channel with this token here", body = super::openapi::ErrorResponse)))]
async fn list(
    state: &AppState,
    domain: &str,
    channel_id: String,
) -> Result<HttpResponse, ApiError> {
    let subs = SubscriptionService::new(state.db.clone(), domain)
        .list(Some(&channel_id))
        .await?;
    let items: Vec<SubscriptionView> = subs
        .iter()
        .map(|s| SubscriptionView::new(s, false))
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items, "total": items.len() })))
}

/// One subscription (enabled, and why not when disabled).
#[utoipa::path(get, path = "/api/token/v1/{token}/subscribe/{id}", tag = "eventing channels",
    params(("token" = String, Path, description = "The eventing channel's local token"), ("id" = String, Path, description = "Subscription id")),
    responses((status = 200, description = "The subscription", body = SubscriptionView),
        (status = 404, description = "No such subscription", body = super::openapi::ErrorResponse)))]
async fn get(
    state: &AppState,
    domain: &str,
    channel_id: String,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    let sub = load(state, domain, &channel_id, id).await?;
    Ok(HttpResponse::Ok().json(SubscriptionView::new(&sub, false)))
}

/// Unsubscribe; pending deliveries are dropped.
#[utoipa::path(delete, path = "/api/token/v1/{token}/subscribe/{id}", tag = "eventing channels",
    params(("token" = String, Path, description = "The eventing channel's local token"), ("id" = String, Path, description = "Subscription id")),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "No such subscription", body = super::openapi::ErrorResponse)))]
async fn delete(
    state: &AppState,
    domain: &str,
    channel_id: String,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    load(state, domain, &channel_id, id).await?;
    SubscriptionService::new(state.db.clone(), domain)
        .delete(id)
        .await
        .map_err(|e| match e {
            SubscriptionError::NotFound => not_found(),
            other => other.into(),
        })?;
    Ok(HttpResponse::NoContent().finish())
}

/// A new signing secret; the old one keeps signing beside it for 24 h.
#[utoipa::path(post, path = "/api/token/v1/{token}/subscribe/{id}/rotate-secret", tag = "eventing channels",
    params(("token" = String, Path, description = "The eventing channel's local token"), ("id" = String, Path, description = "Subscription id")),
    responses((status = 200, description = "Rotated; the answer carries the new secret", body = SubscriptionView),
        (status = 404, description = "No such subscription", body = super::openapi::ErrorResponse)))]
async fn rotate(
    state: &AppState,
    domain: &str,
    channel_id: String,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    load(state, domain, &channel_id, id).await?;
    let now = now_millis();
    let (domain, id, secret) = (domain.to_string(), id.to_string(), new_secret());
    let sub = state
        .db
        .run(move |c| rows::rotate_secret(c, &domain, &id, &secret, now + ROTATION_OVERLAP_MS, now))
        .await?
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(SubscriptionView::new(&sub, true)))
}
