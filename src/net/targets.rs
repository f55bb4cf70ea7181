//! Which addresses a webhook delivery may reach, and a resolver for the delivery client
//! that connects only to addresses it has checked.
//!
//! The address classes come from `iprfc`'s snapshot of the IANA IPv4 and IPv6
//! Special-Purpose Address Registries (its `RFC6890` aggregate, regenerated from the
//! registries), plus the multicast blocks (IPv4 224.0.0.0/4, RFC 3171; IPv6 ff00::/8 and
//! the deprecated site-local fec0::/10, RFC 4291), which that registry does not list.
//! An IPv6 address must also be global unicast (2000::/3, the only block of the IANA
//! IPv6 Address Space registry allocated for it).
//!
//! IPv6 forms that embed an IPv4 address are judged by that address as well:
//! IPv4-mapped (::ffff:0:0/96), IPv4-compatible (::/96), SIIT (::ffff:0:0:0/96),
//! NAT64 (64:ff9b::/96), 6to4 (2002::/16) and Teredo (2001::/32, server and client).
//! Mapped and NAT64 addresses of a public IPv4 address are allowed (they are how an
//! IPv6-only host reaches IPv4 receivers, e.g. behind DNS64); the deprecated transition
//! forms (compatible, SIIT, 6to4, Teredo) are refused whatever they embed.
//!
//! DNS rebinding: a name checked once and resolved again at connect time may answer
//! differently the second time. [`CheckedResolver`] resolves, checks every answer and
//! hands the connector exactly the checked addresses; the request keeps the URL's host
//! for its Host header and TLS SNI.

use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use iprfc::{Filter, RFCs};

/// Why a delivery target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("is not a valid URL: {0}")]
    BadUrl(String),
    #[error("must start with http:// or https://")]
    Scheme,
    #[error("must name a host")]
    NoHost,
    #[error("does not resolve: {0}")]
    Unresolved(String),
    #[error(
        "resolves to {addr}, {why}: loopback, private, link-local, multicast, metadata and other special-purpose addresses are not allowed targets"
    )]
    Refused { addr: IpAddr, why: String },
}

/// The IANA special-purpose registries' blocks (and the multicast ones) for IPv4.
fn ipv4_reason(ip: Ipv4Addr) -> Option<String> {
    let special = RFCs::filter(Filter::RFC6890).contains(&IpAddr::V4(ip));
    let multicast = RFCs::filter(Filter::RFC3171).contains(&IpAddr::V4(ip));
    if multicast {
        Some(format!("{ip} is multicast"))
    } else if special {
        Some(format!(
            "{ip} is in the IANA IPv4 special-purpose address registry"
        ))
    } else {
        None
    }
}

/// The IPv4 addresses an IPv6 address embeds, with the form's name, and whether the
/// form is a usable way to reach that IPv4 address (mapped, NAT64).
fn embedded_ipv4(ip: Ipv6Addr) -> Vec<(Ipv4Addr, &'static str, bool)> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => vec![(low, "IPv4-mapped", true)],
        [0, 0, 0, 0, 0xffff, 0, _, _] => vec![(low, "IPv4-translated (SIIT)", false)],
        [0, 0, 0, 0, 0, 0, _, _] => vec![(low, "IPv4-compatible", false)],
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => vec![(low, "NAT64", true)],
        [0x2002, a, b, ..] => vec![(
            Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8),
            "6to4",
            false,
        )],
        [0x2001, 0, a, b, _, _, c, d] => vec![
            (
                Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8),
                "Teredo server",
                false,
            ),
            (
                Ipv4Addr::from(!((u32::from(c) << 16) | u32::from(d))),
                "Teredo client",
                false,
            ),
        ],
        _ => Vec::new(),
    }
}

/// Why `ip` may not be a delivery target (None: it may).
pub fn refusal(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => ipv4_reason(v4),
        IpAddr::V6(v6) => {
            if v6.is_unspecified() || v6.is_loopback() {
                return Some(format!("{v6} is the unspecified or loopback address"));
            }
            let embedded = embedded_ipv4(v6);
            for (v4, form, _) in &embedded {
                if let Some(why) = ipv4_reason(*v4) {
                    return Some(format!("{form} address embedding {v4}: {why}"));
                }
            }
            match embedded.first() {
                // A public IPv4 address reached through a mapped or NAT64 form.
                Some((_, _, true)) => return None,
                Some((_, form, false)) => {
                    return Some(format!("{v6} is a deprecated {form} address"));
                }
                None => {}
            }
            let v6ip = IpAddr::V6(v6);
            if RFCs::filter(Filter::RFC4291).contains(&v6ip) {
                return Some(format!(
                    "{v6} is multicast, link-local or site-local (RFC 4291)"
                ));
            }
            if RFCs::filter(Filter::RFC6890).contains(&v6ip) {
                return Some(format!(
                    "{v6} is in the IANA IPv6 special-purpose address registry"
                ));
            }
            if v6.segments()[0] & 0xe000 != 0x2000 {
                return Some(format!("{v6} is not a global unicast address (2000::/3)"));
            }
            None
        }
    }
}

