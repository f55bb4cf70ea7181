//! `/ws/token/v1/{token}`: sessions, ordering, pushes, admin control, limits.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::helpers::{Backend, TestApp, eventually, id_of, spawn_app_with, token_of};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const WAIT: Duration = Duration::from_secs(15);

pub async fn connect(app: &TestApp, token: &str) -> Ws {
    let url = format!("ws://127.0.0.1:{}/ws/token/v1/{token}", app.port);
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket opens");
    ws
}

/// The HTTP status a refused upgrade answered with.
async fn refused_status(app: &TestApp, token: &str) -> u16 {
    let url = format!("ws://127.0.0.1:{}/ws/token/v1/{token}", app.port);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

/// Reads the next text frame, skipping pings and pongs, within one overall
/// deadline (the server pings more often than `WAIT`, so a per-frame timeout
/// would never fire).
pub async fn next_text(ws: &mut Ws) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a text frame in time")
            .expect("stream open")
            .expect("frame reads");
        match msg {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Reads until the server's close frame; returns its code and reason.
pub async fn next_close(ws: &mut Ws) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a close frame in time");
        match msg {
            Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                return (u16::from(code), reason.to_string());
            }
            Some(Ok(Message::Close(None))) | None => panic!("closed without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("error before the close frame: {e}"),
        }
    }
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_string()))
        .await
        .expect("send");
}

pub async fn ws_channel(
    app: &TestApp,
    code: &str,
    hello: bool,
    script: &str,
    webhook: &str,
) -> Value {
    app.create_channel(json!({
        "code": code, "kind": "public", "wait_for_completion": true, "ws_hello": hello,
        "websocket_scenario": script, "webhook_scenario": webhook,
    }))
    .await
}

async fn hello_code(ws: &mut Ws) -> String {
    let hello: Value = serde_json::from_str(&next_text(ws).await).unwrap();
    assert_eq!(hello["type"], "hello");
    hello["code"].as_str().unwrap().to_string()
}

async fn app() -> TestApp {
    spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap()
}

const ECHO: &str = "response_content = startparam(2);";

