//! What a channel's scenarios reach: its websocket sessions (here or on another node of
//! the cluster), the domain's event log and the channel state store.

use std::sync::Arc;
use std::time::Instant;

use super::sessions::SessionTable;
use crate::scenario::ChannelHost;
use crate::scenario::channel_state::{StateError, StateStore};
use crate::scenario::pool::blocking;

/// What scenarios of one channel reach: its sessions, the domain's event log and the
/// channel state store.
pub struct ScenarioHost {
    pub sessions: Arc<SessionTable>,
    pub events: crate::events::EventService,
    pub state: Option<Arc<StateStore>>,
}

impl ScenarioHost {
    fn state(&self) -> Result<&StateStore, StateError> {
        self.state.as_deref().ok_or(StateError::Unavailable)
    }
}

impl ChannelHost for ScenarioHost {
    // A session on this node is reached at once; one elsewhere is a database wait,
    // made without holding a compute slot.
    fn ws_send(&self, code: &str, text: &str, deadline: Instant) -> Result<bool, String> {
        if self.sessions.send(code, text) {
            return Ok(true);
        }
        if !self.sessions.is_clustered() {
            return Ok(false);
        }
        blocking(|| self.sessions.send_anywhere(code, text, deadline))
    }

    fn ws_broadcast(&self, text: &str, deadline: Instant) -> Result<usize, String> {
        if !self.sessions.is_clustered() {
            return Ok(self.sessions.broadcast(text));
        }
        blocking(|| self.sessions.broadcast_everywhere(text, deadline))
    }

    fn ws_close(
        &self,
        code: &str,
        close_code: u16,
        reason: &str,
        deadline: Instant,
    ) -> Result<bool, String> {
        if self.sessions.close(code, close_code, reason) {
            return Ok(true);
        }
        if !self.sessions.is_clustered() {
            return Ok(false);
        }
        blocking(|| {
            self.sessions
                .close_anywhere(code, close_code, reason, deadline)
        })
    }

    fn ws_sessions(&self, deadline: Instant) -> Result<Vec<String>, String> {
        if !self.sessions.is_clustered() {
            return Ok(self.sessions.codes());
        }
        blocking(|| self.sessions.views_everywhere(deadline))
            .map(|views| views.into_iter().map(|v| v.code).collect())
    }

    fn emit_event(
        &self,
        event_type: &str,
        data: serde_json::Value,
        deadline: std::time::Instant,
    ) -> Result<i64, String> {
        let input = crate::events::EventInput {
            event_type: event_type.to_string(),
            data,
            occurred_at: None,
            idempotency_key: None,
        };
        let new = input
            .validate(None, crate::db::now_millis())
            .map_err(|e| e.to_string())?;
        let stored = self
            .events
            .publish_blocking(std::slice::from_ref(&new), deadline)
            .map_err(|e| format!("storing the event failed: {e}"))?;
        stored
            .first()
            .map(|(e, _)| e.id)
            .ok_or_else(|| "no event was stored".to_string())
    }

    fn state_get(
        &self,
        channel_id: &str,
        key: &str,
        deadline: Instant,
    ) -> Result<Option<String>, StateError> {
        self.state()?.get(channel_id, key, deadline)
    }

    fn state_set(
        &self,
        channel_id: &str,
        key: &str,
        json: &str,
        ttl_s: i64,
        deadline: Instant,
    ) -> Result<(), StateError> {
        self.state()?.set(channel_id, key, json, ttl_s, deadline)
    }

    fn state_del(
        &self,
        channel_id: &str,
        key: &str,
        deadline: Instant,
    ) -> Result<bool, StateError> {
        self.state()?.del(channel_id, key, deadline)
    }

    fn seen_before(
        &self,
        channel_id: &str,
        key: &str,
        ttl_s: i64,
        deadline: Instant,
    ) -> Result<bool, StateError> {
        self.state()?.seen_before(channel_id, key, ttl_s, deadline)
    }
}
