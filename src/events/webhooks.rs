//! Webhook subscriptions: secrets, Standard Webhooks signatures, and which delivery
//! targets are allowed.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::channels::{ValidationError, rfc3339_millis};
use crate::db::events::parse_types;
use crate::db::models::Subscription;
pub use crate::net::targets::{TargetError, check_target};

const SECRET_PREFIX: &str = "whsec_";

/// A new signing secret: `whsec_` + base64 of 24 random bytes.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 24];
    if getrandom::fill(&mut bytes).is_err() {
        bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// `base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))`, the key being the secret's
/// base64 part decoded.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = crate::signatures::standard_webhooks_key(secret).unwrap_or_else(|| {
        let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
        encoded.as_bytes().to_vec()
    });
    let mac = crate::signatures::standard_webhooks_mac(&key, msg_id, &timestamp.to_string(), body);
    base64::engine::general_purpose::STANDARD.encode(mac)
}

/// The `webhook-signature` header: the current secret, and during a rotation the
/// previous one too (space-separated), so receivers can switch at their own pace.
pub fn signature_header(
    s: &Subscription,
    now_ms: i64,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let mut header = format!("v1,{}", sign(&s.secret, msg_id, timestamp, body));
    if !s.previous_secret.is_empty() && s.previous_secret_until > now_ms {
        header.push_str(" v1,");
        header.push_str(&sign(&s.previous_secret, msg_id, timestamp, body));
    }
    header
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_test_vector() {
        // The example from the Standard Webhooks specification.
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
