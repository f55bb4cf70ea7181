//! The `http` runtime: fronts an external scenario engine. Each run POSTs the script
//! source's identity and the start parameters as JSON to the configured URL and takes
//! `response_code`, `response_content` and `response_headers` from the JSON reply.
//!
//! Request:  `{"channel": {...}, "script": "<source>",
//!             "params": ["<startparam(1)>", ...]}`
//! Reply:    `{"response_code": 200, "response_content": "...", "response_headers": {...}}`
//! (every field optional). A non-2xx reply or an unreadable body is a scenario error.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{CompileError, Compiled, RunContext, ScenarioError, ScenarioReply, ScenarioRuntime};

/// The largest engine reply read.
const MAX_ENGINE_REPLY: u64 = 16 * 1024 * 1024;

pub struct HttpRuntime {
    url: String,
    agent: ureq::Agent,
}

impl HttpRuntime {
    pub fn new(url: String) -> HttpRuntime {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .redirects(0)
            .build();
        HttpRuntime { url, agent }
    }
}

impl ScenarioRuntime for HttpRuntime {
    fn name(&self) -> &'static str {
        "http"
    }

    /// The remote engine owns the language: the source is kept and sent along.
    fn compile(&self, source: &str) -> Result<Compiled, CompileError> {
        Ok(Compiled(Arc::new(source.to_string())))
    }

    fn run(&self, script: &Compiled, ctx: RunContext<'_>) -> Result<ScenarioReply, ScenarioError> {
        let source = script
            .0
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        let left = ctx.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ScenarioError::Timeout);
        }
        let body = serde_json::json!({
            "channel": serde_json::from_str::<serde_json::Value>(&crate::channels::scenario_json(ctx.channel)).unwrap_or_default(),
            "script": source,
            "params": ctx.params.to_vec(),
        });
        // The remote engine's time is a wait: the compute slot goes to another run.
        let raw = super::pool::blocking(|| -> Result<Vec<u8>, ScenarioError> {
            let response = match self.agent.post(&self.url).timeout(left).send_json(body) {
                Ok(r) => r,
                Err(ureq::Error::Status(code, _)) => {
                    return Err(ScenarioError::Script(
                        format!("scenario engine answered {code}").into(),
                    ));
                }
                Err(ureq::Error::Transport(t)) => {
                    if Instant::now() >= ctx.deadline {
                        return Err(ScenarioError::Timeout);
                    }
                    return Err(ScenarioError::Unavailable(t.to_string()));
                }
            };
            let mut raw = Vec::new();
            response
                .into_reader()
                .take(MAX_ENGINE_REPLY)
                .read_to_end(&mut raw)
                .map_err(|e| {
                    ScenarioError::Unavailable(format!("reading the engine reply: {e}"))
                })?;
            Ok(raw)
        })?;
        let value: serde_json::Value = serde_json::from_slice(&raw)
            .map_err(|e| ScenarioError::Script(format!("engine reply is not JSON: {e}").into()))?;
        let mut reply = ScenarioReply::default();
        if let Some(code) = value.get("response_code").filter(|v| !v.is_null()) {
            reply.code = code
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .ok_or_else(|| {
                    ScenarioError::InvalidReply("response_code must be a number".into())
                })?;
        }
        match value.get("response_content") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) => reply.content = s.as_bytes().to_vec(),
            Some(other) => reply.content = other.to_string().into_bytes(),
        }
        match value.get("response_headers") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => {}
            Some(serde_json::Value::String(s)) => {
                let parsed: serde_json::Value = serde_json::from_str(s).map_err(|e| {
                    ScenarioError::InvalidReply(format!("response_headers is not JSON: {e}"))
                })?;
                reply.headers = ScenarioReply::headers_from_json(&parsed)?;
            }
            Some(other) => reply.headers = ScenarioReply::headers_from_json(other)?,
        }
        reply.validated()
    }
}
