//! Where outgoing calls and webhook deliveries may go: a path a script gives (often
//! caller input) never leaves the channel's outgoing URL, an FTP file never leaves its
//! folder, and the target checks never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oktell_gateway::net::targets;
use oktell_gateway::scenario::outgoing::paths::{join_path, join_url};

const BASES: [&str; 4] = [
    "http://crm.example/api",
    "https://crm.example:8443/api/v2/",
    "http://10.0.0.1",
    "http://[::1]:81/a%20b",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for base in BASES {
        if let Ok(joined) = join_url(base, text) {
            let b = url::Url::parse(base).expect("a valid base");
            let j = url::Url::parse(&joined).expect("join_url returns a URL");
            assert_eq!(b.origin(), j.origin(), "{base} + {text:?} -> {joined}");
            let base_path = b.path().trim_end_matches('/');
            assert!(
                j.path() == b.path() || j.path() == base_path || j.path().starts_with(&format!("{base_path}/")),
                "{base} + {text:?} -> {joined} left the base path"
            );
            assert!(!j.path().split('/').any(|s| s == ".."), "{joined}");
        }
    }
    if let Ok(file) = join_path("/in/box/", text) {
        assert!(file.starts_with("/in/box/"), "{text:?} -> {file}");
        assert!(!file.split('/').any(|s| s == ".."), "{text:?} -> {file}");
    }
    let _ = targets::check_literal(text, false);
    if let Ok(url) = targets::parse_target(text)
        && let Some(ip) = targets::literal_ip(&url)
    {
        let _ = targets::refusal(ip);
    }
});
