//! Webhook subscriptions as the API takes them (`SubscriptionInput`, checked against the
//! delivery target policy of `net::targets`) and shows them (`SubscriptionView`). Their
//! secrets and signatures are in `events::signing`.

use serde::{Deserialize, Serialize};

use crate::channels::{ValidationError, rfc3339_millis};
use crate::db::events::parse_types;
use crate::db::models::Subscription;
pub use crate::net::targets::{TargetError, check_target};

/// A create body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    /// An http(s) URL whose host resolves to public addresses (unless
    /// `allow_private_targets`).
    #[schema(max_length = 2048)]
    pub url: String,
    /// Event type patterns (`call.*`, `*`, exact); empty: all.
    #[serde(default)]
    #[schema(max_items = 100, value_type = Vec<crate::events::patterns::Pattern>)]
    pub event_types: Vec<String>,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: String,
}

impl SubscriptionInput {
    pub fn validate(&self, allow_private: bool) -> Result<(), ValidationError> {
        if self.url.len() > 2048 {
            return Err(ValidationError::new(
                "url",
                "must be at most 2048 characters",
            ));
        }
        check_target(&self.url, allow_private)
            .map_err(|e| ValidationError::new("url", e.to_string()))?;
        if self.event_types.len() > 100 {
            return Err(ValidationError::new("event_types", "at most 100 patterns"));
        }
        for (i, p) in self.event_types.iter().enumerate() {
            super::patterns::validate(&format!("event_types[{i}]"), p)?;
        }
        if self.description.len() > 1024 {
            return Err(ValidationError::new(
                "description",
                "must be at most 1024 bytes",
            ));
        }
        Ok(())
    }
}

/// A subscription as its owner sees it; the secret only when just created or rotated.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubscriptionView {
    pub id: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub description: String,
    pub enabled: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub disabled_reason: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl SubscriptionView {
    pub fn new(s: &Subscription, with_secret: bool) -> SubscriptionView {
        SubscriptionView {
            id: s.id.clone(),
            url: s.url.clone(),
            event_types: parse_types(&s.event_types),
            description: s.description.clone(),
            enabled: s.enabled,
            disabled_reason: s.disabled_reason.clone(),
            created_at: rfc3339_millis(s.created_at),
            secret: with_secret.then(|| s.secret.clone()),
        }
    }
}
