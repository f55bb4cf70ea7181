//! The client side of the event-subscription websocket protocol (docs/eventing.md): the
//! frames a subscriber may send, parsed and checked before a session acts on them.

use serde::Deserialize;

use super::patterns;

/// A frame from a subscriber.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientOp {
    Subscribe {
        #[serde(default)]
        types: Vec<String>,
        since: Option<i64>,
        epoch: Option<String>,
    },
    Unsubscribe,
    Ping,
}

/// Why a frame is refused: the error frame's code and its message.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

/// Parses a text frame, and checks a subscription's type patterns.
pub fn parse(text: &str) -> Result<ClientOp, Refusal> {
    let op = serde_json::from_str::<ClientOp>(text).map_err(|e| Refusal {
        code: "bad_request",
        message: format!(
            "expected {{\"op\": \"subscribe\" | \"unsubscribe\" | \"ping\", ...}}: {e}"
        ),
    })?;
    if let ClientOp::Subscribe { types, .. } = &op {
        for (i, p) in types.iter().enumerate() {
            patterns::validate(&format!("types[{i}]"), p).map_err(|e| Refusal {
                code: "invalid_types",
                message: e.to_string(),
            })?;
        }
    }
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_or_are_refused_with_a_code() {
        assert!(matches!(parse(r#"{"op":"ping"}"#), Ok(ClientOp::Ping)));
        assert!(matches!(
            parse(r#"{"op":"subscribe","types":["call.*"],"since":3}"#),
            Ok(ClientOp::Subscribe { since: Some(3), .. })
        ));
        assert_eq!(parse(r#"{"op":"nope"}"#).unwrap_err().code, "bad_request");
        assert_eq!(parse("[").unwrap_err().code, "bad_request");
        assert_eq!(
            parse(r#"{"op":"subscribe","types":["Bad Type"]}"#)
                .unwrap_err()
                .code,
            "invalid_types"
        );
    }
}
