//! `/admin/v1`: channel management, for operators and Oktell Studio. Every route needs
//! `Authorization: Bearer <admin token>`.

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::error::ApiError;
use super::openapi::{ChannelPage, ErrorResponse, SessionPage};
use super::read_body;
use crate::actors::handle::InjectPanic;
use crate::channels::{ChannelInput, ChannelView, KIND_EVENTING, KIND_PUBLIC};
use crate::db::channels::ChannelFilter;
use crate::http::state::{AppState, DomainState, InDomain};

pub fn routes(cfg: &mut web::ServiceConfig) {
    // Each path is a resource, so that a wrong method is a 405 rather than a 404.
    let resource = |path: &str| web::resource(path).default_service(web::to(method_not_allowed));
    cfg.service(
        web::scope("/admin/v1")
            .service(
                resource("/channels")
                    .route(web::post().to(create_channel))
                    .route(web::get().to(list_channels)),
            )
            .service(
                resource("/channels/{id}")
                    .route(web::get().to(get_channel))
                    .route(web::patch().to(update_channel))
                    .route(web::delete().to(delete_channel)),
            )
            // A test hook, not in /openapi.json: its `Allow` is spelled out.
            .service(
                web::resource("/channels/{id}/fault/panic")
                    .route(web::post().to(inject_panic))
                    .default_service(only("POST")),
            )
            .service(resource("/channels/{id}/sessions").route(web::get().to(list_sessions)))
            .service(resource("/node").route(web::get().to(node)))
            .service(resource("/nodes").route(web::get().to(nodes)))
            .service(
                resource("/channels/{id}/sessions/{code}/messages")
                    .route(web::post().to(push_to_session)),
            )
            .service(
                resource("/channels/{id}/sessions/{code}").route(web::delete().to(close_session)),
            ),
    );
}

/// The default service of every resource: 405 with `Allow` listing the path's methods
/// as `/openapi.json` documents them (one source of truth: a route added with its
/// annotation gets a right `Allow` without more code).
pub(crate) async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let allow = req
        .match_pattern()
        .and_then(|pattern| super::openapi::allowed_methods(&pattern))
        .unwrap_or_default();
    Err(ApiError::method_not_allowed(allow))
}

/// The default service of a path `/openapi.json` does not document (a page, a test
/// hook): 405 with `Allow: {allow}`.
pub(crate) fn only(allow: &'static str) -> actix_web::Route {
    web::to(move || async move { Err::<HttpResponse, _>(ApiError::method_not_allowed(allow)) })
}

/// Proof that the request carries the admin token (compared in constant time).
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Admin, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(if carries_admin_token(req) {
            Ok(Admin)
        } else {
            Err(ApiError::unauthorized())
        })
    }
}

