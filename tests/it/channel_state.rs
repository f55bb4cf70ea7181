//! Channel state between runs (issue #14 item 4): `state_get`, `state_set`,
//! `state_del` and `seen_before`, per channel, in the database, shared by every run
//! on every node; bounded; not written by dry runs.

use std::sync::atomic::Ordering;
use std::time::Duration;

use awc::Client;
use serde_json::{Value, json};

use crate::helpers::{
    Backend, GatewayProcess, TestApp, eventually, id_of, spawn_app_with, token_of,
};

/// A scenario that does what the request body asks and answers what it got:
/// `{"op": "set"|"get"|"del"|"seen", "key", "value", "ttl"}`. Errors are caught and
/// answered as `{"error": ...}`; `at` (ms since the epoch) delays the call to then.
const STATE_SCENARIO: &str = r#"
let req = parse_json(startparam(4));
let ttl = if req.ttl == () { 0 } else { req.ttl };
// `at`: wait (without the compute slot) for that instant first, so that calls sent
// together reach the database together.
if req.at != () { let wait = req.at - now_ms(); if wait > 0 { sleep_ms(wait); } }
let out = #{};
try {
    if req.op == "set" { state_set(req.key, req.value, ttl); out.ok = true; }
    else if req.op == "get" { out.value = state_get(req.key); }
    else if req.op == "del" { out.deleted = state_del(req.key); }
    else if req.op == "seen" { out.seen = seen_before(req.key, ttl); }
} catch (e) {
    out.error = `${e}`;
}
response_content = to_json(out);
"#;

fn state_channel(code: &str) -> Value {
    json!({
        "code": code,
        "kind": "public",
        "wait_for_completion": true,
        "webhook_scenario": STATE_SCENARIO,
    })
}

/// One state call through a webhook of `base`: the scenario's JSON answer.
async fn op_at(client: &Client, base: &str, token: &str, body: Value) -> (u16, Value) {
    let mut res = client
        .post(format!("{base}/api/token/v1/{token}"))
        .send_body(body.to_string())
        .await
        .expect("webhook answers");
    let status = res.status().as_u16();
    let bytes = res.body().await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())),
    )
}

/// Milliseconds since the epoch, `ms` from now.
fn in_ms(ms: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_millis() as u64 + ms
}

trait AtApp {
    fn at<'a>(&'a self, token: &'a str) -> At<'a>;
}

impl AtApp for TestApp {
    fn at<'a>(&'a self, token: &'a str) -> At<'a> {
        At {
            client: &self.client,
            base: &self.address,
            token,
        }
    }
}

async fn op(app: &TestApp, token: &str, body: Value) -> Value {
    let (status, answer) = op_at(&app.client, &app.address, token, body).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

crate::on_both_backends!(
    values_round_trip_and_expire,
    channels_do_not_see_each_other,
    a_deleted_channel_takes_its_state_along,
);

/// With 16 database connections, up to 16 of the calls are inside the database at once.
async fn wide_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |c| c.db_pool_size = 16).await
}

#[actix_web::test]
async fn seen_before_is_atomic_under_100_concurrent_calls_sqlite() {
    let app = wide_app(Backend::Sqlite).await.unwrap();
    seen_before_is_atomic_under_100_concurrent_calls(app).await;
}

#[actix_web::test]
async fn seen_before_is_atomic_under_100_concurrent_calls_postgres() {
    if let Some(app) = wide_app(Backend::Postgres).await {
        seen_before_is_atomic_under_100_concurrent_calls(app).await;
    }
}