/// The address to connect to: an IPv4-mapped IPv6 address is its IPv4 address.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// Keeps resolved addresses only if every one of them may be reached (one refused
/// answer refuses the name: the client could pick any).
pub fn checked(
    addrs: Vec<SocketAddr>,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, TargetError> {
    if addrs.is_empty() {
        return Err(TargetError::Unresolved("no address".into()));
    }
    if !allow_private {
        for a in &addrs {
            if let Some(why) = refusal(a.ip()) {
                return Err(TargetError::Refused { addr: a.ip(), why });
            }
        }
    }
    Ok(addrs.into_iter().map(canonical).collect())
}

/// A parsed target URL: scheme http(s) and a host.
pub fn parse_target(raw: &str) -> Result<url::Url, TargetError> {
    let url = url::Url::parse(raw).map_err(|e| TargetError::BadUrl(e.to_string()))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(TargetError::Scheme);
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(TargetError::NoHost);
    }
    Ok(url)
}

/// The IP address of a URL whose host is an IP literal.
pub fn literal_ip(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

/// A delivery target must be http(s) and, unless private targets are allowed, resolve
/// only to addresses that may be reached. Blocking (a name lookup): call it off the
/// async threads and never while holding a database connection.
pub fn check_target(raw: &str, allow_private: bool) -> Result<(), TargetError> {
    let url = parse_target(raw)?;
    if allow_private {
        return Ok(());
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs = match literal_ip(&url) {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => {
            let host = url.host_str().unwrap_or_default();
            super::dns::resolve(&format!("{host}:{port}"), Duration::from_secs(5))
                .map_err(|e| TargetError::Unresolved(e.to_string()))?
        }
    };
    checked(addrs, false).map(|_| ())
}

/// Checks a target whose host is an IP literal, with no lookup (names are checked by
/// [`CheckedResolver`] when the delivery connects).
pub fn check_literal(raw: &str, allow_private: bool) -> Result<(), TargetError> {
    let url = parse_target(raw)?;
    match literal_ip(&url) {
        Some(ip) if !allow_private => match refusal(ip) {
            Some(why) => Err(TargetError::Refused { addr: ip, why }),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Looks names up for the delivery client and answers only with addresses that passed
/// the check: the connection goes to an address that was checked, whatever the name
/// answers next time (DNS rebinding). IP literals never reach a resolver (the connector
/// uses them as they are): deliveries check those with [`check_literal`].
pub struct CheckedResolver {
    pub allow_private: bool,
    pub timeout: Duration,
}

impl actix_tls::connect::Resolve for CheckedResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> LocalBoxFuture<'a, Result<Vec<SocketAddr>, Box<dyn StdError>>> {
        Box::pin(async move {
            let found = super::dns::resolve_async(host, port, self.timeout)
                .await
                .map_err(|e| {
                    Box::new(TargetError::Unresolved(e.to_string())) as Box<dyn StdError>
                })?;
            checked(found, self.allow_private).map_err(|e| Box::new(e) as Box<dyn StdError>)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> bool {
        refusal(s.parse().unwrap()).is_some()
    }

    #[test]
    fn special_purpose_addresses_are_refused() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "198.18.0.1",
            "192.0.0.1",
            "192.0.2.1",
            "240.0.0.1",
            "::",
            "::1",
            "::127.0.0.1",
            "::7f00:1",
            "::ffff:127.0.0.1",
            "::ffff:0:7f00:1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "2002:5db8:d822::1",
            "2001:0:5db8:d822::1",
            "2001:db8::1",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "100::1",
            "4000::1",
        ] {
            assert!(refused(bad), "{bad} must be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for good in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:2800:220:1:248:1893:25c8:1946",
            "::ffff:93.184.216.34",
            "64:ff9b::5db8:d822",
        ] {
            assert!(!refused(good), "{good} is public");
        }
    }

    #[test]
    fn the_teredo_client_is_the_inverted_low_bits() {
        // Client 127.0.0.1 obfuscated: !0x7f000001 = 0x80fffffe.
        let forms = embedded_ipv4("2001:0:5db8:d822:0:0:80ff:fffe".parse().unwrap());
        assert_eq!(forms[1].0, Ipv4Addr::LOCALHOST);
        assert!(refused("2001:0:5db8:d822:0:0:80ff:fffe"));
    }

    #[test]
    fn one_refused_answer_refuses_the_name_and_mapped_answers_connect_over_ipv4() {
        let public: SocketAddr = "93.184.216.34:443".parse().unwrap();
        let private: SocketAddr = "10.0.0.1:443".parse().unwrap();
        assert!(matches!(
            checked(vec![public, private], false),
            Err(TargetError::Refused { .. })
        ));
        assert_eq!(checked(vec![public], false).unwrap(), vec![public]);
        let mapped: SocketAddr = "[::ffff:93.184.216.34]:443".parse().unwrap();
        assert_eq!(checked(vec![mapped], false).unwrap(), vec![public]);
        assert_eq!(
            checked(vec![private], true).unwrap(),
            vec![private],
            "allowed when private targets are"
        );
        assert!(checked(Vec::new(), true).is_err());
    }

    #[test]
    fn urls_are_checked() {
        for bad in [
            "http://127.0.0.1/x",
            "http://[::7f00:1]/",
            "http://localhost:8080/",
            "ftp://example.com",
            "not a url",
        ] {
            assert!(check_target(bad, false).is_err(), "{bad}");
        }
        assert!(check_target("http://127.0.0.1:9/x", true).is_ok());
        assert!(check_target("http://93.184.216.34/hook", false).is_ok());
        assert!(check_literal("http://[64:ff9b::7f00:1]/", false).is_err());
        assert!(check_literal("http://example.com/", false).is_ok());
    }
}
