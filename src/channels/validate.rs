//! Validation of channel input, shared by the admin API and the CLI.

use base64::Engine as _;
use serde::Deserialize;

use super::{KIND_EVENTING, KIND_PUBLIC};
use crate::db::models::Channel;
use crate::scenario::CompileError;

/// A create or update body. Absent (or null) fields are left as they are on update.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelInput {
    /// Unique in the domain: letters, digits, `_`, `.` and `-`. Required on create.
    #[schema(pattern = r"^[A-Za-z0-9_.\-]{1,64}$")]
    pub code: Option<String>,
    /// `public` or `eventing`. Required on create.
    #[schema(pattern = "^(public|eventing)$")]
    pub kind: Option<String>,
    pub wait_for_completion: Option<bool>,
    /// One node role (no commas); spaces around it are trimmed.
    #[schema(pattern = r"^[^,\u0000]*$", max_length = 64)]
    pub ws_role: Option<String>,
    /// Empty (not set), or an http, https, ftp or ftps URL with a host.
    #[schema(max_length = 4096)]
    pub outgoing_url: Option<String>,
    /// Printable ASCII without spaces.
    #[schema(pattern = "^[!-~]*$", max_length = 4096)]
    pub outgoing_token_primary: Option<String>,
    #[schema(pattern = "^[!-~]*$", max_length = 4096)]
    pub outgoing_token_secondary: Option<String>,
    /// A Rhai script; one that does not compile is a 400 with its line and column.
    #[schema(max_length = 1048576)]
    pub webhook_scenario: Option<String>,
    #[schema(max_length = 1048576)]
    pub websocket_scenario: Option<String>,
    #[schema(pattern = r"^[^\u0000]*$", max_length = 4096)]
    pub comment: Option<String>,
    pub enabled: Option<bool>,
    pub ws_hello: Option<bool>,
    /// Eventing channels: the event type patterns exposed (`call.*`, `*`, exact); empty: all.
    #[schema(max_items = 100, value_type = Option<Vec<crate::events::patterns::Pattern>>)]
    pub event_types: Option<Vec<String>>,
    /// Networks callers must come from (CIDRs or addresses); others get the same 404
    /// as an unknown token. `[]` removes the list.
    pub allow_ips: Option<Vec<String>>,
    /// Token bucket for the webhook, per node; beyond: 429 with Retry-After. `{}`
    /// removes it.
    #[schema(value_type = Option<SetOrRemove<super::guards::RateLimitSettings>>)]
    pub rate_limit: Option<serde_json::Value>,
    /// The signature every webhook request must carry; otherwise 401 before any
    /// scenario. `{}` removes it; a masked secret (`********`) keeps the stored one.
    #[schema(value_type = Option<SetOrRemove<super::guards::VerifySettings>>)]
    pub verify: Option<serde_json::Value>,
    /// Browser calls from other origins; preflights answered by the gateway. `{}`
    /// removes it.
    #[schema(value_type = Option<SetOrRemove<super::guards::CorsSettings>>)]
    pub cors: Option<serde_json::Value>,
    /// Which runs of the channel's scenario are recorded in its execution history
    /// (`GET /admin/v1/channels/{id}/executions`): `off`, `errors` (the default) or `all`.
    pub history: Option<String>,
    /// Why this save was made, kept with the version it creates
    /// (`GET /admin/v1/channels/{id}/versions`); not a channel setting.
    #[schema(pattern = r"^[^\u0000]*$", max_length = 4096)]
    pub note: Option<String>,
    /// Present only to be refused with a clear message: the token is immutable (so
    /// not in the schema, which allows no other fields).
    #[serde(default)]
    #[schema(ignore)]
    pub token: Option<serde_json::Value>,
}

/// A guard's settings as written (schema only): the settings, or `{}` to remove them.
#[derive(utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum SetOrRemove<T> {
    Set(T),
    Remove(Removal),
}

/// `{}`: removes a setting (schema only).
#[derive(utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Removal {}

/// A field that failed validation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
    /// Where a scenario failed to compile.
    pub line: Option<usize>,
    pub column: Option<usize>,
}

