//! The websocket path under bursts: a client pipelining 1,000 messages gets 1,000
//! replies in order; a session's messages run one at a time even when the first waits
//! on the outside world; only a flood past the session's byte budget is closed (1008);
//! a channel actor that panics is restarted and its sessions keep working.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Backend, eventually, id_of, spawn_app_with, token_of};
use crate::receiver::HoldingUpstream;
use crate::websocket::{connect, next_close, next_text, ws_channel};

const ECHO: &str = "response_content = startparam(2);";

#[actix_web::test]
async fn a_thousand_pipelined_messages_are_answered_in_order() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let c = app
        .create_channel(json!({
            "code": "echo", "kind": "public", "websocket_scenario": ECHO,
        }))
        .await;
    let mut ws = connect(&app, &token_of(&c)).await;
    for i in 0..1000 {
        ws.feed(Message::Text(format!("m{i}").into()))
            .await
            .unwrap();
    }
    ws.flush().await.unwrap();
    for i in 0..1000 {
        assert_eq!(next_text(&mut ws).await, format!("m{i}"));
    }
}

/// Replies big and small keep their order, and so do a session's pushes: small replies
/// are written straight into the response stream, pushes and big replies are queued
/// (`WsSession::send_text`). (A pool run's push and its own reply are not ordered
/// against each other: the push comes through the actor's mailbox, the outcome through
/// a future of its context.)
#[actix_web::test]
async fn pushes_and_replies_of_every_size_keep_their_order() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let c = ws_channel(
        &app,
        "pushes",
        false,
        r#"
                let m = startparam(2);
                if m.starts_with("push") { ws_send(startparam(1), "pushed " + m); }
                if m.starts_with("big") { m.pad(m.len() + 40000, 'x'); }
                response_content = m;
            "#,
        "",
    )
    .await;
    let mut ws = connect(&app, &token_of(&c)).await;
    let messages: Vec<String> = (0..60)
        .map(|i| match i % 3 {
            0 => format!("push{i}"),
            1 => format!("big{i}"),
            _ => format!("small{i}"),
        })
        .collect();
    for m in &messages {
        ws.feed(Message::Text(m.clone().into())).await.unwrap();
    }
    ws.flush().await.unwrap();
    let pushes: Vec<String> = messages
        .iter()
        .filter(|m| m.starts_with("push"))
        .map(|m| format!("pushed {m}"))
        .collect();
    let (mut replies, mut pushed) = (Vec::new(), Vec::new());
    while replies.len() < messages.len() || pushed.len() < pushes.len() {
        let text = next_text(&mut ws).await;
        if text.starts_with("pushed ") {
            pushed.push(text);
        } else {
            replies.push(text);
        }
    }
    assert_eq!(pushed, pushes);
    for (m, reply) in messages.iter().zip(&replies) {
        assert!(
            reply.starts_with(m.as_str()),
            "{m}: {}",
            &reply[..reply.len().min(40)]
        );
        let expected = if m.starts_with("big") {
            m.len() + 40000
        } else {
            m.len()
        };
        assert_eq!(reply.len(), expected, "{m}");
    }
}

/// A close frame is the connection's last: a run's push to its own session, then its
/// close, arrive in that order (the close goes behind the frames still queued).
#[actix_web::test]
async fn a_push_then_a_close_arrive_in_that_order() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let c = ws_channel(
        &app,
        "farewell",
        false,
        r#"
                ws_send(startparam(1), "last words");
                ws_close(startparam(1), "bye");
            "#,
        "",
    )
    .await;
    // Each session races its own push against its close: several rounds.
    for round in 0..20 {
        let mut ws = connect(&app, &token_of(&c)).await;
        ws.send(Message::Text("go".into())).await.unwrap();
        assert_eq!(next_text(&mut ws).await, "last words", "round {round}");
        let (code, reason) = next_close(&mut ws).await;
        assert_eq!((code, reason.as_str()), (1000, "bye"), "round {round}");
    }
}

/// Message 1 waits on an upstream the test holds, message 2 would not wait: message 2
/// still runs only after message 1, and the replies come back in order.
#[actix_web::test]
async fn order_holds_when_the_first_message_waits() {
    let upstream = HoldingUpstream::start();
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let c = app
        .create_channel(json!({
            "code": "ordered", "kind": "public", "outgoing_url": upstream.url,
            "websocket_scenario": r#"
                if startparam(2) == "slow" { outgoing_request("GET", "/hold"); }
                response_content = startparam(2);
            "#,
        }))
        .await;
    let mut ws = connect(&app, &token_of(&c)).await;
    ws.send(Message::Text("slow".into())).await.unwrap();
    ws.send(Message::Text("fast".into())).await.unwrap();
    eventually(
        "the first message waits on the upstream",
        Duration::from_secs(10),
        || async { upstream.held() == 1 },
    )
    .await;
    upstream.release();
    assert_eq!(next_text(&mut ws).await, "slow");
    assert_eq!(next_text(&mut ws).await, "fast");
}

/// A real flood: messages pile up behind one that waits, past the session's byte budget.
#[actix_web::test]
async fn a_flood_past_the_byte_budget_is_closed_1008() {
    let upstream = HoldingUpstream::start();
    let app = spawn_app_with(Backend::Sqlite, |c| c.ws_session_queue_bytes = 16 * 1024)
        .await
        .unwrap();
    let c = app
        .create_channel(json!({
            "code": "flooded", "kind": "public", "outgoing_url": upstream.url,
            "websocket_scenario": r#"outgoing_request("GET", "/hold");"#,
        }))
        .await;
    let mut ws = connect(&app, &token_of(&c)).await;
    ws.send(Message::Text("first".into())).await.unwrap();
    eventually(
        "the first message waits on the upstream",
        Duration::from_secs(10),
        || async { upstream.held() == 1 },
    )
    .await;
    let chunk = "x".repeat(1024);
    for _ in 0..40 {
        if ws.send(Message::Text(chunk.clone().into())).await.is_err() {
            break;
        }
    }
    let (code, reason) = next_close(&mut ws).await;
    assert_eq!(code, 1008, "{reason}");
    upstream.release();
}

#[actix_web::test]
async fn sessions_keep_working_after_their_channel_actor_panics() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.fault_injection = true)
        .await
        .unwrap();
    let c = app
        .create_channel(json!({
            "code": "fragile-ws", "kind": "public", "websocket_scenario": ECHO,
        }))
        .await;
    let id = id_of(&c);
    let mut ws = connect(&app, &token_of(&c)).await;
    ws.send(Message::Text("before".into())).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "before");
    app.panic_channel_actor(&id).await;
    ws.send(Message::Text("after".into())).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "after");
}
