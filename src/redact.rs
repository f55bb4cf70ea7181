//! Keeping secrets and control characters out of what the gateway writes down: log
//! lines (every format, script lines included) and error bodies. One module, so that a
//! new place that writes text has one thing to call.
//!
//! Three layers, each cheap:
//! - paths are canonicalised the way a router would read them (percent-decoded, `//`
//!   collapsed, dot segments resolved) before the token after `/api/token/v1/` or
//!   `/ws/token/v1/` is masked, and any remaining token-shaped run in them is masked
//!   too ([`log_path`]);
//! - a run's own secrets (its channel's token and outgoing tokens) are replaced in what
//!   the script logs and in its error messages ([`Secrets`]);
//! - every logged value passes [`Redactor::clean`]: the process-wide secrets (admin
//!   tokens) are replaced, any token-shaped run that is a live channel token of a node
//!   in this process is masked, and control characters are escaped so that a value
//!   cannot forge a line;
//! - what matches a configured secret pattern (`redact_patterns`: regular expressions;
//!   the first capture group when the pattern has one, else the whole match) is masked
//!   too, in logs and execution records alike.

use std::borrow::Cow;
use std::sync::{OnceLock, RwLock, Weak};

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Channel tokens are 32 characters of URL-safe base64 (`channels::generate_token`).
pub const TOKEN_LEN: usize = 32;

/// Values longer than this are scanned for tokens only in their first part: log lines
/// are bounded well below it (scenario log budget), the scan must stay cheap.
const SCAN_LIMIT: usize = 64 * 1024;

fn token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Who can tell whether a candidate is a live channel token (the channel registry).
pub trait TokenIndex: Send + Sync {
    fn is_token(&self, candidate: &str) -> bool;
}

/// The secrets this process knows of, for every log line and error body.
#[derive(Default)]
pub struct Redactor {
    secrets: RwLock<Vec<String>>,
    indexes: RwLock<Vec<Weak<dyn TokenIndex>>>,
    patterns: RwLock<Vec<regex::Regex>>,
}

/// The process's redactor: one per process, since log drains are built before the
/// nodes whose secrets they must hide (and tests run several nodes in one process).
pub fn redactor() -> &'static Redactor {
    static REDACTOR: OnceLock<Redactor> = OnceLock::new();
    REDACTOR.get_or_init(Redactor::default)
}

impl Redactor {
    /// A secret to replace wherever it appears (an admin token). Short strings are
    /// ignored: masking every "a" would destroy the log and hide nothing.
    pub fn add_secret(&self, secret: &str) {
        if secret.len() < 8 {
            return;
        }
        if let Ok(mut secrets) = self.secrets.write()
            && !secrets.iter().any(|s| s == secret)
        {
            secrets.push(secret.to_string());
        }
    }

    /// Secret patterns (regular expressions) to mask wherever they match; a pattern
    /// with a capture group masks the first group only (`password=(\S+)`). An invalid
    /// pattern is refused, naming it.
    pub fn add_patterns(&self, patterns: &[String]) -> Result<(), String> {
        let compiled = patterns
            .iter()
            .map(|p| regex::Regex::new(p).map_err(|e| format!("{p:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if let Ok(mut known) = self.patterns.write() {
            for re in compiled {
                if !known.iter().any(|k| k.as_str() == re.as_str()) {
                    known.push(re);
                }
            }
        }
        Ok(())
    }

    /// A node's channel registry: its tokens are masked wherever they appear. Held
    /// weakly; a stopped node's registry drops out.
    pub fn add_index(&self, index: Weak<dyn TokenIndex>) {
        if let Ok(mut indexes) = self.indexes.write() {
            indexes.retain(|w| w.strong_count() > 0);
            indexes.push(index);
        }
    }

    /// `text` as it may be written down: known secrets and live tokens masked,
    /// control characters escaped.
    pub fn clean<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let text = self.mask(text);
        match escape_controls(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(s) => Cow::Owned(s),
        }
    }

    /// Like [`Redactor::clean`] without the escaping: for JSON, which escapes itself.
    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let text = self.mask_secrets(text);
        let text = match self.mask_live_tokens(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(s) => Cow::Owned(s),
        };
        match self.mask_patterns(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(s) => Cow::Owned(s),
        }
    }

