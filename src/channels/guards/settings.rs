//! A channel's guard settings as the admin API and the CLI take them, as they are
//! stored (one JSON object in `channels.guards`), and their validation.

use serde::{Deserialize, Serialize};

use crate::channels::ValidationError;
use crate::channels::validate::{MAX_TEXT_LEN, validate_text};

/// At most this many entries in `allow_ips`.
pub const MAX_ALLOW_IPS: usize = 1000;
/// Bounds of `rate_limit.per_second` and `rate_limit.burst`.
pub const MAX_RATE: u32 = 1_000_000;
/// Bounds of `verify.tolerance_s` and `cors.max_age_s`.
pub const MAX_TOLERANCE_S: u64 = 86_400;
pub const MAX_CORS_AGE_S: u32 = 86_400;
const MAX_CORS_ENTRIES: usize = 100;
const MAX_PREFIX_LEN: usize = 64;

/// Token bucket of the channel's webhook, per node: `per_second` tokens a second, at
/// most `burst` saved up (default: `per_second`); with `per_client_ip`, one bucket per
/// client IP (as `client_ip` computes it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub per_second: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default)]
    pub per_client_ip: bool,
}

/// How the signature's digest is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Hex,
    Base64,
}

fn default_tolerance() -> u64 {
    300
}

/// The signature every webhook request must carry (401 otherwise, before any scenario).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "scheme", deny_unknown_fields)]
pub enum VerifySettings {
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp` (within `tolerance_s` of
    /// now) and `webhook-signature` (`v1,<base64 HMAC-SHA256>`), secret `whsec_…`.
    #[serde(rename = "standard-webhooks")]
    StandardWebhooks {
        secret: String,
        #[serde(default = "default_tolerance")]
        tolerance_s: u64,
    },
    /// `header` = `prefix` + HMAC-SHA256(secret, body), hex or base64 (GitHub:
    /// `X-Hub-Signature-256`, `sha256=`, hex; Shopify: `X-Shopify-Hmac-Sha256`, base64).
    #[serde(rename = "hmac-sha256-header")]
    HmacSha256Header {
        header: String,
        #[serde(default)]
        prefix: String,
        secret: String,
        #[serde(default)]
        encoding: Encoding,
    },
}

impl VerifySettings {
    pub fn secret(&self) -> &str {
        match self {
            VerifySettings::StandardWebhooks { secret, .. }
            | VerifySettings::HmacSha256Header { secret, .. } => secret,
        }
    }

    /// As channel views show it (`channels::mask`).
    pub fn mask_secret(&mut self) {
        let masked = crate::channels::mask(self.secret());
        *self.secret_mut() = masked;
    }

    fn secret_mut(&mut self) -> &mut String {
        match self {
            VerifySettings::StandardWebhooks { secret, .. }
            | VerifySettings::HmacSha256Header { secret, .. } => secret,
        }
    }

    fn same_scheme(&self, other: &VerifySettings) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}

/// Browser calls from other origins: preflights answered by the gateway, actual
/// responses to an allowed origin carrying `Access-Control-Allow-Origin`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsSettings {
    /// `https://app.example.com` (scheme, host, port) or `*`.
    pub allowed_origins: Vec<String>,
    /// Default GET, HEAD, POST.
    #[serde(default = "default_methods")]
    pub allowed_methods: Vec<String>,
    /// Request headers a page may send (`*`: whatever it asks for).
    #[serde(default)]
    pub allowed_headers: Vec<String>,
    /// How long a browser may keep the preflight's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_s: Option<u32>,
}

/// Everything a channel checks before its scenario runs; stored as one JSON object,
/// shown by the admin API as four fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardSettings {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsSettings>,
}

/// The guard fields of a create or update body: absent or null leaves a setting as it
/// is; `[]` (allow_ips) or `{}` (the others) removes it.
pub struct GuardInput<'a> {
    pub allow_ips: Option<&'a [String]>,
    pub rate_limit: Option<&'a serde_json::Value>,
    pub verify: Option<&'a serde_json::Value>,
    pub cors: Option<&'a serde_json::Value>,
}

