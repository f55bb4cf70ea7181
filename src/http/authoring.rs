//! Scenario authoring (issue #13): dry runs of a channel's script (saved or draft) and
//! the versions of its scripts, with restore. Admin token required.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::admin::Admin;
use super::error::ApiError;
use super::openapi::ErrorResponse;
use super::read_body;
use crate::channels::{ChannelView, DryRunInput, ValidationError, rfc3339_millis};
use crate::db::models::ChannelVersion;
use crate::http::state::{AppState, InDomain};
use crate::scenario::dry_run::Report;

pub fn routes(cfg: &mut web::ServiceConfig) {
    let resource =
        |path: &str| web::resource(path).default_service(web::to(super::admin::method_not_allowed));
    cfg.service(resource("/admin/v1/channels/{id}/dry-run").route(web::post().to(dry_run)))
        .service(resource("/admin/v1/channels/{id}/versions").route(web::get().to(versions)))
        .service(resource("/admin/v1/channels/{id}/versions/{v}").route(web::get().to(version)))
        .service(
            resource("/admin/v1/channels/{id}/versions/{v}/restore").route(web::post().to(restore)),
        );
}

/// Run the channel's webhook script on a sample request (or its websocket script on a
/// sample message), saved or as a draft, in the same sandbox and limits as real runs.
/// Outgoing calls, websocket pushes and closes, and events are recorded, not performed,
/// unless `live`; mocks answer matching outgoing calls. A script that fails (a draft
/// that does not compile included) is a 200 report with `ok: false` and the error's
/// line and column.
#[utoipa::path(post, path = "/admin/v1/channels/{id}/dry-run", tag = "authoring",
    params(("id" = String, Path, description = "Channel id")),
    request_body(content = Option<DryRunInput>, description = "Optional: without it, an empty POST to the saved script"),
    responses((status = 200, description = "What the run did", body = Report),
        (status = 400, description = "Invalid input, naming the field", body = ErrorResponse),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such channel", body = ErrorResponse),
        (status = 503, description = "The node is busy (Retry-After)", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn dry_run(
    _: Admin,
    domain: InDomain,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, state.config.admin_max_body_bytes).await?;
    let host = req.connection_info().host().to_string();
    let (sample, draft, live, mocks) =
        DryRunInput::from_json(&body)?.checked(&host, req.app_config().secure())?;
    let report = domain
        .channels
        .dry_run(&id, sample, draft, live, mocks)
        .await?;
    slog::info!(state.logger, "dry run"; "id" => id.as_str(), "live" => report.live, "ok" => report.ok);
    Ok(HttpResponse::Ok().json(report))
}

/// One kept version of a channel's scripts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VersionView {
    pub version: i64,
    pub saved_at: String,
    pub note: String,
    /// The version the channel runs now.
    pub current: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_scenario: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket_scenario: Option<String>,
}

/// A channel's kept versions, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VersionPage {
    pub items: Vec<VersionView>,
    pub total: usize,
    /// How many versions a channel keeps (`channel_versions_kept`).
    pub kept: usize,
}

fn version_view(v: ChannelVersion, current: i64, scripts: bool) -> VersionView {
    let (webhook_scenario, websocket_scenario) = if scripts {
        (Some(v.webhook_scenario), Some(v.websocket_scenario))
    } else {
        (None, None)
    };
    VersionView {
        version: v.version,
        saved_at: rfc3339_millis(v.saved_at),
        note: v.note,
        current: v.version == current,
        webhook_scenario,
        websocket_scenario,
    }
}

fn version_number(raw: &str) -> Result<i64, ValidationError> {
    raw.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ValidationError::new("version", "must be a positive whole number"))
}

/// The kept versions of a channel's scripts (without the scripts), newest first. Every
/// save (create, update, restore) makes one.
#[utoipa::path(get, path = "/admin/v1/channels/{id}/versions", tag = "authoring",
    params(("id" = String, Path, description = "Channel id")),
    responses((status = 200, description = "The versions", body = VersionPage),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such channel", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn versions(
    _: Admin,
    domain: InDomain,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let channel = domain.channels.get(&id).await?;
    let items: Vec<VersionView> = domain
        .channels
        .versions(&id)
        .await?
        .into_iter()
        .map(|v| version_view(v, channel.version, false))
        .collect();
    Ok(HttpResponse::Ok().json(VersionPage {
        total: items.len(),
        items,
        kept: state.config.channel_versions_kept,
    }))
}

/// One kept version, with its scripts.
#[utoipa::path(get, path = "/admin/v1/channels/{id}/versions/{v}", tag = "authoring",
    params(("id" = String, Path, description = "Channel id"), ("v" = i64, Path, minimum = 1, description = "Version")),
    responses((status = 200, description = "The version", body = VersionView),
        (status = 400, description = "Invalid input, naming the field", body = ErrorResponse),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such channel or version", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn version(
    _: Admin,
    domain: InDomain,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, v) = path.into_inner();
    let v = version_number(&v)?;
    let channel = domain.channels.get(&id).await?;
    let found = domain.channels.version(&id, v).await?;
    Ok(HttpResponse::Ok().json(version_view(found, channel.version, true)))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreInput {
    /// Kept with the new version; default "restored from version N".
    #[schema(pattern = r"^[^\u0000]*$", max_length = 4096)]
    pub note: Option<String>,
}

/// Save a new version whose scripts are those of version `v` (the other settings stay
/// as they are). Applied live on every node, like any update.
#[utoipa::path(post, path = "/admin/v1/channels/{id}/versions/{v}/restore", tag = "authoring",
    params(("id" = String, Path, description = "Channel id"), ("v" = i64, Path, minimum = 1, description = "Version")),
    request_body(content = Option<RestoreInput>, description = "Optional"),
    responses((status = 200, description = "The channel, at its new version", body = ChannelView),
        (status = 400, description = "Invalid input, naming the field", body = ErrorResponse),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such channel or version", body = ErrorResponse),
        (status = 409, description = "Changed concurrently", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn restore(
    _: Admin,
    domain: InDomain,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (id, v) = path.into_inner();
    let v = version_number(&v)?;
    let body = read_body(&req, payload, state.config.admin_max_body_bytes).await?;
    let input: RestoreInput = super::optional_json(&body)?;
    let channel = domain.channels.restore(&id, v, input.note).await?;
    slog::info!(state.logger, "channel restored"; "channel" => &channel.code, "id" => &channel.id, "from_version" => v, "version" => channel.version);
    Ok(HttpResponse::Ok().json(super::admin::view(&state, &channel, false)))
}
