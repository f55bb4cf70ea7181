//! One log line per request: method, path (as `crate::redact::log_path` writes it),
//! status, latency, the request id, and the channel code when a handler named one.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};

use super::request_id::RequestId;
use crate::http::state::AppState;

/// Set by handlers in the request extensions: which channel served the request.
#[derive(Clone)]
pub struct ChannelTag(pub String);

pub async fn log_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = crate::redact::log_path(req.path());
    let logger = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.logger.clone());
    let res = next.call(req).await?;
    if let Some(logger) = logger {
        let channel = res
            .request()
            .extensions()
            .get::<ChannelTag>()
            .map(|t| t.0.clone())
            .unwrap_or_default();
        let request_id = res
            .request()
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        slog::info!(logger, "request";
            "method" => %method,
            "path" => path,
            "status" => res.status().as_u16(),
            "channel" => channel,
            "request_id" => request_id,
            "latency_ms" => format!("{:.3}", started.elapsed().as_secs_f64() * 1000.0),
        );
    }
    Ok(res)
}
