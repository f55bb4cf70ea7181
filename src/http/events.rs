//! `/admin/v1/events`: publish events into the domain's log, and read it.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::admin::Admin;
use super::error::ApiError;
use super::openapi::ErrorResponse;
use super::read_body;
use crate::channels::ValidationError;
use crate::db::now_millis;
use crate::events::{EventInput, EventView, MAX_BATCH};
use crate::http::state::{AppState, InDomain};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/admin/v1/events")
            .route(web::post().to(publish))
            .route(web::get().to(list))
            .default_service(web::to(super::admin::method_not_allowed)),
    );
}

/// Either one event or `{"events": [...]}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum PublishBody {
    Batch { events: Vec<EventInput> },
    One(EventInput),
}

/// Publish one event, or a batch as `{"events": [...]}`. Acknowledged only once stored.
/// An `Idempotency-Key` header (one event) or `idempotency_key` field dedupes for 24 h:
/// the stored event comes back (200 instead of 201).
#[utoipa::path(post, path = "/admin/v1/events", tag = "events",
    params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[\t -~]*[!-~][\t -~]*$", max_length = 256, description = "Dedupes one event for 24 h: visible ASCII (spaces around it are not part of it)")),
    request_body = EventInput,
    responses((status = 201, description = "Stored", body = EventView),
        (status = 200, description = "Already stored under this idempotency key", body = EventView),
        (status = 400, description = "Invalid input, naming the field", body = ErrorResponse),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn publish(
    _: Admin,
    domain: InDomain,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, state.config.admin_max_body_bytes).await?;
    let parsed: PublishBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::from(ValidationError::new(
            "body",
            format!("an event {{\"type\", \"data\"}} or {{\"events\": [...]}} is expected: {e}"),
        ))
    })?;
    let header_key = req
        .headers()
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_string))
        .transpose()
        .map_err(|_| ApiError::from(ValidationError::new("Idempotency-Key", "must be text")))?;
    // Checked even when the body's key wins: a bad header is refused, not ignored.
    if let Some(key) = &header_key {
        crate::events::validate_idempotency_key("Idempotency-Key", key)?;
    }
    let now = now_millis();
    let (inputs, single) = match parsed {
        PublishBody::One(mut one) => {
            if one.idempotency_key.is_none() {
                one.idempotency_key = header_key;
            }
            (vec![one], true)
        }
        PublishBody::Batch { events } => {
            if header_key.is_some() {
                return Err(ValidationError::new(
                    "Idempotency-Key",
                    "applies to one event; give each event of a batch its own idempotency_key",
                )
                .into());
            }
            if events.is_empty() || events.len() > MAX_BATCH {
                return Err(ValidationError::new(
                    "events",
                    format!("must hold 1 to {MAX_BATCH} events"),
                )
                .into());
            }
            (events, false)
        }
    };
    let new = inputs
        .into_iter()
        .enumerate()
        .map(|(i, e)| e.validate((!single).then_some(i), now))
        .collect::<Result<Vec<_>, _>>()?;
    let stored = domain.events.publish(new).await?;
    if single {
        let Some((event, duplicate)) = stored.first() else {
            return Err(ApiError::internal("no event was stored"));
        };
        let status = if *duplicate {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        return Ok(HttpResponse::build(status).json(EventView::from(event)));
    }
    let duplicates = stored.iter().filter(|(_, d)| *d).count();
    let views: Vec<EventView> = stored.iter().map(|(e, _)| EventView::from(e)).collect();
    Ok(HttpResponse::Created()
        .json(serde_json::json!({ "events": views, "duplicates": duplicates })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Events with an id above this one (default 0: from the oldest kept).
    after: Option<i64>,
    /// At most this many (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Read the log, oldest first, with its epoch and last id.
#[utoipa::path(get, path = "/admin/v1/events", tag = "events", params(ListQuery),
    responses((status = 200, description = "Events after the given id"),
        (status = 400, description = "Invalid query", body = ErrorResponse),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn list(
    _: Admin,
    domain: InDomain,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ValidationError::new("limit", "must be between 1 and 1000").into());
    }
    let after = query.after.unwrap_or(0).max(0);
    let (events, head) = domain.events.list_after(after, limit).await?;
    let views: Vec<EventView> = events.iter().map(EventView::from).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "items": views,
        "epoch": head.as_ref().map(|h| h.epoch.clone()),
        "last_id": head.map(|h| h.last_id).unwrap_or(0),
    })))
}
