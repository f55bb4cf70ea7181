//! `GET /ws/token/v1/{token}`: the websocket of a public channel. Everything that can
//! refuse the connection (unknown token, session limits) answers before the upgrade.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};

use super::body_guard::Unguard;
use super::error::ApiError;
use super::request_log::ChannelTag;
use super::webhook::client_ip;
use super::ws_frames::{FrameGuard, Refused};

use crate::actors::event_session::{EventSession, EventSessionParts};
use crate::actors::sessions::SessionSlot;
use crate::actors::ws_backlog;
use crate::actors::ws_session::{WsLimits, WsSession, WsSessionParts};
use crate::channels::KIND_PUBLIC;
use crate::http::state::AppState;

const PREFIX: &str = "/ws/token/v1";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::scope(PREFIX).default_service(web::to(websocket)));
}

fn unknown_token() -> ApiError {
    ApiError::no_channel_for_token("public")
}

/// The websocket of a public channel (upgrade). Each text message runs the channel's
/// websocket scenario; its response_content comes back as a text frame.
#[utoipa::path(get, path = "/ws/token/v1/{token}", tag = "public channels",
    params(("token" = String, Path, description = "The channel's local token")),
    responses((status = 101, description = "Switching protocols"),
        (status = 404, description = "No public channel with this token here", body = super::openapi::ErrorResponse),
        (status = 503, description = "Too many sessions", body = super::openapi::ErrorResponse)))]
async fn websocket(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let rest = req
        .path()
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or_default();
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (token, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if token.is_empty() {
        return Err(unknown_token());
    }
    match tail {
        "" => {}
        "subscribe" => {
            let token = token.to_string();
            return subscribe(req, stream, state, &token).await;
        }
        _ => return Err(unknown_token()),
    }
    let handle = state.channel_for_token(token, KIND_PUBLIC)?;
    super::channel_guards::check_peer(&handle, &req, &state, KIND_PUBLIC)?;
    req.extensions_mut()
        .insert(ChannelTag(handle.channel.code.clone()));
    let config = &state.config;
    let Some(channel_slot) = handle.sessions.reserve(config.ws_max_sessions_per_channel) else {
        return Err(ApiError::overloaded(
            "too_many_sessions",
            "this channel has as many websocket sessions as it may",
        ));
    };
    let Some(slot) = SessionSlot::take(&state.ws_sessions, config.ws_max_sessions_per_node) else {
        return Err(ApiError::overloaded(
            "too_many_sessions",
            "this node has as many websocket sessions as it may",
        ));
    };
    let backlog = state.outbound.backlog();
    let refused = Refused::default();
    let session = WsSession::new(WsSessionParts {
        peer_ip: client_ip(&req, &config.trusted_proxies)
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        hello: handle.channel.ws_hello,
        handle: handle.clone(),
        registry: state.registry.clone(),
        dispatcher: state.dispatcher.clone(),
        sessions: handle.sessions.clone(),
        stats: handle.stats.clone(),
        limits: WsLimits {
            heartbeat_interval: Duration::from_millis(config.ws_heartbeat_interval_ms),
            heartbeat_timeout: Duration::from_millis(config.ws_heartbeat_timeout_ms),
            max_message_bytes: config.ws_max_message_bytes,
            queue: config.ws_session_queue,
            queue_bytes: config.ws_session_queue_bytes,
            // The run has its own deadline; this bounds the wait even if it hangs.
            run_timeout: Duration::from_millis(config.scenario_timeout_ms) + Duration::from_secs(1),
        },
        inbound: state.ws_inbound.clone(),
        logger: handle.logger(&state.logger).clone(),
        slot,
        channel_slot,
        backlog: backlog.clone(),
        max_backlog_bytes: config.ws_max_backlog_bytes,
        frame_refused: refused.clone(),
    });
    upgrade(session, &req, stream, &state, refused, backlog)
        .map_err(|e| ApiError::bad_request("websocket_handshake", e.to_string()))
}

/// `GET /ws/token/v1/{token}/subscribe`: a websocket subscription to an eventing
/// channel's events (protocol: docs/eventing.md).
#[utoipa::path(get, path = "/ws/token/v1/{token}/subscribe", tag = "eventing channels",
    params(("token" = String, Path, description = "The eventing channel's local token")),
    responses((status = 101, description = "Switching protocols"),
        (status = 404, description = "No eventing channel with this token here", body = super::openapi::ErrorResponse),
        (status = 503, description = "Too many subscribers", body = super::openapi::ErrorResponse)))]