async fn seen_before_is_atomic_under_100_concurrent_calls(app: TestApp) {
    // Each run waits (without its compute slot) for one common instant, then asks:
    // the 100 calls reach the database together.
    let c = app
        .public_channel(
            "dedupe",
            true,
            r#"let wait = parse_json(startparam(4)).at - now_ms();
               if wait > 0 { sleep_ms(wait); }
               response_content = if seen_before("k", 60) { "seen" } else { "first" };"#,
        )
        .await;
    let token = token_of(&c);
    let body = json!({ "at": in_ms(1500) }).to_string();
    let calls = (0..100).map(|_| app.webhook(&token, "POST", "", &body));
    let replies = futures_util::future::join_all(calls).await;
    let mut first = 0;
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.text());
        match r.text().as_str() {
            "first" => first += 1,
            "seen" => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(first, 1, "exactly one of 100 concurrent calls is first");
    // A state call waits on the database without its compute slot.
    let handoffs = || {
        app.state
            .dispatcher
            .pool()
            .stats()
            .handoffs
            .load(Ordering::Relaxed)
    };
    let reader = token_of(
        &app.public_channel("reader", true, r#"state_get("k");"#)
            .await,
    );
    let before = handoffs();
    assert_eq!(app.webhook(&reader, "POST", "", "").await.status, 200);
    assert_eq!(handoffs(), before + 1, "the state call gave its slot away");
    let metrics = app.metrics().await.text();
    assert!(
        metrics.contains(r#"oktell_channel_state_calls_total{op="seen_before",outcome="miss"}"#),
        "{metrics}"
    );
}

async fn values_round_trip_and_expire(app: TestApp) {
    let token = token_of(&app.create_channel(state_channel("values")).await);
    let at = app.at(&token);
    // Strings, numbers, maps and arrays come back as they went in.
    let value = json!({"user": "u-1", "n": 42, "tags": ["a", "b"], "nested": {"ok": true}});
    for v in [json!("text"), json!(3.5), value] {
        let set = json!({"op": "set", "key": "v", "value": v});
        assert_eq!(at.op(set).await, json!({"ok": true}));
        let get = json!({"op": "get", "key": "v"});
        assert_eq!(at.op(get).await, json!({ "value": v }));
    }
    let steps = [
        (
            json!({"op": "get", "key": "absent"}),
            json!({"value": null}),
        ),
        (json!({"op": "del", "key": "v"}), json!({"deleted": true})),
        (json!({"op": "del", "key": "v"}), json!({"deleted": false})),
    ];
    for (body, want) in steps {
        assert_eq!(at.op(body).await, want);
    }
    // A value with a 1 s ttl is there, then gone; no sleeping, a deadline.
    let short = json!({"op": "set", "key": "t", "value": "short", "ttl": 1});
    assert_eq!(at.op(short).await, json!({"ok": true}));
    let get = json!({"op": "get", "key": "t"});
    assert_eq!(at.op(get.clone()).await, json!({ "value": "short" }));
    eventually("the 1 s value expires", Duration::from_secs(10), || async {
        at.op(get.clone()).await == json!({ "value": null })
    })
    .await;
    // seen_before with a ttl: first, seen, and first again once it expired.
    let seen = json!({"op": "seen", "key": "evt-1", "ttl": 1});
    assert_eq!(at.op(seen.clone()).await, json!({ "seen": false }));
    assert_eq!(at.op(seen.clone()).await, json!({ "seen": true }));
    eventually(
        "seen_before forgets after its ttl",
        Duration::from_secs(10),
        || async { at.op(seen.clone()).await == json!({ "seen": false }) },
    )
    .await;
}

async fn channels_do_not_see_each_other(app: TestApp) {
    let a = token_of(&app.create_channel(state_channel("state-a")).await);
    let b = token_of(&app.create_channel(state_channel("state-b")).await);
    let (a, b) = (app.at(&a), app.at(&b));
    let get = json!({"op": "get", "key": "k"});
    let seen = json!({"op": "seen", "key": "e", "ttl": 60});
    let steps = [
        (
            &a,
            json!({"op": "set", "key": "k", "value": "of a"}),
            json!({"ok": true}),
        ),
        (&b, get.clone(), json!({"value": null})),
        (&a, get.clone(), json!({"value": "of a"})),
        (&a, seen.clone(), json!({"seen": false})),
        (&b, seen, json!({"seen": false})),
        (
            &b,
            json!({"op": "del", "key": "k"}),
            json!({"deleted": false}),
        ),
        (&a, get, json!({"value": "of a"})),
    ];
    for (i, (at, body, want)) in steps.into_iter().enumerate() {
        assert_eq!(at.op(body).await, want, "step {i}");
    }
}

async fn a_deleted_channel_takes_its_state_along(app: TestApp) {
    let c = app.create_channel(state_channel("state-gone")).await;
    let (id, token) = (id_of(&c), token_of(&c));
    for k in ["a", "b", "c"] {
        op(&app, &token, json!({"op": "set", "key": k, "value": 1})).await;
    }
    assert_eq!(state_rows(&app, &id).await, 3);
    let r = app
        .admin("DELETE", &format!("/admin/v1/channels/{id}"), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(state_rows(&app, &id).await, 0);
}

/// Rows of the channel's state in the node's database.
async fn state_rows(app: &TestApp, channel_id: &str) -> i64 {
    use diesel::prelude::*;
    let id = channel_id.to_string();
    app.state
        .db
        .run(move |c| {
            use oktell_gateway::db::schema::channel_state::dsl;
            Ok(dsl::channel_state
                .filter(dsl::channel_id.eq(id))
                .count()
                .get_result::<i64>(c)?)
        })
        .await
        .expect("count state rows")
}

#[actix_web::test]
async fn bounds_give_script_errors_naming_the_setting() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.channel_state_max_key_bytes = 8;
        c.channel_state_max_value_bytes = 32;
        c.channel_state_max_keys = 3;
    })
    .await
    .unwrap();
    let c = app.create_channel(state_channel("bounded")).await;
    let (id, token) = (id_of(&c), token_of(&c));
    let error_of = |v: Value| v["error"].as_str().unwrap_or_default().to_string();
    let e = error_of(
        op(
            &app,
            &token,
            json!({"op": "set", "key": "123456789", "value": 1}),
        )
        .await,
    );
    assert!(e.contains("channel_state_max_key_bytes (8)"), "{e}");
    let e = error_of(
        op(
            &app,
            &token,
            json!({"op": "set", "key": "k", "value": "x".repeat(40)}),
        )
        .await,
    );
    assert!(e.contains("channel_state_max_value_bytes (32)"), "{e}");
    let e = error_of(
        op(
            &app,
            &token,
            json!({"op": "set", "key": "k", "value": 1, "ttl": -1}),
        )
        .await,
    );
    assert!(e.contains("ttl_s"), "{e}");
    for k in ["k1", "k2", "k3"] {
        assert_eq!(
            op(&app, &token, json!({"op": "set", "key": k, "value": 1})).await,
            json!({"ok": true})
        );
    }
    let e = error_of(op(&app, &token, json!({"op": "set", "key": "k4", "value": 1})).await);
    assert!(e.contains("channel_state_max_keys (3)"), "{e}");
    let e = error_of(op(&app, &token, json!({"op": "seen", "key": "k4", "ttl": 5})).await);
    assert!(e.contains("channel_state_max_keys (3)"), "{e}");
    // An existing key can still change, and a freed key makes room.
    assert_eq!(
        op(&app, &token, json!({"op": "set", "key": "k1", "value": 2})).await,
        json!({"ok": true})
    );
    op(&app, &token, json!({"op": "del", "key": "k3"})).await;
    assert_eq!(
        op(&app, &token, json!({"op": "set", "key": "k4", "value": 1})).await,
        json!({"ok": true})
    );
    // Uncaught, the run fails and its error says which bound (the dry run shows the
    // error a real run logs).
    let r = app
        .admin(
            "POST",
            &format!("/admin/v1/channels/{id}/dry-run"),
            Some(json!({
                "request": {"method": "POST", "body": ""},
                "script": "state_set(\"k\", \"a value far longer than thirty-two bytes\");",
            })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!(report["ok"], false, "{report}");
    let message = report["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("channel_state_max_value_bytes (32)"),
        "{report}"
    );
    // A real run's caller gets the generic error.
    let r = app
        .admin(
            "PATCH",
            &format!("/admin/v1/channels/{id}"),
            Some(json!({"webhook_scenario": "state_set(\"123456789\", 1);"})),
        )
        .await;
    assert!(r.status == 200, "{}", r.text());
    let r = app.webhook(&token, "POST", "", "").await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.error_code(), "scenario_error");
    let metrics = app.metrics().await.text();
    assert!(
        metrics.contains(r#"oktell_channel_state_calls_total{op="set",outcome="limit"}"#),
        "{metrics}"
    );
}

#[actix_web::test]
async fn a_dry_run_records_state_writes_and_performs_none() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let c = app.create_channel(state_channel("dry")).await;
    let (id, token) = (id_of(&c), token_of(&c));
    op(
        &app,
        &token,
        json!({"op": "set", "key": "k", "value": "real"}),
    )
    .await;
    let script = r#"
        let before = state_get("k");
        state_set("k", #{ draft: true }, 60);
        let after = state_get("k");
        let gone = state_del("real-absent");
        let s1 = seen_before("evt", 60);
        let s2 = seen_before("evt", 60);
        response_content = to_json(#{ before: before, after: after, gone: gone, s1: s1, s2: s2 });
    "#;
    for live in [false, true] {
        let r = app
            .admin(
                "POST",
                &format!("/admin/v1/channels/{id}/dry-run"),
                Some(json!({
                    "request": {"method": "POST", "body": ""},
                    "script": script,
                    "live": live,
                })),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let report = r.json();
        assert_eq!(report["ok"], true, "{report}");
        let reply: Value =
            serde_json::from_str(report["reply"]["body"]["text"].as_str().unwrap()).unwrap();
        assert_eq!(
            reply,
            json!({"before": "real", "after": {"draft": true}, "gone": false, "s1": false, "s2": true})
        );
        assert_eq!(
            report["state"],
            json!([
                {"op": "set", "key": "k", "value": {"text": "{\"draft\":true}", "bytes": 14},
                 "ttl_s": 60, "performed": false},
                {"op": "del", "key": "real-absent", "result": false, "performed": false},
                {"op": "seen_before", "key": "evt", "ttl_s": 60, "result": false, "performed": false},
            ]),
            "{report}"
        );
    }
    // Nothing was written.
    assert_eq!(
        op(&app, &token, json!({"op": "get", "key": "k"})).await,
        json!({"value": "real"})
    );
    assert_eq!(
        op(&app, &token, json!({"op": "seen", "key": "evt", "ttl": 60})).await,
        json!({"seen": false})
    );
    assert_eq!(state_rows(&app, &id).await, 2);
    // The report's state records are in the API document.
    let doc = app
        .send(app.client.get(app.url("/openapi.json")), None)
        .await
        .json();
    assert!(
        doc["components"]["schemas"]["StateRecord"].is_object(),
        "StateRecord missing from /openapi.json"
    );
}

/// A channel's webhook on one node.
struct At<'a> {
    client: &'a Client,
    base: &'a str,
    token: &'a str,
}

impl At<'_> {
    async fn op(&self, body: Value) -> Value {
        let (status, answer) = op_at(self.client, self.base, self.token, body).await;
        assert_eq!(status, 200, "{answer}");
        answer
    }
}

/// SQLite: state is in the database file, so a node killed with SIGKILL and started
/// again on the same data folder reads what was stored before.
#[actix_web::test]
async fn state_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("oktell-state-{}", uuid::Uuid::new_v4().simple()));
    let mut first = GatewayProcess::start_in(&dir, &[]).await;
    let token = token_of(&first.create_channel(state_channel("durable")).await);
    let client = Client::builder().timeout(Duration::from_secs(30)).finish();
    let value = json!({"session": "s-1", "n": 7});
    let before = At {
        client: &client,
        base: &first.base,
        token: &token,
    };
    let set = json!({"op": "set", "key": "user:1", "value": value});
    assert_eq!(before.op(set).await, json!({"ok": true}));
    let seen = json!({"op": "seen", "key": "e", "ttl": 600});
    assert_eq!(before.op(seen.clone()).await, json!({"seen": false}));
    first.kill9();
    // Dropped after `second`: `first` removes the folder when it goes.
    let second = GatewayProcess::start_in(&dir, &[]).await;
    let after = At {
        client: &client,
        base: &second.base,
        token: &token,
    };
    let get = json!({"op": "get", "key": "user:1"});
    assert_eq!(after.op(get).await, json!({ "value": value }));
    assert_eq!(after.op(seen).await, json!({"seen": true}));
}

