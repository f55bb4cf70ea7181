//! Integration channels: the input accepted by the admin API and CLI, its validation,
//! and the service that stores changes and applies them live to this node.

pub mod authoring;
mod executions;
pub mod guards;
pub mod service;
pub(crate) mod validate;

pub use authoring::DryRunInput;
pub use service::{ChannelService, LiveNode, ServiceError};
pub use validate::{ChannelInput, ValidationError, generate_token};

use serde::Serialize;

use crate::db::models::Channel;

/// Channel kinds.
pub const KIND_PUBLIC: &str = "public";
pub const KIND_EVENTING: &str = "eventing";

/// How a channel is shown by the admin API. Outgoing tokens are masked unless asked.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChannelView {
    pub id: String,
    pub domain: String,
    pub code: String,
    pub kind: String,
    pub wait_for_completion: bool,
    pub ws_role: String,
    pub token: String,
    pub outgoing_url: String,
    pub outgoing_token_primary: String,
    pub outgoing_token_secondary: String,
    pub webhook_scenario: String,
    pub websocket_scenario: String,
    pub comment: String,
    pub enabled: bool,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    pub ws_hello: bool,
    pub event_types: Vec<String>,
    /// Networks callers must come from (empty: any).
    pub allow_ips: Vec<String>,
    pub rate_limit: Option<guards::RateLimitSettings>,
    /// The secret is masked unless asked.
    pub verify: Option<guards::VerifySettings>,
    pub cors: Option<guards::CorsSettings>,
    /// Which runs are recorded in the execution history: `off`, `errors`, `all`.
    pub history: String,
}

/// The channel's event type patterns (empty: all types).
pub fn event_types_of(c: &Channel) -> Vec<String> {
    if c.event_types.is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&c.event_types).unwrap_or_default()
    }
}

/// What a masked secret reads as: empty stays empty so that "not set" is visible.
pub fn mask(secret: &str) -> String {
    if secret.is_empty() {
        String::new()
    } else {
        "********".to_string()
    }
}

/// The URL with any password in it replaced (an `ftp://user:pass@host` URL carries a
/// secret that admin reads and scenarios must not see).
pub fn url_without_password(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("********"));
            u.to_string()
        }
        _ => raw.to_string(),
    }
}

pub fn rfc3339_millis(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

impl ChannelView {
    pub fn new(c: &Channel, reveal_secrets: bool) -> ChannelView {
        let secret = |s: &str| {
            if reveal_secrets {
                s.to_string()
            } else {
                mask(s)
            }
        };
        let guards = guards::GuardSettings::parse(&c.guards).unwrap_or_default();
        let verify = guards.verify.map(|mut v| {
            if !reveal_secrets {
                v.mask_secret();
            }
            v
        });
        ChannelView {
            id: c.id.clone(),
            domain: c.domain.clone(),
            code: c.code.clone(),
            kind: c.kind.clone(),
            wait_for_completion: c.wait_for_completion,
            ws_role: c.ws_role.clone(),
            token: c.token.clone(),
            outgoing_url: if reveal_secrets {
                c.outgoing_url.clone()
            } else {
                url_without_password(&c.outgoing_url)
            },
            outgoing_token_primary: secret(&c.outgoing_token_primary),
            outgoing_token_secondary: secret(&c.outgoing_token_secondary),
            webhook_scenario: c.webhook_scenario.clone(),
            websocket_scenario: c.websocket_scenario.clone(),
            comment: c.comment.clone(),
            enabled: c.enabled,
            version: c.version,
            created_at: rfc3339_millis(c.created_at),
            updated_at: rfc3339_millis(c.updated_at),
            ws_hello: c.ws_hello,
            event_types: event_types_of(c),
            allow_ips: guards.allow_ips,
            rate_limit: guards.rate_limit,
            verify,
            cors: guards.cors,
            history: crate::executions::History::of(c).as_str().to_string(),
        }
    }
}

/// The secrets a run of this channel's scripts must never write down (its token,
/// outgoing tokens and `verify` secret; only channels with guards parse anything).
pub fn run_secrets(c: &Channel) -> crate::redact::Secrets {
    let signing = guards::secrets_of(c);
    crate::redact::Secrets::new(
        [
            c.token.as_str(),
            c.outgoing_token_primary.as_str(),
            c.outgoing_token_secondary.as_str(),
        ]
        .into_iter()
        .chain(signing.iter().map(String::as_str)),
    )
}

/// The channel as scenarios see it in `startparam(1)`: every setting but the secrets
/// and the scripts themselves.
pub fn scenario_json(c: &Channel) -> String {
    serde_json::json!({
        "id": c.id,
        "domain": c.domain,
        "code": c.code,
        "kind": c.kind,
        "wait_for_completion": c.wait_for_completion,
        "ws_role": c.ws_role,
        "outgoing_url": url_without_password(&c.outgoing_url),
        "comment": c.comment,
        "enabled": c.enabled,
        "version": c.version,
    })
    .to_string()
}

/// The threads channel actors run on: one per core, a channel always on the same one
/// (by its id), so that one busy channel does not hold up the others' websockets.
#[derive(Clone)]
pub struct ChannelArbiters(std::sync::Arc<[actix::ArbiterHandle]>);

impl ChannelArbiters {
    /// Starts `n` arbiter threads (at least one); they live until stopped
    /// (`http::state::AppState::stop_background`).
    pub fn start(n: usize) -> ChannelArbiters {
        let handles: Vec<actix::ArbiterHandle> = (0..n.max(1))
            .map(|_| actix::Arbiter::new().handle())
            .collect();
        ChannelArbiters(handles.into())
    }

    /// Every arbiter (to stop them).
    pub fn handles(&self) -> &[actix::ArbiterHandle] {
        &self.0
    }

    /// The arbiter of a channel.
    pub fn for_channel(&self, id: &str) -> &actix::ArbiterHandle {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut hasher);
        &self.0[(hasher.finish() % self.0.len() as u64) as usize]
    }
}