    fn mask_patterns<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let Ok(patterns) = self.patterns.read() else {
            return Cow::Borrowed(text);
        };
        let mut out = Cow::Borrowed(text);
        for re in patterns.iter() {
            let mut hits: Vec<(usize, usize)> = Vec::new();
            for caps in re.captures_iter(&out) {
                if let Some(m) = caps.get(1).or_else(|| caps.get(0))
                    && !m.is_empty()
                {
                    hits.push((m.start(), m.end()));
                }
            }
            if hits.is_empty() {
                continue;
            }
            let mut masked = String::with_capacity(out.len());
            let mut last = 0;
            for (from, to) in hits {
                masked.push_str(&out[last..from]);
                masked.push_str(MASK);
                last = to;
            }
            masked.push_str(&out[last..]);
            out = Cow::Owned(masked);
        }
        out
    }

    fn mask_secrets<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let Ok(secrets) = self.secrets.read() else {
            return Cow::Borrowed(text);
        };
        replace_all(text, secrets.iter().map(String::as_str))
    }

    fn mask_live_tokens<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let Ok(indexes) = self.indexes.read() else {
            return Cow::Borrowed(text);
        };
        // Indexes are looked at only for token-shaped runs (rare in a log value).
        mask_token_runs(text, |candidate| {
            indexes
                .iter()
                .any(|index| index.upgrade().is_some_and(|i| i.is_token(candidate)))
        })
    }
}

/// Every window of [`TOKEN_LEN`] token characters for which `is_token` holds, masked.
fn mask_token_runs<'a>(text: &'a str, is_token: impl Fn(&str) -> bool) -> Cow<'a, str> {
    let bytes = text.as_bytes();
    let scan = bytes.len().min(SCAN_LIMIT);
    let mut hits: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < scan {
        if !token_char(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < scan && token_char(bytes[i]) {
            i += 1;
        }
        let mut at = start;
        while at + TOKEN_LEN <= i {
            // Token characters are ASCII: every offset here is a char boundary.
            if is_token(&text[at..at + TOKEN_LEN]) {
                hits.push((at, at + TOKEN_LEN));
                at += TOKEN_LEN;
            } else {
                at += 1;
            }
        }
    }
    if hits.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (from, to) in hits {
        out.push_str(&text[last..from]);
        out.push_str(MASK);
        last = to;
    }
    out.push_str(&text[last..]);
    Cow::Owned(out)
}

/// `text` with every occurrence of each secret replaced by [`MASK`].
fn replace_all<'a, 's>(text: &'a str, secrets: impl Iterator<Item = &'s str>) -> Cow<'a, str> {
    let mut out = Cow::Borrowed(text);
    for secret in secrets {
        if !secret.is_empty() && out.contains(secret) {
            out = Cow::Owned(out.replace(secret, MASK));
        }
    }
    out
}

/// Control characters (C0, DEL, C1) written as `\n`, `\t`, `\r` or `\u{..}`: a value
/// can never start a new line or move a terminal's cursor.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The secrets of one run (its channel's token and outgoing tokens), replaced in what
/// the script writes to the log and in its error messages.
#[derive(Debug, Clone, Default)]
pub struct Secrets(Vec<String>);

impl Secrets {
    pub fn new<'s>(secrets: impl IntoIterator<Item = &'s str>) -> Secrets {
        Secrets(
            secrets
                .into_iter()
                .filter(|s| s.len() >= 8)
                .map(str::to_string)
                .collect(),
        )
    }

    /// These secrets and `more` (those long enough to mask).
    pub fn with<'s>(&self, more: impl IntoIterator<Item = &'s str>) -> Secrets {
        let mut all = self.0.clone();
        all.extend(
            more.into_iter()
                .filter(|s| s.len() >= 8)
                .map(str::to_string),
        );
        Secrets(all)
    }

    pub fn hide<'a>(&self, text: &'a str) -> Cow<'a, str> {
        replace_all(text, self.0.iter().map(String::as_str))
    }
}

