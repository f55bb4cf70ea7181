//! A storage failure answers a generic error with a request id; its cause is logged
//! once, with that id, and never sent to the caller.

use diesel::connection::SimpleConnection;

use crate::helpers::{Backend, spawn_app_logged};

#[actix_web::test]
async fn sqlite() {
    a_storage_error_is_logged_with_the_request_id_and_not_told(Backend::Sqlite).await;
}

#[actix_web::test]
async fn postgres() {
    a_storage_error_is_logged_with_the_request_id_and_not_told(Backend::Postgres).await;
}

async fn a_storage_error_is_logged_with_the_request_id_and_not_told(backend: Backend) {
    let Some((app, logs)) = spawn_app_logged(backend, |_| {}).await else {
        return;
    };
    // Ids are answered on every request, the caller's own when it is a sane one.
    let ok = app
        .send(
            app.client
                .get(app.url("/admin/v1/subscriptions"))
                .insert_header((
                    "Authorization",
                    format!("Bearer {}", crate::helpers::ADMIN_TOKEN),
                )),
            None,
        )
        .await;
    assert_eq!(ok.status, 200);
    assert!(ok.header("x-request-id").is_some_and(|id| id.len() >= 16));

    app.state
        .db
        .run(|c| {
            c.batch_execute("DROP TABLE subscriptions")
                .map_err(oktell_gateway::db::StoreError::from)
        })
        .await
        .unwrap();
    let req = app
        .client
        .get(app.url("/admin/v1/subscriptions"))
        .insert_header((
            "Authorization",
            format!("Bearer {}", crate::helpers::ADMIN_TOKEN),
        ))
        .insert_header(("X-Request-Id", "it-storage-0001"));
    let failed = app.send(req, None).await;
    assert_eq!(failed.status, 500, "{}", failed.text());
    assert_eq!(
        failed.header("x-request-id").as_deref(),
        Some("it-storage-0001")
    );
    assert_eq!(failed.error_code(), "internal_error");
    let told = failed.text().to_lowercase();
    for internal in ["subscriptions", "table", "relation", "database", "sql"] {
        assert!(
            !told.contains(internal),
            "{internal:?} told to the caller: {told}"
        );
    }

    let about_it: Vec<_> = logs
        .lines()
        .into_iter()
        .filter(|l| l["request_id"] == "it-storage-0001")
        .collect();
    assert_eq!(about_it.len(), 1, "logged once: {}", logs.text());
    let line = &about_it[0];
    assert_eq!(line["level"], "ERRO");
    assert_eq!(line["status"], 500);
    assert_eq!(line["path"], "/admin/v1/subscriptions");
    assert!(
        line["cause"].as_str().unwrap().contains("subscriptions"),
        "the cause names what failed: {line}"
    );
    assert!(
        !logs.text().contains(crate::helpers::ADMIN_TOKEN),
        "no credentials in the log"
    );
}
