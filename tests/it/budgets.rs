//! Budgets per run: each hostile script kind (memory through many variables, memory
//! through one structure, an event flood, a log flood, a push flood, a call flood) ends
//! with its own error while another channel keeps answering, and thousands of such runs
//! leave the process's memory where it was.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Backend, GatewayProcess, eventually, rss_kib, spawn_app_with, token_of};

/// A 2 MiB string made by doubling (a fresh copy each call).
const MAKE: &str = r#"
    fn make(tag) { let s = "x" + tag; while s.len() < 2000000 { s += s; } s }
"#;

fn many_variables() -> String {
    let lets: String = (0..100)
        .map(|i| format!("let v{i} = make({i});\n"))
        .collect();
    format!("{MAKE}\n{lets}")
}

/// One map whose keys are long: Rhai's size limits count a collection's strings and
/// entries, not the length of its keys.
fn one_structure() -> String {
    format!(
        "{MAKE}\nlet m = #{{}}; let i = 0; let s = make(\"\"); loop {{ m[s + i] = i; i += 1; }}"
    )
}

/// The hostile scripts, each with the budget it must end on.
fn hostile() -> Vec<(&'static str, String)> {
    vec![
        ("memory", many_variables()),
        ("memory", one_structure()),
        ("events", r#"loop { emit_event("flood", #{ n: 1 }); }"#.into()),
        (
            "event_bytes",
            r#"let s = "x"; while s.len() < 600000 { s += s; } emit_event("big", #{ s: s }); emit_event("big", #{ s: s });"#.into(),
        ),
        ("log_bytes", r#"loop { log("a line of a flood of lines"); }"#.into()),
        ("log_bytes", r#"loop { print("printed, not logged"); }"#.into()),
        ("pushes", r#"loop { ws_broadcast("x"); }"#.into()),
        (
            "outgoing_calls",
            r#"loop { try { outgoing_request("GET", "/x"); } catch { } }"#.into(),
        ),
    ]
}

fn budgets(c: &mut oktell_gateway::config::Config) {
    c.scenario_max_memory_bytes = 16 * 1024 * 1024;
    c.scenario_max_events = 20;
    c.scenario_max_event_bytes = 1024 * 1024;
    c.scenario_max_log_bytes = 4096;
    c.scenario_max_pushes = 100;
    c.scenario_max_outgoing_calls = 5;
}

#[actix_web::test]
async fn each_hostile_kind_ends_on_its_budget_while_another_channel_answers() {
    let app = spawn_app_with(Backend::Sqlite, budgets).await.unwrap();
    let calm = app
        .public_channel("calm", true, r#"response_content = "calm";"#)
        .await;
    let calm = token_of(&calm);
    // The eventing channel's events are what emit_event writes.
    app.create_channel(json!({"code": "ev", "kind": "eventing"}))
        .await;
    let mut calm_latencies = Vec::new();
    for (i, (budget, script)) in hostile().into_iter().enumerate() {
        let channel = app
            .create_channel(json!({
                "code": format!("hostile{i}"), "kind": "public", "wait_for_completion": true,
                // Nothing listens there: each call fails at once (and is caught).
                "outgoing_url": "http://127.0.0.1:9/",
                "webhook_scenario": script,
            }))
            .await;
        let token = token_of(&channel);
        let hostile = {
            let url = app.url(&format!("/api/token/v1/{token}"));
            actix_web::rt::spawn(async move {
                let client = awc::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .finish();
                let mut res = client.post(url).send_body("x").await.expect("answer");
                let body: Value = res.json().await.expect("JSON error");
                (res.status().as_u16(), body)
            })
        };
        // The other channel answers while the hostile run goes on (paced, not
        // synchronised: each call is awaited).
        while !hostile.is_finished() {
            let sent = Instant::now();
            let r = app.webhook(&calm, "POST", "", "").await;
            calm_latencies.push(sent.elapsed());
            assert_eq!(r.status, 200, "calm channel during {budget}: {}", r.text());
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
        let (status, body) = hostile.await.unwrap();
        assert_eq!(status, 500, "{budget}: {body}");
        assert_eq!(body["error"]["code"], "scenario_budget_exceeded", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("its {budget} budget")),
            "expected the {budget} budget, got {message}"
        );
    }
    calm_latencies.sort();
    let p99 = calm_latencies[(calm_latencies.len() * 99 / 100).min(calm_latencies.len() - 1)];
    eprintln!(
        "the calm channel answered {} calls during the hostile runs, p99 {p99:?}",
        calm_latencies.len()
    );
    assert!(
        p99 <= Duration::from_millis(500),
        "calm channel p99 {p99:?}"
    );
    let metrics = app.metrics().await.text();
    for budget in ["memory", "events", "log_bytes", "pushes", "outgoing_calls"] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("oktell_scenario_budget_exceeded_total")
                    && l.contains(&format!("budget=\"{budget}\""))
            })
            .unwrap_or_else(|| panic!("no metric for {budget}:\n{metrics}"));
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(value >= 1.0, "{line}");
    }
}

#[actix_web::test]
async fn the_node_memory_budget_refuses_runs_past_it_with_retry_after() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.scenario_max_memory_bytes = 64 * 1024 * 1024;
        c.scenario_node_memory_bytes = 8 * 1024 * 1024;
    })
    .await
    .unwrap();
    let channel = app.public_channel("big", true, &one_structure()).await;
    let r = app.webhook(&token_of(&channel), "POST", "", "").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.error_code(), "scenario_budget_exceeded");
    assert!(r.text().contains("node_memory"), "{}", r.text());
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    // Its share is given back: a small run passes.
    let small = app
        .public_channel("small", true, r#"response_content = "ok";"#)
        .await;
    let r = app.webhook(&token_of(&small), "POST", "", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// 2,000 hostile runs (memory through variables and through one structure, 4 at a
/// time) on the real binary: every one ends on its memory budget, and the process's
/// RSS comes back within 50 MB of where it started.
#[actix_web::test]
async fn two_thousand_hostile_runs_leave_rss_where_it_was() {
    let dir = std::env::temp_dir().join(format!("oktell-budget-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("budget.toml");
    std::fs::write(&config, "scenario_max_memory_bytes = 8388608\n").unwrap();
    let gw =
        GatewayProcess::start_in(&dir, &["--config".into(), config.display().to_string()]).await;
    let pid = gw.child.id();
    let mut tokens = Vec::new();
    for (i, script) in [many_variables(), one_structure()].into_iter().enumerate() {
        let channel = gw
            .create_channel(json!({
                "code": format!("hostile{i}"), "kind": "public",
                "wait_for_completion": true, "webhook_scenario": script,
            }))
            .await;
        tokens.push(token_of(&channel));
    }
    // Warm up (threads, pools) before the baseline.
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish();
    for token in &tokens {
        let _ = client
            .post(format!("{}/api/token/v1/{token}", gw.base))
            .send()
            .await;
    }
    let baseline = rss_kib(pid);
    let started = Instant::now();
    let mut refused = 0;
    for round in 0..500 {
        let calls: Vec<_> = (0..4)
            .map(|k| {
                let url = format!("{}/api/token/v1/{}", gw.base, tokens[(round + k) % 2]);
                let client = client.clone();
                actix_web::rt::spawn(async move {
                    match client.post(url).send().await {
                        Ok(mut res) => {
                            let body = res.body().await.unwrap_or_default();
                            (
                                res.status().as_u16(),
                                String::from_utf8_lossy(&body).into_owned(),
                            )
                        }
                        Err(e) => (0, e.to_string()),
                    }
                })
            })
            .collect();
        for call in calls {
            let (status, body) = call.await.unwrap();
            if status == 503 {
                // The node's memory for runs was taken by the other three at once.
                assert!(body.contains("node_memory"), "{body}");
                refused += 1;
                continue;
            }
            assert_eq!(status, 500, "{body}");
            assert!(body.contains("its memory budget"), "{body}");
        }
    }
    let peak = rss_kib(pid);
    eprintln!(
        "2,000 hostile runs in {:.1} s ({refused} refused on the node budget); RSS {} MiB before, {} MiB after",
        started.elapsed().as_secs_f64(),
        baseline / 1024,
        peak / 1024
    );
    eventually(
        "RSS back within 50 MB of where it started",
        Duration::from_secs(30),
        || async { rss_kib(pid) < baseline + 50 * 1024 },
    )
    .await;
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}