/// Whether `Authorization: Bearer` holds the node's admin token (compared in constant
/// time: timing tells nothing about where the bytes differ).
pub fn carries_admin_token(req: &HttpRequest) -> bool {
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        return false;
    };
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(str::trim);
    given.is_some_and(|given| {
        bool::from(subtle::ConstantTimeEq::ct_eq(
            state.admin_token.as_bytes(),
            given.as_bytes(),
        ))
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ViewQuery {
    /// Show outgoing tokens (and FTP URL passwords) instead of masking them.
    #[serde(default)]
    reveal_secrets: bool,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `public` or `eventing`.
    #[param(pattern = "^(public|eventing)$")]
    kind: Option<String>,
    /// Only the channel with this code.
    code: Option<String>,
    /// At most this many (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Skip this many (default 0).
    #[param(minimum = 0)]
    offset: Option<i64>,
    #[serde(default)]
    reveal_secrets: bool,
}

const MAX_PAGE: i64 = 1000;
const DEFAULT_PAGE: i64 = 100;

pub(crate) fn view(
    state: &AppState,
    channel: &crate::db::models::Channel,
    reveal: bool,
) -> serde_json::Value {
    let mut value = serde_json::to_value(ChannelView::new(channel, reveal)).unwrap_or_default();
    // What this node is doing with the channel right now.
    let runtime = match state.registry.get_by_id(&channel.id) {
        Some(handle) => {
            let mut s = handle.stats.snapshot();
            s["served_here"] = true.into();
            // The version the channel's actor published (requests are served with it).
            s["version"] = handle.channel.version.into();
            s
        }
        None => serde_json::json!({ "served_here": false }),
    };
    value["runtime"] = runtime;
    value
}

/// Create a channel. The token is generated; scenarios are compiled (a syntax error is a
/// 400 with line and column).
#[utoipa::path(post, path = "/admin/v1/channels", tag = "channels",
    params(ViewQuery), request_body = ChannelInput,
    responses((status = 201, description = "Created", body = ChannelView), (status = 400, description = "Invalid input, naming the field", body = ErrorResponse), (status = 401, description = "No or wrong admin token", body = ErrorResponse),
        (status = 409, description = "The code is taken in this domain", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn create_channel(
    _: Admin,
    domain: InDomain,
    req: HttpRequest,
    payload: web::Payload,
    query: web::Query<ViewQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, state.config.admin_max_body_bytes).await?;
    let input = ChannelInput::from_json(&body)?;
    let channel = domain.channels.create(input).await?;
    slog::info!(state.logger, "channel created"; "channel" => &channel.code, "id" => &channel.id, "kind" => &channel.kind);
    Ok(HttpResponse::build(StatusCode::CREATED)
        .insert_header((
            actix_web::http::header::LOCATION,
            format!("/admin/v1/channels/{}", channel.id),
        ))
        .json(view(&state, &channel, query.reveal_secrets)))
}

/// List the domain's channels, ordered by code.
#[utoipa::path(get, path = "/admin/v1/channels", tag = "channels", params(ListQuery),
    responses((status = 200, description = "One page", body = ChannelPage), (status = 400, description = "Invalid input, naming the field", body = ErrorResponse), (status = 401, description = "No or wrong admin token", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn list_channels(
    _: Admin,
    domain: InDomain,
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    if let Some(kind) = &q.kind
        && kind != KIND_PUBLIC
        && kind != KIND_EVENTING
    {
        return Err(ApiError::bad_request(
            "invalid_field",
            "kind: must be \"public\" or \"eventing\"",
        )
        .with_field("kind"));
    }
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("limit: must be between 1 and {MAX_PAGE}"),
        )
        .with_field("limit"));
    }
    let offset = q.offset.unwrap_or(0);
    if offset < 0 {
        return Err(
            ApiError::bad_request("invalid_field", "offset: must not be negative")
                .with_field("offset"),
        );
    }
    let filter = ChannelFilter {
        domain: String::new(),
        kind: q.kind,
        code: q.code,
        limit,
        offset,
    };
    let (items, total) = domain.channels.list(filter).await?;
    let items: Vec<_> = items
        .iter()
        .map(|c| view(&state, c, q.reveal_secrets))
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "items": items,
        "total": total,
        "limit": limit,
        "offset": offset,
    })))
}