impl ValidationError {
    pub fn new(field: &str, message: impl Into<String>) -> ValidationError {
        ValidationError {
            field: field.to_string(),
            message: message.into(),
            line: None,
            column: None,
        }
    }

    pub fn scenario(field: &str, err: CompileError) -> ValidationError {
        ValidationError {
            field: field.to_string(),
            message: err.message,
            line: err.line,
            column: err.column,
        }
    }
}

const MAX_CODE_LEN: usize = 64;
pub(crate) const MAX_TEXT_LEN: usize = 4096;
pub(crate) const MAX_SCENARIO_LEN: usize = 1024 * 1024;

/// A new local token: 192 random bits, URL-safe base64 (32 characters).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 24];
    // The OS random source failing is not recoverable; fall back to UUIDv4 entropy.
    if getrandom::fill(&mut bytes).is_err() {
        let a = uuid::Uuid::new_v4();
        let b = uuid::Uuid::new_v4();
        bytes[..16].copy_from_slice(a.as_bytes());
        bytes[16..].copy_from_slice(&b.as_bytes()[..8]);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn validate_code(code: &str) -> Result<(), ValidationError> {
    if code.is_empty() || code.len() > MAX_CODE_LEN {
        return Err(ValidationError::new(
            "code",
            format!("must be 1 to {MAX_CODE_LEN} characters long"),
        ));
    }
    if let Some(bad) = code
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(ValidationError::new(
            "code",
            format!("may hold only letters, digits, '_', '.' and '-' (found {bad:?})"),
        ));
    }
    Ok(())
}

pub fn validate_kind(kind: &str) -> Result<(), ValidationError> {
    if kind == KIND_PUBLIC || kind == KIND_EVENTING {
        Ok(())
    } else {
        Err(ValidationError::new(
            "kind",
            format!("must be \"{KIND_PUBLIC}\" or \"{KIND_EVENTING}\""),
        ))
    }
}

pub fn validate_history(history: &str) -> Result<(), ValidationError> {
    if crate::executions::History::parse(history).is_some() {
        Ok(())
    } else {
        Err(ValidationError::new(
            "history",
            format!(
                "must be one of {}",
                crate::executions::History::NAMES
                    .map(|n| format!("\"{n}\""))
                    .join(", ")
            ),
        ))
    }
}

/// An empty URL means "not set"; otherwise http, https, ftp or ftps with a host.
pub fn validate_outgoing_url(raw: &str) -> Result<(), ValidationError> {
    if raw.is_empty() {
        return Ok(());
    }
    let err = |m: &str| ValidationError::new("outgoing_url", m);
    let lower = raw.to_ascii_lowercase();
    if !["http://", "https://", "ftp://", "ftps://"]
        .iter()
        .any(|p| lower.starts_with(p))
    {
        return Err(err("must start with http://, https://, ftp:// or ftps://"));
    }
    let parsed = url::Url::parse(raw).map_err(|e| err(&format!("is not a valid URL: {e}")))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(err("must name a host"));
    }
    Ok(())
}

/// Outgoing tokens travel in an HTTP header (or as an FTP password): printable ASCII.
fn validate_token(field: &str, value: &str) -> Result<(), ValidationError> {
    validate_text(field, value, MAX_TEXT_LEN)?;
    if let Some(bad) = value.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(ValidationError::new(
            field,
            format!("must be printable ASCII without spaces (found {bad:?})"),
        ));
    }
    Ok(())
}

pub(crate) fn validate_text(field: &str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.len() > max {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max} bytes"),
        ));
    }
    if value.contains('\0') {
        return Err(ValidationError::new(
            field,
            "must not contain NUL characters",
        ));
    }
    Ok(())
}

