//! Script functions for authenticating what callers send and for ids and times:
//! HMAC-SHA256/-SHA1 and SHA-256 (bytes, as Rhai blobs), hex and base64 both ways,
//! a constant-time comparison, Standard Webhooks verification, `uuid()`, `now_ms()`
//! and RFC 3339 times.
//!
//! Inputs are script values, already bounded by the engine's string and blob limits;
//! every output is checked against the string limit *before* it is allocated, and
//! what is allocated counts against the run's memory budget (`crate::alloc`), a
//! breach stopping the run at once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{KeyInit, Mac};
use rhai::{Blob, Dynamic, Engine, EvalAltResult, Map, Position};
use sha2::Digest;
use subtle::ConstantTimeEq;

use super::budget;
use crate::signatures;

type FnResult<T> = Result<T, Box<EvalAltResult>>;

fn script_error(message: impl Into<String>) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(message.into()),
        Position::NONE,
    ))
}

/// What a function allocated broke the run's memory budget: stop now rather than at
/// the next operation (the runtime names the budget).
fn check_budget() -> FnResult<()> {
    match budget::broken() {
        Some(_) => Err(Box::new(EvalAltResult::ErrorTerminated(
            Dynamic::UNIT,
            Position::NONE,
        ))),
        None => Ok(()),
    }
}

/// Calls `f` with the bytes of a string (UTF-8) or a blob; anything else is an error
/// naming the function and the argument.
fn with_bytes<T>(
    func: &str,
    arg: &str,
    value: &Dynamic,
    f: impl FnOnce(&[u8]) -> T,
) -> FnResult<T> {
    if let Ok(s) = value.as_immutable_string_ref() {
        return Ok(f(s.as_bytes()));
    }
    if let Ok(b) = value.as_blob_ref() {
        return Ok(f(&b));
    }
    Err(script_error(format!(
        "{func}: {arg} must be a string or a blob, not {}",
        value.type_name()
    )))
}

fn hmac_of<M: Mac + KeyInit>(func: &str, key: &Dynamic, data: &Dynamic) -> FnResult<Blob> {
    let mut mac = with_bytes(func, "key", key, |k| {
        <M as KeyInit>::new_from_slice(k).map_err(|_| script_error(format!("{func}: bad key")))
    })??;
    with_bytes(func, "data", data, |d| mac.update(d))?;
    Ok(mac.finalize().into_bytes().to_vec())
}

/// Refuses an output longer than the string limit before allocating it.
fn bounded(func: &str, len: usize, max: usize) -> FnResult<()> {
    if len > max {
        return Err(script_error(format!(
            "{func}: the result would be {len} bytes, over the {max}-byte string limit"
        )));
    }
    Ok(())
}

use crate::signatures::{from_hex, to_hex};

/// A header of a map (any case of its name); its text.
fn header<'a>(headers: &'a Map, name: &str) -> Option<&'a Dynamic> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn header_text(headers: &Map, name: &str) -> Option<String> {
    header(headers, name).map(|v| match v.as_immutable_string_ref() {
        Ok(s) => s.to_string(),
        Err(_) => v.to_string(),
    })
}

