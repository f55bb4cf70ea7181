//! `ANY /api/token/v1/{token}[/{tail}]`: the incoming webhook of a public channel.
//! Looks the token up in the registry, builds the 7 start parameters and runs the
//! channel's webhook scenario — answering at once, or with the scenario's reply.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode, Uri, Version};
use actix_web::web::Bytes;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};

use super::error::ApiError;
use super::read_body;
use super::request_log::ChannelTag;
use crate::actors::{ChannelHandle, ScriptKind};
use crate::channels::KIND_PUBLIC;
use crate::http::state::AppState;
use crate::scenario::dispatch::{Params, Submitted};
use crate::scenario::{RequestParts, ScenarioError, ScenarioReply, StartParams, WEBHOOK_PARAMS};

/// A prefix scope with the path split by hand: actix's router matches `{token}`-style
/// segments with a regex, which was ~10% of the worker's CPU on this path.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::scope(PREFIX).default_service(web::to(webhook)));
}

const PREFIX: &str = "/api/token/v1";

/// `(token, tail)` of `/api/token/v1/{token}[/{tail}]`.
fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(PREFIX)?.strip_prefix('/')?;
    let (token, tail) = rest.split_once('/').unwrap_or((rest, ""));
    (!token.is_empty()).then_some((token, tail))
}

/// Extra time a waiting caller gives the scenario thread to report its own timeout.
const REPLY_GRACE: Duration = Duration::from_millis(250);

fn unknown_token() -> ApiError {
    ApiError::no_channel_for_token("public")
}

/// The incoming webhook of a public channel. Any method, and any sub-path (passed to
/// the scenario in the URL). Documented here as POST.
#[utoipa::path(post, path = "/api/token/v1/{token}", tag = "public channels",
    params(("token" = String, Path, description = "The channel's local token")),
    request_body(content = Option<String>, description = "Any body up to max_body_bytes, or none", content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Accepted (wait off), or the scenario's reply (wait on)"),
        (status = 204, description = "A CORS preflight (OPTIONS) the channel's `cors` allows, answered without the scenario"),
        (status = 401, description = "The channel's `verify` signature is missing or wrong (no scenario ran)", body = super::openapi::ErrorResponse),
        (status = 403, description = "A CORS preflight from an origin or for a method the channel's `cors` does not allow", body = super::openapi::ErrorResponse),
        (status = 404, description = "No public channel with this token here (or the sender is not in its `allow_ips`)", body = super::openapi::ErrorResponse),
        (status = 413, description = "Body too large", body = super::openapi::ErrorResponse),
        (status = 408, description = "The body did not arrive within http_body_timeout_ms", body = super::openapi::ErrorResponse),
        (status = 429, description = "Over the channel's `rate_limit` on this node (Retry-After)", body = super::openapi::ErrorResponse),
        (status = 500, description = "The scenario ended with an error", body = super::openapi::ErrorResponse),
        (status = 503, description = "Scenario queue full or channel busy (Retry-After)", body = super::openapi::ErrorResponse),
        (status = 504, description = "The scenario ran out of time", body = super::openapi::ErrorResponse)))]
async fn webhook(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (token, tail) = split_path(req.path()).ok_or_else(unknown_token)?;
    // `/subscribe` belongs to eventing channels, never to a public channel's scenario.
    if let Some(rest) = tail.strip_prefix("subscribe")
        && (rest.is_empty() || rest.starts_with('/'))
    {
        let (token, rest) = (token.to_string(), rest.to_string());
        return super::subscribe::handle(&req, payload, &state, &token, &rest).await;
    }
    let handle = state.channel_for_token(token, KIND_PUBLIC)?;
    req.extensions_mut()
        .insert(ChannelTag(handle.channel.code.clone()));
    let stats = handle.stats.clone();
    // A channel without guards pays this one branch for them.
    let result = if handle.guards.is_none() {
        run_webhook(&req, payload, &state, handle).await
    } else {
        super::channel_guards::guarded_webhook(&req, payload, &state, handle).await
    };
    stats.record_response(match &result {
        Ok(response) => response.status().as_u16(),
        Err(e) => e.status.as_u16(),
    });
    result
}

async fn run_webhook(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    handle: Arc<ChannelHandle>,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(req, payload, state.config.max_body_bytes).await?;
    run_scenario(req, body, state, handle).await
}

/// Runs the channel's webhook scenario on a request whose body is read.
pub(super) async fn run_scenario(
    req: &HttpRequest,
    body: Bytes,
    state: &AppState,
    handle: Arc<ChannelHandle>,
) -> Result<HttpResponse, ApiError> {
    let params = Arc::new(WebhookParams {
        channel_json: handle.channel_json().clone(),
        method: req.method().clone(),
        secure: req.app_config().secure(),
        host: req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default(),
        uri: req.uri().clone(),
        body,
        headers: req.headers().clone(),
        sender: client_ip(req, &state.config.trusted_proxies),
        version: req.version(),
    });
    handle
        .stats
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let wait = handle.channel.wait_for_completion;
    let outcome =
        match state
            .dispatcher
            .submit(handle, ScriptKind::Webhook, Params::Shared(params), wait)?
        {
            Submitted::Background => return Ok(HttpResponse::Ok().finish()),
            Submitted::Ran(_) if !wait => return Ok(HttpResponse::Ok().finish()),
            Submitted::Ran(outcome) => outcome?,
            Submitted::Queued(reply) => {
                tokio::time::timeout(state.dispatcher.timeout() + REPLY_GRACE, reply)
                    .await
                    .map_err(|_| ScenarioError::Timeout)?
                    .map_err(|_| ScenarioError::Panicked)??
            }
        };
    Ok(respond(outcome))
}

