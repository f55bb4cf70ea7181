//! The HTTP layer: one file per public surface. Handlers parse and check input, call
//! the layer below, and convert its errors once, through [`error::ApiError`].

pub mod admin;
pub mod authoring;
pub mod body_guard;
pub mod channel_guards;
pub mod error;
pub mod events;
pub mod executions;
pub mod openapi;
pub mod ops;
pub mod own_headers;
pub mod request_id;
pub mod request_log;
pub mod state;
pub mod status;
pub mod status_api;
pub mod subscribe;
pub mod subscriptions_admin;
pub mod webhook;
pub mod websocket;
pub mod ws_frames;

use actix_web::web;

/// Every route of the gateway.
pub fn routes(cfg: &mut web::ServiceConfig) {
    // The webhook scope first: it is the hot path, and a prefix match is cheap.
    cfg.configure(webhook::routes)
        .configure(websocket::routes)
        .configure(events::routes)
        .configure(subscriptions_admin::routes)
        .configure(authoring::routes)
        .configure(executions::routes)
        .configure(ops::routes)
        .configure(openapi::routes)
        .configure(status::routes)
        .configure(status_api::routes)
        .configure(admin::routes);
}

/// Reads a request body up to `limit` bytes; larger bodies are refused with 413 before
/// they are buffered (by Content-Length) or as soon as they pass the limit (chunked).
pub async fn read_body(
    req: &actix_web::HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, error::ApiError> {
    use futures_util::StreamExt;
    if let Some(len) = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(error::ApiError::too_large(limit));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            error::ApiError::bad_request("bad_body", format!("reading the body failed: {e}"))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(error::ApiError::too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// An optional JSON body: empty (or blank) is `T::default()`; otherwise parsed, a field
/// that does not fit named (`mocks[0].status`).
pub fn optional_json<T: Default + serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<T, crate::channels::ValidationError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path.is_empty() || path == "." {
            "body"
        } else {
            path.as_str()
        };
        crate::channels::ValidationError::new(field, e.inner().to_string())
    })
}