/// The headers argument: a map, or the JSON object string of `startparam(5)`.
fn headers_map(value: &Dynamic) -> FnResult<Map> {
    if let Ok(map) = value.as_map_ref() {
        return Ok(map.clone());
    }
    if let Ok(s) = value.as_immutable_string_ref() {
        let parsed = super::rhai_json::parse(s.as_str()).map_err(|e| {
            script_error(format!(
                "verify_standard_webhook: headers are not a JSON object: {e}"
            ))
        })?;
        if let Ok(map) = parsed.as_map_ref() {
            return Ok(map.clone());
        }
    }
    Err(script_error(format!(
        "verify_standard_webhook: headers must be a map or a JSON object string, not {}",
        value.type_name()
    )))
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Standard Webhooks (<https://www.standardwebhooks.com/>): the secret is `whsec_` +
/// base64 (the prefix may be left out); the signed content is
/// `{webhook-id}.{webhook-timestamp}.{body}`; `webhook-signature` holds one or more
/// space-separated `v1,<base64 HMAC-SHA256>`; the timestamp (seconds) must be within
/// `tolerance_s` of now, either way. Missing or malformed headers are `false`; a
/// secret that is not base64 is an error (the script's mistake, not the caller's).
fn verify_standard_webhook(
    secret: &str,
    headers: &Map,
    body: &[u8],
    tolerance_s: i64,
    now: Duration,
) -> FnResult<bool> {
    const FN: &str = "verify_standard_webhook";
    if tolerance_s < 0 {
        return Err(script_error(format!(
            "{FN}: tolerance_s must not be negative"
        )));
    }
    let key = signatures::standard_webhooks_key(secret).ok_or_else(|| {
        script_error(format!("{FN}: the secret is not whsec_ followed by base64"))
    })?;
    let (Some(id), Some(timestamp), Some(signature)) = (
        header_text(headers, "webhook-id"),
        header_text(headers, "webhook-timestamp"),
        header_text(headers, "webhook-signature"),
    ) else {
        return Ok(false);
    };
    Ok(signatures::verify_standard_webhook(
        &key,
        &id,
        &timestamp,
        [signature.as_str()],
        body,
        tolerance_s.unsigned_abs(),
        now,
    ))
}

/// Milliseconds since the epoch that `format_rfc3339` can write: 1970 to 9999.
const MAX_RFC3339_MS: i64 = 253_402_300_800_000 - 1;

fn format_rfc3339(ms: i64) -> FnResult<String> {
    if !(0..=MAX_RFC3339_MS).contains(&ms) {
        return Err(script_error(format!(
            "format_rfc3339: {ms} ms is outside years 1970 to 9999"
        )));
    }
    let t = UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs());
    use std::fmt::Write as _;
    let mut out = String::with_capacity(24);
    write!(out, "{}", humantime::format_rfc3339_millis(t))
        .map_err(|_| script_error(format!("format_rfc3339: {ms} ms cannot be written")))?;
    Ok(out)
}

/// RFC 3339 with `Z` or a `±HH:MM` offset (humantime reads UTC only: the offset is
/// taken off here).
fn parse_rfc3339(text: &str) -> FnResult<i64> {
    let bad = |why: &str| {
        script_error(format!(
            "parse_rfc3339: {text:?} is not an RFC 3339 time: {why}"
        ))
    };
    let text = text.trim();
    if !text.is_ascii() || text.len() > 64 {
        return Err(bad("unexpected characters"));
    }
    let (utc, offset_s) = match text.len().checked_sub(6).map(|i| text.split_at(i)) {
        Some((time, off))
            if (off.starts_with('+') || off.starts_with('-')) && off.as_bytes()[3] == b':' =>
        {
            let digits = |s: &str| -> FnResult<i64> {
                if s.bytes().all(|b| b.is_ascii_digit()) {
                    s.parse().map_err(|_| bad("bad offset"))
                } else {
                    Err(bad("bad offset"))
                }
            };
            let (hours, minutes) = (digits(&off[1..3])?, digits(&off[4..6])?);
            if hours > 23 || minutes > 59 {
                return Err(bad("bad offset"));
            }
            let sign = if off.starts_with('-') { -1 } else { 1 };
            (format!("{time}Z"), sign * (hours * 3600 + minutes * 60))
        }
        _ => (text.to_string(), 0),
    };
    let t = humantime::parse_rfc3339(&utc).map_err(|e| bad(&e.to_string()))?;
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| bad("before 1970"))?
        .as_millis();
    let ms = i64::try_from(ms).map_err(|_| bad("out of range"))?;
    Ok(ms - offset_s * 1000)
}

