//! What a delivery is signed with: a subscription's secret (`whsec_` + base64 of 24
//! random bytes) and the `webhook-signature` header of Standard Webhooks
//! (<https://www.standardwebhooks.com/>), over the pure functions of `crate::signatures`.

use base64::Engine as _;

use crate::db::models::Subscription;
use crate::signatures::STANDARD_SECRET_PREFIX;

/// A new signing secret: `whsec_` + base64 of 24 random bytes.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 24];
    if getrandom::fill(&mut bytes).is_err() {
        bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    format!(
        "{STANDARD_SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// `base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))`, the key being the secret's
/// base64 part decoded.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = crate::signatures::standard_webhooks_key(secret).unwrap_or_else(|| {
        let encoded = secret
            .strip_prefix(STANDARD_SECRET_PREFIX)
            .unwrap_or(secret);
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
