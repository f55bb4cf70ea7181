//! Webhook subscriptions: secrets, Standard Webhooks signatures, and which delivery
//! targets are allowed.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::channels::{ValidationError, rfc3339_millis};
use crate::db::events::parse_types;
use crate::db::models::Subscription;

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
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_else(|_| encoded.as_bytes().to_vec());
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
        return String::new();
    };
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
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

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.octets()[0] == 0
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64) // 100.64/10 CGNAT
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

/// A delivery target must be http(s) and, unless private targets are allowed, resolve
/// only to public addresses (no loopback, private, link-local or metadata addresses).
pub fn check_target(raw: &str, allow_private: bool) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|e| format!("is not a valid URL: {e}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err("must start with http:// or https://".into());
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("must name a host")?;
    if allow_private {
        return Ok(());
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => crate::net::dns::resolve(&format!("{host}:{port}"), Duration::from_secs(5))
            .map_err(|e| format!("does not resolve: {e}"))?
            .into_iter()
            .map(|a| a.ip())
            .collect(),
    };
    if addrs.is_empty() {
        return Err("does not resolve".into());
    }
    if addrs.iter().any(|ip| is_private(*ip)) {
        return Err(
            "resolves to a loopback, private or link-local address, which are not allowed targets"
                .into(),
        );
    }
    Ok(())
}

/// A create body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    pub url: String,
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default)]
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
        check_target(&self.url, allow_private).map_err(|m| ValidationError::new("url", m))?;
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

    #[test]
    fn private_targets_are_refused() {
        for bad in [
            "http://127.0.0.1/x",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest",
            "http://[::1]/",
            "http://192.168.1.1",
            "ftp://example.com",
        ] {
            assert!(check_target(bad, false).is_err(), "{bad}");
        }
        assert!(check_target("http://127.0.0.1:9/x", true).is_ok());
        assert!(check_target("http://93.184.216.34/hook", false).is_ok());
    }
}
