//! `verify`: the signature a webhook request must carry, checked over the raw body
//! before any scenario runs (`crate::signatures` does the cryptography).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header::{HeaderMap, HeaderName};

use super::settings::{Encoding, VerifySettings};
use crate::signatures::{self, DigestEncoding};

const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// A verifier with its key decoded once. No `Debug`: it holds the secret.
pub enum Verifier {
    StandardWebhooks {
        key: Box<[u8]>,
        tolerance_s: u64,
    },
    HmacHeader {
        header: HeaderName,
        prefix: Box<[u8]>,
        key: Box<[u8]>,
        encoding: DigestEncoding,
    },
}

impl Verifier {
    /// `None` for settings that no longer parse (validated when saved).
    pub fn new(s: &VerifySettings) -> Option<Verifier> {
        Some(match s {
            VerifySettings::StandardWebhooks {
                secret,
                tolerance_s,
            } => Verifier::StandardWebhooks {
                key: signatures::standard_webhooks_key(secret)?.into(),
                tolerance_s: *tolerance_s,
            },
            VerifySettings::HmacSha256Header {
                header,
                prefix,
                secret,
                encoding,
            } => Verifier::HmacHeader {
                header: HeaderName::from_bytes(header.as_bytes()).ok()?,
                prefix: prefix.as_bytes().into(),
                key: secret.as_bytes().into(),
                encoding: match encoding {
                    Encoding::Hex => DigestEncoding::Hex,
                    Encoding::Base64 => DigestEncoding::Base64,
                },
            },
        })
    }

    /// Does the request carry a valid signature of `body`? Missing headers: no.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        self.verify_at(headers, body, unix_now())
    }

    fn verify_at(&self, headers: &HeaderMap, body: &[u8], now: Duration) -> bool {
        match self {
            Verifier::StandardWebhooks { key, tolerance_s } => {
                let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
                let (Some(id), Some(timestamp)) = (text(&WEBHOOK_ID), text(&WEBHOOK_TIMESTAMP))
                else {
                    return false;
                };
                let signatures = headers
                    .get_all(&WEBHOOK_SIGNATURE)
                    .filter_map(|v| v.to_str().ok());
                signatures::verify_standard_webhook(
                    key,
                    id,
                    timestamp,
                    signatures,
                    body,
                    *tolerance_s,
                    now,
                )
            }
            Verifier::HmacHeader {
                header,
                prefix,
                key,
                encoding,
            } => headers.get_all(header).any(|v| {
                signatures::verify_hmac_header(key, body, v.as_bytes(), prefix, *encoding)
            }),
        }
    }
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    #[test]
    fn standard_webhooks_spec_vector_from_headers() {
        let v = Verifier::new(&VerifySettings::StandardWebhooks {
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            tolerance_s: 300,
        })
        .unwrap();
        let mut headers = HeaderMap::new();
        let mut set = |n: &'static str, v: &'static str| {
            headers.insert(HeaderName::from_static(n), HeaderValue::from_static(v));
        };
        set("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek");
        set("webhook-timestamp", "1614265330");
        set(
            "webhook-signature",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        );
        let body = br#"{"test": 2432232314}"#;
        let now = Duration::from_secs(1_614_265_330);
        assert!(v.verify_at(&headers, body, now));
        assert!(!v.verify_at(&headers, b"{}", now));
        assert!(!v.verify_at(&headers, body, now + Duration::from_secs(301)));
        assert!(!v.verify_at(&HeaderMap::new(), body, now));
    }
}