/// Registers the functions; `max_string_bytes` is the engine's string limit, which
/// bounds what they produce.
pub fn register(engine: &mut Engine, max_string_bytes: usize) {
    engine.register_fn("hmac_sha256", |key: Dynamic, data: Dynamic| {
        let out = hmac_of::<hmac::Hmac<sha2::Sha256>>("hmac_sha256", &key, &data)?;
        check_budget().map(|()| out)
    });
    engine.register_fn("hmac_sha1", |key: Dynamic, data: Dynamic| {
        let out = hmac_of::<hmac::Hmac<sha1::Sha1>>("hmac_sha1", &key, &data)?;
        check_budget().map(|()| out)
    });
    engine.register_fn("sha256", |data: Dynamic| -> FnResult<Blob> {
        let out = with_bytes("sha256", "data", &data, |d| {
            sha2::Sha256::digest(d).to_vec()
        })?;
        check_budget().map(|()| out)
    });
    engine.register_fn("to_hex", move |data: Dynamic| -> FnResult<String> {
        let len = with_bytes("to_hex", "data", &data, <[u8]>::len)?;
        bounded("to_hex", len.saturating_mul(2), max_string_bytes)?;
        let out = with_bytes("to_hex", "data", &data, to_hex)?;
        check_budget().map(|()| out)
    });
    engine.register_fn("to_base64", move |data: Dynamic| -> FnResult<String> {
        let len = with_bytes("to_base64", "data", &data, <[u8]>::len)?;
        let out_len = base64::encoded_len(len, true).unwrap_or(usize::MAX);
        bounded("to_base64", out_len, max_string_bytes)?;
        let out = with_bytes("to_base64", "data", &data, |d| BASE64.encode(d))?;
        check_budget().map(|()| out)
    });
    // The decoders' input is a script string, so already within the string limit; the
    // output is smaller than the input.
    engine.register_fn("from_hex", |text: &str| -> FnResult<Blob> {
        let out = from_hex(text.trim()).map_err(|e| script_error(format!("from_hex: {e}")))?;
        check_budget().map(|()| out)
    });
    engine.register_fn("from_base64", |text: &str| -> FnResult<Blob> {
        let text = text.trim();
        // Standard alphabet, padded or not; URL-safe too.
        let decoded = BASE64.decode(text).or_else(|_| {
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
        });
        let out = decoded.map_err(|e| script_error(format!("from_base64: {e}")))?;
        check_budget().map(|()| out)
    });
    engine.register_fn(
        "constant_time_eq",
        |a: Dynamic, b: Dynamic| -> FnResult<bool> {
            with_bytes("constant_time_eq", "a", &a, |a| {
                with_bytes("constant_time_eq", "b", &b, |b| bool::from(a.ct_eq(b)))
            })?
        },
    );
    engine.register_fn(
        "verify_standard_webhook",
        |secret: &str, headers: Dynamic, body: Dynamic, tolerance_s: i64| -> FnResult<bool> {
            let headers = headers_map(&headers)?;
            with_bytes("verify_standard_webhook", "body", &body, |body| {
                verify_standard_webhook(secret, &headers, body, tolerance_s, unix_now())
            })?
        },
    );
    engine.register_fn("uuid", || uuid::Uuid::new_v4().to_string());
    engine.register_fn("now_ms", || {
        i64::try_from(unix_now().as_millis()).unwrap_or(i64::MAX)
    });
    engine.register_fn("format_rfc3339", format_rfc3339);
    engine.register_fn("parse_rfc3339", |text: &str| parse_rfc3339(text));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_both_ways() {
        assert_eq!(format_rfc3339(0).unwrap(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(1_614_265_330_123).unwrap(),
            "2021-02-25T15:02:10.123Z"
        );
        assert!(format_rfc3339(-1).is_err());
        assert!(format_rfc3339(MAX_RFC3339_MS + 1).is_err());
        assert!(format_rfc3339(MAX_RFC3339_MS).is_ok());
        assert_eq!(
            parse_rfc3339("2021-02-25T15:02:10.123Z").unwrap(),
            1_614_265_330_123
        );
        assert_eq!(
            parse_rfc3339("2021-02-25T17:02:10+02:00").unwrap(),
            1_614_265_330_000
        );
        assert_eq!(
            parse_rfc3339("2021-02-25T10:02:10-05:00").unwrap(),
            1_614_265_330_000
        );
        for bad in [
            "",
            "yesterday",
            "2021-02-25",
            "2021-02-25T15:02:10+2:00",
            "2021-02-25T15:02:10Zé",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn standard_webhooks_timestamp_tolerance_goes_both_ways() {
        let mut headers = Map::new();
        headers.insert("webhook-id".into(), "msg_p5jXN8AQM9LWM0D4loKWxJek".into());
        headers.insert("webhook-timestamp".into(), "1614265330".into());
        headers.insert(
            "Webhook-Signature".into(),
            "v1,bm9wZQ== v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".into(),
        );
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let at =
            |s: u64| verify_standard_webhook(secret, &headers, body, 300, Duration::from_secs(s));
        assert!(at(1_614_265_330).unwrap());
        assert!(at(1_614_265_330 + 300).unwrap());
        assert!(!at(1_614_265_330 + 301).unwrap());
        assert!(at(1_614_265_330 - 300).unwrap());
        assert!(!at(1_614_265_330 - 301).unwrap());
        assert!(verify_standard_webhook("whsec_!!", &headers, body, 300, unix_now()).is_err());
    }
}