/// One channel, with what this node is doing with it (`runtime`).
#[utoipa::path(get, path = "/admin/v1/channels/{id}", tag = "channels",
    params(("id" = String, Path, description = "Channel id"), ViewQuery),
    responses((status = 200, description = "The channel", body = ChannelView), (status = 400, description = "Invalid input, naming the field", body = ErrorResponse), (status = 401, description = "No or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such channel", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn get_channel(
    _: Admin,
    domain: InDomain,
    id: web::Path<String>,
    query: web::Query<ViewQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let channel = domain.channels.get(&id).await?;
    Ok(HttpResponse::Ok().json(view(&state, &channel, query.reveal_secrets)))
}

/// Change a channel; absent fields stay. Applied live on this node.
#[utoipa::path(patch, path = "/admin/v1/channels/{id}", tag = "channels",
    params(("id" = String, Path, description = "Channel id"), ViewQuery), request_body = ChannelInput,
    responses((status = 200, description = "Changed", body = ChannelView), (status = 400, description = "Invalid input, naming the field", body = ErrorResponse), (status = 401, description = "No or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such channel", body = ErrorResponse),
        (status = 409, description = "Code taken, or changed concurrently", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn update_channel(
    _: Admin,
    domain: InDomain,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    query: web::Query<ViewQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, state.config.admin_max_body_bytes).await?;
    let input = ChannelInput::from_json(&body)?;
    let channel = domain.channels.update(&id, input).await?;
    slog::info!(state.logger, "channel updated"; "channel" => &channel.code, "id" => &channel.id, "version" => channel.version);
    Ok(HttpResponse::Ok().json(view(&state, &channel, query.reveal_secrets)))
}

/// Delete a channel: its token is 404 at once and its websockets close with 1001.
#[utoipa::path(delete, path = "/admin/v1/channels/{id}", tag = "channels",
    params(("id" = String, Path, description = "Channel id")),
    responses((status = 204, description = "Deleted"), (status = 400, description = "Invalid input, naming the field", body = ErrorResponse), (status = 401, description = "No or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such channel", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn delete_channel(
    _: Admin,
    domain: InDomain,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    domain.channels.delete(&id).await?;
    slog::info!(state.logger, "channel deleted"; "id" => id.as_str());
    Ok(HttpResponse::NoContent().finish())
}

/// Test hook, off unless `fault_injection` is set: makes the channel's actor panic so
/// that tests can watch the supervisor restart it.
async fn inject_panic(
    _: Admin,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if !state.config.fault_injection {
        return Err(ApiError::not_found("not_found", "no such route"));
    }
    let handle = state.registry.get_by_id(&id).ok_or_else(|| {
        ApiError::not_found("channel_not_found", "channel is not served on this node")
    })?;
    let _ = handle.actor.inject_panic.send(InjectPanic).await;
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "panicked": true })))
}

/// This node: domain, roles, version, load.
#[utoipa::path(get, path = "/admin/v1/node", tag = "operations",
    responses((status = 200, description = "This node"),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn node(_: Admin, state: web::Data<AppState>) -> HttpResponse {
    let pool = state.dispatcher.pool();
    HttpResponse::Ok().json(serde_json::json!({
        "domain": state.config.domain,
        "domains": state.config.domains(),
        "roles": state.config.roles,
        "version": env!("CARGO_PKG_VERSION"),
        "database": state.db.backend_name(),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "channels_served": state.registry.len(),
        "ws_sessions": state.ws_sessions.load(std::sync::atomic::Ordering::Relaxed),
        "scenario_threads": pool.slots(),
        "scenario_busy": pool.stats().busy.load(std::sync::atomic::Ordering::Relaxed),
        "scenario_queue_depth": pool.queued(),
        "scenario_queue_capacity": pool.max_admitted(),
        "scenario_admitted": pool.admitted(),
        "scenario_waiting": pool.stats().waiting.load(std::sync::atomic::Ordering::Relaxed),
        "scenario_pool_threads": pool.stats().threads.load(std::sync::atomic::Ordering::Relaxed),
        "event_subscribers": state.default_domain.events.stats.subscribers.load(std::sync::atomic::Ordering::Relaxed),
        "event_log_epoch": state.default_domain.epoch,
        "node_id": state.node_id,
        "cluster": cluster_view(&state),
    }))
}

/// This node's view of the cluster: listener, staleness.
fn cluster_view(state: &AppState) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = &state.cluster_stats;
    serde_json::json!({
        "clustered": state.freshness.is_clustered(),
        "listening": stats.listening.load(Relaxed),
        "stale": state.freshness.is_stale(),
        "max_staleness_s": state.config.max_staleness_s,
    })
}

/// Every node of this domain in the node registry, alive or not. A node is alive
/// while its last heartbeat is younger than three heartbeat intervals (on the
/// database's clock).
#[utoipa::path(get, path = "/admin/v1/nodes", tag = "operations",
    responses((status = 200, description = "The domain's nodes"),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn nodes(
    _: Admin,
    domain: InDomain,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(nodes_view(&state, &domain.name).await?))
}

/// The node registry as the admin API and the status page show it.
pub async fn nodes_view(state: &AppState, domain: &str) -> Result<serde_json::Value, ApiError> {
    let domain = domain.to_string();
    let (rows, now) = state
        .db
        .run(move |c| crate::db::nodes::list(c, &domain))
        .await?;
    let window = 3 * state.config.node_heartbeat_ms as i64;
    let items: Vec<serde_json::Value> = rows
        .iter()
        .map(|n| {
            let age = (now - n.heartbeat_at).max(0);
            serde_json::json!({
                "node_id": n.node_id,
                "domain": n.domain,
                "roles": n.roles.split(',').filter(|r| !r.is_empty()).collect::<Vec<_>>(),
                "listen": n.listen,
                "version": n.version,
                "started_at": crate::channels::rfc3339_millis(n.started_at),
                "heartbeat_at": crate::channels::rfc3339_millis(n.heartbeat_at),
                "heartbeat_age_ms": age,
                "alive": age <= window,
                "this_node": n.node_id == state.node_id,
            })
        })
        .collect();
    let alive = items.iter().filter(|i| i["alive"] == true).count();
    Ok(serde_json::json!({
        "total": items.len(),
        "alive": alive,
        "items": items,
    }))
}

/// The channel's live session table on this node (after checking the channel exists).
async fn sessions_of(
    state: &AppState,
    domain: &DomainState,
    id: &str,
) -> Result<Option<std::sync::Arc<crate::actors::sessions::SessionTable>>, ApiError> {
    domain.channels.get(id).await?;
    Ok(state.registry.get_by_id(id).map(|h| h.sessions.clone()))
}

/// Runs `work` on a channel's sessions wherever they are: on this node at once, on
/// the cluster's other nodes through the database (off the async threads, 5 s at most).
async fn everywhere<T: Send + 'static>(
    sessions: std::sync::Arc<crate::actors::sessions::SessionTable>,
    work: impl FnOnce(&crate::actors::sessions::SessionTable, std::time::Instant) -> Result<T, String>
    + Send
    + 'static,
) -> Result<T, ApiError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    actix_web::rt::task::spawn_blocking(move || work(&sessions, deadline))
        .await
        .map_err(|e| ApiError::internal_with_cause("the session lookup failed", e))?
        .map_err(|cause| {
            ApiError::overloaded(
                "cluster_unavailable",
                "the other nodes' sessions cannot be reached right now",
            )
            .with_cause(cause)
        })
}