#[actix_web::test]
async fn echo_in_order_under_pipelining() {
    // 100 messages in flight at once need a queue above the default 64.
    let app = spawn_app_with(Backend::Sqlite, |c| c.ws_session_queue = 128)
        .await
        .unwrap();
    let c = ws_channel(&app, "echo", false, ECHO, "").await;
    let mut ws = connect(&app, &token_of(&c)).await;
    send(&mut ws, "hello").await;
    assert_eq!(
        next_text(&mut ws).await,
        "hello",
        "no greeting unless ws_hello"
    );
    for i in 0..100 {
        send(&mut ws, &format!("m{i}")).await;
    }
    for i in 0..100 {
        assert_eq!(next_text(&mut ws).await, format!("m{i}"));
    }
    // The scenario sees the session code, the message, the channel and the peer.
    let c = ws_channel(&app, "params", true, r#"response_content = to_json([startparam(1), startparam(2), parse_json(startparam(3)).code, startparam(4)]);"#, "").await;
    let mut ws = connect(&app, &token_of(&c)).await;
    let code = hello_code(&mut ws).await;
    send(&mut ws, "x").await;
    let seen: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(seen, json!([code, "x", "params", "127.0.0.1"]));
}

#[actix_web::test]
async fn sessions_talk_through_ws_send_and_webhooks_push() {
    let app = app().await;
    let script = r#"
        let m = parse_json(startparam(2));
        if m.op == "send" { ws_send(m.to, m.text); }
        else if m.op == "broadcast" { ws_broadcast(m.text); }
        else if m.op == "list" { response_content = to_json(ws_sessions()); }
        else if m.op == "close" { ws_close(m.to, "bye"); }
    "#;
    let webhook =
        r#"for c in ws_sessions() { ws_send(c, startparam(4)); } response_content = "pushed";"#;
    let c = ws_channel(&app, "chat", true, script, webhook).await;
    let token = token_of(&c);
    let mut a = connect(&app, &token).await;
    let mut b = connect(&app, &token).await;
    let code_a = hello_code(&mut a).await;
    let code_b = hello_code(&mut b).await;
    assert_ne!(code_a, code_b);

    send(
        &mut a,
        &json!({"op": "send", "to": code_b, "text": "hi b"}).to_string(),
    )
    .await;
    assert_eq!(next_text(&mut b).await, "hi b");
    send(&mut b, &json!({"op": "list"}).to_string()).await;
    let mut listed: Vec<String> = serde_json::from_str(&next_text(&mut b).await).unwrap();
    listed.sort();
    let mut both = vec![code_a.clone(), code_b.clone()];
    both.sort();
    assert_eq!(listed, both);
    send(
        &mut a,
        &json!({"op": "broadcast", "text": "all"}).to_string(),
    )
    .await;
    assert_eq!(next_text(&mut a).await, "all");
    assert_eq!(next_text(&mut b).await, "all");

    // An HTTP request to the same channel pushes into the open sessions.
    let r = app.webhook(&token, "POST", "", "from http").await;
    assert_eq!(r.text(), "pushed");
    assert_eq!(next_text(&mut a).await, "from http");
    assert_eq!(next_text(&mut b).await, "from http");

    send(&mut a, &json!({"op": "close", "to": code_b}).to_string()).await;
    assert_eq!(next_close(&mut b).await, (1000, "bye".to_string()));
}

#[actix_web::test]
async fn admin_lists_pushes_and_closes_sessions() {
    let app = app().await;
    let c = ws_channel(&app, "ops", true, ECHO, "").await;
    let id = id_of(&c);
    let mut ws = connect(&app, &token_of(&c)).await;
    let code = hello_code(&mut ws).await;
    send(&mut ws, "one").await;
    assert_eq!(next_text(&mut ws).await, "one");

    let list = app
        .admin("GET", &format!("/admin/v1/channels/{id}/sessions"), None)
        .await
        .json();
    assert_eq!(list["total"], 1);
    let s = &list["items"][0];
    assert_eq!(s["code"], code.as_str());
    assert_eq!(s["peer_ip"], "127.0.0.1");
    assert_eq!(s["messages_in"], 1);
    assert_eq!(s["messages_out"], 2, "hello and the echo");
    assert!(s["connected_at"].as_str().unwrap().ends_with('Z'));

    let r = app
        .admin(
            "POST",
            &format!("/admin/v1/channels/{id}/sessions/{code}/messages"),
            Some(json!({"text": "from oktell"})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(next_text(&mut ws).await, "from oktell");
    let r = app
        .admin(
            "POST",
            &format!("/admin/v1/channels/{id}/sessions/nope/messages"),
            Some(json!({"text": "x"})),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "session_not_found");
    let r = app
        .admin(
            "POST",
            &format!("/admin/v1/channels/{id}/sessions/{code}/messages"),
            Some(json!({"txt": "x"})),
        )
        .await;
    assert_eq!(r.status, 400);

    let r = app
        .admin(
            "DELETE",
            &format!("/admin/v1/channels/{id}/sessions/{code}"),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(next_close(&mut ws).await.0, 1000);
    eventually("the closed session leaves the list", WAIT, || async {
        app.admin("GET", &format!("/admin/v1/channels/{id}/sessions"), None)
            .await
            .json()["total"]
            == 0
    })
    .await;
    let runtime = app.runtime(&id).await;
    assert_eq!(runtime["ws_opened"], 1);
    assert_eq!(runtime["ws_messages_in"], 1);
}

#[actix_web::test]
async fn client_close_cleans_the_session_out() {
    let app = app().await;
    let c = ws_channel(&app, "bye", false, ECHO, "").await;
    let id = id_of(&c);
    let mut ws = connect(&app, &token_of(&c)).await;
    send(&mut ws, "x").await;
    next_text(&mut ws).await;
    ws.close(None).await.expect("client closes");
    eventually("the session is gone", WAIT, || async {
        app.admin("GET", &format!("/admin/v1/channels/{id}/sessions"), None)
            .await
            .json()["total"]
            == 0
    })
    .await;
}

#[actix_web::test]
async fn scenario_errors_answer_in_band_and_loops_do_not_block_others() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.scenario_threads = 2;
        c.scenario_timeout_ms = 1500;
        c.scenario_max_operations = 0;
    })
    .await
    .unwrap();
    let script = r#"
        let m = startparam(2);
        if m == "fail" { throw "broken"; }
        if m == "spin" { loop {} }
        response_content = m;
    "#;
    let c = ws_channel(&app, "mixed", false, script, "").await;
    let mut a = connect(&app, &token_of(&c)).await;
    let mut b = connect(&app, &token_of(&c)).await;
    send(&mut a, "fail").await;
    let err: Value = serde_json::from_str(&next_text(&mut a).await).unwrap();
    assert_eq!(err["error"]["code"], "scenario_error");
    send(&mut a, "still open").await;
    assert_eq!(next_text(&mut a).await, "still open");

    send(&mut a, "spin").await;
    send(&mut a, "after spin").await;
    // b is served while a's scenario spins.
    send(&mut b, "b works").await;
    assert_eq!(next_text(&mut b).await, "b works");
    let err: Value = serde_json::from_str(&next_text(&mut a).await).unwrap();
    assert_eq!(err["error"]["code"], "scenario_timeout");
    assert_eq!(
        next_text(&mut a).await,
        "after spin",
        "a's queue goes on in order"
    );
}

#[actix_web::test]
async fn limits_close_with_their_codes() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.ws_max_message_bytes = 1024;
        c.ws_session_queue = 2;
        c.ws_max_sessions_per_channel = 3;
        c.scenario_max_operations = 0;
    })
    .await
    .unwrap();
    let c = ws_channel(&app, "limits", false, ECHO, "").await;
    let token = token_of(&c);

    let mut ws = connect(&app, &token).await;
    send(&mut ws, &"a".repeat(1025)).await;
    assert_eq!(next_close(&mut ws).await.0, 1009, "message too big");

    let mut ws = connect(&app, &token).await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(next_close(&mut ws).await.0, 1003, "binary");

    let slow = ws_channel(
        &app,
        "slow",
        false,
        "let t = timestamp(); while t.elapsed < 1.0 {} response_content = startparam(2);",
        "",
    )
    .await;
    let mut ws = connect(&app, &token_of(&slow)).await;
    for i in 0..10 {
        if ws.send(Message::text(format!("m{i}"))).await.is_err() {
            break;
        }
    }
    let (code, reason) = next_close(&mut ws).await;
    assert_eq!(code, 1008);
    assert!(reason.contains("queue"), "{reason}");

    // Session limit per channel: refused before the upgrade.
    let id = id_of(&c);
    eventually("closed sessions are gone", WAIT, || async {
        app.admin("GET", &format!("/admin/v1/channels/{id}/sessions"), None)
            .await
            .json()["total"]
            == 0
    })
    .await;
    let _held: Vec<Ws> =
        futures_util::future::join_all((0..3).map(|_| connect(&app, &token))).await;
    assert_eq!(refused_status(&app, &token).await, 503);
    assert_eq!(refused_status(&app, "no-such-token").await, 404);
}

