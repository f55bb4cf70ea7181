//! Script functions for verifying signed webhooks (`src/scenario/script_crypto.rs`)
//! and the raw body, against published test vectors.
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use crate::helpers::{Backend, Reply, TestApp, spawn_app, spawn_app_with, token_of};

/// The Standard Webhooks specification's test vector.
const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SW_TIMESTAMP: u64 = 1614265330;
const SW_BODY: &str = r#"{"test": 2432232314}"#;
const SW_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn post(app: &TestApp, token: &str, headers: &[(&str, String)], body: &[u8]) -> Reply {
    let mut req = app.client.post(app.url(&format!("/api/token/v1/{token}")));
    for (name, value) in headers {
        req = req.insert_header((*name, value.clone()));
    }
    app.send(req, Some(body.to_vec())).await
}

/// Verifies with the headers as the JSON string of `startparam(5)` and the raw body,
/// then with the headers as a map and the body's text form; tolerance from a header.
const STANDARD_WEBHOOK_SCENARIO: &str = r#"
    const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let h = parse_json(startparam(5));
    let tolerance = parse_int(h["x-tolerance"]);
    let raw = verify_standard_webhook(SECRET, startparam(5), body_bytes(), tolerance);
    let text = verify_standard_webhook(SECRET, h, startparam(4), tolerance);
    if !raw { response_code = 401; }
    response_content = `${raw} ${text}`;
"#;

fn sw_headers(
    id: &str,
    timestamp: u64,
    signature: &str,
    tolerance: u64,
) -> Vec<(&'static str, String)> {
    vec![
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature.to_string()),
        ("x-tolerance", tolerance.to_string()),
    ]
}

#[actix_web::test]
async fn standard_webhooks_spec_vector_verifies_and_tampering_fails() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let c = app
        .public_channel("sw", true, STANDARD_WEBHOOK_SCENARIO)
        .await;
    let token = token_of(&c);
    // The vector is from 2021: a tolerance that reaches back to it.
    let wide = unix_now() - SW_TIMESTAMP + 3600;
    let r = post(
        &app,
        &token,
        &sw_headers(SW_ID, SW_TIMESTAMP, SW_SIGNATURE, wide),
        SW_BODY.as_bytes(),
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "true true"));
    // Several signatures (a sender rotating its secret): one that verifies is enough.
    let several = format!("v1,bm9wZQ== v2,xyz {SW_SIGNATURE}");
    let r = post(
        &app,
        &token,
        &sw_headers(SW_ID, SW_TIMESTAMP, &several, wide),
        SW_BODY.as_bytes(),
    )
    .await;
    assert_eq!(r.text(), "true true");
    // A tampered body, id or timestamp.
    let r = post(
        &app,
        &token,
        &sw_headers(SW_ID, SW_TIMESTAMP, SW_SIGNATURE, wide),
        br#"{"test": 2432232315}"#,
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (401, "false false"));
    let r = post(
        &app,
        &token,
        &sw_headers("msg_other", SW_TIMESTAMP, SW_SIGNATURE, wide),
        SW_BODY.as_bytes(),
    )
    .await;
    assert_eq!(r.text(), "false false");
    let r = post(
        &app,
        &token,
        &sw_headers(SW_ID, SW_TIMESTAMP + 1, SW_SIGNATURE, wide),
        SW_BODY.as_bytes(),
    )
    .await;
    assert_eq!(r.text(), "false false");
    // The right signature, but too old for a 5-minute tolerance.
    let r = post(
        &app,
        &token,
        &sw_headers(SW_ID, SW_TIMESTAMP, SW_SIGNATURE, 300),
        SW_BODY.as_bytes(),
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (401, "false false"));
    // No signature header at all.
    let mut missing = sw_headers(SW_ID, SW_TIMESTAMP, SW_SIGNATURE, wide);
    missing.retain(|(name, _)| *name != "webhook-signature");
    let r = post(&app, &token, &missing, SW_BODY.as_bytes()).await;
    assert_eq!(r.text(), "false false");
}

#[actix_web::test]
async fn a_binary_body_verifies_through_body_bytes_only() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let c = app
        .public_channel("sw-bin", true, STANDARD_WEBHOOK_SCENARIO)
        .await;
    let token = token_of(&c);
    // Not UTF-8: the string form replaces these bytes, so its signature differs.
    let body: &[u8] = b"\xff\xfe\x00binary \x80\xc3(";
    let key = base64::engine::general_purpose::STANDARD
        .decode(SW_SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let now = unix_now();
    let mut signed = format!("{SW_ID}.{now}.").into_bytes();
    signed.extend_from_slice(body);
    // An HMAC written out from RFC 2104, independent of the gateway's.
    let signature = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD
            .encode(crate::deliveries::hmac_sha256(&key, &signed))
    );
    let r = post(&app, &token, &sw_headers(SW_ID, now, &signature, 300), body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "true false"));

    // body_bytes() is the body exactly; startparam(4) stays the lossy text.
    let echo = app
        .public_channel(
            "echo",
            true,
            r#"response_content = body_bytes();
               response_headers = #{ "x-text": to_hex(startparam(4)) };"#,
        )
        .await;
    let r = post(&app, &token_of(&echo), &[], body).await;
    assert_eq!(r.body, body);
    assert_eq!(
        r.header("x-text").unwrap(),
        "efbfbdefbfbd0062696e61727920efbfbdefbfbd28"
    );
}