async fn subscribe(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
    token: &str,
) -> Result<HttpResponse, ApiError> {
    let handle = state.channel_for_token(token, crate::channels::KIND_EVENTING)?;
    super::channel_guards::check_peer(&handle, &req, &state, crate::channels::KIND_EVENTING)?;
    req.extensions_mut()
        .insert(ChannelTag(handle.channel.code.clone()));
    let config = &state.config;
    let Some(domain) = state.domain_named(&handle.channel.domain) else {
        return Err(ApiError::no_channel_for_token("eventing"));
    };
    // Places are taken before the upgrade, so that a burst of upgrades cannot pass the
    // limits; they are given back when the session ends (or here, on refusal).
    let refused = || {
        domain
            .events
            .stats
            .subscribers_refused
            .fetch_add(1, Ordering::Relaxed);
    };
    let Some(channel_slot) = handle
        .sessions
        .reserve_subscriber(config.ws_max_subscribers_per_channel)
    else {
        refused();
        return Err(ApiError::overloaded(
            "too_many_subscribers",
            "this channel has as many event subscribers as it may",
        ));
    };
    let Some(node_slot) =
        SessionSlot::take(&state.event_sockets, config.ws_max_subscribers_per_node)
    else {
        refused();
        return Err(ApiError::overloaded(
            "too_many_subscribers",
            "this node has as many event subscribers as it may",
        ));
    };
    let backlog = state.outbound.backlog();
    let refused = Refused::default();
    let session = EventSession::new(EventSessionParts {
        channel_types: handle.sessions.event_types(),
        sessions: handle.sessions.clone(),
        node_slot,
        channel_slot,
        broker: domain.broker.clone(),
        db: state.db.clone(),
        domain: domain.name.clone(),
        epoch: domain.epoch.clone(),
        heartbeat_interval: Duration::from_millis(config.ws_heartbeat_interval_ms),
        heartbeat_timeout: Duration::from_millis(config.ws_heartbeat_timeout_ms),
        backlog: backlog.clone(),
        max_backlog_bytes: config.ws_max_backlog_bytes,
        stats: domain.events.stats.clone(),
        frame_refused: refused.clone(),
    });
    upgrade(session, &req, stream, &state, refused, backlog)
        .map_err(|e| ApiError::bad_request("websocket_handshake", e.to_string()))
}

/// Closes every websocket of the node, event subscribers included (shutdown): 1001,
/// going away.
pub fn close_all_sessions(state: &AppState, reason: &str) {
    for handle in state.registry.handles() {
        handle
            .sessions
            .close_all(crate::actors::close_code::GOING_AWAY, reason);
    }
}

/// Upgrades with `actor` as the websocket's session: frames refused on their declared
/// length (`refused` tells the actor), the session's queued frames written by `backlog`.
fn upgrade<A>(
    actor: A,
    req: &HttpRequest,
    stream: web::Payload,
    state: &AppState,
    refused: Refused,
    backlog: Arc<ws_backlog::Backlog>,
) -> Result<HttpResponse, actix_web::Error>
where
    A: actix::Actor<Context = actix_web_actors::ws::WebsocketContext<A>>
        + actix::StreamHandler<
            Result<actix_web_actors::ws::Message, actix_web_actors::ws::ProtocolError>,
        >,
{
    let max = state.config.ws_max_message_bytes;
    let stats = state.conn_stats.clone();
    // The frames come straight from actix-http once the handshake is accepted, not
    // through the body guard (it would only pass them on, per read, for the
    // connection's life).
    let unguard = req.extensions().get::<Unguard>().cloned();
    let frames = move || {
        let payload = unguard
            .and_then(|u| u.take())
            .unwrap_or_else(|| stream.into_inner());
        FrameGuard::new(payload, max, refused, stats)
    };
    ws_backlog::start(actor, req, frames, max, backlog)
}
