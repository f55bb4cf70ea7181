//! Scenarios that wait on the outside world: a waiting run gives its compute slot away,
//! outgoing connections are capped per host and reused, sleeps stay in the time budget,
//! paths stay under the outgoing URL, and a flood on one channel leaves others served.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{Backend, TestApp, eventually, spawn_app_with, token_of};
use crate::receiver::{HoldingUpstream, Receiver};

/// Sends one webhook from its own task: (status, Retry-After).
fn fire(url: String) -> actix_web::rt::task::JoinHandle<(u16, Option<String>)> {
    actix_web::rt::spawn(async move {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(60))
            .finish();
        match client.post(url).send_body("x").await {
            Ok(mut res) => {
                let _ = res.body().await;
                let retry = res
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                (res.status().as_u16(), retry)
            }
            Err(_) => (0, None),
        }
    })
}

/// Polls `/metrics` (15 s at most) until it has `line`.
async fn until_metrics_show(app: &TestApp, what: &str, line: &str) {
    eventually(what, Duration::from_secs(15), || async {
        app.metrics().await.text().contains(line)
    })
    .await;
}

/// A public channel (wait on) whose scenario forwards to `upstream` ([`FORWARD`]).
async fn forward_channel(app: &TestApp, code: &str, upstream: &str) -> serde_json::Value {
    app.create_channel(json!({
        "code": code, "kind": "public", "wait_for_completion": true,
        "outgoing_url": upstream, "webhook_scenario": FORWARD,
    }))
    .await
}

const FORWARD: &str = r#"
    let r = outgoing_request("GET", "/slow");
    response_code = r.status;
    response_content = r.body;
"#;

#[actix_web::test]
async fn runs_waiting_on_an_upstream_do_not_stall_other_channels() {
    let upstream = HoldingUpstream::start();
    let app = spawn_app_with(Backend::Sqlite, |c| c.scenario_threads = 2)
        .await
        .unwrap();
    let a = forward_channel(&app, "a", &upstream.url).await;
    let b = app
        .public_channel("b", true, r#"response_content = "b answered";"#)
        .await;
    let url_a = app.url(&format!("/api/token/v1/{}", token_of(&a)));
    let waiting: Vec<_> = (0..8).map(|_| fire(url_a.clone())).collect();
    eventually(
        "all eight runs of channel a wait on the upstream",
        Duration::from_secs(10),
        || async { upstream.held() == 8 },
    )
    .await;
    // Two compute slots, eight runs waiting: channel b is still served.
    let r = app.webhook(&token_of(&b), "GET", "", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "b answered");
    assert_eq!(upstream.held(), 8, "the upstream still holds all eight");
    let node = app.admin("GET", "/admin/v1/node", None).await.json();
    assert_eq!(node["scenario_waiting"], 8, "{node}");
    upstream.release();
    for w in waiting {
        assert_eq!(w.await.unwrap().0, 200);
    }
}

#[actix_web::test]
async fn outgoing_connections_are_capped_per_host_and_reused() {
    let upstream = HoldingUpstream::start();
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.outgoing_max_connections_per_host = 4;
    })
    .await
    .unwrap();
    let a = forward_channel(&app, "fwd", &upstream.url).await;
    let url = app.url(&format!("/api/token/v1/{}", token_of(&a)));
    let calls: Vec<_> = (0..64).map(|_| fire(url.clone())).collect();
    eventually(
        "the upstream holds as many calls as the cap",
        Duration::from_secs(10),
        || async { upstream.held() == 4 },
    )
    .await;
    // The other sixty wait for a connection, not on a fifth one.
    until_metrics_show(
        &app,
        "all 64 runs wait (4 on the upstream, 60 for a connection)",
        "oktell_scenario_pool_waiting 64",
    )
    .await;
    assert_eq!(upstream.held(), 4);
    assert_eq!(upstream.connections(), 4);
    upstream.release();
    for c in calls {
        assert_eq!(c.await.unwrap().0, 200);
    }
    assert_eq!(upstream.served(), 64);
    assert!(upstream.connections() <= 4, "{}", upstream.connections());
    // Later calls reuse the idle connections.
    for _ in 0..8 {
        let r = app.webhook(&token_of(&a), "POST", "", "").await;
        assert_eq!(r.status, 200);
    }
    assert!(upstream.connections() <= 4, "{}", upstream.connections());
}

