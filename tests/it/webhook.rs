//! `ANY /api/token/v1/{token}`: replies, start parameters, limits and live changes.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, eventually, id_of, spawn_app_with, token_of};
use crate::on_both_backends;

on_both_backends!(
    scenario_sets_the_reply,
    live_create_update_delete,
    unknown_and_unserved_tokens_are_404
);

async fn scenario_sets_the_reply(app: TestApp) {
    let c = app
        .public_channel(
            "reply",
            true,
            r#"response_code = 201;
               response_content = `got ${startparam(2)} ${startparam(4)}`;
               response_headers = #{"Content-Type": "text/plain; charset=utf-8", "X-Trace": "abc"};"#,
        )
        .await;
    let r = app.webhook(&token_of(&c), "PUT", "", "hello").await;
    assert_eq!(r.status, 201);
    assert_eq!(r.text(), "got PUT hello");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(r.header("x-trace").as_deref(), Some("abc"));

    // Headers given as a JSON object in a string work the same way.
    let c = app
        .public_channel(
            "reply-json",
            true,
            r#"response_headers = "{\"X-Json\": \"1\"}"; response_content = "ok";"#,
        )
        .await;
    let r = app.webhook(&token_of(&c), "POST", "", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-json").as_deref(), Some("1"));
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/octet-stream"),
        "default type"
    );
    assert_eq!(r.text(), "ok");

    // An empty scenario answers 200 with an empty body.
    let c = app.public_channel("empty", true, "").await;
    let r = app.webhook(&token_of(&c), "GET", "", "").await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/octet-stream")
    );
}

#[actix_web::test]
async fn start_parameters_are_the_seven_of_oktell() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let c = app
        .public_channel(
            "params",
            true,
            r#"let out = #{};
               for i in 1..=7 { out[`p${i}`] = startparam(i); }
               response_content = to_json(out);
               response_headers = #{"Content-Type": "application/json"};"#,
        )
        .await;
    let req = app
        .client
        .post(app.url(&format!("/api/token/v1/{}/orders/42?x=1", token_of(&c))))
        .insert_header(("X-Custom", "v1"));
    let r = app.send(req, Some(b"{\"a\":1}".to_vec())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let p = r.json();
    let channel: Value = serde_json::from_str(p["p1"].as_str().unwrap()).unwrap();
    assert_eq!(channel["code"], "params");
    assert_eq!(channel["kind"], "public");
    assert!(
        channel.get("outgoing_token_primary").is_none(),
        "no secrets in startparam(1)"
    );
    assert!(channel.get("token").is_none(), "no token in startparam(1)");
    assert_eq!(p["p2"], "POST");
    assert_eq!(
        p["p3"],
        format!(
            "http://127.0.0.1:{}/api/token/v1/{}/orders/42?x=1",
            app.port,
            token_of(&c)
        )
    );
    assert_eq!(p["p4"], "{\"a\":1}");
    let headers: Value = serde_json::from_str(p["p5"].as_str().unwrap()).unwrap();
    assert_eq!(headers["x-custom"], "v1");
    assert_eq!(p["p6"], "127.0.0.1");
    assert_eq!(p["p7"], "HTTP/1.1");
}

#[actix_web::test]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    let script = "response_content = startparam(6);";
    let trusting = spawn_app_with(Backend::Sqlite, |c| {
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()]
    })
    .await
    .unwrap();
    let c = trusting.public_channel("xff", true, script).await;
    let req = trusting
        .client
        .get(trusting.url(&format!("/api/token/v1/{}", token_of(&c))))
        .insert_header(("X-Forwarded-For", "203.0.113.9, 127.0.0.1"));
    assert_eq!(trusting.send(req, None).await.text(), "203.0.113.9");

    let wary = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let c = wary.public_channel("xff", true, script).await;
    let req = wary
        .client
        .get(wary.url(&format!("/api/token/v1/{}", token_of(&c))))
        .insert_header(("X-Forwarded-For", "203.0.113.9"));
    assert_eq!(wary.send(req, None).await.text(), "127.0.0.1");
}

