//! A channel's checks before any scenario (issue #14 items 2 and 3): `allow_ips`,
//! `rate_limit`, `verify` and `cors`, on the real gateway with real signature vectors.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

use crate::helpers::{
    Backend, Reply, TestApp, eventually, id_of, spawn_app, spawn_app_logged, spawn_app_with,
    token_of,
};
use crate::ops::sample;

/// The Standard Webhooks specification's test vector.
const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SPEC_TIMESTAMP: &str = "1614265330";
const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

/// GitHub's documented example of `X-Hub-Signature-256`.
const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const GITHUB_BODY: &str = "Hello, World!";
const GITHUB_SIGNATURE: &str =
    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

/// Signs as a Standard Webhooks sender does (written here from the spec, not with
/// the gateway's code).
fn standard_signature(secret: &str, id: &str, timestamp: &str, body: &str) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

fn now_s() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string()
}

async fn post(app: &TestApp, token: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut req = app.client.post(app.url(&format!("/api/token/v1/{token}")));
    for (name, value) in headers {
        req = req.insert_header((*name, *value));
    }
    app.send(req, Some(body.as_bytes().to_vec())).await
}

async fn patch(app: &TestApp, id: &str, body: Value) -> Reply {
    app.admin("PATCH", &format!("/admin/v1/channels/{id}"), Some(body))
        .await
}

/// The refusals of a channel as its runtime counters tell them.
async fn refused(app: &TestApp, id: &str, kind: &str) -> u64 {
    app.runtime(id).await["refused"][kind].as_u64().unwrap()
}

async fn metric(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(&app.metrics().await.text(), name, labels).unwrap_or(-1.0)
}

/// With wait off, a wrong or missing signature is answered 401 at once and the script
/// never runs (its runs are counted: only the valid requests are); valid Standard
/// Webhooks requests go through, a tampered body and an old timestamp do not.
async fn standard_webhooks_verify_refuses_before_the_script(app: TestApp) {
    let c = app
        .create_channel(json!({
            "code": "signed",
            "kind": "public",
            "wait_for_completion": false,
            "webhook_scenario": "response_content = \"ran\";",
            "verify": {"scheme": "standard-webhooks", "secret": SPEC_SECRET},
        }))
        .await;
    let (token, id) = (token_of(&c), id_of(&c));

    // No signature at all.
    let r = post(&app, &token, &[], SPEC_BODY).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.error_code(), "invalid_signature");
    // The spec's own vector: a good signature, but its timestamp is from 2021.
    let spec = [
        ("webhook-id", SPEC_ID),
        ("webhook-timestamp", SPEC_TIMESTAMP),
        ("webhook-signature", SPEC_SIGNATURE),
    ];
    assert_eq!(post(&app, &token, &spec, SPEC_BODY).await.status, 401);
    // Fresh, signed as a sender signs: the body tampered with.
    let ts = now_s();
    let sig = standard_signature(SPEC_SECRET, "msg_1", &ts, SPEC_BODY);
    let fresh = [
        ("webhook-id", "msg_1"),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", sig.as_str()),
    ];
    let tampered = post(&app, &token, &fresh, r#"{"test": 2432232315}"#).await;
    assert_eq!(tampered.status, 401);
    assert_eq!(refused(&app, &id, "signature").await, 3);
    assert_eq!(app.runtime(&id).await["requests"], 0, "no script started");

    // The genuine request passes (wait off: 200 at once) and its script runs.
    let ok = post(&app, &token, &fresh, SPEC_BODY).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    // One of several signatures (a sender rotating its secret) is enough.
    let both = format!("v1,bm9wZQ== {sig}");
    let rotated = [
        ("webhook-id", "msg_1"),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", both.as_str()),
    ];
    assert_eq!(post(&app, &token, &rotated, SPEC_BODY).await.status, 200);
    eventually(
        "both valid runs completed",
        Duration::from_secs(10),
        || async { app.runtime(&id).await["completed"] == 2 },
    )
    .await;
    let runtime = app.runtime(&id).await;
    assert_eq!(
        runtime["requests"], 2,
        "only the valid requests ran: {runtime}"
    );
    assert_eq!(
        metric(
            &app,
            "oktell_channel_refusals_total",
            &[("channel", "signed"), ("reason", "signature")]
        )
        .await,
        3.0
    );
}

