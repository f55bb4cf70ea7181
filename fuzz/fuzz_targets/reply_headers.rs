//! `response_headers` in both forms a script may use (a map, or a JSON object in a
//! string): whatever the script sets, the reply is either refused with a scenario error
//! or every header it keeps is a valid HTTP header (the webhook route turns them into
//! HeaderName/HeaderValue and must never meet one it cannot).
#![no_main]

use actix_web::http::header::{HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use oktell_gateway::scenario::ScenarioReply;
use oktell_gateway::scenario::rhai_runtime::reply_headers;
use rhai::{Dynamic, Map};

fn check(value: Dynamic) {
    let Ok(headers) = reply_headers(&value) else {
        return;
    };
    let reply = ScenarioReply {
        headers,
        ..ScenarioReply::default()
    };
    if let Ok(reply) = reply.validated() {
        for (name, value) in &reply.headers {
            assert!(HeaderName::from_bytes(name.as_bytes()).is_ok(), "{name:?}");
            assert!(HeaderValue::from_str(value).is_ok(), "{value:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The JSON-string form, as the script would set it.
    check(Dynamic::from(text.to_string()));
    // The map form: lines of `name: value` (a value may be another type in a script;
    // a number stands for those).
    let mut map = Map::new();
    for line in text.lines() {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = match value.trim().parse::<i64>() {
            Ok(n) => Dynamic::from(n),
            Err(_) => Dynamic::from(value.to_string()),
        };
        map.insert(name.into(), value);
    }
    check(Dynamic::from_map(map));
});
