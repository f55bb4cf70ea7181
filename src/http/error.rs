//! The HTTP edge's one error type: every failure becomes
//! `{"error": {"code": "...", "message": "...", ...}}` with the right status.
//! Errors of the layers below are converted here, once.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::channels::{ServiceError, ValidationError};
use crate::db::StoreError;
use crate::events::subscriptions::SubscriptionError;
use crate::scenario::ScenarioError;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// Seconds for `Retry-After` on 429/503.
    pub retry_after: Option<u64>,
    /// The path's methods for `Allow` on 405 (RFC 9110).
    pub allow: Option<String>,
    /// What went wrong inside (a storage error, say): logged once at the edge with the
    /// request id (`request_id::tag_requests`), never sent to the caller.
    pub cause: Option<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.body.code,
            self.body.message
        )
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                code,
                message: message.into(),
                field: None,
                line: None,
                column: None,
            },
            retry_after: None,
            allow: None,
            cause: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 404 for a token this node does not serve as a channel of that kind (unknown,
    /// disabled, another kind, or another node's WS role: the caller cannot tell which).
    pub fn no_channel_for_token(kind: &str) -> ApiError {
        ApiError::not_found(
            "channel_not_found",
            format!("no {kind} channel with this token is served here"),
        )
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// A 500 whose cause goes to the log only.
    pub fn internal_with_cause(
        message: impl Into<String>,
        cause: impl std::fmt::Display,
    ) -> ApiError {
        ApiError::internal(message).with_cause(cause)
    }

    pub fn with_cause(mut self, cause: impl std::fmt::Display) -> ApiError {
        self.cause = Some(cause.to_string());
        self
    }

    /// 405 for a method the path does not serve; `allow` lists those it does.
    pub fn method_not_allowed(allow: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this method is not allowed on this path",
        );
        e.allow = Some(allow.into());
        e
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin token is required: Authorization: Bearer <token>",
        )
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    /// 408: the request body did not arrive in full within `http_body_timeout_ms`.
    pub fn body_timeout(timeout_ms: u64) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the request body did not arrive within {timeout_ms} ms"),
        )
    }

    pub fn overloaded(code: &'static str, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
        e.retry_after = Some(1);
        e
    }

    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.body.field = Some(field.into());
        self
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut builder = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            builder.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if let Some(allow) = &self.allow {
            builder.insert_header((header::ALLOW, allow.as_str()));
        }
        builder.json(serde_json::json!({ "error": self.body }))
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        let code = if e.line.is_some() {
            "scenario_syntax_error"
        } else {
            "invalid_field"
        };
        let mut err = ApiError::bad_request(code, format!("{}: {}", e.field, e.message));
        err.body.field = Some(e.field);
        err.body.line = e.line;
        err.body.column = e.column;
        err
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // The caller gets no internals; the cause is logged at the edge.
        match e {
            StoreError::Pool(_) => {
                ApiError::overloaded("database_unavailable", "the database is unavailable")
                    .with_cause(e)
            }
            _ if e.is_connection_lost() => {
                ApiError::overloaded("database_unavailable", "the database is unavailable")
                    .with_cause(e)
            }
            _ if e.is_busy() => ApiError::overloaded(
                "database_busy",
                "the database is busy with another writer; try again",
            )
            .with_cause(e),
            StoreError::DuplicateCode => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            _ => ApiError::internal_with_cause("storage error", e),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(v) => v.into(),
            ServiceError::NotFound => {
                ApiError::not_found("channel_not_found", "no channel with this id")
            }
            ServiceError::ExecutionNotFound => ApiError::not_found(
                "execution_not_found",
                "this channel has no recorded execution with this id",
            ),
            ServiceError::VersionNotFound(v) => ApiError::not_found(
                "version_not_found",
                format!("this channel has no kept version {v}"),
            ),
            ServiceError::Conflict(m) => {
                let field = m.starts_with("code:").then(|| "code".to_string());
                let mut err = ApiError::new(StatusCode::CONFLICT, "conflict", m);
                err.body.field = field;
                err
            }
            ServiceError::Store(s) => s.into(),
            ServiceError::Scenario(s) => s.into(),
        }
    }
}

impl From<SubscriptionError> for ApiError {
    fn from(e: SubscriptionError) -> Self {
        match e {
            SubscriptionError::Invalid(v) => v.into(),
            SubscriptionError::TooMany => ApiError::new(
                StatusCode::CONFLICT,
                "too_many_subscriptions",
                e.to_string(),
            ),
            SubscriptionError::NotFound => {
                ApiError::not_found("subscription_not_found", "no subscription with this id")
            }
            SubscriptionError::Check(cause) => {
                ApiError::internal_with_cause("checking the URL failed", cause)
            }
            SubscriptionError::Store(s) => s.into(),
        }
    }
}

impl From<ScenarioError> for ApiError {
    fn from(e: ScenarioError) -> Self {
        let status = match &e {
            ScenarioError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ScenarioError::QueueFull { retry_after_secs } => {
                let mut err = ApiError::overloaded(e.code(), e.public_message());
                err.retry_after = Some((*retry_after_secs).max(1));
                return err;
            }
            ScenarioError::ChannelBusy => {
                return ApiError::overloaded(e.code(), e.public_message());
            }
            ScenarioError::Unavailable(_) => StatusCode::BAD_GATEWAY,
            // The node's memory for scenarios is spent by all runs together: this one
            // did nothing wrong and may succeed a moment later.
            ScenarioError::Budget(crate::scenario::budget::BudgetKind::NodeMemory) => {
                let mut err = ApiError::overloaded(e.code(), e.public_message());
                err.retry_after = Some(1);
                return err;
            }
            ScenarioError::Budget(_)
            | ScenarioError::Limit(_)
            | ScenarioError::Compile(_)
            | ScenarioError::Script(_)
            | ScenarioError::InvalidReply(_)
            | ScenarioError::Panicked => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.code(), e.public_message())
    }
}