#[actix_web::test]
async fn idle_outgoing_connections_are_closed_after_the_idle_timeout() {
    let upstream = HoldingUpstream::start();
    upstream.release();
    let app = spawn_app_with(Backend::Sqlite, |c| c.outgoing_idle_timeout_s = 1)
        .await
        .unwrap();
    let a = forward_channel(&app, "fwd", &upstream.url).await;
    // Back to back: the second call reuses the first one's connection.
    for _ in 0..2 {
        let r = app.webhook(&token_of(&a), "POST", "", "").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(upstream.connections(), 1);
    assert!(
        app.metrics()
            .await
            .text()
            .contains("oktell_outgoing_origins 1")
    );
    // Idle past the timeout: the gateway closes it and forgets the origin.
    eventually(
        "the idle connection is closed",
        Duration::from_secs(15),
        || async { upstream.closed() == 1 },
    )
    .await;
    until_metrics_show(&app, "the origin is forgotten", "oktell_outgoing_origins 0").await;
    // The next call opens a new one.
    let r = app.webhook(&token_of(&a), "POST", "", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.connections(), 2);
    let text = app.metrics().await.text();
    assert!(text.contains("oktell_outgoing_requests_total 3"), "{text}");
    assert!(text.contains("oktell_outgoing_failed_total 0"), "{text}");
}

#[actix_web::test]
async fn sleeps_end_within_the_time_budget_and_free_the_thread() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.scenario_threads = 1;
        c.scenario_timeout_ms = 1000;
    })
    .await
    .unwrap();
    let sleeper = app.public_channel("sleeper", true, "sleep(40);").await;
    let fire_and_forget = app.public_channel("bg", false, "sleep(40);").await;
    let napper = app
        .public_channel(
            "napper",
            true,
            r#"sleep_ms(20); sleep(0.01); response_content = "rested";"#,
        )
        .await;
    // Two background sleeps of 40 s cannot freeze the node's only compute slot...
    for _ in 0..2 {
        assert_eq!(
            app.webhook(&token_of(&fire_and_forget), "POST", "", "")
                .await
                .status,
            200
        );
    }
    // ...and a waited-for one ends at its 1 s deadline.
    let started = std::time::Instant::now();
    let r = app.webhook(&token_of(&sleeper), "POST", "", "").await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(10));
    let r = app.webhook(&token_of(&napper), "POST", "", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "rested");
}

#[actix_web::test]
async fn outgoing_paths_cannot_leave_the_outgoing_url() {
    let receiver = Receiver::start(|_| (200, "reached".into()));
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let forms = [
        "../admin/delete",
        "/../admin/delete",
        "x/../../admin",
        "%2e%2e/admin",
        "%2E%2e/admin",
        ".%2e/admin",
        "%252e%252e/admin",
        "..\\admin",
        "..%5cadmin",
        "..%2fadmin",
        "x%0d%0aHost:%20evil",
    ];
    let script = format!(
        r#"
        let refused = 0;
        for p in {forms:?} {{
            try {{ outgoing_request("GET", p); }} catch (e) {{ refused += 1; }}
        }}
        let ok = outgoing_request("GET", "orders/1");
        response_content = `${{refused}} ${{ok.status}}`;
    "#
    );
    let c = app
        .create_channel(json!({
            "code": "paths", "kind": "public", "wait_for_completion": true,
            "outgoing_url": format!("{}/api/x", receiver.url),
            "webhook_scenario": script,
        }))
        .await;
    let r = app.webhook(&token_of(&c), "POST", "", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), format!("{} 200", forms.len()));
    let seen: Vec<String> = receiver.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        seen,
        vec!["/api/x/orders/1".to_string()],
        "only the allowed call"
    );
}

#[actix_web::test]
async fn a_flood_on_one_channel_is_refused_there_while_others_answer() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.scenario_threads = 1;
        c.scenario_timeout_ms = 2000;
        c.scenario_max_operations = 0;
    })
    .await
    .unwrap();
    let heavy = app
        .public_channel(
            "heavy",
            true,
            "let t = timestamp(); while t.elapsed < 0.2 {} response_content = \"done\";",
        )
        .await;
    let light = app
        .public_channel("light", true, r#"response_content = "light";"#)
        .await;
    // Teach the pool what a heavy run costs, then flood.
    assert_eq!(
        app.webhook(&token_of(&heavy), "POST", "", "").await.status,
        200
    );
    let url = app.url(&format!("/api/token/v1/{}", token_of(&heavy)));
    let flood: Vec<_> = (0..60).map(|_| fire(url.clone())).collect();
    eventually(
        "the flood is being refused",
        Duration::from_secs(10),
        || async {
            app.runtime(&crate::helpers::id_of(&heavy)).await["rejected"]
                .as_u64()
                .unwrap_or(0)
                > 0
        },
    )
    .await;
    // The other channel does not queue behind the flood.
    for _ in 0..3 {
        let r = app.webhook(&token_of(&light), "GET", "", "").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "light");
    }
    let (mut refused, mut late) = (0, 0);
    for f in flood {
        let (status, retry_after) = f.await.unwrap();
        match status {
            200 => {}
            // Admission estimates from recent runs; one admitted at the edge may still
            // run out of time.
            504 => late += 1,
            503 => {
                refused += 1;
                let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
                assert!(secs >= 1);
            }
            other => panic!("a flooded run answered {other}, not 200 or 503"),
        }
    }
    // One slot, 0.2 s a run, a 2 s budget: most of sixty cannot start in time.
    assert!(refused >= 30, "only {refused} refused");
    assert!(late <= 3, "{late} admitted runs timed out");
}
