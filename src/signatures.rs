//! Webhook signatures, as pure functions over bytes: Standard Webhooks
//! (<https://www.standardwebhooks.com/>) and a plain HMAC-SHA256 of the body in one
//! header (GitHub's `X-Hub-Signature-256: sha256=<hex>`, Shopify's base64). Shared by
//! the channel's declarative `verify` (`channels::guards`), the scripts' functions
//! (`scenario::script_crypto`) and the signing of outgoing deliveries
//! (`events::webhooks`). Comparisons are constant-time.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The prefix of a Standard Webhooks secret (`whsec_` + base64 of the key).
pub const STANDARD_SECRET_PREFIX: &str = "whsec_";

/// The key of a Standard Webhooks secret: its base64 part decoded (the `whsec_` prefix
/// may be left out). `None` when that part is not base64 or is empty.
pub fn standard_webhooks_key(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret
        .strip_prefix(STANDARD_SECRET_PREFIX)
        .unwrap_or(secret);
    BASE64.decode(encoded).ok().filter(|k| !k.is_empty())
}

/// `HMAC-SHA256(key, "{id}.{timestamp}.{body}")`: what Standard Webhooks signs.
pub fn standard_webhooks_mac(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
    let mut mac = new_mac(key);
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// `HMAC-SHA256(key, body)`.
pub fn hmac_sha256(key: &[u8], body: &[u8]) -> [u8; 32] {
    let mut mac = new_mac(key);
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// HMAC takes keys of any length: `new_from_slice` cannot fail for it.
fn new_mac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()))
}

/// Checks a Standard Webhooks request: the timestamp (seconds) within `tolerance_s` of
/// `now` either way, and one of the space-separated `v1,<base64>` entries of the
/// signature values matching. Repeated headers may arrive joined by ", ": a trailing
/// comma is not part of a signature.
pub fn verify_standard_webhook<'a>(
    key: &[u8],
    id: &str,
    timestamp: &str,
    signatures: impl IntoIterator<Item = &'a str>,
    body: &[u8],
    tolerance_s: u64,
    now: Duration,
) -> bool {
    let Ok(ts) = timestamp.trim().parse::<i64>() else {
        return false;
    };
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    if now.abs_diff(ts) > tolerance_s {
        return false;
    }
    let expected = standard_webhooks_mac(key, id, timestamp, body);
    signatures
        .into_iter()
        .flat_map(str::split_ascii_whitespace)
        .filter_map(|s| s.trim_end_matches(',').strip_prefix("v1,"))
        .filter_map(|b64| BASE64.decode(b64).ok())
        .fold(false, |found, sig| {
            found | bool::from(sig.as_slice().ct_eq(expected.as_slice()))
        })
}

/// How the digest is written in a signature header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestEncoding {
    Hex,
    Base64,
}

/// Checks `header` = `prefix` + the encoded `HMAC-SHA256(key, body)`. Hex digits of
/// either case; standard base64.
pub fn verify_hmac_header(
    key: &[u8],
    body: &[u8],
    header: &[u8],
    prefix: &[u8],
    encoding: DigestEncoding,
) -> bool {
    let Some(encoded) = header.trim_ascii().strip_prefix(prefix) else {
        return false;
    };
    // Room for base64's worst case; a digest fills the first 32 bytes.
    let mut given = [0u8; 48];
    let decoded = match encoding {
        DigestEncoding::Hex => decode_hex_into(encoded, &mut given[..32]),
        DigestEncoding::Base64 => BASE64
            .decode_slice(encoded, &mut given)
            .is_ok_and(|n| n == 32),
    };
    decoded && bool::from(given[..32].ct_eq(&hmac_sha256(key, body)))
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Fills `out` from exactly `2 * out.len()` hex digits.
fn decode_hex_into(text: &[u8], out: &mut [u8]) -> bool {
    if text.len() != out.len() * 2 {
        return false;
    }
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(hi), Some(lo)) => *o = hi << 4 | lo,
            _ => return false,
        }
    }
    true
}

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Hex digits of either case, to bytes; the error names the first bad offset.
pub fn from_hex(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits ({})", bytes.len()));
    }
    bytes
        .chunks_exact(2)
        .enumerate()
        .map(|(i, pair)| match (nibble(pair[0]), nibble(pair[1])) {
            (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
            _ => Err(format!("not a hex digit at offset {}", 2 * i)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's test vector.
    #[test]
    fn standard_webhooks_spec_vector() {
        let key = standard_webhooks_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let body = br#"{"test": 2432232314}"#;
        let at = |body: &[u8], ts: &str, now: u64| {
            verify_standard_webhook(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                ts,
                ["v1,bm9wZQ==", sig],
                body,
                300,
                Duration::from_secs(now),
            )
        };
        assert!(at(body, "1614265330", 1_614_265_330));
        assert!(!at(b"{\"test\": 2432232315}", "1614265330", 1_614_265_330));
        assert!(!at(body, "1614265330", 1_614_265_330 + 301));
        assert!(!at(body, "1614265331", 1_614_265_330));
        assert!(standard_webhooks_key("whsec_!!").is_none());
        assert!(standard_webhooks_key("whsec_").is_none());
    }

    #[test]
    fn hmac_header_hex_and_base64() {
        // GitHub's documented example: secret "It's a Secret to Everybody",
        // payload "Hello, World!".
        let key = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let header = b"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify_hmac_header(
            key,
            body,
            header,
            b"sha256=",
            DigestEncoding::Hex
        ));
        assert!(!verify_hmac_header(
            key,
            b"Hello, World?",
            header,
            b"sha256=",
            DigestEncoding::Hex
        ));
        assert!(!verify_hmac_header(
            key,
            body,
            &header[7..],
            b"sha256=",
            DigestEncoding::Hex
        ));
        let b64 = BASE64.encode(hmac_sha256(key, body));
        assert!(verify_hmac_header(
            key,
            body,
            b64.as_bytes(),
            b"",
            DigestEncoding::Base64
        ));
        assert!(!verify_hmac_header(
            key,
            body,
            b"bm9wZQ==",
            b"",
            DigestEncoding::Base64
        ));
    }

    #[test]
    fn hex_round_trips_and_refuses_bad_digits() {
        assert_eq!(to_hex(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(from_hex("00ABff"), Ok(vec![0x00, 0xab, 0xff]));
        assert!(from_hex("abc").unwrap_err().contains("odd"));
        assert!(from_hex("zz").unwrap_err().contains("offset 0"));
        assert!(from_hex("é0").is_err());
    }
}
