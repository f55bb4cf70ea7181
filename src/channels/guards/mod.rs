//! A channel's checks before any scenario runs: `allow_ips`, `rate_limit`, `verify`
//! and `cors` (docs/design-notes.md "Channel guards"). [`settings`] is what the admin
//! API takes and stores; [`Guards`] is what requests use, built once when the channel
//! is applied (`actors::handle::ChannelHandle`), so that a channel without guards pays
//! one branch on an `Option` per request. The HTTP side is `http::channel_guards`.

pub mod allow;
pub mod cors;
pub mod rate;
pub mod settings;
pub mod verify;

use std::sync::Arc;

pub use settings::{
    CorsSettings, Encoding, GuardInput, GuardSettings, RateLimitSettings, VerifySettings,
};

use crate::actors::ChannelStats;
use crate::db::models::Channel;

/// Why a request was refused before its scenario (metric label `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Ip = 0,
    Rate = 1,
    Signature = 2,
    Cors = 3,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::Ip,
        Refusal::Rate,
        Refusal::Signature,
        Refusal::Cors,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Ip => "ip",
            Refusal::Rate => "rate",
            Refusal::Signature => "signature",
            Refusal::Cors => "cors",
        }
    }
}

/// The guards of one channel version, ready for requests.
pub struct Guards {
    pub allow: Option<allow::AllowList>,
    pub rate: Option<rate::Limiter>,
    pub verify: Option<verify::Verifier>,
    pub cors: Option<cors::Cors>,
}

/// Settings stored that do not parse (a write from elsewhere, a manual edit).
#[derive(Debug, thiserror::Error)]
#[error("the channel's stored guard settings do not parse; refusing every caller: {0}")]
pub struct BrokenGuards(String);

impl Guards {
    /// The channel's guards, `None` when it has none. Stored settings that do not
    /// parse fail closed: every caller is refused as not listed (and the error is
    /// returned with them, for the log).
    pub fn build(
        channel: &Channel,
        stats: &Arc<ChannelStats>,
        max_clients: usize,
    ) -> (Option<Box<Guards>>, Option<BrokenGuards>) {
        if channel.guards.is_empty() {
            return (None, None);
        }
        let closed = || {
            Box::new(Guards {
                allow: Some(allow::AllowList::deny_all()),
                rate: None,
                verify: None,
                cors: None,
            })
        };
        let s = match GuardSettings::parse(&channel.guards) {
            Ok(s) => s,
            Err(e) => return (Some(closed()), Some(BrokenGuards(e.to_string()))),
        };
        let verify = match s.verify.as_ref().map(verify::Verifier::new) {
            Some(None) => {
                return (
                    Some(closed()),
                    Some(BrokenGuards("verify: bad secret or header".into())),
                );
            }
            Some(v) => v,
            None => None,
        };
        let guards = Guards {
            allow: (!s.allow_ips.is_empty()).then(|| allow::AllowList::new(&s.allow_ips)),
            rate: s
                .rate_limit
                .as_ref()
                .map(|r| rate::Limiter::new(r, max_clients, stats)),
            verify,
            cors: s.cors.as_ref().map(cors::Cors::new),
        };
        (Some(Box::new(guards)), None)
    }
}

/// The channel's signing secrets (for `redact::Secrets`): the `verify` secret, and a
/// Standard Webhooks secret without its `whsec_` prefix too. Empty without `verify`.
pub fn secrets_of(channel: &Channel) -> Vec<String> {
    // A scan, not a parse, for the channels (most) without `verify`.
    if !channel.guards.contains("\"verify\"") {
        return Vec::new();
    }
    let Some(verify) = GuardSettings::parse(&channel.guards)
        .ok()
        .and_then(|s| s.verify)
    else {
        return Vec::new();
    };
    let secret = verify.secret();
    let mut out = vec![secret.to_string()];
    if let Some(bare) = secret.strip_prefix(crate::signatures::STANDARD_SECRET_PREFIX) {
        out.push(bare.to_string());
    }
    out
}
