//! Scenario authoring (issue #13): the dry-run input accepted by the admin API and the
//! CLI, checked field by field, and the service side of a dry run.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::service::{ChannelService, ServiceError};
use super::validate::{MAX_SCENARIO_LEN, MAX_TEXT_LEN, ValidationError, validate_text};
use crate::scenario::dry_run::{DryHost, Mock, Report, Sample, WebhookSample, WebsocketSample};

/// A dry run: a sample webhook `request` (the default) or websocket message, the
/// channel's saved script or a draft `script`, and what outgoing calls answer.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRunInput {
    /// A sample incoming webhook; the default when neither is given is an empty POST.
    pub request: Option<SampleRequest>,
    /// A sample websocket message (runs the websocket script instead).
    pub websocket: Option<SampleMessage>,
    /// A draft of the script to run instead of the saved one (not saved).
    pub script: Option<String>,
    /// Perform outgoing calls, websocket pushes and closes, and events for real.
    #[serde(default)]
    pub live: bool,
    /// Canned answers to outgoing calls, matched by method and path (never performed,
    /// even when live).
    #[serde(default)]
    pub mocks: Vec<MockInput>,
}

/// A sample incoming webhook.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SampleRequest {
    /// Default POST.
    pub method: Option<String>,
    /// Below the channel's webhook URL, query included (`/orders?x=1`); default none.
    pub path: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A string as it is; any other JSON value as its JSON text.
    #[schema(value_type = Option<Value>)]
    pub body: Option<serde_json::Value>,
    /// `startparam(6)`; default 127.0.0.1.
    pub peer_ip: Option<String>,
    /// `startparam(7)`: HTTP/1.0, HTTP/1.1 (default), HTTP/2 or HTTP/3.
    pub protocol: Option<String>,
}

/// A sample websocket message.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SampleMessage {
    /// The session code (`startparam(1)`); default `dry-run`.
    pub session: Option<String>,
    pub text: String,
    /// Default 127.0.0.1.
    pub peer_ip: Option<String>,
}

/// A canned answer to outgoing calls.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MockInput {
    /// Any method when absent.
    pub method: Option<String>,
    /// As the script passes it to `outgoing_request`; without a query it matches any.
    pub path: String,
    /// Default 200.
    pub status: Option<u16>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A string as it is; any other JSON value as its JSON text.
    #[schema(value_type = Option<Object>)]
    pub body: Option<serde_json::Value>,
}

const PROTOCOLS: [&str; 4] = ["HTTP/1.0", "HTTP/1.1", "HTTP/2", "HTTP/3"];
const DEFAULT_PEER: &str = "127.0.0.1";

fn json_text(value: Option<serde_json::Value>) -> String {
    match value {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s,
        Some(other) => other.to_string(),
    }
}

fn check_method(field: &str, method: &str) -> Result<(), ValidationError> {
    let token = !method.is_empty()
        && method.len() <= 32
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        Ok(())
    } else {
        Err(ValidationError::new(field, "must be an HTTP method"))
    }
}

fn check_peer(field: &str, peer: Option<String>) -> Result<String, ValidationError> {
    let peer = peer.unwrap_or_else(|| DEFAULT_PEER.to_string());
    peer.parse::<IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| ValidationError::new(field, "must be an IP address"))
}

fn check_headers(
    field: &str,
    headers: BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, ValidationError> {
    headers
        .into_iter()
        .map(|(name, value)| {
            let field = format!("{field}.{name}");
            actix_web::http::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ValidationError::new(&field, "is not a valid header name"))?;
            actix_web::http::header::HeaderValue::from_str(&value)
                .map_err(|_| ValidationError::new(&field, "is not a valid header value"))?;
            Ok((name.to_ascii_lowercase(), value))
        })
        .collect()
}