/// A request path as the router reads it: percent-decoded once (invalid UTF-8 kept
/// lossily), empty and `.` segments dropped, `..` taking the previous one away.
pub fn canonical_path(path: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split(['/', '\\']) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// A request path fit for a log line, whatever form it came in: canonical, the token
/// segment of the token routes masked, any other token-shaped run masked, control
/// characters escaped.
pub fn log_path(path: &str) -> String {
    let canonical = canonical_path(path);
    let mut masked = canonical.clone();
    for prefix in ["/api/token/v1", "/ws/token/v1"] {
        if let Some(rest) = canonical.strip_prefix(prefix)
            && let Some(rest) = rest.strip_prefix('/')
        {
            let tail = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
            masked = format!("{prefix}/{MASK}{tail}");
        }
    }
    // A token sent anywhere else (`/API/token/v1/…`, `/x?…` is not in the path) is
    // masked by shape: paths do not carry 32-character opaque words otherwise.
    let masked = mask_token_runs(&masked, |_| true).into_owned();
    escape_controls(&masked).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const TOKEN: &str = "AbCdEfGhIjKlMnOpQrStUvWxYz012345";

    #[test]
    fn every_path_form_is_masked() {
        for path in [
            format!("/api/token/v1/{TOKEN}"),
            format!("/api/token/v1//{TOKEN}"),
            format!("/api/token/v1/{TOKEN}/"),
            format!("/api/token/v1/x/../{TOKEN}"),
            format!("/api/token/v1/./{TOKEN}/a"),
            format!("/api/./token//v1/{TOKEN}"),
            format!("/api/token/v1/%{:02X}{}", TOKEN.as_bytes()[0], &TOKEN[1..]),
            format!("/ws/token/v1/{TOKEN}/subscribe"),
            format!("/API/TOKEN/V1/{TOKEN}"),
            format!("/elsewhere/{TOKEN}x"),
        ] {
            let logged = log_path(&path);
            assert!(!logged.contains(TOKEN), "{path} logged as {logged}");
            assert!(logged.contains(MASK), "{path} logged as {logged}");
        }
        assert_eq!(
            log_path(&format!("/api/token/v1/{TOKEN}/a/b")),
            "/api/token/v1/***/a/b"
        );
        assert_eq!(log_path("/admin/v1/channels"), "/admin/v1/channels");
        assert_eq!(log_path("/a%0Ab"), "/a\\nb");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("plain"), Cow::Borrowed("plain"));
        assert_eq!(
            escape_controls("a\nb\r\tc\u{1b}[31m\u{7f}\u{85}"),
            "a\\nb\\r\\tc\\u{1b}[31m\\u{7f}\\u{85}"
        );
    }

    struct One(&'static str);
    impl TokenIndex for One {
        fn is_token(&self, candidate: &str) -> bool {
            candidate == self.0
        }
    }

    #[test]
    fn live_tokens_and_secrets_are_masked_anywhere() {
        let redactor = Redactor::default();
        let index: Arc<dyn TokenIndex> = Arc::new(One(TOKEN));
        redactor.add_index(Arc::downgrade(&index));
        redactor.add_secret("admin-secret-123");
        let text = format!("got {TOKEN} and x{TOKEN}y, key admin-secret-123\n");
        let cleaned = redactor.clean(&text);
        assert_eq!(cleaned, "got *** and x***y, key ***\\n");
        // Other 32-character words stay readable.
        let other = "ZZCdEfGhIjKlMnOpQrStUvWxYz012345";
        assert_eq!(redactor.clean(other), other);
        drop(index);
        assert_eq!(redactor.clean(TOKEN), TOKEN);
    }

    #[test]
    fn configured_patterns_are_masked() {
        let redactor = Redactor::default();
        redactor
            .add_patterns(&["sk_live_[0-9a-z]+".into(), "pin=([0-9]+)".into()])
            .unwrap();
        assert_eq!(
            redactor.mask("key sk_live_abc123 and pin=4321&x=1"),
            "key *** and pin=***&x=1"
        );
        assert_eq!(redactor.mask("nothing here"), Cow::Borrowed("nothing here"));
        assert!(redactor.add_patterns(&["(unclosed".into()]).is_err());
    }

    #[test]
    fn a_runs_secrets_are_hidden() {
        let secrets = Secrets::new(["primary-token-1", "short", ""]);
        assert_eq!(secrets.hide("Bearer primary-token-1 ok"), "Bearer *** ok");
        assert_eq!(secrets.hide("short stays"), "short stays");
    }
}
