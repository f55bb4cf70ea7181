//! A channel's execution history (issue #13): its recorded runs, listed and read, and
//! replayed as dry runs. Admin token required.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::admin::Admin;
use super::error::ApiError;
use super::openapi::ErrorResponse;
use super::read_body;
use crate::channels::authoring::MockInput;
use crate::channels::{DryRunInput, ValidationError, rfc3339_millis};
use crate::db::executions::ExecutionFilter;
use crate::db::models::Execution;
use crate::executions::{Detail, History, Inputs};
use crate::http::state::{AppState, InDomain};
use crate::scenario::dry_run::Report;
use crate::scenario::record::{CallRecord, ErrorRecord, LogLine, ReplyRecord};

pub fn routes(cfg: &mut web::ServiceConfig) {
    let resource =
        |path: &str| web::resource(path).default_service(web::to(super::admin::method_not_allowed));
    cfg.service(resource("/admin/v1/channels/{id}/executions").route(web::get().to(list)))
        .service(resource("/admin/v1/channels/{id}/executions/{eid}").route(web::get().to(get)))
        .service(
            resource("/admin/v1/channels/{id}/executions/{eid}/replay")
                .route(web::post().to(replay)),
        );
}

/// One recorded run. The listing leaves out `inputs`, `reply`, `logs` and `calls`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExecutionView {
    pub id: String,
    /// When the run started (RFC 3339).
    pub time: String,
    /// `webhook` or `websocket`.
    pub trigger: String,
    /// `ok` or `error`.
    pub outcome: String,
    /// The channel version whose script ran.
    pub version: i64,
    /// Wall time of the run.
    pub duration_ms: f64,
    /// Of which waiting on the outside world (outgoing calls, lookups, writes).
    pub wait_ms: f64,
    /// Of which computing (`duration_ms - wait_ms`).
    pub compute_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Inputs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<ReplyRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<Vec<LogLine>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls: Option<Vec<CallRecord>>,
}

/// A page of a channel's executions, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExecutionPage {
    pub items: Vec<ExecutionView>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// The channel's `history` setting.
    pub history: String,
    /// Runs of this channel the answering node could not record since it started: the
    /// writer could not keep up and its queue (`executions_queue`) was full. Non-zero
    /// means the history has gaps.
    pub dropped: u64,
}

/// A stored execution as the API (and the CLI) shows it; `whole` adds its inputs,
/// reply, logs and calls.
pub fn view(row: Execution, whole: bool) -> ExecutionView {
    let detail: Option<Detail> = serde_json::from_str(&row.detail).ok();
    let ms = |us: i64| us as f64 / 1000.0;
    let (error, inputs, reply, logs, calls) = match detail {
        Some(d) if whole => (
            d.error,
            Some(d.inputs),
            d.reply,
            Some(d.logs),
            Some(d.calls),
        ),
        Some(d) => (d.error, None, None, None, None),
        None => (None, None, None, None, None),
    };
    ExecutionView {
        id: row.id,
        time: rfc3339_millis(row.started_at),
        trigger: row.trigger_kind,
        outcome: row.outcome,
        version: row.version,
        duration_ms: ms(row.duration_us),
        wait_ms: ms(row.wait_us),
        compute_ms: ms(row.duration_us.saturating_sub(row.wait_us)),
        error,
        inputs,
        reply,
        logs,
        calls,
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `ok` or `error`.
    #[param(pattern = "^(ok|error)$")]
    outcome: Option<String>,
    /// `webhook` or `websocket`.
    #[param(pattern = "^(webhook|websocket)$")]
    trigger: Option<String>,
    /// Runs started at or after this time (RFC 3339, UTC).
    #[param(
        pattern = r"^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?Z$"
    )]
    since: Option<String>,
    /// Default 50, at most 500.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    #[param(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    cursor: Option<String>,
}

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 500;

impl ListQuery {
    /// A query of the CLI (no time filter, first page).
    pub fn new(outcome: Option<String>, trigger: Option<String>, limit: i64) -> ListQuery {
        ListQuery {
            outcome,
            trigger,
            since: None,
            limit: Some(limit),
            cursor: None,
        }
    }

    /// The checked filter.
    pub fn filter(self) -> Result<ExecutionFilter, ValidationError> {
        let one_of = |field: &str, value: &Option<String>, allowed: &[&str]| match value {
            Some(v) if !allowed.contains(&v.as_str()) => Err(ValidationError::new(
                field,
                format!("must be one of {}", allowed.join(", ")),
            )),
            _ => Ok(()),
        };
        one_of("outcome", &self.outcome, &["ok", "error"])?;
        one_of("trigger", &self.trigger, &["webhook", "websocket"])?;
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ValidationError::new(
                "limit",
                format!("must be between 1 and {MAX_PAGE}"),
            ));
        }
        let since = match &self.since {
            None => None,
            Some(raw) => {
                let at = humantime::parse_rfc3339_weak(raw).map_err(|_| {
                    ValidationError::new(
                        "since",
                        "must be a time (RFC 3339, e.g. 2026-11-29T10:00:00Z)",
                    )
                })?;
                let ms = at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                Some(ms)
            }
        };
        if let Some(c) = &self.cursor
            && uuid::Uuid::parse_str(c).is_err()
        {
            return Err(ValidationError::new(
                "cursor",
                "is not a cursor of this listing",
            ));
        }
        Ok(ExecutionFilter {
            outcome: self.outcome,
            trigger: self.trigger,
            since,
            before_id: self.cursor,
            limit,
        })
    }
}