#[actix_web::test]
async fn github_hub_signature_256_example_verifies() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let c = app
        .public_channel(
            "github",
            true,
            r#"let h = parse_json(startparam(5));
               let expected = "sha256=" + to_hex(hmac_sha256("It's a Secret to Everybody", body_bytes()));
               let given = h["x-hub-signature-256"] ?? "";
               response_code = if constant_time_eq(expected, given) { 200 } else { 401 };
               response_content = expected;"#,
        )
        .await;
    let token = token_of(&c);
    let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let header = [("x-hub-signature-256", expected.to_string())];
    let r = post(&app, &token, &header, b"Hello, World!").await;
    assert_eq!((r.status, r.text().as_str()), (200, expected));
    let r = post(&app, &token, &header, b"Hello, World?").await;
    assert_eq!(r.status, 401);
    let r = post(&app, &token, &[], b"Hello, World!").await;
    assert_eq!(r.status, 401);
}

/// Runs `expr` in a scenario and answers its value as text.
async fn eval(app: &TestApp, expr: &str) -> Reply {
    let c = app
        .public_channel(
            &format!("e{}", uuid::Uuid::new_v4().simple()),
            true,
            &format!("response_content = `${{{expr}}}`;"),
        )
        .await;
    app.webhook(&token_of(&c), "POST", "", "").await
}

