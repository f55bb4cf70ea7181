//! Operations: `/healthz`, `/readyz`, `/metrics`.

use std::time::Duration;

use diesel::Connection;
use diesel::connection::SimpleConnection;
use futures_util::SinkExt;
use serde_json::json;

use crate::helpers::{Backend, TestApp, eventually, spawn_app, spawn_app_with, token_of};

/// The value of one sample: `name{...}` whose labels include every pair given.
pub fn sample(text: &str, name: &str, pairs: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            pairs
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn scrape(app: &TestApp) -> String {
    let r = app.metrics().await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("text/plain")
    );
    r.text()
}

#[actix_web::test]
async fn health_and_readiness() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let r = app.send(app.client.get(app.url("/healthz")), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    let r = app.send(app.client.get(app.url("/readyz")), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ready");
    assert_eq!(r.json()["migrations"], "applied");
}

#[actix_web::test]
async fn readiness_flips_when_the_database_is_gone() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let r = app.send(app.client.get(app.url("/readyz")), None).await;
    assert_eq!(r.status, 200);
    // Take the node's schema away under it.
    let schema = app.pg_schema().expect("a PostgreSQL app has a schema");
    let mut conn = diesel::PgConnection::establish(crate::helpers::PG_URL).unwrap();
    conn.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
    let r = app.send(app.client.get(app.url("/readyz")), None).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["status"], "not_ready");
    // Liveness does not depend on the database.
    let r = app.send(app.client.get(app.url("/healthz")), None).await;
    assert_eq!(r.status, 200);
}

#[actix_web::test]
async fn metrics_count_traffic() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.scenario_threads = 2)
        .await
        .unwrap();
    let before = scrape(&app).await;
    assert_eq!(
        sample(&before, "oktell_scenario_pool_threads", &[]),
        Some(2.0)
    );
    assert_eq!(sample(&before, "oktell_channels_served", &[]), Some(0.0));
    assert_eq!(
        sample(&before, "oktell_build_info", &[("backend", "sqlite")]),
        Some(1.0)
    );

    let c = app
        .create_channel(json!({
            "code": "metered", "kind": "public", "wait_for_completion": true,
            "webhook_scenario": r#"if startparam(4) == "fail" { throw "x" } response_content = "ok";"#,
            "websocket_scenario": "response_content = startparam(2);",
        }))
        .await;
    let token = token_of(&c);
    for body in ["a", "b", "fail"] {
        app.webhook(&token, "POST", "", body).await;
    }
    let mut ws = crate::websocket::connect(&app, &token).await;
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    assert_eq!(crate::websocket::next_text(&mut ws).await, "hi");
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .unwrap();

    let ch = [
        ("channel", "metered"),
        ("kind", "public"),
        ("domain", "default"),
    ];
    let with = |extra: (&'static str, &'static str)| {
        let mut v = ch.to_vec();
        v.push(extra);
        v
    };
    eventually(
        "the closed session is counted",
        Duration::from_secs(10),
        || async {
            sample(
                &scrape(&app).await,
                "oktell_ws_sessions_closed_total",
                &with(("code", "1000")),
            ) == Some(1.0)
        },
    )
    .await;
    let text = scrape(&app).await;
    assert_eq!(
        sample(
            &text,
            "oktell_webhook_responses_total",
            &with(("class", "2xx"))
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "oktell_webhook_responses_total",
            &with(("class", "5xx"))
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "oktell_scenario_runs_total",
            &with(("outcome", "completed"))
        ),
        Some(3.0),
        "2 webhooks + 1 websocket message"
    );
    assert_eq!(
        sample(
            &text,
            "oktell_scenario_runs_total",
            &with(("outcome", "error"))
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "oktell_scenario_duration_seconds_count", &ch),
        Some(4.0)
    );
    assert_eq!(
        sample(&text, "oktell_ws_sessions_opened_total", &ch),
        Some(1.0)
    );
    assert_eq!(sample(&text, "oktell_ws_sessions_open", &ch), Some(0.0));
    assert_eq!(
        sample(
            &text,
            "oktell_ws_messages_total",
            &with(("direction", "in"))
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, "oktell_channels_served", &[]), Some(1.0));
    // The pool counts a job done after it has answered: poll. Runs that ran inline
    // on the worker (`scenario::inline`) are counted apart.
    eventually(
        "the pool and the workers counted four runs",
        Duration::from_secs(10),
        || async {
            let text = scrape(&app).await;
            let pool = sample(&text, "oktell_scenario_pool_completed_total", &[]);
            let inline = sample(&text, "oktell_scenario_inline_runs_total", &[]);
            pool.zip(inline).map(|(p, i)| p + i) == Some(4.0)
        },
    )
    .await;
    assert!(sample(&text, "oktell_db_pool_max", &[]).is_some_and(|v| v >= 1.0));
    assert!(sample(&text, "oktell_db_pool_acquired_total", &[]).is_some_and(|v| v >= 1.0));
    assert_eq!(
        sample(&text, "oktell_scenario_in_flight", &ch),
        Some(0.0),
        "every message handled"
    );
    assert!(!text.contains(&token), "tokens never appear in metrics");
}