#[actix_web::test]
async fn silent_clients_are_dropped_by_the_heartbeat() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.ws_heartbeat_interval_ms = 100;
        c.ws_heartbeat_timeout_ms = 400;
    })
    .await
    .unwrap();
    let c = ws_channel(&app, "hb", false, ECHO, "").await;
    let id = id_of(&c);
    // Not reading: the client library answers pings only while it reads.
    let mut ws = connect(&app, &token_of(&c)).await;
    eventually("the server drops the silent session", WAIT, || async {
        app.admin("GET", &format!("/admin/v1/channels/{id}/sessions"), None)
            .await
            .json()["total"]
            == 0
    })
    .await;
    let (code, reason) = next_close(&mut ws).await;
    assert_eq!(code, 1001);
    assert!(reason.contains("heartbeat"), "{reason}");

    // A client that reads (and so answers pings) stays.
    let mut ws = connect(&app, &token_of(&c)).await;
    for i in 0..5 {
        send(&mut ws, &format!("{i}")).await;
        assert_eq!(next_text(&mut ws).await, format!("{i}"));
        let before = std::time::Instant::now();
        // Keep reading pings for longer than the timeout.
        while before.elapsed() < Duration::from_millis(150) {
            if let Ok(Some(Ok(Message::Ping(_)))) =
                tokio::time::timeout(Duration::from_millis(50), ws.next()).await
            {}
        }
    }
}