impl GuardInput<'_> {
    pub fn is_empty(&self) -> bool {
        self.allow_ips.is_none()
            && self.rate_limit.is_none()
            && self.verify.is_none()
            && self.cors.is_none()
    }
}

/// What a masked secret reads as in channel views (`channels::mask`): sent back
/// unchanged in an update, it keeps the stored secret.
const MASKED: &str = "********";

impl GuardSettings {
    /// The stored settings of a channel (empty: none).
    pub fn parse(stored: &str) -> Result<GuardSettings, serde_json::Error> {
        if stored.is_empty() {
            return Ok(GuardSettings::default());
        }
        serde_json::from_str(stored)
    }

    /// The stored form: empty when nothing is set.
    pub fn to_stored(&self) -> String {
        if *self == GuardSettings::default() {
            String::new()
        } else {
            serde_json::to_string(self).unwrap_or_default()
        }
    }

    /// The channel's stored settings with `input` applied, validated and normalised.
    pub fn apply(stored: &str, input: &GuardInput<'_>) -> Result<String, ValidationError> {
        // Settings stored by an older or broken write are replaced, not trusted.
        let mut settings = GuardSettings::parse(stored).unwrap_or_default();
        if let Some(list) = input.allow_ips {
            settings.allow_ips = normalise_ips(list)?;
        }
        if let Some(value) = input.rate_limit {
            settings.rate_limit = decode::<RateLimitSettings>("rate_limit", value)?
                .map(normalise_rate)
                .transpose()?;
        }
        if let Some(value) = input.verify {
            let current = settings.verify.take();
            settings.verify = decode::<VerifySettings>("verify", value)?
                .map(|mut v| {
                    if v.secret() == MASKED
                        && let Some(current) = current.filter(|c| c.same_scheme(&v))
                    {
                        *v.secret_mut() = current.secret().to_string();
                    }
                    normalise_verify(v)
                })
                .transpose()?;
        }
        if let Some(value) = input.cors {
            settings.cors = decode::<CorsSettings>("cors", value)?
                .map(normalise_cors)
                .transpose()?;
        }
        Ok(settings.to_stored())
    }
}

/// `{}` is None; anything else must decode as `T`, the error naming the field inside.
fn decode<T: serde::de::DeserializeOwned>(
    field: &str,
    value: &serde_json::Value,
) -> Result<Option<T>, ValidationError> {
    if value.as_object().is_some_and(serde_json::Map::is_empty) {
        return Ok(None);
    }
    serde_path_to_error::deserialize(value)
        .map(Some)
        .map_err(|e| {
            let path = e.path().to_string();
            let name = if path.is_empty() || path == "." || path == "?" {
                field.to_string()
            } else {
                format!("{field}.{path}")
            };
            ValidationError::new(&name, e.inner().to_string())
        })
}

/// CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or single addresses, normalised to their
/// network (`10.1.2.3/8` is `10.0.0.0/8`).
fn normalise_ips(list: &[String]) -> Result<Vec<String>, ValidationError> {
    if list.len() > MAX_ALLOW_IPS {
        return Err(ValidationError::new(
            "allow_ips",
            format!("at most {MAX_ALLOW_IPS} entries"),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, raw)| {
            let raw = raw.trim();
            let net = raw
                .parse::<ipnet::IpNet>()
                .or_else(|_| raw.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    ValidationError::new(
                        &format!("allow_ips[{i}]"),
                        format!("{raw:?} is not an IP address or CIDR (10.0.0.0/8, 2001:db8::/32)"),
                    )
                })?;
            Ok(net.trunc().to_string())
        })
        .collect()
}

fn normalise_rate(mut r: RateLimitSettings) -> Result<RateLimitSettings, ValidationError> {
    let burst = r.burst.unwrap_or(r.per_second);
    for (field, value) in [
        ("rate_limit.per_second", r.per_second),
        ("rate_limit.burst", burst),
    ] {
        if !(1..=MAX_RATE).contains(&value) {
            return Err(ValidationError::new(
                field,
                format!("must be 1 to {MAX_RATE}"),
            ));
        }
    }
    r.burst = Some(burst);
    Ok(r)
}