#[actix_web::test]
async fn rfc_hmac_and_sha256_vectors() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let cases = [
        // RFC 4231 test case 1 (key 0x0b × 20) and 2.
        (
            r#"to_hex(hmac_sha256(from_hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"), "Hi There"))"#,
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        ),
        (
            r#"to_hex(hmac_sha256("Jefe", "what do ya want for nothing?"))"#,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        // RFC 2202 test cases 1 and 2.
        (
            r#"to_hex(hmac_sha1(from_hex("0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B"), "Hi There"))"#,
            "b617318655057264e28bc0b6fb378c8ef146be00",
        ),
        (
            r#"to_hex(hmac_sha1("Jefe", "what do ya want for nothing?"))"#,
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
        ),
        // FIPS 180-2's "abc".
        (
            r#"to_hex(sha256("abc"))"#,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        // RFC 4648's base64 examples, both ways.
        (r#"to_base64("foobar")"#, "Zm9vYmFy"),
        (r#"to_base64(from_hex("666f6f62"))"#, "Zm9vYg=="),
        (r#"to_hex(from_base64("Zm9vYg=="))"#, "666f6f62"),
        (r#"to_hex(from_base64("Zm9vYg"))"#, "666f6f62"),
        (r#"to_hex(from_base64("-_8"))"#, "fbff"),
        (r#"constant_time_eq("abc", from_hex("616263"))"#, "true"),
        (r#"constant_time_eq("abc", "abd")"#, "false"),
        (r#"constant_time_eq("abc", "abcd")"#, "false"),
        (
            r#"format_rfc3339(1614265330123)"#,
            "2021-02-25T15:02:10.123Z",
        ),
        (
            r#"parse_rfc3339("2021-02-25T16:02:10.123+01:00")"#,
            "1614265330123",
        ),
        (r#"parse_rfc3339(format_rfc3339(0))"#, "0"),
    ];
    for (expr, expected) in cases {
        let r = app_eval_text(&app, expr).await;
        assert_eq!(r, expected, "{expr}");
    }
}

async fn app_eval_text(app: &TestApp, expr: &str) -> String {
    let r = eval(app, expr).await;
    assert_eq!(r.status, 200, "{expr}: {}", r.text());
    r.text()
}

#[actix_web::test]
async fn ids_and_clock() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let id = app_eval_text(&app, "uuid()").await;
    let parsed = uuid::Uuid::parse_str(&id).unwrap();
    assert_eq!(parsed.get_version_num(), 4);
    assert_ne!(app_eval_text(&app, "uuid()").await, id);
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let ms: i64 = app_eval_text(&app, "now_ms()").await.parse().unwrap();
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (before..=after).contains(&ms),
        "{before} <= {ms} <= {after}"
    );
}

#[actix_web::test]
async fn bad_input_is_a_script_error_with_a_clear_message() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.scenario_max_string_bytes = 64)
        .await
        .unwrap();
    let cases = [
        (
            r#"from_hex("abc")"#,
            "from_hex: odd number of hex digits (3)",
        ),
        (r#"from_hex("zz")"#, "from_hex: not a hex digit at offset 0"),
        (r#"from_base64("*")"#, "from_base64: "),
        (
            r#"sha256(42)"#,
            "sha256: data must be a string or a blob, not i64",
        ),
        (
            r#"hmac_sha256(#{}, "x")"#,
            "hmac_sha256: key must be a string or a blob",
        ),
        (
            r#"parse_rfc3339("yesterday")"#,
            "parse_rfc3339: \"yesterday\" is not an RFC 3339 time",
        ),
        (
            r#"format_rfc3339(-1)"#,
            "format_rfc3339: -1 ms is outside years 1970 to 9999",
        ),
        (
            r#"verify_standard_webhook("whsec_*", #{}, "", 300)"#,
            "verify_standard_webhook: the secret is not whsec_ followed by base64",
        ),
        (
            r#"verify_standard_webhook("whsec_AAAA", 5, "", 300)"#,
            "verify_standard_webhook: headers must be a map or a JSON object string",
        ),
    ];
    for (expr, expected) in cases {
        let script = format!(
            "try {{ {expr}; response_content = \"no error\"; }} catch (e) {{ response_content = e; }}"
        );
        let c = app
            .public_channel(
                &format!("b{}", uuid::Uuid::new_v4().simple()),
                true,
                &script,
            )
            .await;
        let r = app.webhook(&token_of(&c), "POST", "", "").await;
        assert_eq!(r.status, 200, "{expr}");
        assert!(r.text().starts_with(expected), "{expr}: {}", r.text());
    }
    // Output bounded by the string limit (64 bytes here) before it is built.
    let c = app
        .public_channel(
            "over",
            true,
            r#"try { to_hex(body_bytes()); } catch (e) { response_content = e; }"#,
        )
        .await;
    let r = app
        .webhook(&token_of(&c), "POST", "", &"x".repeat(40))
        .await;
    assert_eq!(
        r.text(),
        "to_hex: the result would be 80 bytes, over the 64-byte string limit"
    );
    // A body longer than a blob may be (scenario_max_array_len) is refused by name.
    let small = spawn_app_with(Backend::Sqlite, |c| c.scenario_max_array_len = 16)
        .await
        .unwrap();
    let c = small
        .public_channel(
            "long",
            true,
            r#"try { response_content = body_bytes(); } catch (e) { response_content = e; }"#,
        )
        .await;
    let r = small
        .webhook(&token_of(&c), "POST", "", &"y".repeat(16))
        .await;
    assert_eq!(r.text(), "y".repeat(16));
    let r = small
        .webhook(&token_of(&c), "POST", "", &"y".repeat(17))
        .await;
    assert_eq!(
        r.text(),
        "body_bytes(): the body is 17 bytes, over scenario_max_array_len (16)"
    );
    // Without try/catch: 500, details in the log only.
    let c = app
        .public_channel("uncaught", true, r#"from_hex("zz");"#)
        .await;
    let r = app.webhook(&token_of(&c), "POST", "", "").await;
    assert_eq!((r.status, r.error_code().as_str()), (500, "scenario_error"));
}

#[actix_web::test]
async fn dry_runs_verify_the_sample_body_and_websockets_have_none() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let c = app
        .create_channel(serde_json::json!({
            "code": "dry-github", "kind": "public", "wait_for_completion": true,
            "webhook_scenario": r#"let h = parse_json(startparam(5));
                let mac = to_hex(hmac_sha256("It's a Secret to Everybody", body_bytes()));
                response_code = if constant_time_eq("sha256=" + mac, h["x-hub-signature-256"] ?? "") { 200 } else { 401 };"#,
            "websocket_scenario": "body_bytes();",
        }))
        .await;
    let dry_run = |body: serde_json::Value| {
        let path = format!("/admin/v1/channels/{}/dry-run", crate::helpers::id_of(&c));
        let app = &app;
        async move { app.admin("POST", &path, Some(body)).await.json() }
    };
    let signed = |body: &str| {
        serde_json::json!({ "request": { "method": "POST", "body": body, "headers": {
            "X-Hub-Signature-256": "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        } } })
    };
    let report = dry_run(signed("Hello, World!")).await;
    assert_eq!(report["reply"]["code"], 200, "{report}");
    let report = dry_run(signed("Hello, World?")).await;
    assert_eq!(report["reply"]["code"], 401, "{report}");
    let report =
        dry_run(serde_json::json!({ "websocket": { "session": "s1", "text": "hi" } })).await;
    assert_eq!(report["ok"], false, "{report}");
    assert!(
        report
            .to_string()
            .contains("body_bytes(): this run has no request body"),
        "{report}"
    );
}