impl DryRunInput {
    /// Parses a JSON body; a field that does not fit is named (`request.method`).
    pub fn from_json(body: &[u8]) -> Result<DryRunInput, ValidationError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(DryRunInput::default());
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path.is_empty() || path == "." || path == "?" {
                "body"
            } else {
                path.as_str()
            };
            ValidationError::new(field, e.inner().to_string())
        })
    }

    /// The sample and mocks, checked; `host` and `secure` make `startparam(3)`.
    pub fn checked(
        self,
        host: &str,
        secure: bool,
    ) -> Result<(Sample, Option<String>, bool, Vec<Mock>), ValidationError> {
        if let Some(script) = &self.script {
            validate_text("script", script, MAX_SCENARIO_LEN)?;
        }
        let sample = match (self.request, self.websocket) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "websocket",
                    "give either a sample request or a websocket message, not both",
                ));
            }
            (_, Some(m)) => {
                let session = m.session.unwrap_or_else(|| "dry-run".to_string());
                validate_text("websocket.session", &session, MAX_TEXT_LEN)?;
                Sample::Websocket(WebsocketSample {
                    session,
                    text: m.text,
                    peer_ip: check_peer("websocket.peer_ip", m.peer_ip)?,
                })
            }
            (r, None) => {
                let r = r.unwrap_or_default();
                let method = r
                    .method
                    .unwrap_or_else(|| "POST".to_string())
                    .to_ascii_uppercase();
                check_method("request.method", &method)?;
                let path = r.path.unwrap_or_default();
                if path.chars().any(|c| c.is_control() || c == ' ') || path.len() > MAX_TEXT_LEN {
                    return Err(ValidationError::new(
                        "request.path",
                        format!(
                            "must be a URL path (and query) of at most {MAX_TEXT_LEN} bytes, without spaces or control characters"
                        ),
                    ));
                }
                let protocol = r.protocol.unwrap_or_else(|| "HTTP/1.1".to_string());
                if !PROTOCOLS.contains(&protocol.as_str()) {
                    return Err(ValidationError::new(
                        "request.protocol",
                        format!("must be one of {}", PROTOCOLS.join(", ")),
                    ));
                }
                Sample::Webhook(WebhookSample {
                    method,
                    path,
                    headers: check_headers("request.headers", r.headers)?,
                    body: json_text(r.body),
                    peer_ip: check_peer("request.peer_ip", r.peer_ip)?,
                    protocol,
                    host: host.to_string(),
                    secure,
                })
            }
        };
        let mocks = self
            .mocks
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let field = |name: &str| format!("mocks[{i}].{name}");
                let method = m.method.map(|x| x.to_ascii_uppercase());
                if let Some(method) = &method {
                    check_method(&field("method"), method)?;
                }
                let status = m.status.unwrap_or(200);
                if !(100..=599).contains(&status) {
                    return Err(ValidationError::new(
                        &field("status"),
                        "must be between 100 and 599",
                    ));
                }
                Ok(Mock {
                    method,
                    path: m.path,
                    status,
                    headers: check_headers(&field("headers"), m.headers)?,
                    body: json_text(m.body),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((sample, self.script, self.live, mocks))
    }
}

/// Extra time given to a dry run's scenario thread to report its own timeout.
const REPLY_GRACE: Duration = Duration::from_millis(250);

impl ChannelService {
    /// Runs the channel's script (or `draft`) on `sample` as a dry run and reports it.
    /// The channel is read from storage, so a dry run sees the latest save even on a
    /// node that does not serve the channel (then `live` effects on websockets reach
    /// no session, and its runs queue in a lane of their own).
    pub async fn dry_run(
        &self,
        id: &str,
        sample: Sample,
        draft: Option<String>,
        live: bool,
        mocks: Vec<Mock>,
    ) -> Result<Report, ServiceError> {
        let channel = Arc::new(self.get(id).await?);
        let served = self
            .live_node()
            .and_then(|live| live.registry.get_by_id(id).map(|h| (live, h)));
        let dispatcher = self.dispatcher();
        let events = dispatcher.events_for(&channel.domain).ok_or_else(|| {
            ServiceError::Scenario(crate::scenario::ScenarioError::Unavailable(
                "no event log for the channel's domain".into(),
            ))
        })?;
        let (lane, real): (_, Arc<dyn crate::scenario::ChannelHost>) =
            match (served, self.live_node()) {
                (Some((_, handle)), _) => (
                    handle.stats.lane.clone(),
                    handle.host(events, dispatcher.state()),
                ),
                (None, Some(live)) => (
                    Arc::default(),
                    Arc::new(crate::actors::scenario_host::ScenarioHost {
                        sessions: Arc::new(crate::actors::sessions::SessionTable::new(
                            live.outbound.clone(),
                        )),
                        events: events.clone(),
                        state: dispatcher.state().cloned(),
                    }),
                ),
                (None, None) => (Arc::default(), Arc::new(crate::scenario::NoHost)),
            };
        let source = match (&draft, &sample) {
            (Some(d), _) => d.clone(),
            (None, Sample::Webhook(_)) => channel.webhook_scenario.clone(),
            (None, Sample::Websocket(_)) => channel.websocket_scenario.clone(),
        };
        let host = Arc::new(
            DryHost::new(
                channel.clone(),
                real,
                live,
                mocks,
                self.config().dry_run_max_recorded_bytes,
            )
            .with_state(dispatcher.state().cloned()),
        );
        let params = sample.params(&channel);
        let pending = dispatcher
            .dry_run(&lane, channel.clone(), source, params, host.clone())
            .map_err(ServiceError::Scenario)?;
        let ended = tokio::time::timeout(dispatcher.timeout() + REPLY_GRACE, pending)
            .await
            .map_err(|_| ServiceError::Scenario(crate::scenario::ScenarioError::Timeout))?
            .map_err(|_| ServiceError::Scenario(crate::scenario::ScenarioError::Panicked))?;
        // Refused at its turn in the queue: the node is busy, not the script wrong.
        if let Err(e @ crate::scenario::ScenarioError::QueueFull { .. }) = &ended.outcome {
            return Err(ServiceError::Scenario(e.clone()));
        }
        Ok(host.report(ended, &sample, draft.is_some(), channel.version))
    }
}