/// A secret: not empty, bounded, no NUL. Its value is never put in a message.
fn check_secret(secret: &str) -> Result<(), ValidationError> {
    if secret.is_empty() {
        return Err(ValidationError::new("verify.secret", "must not be empty"));
    }
    if secret == MASKED {
        return Err(ValidationError::new(
            "verify.secret",
            "is the masked value of a view; send the secret itself",
        ));
    }
    validate_text("verify.secret", secret, MAX_TEXT_LEN)
}

fn normalise_verify(v: VerifySettings) -> Result<VerifySettings, ValidationError> {
    check_secret(v.secret())?;
    match v {
        VerifySettings::StandardWebhooks {
            secret,
            tolerance_s,
        } => {
            if crate::signatures::standard_webhooks_key(&secret).is_none() {
                return Err(ValidationError::new(
                    "verify.secret",
                    "must be whsec_ followed by base64 (Standard Webhooks)",
                ));
            }
            if !(1..=MAX_TOLERANCE_S).contains(&tolerance_s) {
                return Err(ValidationError::new(
                    "verify.tolerance_s",
                    format!("must be 1 to {MAX_TOLERANCE_S} seconds"),
                ));
            }
            Ok(VerifySettings::StandardWebhooks {
                secret,
                tolerance_s,
            })
        }
        VerifySettings::HmacSha256Header {
            header,
            prefix,
            secret,
            encoding,
        } => {
            let header = header.trim().to_ascii_lowercase();
            if actix_web::http::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(ValidationError::new(
                    "verify.header",
                    "must be a header name (X-Hub-Signature-256)",
                ));
            }
            if prefix.len() > MAX_PREFIX_LEN || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ValidationError::new(
                    "verify.prefix",
                    format!("must be at most {MAX_PREFIX_LEN} printable ASCII characters"),
                ));
            }
            Ok(VerifySettings::HmacSha256Header {
                header,
                prefix,
                secret,
                encoding,
            })
        }
    }
}

/// Origins as browsers send them (`scheme://host[:port]`, default port left out).
fn normalise_origin(i: usize, raw: &str) -> Result<String, ValidationError> {
    let raw = raw.trim();
    if raw == "*" {
        return Ok(raw.to_string());
    }
    let field = format!("cors.allowed_origins[{i}]");
    let bad = || {
        ValidationError::new(
            &field,
            format!("{raw:?} is not an origin (https://app.example.com, or *)"),
        )
    };
    let url = url::Url::parse(raw).map_err(|_| bad())?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && !raw.ends_with('/');
    if !plain {
        return Err(bad());
    }
    Ok(url.origin().ascii_serialization())
}