impl ChannelInput {
    /// Parses a JSON body; serde's message names the offending field.
    pub fn from_json(body: &[u8]) -> Result<ChannelInput, ValidationError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ValidationError::new("body", "a JSON object is required"));
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

    /// Applies this input onto `channel` (a fresh one for create) and checks every
    /// field. Scenario compilation is checked by the caller, which owns the runtime.
    pub fn apply(&self, channel: &mut Channel) -> Result<(), ValidationError> {
        if self.token.is_some() {
            return Err(ValidationError::new(
                "token",
                "is generated by the gateway and cannot be set or changed",
            ));
        }
        if let Some(note) = &self.note {
            validate_text("note", note, MAX_TEXT_LEN)?;
        }
        if let Some(code) = &self.code {
            validate_code(code)?;
            channel.code = code.clone();
        }
        if let Some(kind) = &self.kind {
            validate_kind(kind)?;
            channel.kind = kind.clone();
        }
        if let Some(v) = self.wait_for_completion {
            channel.wait_for_completion = v;
        }
        if let Some(role) = &self.ws_role {
            let role = role.trim();
            if role.contains(',') {
                return Err(ValidationError::new("ws_role", "must be a single role"));
            }
            validate_text("ws_role", role, MAX_CODE_LEN)?;
            channel.ws_role = role.to_string();
        }
        if let Some(url) = &self.outgoing_url {
            let url = url.trim();
            validate_outgoing_url(url)?;
            channel.outgoing_url = url.to_string();
        }
        for (field, token) in [
            ("outgoing_token_primary", &self.outgoing_token_primary),
            ("outgoing_token_secondary", &self.outgoing_token_secondary),
        ] {
            if let Some(t) = token {
                validate_token(field, t)?;
            }
        }
        let texts: [(&str, &Option<String>, &mut String, usize); 5] = [
            (
                "outgoing_token_primary",
                &self.outgoing_token_primary,
                &mut channel.outgoing_token_primary,
                MAX_TEXT_LEN,
            ),
            (
                "outgoing_token_secondary",
                &self.outgoing_token_secondary,
                &mut channel.outgoing_token_secondary,
                MAX_TEXT_LEN,
            ),
            (
                "webhook_scenario",
                &self.webhook_scenario,
                &mut channel.webhook_scenario,
                MAX_SCENARIO_LEN,
            ),
            (
                "websocket_scenario",
                &self.websocket_scenario,
                &mut channel.websocket_scenario,
                MAX_SCENARIO_LEN,
            ),
            ("comment", &self.comment, &mut channel.comment, MAX_TEXT_LEN),
        ];
        for (field, input, target, max) in texts {
            if let Some(value) = input {
                validate_text(field, value, max)?;
                *target = value.clone();
            }
        }
        if let Some(v) = self.enabled {
            channel.enabled = v;
        }
        if let Some(v) = self.ws_hello {
            channel.ws_hello = v;
        }
        if let Some(patterns) = &self.event_types {
            if patterns.len() > 100 {
                return Err(ValidationError::new("event_types", "at most 100 patterns"));
            }
            for (i, p) in patterns.iter().enumerate() {
                crate::events::patterns::validate(&format!("event_types[{i}]"), p)?;
            }
            channel.event_types = if patterns.is_empty() {
                String::new()
            } else {
                serde_json::to_string(patterns).unwrap_or_default()
            };
        }
        let guards = super::guards::GuardInput {
            allow_ips: self.allow_ips.as_deref(),
            rate_limit: self.rate_limit.as_ref(),
            verify: self.verify.as_ref(),
            cors: self.cors.as_ref(),
        };
        if !guards.is_empty() {
            channel.guards = super::guards::GuardSettings::apply(&channel.guards, &guards)?;
        }
        if let Some(history) = &self.history {
            validate_history(history)?;
            channel.history = history.clone();
        }
        // Checks that need the whole channel, after the fields are merged.
        validate_code(&channel.code)?;
        validate_kind(&channel.kind)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert!(validate_code("sales.crm-1_A").is_ok());
        assert!(validate_code("").is_err());
        assert!(validate_code(&"a".repeat(65)).is_err());
        assert!(validate_code("a b").is_err());
        assert!(validate_code("кириллица").is_err());
    }

    #[test]
    fn urls() {
        for ok in [
            "",
            "http://a",
            "https://a.b/c?d",
            "ftp://u:p@h/dir",
            "FTPS://h:990/",
        ] {
            assert!(validate_outgoing_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "a",
            "file:///etc/passwd",
            "http://",
            "https:// bad",
            "gopher://x",
        ] {
            assert!(validate_outgoing_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_are_url_safe_and_long() {
        let t = generate_token();
        assert_eq!(t.len(), 32);
        assert!(
            t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(t, generate_token());
    }
}