#[actix_web::test]
async fn channel_changes_reach_open_sessions() {
    let app = app().await;
    let c = ws_channel(&app, "live", false, ECHO, "").await;
    let id = id_of(&c);
    let mut ws = connect(&app, &token_of(&c)).await;
    send(&mut ws, "v1").await;
    assert_eq!(next_text(&mut ws).await, "v1");
    // Updated: the session stays and the next message uses the new scenario.
    let r = app
        .admin(
            "PATCH",
            &format!("/admin/v1/channels/{id}"),
            Some(json!({"websocket_scenario": r#"response_content = "v2:" + startparam(2);"#})),
        )
        .await;
    assert_eq!(r.status, 200);
    send(&mut ws, "x").await;
    assert_eq!(next_text(&mut ws).await, "v2:x");
    // Disabled: 1001, and no new sessions.
    app.admin(
        "PATCH",
        &format!("/admin/v1/channels/{id}"),
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(next_close(&mut ws).await.0, 1001);
    assert_eq!(refused_status(&app, &token_of(&c)).await, 404);
    // Enabled again, then deleted: 1001.
    app.admin(
        "PATCH",
        &format!("/admin/v1/channels/{id}"),
        Some(json!({"enabled": true})),
    )
    .await;
    let mut ws = connect(&app, &token_of(&c)).await;
    send(&mut ws, "x").await;
    assert_eq!(next_text(&mut ws).await, "v2:x");
    app.admin("DELETE", &format!("/admin/v1/channels/{id}"), None)
        .await;
    assert_eq!(next_close(&mut ws).await.0, 1001);
}

/// The real binary: SIGTERM closes websockets with 1001 and exits 0.
#[actix_web::test]
async fn sigterm_closes_sessions_with_going_away() {
    let mut gateway = crate::helpers::GatewayProcess::start().await;
    let channel = gateway
        .create_channel(json!({"code": "term", "kind": "public", "websocket_scenario": ECHO}))
        .await;
    let url = format!(
        "ws://127.0.0.1:{}/ws/token/v1/{}",
        gateway.port,
        token_of(&channel)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    send(&mut ws, "up").await;
    assert_eq!(next_text(&mut ws).await, "up");
    gateway.terminate();
    assert_eq!(next_close(&mut ws).await.0, 1001);
    drop(ws);
    assert_eq!(gateway.exit_code().await, Some(0));
}

#[actix_web::test]
async fn a_busy_channel_holds_messages_back_instead_of_failing_them() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.channel_max_in_flight = 1;
        c.scenario_max_operations = 0;
    })
    .await
    .unwrap();
    let c = ws_channel(
        &app,
        "narrow",
        false,
        "let t = timestamp(); while t.elapsed < 0.02 {} response_content = startparam(2);",
        "",
    )
    .await;
    let token = token_of(&c);
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(connect(&app, &token).await);
    }
    for (s, ws) in sessions.iter_mut().enumerate() {
        for i in 0..5 {
            send(ws, &format!("{s}-{i}")).await;
        }
    }
    for (s, ws) in sessions.iter_mut().enumerate() {
        for i in 0..5 {
            assert_eq!(
                next_text(ws).await,
                format!("{s}-{i}"),
                "echo, not an error frame"
            );
        }
    }
    let metrics = app.metrics().await.text();
    let retries = crate::ops::sample(
        &metrics,
        "oktell_ws_retries_total",
        &[("channel", "narrow")],
    );
    assert!(
        retries.is_some_and(|r| r > 0.0),
        "messages were held back: {retries:?}"
    );
}
