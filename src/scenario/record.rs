//! What a run did, as it is reported and stored: by dry runs ([`super::dry_run`]) and
//! by the execution history (`crate::executions`). One [`Masker`] turns what a script
//! saw and made into records — the channel's tokens and the process's known secrets
//! and secret patterns masked through [`crate::redact`] (the same redaction as the
//! logs), each text cut at a bound — so both report the same things the same way.

use std::sync::{Arc, LazyLock};

use aho_corasick::AhoCorasick;
use serde::{Deserialize, Serialize};

use super::outgoing::paths;
use super::{ScenarioError, ScenarioReply};
use crate::db::models::Channel;
use crate::redact::{MASK, Secrets, redactor};

/// A recorded text: secrets masked, cut at the node's bound.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Text {
    pub text: String,
    /// Bytes of the whole text (before any cut).
    pub bytes: usize,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// A log line of the script.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    pub level: String,
    pub message: String,
}

/// An outgoing call the script made or would have made.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallRecord {
    pub method: String,
    /// Where it goes, secrets (URL password, token-like query values, the channel's
    /// tokens) masked.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Text,
    /// `performed` (live), `mock`, or `not_performed` (answered 200 with an empty body).
    pub answered_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Text>,
    /// Why the call failed (the script sees it as an error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Latency: from the call to its answer.
    pub duration_ms: f64,
}

/// The reply the run gave (or would give).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplyRecord {
    pub code: u16,
    /// As they are sent (a webhook reply without a content type gets
    /// `application/octet-stream`).
    pub headers: Vec<(String, String)>,
    pub body: Text,
}

/// Why the run did not end correctly.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorRecord {
    /// As callers of the real run see it (`scenario_error`, `scenario_timeout`...);
    /// `scenario_syntax_error` when the script does not compile.
    pub code: String,
    /// The full message (the caller of a real run gets a generic one).
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

/// Masks and cuts what a run of one channel saw and made.
pub struct Masker {
    channel: Arc<Channel>,
    secrets: Secrets,
    max_bytes: usize,
}

/// Request and call headers whose values are always masked.
pub const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Extra bytes masked past a text's cut, so that a secret across the cut is found whole.
const CUT_MARGIN: usize = 256;

impl Masker {
    pub fn new(channel: Arc<Channel>, max_bytes: usize) -> Masker {
        // The token, the outgoing tokens and a `verify` secret.
        let secrets = crate::channels::run_secrets(&channel);
        Masker {
            channel,
            secrets,
            max_bytes,
        }
    }

