//! Inline runs (`scenario::inline`): a short run that touches nothing outside itself
//! runs on the HTTP worker; one that reaches an effect or its bound is stopped unseen
//! and run on the pool from its start. Either way the caller sees the same thing.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{
    Backend, LogCapture, TestApp, eventually, spawn_app_logged, spawn_app_with, token_of,
};
use crate::ops::sample;
use crate::receiver::Receiver;

/// Inline runs are on with at least one HTTP worker per core (the default).
fn one_worker_per_core(c: &mut oktell_gateway::config::Config) {
    c.workers = 0;
}

/// A bound a debug build's trivial run keeps to even on a busy machine (the tests are
/// about what an inline run does, not how fast).
fn roomy_bound(c: &mut oktell_gateway::config::Config) {
    one_worker_per_core(c);
    c.scenario_inline_us = 10_000;
}

async fn counter(app: &TestApp, name: &str) -> f64 {
    sample(&app.metrics().await.text(), name, &[]).unwrap_or(-1.0)
}

/// Lines the scenario logged with exactly this message.
fn logged(logs: &LogCapture, message: &str) -> usize {
    logs.lines().iter().filter(|l| l["msg"] == message).count()
}

#[actix_web::test]
async fn a_pure_run_is_inline_and_a_run_with_an_effect_is_not_done_twice() {
    let (app, logs) = spawn_app_logged(Backend::Sqlite, roomy_bound)
        .await
        .unwrap();
    let upstream = Receiver::start(|_| (200, "from upstream".into()));
    let pure = app
        .public_channel(
            "pure",
            true,
            r#"log("pure " + startparam(2)); response_content = "ok";"#,
        )
        .await;
    let effect = app
        .create_channel(json!({
            "code": "effect", "kind": "public", "wait_for_completion": true,
            "outgoing_url": format!("{}/api", upstream.url),
            "webhook_scenario": r#"log("before the call"); let r = outgoing_request("GET", "/x"); response_content = r.body;"#,
        }))
        .await;
    for _ in 0..3 {
        let r = app.webhook(&token_of(&pure), "POST", "", "").await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    }
    assert_eq!(
        counter(&app, "oktell_scenario_inline_runs_total").await,
        3.0
    );
    assert_eq!(logged(&logs, "pure POST"), 3, "each line once");

    for n in 1..=2 {
        let r = app.webhook(&token_of(&effect), "POST", "", "").await;
        assert_eq!((r.status, r.text().as_str()), (200, "from upstream"));
        assert_eq!(upstream.seen().len(), n, "one call per run");
        assert_eq!(logged(&logs, "before the call"), n, "one line per run");
    }
    // Stopped inline once; after, the script goes to the pool directly.
    assert_eq!(
        counter(&app, "oktell_scenario_inline_stopped_total").await,
        1.0
    );
    assert_eq!(
        counter(&app, "oktell_scenario_inline_runs_total").await,
        3.0
    );

    // A script that catches the stop (Rhai lets a try/catch around a callback catch
    // it) is stopped again at its next operation and answers as on the pool.
    let catching = app
        .public_channel(
            "catching",
            true,
            r#"let caught = false;
               try { [1].map(|x| state_get("k")); } catch { caught = true; }
               response_content = if caught { "caught" } else { "pool" };"#,
        )
        .await;
    let r = app.webhook(&token_of(&catching), "POST", "", "").await;
    assert_eq!((r.status, r.text().as_str()), (200, "pool"));
    assert_eq!(
        counter(&app, "oktell_scenario_inline_stopped_total").await,
        2.0
    );
}

#[actix_web::test]
async fn a_run_that_computes_past_the_bound_goes_to_the_pool_and_deep_calls_are_safe() {
    let app = spawn_app_with(Backend::Sqlite, one_worker_per_core)
        .await
        .unwrap();
    let long = app
        .public_channel(
            "long",
            true,
            "let n = 0; for i in 0..300000 { n += i; } response_content = n.to_string();",
        )
        .await;
    for _ in 0..5 {
        let r = app.webhook(&token_of(&long), "POST", "", "").await;
        assert_eq!((r.status, r.text().as_str()), (200, "44999850000"));
    }
    // Three strikes, then straight to the pool.
    assert_eq!(
        counter(&app, "oktell_scenario_inline_stopped_total").await,
        3.0
    );
    assert_eq!(
        counter(&app, "oktell_scenario_inline_runs_total").await,
        0.0
    );

    // Recursion as deep as the call depth allows: inline or (stopped by its stack
    // bound) on the pool, the answer is the same and the worker survives.
    let deep = app
        .public_channel(
            "deep",
            true,
            "fn d(n) { if n == 0 { 0 } else { 1 + d(n - 1) } } response_content = d(60).to_string();",
        )
        .await;
    for _ in 0..2 {
        let r = app.webhook(&token_of(&deep), "POST", "", "").await;
        assert_eq!((r.status, r.text().as_str()), (200, "60"));
    }
    let r = app.webhook(&token_of(&long), "GET", "", "").await;
    assert_eq!(r.status, 200, "the node still answers");
}

#[actix_web::test]
async fn inline_runs_can_be_turned_off() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        one_worker_per_core(c);
        c.scenario_inline_us = 0;
    })
    .await
    .unwrap();
    let pure = app
        .public_channel("pure", true, r#"response_content = "ok";"#)
        .await;
    let r = app.webhook(&token_of(&pure), "POST", "", "").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(
        counter(&app, "oktell_scenario_inline_runs_total").await,
        0.0
    );
    // The pool counts a job done after it has answered: poll.
    eventually(
        "the run went to the pool",
        Duration::from_secs(10),
        || async { counter(&app, "oktell_scenario_pool_completed_total").await >= 1.0 },
    )
    .await;
}
