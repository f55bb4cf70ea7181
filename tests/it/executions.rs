//! Execution history (#13): runs recorded by the channel's `history` setting, with
//! position of failures and secrets masked (in the API and in the database file),
//! replayed as dry runs, trimmed to the count bound, dropped and counted when the
//! writer's queue is full.

use std::time::Duration;

use diesel::{Connection, QueryableByName, RunQueryDsl};
use serde_json::{Value, json};

use crate::helpers::{
    Backend, TestApp, eventually, id_of, process_metric, spawn_app_with, token_of,
};
use crate::receiver::Receiver;

const PRIMARY: &str = "primary-outgoing-secret-0042";
const AUTH_SECRET: &str = "auth-header-secret-7781";
const COOKIE_SECRET: &str = "cookie-secret-5512";
const PATTERN_SECRET: &str = "sk_live_Zq81xPatternSecret";
const QUERY_SECRET: &str = "query-key-secret-3310";

/// Logs its input (the outgoing token and a pattern-shaped secret in it) and its URL
/// (the channel's token in it), calls out, then fails on line 6.
const FAILING: &str = "log(\"got \" + startparam(4));
log(\"url \" + startparam(3));
let r = outgoing_request(\"POST\", \"orders\", \"payload\");
log(\"upstream said \" + r.body);
let x = 1;
x.no_such_method();";

async fn executions(app: &TestApp, id: &str, query: &str) -> Value {
    let r = app
        .admin(
            "GET",
            &format!("/admin/v1/channels/{id}/executions{query}"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

async fn items(app: &TestApp, id: &str) -> Vec<Value> {
    executions(app, id, "").await["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Polls until the channel has `n` recorded executions; returns them, newest first.
async fn wait_for(app: &TestApp, id: &str, n: usize) -> Vec<Value> {
    eventually(
        &format!("{n} execution(s) recorded"),
        Duration::from_secs(10),
        || async { items(app, id).await.len() >= n },
    )
    .await;
    items(app, id).await
}

async fn execution(app: &TestApp, id: &str, eid: &str) -> Value {
    let r = app
        .admin(
            "GET",
            &format!("/admin/v1/channels/{id}/executions/{eid}"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

async fn replay(app: &TestApp, id: &str, eid: &str, body: Option<Value>) -> Value {
    let r = app
        .admin(
            "POST",
            &format!("/admin/v1/channels/{id}/executions/{eid}/replay"),
            body,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

async fn post(app: &TestApp, token: &str, body: &str) -> u16 {
    app.webhook(token, "POST", "", body).await.status
}

/// The failing run as recorded: position, inputs, logs, calls, secrets masked in the
/// API (and, on SQLite, in the database file); replayed to the same failure, and to
/// success with a fixed draft. Returns nothing: it asserts.
async fn failing_run_is_recorded_and_replayed(backend: Backend) {
    let receiver = Receiver::start(|_| (200, "upstream-ok".into()));
    let Some(app) = spawn_app_with(backend, |c| {
        c.redact_patterns = vec!["sk_live_[0-9A-Za-z]+".into()];
    })
    .await
    else {
        return;
    };
    let c = app
        .create_channel(json!({
            "code": "failing", "kind": "public", "wait_for_completion": true,
            "outgoing_url": format!("{}/api", receiver.url),
            "outgoing_token_primary": PRIMARY,
            "webhook_scenario": FAILING,
        }))
        .await;
    assert_eq!(c["history"], "errors", "{c}");
    let (id, token) = (id_of(&c), token_of(&c));
    let req = app
        .client
        .post(app.url(&format!(
            "/api/token/v1/{token}/orders?api_key={QUERY_SECRET}&x=1"
        )))
        .insert_header(("Authorization", format!("Bearer {AUTH_SECRET}")))
        .insert_header(("Cookie", format!("session={COOKIE_SECRET}")))
        .insert_header(("X-Plain", "visible"));
    let body = format!("hello {PRIMARY} {PATTERN_SECRET}");
    let r = app.send(req, Some(body.into_bytes())).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(receiver.seen.lock().unwrap().len(), 1);

    let listed = wait_for(&app, &id, 1).await;
    assert_eq!(listed.len(), 1);
    let item = &listed[0];
    assert_eq!(item["outcome"], "error", "{item}");
    assert_eq!(item["trigger"], "webhook");
    assert_eq!(item["version"], 1);
    assert_eq!(item["error"]["line"], 6, "{item}");
    let column = item["error"]["column"].as_u64().expect("a column");
    assert!(item.get("inputs").is_none(), "the listing is a summary");
    let eid = item["id"].as_str().unwrap().to_string();

    let whole = execution(&app, &id, &eid).await;
    let inputs = &whole["inputs"];
    assert_eq!(inputs["kind"], "webhook");
    assert_eq!(inputs["method"], "POST");
    assert_eq!(inputs["path"], "/orders?api_key=***&x=1", "{inputs}");
    let headers = inputs["headers"].as_array().unwrap();
    assert!(
        headers.contains(&json!(["authorization", "***"])),
        "{headers:?}"
    );
    assert!(headers.contains(&json!(["cookie", "***"])), "{headers:?}");
    assert!(
        headers.contains(&json!(["x-plain", "visible"])),
        "{headers:?}"
    );
    assert_eq!(inputs["body"]["text"], "hello *** ***", "{inputs}");
    let logs = whole["logs"].as_array().unwrap();
    assert_eq!(logs[0]["message"], "got hello *** ***", "{logs:?}");
    assert!(
        logs[1]["message"]
            .as_str()
            .unwrap()
            .contains("/api/token/v1/***/orders"),
        "{logs:?}"
    );
    assert_eq!(logs[2]["message"], "upstream said upstream-ok");
    let call = &whole["calls"][0];
    assert_eq!(call["status"], 200, "{call}");
    assert_eq!(call["url"], format!("{}/api/orders", receiver.url));
    assert!(call["duration_ms"].as_f64().unwrap() > 0.0, "{call}");
    assert!(whole["wait_ms"].as_f64().unwrap() > 0.0, "{whole}");
    assert!(
        whole["duration_ms"].as_f64().unwrap() >= whole["wait_ms"].as_f64().unwrap(),
        "{whole}"
    );

    // No raw secret anywhere the API shows.
    let shown = format!("{}{}", executions(&app, &id, "").await, whole);
    for secret in [
        token.as_str(),
        PRIMARY,
        AUTH_SECRET,
        COOKIE_SECRET,
        PATTERN_SECRET,
        QUERY_SECRET,
    ] {
        assert!(!shown.contains(secret), "{secret} shown: {shown}");
    }
    if backend == Backend::Sqlite {
        assert_secrets_not_stored(&app, &token);
    }

    // Replay: the same failure at the same place, the upstream not called.
    let replayed = replay(&app, &id, &eid, None).await;
    assert_eq!(replayed["replayed"], eid.as_str());
    assert_eq!(replayed["ok"], false, "{replayed}");
    assert_eq!(replayed["error"]["line"], 6, "{replayed}");
    assert_eq!(replayed["error"]["column"], column, "{replayed}");
    assert_eq!(replayed["calls"][0]["answered_by"], "not_performed");
    assert_eq!(receiver.seen.lock().unwrap().len(), 1);
    // And with a fixed draft, on the recorded input: it succeeds.
    let fixed = replay(
        &app,
        &id,
        &eid,
        Some(json!({ "script": "response_content = \"fixed \" + startparam(4);" })),
    )
    .await;
    assert_eq!(fixed["ok"], true, "{fixed}");
    assert_eq!(fixed["script"], "draft");
    assert_eq!(fixed["reply"]["body"]["text"], "fixed hello *** ***");
    // The channel still runs its saved script; nothing new was recorded by replays.
    assert_eq!(items(&app, &id).await.len(), 1);
    let missing = app
        .admin(
            "GET",
            &format!("/admin/v1/channels/{id}/executions/0192f4c0-0000-7000-8000-000000000000"),
            None,
        )
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "execution_not_found");
}

/// The request-only secrets appear nowhere in the SQLite files (database and WAL);
/// the channel's own token and outgoing token (stored in `channels`, as they must be)
/// appear in no execution row.
fn assert_secrets_not_stored(app: &TestApp, token: &str) {
    let path = app.state.config.database_url.clone();
    let mut bytes = std::fs::read(&path).expect("database file");
    if let Ok(wal) = std::fs::read(format!("{path}-wal")) {
        bytes.extend_from_slice(&wal);
    }
    let hay = String::from_utf8_lossy(&bytes);
    assert!(
        hay.contains("upstream said"),
        "the execution is in the files"
    );
    for secret in [AUTH_SECRET, COOKIE_SECRET, PATTERN_SECRET, QUERY_SECRET] {
        assert!(!hay.contains(secret), "{secret} is in the database file");
    }
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        row: String,
    }
    let mut conn = diesel::SqliteConnection::establish(&path).expect("open the database");
    let rows: Vec<Row> =
        diesel::sql_query("SELECT id || trigger_kind || outcome || detail AS row FROM executions")
            .load(&mut conn)
            .expect("read executions");
    assert!(!rows.is_empty());
    for Row { row } in rows {
        for secret in [token, PRIMARY] {
            assert!(!row.contains(secret), "{secret} stored: {row}");
        }
    }
}

#[actix_web::test]
async fn a_failing_run_is_recorded_masked_and_replayed() {
    failing_run_is_recorded_and_replayed(Backend::Sqlite).await;
}

#[actix_web::test]
async fn a_failing_run_is_recorded_masked_and_replayed_on_postgres() {
    failing_run_is_recorded_and_replayed(Backend::Postgres).await;
}

const FAIL_ON_DEMAND: &str = r#"
    if startparam(4) == "fail" { throw "asked to fail"; }
    response_content = "fine " + startparam(4);
"#;

#[actix_web::test]
async fn history_setting_decides_which_runs_are_recorded() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let c = app.public_channel("choosy", true, FAIL_ON_DEMAND).await;
    let (id, token) = (id_of(&c), token_of(&c));
    let patch = |history: &'static str| {
        let app = &app;
        let id = id.clone();
        async move {
            let r = app
                .admin(
                    "PATCH",
                    &format!("/admin/v1/channels/{id}"),
                    Some(json!({ "history": history })),
                )
                .await;
            (r.status, r.json())
        }
    };
    let (status, bad) = patch("sometimes").await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"]["field"], "history", "{bad}");

    // errors (the default): the success is not recorded, the failure after it is.
    assert_eq!(post(&app, &token, "one").await, 200);
    assert_eq!(post(&app, &token, "fail").await, 500);
    let seen = wait_for(&app, &id, 1).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["outcome"], "error");

    // off: nothing; all: everything.
    let (status, view) = patch("off").await;
    assert_eq!((status, view["history"].clone()), (200, json!("off")));
    assert_eq!(post(&app, &token, "fail").await, 500);
    let (status, view) = patch("all").await;
    assert_eq!((status, view["history"].clone()), (200, json!("all")));
    assert_eq!(post(&app, &token, "two").await, 200);
    let seen = wait_for(&app, &id, 2).await;
    assert_eq!(
        seen.len(),
        2,
        "the run while off was not recorded: {seen:?}"
    );
    assert_eq!(seen[0]["outcome"], "ok");
    assert_eq!(seen[0]["version"], 3);
    let whole = execution(&app, &id, seen[0]["id"].as_str().unwrap()).await;
    assert_eq!(whole["reply"]["code"], 200);
    assert_eq!(whole["reply"]["body"]["text"], "fine two");
    assert_eq!(whole["inputs"]["body"]["text"], "two");

    // Filters and paging.
    let ok = executions(&app, &id, "?outcome=ok").await;
    assert_eq!(ok["items"].as_array().unwrap().len(), 1, "{ok}");
    let ws = executions(&app, &id, "?trigger=websocket").await;
    assert_eq!(ws["items"].as_array().unwrap().len(), 0, "{ws}");
    let first = executions(&app, &id, "?limit=1").await;
    assert_eq!(first["items"][0]["id"], seen[0]["id"]);
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let second = executions(&app, &id, &format!("?limit=1&cursor={cursor}")).await;
    assert_eq!(second["items"][0]["id"], seen[1]["id"], "{second}");
    let future = executions(&app, &id, "?since=2999-01-01T00:00:00Z").await;
    assert_eq!(future["items"].as_array().unwrap().len(), 0);
    let r = app
        .admin(
            "GET",
            &format!("/admin/v1/channels/{id}/executions?outcome=maybe"),
            None,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
}

#[actix_web::test]
async fn retention_keeps_the_newest_and_deletion_takes_them_all() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.executions_kept_per_channel = 3)
        .await
        .unwrap();
    let c = app
        .create_channel(json!({
            "code": "kept", "kind": "public", "wait_for_completion": true,
            "history": "all", "webhook_scenario": FAIL_ON_DEMAND,
        }))
        .await;
    let (id, token) = (id_of(&c), token_of(&c));
    for n in 1..=6 {
        assert_eq!(post(&app, &token, &format!("n{n}")).await, 200);
    }
    eventually("six records written", Duration::from_secs(10), || async {
        process_metric(&app.address, "oktell_executions_written_total", &[]).await >= 6.0
    })
    .await;
    let kept = items(&app, &id).await;
    assert_eq!(kept.len(), 3, "{kept:?}");
    let newest = execution(&app, &id, kept[0]["id"].as_str().unwrap()).await;
    assert_eq!(newest["inputs"]["body"]["text"], "n6");
    let oldest = execution(&app, &id, kept[2]["id"].as_str().unwrap()).await;
    assert_eq!(oldest["inputs"]["body"]["text"], "n4");
    assert!(process_metric(&app.address, "oktell_executions_trimmed_total", &[]).await >= 3.0);

    let r = app
        .admin("DELETE", &format!("/admin/v1/channels/{id}"), None)
        .await;
    assert!(r.status == 204 || r.status == 200, "{}", r.text());
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = diesel::SqliteConnection::establish(&app.state.config.database_url)
        .expect("open the database");
    let left: Count = diesel::sql_query("SELECT COUNT(*) AS n FROM executions")
        .get_result(&mut conn)
        .expect("count");
    assert_eq!(left.n, 0, "the channel's executions went with it");
}

#[actix_web::test]
async fn a_full_queue_drops_records_and_counts_them() {
    // One record fits; the writer looks every 5 s: a flood overflows it at once.
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.executions_queue = 1;
        c.executions_flush_ms = 5000;
    })
    .await
    .unwrap();
    let c = app
        .create_channel(json!({
            "code": "flooded", "kind": "public", "wait_for_completion": true,
            "history": "all", "webhook_scenario": FAIL_ON_DEMAND,
        }))
        .await;
    let (id, token) = (id_of(&c), token_of(&c));
    let sent = 30;
    for n in 0..sent {
        assert_eq!(post(&app, &token, &format!("f{n}")).await, 200);
    }
    let dropped = process_metric(&app.address, "oktell_executions_dropped_total", &[]).await;
    assert!(dropped >= 20.0, "dropped {dropped}");
    let page = executions(&app, &id, "").await;
    assert!(page["dropped"].as_u64().unwrap() >= 20, "{page}");
    assert_eq!(page["dropped"].as_f64().unwrap(), dropped, "{page}");
    // What was not dropped is written.
    let queued = process_metric(&app.address, "oktell_executions_queued_total", &[]).await;
    assert_eq!(queued + dropped, sent as f64);
    eventually(
        "the queued records written",
        Duration::from_secs(15),
        || async {
            process_metric(&app.address, "oktell_executions_written_total", &[]).await >= queued
        },
    )
    .await;
}

#[actix_web::test]
async fn the_queue_is_bounded_by_the_bytes_its_records_hold() {
    // A queued record holds its request body (and here its reply, the echoed body)
    // until the writer makes it: 4 KiB take one such record (into an empty queue, a
    // record goes whatever its size); the writer looks every hour (first at start).
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.executions_queue_bytes = 4096;
        c.executions_flush_ms = 3_600_000;
    })
    .await
    .unwrap();
    let c = app
        .create_channel(json!({
            "code": "heavy", "kind": "public", "wait_for_completion": true,
            "history": "all", "webhook_scenario": FAIL_ON_DEMAND,
        }))
        .await;
    let (id, token) = (id_of(&c), token_of(&c));
    let body = "b".repeat(3072);
    for _ in 0..3 {
        assert_eq!(post(&app, &token, &body).await, 200);
    }
    let queued = process_metric(&app.address, "oktell_executions_queued_total", &[]).await;
    let dropped = process_metric(&app.address, "oktell_executions_dropped_total", &[]).await;
    assert_eq!(
        (queued, dropped),
        (1.0, 2.0),
        "one body fits, the next two do not"
    );
    let held = process_metric(&app.address, "oktell_executions_queue_bytes", &[]).await;
    assert!(held >= 3072.0, "held {held}: the body is counted");
    let page = executions(&app, &id, "").await;
    assert_eq!(page["dropped"], 2, "{page}");
}

#[actix_web::test]
async fn the_cli_lists_and_shows_executions() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let c = app.public_channel("cli-runs", true, FAIL_ON_DEMAND).await;
    let (id, token) = (id_of(&c), token_of(&c));
    assert_eq!(post(&app, &token, "fail").await, 500);
    let eid = wait_for(&app, &id, 1).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let cli = |args: &[&str]| {
        let config = &app.state.config;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_oktell-gateway"))
            .args(["--database-url", &config.database_url])
            .args(["--data-dir", &config.data_dir.display().to_string()])
            .args(args)
            .env_remove("OKTELL_ADMIN_TOKEN")
            .output()
            .expect("binary runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = cli(&["channel", "executions", "cli-runs", "--outcome", "error"]);
    assert!(listed.contains(&eid), "{listed}");
    assert!(listed.contains("scenario_error (line 2"), "{listed}");
    let shown: Value =
        serde_json::from_str(&cli(&["channel", "execution", "cli-runs", &eid])).expect("JSON");
    assert_eq!(shown["inputs"]["body"]["text"], "fail", "{shown}");
    assert!(cli(&["channel", "executions", "cli-runs", "--outcome", "ok"]).is_empty());
}

#[actix_web::test]
async fn websocket_messages_are_recorded_too() {
    use futures_util::SinkExt;
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let c = app
        .create_channel(json!({
            "code": "ws-runs", "kind": "public", "history": "all",
            "websocket_scenario": "log(\"from \" + startparam(1)); response_content = \"echo \" + startparam(2);",
        }))
        .await;
    let (id, token) = (id_of(&c), token_of(&c));
    let mut ws = crate::websocket::connect(&app, &token).await;
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi there"))
        .await
        .unwrap();
    assert_eq!(crate::websocket::next_text(&mut ws).await, "echo hi there");
    let seen = wait_for(&app, &id, 1).await;
    assert_eq!(seen[0]["trigger"], "websocket", "{seen:?}");
    assert_eq!(seen[0]["outcome"], "ok");
    let whole = execution(&app, &id, seen[0]["id"].as_str().unwrap()).await;
    assert_eq!(whole["inputs"]["kind"], "websocket", "{whole}");
    assert_eq!(whole["inputs"]["text"]["text"], "hi there");
    let session = whole["inputs"]["session"].as_str().unwrap().to_string();
    assert_eq!(whole["logs"][0]["message"], format!("from {session}"));
    let only_ws = executions(&app, &id, "?trigger=websocket").await;
    assert_eq!(only_ws["items"].as_array().unwrap().len(), 1);
    // Replayed as a websocket dry run, with a draft.
    let replayed = replay(
        &app,
        &id,
        seen[0]["id"].as_str().unwrap(),
        Some(json!({ "script": "response_content = \"again \" + startparam(2);" })),
    )
    .await;
    assert_eq!(replayed["trigger"], "websocket", "{replayed}");
    assert_eq!(replayed["reply"]["body"]["text"], "again hi there");
}