    /// This masker, also hiding `more` (the credentials a request came with, say).
    pub fn with_secrets<'s>(&self, more: impl IntoIterator<Item = &'s str>) -> Masker {
        Masker {
            channel: self.channel.clone(),
            secrets: self.secrets.with(more),
            max_bytes: self.max_bytes,
        }
    }

    pub fn channel(&self) -> &Arc<Channel> {
        &self.channel
    }

    /// Bytes of a text that recording it reads (its bound and a margin): callers that
    /// copy a text to record it later copy no more.
    pub fn scan_bytes(&self) -> usize {
        self.max_bytes.saturating_add(CUT_MARGIN)
    }

    /// A text as recorded: the channel's secrets and the process's known secrets and
    /// patterns masked, cut at `max_bytes` (on a character boundary). Only the part
    /// kept (and a margin) is scanned.
    pub fn text(&self, raw: &str) -> Text {
        let bytes = raw.len();
        let scanned = cut(raw, self.max_bytes.saturating_add(CUT_MARGIN));
        let hidden = self.secrets.hide(scanned);
        let masked = redactor().mask(&hidden);
        let kept = cut(&masked, self.max_bytes);
        Text {
            text: kept.to_string(),
            bytes,
            truncated: kept.len() < masked.len() || scanned.len() < raw.len(),
        }
    }

    pub fn text_bytes(&self, raw: &[u8]) -> Text {
        let scanned = &raw[..raw.len().min(self.max_bytes.saturating_add(CUT_MARGIN))];
        let mut t = self.text(&String::from_utf8_lossy(scanned));
        t.truncated |= scanned.len() < raw.len();
        t.bytes = raw.len();
        t
    }

    /// A header as recorded: credentials and cookies (and any header named like a
    /// secret) masked whole, any other value masked like a text.
    pub fn header(&self, name: &str, value: &str) -> (String, String) {
        let value = if secret_header(name) {
            MASK.to_string()
        } else {
            self.text(value).text
        };
        (name.to_string(), value)
    }

    /// Where a call of the script goes, as recorded (secrets masked), or why it cannot
    /// go anywhere (the same refusals as the real client's).
    pub fn target(&self, path: &str) -> Result<String, String> {
        let base = self.channel.outgoing_url.as_str();
        if base.is_empty() {
            return Err("the channel has no outgoing_url".into());
        }
        let lower = base.to_ascii_lowercase();
        let joined = if lower.starts_with("ftp://") || lower.starts_with("ftps://") {
            let file = paths::join_path("", path)?;
            format!(
                "{}/{}",
                base.trim_end_matches('/'),
                file.trim_start_matches('/')
            )
        } else {
            paths::join_url(base, path)?
        };
        Ok(self.masked_url(&joined))
    }

    /// A URL with its password and token-like query values masked.
    pub fn masked_url(&self, raw: &str) -> String {
        let Ok(mut url) = url::Url::parse(raw) else {
            return self.text(raw).text;
        };
        if url.password().is_some() {
            let _ = url.set_password(Some(MASK));
        }
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if secret_name(&k) {
                        MASK.to_string()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        self.text(url.as_str()).text
    }

    /// A reply as recorded; `webhook` adds the content type a webhook reply gets.
    pub fn reply(&self, reply: &ScenarioReply, webhook: bool) -> ReplyRecord {
        let mut headers: Vec<(String, String)> = reply
            .headers
            .iter()
            .map(|(k, v)| self.header(k, v))
            .collect();
        if webhook
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            headers.push((
                "content-type".to_string(),
                "application/octet-stream".to_string(),
            ));
        }
        ReplyRecord {
            code: reply.code,
            headers,
            body: self.text_bytes(&reply.content),
        }
    }

    /// An error as recorded, with its line and column when known.
    pub fn error(&self, e: &ScenarioError) -> ErrorRecord {
        let (code, line, column) = match e {
            ScenarioError::Compile(c) => ("scenario_syntax_error", c.line, c.column),
            ScenarioError::Script(f) => (e.code(), f.line, f.column),
            _ => (e.code(), None, None),
        };
        let message = match e {
            ScenarioError::Compile(c) => c.message.clone(),
            other => other.to_string(),
        };
        ErrorRecord {
            code: code.to_string(),
            message: self.text(&message).text,
            line,
            column,
        }
    }

    /// A log line as recorded.
    pub fn log_line(&self, level: &str, text: &str) -> LogLine {
        LogLine {
            level: level.to_ascii_lowercase(),
            message: self.text(text).text,
        }
    }
}

/// `raw` cut to at most `max` bytes, on a character boundary.
fn cut(raw: &str, max: usize) -> &str {
    let mut at = raw.len().min(max);
    while !raw.is_char_boundary(at) {
        at -= 1;
    }
    &raw[..at]
}

/// Whether a header's value is a credential, masked whole: credentials, cookies, and
/// any header named like a secret (any case).
pub fn secret_header(name: &str) -> bool {
    SECRET_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name)) || secret_name(name)
}

/// Query parameter and header names whose values are masked.
pub fn secret_name(name: &str) -> bool {
    static NAMES: LazyLock<Option<AhoCorasick>> = LazyLock::new(|| {
        AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build([
                "token",
                "secret",
                "password",
                "passwd",
                "key",
                "signature",
                "sig",
                "auth",
            ])
            .ok()
    });
    match &*NAMES {
        Some(names) => names.is_match(name),
        // Unreachable (the patterns are fixed); masking more is the safe side.
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_masked_then_cut_and_headers_hidden() {
        let channel = Arc::new(Channel {
            token: "tok-0123456789abcdef".into(),
            outgoing_token_primary: "primary-secret-1".into(),
            ..Channel::default()
        });
        let m = Masker::new(channel, 7);
        let t = m.text("say primary-secret-1 twice");
        assert_eq!(t.text, "say ***");
        assert!(t.truncated);
        assert_eq!(t.bytes, 26);
        assert_eq!(m.header("Authorization", "Bearer x").1, MASK);
        assert_eq!(m.header("Cookie", "a=b").1, MASK);
        assert_eq!(m.header("X-Api-Key", "k").1, MASK);
        assert_eq!(m.header("X-Plain", "fine").1, "fine");
        let long = format!("{}tok-0123456789abcdef", "a".repeat(5));
        assert!(!m.text(&long).text.contains("tok-01"));
    }
}