fn normalise_cors(c: CorsSettings) -> Result<CorsSettings, ValidationError> {
    if c.allowed_origins.is_empty() || c.allowed_origins.len() > MAX_CORS_ENTRIES {
        return Err(ValidationError::new(
            "cors.allowed_origins",
            format!("1 to {MAX_CORS_ENTRIES} origins"),
        ));
    }
    for (field, list) in [
        ("cors.allowed_methods", &c.allowed_methods),
        ("cors.allowed_headers", &c.allowed_headers),
    ] {
        if list.len() > MAX_CORS_ENTRIES {
            return Err(ValidationError::new(
                field,
                format!("at most {MAX_CORS_ENTRIES} entries"),
            ));
        }
    }
    if c.allowed_methods.is_empty() {
        return Err(ValidationError::new(
            "cors.allowed_methods",
            "name at least one method (or leave the field out: GET, HEAD, POST)",
        ));
    }
    let allowed_origins = c
        .allowed_origins
        .iter()
        .enumerate()
        .map(|(i, o)| normalise_origin(i, o))
        .collect::<Result<Vec<_>, _>>()?;
    let allowed_methods = c
        .allowed_methods
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let m = m.trim().to_ascii_uppercase();
            actix_web::http::Method::from_bytes(m.as_bytes())
                .map(|_| m)
                .map_err(|_| {
                    ValidationError::new(&format!("cors.allowed_methods[{i}]"), "is not a method")
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let allowed_headers = c
        .allowed_headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let h = h.trim().to_ascii_lowercase();
            if h == "*" || actix_web::http::header::HeaderName::from_bytes(h.as_bytes()).is_ok() {
                Ok(h)
            } else {
                Err(ValidationError::new(
                    &format!("cors.allowed_headers[{i}]"),
                    "is not a header name (or *)",
                ))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if c.max_age_s.is_some_and(|s| s > MAX_CORS_AGE_S) {
        return Err(ValidationError::new(
            "cors.max_age_s",
            format!("must be at most {MAX_CORS_AGE_S}"),
        ));
    }
    Ok(CorsSettings {
        allowed_origins,
        allowed_methods,
        allowed_headers,
        max_age_s: c.max_age_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apply(
        stored: &str,
        field: &str,
        value: serde_json::Value,
    ) -> Result<String, ValidationError> {
        let ips: Option<Vec<String>> = (field == "allow_ips")
            .then(|| serde_json::from_value(value.clone()).unwrap_or_default());
        let input = GuardInput {
            allow_ips: ips.as_deref(),
            rate_limit: (field == "rate_limit").then_some(&value),
            verify: (field == "verify").then_some(&value),
            cors: (field == "cors").then_some(&value),
        };
        GuardSettings::apply(stored, &input)
    }

    #[test]
    fn settings_are_validated_and_normalised() {
        let s = apply(
            "",
            "allow_ips",
            json!(["10.1.2.3/8", " 192.168.1.7 ", "2001:db8::1/32"]),
        )
        .unwrap();
        assert_eq!(
            GuardSettings::parse(&s).unwrap().allow_ips,
            ["10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32"]
        );
        assert_eq!(apply(&s, "allow_ips", json!([])).unwrap(), "");
        assert_eq!(
            apply("", "allow_ips", json!(["10.0.0.0/33"]))
                .unwrap_err()
                .field,
            "allow_ips[0]"
        );
        let s = apply("", "rate_limit", json!({"per_second": 5})).unwrap();
        assert_eq!(
            GuardSettings::parse(&s).unwrap().rate_limit.unwrap().burst,
            Some(5)
        );
        assert_eq!(
            apply("", "rate_limit", json!({"per_second": 0}))
                .unwrap_err()
                .field,
            "rate_limit.per_second"
        );
        assert_eq!(apply(&s, "rate_limit", json!({})).unwrap(), "");
        let e = apply("", "verify", json!({"scheme": "rsa", "secret": "x"})).unwrap_err();
        assert!(e.field.starts_with("verify"), "{e:?}");
        let e = apply("", "verify", json!({"scheme": "standard-webhooks"})).unwrap_err();
        assert!(e.message.contains("secret"), "{e:?}");
        let e = apply(
            "",
            "verify",
            json!({"scheme": "standard-webhooks", "secret": "whsec_!!"}),
        )
        .unwrap_err();
        assert_eq!(e.field, "verify.secret");
        assert!(!e.message.contains("!!"));
        let e = apply(
            "",
            "cors",
            json!({"allowed_origins": ["https://a.example/x"]}),
        )
        .unwrap_err();
        assert_eq!(e.field, "cors.allowed_origins[0]");
        let s = apply(
            "",
            "cors",
            json!({"allowed_origins": ["HTTPS://App.Example:443"], "allowed_methods": ["put"]}),
        )
        .unwrap();
        let cors = GuardSettings::parse(&s).unwrap().cors.unwrap();
        assert_eq!(cors.allowed_origins, ["https://app.example"]);
        assert_eq!(cors.allowed_methods, ["PUT"]);
    }

    #[test]
    fn a_masked_secret_sent_back_keeps_the_stored_one() {
        let real = json!({"scheme": "hmac-sha256-header", "header": "X-Hub-Signature-256", "prefix": "sha256=", "secret": "s3cret-value"});
        let s = apply("", "verify", real).unwrap();
        let masked = json!({"scheme": "hmac-sha256-header", "header": "X-Hub-Signature-256", "prefix": "sha256=", "secret": MASKED});
        let again = apply(&s, "verify", masked.clone()).unwrap();
        assert_eq!(
            GuardSettings::parse(&again)
                .unwrap()
                .verify
                .unwrap()
                .secret(),
            "s3cret-value"
        );
        assert!(apply("", "verify", masked).is_err());
    }
}