async fn live_create_update_delete(app: TestApp) {
    let c = app
        .public_channel("live", true, r#"response_content = "v1";"#)
        .await;
    let token = token_of(&c);
    let id = id_of(&c);
    assert_eq!(app.webhook(&token, "GET", "", "").await.text(), "v1");

    let r = app
        .admin(
            "PATCH",
            &format!("/admin/v1/channels/{id}"),
            Some(json!({"webhook_scenario": "response_content = \"v2\";"})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        app.webhook(&token, "GET", "", "").await.text(),
        "v2",
        "next request uses the new scenario"
    );

    // Disabled: 404; enabled again: serves.
    app.admin(
        "PATCH",
        &format!("/admin/v1/channels/{id}"),
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(app.webhook(&token, "GET", "", "").await.status, 404);
    app.admin(
        "PATCH",
        &format!("/admin/v1/channels/{id}"),
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(app.webhook(&token, "GET", "", "").await.status, 200);

    let r = app
        .admin("DELETE", &format!("/admin/v1/channels/{id}"), None)
        .await;
    assert_eq!(r.status, 204);
    let r = app.webhook(&token, "GET", "", "").await;
    assert_eq!(r.status, 404, "deleted channel is 404 at once");
    assert_eq!(r.error_code(), "channel_not_found");
}

async fn unknown_and_unserved_tokens_are_404(app: TestApp) {
    let r = app.webhook("no-such-token", "POST", "", "x").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "channel_not_found");

    let ev = app
        .create_channel(json!({"code": "ev", "kind": "eventing"}))
        .await;
    assert_eq!(
        app.webhook(&token_of(&ev), "POST", "", "x").await.status,
        404,
        "eventing channel"
    );

    let disabled = app
        .create_channel(json!({"code": "off", "kind": "public", "enabled": false}))
        .await;
    assert_eq!(
        app.webhook(&token_of(&disabled), "POST", "", "")
            .await
            .status,
        404
    );

    let public = app.public_channel("pub", true, "").await;
    let r = app
        .webhook(&token_of(&public), "POST", "/subscribe", "")
        .await;
    assert_eq!(
        r.status, 404,
        "/subscribe is not a public channel's sub-path"
    );
}

#[actix_web::test]
async fn ws_role_decides_which_node_serves() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.roles = vec!["edge".into()])
        .await
        .unwrap();
    let mine = app
        .create_channel(json!({"code": "mine", "kind": "public", "ws_role": "edge", "wait_for_completion": true}))
        .await;
    let any = app
        .create_channel(json!({"code": "any", "kind": "public"}))
        .await;
    let other = app
        .create_channel(json!({"code": "other", "kind": "public", "ws_role": "core"}))
        .await;
    assert_eq!(
        app.webhook(&token_of(&mine), "GET", "", "").await.status,
        200
    );
    assert_eq!(
        app.webhook(&token_of(&any), "GET", "", "").await.status,
        200
    );
    assert_eq!(
        app.webhook(&token_of(&other), "GET", "", "").await.status,
        404
    );
    assert_eq!(app.runtime(&id_of(&other)).await["served_here"], false);
    // Moving a channel to another role takes it off this node at once, and back.
    let id = id_of(&mine);
    app.admin(
        "PATCH",
        &format!("/admin/v1/channels/{id}"),
        Some(json!({"ws_role": "core"})),
    )
    .await;
    assert_eq!(
        app.webhook(&token_of(&mine), "GET", "", "").await.status,
        404
    );
    app.admin(
        "PATCH",
        &format!("/admin/v1/channels/{id}"),
        Some(json!({"ws_role": "edge"})),
    )
    .await;
    assert_eq!(
        app.webhook(&token_of(&mine), "GET", "", "").await.status,
        200
    );
}

#[actix_web::test]
async fn body_over_the_limit_is_413() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.max_body_bytes = 1024)
        .await
        .unwrap();
    let c = app
        .public_channel("small", true, "response_content = startparam(4);")
        .await;
    let token = token_of(&c);
    let r = app.webhook(&token, "POST", "", &"a".repeat(1025)).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "body_too_large");
    let r = app.webhook(&token, "POST", "", &"a".repeat(1024)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 1024);
    assert_eq!(
        app.runtime(&id_of(&c)).await["requests"],
        1,
        "refused body ran no scenario"
    );
}

