//! `/admin/v1/events` and `emit_event`: the domain's event log.

use serde_json::json;

use crate::helpers::{ADMIN_TOKEN, TestApp, token_of};
use crate::on_both_backends;

on_both_backends!(
    publish_one_and_a_batch_in_order,
    idempotency_keys_dedupe,
    scenarios_emit_events
);

async fn publish_one_and_a_batch_in_order(app: TestApp) {
    let r = app
        .admin(
            "POST",
            "/admin/v1/events",
            Some(json!({"type": "call.started", "data": {"call": 1}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let first = r.json();
    assert_eq!(first["type"], "call.started");
    assert_eq!(first["data"]["call"], 1);
    assert_eq!(first["domain"], "default");
    assert!(first["occurred_at"].as_str().unwrap().ends_with('Z'));
    let first_id = first["id"].as_i64().unwrap();

    let r = app
        .admin(
            "POST",
            "/admin/v1/events",
            Some(json!({"events": [
                {"type": "call.answered", "data": {"call": 1}},
                {"type": "call.ended", "data": {"call": 1}, "occurred_at": "2026-11-28T10:00:00Z"},
            ]})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let batch = r.json();
    let ids: Vec<i64> = batch["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![first_id + 1, first_id + 2],
        "ids are a per-domain offset"
    );
    assert_eq!(
        batch["events"][1]["occurred_at"],
        "2026-11-28T10:00:00.000Z"
    );

    let log = app
        .admin("GET", &format!("/admin/v1/events?after={first_id}"), None)
        .await
        .json();
    let types: Vec<&str> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["call.answered", "call.ended"]);
    assert_eq!(log["last_id"], first_id + 2);
    assert!(log["epoch"].as_str().is_some_and(|e| !e.is_empty()));

    for (body, field) in [
        (json!({"type": "Call Started"}), "type"),
        (json!({"type": "call.started", "data": [1]}), "data"),
        (
            json!({"type": "call.started", "occurred_at": "yesterday"}),
            "occurred_at",
        ),
        (json!({"events": []}), "events"),
        (
            json!({"events": [{"type": "ok"}, {"type": "bad type"}]}),
            "events[1].type",
        ),
        (json!({"kind": "x"}), "body"),
    ] {
        let r = app
            .admin("POST", "/admin/v1/events", Some(body.clone()))
            .await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.json()["error"]["field"], field, "{body}");
    }
    let after = app.admin("GET", "/admin/v1/events", None).await.json();
    assert_eq!(
        after["last_id"],
        first_id + 2,
        "refused publishes stored nothing"
    );
}

async fn idempotency_keys_dedupe(app: TestApp) {
    let send = |key: &'static str| {
        let req = app
            .client
            .post(app.url("/admin/v1/events"))
            .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
            .insert_header(("Content-Type", "application/json"))
            .insert_header(("Idempotency-Key", key));
        app.send(
            req,
            Some(
                json!({"type": "order.paid", "data": {"n": 1}})
                    .to_string()
                    .into_bytes(),
            ),
        )
    };
    let first = send("pay-42").await;
    assert_eq!(first.status, 201);
    let again = send("pay-42").await;
    assert_eq!(again.status, 200, "a repeat is not stored again");
    assert_eq!(again.json()["id"], first.json()["id"]);
    let other = send("pay-43").await;
    assert_eq!(other.status, 201);
    assert_ne!(other.json()["id"], first.json()["id"]);
    // The same key as a field, in a batch.
    let r = app
        .admin(
            "POST",
            "/admin/v1/events",
            Some(json!({"events": [{"type": "order.paid", "idempotency_key": "pay-42"}, {"type": "order.shipped"}]})),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["duplicates"], 1);
    assert_eq!(r.json()["events"][0]["id"], first.json()["id"]);
    // A key repeated inside one batch: stored once, the repeat answers the first's id;
    // the new events of a batch get consecutive ids.
    let r = app
        .admin(
            "POST",
            "/admin/v1/events",
            Some(json!({"events": [
                {"type": "order.paid", "idempotency_key": "pay-50"},
                {"type": "order.paid", "idempotency_key": "pay-50"},
                {"type": "order.shipped"},
                {"type": "order.paid", "idempotency_key": "pay-43"},
                {"type": "order.shipped", "idempotency_key": "pay-51"},
            ]})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let body = r.json();
    assert_eq!(body["duplicates"], 2, "{body}");
    let ids: Vec<i64> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids[1], ids[0], "{body}");
    assert_eq!(ids[2], ids[0] + 1, "{body}");
    assert_eq!(ids[3], other.json()["id"].as_i64().unwrap(), "{body}");
    assert_eq!(ids[4], ids[0] + 2, "{body}");
    let log = app
        .admin(
            "GET",
            &format!("/admin/v1/events?after={}", ids[0] - 1),
            None,
        )
        .await
        .json();
    let stored: Vec<i64> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(stored, vec![ids[0], ids[0] + 1, ids[0] + 2], "{log}");
}

async fn scenarios_emit_events(app: TestApp) {
    let c = app
        .public_channel(
            "emitter",
            true,
            r#"let id = emit_event("crm.lead", #{ "name": startparam(4) }); response_content = `${id}`;"#,
        )
        .await;
    let r = app.webhook(&token_of(&c), "POST", "", "Ann").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id: i64 = r.text().parse().unwrap();
    let log = app
        .admin("GET", &format!("/admin/v1/events?after={}", id - 1), None)
        .await
        .json();
    assert_eq!(log["items"][0]["id"], id);
    assert_eq!(log["items"][0]["type"], "crm.lead");
    assert_eq!(log["items"][0]["data"]["name"], "Ann");
    // A bad type is a script error the scenario can catch.
    let c = app
        .public_channel(
            "bad-emitter",
            true,
            r#"try { emit_event("Not Valid", #{}); } catch (e) { response_code = 422; }"#,
        )
        .await;
    assert_eq!(app.webhook(&token_of(&c), "POST", "", "").await.status, 422);
}

#[actix_web::test]
async fn eventing_channels_keep_their_type_patterns() {
    let app = crate::helpers::spawn_app(crate::helpers::Backend::Sqlite)
        .await
        .unwrap();
    let c = app
        .create_channel(
            json!({"code": "feed", "kind": "eventing", "event_types": ["call.*", "order.paid"]}),
        )
        .await;
    assert_eq!(c["event_types"], json!(["call.*", "order.paid"]));
    let r = app
        .admin(
            "POST",
            "/admin/v1/channels",
            Some(json!({"code": "bad", "kind": "eventing", "event_types": ["call.*.x"]})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["field"], "event_types[0]");
    let public = app.public_channel("plain", false, "").await;
    assert_eq!(public["event_types"], json!([]), "empty: every type");
}
