//! `/ws/token/v1/{token}/subscribe`: websocket subscriptions to an eventing channel.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Backend, TestApp, eventually, spawn_app_with, token_of};
use crate::on_both_backends;
use crate::websocket::next_close;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(app: &TestApp, token: &str) -> Ws {
    let url = format!("ws://127.0.0.1:{}/ws/token/v1/{token}/subscribe", app.port);
    tokio_tungstenite::connect_async(url)
        .await
        .expect("subscription opens")
        .0
}

pub async fn frame(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("reads");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).expect("JSON frame");
        }
    }
}

async fn op(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

async fn publish(app: &TestApp, event_type: &str, n: i64) -> i64 {
    let r = app
        .admin(
            "POST",
            "/admin/v1/events",
            Some(json!({"type": event_type, "data": {"n": n}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_i64().unwrap()
}

async fn feed(app: &TestApp, types: Value) -> String {
    let c = app
        .create_channel(json!({"code": "feed", "kind": "eventing", "event_types": types}))
        .await;
    token_of(&c)
}

on_both_backends!(live_events_respect_both_filters);

async fn live_events_respect_both_filters(app: TestApp) {
    let token = feed(&app, json!(["call.*", "order.paid"])).await;
    let mut ws = open(&app, &token).await;
    op(
        &mut ws,
        json!({"op": "subscribe", "types": ["call.started", "order.*"]}),
    )
    .await;
    let subscribed = frame(&mut ws).await;
    assert_eq!(subscribed["op"], "subscribed");
    let epoch = subscribed["epoch"].as_str().unwrap().to_string();
    for (t, n) in [
        ("call.started", 1),
        ("call.ended", 2),
        ("order.paid", 3),
        ("order.shipped", 4),
        ("call.started", 5),
    ] {
        publish(&app, t, n).await;
    }
    // call.ended: not asked for; order.shipped: not exposed by the channel.
    let mut got = Vec::new();
    for _ in 0..3 {
        let e = frame(&mut ws).await;
        assert_eq!(e["op"], "event");
        assert_eq!(e["epoch"], epoch.as_str());
        got.push((
            e["type"].as_str().unwrap().to_string(),
            e["data"]["n"].as_i64().unwrap(),
        ));
    }
    assert_eq!(
        got,
        [
            ("call.started".to_string(), 1),
            ("order.paid".to_string(), 3),
            ("call.started".to_string(), 5)
        ]
    );
    op(&mut ws, json!({"op": "ping"})).await;
    assert_eq!(frame(&mut ws).await["op"], "pong");
    let metrics = app.metrics().await.text();
    assert_eq!(
        crate::ops::sample(&metrics, "oktell_event_subscribers", &[]),
        Some(1.0)
    );
    assert_eq!(
        crate::ops::sample(&metrics, "oktell_events_published_total", &[]),
        Some(5.0)
    );
    assert_eq!(
        crate::ops::sample(&metrics, "oktell_events_pushed_total", &[]),
        Some(3.0)
    );
}

#[actix_web::test]
async fn resume_across_a_reconnect_has_no_gap_and_no_duplicate() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let token = feed(&app, json!([])).await;
    let first_id = publish(&app, "tick", 0).await;
    // Events keep flowing the whole time.
    let publisher = {
        let url = app.url("/admin/v1/events");
        actix_web::rt::spawn(async move {
            let client = awc::Client::default();
            for n in 1..=150 {
                let res = client
                    .post(url.clone())
                    .insert_header((
                        "Authorization",
                        format!("Bearer {}", crate::helpers::ADMIN_TOKEN),
                    ))
                    .send_json(&json!({"type": "tick", "data": {"n": n}}))
                    .await
                    .expect("published");
                assert_eq!(res.status(), 201);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut seen: Vec<i64> = Vec::new();
    let mut ws = open(&app, &token).await;
    op(&mut ws, json!({"op": "subscribe", "since": first_id - 1})).await;
    assert_eq!(frame(&mut ws).await["op"], "subscribed");
    while seen.len() < 40 {
        let e = frame(&mut ws).await;
        seen.push(e["id"].as_i64().unwrap());
    }
    drop(ws);
    let last = *seen.last().unwrap();
    let mut ws = open(&app, &token).await;
    op(&mut ws, json!({"op": "subscribe", "since": last})).await;
    assert_eq!(frame(&mut ws).await["op"], "subscribed");
    while seen.len() < 151 {
        let e = frame(&mut ws).await;
        seen.push(e["id"].as_i64().unwrap());
    }
    publisher.await.unwrap();
    let expected: Vec<i64> = (first_id..first_id + 151).collect();
    assert_eq!(
        seen, expected,
        "every id once, in order, across the reconnect"
    );
}

#[actix_web::test]
async fn not_recovered_and_malformed_frames() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let token = feed(&app, json!([])).await;
    let last = publish(&app, "a.b", 1).await;
    let mut ws = open(&app, &token).await;
    op(
        &mut ws,
        json!({"op": "subscribe", "since": 0, "epoch": "another-epoch"}),
    )
    .await;
    let e = frame(&mut ws).await;
    assert_eq!(
        (e["op"].as_str(), e["code"].as_str()),
        (Some("error"), Some("not_recovered"))
    );
    op(&mut ws, json!({"op": "subscribe", "since": last + 1000})).await;
    let e = frame(&mut ws).await;
    assert_eq!(e["code"], "not_recovered", "an id the log never had");
    for (bad, code) in [
        ("not json", "bad_request"),
        (r#"{"op": "dance"}"#, "bad_request"),
        (
            r#"{"op": "subscribe", "types": ["Bad Type"]}"#,
            "invalid_types",
        ),
        (r#"{"op":"subscribe","since":"x"}"#, "bad_request"),
    ] {
        ws.send(Message::text(bad)).await.unwrap();
        let e = frame(&mut ws).await;
        assert_eq!(e["op"], "error", "{bad}");
        assert_eq!(e["code"], code, "{bad}");
    }
    // Still usable after all that.
    op(&mut ws, json!({"op": "subscribe", "since": last - 1})).await;
    assert_eq!(frame(&mut ws).await["op"], "subscribed");
    assert_eq!(frame(&mut ws).await["id"], last);
    // A public channel's token is not an eventing channel.
    let public = app.public_channel("pub", false, "").await;
    let url = format!(
        "ws://127.0.0.1:{}/ws/token/v1/{}/subscribe",
        app.port,
        token_of(&public)
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 404),
        other => panic!("expected 404, got {other:?}"),
    }
}

#[actix_web::test]
async fn a_subscriber_that_stops_reading_is_closed_with_its_last_id() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.ws_max_backlog_bytes = 256 * 1024)
        .await
        .unwrap();
    let token = feed(&app, json!([])).await;
    let mut slow = open(&app, &token).await;
    op(&mut slow, json!({"op": "subscribe"})).await;
    assert_eq!(frame(&mut slow).await["op"], "subscribed");
    let mut fast = open(&app, &token).await;
    op(&mut fast, json!({"op": "subscribe"})).await;
    assert_eq!(frame(&mut fast).await["op"], "subscribed");
    // 5,000 events of ~2 KiB (10 MB), while `slow` reads nothing: far past its backlog
    // limit once the kernel's socket buffers are full. Batches of 20 (40 KB), each
    // read by `fast` before the next is published: the fast one never lags by more
    // than a batch, however busy the machine is.
    let big = "x".repeat(2000);
    let read = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let fast_reader = {
        let read = read.clone();
        actix_web::rt::spawn(async move {
            while read.load(std::sync::atomic::Ordering::SeqCst) < 5000 {
                if frame(&mut fast).await["op"] == "event" {
                    read.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })
    };
    for chunk in 0..250 {
        let events: Vec<Value> = (0..20)
            .map(|i| json!({"type": "bulk", "data": {"i": chunk * 20 + i, "pad": big}}))
            .collect();
        let r = app
            .admin("POST", "/admin/v1/events", Some(json!({"events": events})))
            .await;
        assert_eq!(r.status, 201);
        let published = (chunk + 1) * 20;
        eventually(
            "the fast subscriber keeps up",
            Duration::from_secs(15),
            || {
                let read = read.clone();
                async move { read.load(std::sync::atomic::Ordering::SeqCst) >= published }
            },
        )
        .await;
    }
    fast_reader.await.unwrap();
    assert_eq!(
        read.load(std::sync::atomic::Ordering::SeqCst),
        5000,
        "the fast subscriber got everything"
    );
    let (code, reason) = next_close(&mut slow).await;
    assert_eq!(code, 1013);
    assert!(reason.contains("last delivered id"), "{reason}");
}

#[actix_web::test]
async fn events_past_retention_are_purged_and_not_recovered() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let token = feed(&app, json!([])).await;
    let first = publish(&app, "old.news", 1).await;
    let second = publish(&app, "old.news", 2).await;
    // The broker has read both (else it would still push them live to the subscriber
    // below, which joins before it caught up: a race of the test, not of the gateway).
    eventually(
        "the broker has caught up with the log",
        Duration::from_secs(10),
        || async {
            let mut probe = open(&app, &token).await;
            op(&mut probe, json!({"op": "subscribe"})).await;
            frame(&mut probe).await["last_id"].as_i64() >= Some(second)
        },
    )
    .await;
    // What the hourly job does, with a retention of zero.
    let purged = app.state.default_domain.events.purge(-1000).await.unwrap();
    assert_eq!(purged, 2);
    let log = app.admin("GET", "/admin/v1/events", None).await.json();
    assert_eq!(log["items"].as_array().unwrap().len(), 0);
    let mut ws = open(&app, &token).await;
    op(&mut ws, json!({"op": "subscribe", "since": first - 1})).await;
    assert_eq!(frame(&mut ws).await["op"], "subscribed");
    let e = frame(&mut ws).await;
    assert_eq!(
        e["code"], "not_recovered",
        "the events after since are gone: {e}"
    );
    // Ids go on from where they were, in the same epoch.
    let next = publish(&app, "new.news", 3).await;
    assert_eq!(next, first + 2);
}

/// The HTTP status of a refused subscribe upgrade.
async fn refused(app: &TestApp, token: &str) -> u16 {
    let url = format!("ws://127.0.0.1:{}/ws/token/v1/{token}/subscribe", app.port);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

async fn subscribed(app: &TestApp, token: &str) -> Ws {
    let mut ws = open(app, token).await;
    op(&mut ws, json!({"op": "subscribe"})).await;
    assert_eq!(frame(&mut ws).await["op"], "subscribed");
    ws
}

on_both_backends!(subscribers_are_closed_with_their_channel);

/// Disabling or deleting an eventing channel closes its open subscribers (1001), as for
/// public sessions; while disabled, no one subscribes.
async fn subscribers_are_closed_with_their_channel(app: TestApp) {
    let channel = app
        .create_channel(json!({"code": "feed", "kind": "eventing"}))
        .await;
    let (id, token) = (crate::helpers::id_of(&channel), token_of(&channel));
    let mut ws = subscribed(&app, &token).await;
    let r = app
        .admin(
            "PATCH",
            &format!("/admin/v1/channels/{id}"),
            Some(json!({"comment": "a change that keeps it enabled"})),
        )
        .await;
    assert_eq!(r.status, 200);
    publish(&app, "still.open", 1).await;
    assert_eq!(
        frame(&mut ws).await["type"],
        "still.open",
        "an update keeps it"
    );
    let r = app
        .admin(
            "PATCH",
            &format!("/admin/v1/channels/{id}"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(next_close(&mut ws).await.0, 1001, "disabled");
    assert_eq!(refused(&app, &token).await, 404);
    let r = app
        .admin(
            "PATCH",
            &format!("/admin/v1/channels/{id}"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(r.status, 200);
    let mut ws = subscribed(&app, &token).await;
    let r = app
        .admin("DELETE", &format!("/admin/v1/channels/{id}"), None)
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(next_close(&mut ws).await.0, 1001, "deleted");
    assert_eq!(refused(&app, &token).await, 404);
}

on_both_backends!(a_changed_event_types_applies_to_open_subscribers);

/// Changing the channel's `event_types` changes what its open subscribers get, from the
/// next event on, without a reconnect.
async fn a_changed_event_types_applies_to_open_subscribers(app: TestApp) {
    let channel = app
        .create_channel(json!({"code": "feed", "kind": "eventing", "event_types": ["a.*"]}))
        .await;
    let id = crate::helpers::id_of(&channel);
    let mut ws = subscribed(&app, &token_of(&channel)).await;
    publish(&app, "b.before", 1).await;
    publish(&app, "a.before", 2).await;
    let e = frame(&mut ws).await;
    assert_eq!(e["type"], "a.before", "b.* is not exposed yet: {e}");
    let r = app
        .admin(
            "PATCH",
            &format!("/admin/v1/channels/{id}"),
            Some(json!({"event_types": ["b.*"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    publish(&app, "a.after", 3).await;
    publish(&app, "b.after", 4).await;
    let e = frame(&mut ws).await;
    assert_eq!(
        e["type"], "b.after",
        "a.* is no longer exposed, b.* is: {e}"
    );
    // A resume replays with the channel's types as they are now.
    op(&mut ws, json!({"op": "subscribe", "since": 0})).await;
    assert_eq!(frame(&mut ws).await["op"], "subscribed");
    assert_eq!(frame(&mut ws).await["type"], "b.before");
    assert_eq!(frame(&mut ws).await["type"], "b.after");
}

/// Subscriber websockets are limited per channel and per node, counted before the
/// upgrade (503), with metrics; a closed one gives its place back.
#[actix_web::test]
async fn subscriber_limits_refuse_before_the_upgrade() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.ws_max_subscribers_per_channel = 2;
        c.ws_max_subscribers_per_node = 3;
    })
    .await
    .unwrap();
    let first = token_of(
        &app.create_channel(json!({"code": "one", "kind": "eventing"}))
            .await,
    );
    let second = token_of(
        &app.create_channel(json!({"code": "two", "kind": "eventing"}))
            .await,
    );
    let a = subscribed(&app, &first).await;
    let _b = subscribed(&app, &first).await;
    assert_eq!(refused(&app, &first).await, 503, "the channel is full");
    let _c = subscribed(&app, &second).await;
    assert_eq!(refused(&app, &second).await, 503, "the node is full");
    let metrics = app.metrics().await.text();
    assert_eq!(
        crate::ops::sample(&metrics, "oktell_ws_subscribers_node_open", &[]),
        Some(3.0)
    );
    assert_eq!(
        crate::ops::sample(
            &metrics,
            "oktell_ws_subscribers_open",
            &[("channel", "one")]
        ),
        Some(2.0)
    );
    assert_eq!(
        crate::ops::sample(&metrics, "oktell_event_subscribers_refused_total", &[]),
        Some(2.0)
    );
    drop(a);
    crate::helpers::eventually(
        "the closed subscriber's place is free again",
        Duration::from_secs(15),
        || async {
            let url = format!("ws://127.0.0.1:{}/ws/token/v1/{second}/subscribe", app.port);
            tokio_tungstenite::connect_async(url).await.is_ok()
        },
    )
    .await;
}

/// The real binary: SIGTERM closes event subscribers with 1001, and exits 0.
#[actix_web::test]
async fn sigterm_closes_subscribers_with_going_away() {
    let mut gateway = crate::helpers::GatewayProcess::start().await;
    let channel = gateway
        .create_channel(json!({"code": "term-feed", "kind": "eventing"}))
        .await;
    let url = format!(
        "ws://127.0.0.1:{}/ws/token/v1/{}/subscribe",
        gateway.port,
        token_of(&channel)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    op(&mut ws, json!({"op": "subscribe"})).await;
    assert_eq!(frame(&mut ws).await["op"], "subscribed");
    gateway.terminate();
    assert_eq!(next_close(&mut ws).await.0, 1001);
    drop(ws);
    assert_eq!(gateway.exit_code().await, Some(0));
}

/// A client that read up to id N through another node resumes here although this
/// node's broker has not pushed N yet (it was stored without waking it, as a publish
/// through another node is until its note arrives): accepted, and what follows comes.
#[actix_web::test]
async fn resuming_ahead_of_this_nodes_broker_is_accepted() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let token = feed(&app, json!([])).await;
    let db = app.state.default_domain.events.db().clone();
    let stored = db
        .run(|c| {
            oktell_gateway::db::events::append(
                c,
                "default",
                &[oktell_gateway::db::events::NewEvent {
                    event_type: "elsewhere.published".into(),
                    occurred_at: 0,
                    data: "{}".into(),
                    idempotency_key: None,
                }],
                oktell_gateway::db::now_millis(),
                1000,
            )
        })
        .await
        .unwrap();
    let n = stored[0].0.id;
    let mut ws = open(&app, &token).await;
    op(&mut ws, json!({"op": "subscribe", "since": n})).await;
    let f = frame(&mut ws).await;
    assert_eq!(f["op"], "subscribed", "{f}");
    let next = publish(&app, "here.published", 1).await;
    let f = frame(&mut ws).await;
    assert_eq!(
        (f["op"].as_str(), f["id"].as_i64()),
        (Some("event"), Some(next)),
        "{f}"
    );
}
