//! The scenario sandbox and the supervision of channel actors.
use crate::helpers::{Backend, id_of, spawn_app_with, token_of};

#[actix_web::test]
async fn runaway_scripts_are_stopped_and_the_pool_goes_on() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.scenario_threads = 1;
        c.scenario_max_operations = 100_000;
    })
    .await
    .unwrap();
    let spin = app.public_channel("spin", true, "loop { }").await;
    let deep = app
        .public_channel("deep", true, "fn f(n) { f(n + 1) } f(0);")
        .await;
    let big = app
        .public_channel("big", true, r#"let s = "x"; loop { s += s; }"#)
        .await;
    let fine = app
        .public_channel("fine", true, r#"response_content = "still here";"#)
        .await;
    for c in [&spin, &deep, &big] {
        let r = app.webhook(&token_of(c), "POST", "", "").await;
        assert_eq!(r.status, 500, "{}: {}", c["code"], r.text());
        assert_eq!(r.error_code(), "scenario_limit_exceeded", "{}", c["code"]);
        // The single scenario thread is free again.
        assert_eq!(
            app.webhook(&token_of(&fine), "GET", "", "").await.text(),
            "still here"
        );
    }
}

#[actix_web::test]
async fn panicking_channel_actor_is_restarted() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.fault_injection = true)
        .await
        .unwrap();
    let c = app
        .public_channel("fragile", true, r#"response_content = "ok";"#)
        .await;
    let id = id_of(&c);
    app.panic_channel_actor(&id).await;
    let r = app.webhook(&token_of(&c), "GET", "", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");
    // Without fault injection the hook does not exist.
    let plain = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let c = plain.public_channel("x", false, "").await;
    let r = plain
        .admin(
            "POST",
            &format!("/admin/v1/channels/{}/fault/panic", id_of(&c)),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
}

#[actix_web::test]
async fn http_runtime_fronts_an_external_engine() {
    let engine = crate::receiver::Receiver::start(|seen| {
        let req: serde_json::Value = serde_json::from_slice(&seen.body).unwrap_or_default();
        let reply = serde_json::json!({
            "response_code": 202,
            "response_content": format!("{} ran {}", req["channel"]["code"].as_str().unwrap_or("?"), req["script"].as_str().unwrap_or("?")),
            "response_headers": {"X-Engine": req["params"][1]},
        });
        (200, reply.to_string())
    });
    let url = format!("{}/run", engine.url);
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.scenario_runtime = oktell_gateway::config::RuntimeKind::Http;
        c.scenario_http_url = Some(url);
    })
    .await
    .unwrap();
    let c = app.public_channel("remote", true, "do-the-thing").await;
    let r = app.webhook(&token_of(&c), "PATCH", "", "body").await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.text(), "remote ran do-the-thing");
    assert_eq!(r.header("x-engine").as_deref(), Some("PATCH"));
    let seen = engine.seen();
    assert_eq!(seen.len(), 1);
    let sent: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(sent["params"].as_array().unwrap().len(), 7);
    assert_eq!(sent["params"][3], "body");
    assert!(sent["channel"].get("outgoing_token_primary").is_none());
}

#[actix_web::test]
async fn http_runtime_engine_down_is_502() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.scenario_runtime = oktell_gateway::config::RuntimeKind::Http;
        c.scenario_http_url = Some(format!("http://127.0.0.1:{port}/run"));
    })
    .await
    .unwrap();
    let c = app.public_channel("remote", true, "x").await;
    let r = app.webhook(&token_of(&c), "POST", "", "").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "scenario_engine_unavailable");
}
