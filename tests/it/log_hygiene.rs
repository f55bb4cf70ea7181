//! Log hygiene on the real binary, in both log formats: every path form a token can be
//! sent in, scripts that log what callers send them (tokens, control characters) and
//! what the outgoing side echoes (the outgoing tokens), a failing script, an eventing
//! subscription — and then the whole log is searched: no secret of any kind, no raw
//! control character. Error bodies are searched too.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, GatewayProcess, eventually, token_of};
use crate::receiver::Receiver;

const PRIMARY: &str = "primary-outgoing-secret-0001";
const SECONDARY: &str = "secondary-outgoing-secret-0002";

const SCRIPT: &str = r#"
    let body = startparam(4);
    log(body);
    print("forged\nline \x1b[31mred\r");
    log("warn", startparam(5));
    let r = outgoing_request("GET", "/echo");
    log(r.body);
    debug(r.body);
    if body.contains("throw") { throw "failing with " + r.body + " and " + body; }
    response_content = "ok";
"#;

/// One raw HTTP/1.1 request (the path exactly as given); the whole response.
fn raw(port: u16, method: &str, path: &str, body: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

async fn no_secret_in_the_log(format: &str) {
    let upstream = Receiver::start(|seen| {
        (
            200,
            seen.headers
                .get("authorization")
                .cloned()
                .unwrap_or_default(),
        )
    });
    let hooks = Receiver::start(|_| (200, String::new()));
    let dir = std::env::temp_dir().join(format!("oktell-logs-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("c.toml");
    std::fs::write(&config, "delivery_poll_ms = 50\n").unwrap();
    let gw = GatewayProcess::start_logging(
        &dir,
        &[
            "--config".into(),
            config.display().to_string(),
            "--log-format".into(),
            format.into(),
            "--log-level".into(),
            "debug".into(),
            "--allow-private-targets".into(),
        ],
    )
    .await;
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let leaky = gw
        .create_channel(json!({
            "code": "leaky", "kind": "public", "wait_for_completion": true,
            "outgoing_url": upstream.url,
            "outgoing_token_primary": PRIMARY, "outgoing_token_secondary": SECONDARY,
            "webhook_scenario": SCRIPT,
        }))
        .await;
    let token = token_of(&leaky);
    let feed = gw
        .create_channel(json!({"code": "feed", "kind": "eventing"}))
        .await;
    let feed_token = token_of(&feed);
    let mut res = client
        .post(format!("{}/api/token/v1/{feed_token}/subscribe", gw.base))
        .send_json(&json!({"url": format!("{}/hook", hooks.url)}))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let sub: Value = res.json().await.unwrap();
    let sub_secret = sub["secret"].as_str().unwrap().to_string();
    let published = client
        .post(format!("{}/admin/v1/events", gw.base))
        .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
        .send_json(&json!({"type": "x.y", "data": {"token": token}}))
        .await
        .unwrap();
    assert!(published.status().is_success(), "{}", published.status());

    // Every path form of the token; the body carries it too, with control characters.
    let mut first = token.chars();
    let encoded_first = format!("%{:02X}", first.next().unwrap() as u32);
    let rest: String = first.collect();
    let paths = [
        format!("/api/token/v1/{token}"),
        format!("/api/token/v1//{token}"),
        format!("/api/token/v1/{token}/"),
        format!("/api/token/v1/x/../{token}"),
        format!("/api/token/v1/./{token}"),
        format!("/x/../api/token/v1/{token}"),
        format!("/api/token/v1/{encoded_first}{rest}"),
        format!("/API/token/v1/{token}"),
        format!("/ws/token/v1//{token}"),
        format!("/ws/token/v1/{token}/x"),
        format!("/nowhere/{token}"),
    ];
    let body = format!("caller sent {token}\nforged line\u{1b}[2J {feed_token}");
    for path in &paths {
        for method in ["POST", "GET"] {
            let response = raw(gw.port, method, path, &body);
            assert!(!response.contains(&token), "{path}: {response}");
        }
    }
    let response = raw(gw.port, "POST", &paths[0], "please throw");
    assert!(response.contains(" 500 "), "{response}");
    assert!(!response.contains(PRIMARY), "{response}");
    // An admin call with a wrong token, one with the right one.
    let _ = raw(gw.port, "GET", "/admin/v1/channels", "");
    eventually(
        "the event delivered and the script's lines logged",
        Duration::from_secs(30),
        || {
            let log = gw.log_text();
            let hooks_seen = hooks.seen().len();
            async move { hooks_seen >= 1 && log.contains("failing with") && log.contains("forged") }
        },
    )
    .await;
    let log = gw.log_text();
    for (kind, secret) in [
        ("channel token", token.as_str()),
        ("eventing channel token", feed_token.as_str()),
        ("outgoing primary token", PRIMARY),
        ("outgoing secondary token", SECONDARY),
        ("subscription secret", sub_secret.as_str()),
        ("admin token", ADMIN_TOKEN),
    ] {
        assert!(
            !log.contains(secret),
            "the {kind} is in the {format} log:\n{log}"
        );
    }
    for (n, line) in log.lines().enumerate() {
        assert!(
            !line.chars().any(char::is_control),
            "{format} log line {n} holds a raw control character: {line:?}"
        );
    }
    // What was masked or escaped is still there, readable.
    let escaped = if format == "json" {
        r"forged\nline \u001b[31mred\r"
    } else {
        r"forged\nline \u{1b}[31mred\r"
    };
    assert!(log.contains(escaped), "{escaped} not in\n{log}");
    assert!(log.contains("caller sent ***"), "{log}");
    assert!(
        log.matches("/api/token/v1/***").count() >= 10,
        "request lines with the token masked:\n{log}"
    );
    if std::env::var("IT_SHOW_LOG").is_ok() {
        eprintln!("{log}");
    }
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_web::test]
async fn no_secret_and_no_control_character_reaches_the_human_log() {
    no_secret_in_the_log("human").await;
}

#[actix_web::test]
async fn no_secret_and_no_control_character_reaches_the_json_log() {
    no_secret_in_the_log("json").await;
}