#[actix_web::test]
async fn wait_off_answers_before_a_slow_scenario_ends() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.scenario_max_operations = 0)
        .await
        .unwrap();
    let c = app
        .public_channel(
            "slow",
            false,
            "let t = timestamp(); while t.elapsed < 3.0 {} response_code = 500;",
        )
        .await;
    let r = app.webhook(&token_of(&c), "POST", "", "x").await;
    assert_eq!(
        r.status, 200,
        "answered at once, not with the scenario's 500"
    );
    let id = id_of(&c);
    let runtime = app.runtime(&id).await;
    assert_eq!(
        runtime["in_flight"], 1,
        "the scenario is still running: {runtime}"
    );
    assert_eq!(runtime["completed"], 0);
    eventually(
        "the background scenario completes",
        Duration::from_secs(20),
        || async { app.runtime(&id).await["completed"] == 1 },
    )
    .await;
    assert_eq!(app.runtime(&id).await["in_flight"], 0);
}

#[actix_web::test]
async fn scenario_errors_are_500_and_leak_nothing() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let c = app
        .public_channel(
            "boom",
            true,
            r#"response_code = 201; response_content = "half"; throw "bad thing";"#,
        )
        .await;
    let r = app.webhook(&token_of(&c), "POST", "", "").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.error_code(), "scenario_error");
    assert!(!r.text().contains("half"), "half-set reply does not leak");
    assert!(
        !r.text().contains("bad thing"),
        "script internals stay in the log"
    );
    assert_eq!(app.runtime(&id_of(&c)).await["errors"], 1);

    for (code, script) in [
        ("bad-code", "response_code = 1000;"),
        ("bad-header", r#"response_headers = #{"Bad Header": "x"};"#),
        ("bad-headers-json", r#"response_headers = "{not json";"#),
    ] {
        let c = app.public_channel(code, true, script).await;
        let r = app.webhook(&token_of(&c), "POST", "", "").await;
        assert_eq!(r.status, 500, "{code}");
        assert_eq!(r.error_code(), "scenario_error", "{code}");
    }
}

#[actix_web::test]
async fn scenario_timeout_is_504() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.scenario_timeout_ms = 300;
        c.scenario_max_operations = 0;
    })
    .await
    .unwrap();
    let c = app.public_channel("forever", true, "loop { }").await;
    let r = app.webhook(&token_of(&c), "POST", "", "").await;
    assert_eq!(r.status, 504);
    assert_eq!(r.error_code(), "scenario_timeout");
    let id = id_of(&c);
    eventually("timeout counted", Duration::from_secs(5), || async {
        app.runtime(&id).await["timeouts"] == 1
    })
    .await;
}

#[actix_web::test]
async fn full_queue_is_503_with_retry_after() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.scenario_threads = 1;
        c.scenario_max_admitted = 2;
        c.scenario_max_operations = 0;
    })
    .await
    .unwrap();
    let c = app
        .public_channel(
            "busy",
            false,
            "let t = timestamp(); while t.elapsed < 2.0 {}",
        )
        .await;
    let token = token_of(&c);
    let mut refused = Vec::new();
    for _ in 0..5 {
        let r = app.webhook(&token, "POST", "", "").await;
        if r.status == 503 {
            refused.push(r);
        } else {
            assert_eq!(r.status, 200);
        }
    }
    // One thread and two admissions: at most two of five are taken.
    assert!(refused.len() >= 3, "refused {}", refused.len());
    assert_eq!(refused[0].error_code(), "scenario_queue_full");
    assert_eq!(refused[0].header("retry-after").as_deref(), Some("1"));
}

#[actix_web::test]
async fn channel_in_flight_limit_is_503() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.channel_max_in_flight = 1;
        c.scenario_max_operations = 0;
    })
    .await
    .unwrap();
    let slow = app
        .public_channel(
            "one-at-a-time",
            false,
            "let t = timestamp(); while t.elapsed < 2.0 {}",
        )
        .await;
    let first = app.webhook(&token_of(&slow), "POST", "", "").await;
    assert_eq!(first.status, 200);
    let second = app.webhook(&token_of(&slow), "POST", "", "").await;
    assert_eq!(second.status, 503);
    assert_eq!(second.error_code(), "channel_busy");
    assert!(second.header("retry-after").is_some());
    // Another channel is not disturbed.
    let other = app
        .public_channel("other", true, r#"response_content = "fine";"#)
        .await;
    assert_eq!(
        app.webhook(&token_of(&other), "GET", "", "").await.text(),
        "fine"
    );
}
