//! What a scenario answers a waiting caller.

use super::ScenarioError;

/// Largest reply body a scenario may set.
pub const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;
/// Most reply headers a scenario may set.
pub const MAX_REPLY_HEADERS: usize = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioReply {
    pub code: u16,
    pub content: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Default for ScenarioReply {
    fn default() -> Self {
        ScenarioReply {
            code: 200,
            content: Vec::new(),
            headers: Vec::new(),
        }
    }
}

impl ScenarioReply {
    /// Checks what a scenario set, so that a bad reply is a scenario error rather than
    /// a malformed HTTP response.
    pub fn validated(self) -> Result<ScenarioReply, ScenarioError> {
        if !(100..=599).contains(&self.code) {
            return Err(ScenarioError::InvalidReply(format!(
                "response_code {} is not an HTTP status (100-599)",
                self.code
            )));
        }
        if self.content.len() > MAX_REPLY_BYTES {
            return Err(ScenarioError::InvalidReply(format!(
                "response_content is larger than {MAX_REPLY_BYTES} bytes"
            )));
        }
        if self.headers.len() > MAX_REPLY_HEADERS {
            return Err(ScenarioError::InvalidReply(format!(
                "more than {MAX_REPLY_HEADERS} response_headers"
            )));
        }
        for (name, value) in &self.headers {
            if actix_web::http::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ScenarioError::InvalidReply(format!(
                    "response_headers: {name:?} is not a header name"
                )));
            }
            if actix_web::http::header::HeaderValue::from_str(value).is_err() {
                return Err(ScenarioError::InvalidReply(format!(
                    "response_headers: the value of {name:?} is not a valid header value"
                )));
            }
        }
        Ok(self)
    }

    /// Reads `response_headers` given as a JSON object (string values; others are
    /// written as JSON).
    pub fn headers_from_json(
        value: &serde_json::Value,
    ) -> Result<Vec<(String, String)>, ScenarioError> {
        let obj = value.as_object().ok_or_else(|| {
            ScenarioError::InvalidReply("response_headers must be a map or a JSON object".into())
        })?;
        Ok(obj
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect())
    }
}
