//! ChannelRegistry: token → live channel handle, shared by all HTTP workers.
//! A lookup is a DashMap read: no actor hop and no database on the request path.

use std::sync::Arc;

use dashmap::DashMap;

use super::handle::ChannelHandle;

#[derive(Default)]
pub struct ChannelRegistry {
    by_token: DashMap<String, Arc<ChannelHandle>>,
    token_by_id: DashMap<String, String>,
}

impl ChannelRegistry {
    pub fn new() -> ChannelRegistry {
        ChannelRegistry::default()
    }

    /// The live handle of a token, if this node serves that channel.
    pub fn get(&self, token: &str) -> Option<Arc<ChannelHandle>> {
        self.by_token.get(token).map(|h| h.value().clone())
    }

    pub fn get_by_id(&self, id: &str) -> Option<Arc<ChannelHandle>> {
        let token = self.token_by_id.get(id)?.value().clone();
        self.get(&token)
    }

    /// Makes a handle (new, or a new version of a channel) the one requests see. The
    /// handle it replaces is marked superseded after (see [`ChannelRegistry::current`]).
    pub fn publish(&self, handle: Arc<ChannelHandle>) {
        self.token_by_id
            .insert(handle.channel.id.clone(), handle.channel.token.clone());
        if let Some(previous) = self.by_token.insert(handle.channel.token.clone(), handle) {
            previous.supersede();
        }
    }

    /// Takes a channel out of service; returns its last handle (marked superseded).
    pub fn remove(&self, id: &str) -> Option<Arc<ChannelHandle>> {
        let (_, token) = self.token_by_id.remove(id)?;
        let (_, handle) = self.by_token.remove(&token)?;
        handle.supersede();
        Some(handle)
    }

    /// What [`ChannelRegistry::get`] gives for `kept`'s token now, without a lookup
    /// while `kept` is still the one published: a holder (a websocket session, per
    /// message) keeps its handle and asks this instead of hashing the token each time.
    /// Every change of what a token finds goes through `publish` or `remove`, which
    /// mark the handle they replace, so this answers as `get` would.
    pub fn current(&self, kept: &Arc<ChannelHandle>) -> Option<Arc<ChannelHandle>> {
        if kept.is_superseded() {
            self.get(&kept.channel.token)
        } else {
            Some(kept.clone())
        }
    }

    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }

    /// A snapshot of every live handle (for admin views and shutdown).
    pub fn handles(&self) -> Vec<Arc<ChannelHandle>> {
        self.by_token.iter().map(|e| e.value().clone()).collect()
    }
}

/// Live tokens are masked wherever they would be logged (`crate::redact`).
impl crate::redact::TokenIndex for ChannelRegistry {
    fn is_token(&self, candidate: &str) -> bool {
        self.by_token.contains_key(candidate)
    }
}