/// The channel's recorded runs, newest first, without their inputs and outputs
/// (`GET …/executions/{eid}` has them). Which runs are recorded is the channel's
/// `history` setting; `dropped` counts the runs the answering node could not record.
#[utoipa::path(get, path = "/admin/v1/channels/{id}/executions", tag = "authoring",
    params(("id" = String, Path, description = "Channel id"), ListQuery),
    responses((status = 200, description = "A page of executions", body = ExecutionPage),
        (status = 400, description = "Invalid input, naming the field", body = ErrorResponse),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such channel", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn list(
    _: Admin,
    domain: InDomain,
    id: web::Path<String>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let filter = query.into_inner().filter()?;
    let limit = filter.limit;
    let channel = domain.channels.get(&id).await?;
    let (rows, dropped) = domain.channels.executions(&id, filter).await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id.clone()))
        .flatten();
    Ok(HttpResponse::Ok().json(ExecutionPage {
        items: rows.into_iter().map(|r| view(r, false)).collect(),
        next_cursor,
        history: History::of(&channel).as_str().to_string(),
        dropped,
    }))
}

/// One recorded run, whole: its inputs, reply, log lines, outgoing calls (status and
/// latency) and error (line and column), secrets masked.
#[utoipa::path(get, path = "/admin/v1/channels/{id}/executions/{eid}", tag = "authoring",
    params(("id" = String, Path, description = "Channel id"), ("eid" = String, Path, description = "Execution id")),
    responses((status = 200, description = "The execution", body = ExecutionView),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such channel or execution", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn get(
    _: Admin,
    domain: InDomain,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, eid) = path.into_inner();
    let row = domain.channels.execution(&id, &eid).await?;
    Ok(HttpResponse::Ok().json(view(row, true)))
}

/// What a replay runs instead of the saved script, and how.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayInput {
    /// A draft script to run instead of the channel's current one (not saved).
    pub script: Option<String>,
    /// Perform outgoing calls, websocket pushes and closes, and events for real.
    #[serde(default)]
    pub live: bool,
    /// Canned answers to outgoing calls, matched by method and path.
    #[serde(default)]
    pub mocks: Vec<MockInput>,
}

/// A replay: the dry run's report and what it replayed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplayReport {
    /// The execution whose input was run again.
    pub replayed: String,
    /// False when the recorded input was cut (`executions_max_recorded_bytes`): the
    /// replay ran on its first part. Masked values (credentials, tokens) are replayed
    /// masked.
    pub input_complete: bool,
    #[serde(flatten)]
    pub report: Report,
}

/// Run a recorded execution's input again, as a dry run (outgoing calls, pushes and
/// events recorded, not performed, unless `live`), against the channel's current
/// script or a draft `script`. A script that fails is a 200 report with `ok: false`
/// and the error's line and column.
#[utoipa::path(post, path = "/admin/v1/channels/{id}/executions/{eid}/replay", tag = "authoring",
    params(("id" = String, Path, description = "Channel id"), ("eid" = String, Path, description = "Execution id")),
    request_body(content = ReplayInput, description = "Optional"),
    responses((status = 200, description = "What the replay did", body = ReplayReport),
        (status = 400, description = "Invalid input, naming the field", body = ErrorResponse),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such channel or execution", body = ErrorResponse),
        (status = 503, description = "The node is busy (Retry-After)", body = ErrorResponse)),
    security(("admin_token" = [])))]
async fn replay(
    _: Admin,
    domain: InDomain,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (id, eid) = path.into_inner();
    let body = read_body(&req, payload, state.config.admin_max_body_bytes).await?;
    let input: ReplayInput = super::optional_json(&body)?;
    // The draft and mocks are checked as a dry run's are; the sample is the recording.
    let (_, draft, live, mocks) = DryRunInput {
        script: input.script,
        live: input.live,
        mocks: input.mocks,
        ..DryRunInput::default()
    }
    .checked("", false)?;
    let (report, input_complete) = domain
        .channels
        .replay(&id, &eid, draft, live, mocks)
        .await?;
    slog::info!(state.logger, "execution replayed"; "id" => id.as_str(), "execution" => eid.as_str(), "live" => report.live, "ok" => report.ok);
    Ok(HttpResponse::Ok().json(ReplayReport {
        replayed: eid,
        input_complete,
        report,
    }))
}