crate::on_both_backends!(standard_webhooks_verify_refuses_before_the_script);

/// GitHub's `X-Hub-Signature-256: sha256=<hex>` with its documented vector.
#[actix_web::test]
async fn github_signature_header() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let c = app
        .create_channel(json!({
            "code": "github",
            "kind": "public",
            "wait_for_completion": true,
            "webhook_scenario": "response_content = \"ran\";",
            "verify": {"scheme": "hmac-sha256-header", "header": "X-Hub-Signature-256",
                       "prefix": "sha256=", "secret": GITHUB_SECRET, "encoding": "hex"},
        }))
        .await;
    let token = token_of(&c);
    let signed = [("X-Hub-Signature-256", GITHUB_SIGNATURE)];
    let ok = post(&app, &token, &signed, GITHUB_BODY).await;
    assert_eq!((ok.status, ok.text()), (200, "ran".to_string()));
    let r = post(&app, &token, &signed, "Hello, World?").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "invalid_signature");
    let unprefixed = [("X-Hub-Signature-256", &GITHUB_SIGNATURE[7..])];
    assert_eq!(
        post(&app, &token, &unprefixed, GITHUB_BODY).await.status,
        401
    );
}

/// The verify secret is masked in every view unless asked, a masked secret sent back
/// keeps the stored one, and it is never logged.
#[actix_web::test]
async fn verify_secrets_are_masked_and_never_logged() {
    let (app, logs) = spawn_app_logged(Backend::Sqlite, |_| {}).await.unwrap();
    let secret = "gh-secret-0123456789abcdef";
    let c = app
        .create_channel(json!({
            "code": "masked",
            "kind": "public",
            "wait_for_completion": true,
            "webhook_scenario": format!("log(\"{secret}\"); response_content = \"ok\";"),
            "verify": {"scheme": "hmac-sha256-header", "header": "X-Signature", "secret": secret},
        }))
        .await;
    assert_eq!(c["verify"]["secret"], "********");
    let id = id_of(&c);
    let view = app
        .admin("GET", &format!("/admin/v1/channels/{id}"), None)
        .await
        .json();
    assert_eq!(view["verify"]["secret"], "********");
    assert_eq!(view["verify"]["scheme"], "hmac-sha256-header");
    assert_eq!(view["verify"]["header"], "x-signature");
    let list = app.admin("GET", "/admin/v1/channels", None).await.json();
    assert_eq!(list["items"][0]["verify"]["secret"], "********");
    let path = format!("/admin/v1/channels/{id}?reveal_secrets=true");
    let revealed = app.admin("GET", &path, None).await.json();
    assert_eq!(revealed["verify"]["secret"], secret);

    // The view sent back as it reads (masked) keeps the secret.
    let r = patch(&app, &id, json!({"verify": view["verify"], "comment": "x"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(b"payload");
    let sig = hex_of(&mac.finalize().into_bytes());
    let ok = post(&app, &token_of(&c), &[("X-Signature", &sig)], "payload").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    // The script logged the secret: the line has it masked.
    eventually(
        "the script's line is logged",
        Duration::from_secs(5),
        || {
            let text = logs.text();
            async move { text.contains("\"channel\":\"masked\"") && text.contains("***") }
        },
    )
    .await;
    assert!(!logs.text().contains(secret), "the secret reached the log");
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A peer not in `allow_ips` gets the very 404 of an unknown token; behind a trusted
/// proxy the forwarded client counts, from an untrusted peer X-Forwarded-For does not.
#[actix_web::test]
async fn allow_list_hides_the_channel_and_respects_trusted_proxies() {
    let script = "response_content = \"in\";";
    let channel = |allow: &[&str]| {
        json!({"code": "allow", "kind": "public", "wait_for_completion": true,
               "webhook_scenario": script, "allow_ips": allow})
    };
    let trusting = spawn_app_with(Backend::Sqlite, |c| {
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()]
    })
    .await
    .unwrap();
    let c = trusting.create_channel(channel(&["203.0.113.0/24"])).await;
    assert_eq!(c["allow_ips"], json!(["203.0.113.0/24"]));
    let (token, id) = (token_of(&c), id_of(&c));
    let from = |app: &TestApp, token: &str, xff: Option<&str>| {
        let mut req = app.client.get(app.url(&format!("/api/token/v1/{token}")));
        if let Some(xff) = xff {
            req = req.insert_header(("X-Forwarded-For", xff.to_string()));
        }
        req
    };
    let listed = trusting
        .send(from(&trusting, &token, Some("203.0.113.9")), None)
        .await;
    assert_eq!((listed.status, listed.text()), (200, "in".to_string()));
    let direct = trusting.send(from(&trusting, &token, None), None).await;
    let unknown = trusting
        .send(
            from(&trusting, "no-such-token-0123456789abcdefgh", None),
            None,
        )
        .await;
    assert_eq!(direct.status, 404);
    assert_eq!(
        direct.body, unknown.body,
        "the same 404 as an unknown token"
    );
    assert_eq!(
        direct.header("content-type"),
        unknown.header("content-type")
    );
    let other = trusting
        .send(from(&trusting, &token, Some("198.51.100.1")), None)
        .await;
    assert_eq!(other.status, 404);
    assert_eq!(refused(&trusting, &id, "ip").await, 2);
    // The websocket of the same channel is refused the same way.
    let ws = trusting
        .send(
            trusting
                .client
                .get(trusting.url(&format!("/ws/token/v1/{token}")))
                .insert_header(("Upgrade", "websocket"))
                .insert_header(("Connection", "Upgrade"))
                .insert_header(("Sec-WebSocket-Version", "13"))
                .insert_header(("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")),
            None,
        )
        .await;
    assert_eq!(ws.status, 404);
    assert_eq!(ws.body, unknown.body);

    // Without trusted proxies, X-Forwarded-For is the caller's word: not taken.
    let wary = spawn_app(Backend::Sqlite).await.unwrap();
    let c = wary.create_channel(channel(&["203.0.113.0/24"])).await;
    let token = token_of(&c);
    let spoofed = wary
        .send(from(&wary, &token, Some("203.0.113.9")), None)
        .await;
    assert_eq!(spoofed.status, 404);
    // Listing the loopback lets the direct peer in; an empty list removes the check.
    let r = patch(&wary, &id_of(&c), json!({"allow_ips": ["127.0.0.1"]})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(wary.send(from(&wary, &token, None), None).await.status, 200);
    let r = patch(&wary, &id_of(&c), json!({"allow_ips": ["10.0.0.0/8"]})).await;
    assert_eq!(r.status, 200);
    assert_eq!(wary.send(from(&wary, &token, None), None).await.status, 404);
    let r = patch(&wary, &id_of(&c), json!({"allow_ips": []})).await;
    assert_eq!(r.json()["allow_ips"], json!([]));
    assert_eq!(wary.send(from(&wary, &token, None), None).await.status, 200);

    // An eventing channel's subscription routes check the list too.
    let ev = wary
        .create_channel(json!({"code": "ev", "kind": "eventing", "allow_ips": ["10.0.0.0/8"]}))
        .await;
    let subs = |token: &str| {
        wary.client
            .get(wary.url(&format!("/api/token/v1/{token}/subscribe")))
    };
    let hidden = wary.send(subs(&token_of(&ev)), None).await;
    let unknown = wary
        .send(subs("no-such-token-0123456789abcdefgh"), None)
        .await;
    assert_eq!(hidden.status, 404);
    assert_eq!(hidden.body, unknown.body);
    patch(&wary, &id_of(&ev), json!({"allow_ips": ["127.0.0.0/8"]})).await;
    assert_eq!(wary.send(subs(&token_of(&ev)), None).await.status, 200);
}

/// Over the rate: 429 with Retry-After and a JSON error; once a token is back, the
/// channel answers again.
#[actix_web::test]
async fn rate_limit_answers_429_and_recovers() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let c = app
        .create_channel(json!({
            "code": "limited", "kind": "public", "wait_for_completion": false,
            "webhook_scenario": "",
            "rate_limit": {"per_second": 1, "burst": 2},
        }))
        .await;
    assert_eq!(
        c["rate_limit"],
        json!({"per_second": 1, "burst": 2, "per_client_ip": false})
    );
    let (token, id) = (token_of(&c), id_of(&c));
    let mut statuses = Vec::new();
    let mut limited = None;
    // The burst is 2: within the three requests below at most one token comes back,
    // so at least one of four is refused.
    for _ in 0..4 {
        let r = app.webhook(&token, "POST", "", "x").await;
        statuses.push(r.status);
        if r.status == 429 {
            limited.get_or_insert(r);
        }
    }
    let limited = limited.unwrap_or_else(|| panic!("no 429 in {statuses:?}"));
    assert_eq!(&statuses[..2], &[200, 200]);
    assert_eq!(limited.error_code(), "rate_limited");
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert_eq!(retry, 1, "1 token a second: back within a second");
    let started = Instant::now();
    eventually("the bucket refills", Duration::from_secs(5), || async {
        app.webhook(&token, "POST", "", "x").await.status == 200
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(refused(&app, &id, "rate").await >= 1);
    assert!(
        metric(
            &app,
            "oktell_channel_refusals_total",
            &[("channel", "limited"), ("reason", "rate")]
        )
        .await
            >= 1.0
    );
}

/// `per_client_ip`: each client (here behind a trusted proxy) has its own bucket, and
/// the table keeps at most `rate_limit_max_clients_per_channel` of them.
#[actix_web::test]
async fn per_client_rate_limits_are_separate_and_bounded() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        c.rate_limit_max_clients_per_channel = 2;
    })
    .await
    .unwrap();
    let c = app
        .create_channel(json!({
            "code": "perip", "kind": "public", "wait_for_completion": false,
            "webhook_scenario": "",
            // One request per client, one more a second.
            "rate_limit": {"per_second": 1, "burst": 1, "per_client_ip": true},
        }))
        .await;
    let token = token_of(&c);
    let from = |ip: &'static str| {
        app.client
            .post(app.url(&format!("/api/token/v1/{token}")))
            .insert_header(("X-Forwarded-For", ip))
    };
    let a1 = app.send(from("198.51.100.1"), None).await.status;
    let a2 = app.send(from("198.51.100.1"), None).await.status;
    let b1 = app.send(from("198.51.100.2"), None).await.status;
    assert_eq!((a1, a2, b1), (200, 429, 200), "B has a bucket of its own");
    let labels = [("channel", "perip")];
    assert_eq!(
        metric(&app, "oktell_channel_rate_limit_clients", &labels).await,
        2.0
    );
    assert_eq!(app.send(from("198.51.100.3"), None).await.status, 200);
    assert_eq!(
        metric(&app, "oktell_channel_rate_limit_clients", &labels).await,
        2.0,
        "the table stays within its bound"
    );
    assert_eq!(
        metric(&app, "oktell_channel_rate_limit_evictions_total", &labels).await,
        1.0
    );
}

/// Preflights are answered by the gateway (no scenario); a refused origin gets no
/// allow headers; actual responses to an allowed origin carry the origin and Vary.
/// A channel without `cors` runs its scenario for OPTIONS as for any method.
#[actix_web::test]
async fn cors_preflight_and_actual_responses() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let c = app
        .create_channel(json!({
            "code": "browser", "kind": "public", "wait_for_completion": true,
            "webhook_scenario": "response_content = \"ran \" + startparam(2);",
            "cors": {"allowed_origins": ["https://app.example"], "allowed_methods": ["POST", "PUT"],
                     "allowed_headers": ["Content-Type", "X-Trace"], "max_age_s": 600},
        }))
        .await;
    let (token, id) = (token_of(&c), id_of(&c));
    let preflight = |origin: &str, method: &str| {
        app.client
            .request(
                awc::http::Method::OPTIONS,
                app.url(&format!("/api/token/v1/{token}")),
            )
            .insert_header(("Origin", origin.to_string()))
            .insert_header(("Access-Control-Request-Method", method.to_string()))
            .insert_header(("Access-Control-Request-Headers", "content-type"))
    };
    let ok = app
        .send(preflight("https://app.example", "PUT"), None)
        .await;
    assert_eq!(ok.status, 204, "{}", ok.text());
    assert_eq!(
        ok.header("access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    assert_eq!(
        ok.header("access-control-allow-methods").as_deref(),
        Some("POST, PUT")
    );
    assert_eq!(
        ok.header("access-control-allow-headers").as_deref(),
        Some("content-type, x-trace")
    );
    assert_eq!(ok.header("access-control-max-age").as_deref(), Some("600"));
    assert_eq!(ok.header("vary").as_deref(), Some("Origin"));

    let refused_origin = app
        .send(preflight("https://evil.example", "POST"), None)
        .await;
    assert_eq!(refused_origin.status, 403);
    assert_eq!(refused_origin.error_code(), "cors_refused");
    assert!(
        refused_origin
            .header("access-control-allow-origin")
            .is_none()
    );
    let refused_method = app
        .send(preflight("https://app.example", "DELETE"), None)
        .await;
    assert_eq!(refused_method.status, 403);
    assert_eq!(app.runtime(&id).await["requests"], 0, "no scenario ran");
    assert_eq!(refused(&app, &id, "cors").await, 2);

    let from_page = |origin: &'static str| {
        let req = app
            .client
            .post(app.url(&format!("/api/token/v1/{token}")))
            .insert_header(("Origin", origin));
        app.send(req, Some(b"{}".to_vec()))
    };
    // The actual request: the scenario runs, the answer names the allowed origin.
    let actual = from_page("https://app.example").await;
    assert_eq!(actual.text(), "ran POST");
    assert_eq!(
        actual.header("access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    assert_eq!(actual.header("vary").as_deref(), Some("Origin"));
    // From a page of another origin: answered, but without the allow header.
    let other = from_page("https://evil.example").await;
    assert_eq!(other.text(), "ran POST");
    assert!(other.header("access-control-allow-origin").is_none());

    // Without cors: OPTIONS is the scenario's, as before.
    let plain = app
        .public_channel(
            "plain",
            true,
            "response_content = \"ran \" + startparam(2);",
        )
        .await;
    let r = app
        .send(
            app.client
                .request(
                    awc::http::Method::OPTIONS,
                    app.url(&format!("/api/token/v1/{}", token_of(&plain))),
                )
                .insert_header(("Origin", "https://app.example"))
                .insert_header(("Access-Control-Request-Method", "POST")),
            None,
        )
        .await;
    assert_eq!((r.status, r.text()), (200, "ran OPTIONS".to_string()));
    assert!(r.header("access-control-allow-origin").is_none());
}

/// Bad guard settings are 400 JSON naming the field, and change nothing.
#[actix_web::test]
async fn invalid_guard_settings_are_refused_and_change_nothing() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let c = app
        .public_channel("valid", true, "response_content = \"ok\";")
        .await;
    let id = id_of(&c);
    let cases = [
        (json!({"allow_ips": ["10.0.0.0/33"]}), "allow_ips[0]"),
        (json!({"allow_ips": ["not-an-ip"]}), "allow_ips[0]"),
        (
            json!({"rate_limit": {"per_second": 0}}),
            "rate_limit.per_second",
        ),
        (
            json!({"rate_limit": {"per_second": 5, "burst": 0}}),
            "rate_limit.burst",
        ),
        (
            json!({"rate_limit": {"per_second": 5, "per_ip": true}}),
            "rate_limit",
        ),
        (
            json!({"verify": {"scheme": "rsa-pss", "secret": "x"}}),
            "verify",
        ),
        (json!({"verify": {"scheme": "standard-webhooks"}}), "verify"),
        (
            json!({"verify": {"scheme": "standard-webhooks", "secret": "whsec_***"}}),
            "verify.secret",
        ),
        (
            json!({"verify": {"scheme": "hmac-sha256-header", "header": "X-Sig", "secret": ""}}),
            "verify.secret",
        ),
        (
            json!({"verify": {"scheme": "hmac-sha256-header", "header": "bad header", "secret": "s"}}),
            "verify.header",
        ),
        (
            json!({"cors": {"allowed_origins": ["https://a.example/path"]}}),
            "cors.allowed_origins[0]",
        ),
        (
            json!({"cors": {"allowed_origins": []}}),
            "cors.allowed_origins",
        ),
    ];
    for (body, field) in cases {
        let r = patch(&app, &id, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.error_code(), "invalid_field", "{body}");
        let named = r.json()["error"]["field"].as_str().unwrap().to_string();
        assert!(
            named.starts_with(field),
            "{body}: field {named}, not {field}"
        );
        if field == "verify" {
            // serde names what is wrong: the unknown scheme or the missing secret.
            let message = r.json()["error"]["message"].as_str().unwrap().to_string();
            assert!(
                message.contains("rsa-pss") || message.contains("secret"),
                "{message}"
            );
        }
    }
    let after = app
        .admin("GET", &format!("/admin/v1/channels/{id}"), None)
        .await
        .json();
    assert_eq!(after["version"], c["version"], "nothing was saved");
    assert_eq!(after["allow_ips"], json!([]));
    assert!(after["rate_limit"].is_null() && after["verify"].is_null() && after["cors"].is_null());
    // A create with a bad guard makes no channel.
    let r = app
        .admin(
            "POST",
            "/admin/v1/channels",
            Some(json!({"code": "bad", "kind": "public", "rate_limit": {"per_second": 0}})),
        )
        .await;
    assert_eq!(r.status, 400);
    let list = app.admin("GET", "/admin/v1/channels", None).await.json();
    assert_eq!(list["total"], 1, "{list}");
    // `{}` removes a setting.
    let r = patch(&app, &id, json!({"rate_limit": {"per_second": 3}})).await;
    assert_eq!(r.json()["rate_limit"]["burst"], 3);
    let r = patch(&app, &id, json!({"rate_limit": {}})).await;
    assert!(r.json()["rate_limit"].is_null());
}

/// The CLI takes the same fields with the same validation.
#[test]
fn cli_sets_guards_with_the_api_validation() {
    let dir = std::env::temp_dir().join(format!("oktell-guards-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| crate::cli::gateway(&dir, args);
    let out = run(&[
        "channel",
        "create",
        "--code",
        "guarded",
        "--kind",
        "public",
        "--allow-ips",
        "203.0.113.0/24, 198.51.100.7",
        "--rate-limit",
        r#"{"per_second": 5}"#,
        "--verify",
        r#"{"scheme": "standard-webhooks", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}"#,
        "--cors",
        r#"{"allowed_origins": ["https://app.example"]}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        created["allow_ips"],
        json!(["203.0.113.0/24", "198.51.100.7/32"])
    );
    assert_eq!(created["rate_limit"]["burst"], 5);
    assert_eq!(created["verify"]["secret"], "********");
    assert_eq!(created["verify"]["tolerance_s"], 300);
    assert_eq!(
        created["cors"]["allowed_methods"],
        json!(["GET", "HEAD", "POST"])
    );

    for (flag, value, field) in [
        ("--allow-ips", "10.0.0.0/40", "allow_ips[0]"),
        (
            "--rate-limit",
            r#"{"per_second": 0}"#,
            "rate_limit.per_second",
        ),
        ("--verify", r#"{"scheme": "nope", "secret": "x"}"#, "verify"),
        ("--rate-limit", "not json", "--rate-limit"),
    ] {
        let out = run(&["channel", "update", "guarded", flag, value]);
        assert!(!out.status.success(), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "{flag} {value}: {err}");
    }
    let out = run(&["channel", "show", "guarded"]);
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["version"], 1, "the refused updates changed nothing");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The guard fields are in the OpenAPI document, with their schemas.
#[actix_web::test]
async fn guard_fields_are_documented_in_openapi() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let doc = app
        .send(app.client.get(app.url("/openapi.json")), None)
        .await
        .json();
    let schemas = &doc["components"]["schemas"];
    for name in ["ChannelInput", "ChannelView"] {
        for field in ["allow_ips", "rate_limit", "verify", "cors"] {
            assert!(
                !schemas[name]["properties"][field].is_null(),
                "{name}.{field} in {}",
                schemas[name]
            );
        }
    }
    for name in ["RateLimitSettings", "VerifySettings", "CorsSettings"] {
        assert!(schemas[name].is_object(), "schema {name}");
    }
    let responses = &doc["paths"]["/api/token/v1/{token}"]["post"]["responses"];
    for status in ["204", "401", "403", "429"] {
        assert!(responses[status].is_object(), "webhook response {status}");
    }
}
