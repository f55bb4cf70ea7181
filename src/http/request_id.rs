//! Every request gets an id: the caller's `X-Request-Id` when it is a sane one, else a
//! new UUIDv7. It is answered in `X-Request-Id`, tagged on the access log line, and it
//! is how an internal failure's cause, logged here once, is found again: the caller
//! gets the id and a generic message, never the cause.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};

use super::error::ApiError;
use crate::http::state::AppState;

pub const HEADER: &str = "x-request-id";

/// The request's id, in the request extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// A caller's id is kept when it is 1–128 characters of `[A-Za-z0-9._:-]`.
fn acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

pub async fn tag_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let logger = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.logger.clone());
    // The path is made fit for the log only when a line is written (rarely).
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let log_cause = |err: &Error| {
        let (Some(logger), Some(api)) = (&logger, err.as_error::<ApiError>()) else {
            return;
        };
        if let Some(cause) = &api.cause {
            slog::error!(logger, "request failed";
                "request_id" => &id,
                "method" => %method,
                "path" => crate::redact::log_path(uri.path()),
                "status" => api.status.as_u16(),
                "code" => api.body.code,
                "cause" => cause,
            );
        }
    };
    match next.call(req).await {
        Ok(mut res) => {
            if let Some(err) = res.response().error() {
                log_cause(err);
            }
            if let Ok(value) = HeaderValue::from_str(&id) {
                res.headers_mut()
                    .insert(HeaderName::from_static(HEADER), value);
            }
            Ok(res)
        }
        Err(err) => {
            log_cause(&err);
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::acceptable;

    #[test]
    fn only_sane_ids_are_kept() {
        assert!(acceptable("req-1.2_3:4"));
        assert!(acceptable("0190b6a2c3d47e8f9a0b1c2d3e4f5a6b"));
        assert!(!acceptable(""));
        assert!(!acceptable("has space"));
        assert!(!acceptable("new\nline"));
        assert!(!acceptable(&"x".repeat(129)));
    }
}