/// SIGTERM during a slow scenario: the request still gets its reply, then exit 0.
#[actix_web::test]
async fn sigterm_lets_a_running_scenario_finish() {
    let mut gateway = crate::helpers::GatewayProcess::start().await;
    let channel = gateway
        .create_channel(json!({
            "code": "slow", "kind": "public", "wait_for_completion": true,
            "webhook_scenario": "let t = timestamp(); while t.elapsed < 1.5 {} response_content = \"finished\";",
        }))
        .await;
    let url = format!("{}/api/token/v1/{}", gateway.base, token_of(&channel));
    let request = actix_web::rt::spawn(async move {
        let mut res = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish()
            .post(url)
            .send()
            .await
            .expect("answered");
        (
            res.status().as_u16(),
            res.body().await.expect("body").to_vec(),
        )
    });
    let id = channel["id"].as_str().unwrap().to_string();
    let admin = awc::Client::default();
    let runtime_url = format!("{}/admin/v1/channels/{id}", gateway.base);
    eventually("the scenario is running", Duration::from_secs(10), || {
        let req = admin.get(runtime_url.clone()).insert_header((
            "Authorization",
            format!("Bearer {}", crate::helpers::ADMIN_TOKEN),
        ));
        async move {
            match req.send().await {
                Ok(mut r) => r
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|v| v["runtime"]["in_flight"] == 1),
                Err(_) => false,
            }
        }
    })
    .await;
    gateway.terminate();
    let (status, body) = request.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, b"finished");
    assert_eq!(gateway.exit_code().await, Some(0));
}

/// Channel codes are shown to operators only: on the main listener without the admin
/// token, `/metrics` has the node's series and none that names a channel (disabled
/// ones included); with the token, or on `metrics_listen`, every series.
#[actix_web::test]
async fn channel_codes_are_not_public_on_the_main_listener() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.metrics_listen = Some("127.0.0.1:0".into())
    })
    .await
    .unwrap();
    app.public_channel("secret-crm-name", true, "").await;
    let off = app.public_channel("disabled-one", true, "").await;
    let r = app
        .admin(
            "PATCH",
            &format!("/admin/v1/channels/{}", crate::helpers::id_of(&off)),
            Some(serde_json::json!({"enabled": false})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let public = app
        .send(app.client.get(app.url("/metrics")), None)
        .await
        .text();
    assert!(public.contains("oktell_scenario_pool_slots"), "{public}");
    assert!(public.contains("oktell_channels_served"), "{public}");
    for code in ["secret-crm-name", "disabled-one"] {
        assert!(!public.contains(code), "{code} is public:\n{public}");
    }
    let readyz = app
        .send(app.client.get(app.url("/readyz")), None)
        .await
        .text();
    assert!(!readyz.contains("secret-crm-name"), "{readyz}");
    let operator = app.metrics().await.text();
    assert!(
        operator.contains("channel=\"secret-crm-name\""),
        "{operator}"
    );
    let port = app.metrics_port.expect("a metrics port");
    let scraper = app
        .send(
            app.client.get(format!("http://127.0.0.1:{port}/metrics")),
            None,
        )
        .await
        .text();
    assert!(scraper.contains("channel=\"secret-crm-name\""), "{scraper}");
    let wrong = app
        .send(
            app.client
                .get(app.url("/metrics"))
                .insert_header(("Authorization", "Bearer not-the-admin-token")),
            None,
        )
        .await
        .text();
    assert!(!wrong.contains("secret-crm-name"), "{wrong}");
}

#[actix_web::test]
async fn metrics_listen_serves_only_operations() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.metrics_listen = Some("127.0.0.1:0".into())
    })
    .await
    .unwrap();
    let port = app.metrics_port.expect("a metrics port");
    let base = format!("http://127.0.0.1:{port}");
    let r = app
        .send(app.client.get(format!("{base}/metrics")), None)
        .await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("oktell_scenario_pool_threads"));
    let r = app
        .send(app.client.get(format!("{base}/healthz")), None)
        .await;
    assert_eq!(r.status, 200);
    let req = app
        .client
        .get(format!("{base}/admin/v1/channels"))
        .insert_header((
            "Authorization",
            format!("Bearer {}", crate::helpers::ADMIN_TOKEN),
        ));
    assert_eq!(
        app.send(req, None).await.status,
        404,
        "no admin API on the metrics address"
    );
}

