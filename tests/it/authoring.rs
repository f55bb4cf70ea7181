//! Scenario authoring (#13): dry runs (recorded, not performed unless live; mocks;
//! errors with line and column; the CLI) and versions (listed, restored live, bounded).

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, id_of, spawn_app_with, token_of};
use crate::receiver::Receiver;

const PRIMARY: &str = "primary-outgoing-secret-0001";

/// Logs, calls out, emits, broadcasts and replies with what it got.
const BUSY: &str = r#"
    log("got " + startparam(4));
    let r = outgoing_request("POST", "orders?x=1", "payload-" + startparam(4));
    emit_event("order.created", #{ id: 7 });
    ws_broadcast("hello all");
    response_code = 201;
    response_headers = #{ "X-Upstream": `${r.status}`, "Content-Type": "text/plain" };
    response_content = `done ${startparam(2)} ${r.body}`;
"#;

async fn busy_channel(app: &TestApp, receiver: &Receiver) -> Value {
    app.create_channel(json!({
        "code": "busy", "kind": "public", "wait_for_completion": true,
        "outgoing_url": format!("{}/api", receiver.url),
        "outgoing_token_primary": PRIMARY,
        "webhook_scenario": BUSY,
    }))
    .await
}

async fn dry_run(app: &TestApp, id: &str, body: Value) -> crate::helpers::Reply {
    app.admin(
        "POST",
        &format!("/admin/v1/channels/{id}/dry-run"),
        Some(body),
    )
    .await
}

async fn stored_events(app: &TestApp) -> usize {
    let r = app.admin("GET", "/admin/v1/events", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["items"].as_array().unwrap().len()
}

#[actix_web::test]
async fn dry_run_reports_and_performs_nothing() {
    let receiver = Receiver::start(|_| (200, "upstream-answer".into()));
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let c = busy_channel(&app, &receiver).await;
    let r = dry_run(
        &app,
        &id_of(&c),
        json!({ "request": { "method": "put", "path": "/x?y=1", "body": "B1",
                "headers": { "X-Test": "1" }, "peer_ip": "10.1.2.3" } }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["trigger"], "webhook");
    assert_eq!(report["script"], "saved");
    assert_eq!(report["live"], false);
    assert_eq!(report["reply"]["code"], 201);
    // Not performed: answered 200 with an empty body.
    assert_eq!(report["reply"]["body"]["text"], "done PUT ");
    let headers = report["reply"]["headers"].as_array().unwrap();
    assert!(
        headers.contains(&json!(["X-Upstream", "200"])),
        "{headers:?}"
    );
    assert_eq!(
        report["logs"],
        json!([{ "level": "info", "message": "got B1" }])
    );
    let call = &report["calls"][0];
    assert_eq!(call["method"], "POST");
    assert_eq!(call["url"], format!("{}/api/orders?x=1", receiver.url));
    assert_eq!(call["body"]["text"], "payload-B1");
    assert_eq!(call["answered_by"], "not_performed");
    assert_eq!(report["events"][0]["event_type"], "order.created");
    assert_eq!(report["events"][0]["data"]["text"], r#"{"id":7}"#);
    assert_eq!(report["events"][0]["performed"], false);
    assert_eq!(report["websocket"][0]["op"], "broadcast");
    assert_eq!(report["websocket"][0]["text"]["text"], "hello all");
    assert!(report["operations"].as_u64().unwrap() > 0);
    assert!(report["duration_ms"].as_f64().is_some());
    assert!(!r.text().contains(PRIMARY), "no secret in the report");

    assert!(receiver.seen().is_empty(), "the upstream received nothing");
    assert_eq!(stored_events(&app).await, 0, "no event was stored");
    // Not counted as one of the channel's requests.
    assert_eq!(app.runtime(&id_of(&c)).await["requests"], 0);
}

#[actix_web::test]
async fn live_dry_run_performs() {
    let receiver = Receiver::start(|_| (200, "upstream-answer".into()));
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let c = busy_channel(&app, &receiver).await;
    let r = dry_run(
        &app,
        &id_of(&c),
        json!({ "request": { "body": "B2" }, "live": true }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["reply"]["body"]["text"], "done POST upstream-answer");
    assert_eq!(report["calls"][0]["answered_by"], "performed");
    assert_eq!(report["calls"][0]["status"], 200);
    assert_eq!(report["events"][0]["performed"], true);
    let seen = receiver.seen();
    assert_eq!(seen.len(), 1, "the live run called the upstream");
    assert_eq!(seen[0].path, "/api/orders?x=1");
    assert_eq!(seen[0].body, b"payload-B2");
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {PRIMARY}")
    );
    assert_eq!(stored_events(&app).await, 1);
}

#[actix_web::test]
async fn mock_responses_are_what_the_script_reads() {
    let receiver = Receiver::start(|_| (500, "must not be called".into()));
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let c = app
        .create_channel(json!({
            "code": "mocked", "kind": "public", "wait_for_completion": true,
            "outgoing_url": receiver.url,
            "webhook_scenario": r#"
                let r = outgoing_request("GET", "orders/7?full=1");
                let order = parse_json(r.body);
                response_code = r.status;
                response_content = `${order.name} ${r.headers["x-kind"]}`;
            "#,
        }))
        .await;
    // Live, yet a mocked call is never made.
    let r = dry_run(
        &app,
        &id_of(&c),
        json!({ "live": true, "mocks": [
            { "method": "POST", "path": "orders/7", "status": 500, "body": "wrong method" },
            { "method": "GET", "path": "/orders/7", "status": 202,
              "headers": { "X-Kind": "vip" }, "body": { "name": "Ann" } }
        ] }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["reply"]["code"], 202);
    assert_eq!(report["reply"]["body"]["text"], "Ann vip");
    assert_eq!(report["calls"][0]["answered_by"], "mock");
    assert!(receiver.seen().is_empty());
}

#[actix_web::test]
async fn errors_come_back_with_line_and_column() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let c = app
        .public_channel("errs", true, r#"response_content = "saved";"#)
        .await;
    let id = id_of(&c);
    // A draft that does not compile: reported, not saved.
    let r = dry_run(&app, &id, json!({ "script": "let x = 1;\nlet y = ;" })).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!(report["ok"], false);
    assert_eq!(report["script"], "draft");
    assert_eq!(report["error"]["code"], "scenario_syntax_error");
    assert_eq!(report["error"]["line"], 2);
    assert!(report["error"]["column"].as_u64().is_some(), "{report}");

    // A draft that fails while it runs, inside a function it defines.
    let r = dry_run(
        &app,
        &id,
        json!({ "script": "fn f(x) {\n  x.no_such_method()\n}\nlog(\"before\");\nf(1);" }),
    )
    .await;
    let report = r.json();
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["error"]["code"], "scenario_error");
    assert_eq!(report["error"]["line"], 2, "{report}");
    assert!(report["error"]["column"].as_u64().is_some(), "{report}");
    assert!(
        report["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no_such_method")
    );
    assert_eq!(report["logs"][0]["message"], "before");

    // The saved script is untouched and still answers.
    let r = app.webhook(&token_of(&c), "POST", "", "").await;
    assert_eq!(r.text(), "saved");
}

#[actix_web::test]
async fn websocket_messages_run_the_websocket_script() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let c = app
        .create_channel(json!({
            "code": "wsdry", "kind": "public",
            "websocket_scenario": r#"
                ws_send(startparam(1), "pushed");
                ws_close("other", "bye");
                response_content = `echo ${startparam(2)} from ${startparam(1)} at ${startparam(4)}`;
            "#,
        }))
        .await;
    let r = dry_run(
        &app,
        &id_of(&c),
        json!({ "websocket": { "session": "s1", "text": "hi", "peer_ip": "::1" } }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!(report["trigger"], "websocket");
    assert_eq!(report["reply"]["body"]["text"], "echo hi from s1 at ::1");
    assert_eq!(report["websocket"][0]["op"], "send");
    assert_eq!(report["websocket"][0]["session"], "s1");
    assert_eq!(report["websocket"][1]["op"], "close");
    assert_eq!(report["websocket"][1]["performed"], false);
}

#[actix_web::test]
async fn bad_dry_run_input_names_the_field() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let c = app.public_channel("bad", true, "").await;
    let id = id_of(&c);
    let cases = [
        (json!({ "request": { "method": "G T" } }), "request.method"),
        (
            json!({ "request": { "peer_ip": "nope" } }),
            "request.peer_ip",
        ),
        (
            json!({ "request": { "protocol": "SPDY" } }),
            "request.protocol",
        ),
        (
            json!({ "request": { "headers": { "a b": "1" } } }),
            "request.headers.a b",
        ),
        (
            json!({ "request": {}, "websocket": { "text": "x" } }),
            "websocket",
        ),
        (json!({ "websocket": {} }), "websocket"),
        (json!({ "live": "yes" }), "live"),
        (
            json!({ "mocks": [{ "path": "x", "status": 99 }] }),
            "mocks[0].status",
        ),
    ];
    for (body, field) in cases {
        let r = dry_run(&app, &id, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.error_code(), "invalid_field", "{body}");
        assert_eq!(r.json()["error"]["field"], field, "{body}: {}", r.text());
    }
    let r = dry_run(&app, "no-such-channel", json!({})).await;
    assert_eq!(r.status, 404);
    let r = app
        .admin_with_token(
            "POST",
            &format!("/admin/v1/channels/{id}/dry-run"),
            Some(json!({})),
            None,
        )
        .await;
    assert_eq!(r.status, 401);
    // An empty body is an empty POST.
    let r = app
        .admin("POST", &format!("/admin/v1/channels/{id}/dry-run"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["reply"]["code"], 200);
}

async fn versions(app: &TestApp, id: &str) -> Value {
    let r = app
        .admin("GET", &format!("/admin/v1/channels/{id}/versions"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

async fn restore_brings_back_the_old_behaviour(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |_| {}).await else {
        return;
    };
    let c = app
        .public_channel("ver", true, r#"response_content = "A";"#)
        .await;
    let (id, token) = (id_of(&c), token_of(&c));
    let r = app
        .admin(
            "PATCH",
            &format!("/admin/v1/channels/{id}"),
            Some(json!({ "webhook_scenario": r#"response_content = "B";"#, "note": "try B" })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(app.webhook(&token, "POST", "", "").await.text(), "B");

    let list = versions(&app, &id).await;
    assert_eq!(list["total"], 2);
    assert_eq!(list["kept"], 50);
    assert_eq!(list["items"][0]["version"], 2);
    assert_eq!(list["items"][0]["note"], "try B");
    assert_eq!(list["items"][0]["current"], true);
    assert_eq!(list["items"][1]["version"], 1);
    assert_eq!(list["items"][1]["current"], false);
    assert!(list["items"][0].get("webhook_scenario").is_none());

    let r = app
        .admin("GET", &format!("/admin/v1/channels/{id}/versions/1"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["webhook_scenario"], r#"response_content = "A";"#);

    let r = app
        .admin(
            "POST",
            &format!("/admin/v1/channels/{id}/versions/1/restore"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], 3);
    assert_eq!(r.json()["webhook_scenario"], r#"response_content = "A";"#);
    // The very next request runs the restored script.
    assert_eq!(app.webhook(&token, "POST", "", "").await.text(), "A");
    let list = versions(&app, &id).await;
    assert_eq!(list["total"], 3);
    assert_eq!(list["items"][0]["note"], "restored from version 1");

    // With a note of its own.
    let r = app
        .admin(
            "POST",
            &format!("/admin/v1/channels/{id}/versions/2/restore"),
            Some(json!({ "note": "B again" })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(app.webhook(&token, "POST", "", "").await.text(), "B");
    assert_eq!(versions(&app, &id).await["items"][0]["note"], "B again");

    // Unknown versions and bad numbers.
    let r = app
        .admin("GET", &format!("/admin/v1/channels/{id}/versions/99"), None)
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "version_not_found");
    let r = app
        .admin(
            "POST",
            &format!("/admin/v1/channels/{id}/versions/x/restore"),
            None,
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["field"], "version");
    let r = app
        .admin(
            "POST",
            &format!("/admin/v1/channels/{id}/versions/1/restore"),
            Some(json!({ "notes": "typo" })),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["field"], "notes", "{}", r.text());

    // Versions go with their channel.
    let r = app
        .admin("DELETE", &format!("/admin/v1/channels/{id}"), None)
        .await;
    assert_eq!(r.status, 204);
    let r = app
        .admin("GET", &format!("/admin/v1/channels/{id}/versions"), None)
        .await;
    assert_eq!(r.status, 404);
    if let Some(rows) = version_rows(&app, &id) {
        assert_eq!(rows, 0, "the channel's versions were deleted with it");
    }
}

/// Rows of `channel_versions` left for a channel (SQLite apps only).
fn version_rows(app: &TestApp, id: &str) -> Option<i64> {
    use diesel::prelude::*;
    if app.pg_schema().is_some() {
        return None;
    }
    let mut conn = diesel::SqliteConnection::establish(&app.state.config.database_url).ok()?;
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query("SELECT COUNT(*) AS n FROM channel_versions WHERE channel_id = ?")
        .bind::<diesel::sql_types::Text, _>(id)
        .get_result::<Count>(&mut conn)
        .ok()
        .map(|c| c.n)
}

#[actix_web::test]
async fn restore_brings_back_the_old_behaviour_sqlite() {
    restore_brings_back_the_old_behaviour(Backend::Sqlite).await;
}

#[actix_web::test]
async fn restore_brings_back_the_old_behaviour_postgres() {
    restore_brings_back_the_old_behaviour(Backend::Postgres).await;
}

#[actix_web::test]
async fn versions_are_bounded() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.channel_versions_kept = 3)
        .await
        .unwrap();
    let c = app
        .public_channel("bounded", true, "response_content = \"0\";")
        .await;
    let id = id_of(&c);
    for n in 1..=5 {
        let r = app
            .admin(
                "PATCH",
                &format!("/admin/v1/channels/{id}"),
                Some(json!({ "webhook_scenario": format!("response_content = \"{n}\";") })),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let list = versions(&app, &id).await;
    assert_eq!(list["kept"], 3);
    let numbers: Vec<i64> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, vec![6, 5, 4]);
    assert_eq!(version_rows(&app, &id), Some(3));
    let r = app
        .admin(
            "POST",
            &format!("/admin/v1/channels/{id}/versions/1/restore"),
            None,
        )
        .await;
    assert_eq!(r.status, 404, "trimmed versions are gone");
}

#[test]
fn cli_scenario_run_dry_runs_a_draft() {
    use std::process::Command;
    let dir = std::env::temp_dir().join(format!("oktell-dry-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let gateway = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_oktell-gateway"))
            .args(["--database-url", &dir.join("cli.db").display().to_string()])
            .args(["--data-dir", &dir.display().to_string()])
            .args(args)
            .env_remove("OKTELL_ADMIN_TOKEN")
            .output()
            .expect("binary runs")
    };
    let saved = dir.join("saved.rhai");
    std::fs::write(&saved, "response_content = \"saved \" + startparam(4);").unwrap();
    let out = gateway(&[
        "channel",
        "create",
        "--code",
        "clidry",
        "--kind",
        "public",
        "--outgoing-url",
        "http://127.0.0.1:9/never",
        "--webhook-scenario-file",
        saved.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = dir.join("body.json");
    std::fs::write(&body, r#"{"n": 1}"#).unwrap();
    let draft = dir.join("draft.rhai");
    std::fs::write(
        &draft,
        "let r = outgoing_request(\"POST\", \"x\", startparam(4));\nresponse_content = `draft ${startparam(2)} ${startparam(4)} ${r.status}`;",
    )
    .unwrap();
    let body_arg = format!("@{}", body.display());
    let out = gateway(&[
        "scenario",
        "run",
        "--channel",
        "clidry",
        "--method",
        "POST",
        "--body",
        &body_arg,
        "--script",
        draft.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["script"], "draft");
    assert_eq!(
        report["reply"]["body"]["text"],
        r#"draft POST {"n": 1} 200"#
    );
    assert_eq!(report["calls"][0]["answered_by"], "not_performed");

    // The saved script, and a failing draft (exit 1, with line and column).
    let out = gateway(&["scenario", "run", "--channel", "clidry", "--body", "hi"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["reply"]["body"]["text"], "saved hi");
    std::fs::write(&draft, "let x = ;").unwrap();
    let out = gateway(&[
        "scenario",
        "run",
        "--channel",
        "clidry",
        "--script",
        draft.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
