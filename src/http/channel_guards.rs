//! A channel's guards on its token routes (`channels::guards`): in this order, before
//! any scenario — the allow-list (a sender not listed gets the unknown token's 404),
//! the CORS preflight (answered here), the rate limit (429), then, once the body is
//! read, the signature (401). Responses to an allowed origin carry
//! `Access-Control-Allow-Origin`. Only channels with guards come here.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, web};

use super::error::ApiError;
use super::read_body;
use super::webhook::{client_ip, run_scenario};
use crate::actors::{ChannelHandle, ChannelStats};
use crate::channels::KIND_PUBLIC;
use crate::channels::guards::{Guards, Refusal};
use crate::http::state::{AppState, TokenMiss};

/// The allow-list of a token route (webhook, websocket, subscriptions): a sender not
/// listed gets exactly the 404 of an unknown token of this kind.
pub fn check_peer(
    handle: &ChannelHandle,
    req: &HttpRequest,
    state: &AppState,
    kind: &'static str,
) -> Result<(), TokenMiss> {
    match handle.guards.as_deref() {
        Some(guards)
            if !sender_listed(
                guards,
                client_ip(req, &state.config.trusted_proxies),
                &handle.stats,
            ) =>
        {
            Err(TokenMiss::NotServed(kind))
        }
        _ => Ok(()),
    }
}

/// Is the sender in the allow-list (or is there none)? A refusal is counted.
fn sender_listed(guards: &Guards, sender: Option<IpAddr>, stats: &ChannelStats) -> bool {
    match &guards.allow {
        Some(list) if !list.allows(sender) => {
            stats.record_refusal(Refusal::Ip);
            false
        }
        _ => true,
    }
}

/// 429 with `Retry-After` in whole seconds, rounded up (at least 1).
fn rate_limited(wait: Duration) -> ApiError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut err = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "this channel's rate limit is reached; retry after the time in Retry-After",
    );
    err.retry_after = Some(secs.max(1));
    err
}

fn bad_signature() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_signature",
        "the request's signature is missing or does not match the channel's verify settings",
    )
}

fn cors_refused() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "cors_refused",
        "this origin or method is not allowed by the channel's CORS settings",
    )
}

/// The webhook of a channel with guards.
pub async fn guarded_webhook(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    handle: Arc<ChannelHandle>,
) -> Result<HttpResponse, ApiError> {
    let Some(guards) = handle.guards.as_deref() else {
        return run_scenario(
            req,
            read_body(req, payload, state.config.max_body_bytes).await?,
            state,
            handle,
        )
        .await;
    };
    let sender = client_ip(req, &state.config.trusted_proxies);
    if !sender_listed(guards, sender, &handle.stats) {
        return Err(ApiError::no_channel_for_token(KIND_PUBLIC));
    }
    let cors = guards
        .cors
        .as_ref()
        .and_then(|c| req.headers().get(header::ORIGIN).map(|origin| (c, origin)));
    if let Some((cors, origin)) = cors
        && req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return match cors.preflight(origin, req.headers()) {
            Some(answer) => {
                let mut response = HttpResponse::NoContent();
                response.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, answer.allow_origin));
                if cors.varies() {
                    response.insert_header((header::VARY, HeaderValue::from_static("Origin")));
                }
                for (name, value) in [
                    (header::ACCESS_CONTROL_ALLOW_METHODS, answer.allow_methods),
                    (header::ACCESS_CONTROL_ALLOW_HEADERS, answer.allow_headers),
                    (header::ACCESS_CONTROL_MAX_AGE, answer.max_age),
                ] {
                    if let Some(value) = value {
                        response.insert_header((name, value));
                    }
                }
                Ok(response.finish())
            }
            None => {
                handle.stats.record_refusal(Refusal::Cors);
                Err(cors_refused())
            }
        };
    }
    let allow_origin = cors.and_then(|(c, origin)| c.allow_origin(origin).map(|a| (a, c.varies())));
    let result = checked_run(req, payload, state, guards, sender, handle.clone()).await;
    let Some((allow_origin, varies)) = allow_origin else {
        return result;
    };
    // The answer, refusals included, is readable by the allowed page.
    let mut response = result.unwrap_or_else(HttpResponse::from_error);
    let headers = response.headers_mut();
    if !headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
    }
    if varies {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    Ok(response)
}

/// Rate limit, body, signature, then the scenario.
async fn checked_run(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    guards: &Guards,
    sender: Option<IpAddr>,
    handle: Arc<ChannelHandle>,
) -> Result<HttpResponse, ApiError> {
    if let Some(limiter) = &guards.rate
        && let Err(wait) = limiter.check(sender)
    {
        handle.stats.record_refusal(Refusal::Rate);
        return Err(rate_limited(wait));
    }
    let body = read_body(req, payload, state.config.max_body_bytes).await?;
    if let Some(verifier) = &guards.verify
        && !verifier.verify(req.headers(), &body)
    {
        handle.stats.record_refusal(Refusal::Signature);
        return Err(bad_signature());
    }
    run_scenario(req, body, state, handle).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        let secs = |d: Duration| rate_limited(d).retry_after;
        assert_eq!(secs(Duration::from_millis(1)), Some(1));
        assert_eq!(secs(Duration::from_millis(1000)), Some(1));
        assert_eq!(secs(Duration::from_millis(1001)), Some(2));
        assert_eq!(secs(Duration::ZERO), Some(1));
    }
}
