//! Event type patterns: `*` (every type), `call.*` (every type under `call.`, at any
//! depth), or an exact type.

use crate::channels::ValidationError;

/// An event type pattern as `/openapi.json` shows it: `*`, `call.*` or `call.started`
/// (at most 128 characters before the `.*`).
#[derive(utoipa::ToSchema)]
#[schema(pattern = r"^(\*|[a-z0-9_\-]+(\.[a-z0-9_\-]+)*(\.\*)?)$")]
pub struct Pattern(#[allow(dead_code)] String);

pub fn validate(field: &str, pattern: &str) -> Result<(), ValidationError> {
    if pattern == "*" {
        return Ok(());
    }
    let exact = pattern.strip_suffix(".*").unwrap_or(pattern);
    super::validate_type(field, exact).map_err(|_| {
        ValidationError::new(
            field,
            format!("{pattern:?} is not a pattern: use an event type (call.started), a prefix (call.*) or *"),
        )
    })
}

pub fn matches(pattern: &str, event_type: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => event_type
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.')),
        None => pattern == event_type,
    }
}

/// Does any pattern of the list match? An empty list matches everything.
pub fn any_matches(patterns: &[String], event_type: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| matches(p, event_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_by_prefix_and_exactly() {
        assert!(matches("*", "a.b"));
        assert!(matches("call.*", "call.started"));
        assert!(matches("call.*", "call.leg.ended"));
        assert!(!matches("call.*", "call"));
        assert!(!matches("call.*", "callback.x"));
        assert!(matches("call.started", "call.started"));
        assert!(!matches("call.started", "call.started.x"));
        assert!(any_matches(&[], "x"));
        assert!(validate("f", "call.*").is_ok());
        assert!(validate("f", "*").is_ok());
        assert!(validate("f", "Call.*").is_err());
        assert!(validate("f", "call.*.x").is_err());
        assert!(validate("f", "").is_err());
    }
}