/// The scenario's reply as an HTTP response (already validated by the runtime).
fn respond(reply: ScenarioReply) -> HttpResponse {
    let status = StatusCode::from_u16(reply.code).unwrap_or(StatusCode::OK);
    let mut response = HttpResponse::build(status).body(reply.content);
    let headers = response.headers_mut();
    for (name, value) in reply.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.append(name, value);
        }
    }
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    response
}

/// The 7 start parameters of a webhook, kept raw and rendered when the scenario asks
/// (on the scenario thread, not on the HTTP worker).
struct WebhookParams {
    channel_json: Arc<str>,
    method: Method,
    secure: bool,
    host: String,
    uri: Uri,
    body: Bytes,
    headers: HeaderMap,
    sender: Option<IpAddr>,
    version: Version,
}

impl StartParams for WebhookParams {
    fn count(&self) -> usize {
        WEBHOOK_PARAMS
    }

    fn get_str(&self, n: usize) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        Some(match n {
            1 => Cow::Borrowed(&self.channel_json),
            2 => Cow::Borrowed(self.method.as_str()),
            3 => {
                let scheme = if self.secure { "https" } else { "http" };
                let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                Cow::Owned(format!("{scheme}://{}{path}", self.host))
            }
            // `from_utf8_lossy` walks the text a character at a time (~9 instructions a
            // byte); the check alone is word at a time.
            4 => match std::str::from_utf8(&self.body) {
                Ok(text) => Cow::Borrowed(text),
                Err(_) => String::from_utf8_lossy(&self.body),
            },
            5 => Cow::Owned(headers_json(&self.headers)),
            6 => Cow::Owned(self.sender.map(|ip| ip.to_string()).unwrap_or_default()),
            7 => Cow::Borrowed(protocol(self.version)),
            _ => return None,
        })
    }

    fn body_bytes(&self) -> Option<&[u8]> {
        Some(&self.body)
    }

    fn request(&self) -> Option<RequestParts<'_>> {
        Some(RequestParts {
            method: self.method.as_str(),
            secure: self.secure,
            host: &self.host,
            path_and_query: self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
            headers: self
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_bytes()))
                .collect(),
            body: &self.body,
            peer_ip: self.sender,
            protocol: protocol(self.version),
        })
    }

    fn input_bytes(&self) -> usize {
        self.body.len()
    }

    fn held_bytes(&self) -> usize {
        // The header values are slices of the connection's read buffer, which they
        // keep alive (at least 8 KiB): counted as that much.
        const READ_BUFFER: usize = 8 * 1024;
        READ_BUFFER
            + self.body.len()
            + self.host.len()
            + self.uri.path_and_query().map_or(0, |p| p.as_str().len())
            + self
                .headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len())
                .sum::<usize>()
    }
}

/// `startparam(5)`: the request headers as a JSON object; repeated headers are joined
/// with ", " as HTTP allows.
fn headers_json(headers: &HeaderMap) -> String {
    let mut map = serde_json::Map::new();
    for (name, value) in headers.iter() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match map.get_mut(name.as_str()) {
            Some(serde_json::Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                map.insert(name.as_str().to_string(), serde_json::Value::String(value));
            }
        }
    }
    serde_json::Value::Object(map).to_string()
}

/// `startparam(6)`: the sender's IP. `X-Forwarded-For` counts only when the direct
/// peer is a trusted proxy; then the rightmost address that is not itself a trusted
/// proxy is the sender.
pub fn client_ip(req: &HttpRequest, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = req.peer_addr().map(|a| a.ip())?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let hops: Vec<IpAddr> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .collect();
    hops.iter()
        .rev()
        .find(|ip| !trusted.contains(ip))
        .or(hops.first())
        .copied()
        .or(Some(peer))
}

/// `startparam(7)`: the protocol as Oktell names it.
fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

#[cfg(test)]
mod tests {
    use super::split_path;

    #[test]
    fn paths_split_into_token_and_tail() {
        assert_eq!(split_path("/api/token/v1/abc"), Some(("abc", "")));
        assert_eq!(split_path("/api/token/v1/abc/"), Some(("abc", "")));
        assert_eq!(split_path("/api/token/v1/abc/x/y"), Some(("abc", "x/y")));
        assert_eq!(
            split_path("/api/token/v1/abc/subscribe"),
            Some(("abc", "subscribe"))
        );
        assert_eq!(split_path("/api/token/v1/"), None);
        assert_eq!(split_path("/api/token/v1"), None);
        assert_eq!(split_path("/api/token/v1x/abc"), None);
    }
}
