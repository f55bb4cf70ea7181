//! The scenario sandbox and the supervision of channel actors.

use std::time::Duration;

use crate::helpers::{Backend, eventually, id_of, spawn_app_with, token_of};

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
    let r = app
        .admin(
            "POST",
            &format!("/admin/v1/channels/{id}/fault/panic"),
            None,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    eventually(
        "the supervisor restarted the actor",
        Duration::from_secs(10),
        || async { app.runtime(&id).await["restarts"] == 1 },
    )
    .await;
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
