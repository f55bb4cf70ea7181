//! Signature verification as scripts use it (`verify_standard_webhook`,
//! `constant_time_eq`, the decoders): any secret, headers and body are answered without
//! panicking, and a body signed with the gateway's own delivery signer verifies while
//! the same body with one byte changed does not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oktell_gateway::events::signing::sign;
use oktell_gateway::scenario::script_crypto;
use rhai::{Blob, Dynamic, Engine, Map, Scope};

fn engine() -> Engine {
    let mut engine = Engine::new_raw();
    script_crypto::register(&mut engine, 1 << 20);
    engine
}

fn verify(engine: &Engine, secret: &str, id: &str, ts: &str, sig: &str, body: &[u8]) -> Option<bool> {
    let mut headers = Map::new();
    headers.insert("webhook-id".into(), id.into());
    headers.insert("webhook-timestamp".into(), ts.into());
    headers.insert("webhook-signature".into(), sig.into());
    let mut scope = Scope::new();
    scope.push("secret", secret.to_string());
    scope.push("headers", headers);
    scope.push("body", Dynamic::from_blob(Blob::from(body)));
    engine
        .eval_with_scope::<bool>(&mut scope, "verify_standard_webhook(secret, headers, body, 9223372036854775807)")
        .ok()
}

fuzz_target!(|data: &[u8]| {
    thread_local! { static ENGINE: Engine = engine(); }
    ENGINE.with(|engine| {
        // Arbitrary parts, split at 0xff bytes.
        let mut parts = data.split(|b| *b == 0xff);
        let mut text = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let (secret, id, ts, sig) = (text(), text(), text(), text());
        let body = data;
        let _ = verify(engine, &secret, &id, &ts, &sig, body);
        for script in [
            format!("from_base64({sig:?})"),
            format!("from_hex({sig:?})"),
            format!("constant_time_eq({secret:?}, {id:?})"),
        ] {
            let _ = engine.eval::<Dynamic>(&script);
        }
        // Round trip: signed by the delivery signer, verified by the script function
        // (the largest tolerance: any timestamp). Message ids are `msg_` + alphanumerics.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
        let id = format!("msg_{id}");
        let signature = format!("v1,{}", sign(secret, &id, 1_700_000_000, body));
        {
            assert_eq!(verify(engine, secret, &id, "1700000000", &signature, body), Some(true));
            let mut tampered = body.to_vec();
            tampered.push(b'x');
            assert_eq!(verify(engine, secret, &id, "1700000000", &signature, &tampered), Some(false));
        }
    });
});