fn session_not_found() -> ApiError {
    ApiError::not_found(
        "session_not_found",
        "no open websocket session with this code on any live node",
    )
}

/// The channel's open websocket sessions on this node.
#[utoipa::path(get, path = "/admin/v1/channels/{id}/sessions", tag = "websockets",
    params(("id" = String, Path, description = "Channel id")),
    responses((status = 200, description = "Sessions", body = SessionPage), (status = 400, description = "Invalid input, naming the field", body = ErrorResponse), (status = 401, description = "No or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such channel", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn list_sessions(
    _: Admin,
    domain: InDomain,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let views = match sessions_of(&state, &domain, &id).await? {
        Some(sessions) => everywhere(sessions, |s, deadline| s.views_everywhere(deadline)).await?,
        None => Vec::new(),
    };
    Ok(HttpResponse::Ok().json(serde_json::json!({ "total": views.len(), "items": views })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushBody {
    text: String,
}

/// Push a text frame to one session.
#[utoipa::path(post, path = "/admin/v1/channels/{id}/sessions/{code}/messages", tag = "websockets",
    params(("id" = String, Path, description = "Channel id"), ("code" = String, Path, description = "Session code")),
    request_body = PushBody,
    responses((status = 202, description = "Queued to the session"), (status = 400, description = "Invalid input, naming the field", body = ErrorResponse), (status = 401, description = "No or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such channel or session", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn push_to_session(
    _: Admin,
    domain: InDomain,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (id, code) = path.into_inner();
    let body = read_body(&req, payload, state.config.ws_max_message_bytes + 1024).await?;
    let push: PushBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_field",
            format!("body: {{\"text\": \"...\"}} is expected: {e}"),
        )
        .with_field("text")
    })?;
    let sessions = sessions_of(&state, &domain, &id)
        .await?
        .ok_or_else(session_not_found)?;
    let sent = everywhere(sessions, move |s, deadline| {
        s.send_anywhere(&code, &push.text, deadline)
    })
    .await?;
    if !sent {
        return Err(session_not_found());
    }
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "queued": true })))
}

/// Close one session (1000, closed by the operator).
#[utoipa::path(delete, path = "/admin/v1/channels/{id}/sessions/{code}", tag = "websockets",
    params(("id" = String, Path, description = "Channel id"), ("code" = String, Path, description = "Session code")),
    responses((status = 204, description = "Closing"), (status = 400, description = "Invalid input, naming the field", body = ErrorResponse), (status = 401, description = "No or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such channel or session", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn close_session(
    _: Admin,
    domain: InDomain,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (id, code) = path.into_inner();
    let sessions = sessions_of(&state, &domain, &id)
        .await?
        .ok_or_else(session_not_found)?;
    let closed = everywhere(sessions, move |s, deadline| {
        s.close_anywhere(
            &code,
            crate::actors::close_code::NORMAL,
            "closed by the operator",
            deadline,
        )
    })
    .await?;
    if !closed {
        return Err(session_not_found());
    }
    Ok(HttpResponse::NoContent().finish())
}
