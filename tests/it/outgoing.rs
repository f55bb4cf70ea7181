//! `outgoing_request` from scenarios: HTTP with primary then secondary token, and FTP.

use serde_json::json;

use crate::helpers::{Backend, spawn_app_with, token_of};
use crate::receiver::{FtpServer, Receiver};

const CALL: &str = r#"
    let r = outgoing_request("POST", "orders?x=1", startparam(4), #{"X-Source": "oktell"});
    response_code = r.status;
    response_content = r.body;
    response_headers = #{"X-Upstream": r.headers["x-receiver"]};
"#;

#[actix_web::test]
async fn primary_token_then_secondary_on_401() {
    // The outside system has moved on to the new token already.
    let receiver =
        Receiver::start(
            |seen| match seen.headers.get("authorization").map(String::as_str) {
                Some("Bearer new-token") => (
                    200,
                    format!(
                        "accepted {} {}",
                        seen.path,
                        String::from_utf8_lossy(&seen.body)
                    ),
                ),
                _ => (401, "who are you".into()),
            },
        );
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let c = app
        .create_channel(json!({
            "code": "out", "kind": "public", "wait_for_completion": true,
            "outgoing_url": format!("{}/api", receiver.url),
            "outgoing_token_primary": "old-token",
            "outgoing_token_secondary": "new-token",
            "webhook_scenario": CALL,
        }))
        .await;
    let r = app.webhook(&token_of(&c), "POST", "", "payload-1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "accepted /api/orders?x=1 payload-1");
    assert_eq!(r.header("x-upstream").as_deref(), Some("yes"));
    let seen = receiver.seen();
    assert_eq!(seen.len(), 2, "primary, then secondary");
    assert_eq!(seen[0].headers["authorization"], "Bearer old-token");
    assert_eq!(seen[1].headers["authorization"], "Bearer new-token");
    assert!(
        seen.iter()
            .all(|s| s.method == "POST" && s.headers["x-source"] == "oktell")
    );
}

#[actix_web::test]
async fn primary_token_alone_when_accepted_and_refusals_pass_through() {
    let receiver =
        Receiver::start(
            |seen| match seen.headers.get("authorization").map(String::as_str) {
                Some("Bearer good") => (200, "ok".into()),
                _ => (403, "forbidden".into()),
            },
        );
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let good = app
        .create_channel(json!({
            "code": "good", "kind": "public", "wait_for_completion": true,
            "outgoing_url": receiver.url, "outgoing_token_primary": "good",
            "outgoing_token_secondary": "never-used", "webhook_scenario": CALL,
        }))
        .await;
    let r = app.webhook(&token_of(&good), "POST", "", "").await;
    assert_eq!(r.text(), "ok");
    assert_eq!(receiver.seen().len(), 1, "no retry after a success");

    let bad = app
        .create_channel(json!({
            "code": "bad", "kind": "public", "wait_for_completion": true,
            "outgoing_url": receiver.url, "outgoing_token_primary": "x",
            "outgoing_token_secondary": "y", "webhook_scenario": CALL,
        }))
        .await;
    let r = app.webhook(&token_of(&bad), "POST", "", "").await;
    assert_eq!(r.status, 403, "the scenario sees the final refusal");
    assert_eq!(
        receiver.seen().len(),
        3,
        "one retry with the secondary token"
    );
}

#[actix_web::test]
async fn unreachable_outside_system_is_a_catchable_script_error() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    // A port nobody listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = app
        .create_channel(json!({
            "code": "down", "kind": "public", "wait_for_completion": true,
            "outgoing_url": format!("http://127.0.0.1:{port}"),
            "webhook_scenario": r#"
                try { outgoing_request("GET", "x"); response_content = "reached"; }
                catch (e) { response_code = 502; response_content = "down"; }
            "#,
        }))
        .await;
    let r = app.webhook(&token_of(&c), "GET", "", "").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.text(), "down");
}

