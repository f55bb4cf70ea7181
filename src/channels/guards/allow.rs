//! `allow_ips`: the networks a channel's callers may come from.

use std::net::IpAddr;

use ipnet::IpNet;

/// The parsed list; an empty one (stored settings that no longer parse) lets no one in.
pub struct AllowList(Box<[IpNet]>);

impl AllowList {
    /// Entries that do not parse are left out (they were validated when saved).
    pub fn new(entries: &[String]) -> AllowList {
        AllowList(entries.iter().filter_map(|e| e.parse().ok()).collect())
    }

    pub fn deny_all() -> AllowList {
        AllowList(Box::new([]))
    }

    /// Is this sender listed? An IPv4 address seen as IPv6 (`::ffff:a.b.c.d`, a node
    /// listening on `[::]`) counts as the IPv4 one. No sender: no.
    pub fn allows(&self, sender: Option<IpAddr>) -> bool {
        let Some(ip) = sender else { return false };
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_mapped_addresses() {
        let list = AllowList::new(&["10.0.0.0/8".into(), "2001:db8::/32".into()]);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(list.allows(ip("10.2.3.4")));
        assert!(list.allows(ip("::ffff:10.2.3.4")));
        assert!(list.allows(ip("2001:db8::5")));
        assert!(!list.allows(ip("11.0.0.1")));
        assert!(!list.allows(None));
        assert!(!AllowList::deny_all().allows(ip("10.0.0.1")));
    }
}