/// PostgreSQL: two node processes of one domain share the state; `seen_before` on
/// one node is seen on the other.
#[actix_web::test]
async fn state_is_shared_between_two_nodes() {
    let Some(cluster) = crate::cluster::Cluster::start(2).await else {
        return;
    };
    let token = token_of(
        &cluster
            .node(1)
            .create_channel(state_channel("shared"))
            .await,
    );
    let client = Client::builder().timeout(Duration::from_secs(30)).finish();
    let [one, two] = [1, 2].map(|i| At {
        client: &client,
        base: &cluster.node(i).base,
        token: &token,
    });
    // The channel is live on node 2 once its note arrived.
    eventually(
        "node 2 serves the channel",
        Duration::from_secs(10),
        || async {
            op_at(&client, two.base, &token, json!({"op": "get", "key": "x"}))
                .await
                .0
                == 200
        },
    )
    .await;
    let user = |op: &str| json!({"op": op, "key": "user:1", "value": "ws-session-9"});
    let evt = json!({"op": "seen", "key": "evt", "ttl": 60});
    assert_eq!(one.op(user("set")).await, json!({"ok": true}));
    assert_eq!(two.op(user("get")).await, json!({"value": "ws-session-9"}));
    assert_eq!(two.op(evt.clone()).await, json!({"seen": false}));
    assert_eq!(one.op(evt).await, json!({"seen": true}));
    assert_eq!(two.op(user("del")).await, json!({"deleted": true}));
    assert_eq!(one.op(user("get")).await, json!({"value": null}));
    // 100 concurrent first sightings of one key, split over both nodes: one is first.
    let burst = json!({"op": "seen", "key": "burst", "ttl": 60, "at": in_ms(1500)});
    let calls = (0..100).map(|i| if i % 2 == 0 { &one } else { &two }.op(burst.clone()));
    let answers = futures_util::future::join_all(calls).await;
    let first = answers
        .iter()
        .filter(|a| **a == json!({"seen": false}))
        .count();
    assert_eq!(first, 1, "{answers:?}");
}

/// Expired rows that nothing reads are removed by the node's sweep.
#[actix_web::test]
async fn expired_rows_are_swept_without_being_read() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.channel_state_sweep_s = 1)
        .await
        .unwrap();
    let c = app.create_channel(state_channel("swept")).await;
    let (id, token) = (id_of(&c), token_of(&c));
    for k in ["a", "b", "c"] {
        op(
            &app,
            &token,
            json!({"op": "set", "key": k, "value": k, "ttl": 1}),
        )
        .await;
    }
    op(
        &app,
        &token,
        json!({"op": "set", "key": "kept", "value": 1}),
    )
    .await;
    assert_eq!(state_rows(&app, &id).await, 4);
    eventually(
        "the sweep removed the expired rows",
        Duration::from_secs(10),
        || async { state_rows(&app, &id).await == 1 },
    )
    .await;
    assert_eq!(
        op(&app, &token, json!({"op": "get", "key": "kept"})).await,
        json!({"value": 1})
    );
}