#[actix_web::test]
async fn tls_serves_https_with_the_given_certificate() {
    let dir = std::env::temp_dir().join(format!("oktell-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, issued.cert.pem()).unwrap();
    std::fs::write(&key_path, issued.signing_key.serialize_pem()).unwrap();
    let (c, k) = (cert_path.clone(), key_path.clone());
    let app = spawn_app_with(Backend::Sqlite, move |cfg| {
        cfg.tls_cert = Some(c);
        cfg.tls_key = Some(k);
    })
    .await
    .unwrap();
    let channel = app
        .create_channel_over(
            &tls_client(issued.cert.der().to_vec()),
            &format!("https://localhost:{}", app.port),
            json!({
                "code": "secure", "kind": "public", "wait_for_completion": true,
                "webhook_scenario": "response_content = startparam(3);",
            }),
        )
        .await;
    let client = tls_client(issued.cert.der().to_vec());
    let url = format!(
        "https://localhost:{}/api/token/v1/{}/x",
        app.port,
        token_of(&channel)
    );
    let mut res = client
        .post(url.clone())
        .send()
        .await
        .expect("https answers");
    assert_eq!(res.status(), 200);
    let body = res.body().await.unwrap();
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        url,
        "startparam(3) says https"
    );
    // Plain http on the TLS port does not get through.
    assert!(
        app.client
            .get(format!("http://127.0.0.1:{}/healthz", app.port))
            .send()
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An awc client that trusts exactly one self-signed certificate.
fn tls_client(cert_der: Vec<u8>) -> awc::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der.into()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(std::sync::Arc::new(config)))
        .timeout(Duration::from_secs(30))
        .finish()
}

/// Every route the gateway serves is in /openapi.json, and every documented operation
/// answers (a route-level 404 has the code "not_found"; a missing resource another one).
#[actix_web::test]
async fn openapi_matches_the_routes() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let doc = app
        .send(app.client.get(app.url("/openapi.json")), None)
        .await
        .json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    let served = [
        ("POST", "/admin/v1/channels"),
        ("GET", "/admin/v1/channels"),
        ("GET", "/admin/v1/channels/{id}"),
        ("PATCH", "/admin/v1/channels/{id}"),
        ("DELETE", "/admin/v1/channels/{id}"),
        ("GET", "/admin/v1/channels/{id}/sessions"),
        ("POST", "/admin/v1/channels/{id}/sessions/{code}/messages"),
        ("DELETE", "/admin/v1/channels/{id}/sessions/{code}"),
        ("POST", "/api/token/v1/{token}"),
        ("GET", "/ws/token/v1/{token}"),
        ("GET", "/ws/token/v1/{token}/subscribe"),
        ("POST", "/api/token/v1/{token}/subscribe"),
        ("GET", "/api/token/v1/{token}/subscribe"),
        ("GET", "/api/token/v1/{token}/subscribe/{id}"),
        ("DELETE", "/api/token/v1/{token}/subscribe/{id}"),
        ("POST", "/api/token/v1/{token}/subscribe/{id}/rotate-secret"),
        ("GET", "/admin/v1/subscriptions"),
        ("GET", "/admin/v1/subscriptions/{id}"),
        ("POST", "/admin/v1/subscriptions/{id}/enable"),
        ("POST", "/admin/v1/subscriptions/{id}/recover"),
        ("POST", "/admin/v1/subscriptions/{id}/resend/{event_id}"),
        ("GET", "/admin/v1/node"),
        ("POST", "/admin/v1/channels/{id}/dry-run"),
        ("GET", "/admin/v1/channels/{id}/versions"),
        ("GET", "/admin/v1/channels/{id}/versions/{v}"),
        ("POST", "/admin/v1/channels/{id}/versions/{v}/restore"),
        ("POST", "/admin/v1/events"),
        ("GET", "/admin/v1/events"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
    ];
    for (method, path) in served {
        assert!(
            documented.contains(&(method.to_string(), path.to_string())),
            "{method} {path} is served but not documented"
        );
    }
    for (method, path) in &documented {
        let concrete = path
            .replace("{id}", "x")
            .replace("{code}", "y")
            .replace("{token}", "z")
            .replace("{event_id}", "1")
            .replace("{v}", "1");
        let m = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
        let req = app.client.request(m, app.url(&concrete)).insert_header((
            "Authorization",
            format!("Bearer {}", crate::helpers::ADMIN_TOKEN),
        ));
        let r = app.send(req, Some(b"{}".to_vec())).await;
        assert_ne!(r.status, 405, "{method} {path}");
        if r.status == 404 {
            assert_ne!(
                r.error_code(),
                "not_found",
                "{method} {path} is documented but not served"
            );
        }
    }
    let docs = app.send(app.client.get(app.url("/docs")), None).await;
    assert_eq!(docs.status, 200);
    assert!(docs.text().contains("openapi.json"));
}