#[actix_web::test]
async fn ftp_upload_and_download_with_token_fallback() {
    let ftp = FtpServer::start("ftp-new");
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let c = app
        .create_channel(json!({
            "code": "ftp", "kind": "public", "wait_for_completion": true,
            "outgoing_url": format!("ftp://loader@127.0.0.1:{}/inbox", ftp.port),
            "outgoing_token_primary": "ftp-old",
            "outgoing_token_secondary": "ftp-new",
            "webhook_scenario": r#"
                let up = outgoing_request("PUT", "order.json", startparam(4));
                let down = outgoing_request("GET", "order.json");
                response_code = up.status;
                response_content = down.body;
            "#,
        }))
        .await;
    let r = app.webhook(&token_of(&c), "POST", "", "{\"id\":7}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "{\"id\":7}");
    assert_eq!(
        ftp.files.lock().unwrap().get("/inbox/order.json").cloned(),
        Some(b"{\"id\":7}".to_vec())
    );
    let logins = ftp.logins.lock().unwrap().clone();
    assert_eq!(logins[0], ("loader".to_string(), "ftp-old".to_string()));
    assert!(logins.contains(&("loader".to_string(), "ftp-new".to_string())));
}

#[actix_web::test]
async fn a_stalled_ftp_server_cannot_hold_a_scenario_past_its_deadline() {
    let ftp = FtpServer::stalling("pw");
    let app = spawn_app_with(Backend::Sqlite, |c| c.scenario_timeout_ms = 1000)
        .await
        .unwrap();
    let c = app
        .create_channel(json!({
            "code": "stall", "kind": "public", "wait_for_completion": true,
            "outgoing_url": format!("ftp://u@127.0.0.1:{}/", ftp.port),
            "outgoing_token_primary": "pw",
            "webhook_scenario": r#"
                try { outgoing_request("GET", "never.txt"); response_content = "got it"; }
                catch (e) { response_code = 502; response_content = "gave up"; }
            "#,
        }))
        .await;
    let started = std::time::Instant::now();
    let r = app.webhook(&token_of(&c), "POST", "", "").await;
    // Either the script caught the cut-off call, or the run itself timed out: both end
    // near the 1 s deadline instead of hanging.
    assert!(matches!(r.status, 502 | 504), "{} {}", r.status, r.text());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[actix_web::test]
async fn https_outgoing_calls_verify_the_server_against_tls_ca_file() {
    let receiver = Receiver::start_tls(|seen| (200, format!("secure {}", seen.path)));
    assert!(receiver.url.starts_with("https://localhost:"));
    let dir = std::env::temp_dir().join(format!("oktell-ca-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, receiver.ca_pem.as_deref().unwrap()).unwrap();
    let channel = json!({
        "code": "tls", "kind": "public", "wait_for_completion": true,
        "outgoing_url": format!("{}/api", receiver.url),
        "webhook_scenario": r#"
            try { let r = outgoing_request("GET", "orders"); response_content = r.body; }
            catch (e) { response_code = 502; response_content = "refused"; }
        "#,
    });
    // Trusted through --tls-ca-file: the call goes through.
    let trusting = spawn_app_with(Backend::Sqlite, |c| c.tls_ca_file = Some(ca.clone()))
        .await
        .unwrap();
    let c = trusting.create_channel(channel.clone()).await;
    let r = trusting.webhook(&token_of(&c), "POST", "", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "secure /api/orders");
    // Without it the certificate is refused and nothing reaches the server.
    let plain = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let c = plain.create_channel(channel).await;
    let r = plain.webhook(&token_of(&c), "POST", "", "").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(receiver.seen().len(), 1);
    let _ = std::fs::remove_dir_all(dir);
}

#[actix_web::test]
async fn ftps_upload_and_download_over_explicit_tls() {
    let ftp = FtpServer::start_tls("secret");
    let dir = std::env::temp_dir().join(format!("oktell-ca-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ftp.ca_pem.as_deref().unwrap()).unwrap();
    let app = spawn_app_with(Backend::Sqlite, |c| c.tls_ca_file = Some(ca.clone()))
        .await
        .unwrap();
    let c = app
        .create_channel(json!({
            "code": "ftps", "kind": "public", "wait_for_completion": true,
            "outgoing_url": format!("ftps://loader@localhost:{}/inbox", ftp.port),
            "outgoing_token_primary": "secret",
            "webhook_scenario": r#"
                let up = outgoing_request("PUT", "/order.json", startparam(4));
                let down = outgoing_request("GET", "order.json");
                response_code = up.status;
                response_content = down.body;
            "#,
        }))
        .await;
    let r = app.webhook(&token_of(&c), "POST", "", "{\"id\":8}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "{\"id\":8}");
    // A leading slash stays inside the URL's folder.
    assert_eq!(
        ftp.files.lock().unwrap().get("/inbox/order.json").cloned(),
        Some(b"{\"id\":8}".to_vec())
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The request heads a raw HTTP peer receives (every header line as sent, repeats
/// included), answering each `200` with an empty body.
fn raw_peer() -> (String, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let mut stream = stream;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = tx.send(head);
        }
    });
    (url, rx)
}

/// The request head a scenario's one outgoing call sends to a raw peer.
async fn head_sent(
    app: &crate::helpers::TestApp,
    heads: &std::sync::mpsc::Receiver<String>,
    channel: serde_json::Value,
) -> String {
    let c = app.create_channel(channel).await;
    let r = app.webhook(&token_of(&c), "POST", "", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    heads
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap()
}

#[actix_web::test]
async fn a_scripts_own_authorization_does_not_go_out_beside_the_token() {
    let (url, heads) = raw_peer();
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let head = head_sent(&app, &heads, json!({
        "code": "auth", "kind": "public", "wait_for_completion": true,
        "outgoing_url": url, "outgoing_token_primary": "channel-token",
        "webhook_scenario": r#"
            let r = outgoing_request("GET", "x", (), #{ "authorization": "Bearer mine", "X-A": "1" });
            response_code = r.status;
        "#,
    }))
    .await;
    let auth: Vec<&str> = head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("authorization:"))
        .collect();
    assert_eq!(auth, ["Authorization: Bearer channel-token"], "{head}");
    assert!(head.to_ascii_lowercase().contains("x-a: 1"), "{head}");

    // Without a channel token, the script's own is sent.
    let head = head_sent(&app, &heads, json!({
        "code": "own", "kind": "public", "wait_for_completion": true,
        "outgoing_url": url,
        "webhook_scenario": r#"outgoing_request("GET", "x", (), #{ "authorization": "Bearer mine" });"#,
    }))
    .await;
    assert!(head.contains("authorization: Bearer mine"), "{head}");
}
