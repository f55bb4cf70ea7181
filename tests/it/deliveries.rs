//! Webhook subscriptions of eventing channels: signed deliveries, retries, 410,
//! rotation, target safety, and no loss across a crash.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{Backend, TestApp, eventually, spawn_app_with, token_of};
use crate::receiver::{Receiver, Seen};

/// HMAC-SHA256 written out from RFC 2104, independent of the gateway's `hmac` crate.
pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let (mut inner, mut outer) = (Sha256::new(), Sha256::new());
    inner.update(k.iter().map(|b| b ^ 0x36).collect::<Vec<_>>());
    inner.update(message);
    outer.update(k.iter().map(|b| b ^ 0x5c).collect::<Vec<_>>());
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Does one of the `v1,` signatures of the header verify with this secret (Standard
/// Webhooks: base64 HMAC-SHA256 of "{id}.{timestamp}.{body}", key = base64 after whsec_)?
fn verifies(seen: &Seen, secret: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let signed = format!(
        "{}.{}.{}",
        seen.headers["webhook-id"],
        seen.headers["webhook-timestamp"],
        String::from_utf8_lossy(&seen.body)
    );
    let expected =
        base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, signed.as_bytes()));
    seen.headers["webhook-signature"]
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

async fn app_for_deliveries(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |c| {
        c.allow_private_targets = true;
        c.delivery_retry_delays_ms = vec![50, 50, 50];
        c.delivery_poll_ms = 50;
    })
    .await
}

async fn eventing(app: &TestApp) -> String {
    token_of(
        &app.create_channel(json!({"code": "hooks", "kind": "eventing"}))
            .await,
    )
}

async fn subscribe(app: &TestApp, token: &str, body: Value) -> Value {
    let req = app
        .client
        .post(app.url(&format!("/api/token/v1/{token}/subscribe")))
        .insert_header(("Content-Type", "application/json"));
    let r = app.send(req, Some(body.to_string().into_bytes())).await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

/// The channel's subscriptions as its owner lists them.
async fn listed(app: &TestApp, token: &str) -> Value {
    app.send(
        app.client
            .get(app.url(&format!("/api/token/v1/{token}/subscribe"))),
        None,
    )
    .await
    .json()
}

async fn publish(app: &TestApp, t: &str) -> i64 {
    let r = app
        .admin(
            "POST",
            "/admin/v1/events",
            Some(json!({"type": t, "data": {"t": t}})),
        )
        .await;
    assert_eq!(r.status, 201);
    r.json()["id"].as_i64().unwrap()
}

crate::on_both_backends!(signed_deliveries_reach_matching_subscriptions);

async fn signed_deliveries_reach_matching_subscriptions(_app: TestApp) {
    // (the shared app has no private targets allowed: start one that has)
    let backend = if _app.pg_schema().is_some() {
        Backend::Postgres
    } else {
        Backend::Sqlite
    };
    drop(_app);
    let app = app_for_deliveries(backend).await.unwrap();
    let receiver = Receiver::start(|_| (200, "thanks".into()));
    let token = eventing(&app).await;
    let sub = subscribe(
        &app,
        &token,
        json!({"url": format!("{}/hook", receiver.url), "event_types": ["order.*"]}),
    )
    .await;
    let secret = sub["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    assert!(sub["id"].as_str().unwrap().starts_with("sub_"));

    let paid = publish(&app, "order.paid").await;
    publish(&app, "call.started").await;
    let shipped = publish(&app, "order.shipped").await;
    eventually(
        "both matching events are delivered",
        Duration::from_secs(15),
        || async { receiver.seen().len() >= 2 },
    )
    .await;
    let seen = receiver.seen();
    let mut ids: Vec<i64> = seen
        .iter()
        .map(|s| {
            serde_json::from_slice::<Value>(&s.body).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![paid, shipped],
        "call.started is not for this subscription"
    );
    for s in &seen {
        assert!(s.headers["webhook-id"].starts_with("msg_"));
        let ts: i64 = s.headers["webhook-timestamp"].parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((now - ts).abs() < 60);
        assert!(verifies(s, &secret), "signature verifies independently");
        assert!(
            !verifies(s, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "and not with another secret"
        );
        let body: Value = serde_json::from_slice(&s.body).unwrap();
        assert!(body["type"].as_str().unwrap().starts_with("order."));
        assert!(body["occurred_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(body["data"]["t"], body["type"]);
    }
    // The owner reads it back (no secret), and can delete it.
    let listed = listed(&app, &token).await;
    assert_eq!(listed["total"], 1);
    assert!(listed["items"][0].get("secret").is_none());
}

#[actix_web::test]
async fn failures_are_retried_with_the_same_webhook_id() {
    let app = app_for_deliveries(Backend::Sqlite).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let receiver = Receiver::start(move |_| {
        if c.fetch_add(1, Ordering::SeqCst) < 2 {
            (500, "not yet".into())
        } else {
            (204, String::new())
        }
    });
    let token = eventing(&app).await;
    subscribe(&app, &token, json!({"url": receiver.url.clone()})).await;
    publish(&app, "retry.me").await;
    eventually(
        "the third attempt lands",
        Duration::from_secs(15),
        || async { receiver.seen().len() >= 3 },
    )
    .await;
    let seen = receiver.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter()
            .all(|s| s.headers["webhook-id"] == seen[0].headers["webhook-id"]),
        "stable across retries"
    );
    // The receiver has answered; the gateway records the answer right after.
    eventually(
        "the success is recorded",
        Duration::from_secs(15),
        || async {
            let m = app.metrics().await.text();
            crate::ops::sample(&m, "oktell_outbox_pending", &[]) == Some(0.0)
                && crate::ops::sample(&m, "oktell_deliveries_total", &[("outcome", "delivered")])
                    == Some(1.0)
        },
    )
    .await;
    let metrics = app.metrics().await.text();
    assert_eq!(
        crate::ops::sample(
            &metrics,
            "oktell_deliveries_total",
            &[("outcome", "delivered")]
        ),
        Some(1.0)
    );
    assert_eq!(
        crate::ops::sample(
            &metrics,
            "oktell_deliveries_total",
            &[("outcome", "retried")]
        ),
        Some(2.0)
    );
    assert_eq!(
        crate::ops::sample(&metrics, "oktell_outbox_pending", &[]),
        Some(0.0)
    );
    // Every published event has its delivery rows: the outbox cursor is not behind.
    assert_eq!(
        crate::ops::sample(&metrics, "oktell_outbox_events_behind", &[]),
        Some(0.0)
    );

    // The operator sees the attempts, and can send the event once more.
    let subs = app
        .admin("GET", "/admin/v1/subscriptions", None)
        .await
        .json();
    assert_eq!(subs["total"], 1);
    let id = subs["items"][0]["id"].as_str().unwrap().to_string();
    let detail = app
        .admin("GET", &format!("/admin/v1/subscriptions/{id}"), None)
        .await
        .json();
    let attempts = detail["deliveries"][0]["attempts"].as_array().unwrap();
    let statuses: Vec<i64> = attempts
        .iter()
        .map(|a| a["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [500, 500, 204]);
    assert_eq!(
        attempts[0]["response"], "not yet",
        "the answer's first bytes are kept"
    );
    let event_id = detail["deliveries"][0]["event_id"].as_i64().unwrap();
    let r = app
        .admin(
            "POST",
            &format!("/admin/v1/subscriptions/{id}/resend/{event_id}"),
            None,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    eventually("the resend arrives", Duration::from_secs(15), || async {
        receiver.seen().len() >= 4
    })
    .await;
    assert_eq!(
        receiver.seen()[3].headers["webhook-id"],
        seen[0].headers["webhook-id"],
        "a resend is the same message"
    );
    let r = app
        .admin(
            "POST",
            &format!("/admin/v1/subscriptions/{id}/resend/999999"),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
}

#[actix_web::test]
async fn gone_disables_and_rotation_signs_twice() {
    let app = app_for_deliveries(Backend::Sqlite).await.unwrap();
    let gone = Receiver::start(|_| (410, "gone".into()));
    let token = eventing(&app).await;
    let sub = subscribe(&app, &token, json!({"url": gone.url.clone()})).await;
    publish(&app, "a.b").await;
    let url = app.url(&format!(
        "/api/token/v1/{token}/subscribe/{}",
        sub["id"].as_str().unwrap()
    ));
    eventually(
        "410 disables the subscription",
        Duration::from_secs(15),
        || async { app.send(app.client.get(url.clone()), None).await.json()["enabled"] == false },
    )
    .await;
    // Published right after the subscription is stored as disabled.
    eventually(
        "subscription.disabled is published",
        Duration::from_secs(15),
        || async {
            let log = app.admin("GET", "/admin/v1/events", None).await.json();
            log["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["type"] == "subscription.disabled")
        },
    )
    .await;
    assert_eq!(gone.seen().len(), 1, "no retry after 410");
    // The operator re-enables it and recovers the failed delivery.
    let sid = sub["id"].as_str().unwrap();
    let r = app
        .admin(
            "POST",
            &format!("/admin/v1/subscriptions/{sid}/enable"),
            None,
        )
        .await;
    assert_eq!(r.json()["enabled"], true);
    let r = app
        .admin(
            "POST",
            &format!("/admin/v1/subscriptions/{sid}/recover?since=0"),
            None,
        )
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["queued"], 1);
    eventually(
        "the recovered delivery is sent again",
        Duration::from_secs(15),
        || async { gone.seen().len() >= 2 },
    )
    .await;

    let ok = Receiver::start(|_| (200, String::new()));
    let sub = subscribe(&app, &token, json!({"url": ok.url.clone()})).await;
    let old = sub["secret"].as_str().unwrap().to_string();
    let rotate = app.client.post(app.url(&format!(
        "/api/token/v1/{token}/subscribe/{}/rotate-secret",
        sub["id"].as_str().unwrap()
    )));
    let rotated = app.send(rotate, None).await;
    assert_eq!(rotated.status, 200);
    let new = rotated.json()["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    publish(&app, "after.rotation").await;
    eventually("delivered", Duration::from_secs(15), || async {
        ok.seen()
            .iter()
            .any(|s| String::from_utf8_lossy(&s.body).contains("after.rotation"))
    })
    .await;
    let s = ok
        .seen()
        .into_iter()
        .find(|s| String::from_utf8_lossy(&s.body).contains("after.rotation"))
        .unwrap();
    assert_eq!(
        s.headers["webhook-signature"].split(' ').count(),
        2,
        "two signatures during the rotation"
    );
    assert!(verifies(&s, &new));
    assert!(verifies(&s, &old));
}

#[actix_web::test]
async fn unsafe_targets_and_wrong_tokens_are_refused() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let token = eventing(&app).await;
    for (url, field) in [
        ("http://127.0.0.1:9/x", "url"),
        ("http://169.254.169.254/latest", "url"),
        ("ftp://example.com/x", "url"),
        ("not a url", "url"),
    ] {
        let req = app
            .client
            .post(app.url(&format!("/api/token/v1/{token}/subscribe")));
        let r = app
            .send(req, Some(json!({"url": url}).to_string().into_bytes()))
            .await;
        assert_eq!(r.status, 400, "{url}: {}", r.text());
        assert_eq!(r.json()["error"]["field"], field);
    }
    let req = app
        .client
        .post(app.url(&format!("/api/token/v1/{token}/subscribe")));
    let r = app
        .send(
            req,
            Some(
                json!({"url": "http://93.184.216.34/", "event_types": ["Bad"]})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(r.json()["error"]["field"], "event_types[0]");
    let public = app.public_channel("pub", false, "").await;
    let req = app
        .client
        .post(app.url(&format!("/api/token/v1/{}/subscribe", token_of(&public))));
    assert_eq!(
        app.send(req, Some(b"{}".to_vec())).await.status,
        404,
        "a public channel has no subscriptions"
    );
    let r = app
        .send(
            app.client
                .get(app.url(&format!("/api/token/v1/{token}/subscribe/sub_nope"))),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
}

/// Nothing acknowledged is lost: SIGKILL after the publish, before a successful
/// delivery; the next start delivers it.
#[actix_web::test]
async fn a_killed_node_delivers_after_restart() {
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = up.clone();
    let receiver = Receiver::start(move |_| {
        if flag.load(Ordering::SeqCst) {
            (200, String::new())
        } else {
            (503, String::new())
        }
    });
    let (dir, args) =
        crash_node("delivery_retry_delays_ms = [5000, 5000, 5000]\ndelivery_poll_ms = 100\n");
    let mut first = crate::helpers::GatewayProcess::start_in(&dir, &args).await;
    subscribe_process(&first, "durable", &receiver.url).await;
    let status = publish_process(&first, json!({"type": "must.arrive", "data": {}})).await;
    assert_eq!(status, 201, "acknowledged");
    // Killed once the failed attempt is recorded and nothing is in flight: the
    // delivery is then due again in 5 s, not held by a lease of the dead node (that
    // case is the batch test's).
    let base = first.base.clone();
    eventually(
        "the first attempt failed and was recorded",
        Duration::from_secs(15),
        || {
            let base = base.clone();
            async move {
                crate::helpers::process_metric(
                    &base,
                    "oktell_deliveries_total",
                    &[("outcome", "retried")],
                )
                .await
                    >= 1.0
                    && crate::helpers::process_metric(&base, "oktell_deliveries_in_flight", &[])
                        .await
                        == 0.0
            }
        },
    )
    .await;
    assert!(!receiver.seen().is_empty());
    first.kill9();
    up.store(true, Ordering::SeqCst);
    let _second = crate::helpers::GatewayProcess::start_in(&dir, &args).await;
    eventually(
        "the delivery arrives after the restart",
        Duration::from_secs(30),
        || async { receiver.seen().len() >= 2 },
    )
    .await;
    let seen = receiver.seen();
    assert_eq!(
        seen[0].headers["webhook-id"],
        seen.last().unwrap().headers["webhook-id"]
    );
    assert!(String::from_utf8_lossy(&seen.last().unwrap().body).contains("must.arrive"));
}

#[actix_web::test]
async fn a_subscription_failing_too_long_is_disabled_with_an_event() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.allow_private_targets = true;
        c.delivery_retry_delays_ms = vec![50, 50, 50];
        c.delivery_poll_ms = 50;
        c.delivery_disable_after_ms = 0;
    })
    .await
    .unwrap();
    let failing = Receiver::start(|_| (500, "down".into()));
    let token = eventing(&app).await;
    let sub = subscribe(&app, &token, json!({"url": failing.url.clone()})).await;
    publish(&app, "x.y").await;
    let url = app.url(&format!(
        "/api/token/v1/{token}/subscribe/{}",
        sub["id"].as_str().unwrap()
    ));
    eventually(
        "disabled for failing too long",
        Duration::from_secs(15),
        || async {
            let v = app.send(app.client.get(url.clone()), None).await.json();
            v["enabled"] == false && v["disabled_reason"] == "failing for too long"
        },
    )
    .await;
    // The event is published right after the subscription is stored as disabled.
    let disabled_event = || async {
        let log = app.admin("GET", "/admin/v1/events", None).await.json();
        log["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == "subscription.disabled")
            .cloned()
    };
    eventually(
        "subscription.disabled is published",
        Duration::from_secs(15),
        || async { disabled_event().await.is_some() },
    )
    .await;
    let event = disabled_event().await.unwrap();
    assert_eq!(event["data"]["subscription_id"], sub["id"]);
}

/// The shipped binary (not the in-process app: its features are the release's) delivers
/// to an https receiver whose certificate is signed by a CA given with --tls-ca-file.
#[actix_web::test]
async fn the_binary_delivers_to_an_https_receiver_trusted_by_tls_ca_file() {
    let receiver = Receiver::start_tls(|_| (200, "ok".into()));
    assert!(receiver.url.starts_with("https://localhost:"));
    let dir = std::env::temp_dir().join(format!("oktell-https-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("receivers-ca.pem");
    std::fs::write(&ca_file, receiver.ca_pem.clone().unwrap()).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        "delivery_poll_ms = 50\ndelivery_retry_delays_ms = [50, 50]\n",
    )
    .unwrap();
    let gateway = crate::helpers::GatewayProcess::start_in(
        &dir,
        &[
            "--config".into(),
            config.display().to_string(),
            "--allow-private-targets".into(),
            "--tls-ca-file".into(),
            ca_file.display().to_string(),
        ],
    )
    .await;
    let channel = gateway
        .create_channel(json!({"code": "secure-hooks", "kind": "eventing"}))
        .await;
    let client = awc::Client::default();
    let mut res = client
        .post(format!(
            "{}/api/token/v1/{}/subscribe",
            gateway.base,
            token_of(&channel)
        ))
        .send_json(&json!({"url": format!("{}/hook", receiver.url)}))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let secret = res.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let res = client
        .post(format!("{}/admin/v1/events", gateway.base))
        .insert_header((
            "Authorization",
            format!("Bearer {}", crate::helpers::ADMIN_TOKEN),
        ))
        .send_json(&json!({"type": "over.tls", "data": {"n": 1}}))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    eventually(
        "the delivery arrives over https",
        Duration::from_secs(30),
        || async { !receiver.seen().is_empty() },
    )
    .await;
    let seen = &receiver.seen()[0];
    assert_eq!(seen.path, "/hook");
    assert!(String::from_utf8_lossy(&seen.body).contains("over.tls"));
    assert!(
        verifies(seen, &secret),
        "signed with the subscription's secret"
    );
    drop(gateway);
}

/// Without the CA the receiver's certificate is not trusted: the attempt fails (and is
/// recorded as such) rather than being sent to an unverified peer.
#[actix_web::test]
async fn an_untrusted_https_receiver_gets_nothing() {
    let receiver = Receiver::start_tls(|_| (200, "ok".into()));
    let app = app_for_deliveries(Backend::Sqlite).await.unwrap();
    let token = eventing(&app).await;
    let sub = subscribe(&app, &token, json!({"url": receiver.url.clone()})).await;
    publish(&app, "not.trusted").await;
    let id = sub["id"].as_str().unwrap().to_string();
    eventually(
        "a failed attempt is recorded",
        Duration::from_secs(15),
        || async {
            let detail = app
                .admin("GET", &format!("/admin/v1/subscriptions/{id}"), None)
                .await
                .json();
            detail["deliveries"][0]["attempts"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        },
    )
    .await;
    let detail = app
        .admin("GET", &format!("/admin/v1/subscriptions/{id}"), None)
        .await
        .json();
    let attempt = &detail["deliveries"][0]["attempts"][0];
    assert_eq!(attempt["status"], 0, "{attempt}");
    assert!(receiver.seen().is_empty());
}

/// Runs `test(backend)` on SQLite and on PostgreSQL (skipped there when none answers).
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use crate::helpers::Backend;

                #[actix_web::test]
                async fn sqlite() {
                    super::$name(Backend::Sqlite).await;
                }

                #[actix_web::test]
                async fn postgres() {
                    super::$name(Backend::Postgres).await;
                }
            }
        )*
    };
}

async fn subscription_detail(app: &TestApp, id: &str) -> Value {
    let r = app
        .admin("GET", &format!("/admin/v1/subscriptions/{id}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

async fn metric(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = app.metrics().await.text();
    crate::ops::sample(&text, name, labels)
}

on_both!(a_rotation_during_an_attempt_is_kept);

/// The worker must not write back the subscription it read before the attempt: a
/// secret rotated while an attempt is in flight keeps signing the next delivery.
async fn a_rotation_during_an_attempt_is_kept(backend: Backend) {
    let Some(app) = app_for_deliveries(backend).await else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let (receiver, hold) = Receiver::holding(move |_| {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            (500, "not yet".into())
        } else {
            (200, String::new())
        }
    });
    let token = eventing(&app).await;
    let sub = subscribe(&app, &token, json!({"url": receiver.url.clone()})).await;
    let old = sub["secret"].as_str().unwrap().to_string();
    publish(&app, "during.rotation").await;
    eventually(
        "the first attempt is in flight",
        Duration::from_secs(15),
        || async { hold.waiting() == 1 },
    )
    .await;
    let rotate = app.client.post(app.url(&format!(
        "/api/token/v1/{token}/subscribe/{}/rotate-secret",
        sub["id"].as_str().unwrap()
    )));
    let rotated = app.send(rotate, None).await;
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    let new = rotated.json()["secret"].as_str().unwrap().to_string();
    hold.release(1);
    eventually(
        "the first attempt failed and the retry is in flight",
        Duration::from_secs(15),
        || async { receiver.seen().len() == 1 && hold.waiting() == 1 },
    )
    .await;
    hold.release(1);
    eventually("the retry is answered", Duration::from_secs(15), || async {
        receiver.seen().len() == 2
    })
    .await;
    let seen = receiver.seen();
    assert_eq!(seen[0].headers["webhook-id"], seen[1].headers["webhook-id"]);
    assert!(verifies(&seen[0], &old) && !verifies(&seen[0], &new));
    assert!(
        verifies(&seen[1], &new),
        "the retry is signed with the secret rotated during the first attempt"
    );
    assert!(
        verifies(&seen[1], &old),
        "and the previous one, during the overlap"
    );
    hold.release(100);
}

on_both!(one_disable_publishes_one_event);

/// Several deliveries pending when a subscription is disabled for failing too long:
/// exactly one `subscription.disabled` event.
async fn one_disable_publishes_one_event(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.allow_private_targets = true;
        c.delivery_retry_delays_ms = vec![50, 50, 50];
        c.delivery_poll_ms = 50;
        c.delivery_disable_after_ms = 0;
    })
    .await
    else {
        return;
    };
    let failing = Receiver::start(|_| (500, "down".into()));
    let token = eventing(&app).await;
    let sub = subscribe(&app, &token, json!({"url": failing.url.clone()})).await;
    let events: Vec<Value> = (0..8)
        .map(|i| json!({"type": "many.pending", "data": {"i": i}}))
        .collect();
    let r = app
        .admin(
            "POST",
            "/admin/v1/events",
            Some(json!({ "events": events })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = sub["id"].as_str().unwrap().to_string();
    eventually(
        "every delivery has ended (failed)",
        Duration::from_secs(20),
        || async {
            let detail = subscription_detail(&app, &id).await;
            detail["enabled"] == false
                && detail["deliveries"].as_array().is_some_and(|d| {
                    d.len() == 8
                        && d.iter().all(|d| {
                            d["status"] == "failed"
                                && d["attempts"].as_array().is_some_and(|a| !a.is_empty())
                        })
                })
        },
    )
    .await;
    let disabled_events = || async {
        let log = app
            .admin("GET", "/admin/v1/events?limit=1000", None)
            .await
            .json();
        log["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "subscription.disabled")
            .count()
    };
    eventually(
        "subscription.disabled is published",
        Duration::from_secs(15),
        || async { disabled_events().await >= 1 },
    )
    .await;
    // Every attempt is recorded; what each would publish follows its record at once.
    // Watch for a while that no second event comes.
    let until = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < until {
        assert_eq!(disabled_events().await, 1, "one disable, one event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

on_both!(an_attempt_is_recorded_only_while_its_lease_is_held);

/// Another node took the delivery over while this node's attempt was in flight (its
/// lease had run out): this node must not record its attempt, nor release the other
/// node's lease.
async fn an_attempt_is_recorded_only_while_its_lease_is_held(backend: Backend) {
    let Some(app) = app_for_deliveries(backend).await else {
        return;
    };
    let (receiver, hold) = Receiver::holding(|_| (200, String::new()));
    let token = eventing(&app).await;
    let sub = subscribe(&app, &token, json!({"url": receiver.url.clone()})).await;
    publish(&app, "leased").await;
    eventually(
        "the attempt is in flight",
        Duration::from_secs(15),
        || async { hold.waiting() == 1 },
    )
    .await;
    // What another node's claim leaves: its own lease on the row.
    let other_lease: i64 = 4_102_444_800_000;
    app.state
        .db
        .run(move |c| {
            use diesel::connection::SimpleConnection;
            c.batch_execute(&format!(
                "UPDATE deliveries SET lease_until = {other_lease}"
            ))
            .map_err(oktell_gateway::db::StoreError::from)
        })
        .await
        .unwrap();
    hold.release(1);
    eventually(
        "the lost lease is noticed",
        Duration::from_secs(15),
        || async { metric(&app, "oktell_delivery_leases_lost_total", &[]).await == Some(1.0) },
    )
    .await;
    let id = sub["id"].as_str().unwrap().to_string();
    let detail = subscription_detail(&app, &id).await;
    let delivery = &detail["deliveries"][0];
    assert_eq!(delivery["status"], "pending", "{delivery}");
    assert_eq!(delivery["attempts"], json!([]), "nothing recorded");
    let lease = app
        .state
        .db
        .run(move |c| {
            use diesel::prelude::*;
            use oktell_gateway::db::schema::deliveries;
            deliveries::table
                .select(deliveries::lease_until)
                .first::<i64>(c)
                .map_err(oktell_gateway::db::StoreError::from)
        })
        .await
        .unwrap();
    assert_eq!(lease, other_lease, "the other node's lease stands");
    assert_eq!(
        metric(&app, "oktell_deliveries_total", &[("outcome", "delivered")]).await,
        Some(0.0)
    );
    assert_eq!(receiver.seen().len(), 1);
}

/// Special-purpose addresses, written as an attacker would (IPv4 embedded in IPv6 forms,
/// multicast, benchmarking, reserved), are refused with the default settings, and the
/// refusal changes nothing.
#[actix_web::test]
async fn special_purpose_targets_are_refused() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let token = eventing(&app).await;
    for host in [
        "[::127.0.0.1]",
        "[::7f00:1]",
        "[::ffff:0:7f00:1]",
        "[::ffff:127.0.0.1]",
        "[64:ff9b::7f00:1]",
        "[64:ff9b::a9fe:a9fe]",
        "[2002:7f00:1::1]",
        "[2002:a9fe:a9fe::1]",
        "[2001:0:5db8:d822::80ff:fffe]",
        "[fec0::1]",
        "[ff02::1]",
        "224.0.0.1",
        "239.255.255.250",
        "198.18.0.1",
        "192.0.0.1",
        "240.0.0.1",
    ] {
        let url = format!("http://{host}:8080/hook");
        let req = app
            .client
            .post(app.url(&format!("/api/token/v1/{token}/subscribe")));
        let r = app
            .send(req, Some(json!({"url": url}).to_string().into_bytes()))
            .await;
        assert_eq!(r.status, 400, "{url}: {}", r.text());
        assert_eq!(r.json()["error"]["field"], "url", "{url}");
    }
    let listed = listed(&app, &token).await;
    assert_eq!(listed["total"], 0, "nothing was stored");
}

/// A receiver that answers 302 to another one: the redirect is not followed (nothing
/// reaches the second), and the attempt is recorded with its 302 as a failure to retry.
#[actix_web::test]
async fn redirects_are_not_followed() {
    let app = app_for_deliveries(Backend::Sqlite).await.unwrap();
    let elsewhere = Receiver::start(|_| (200, "should never be called".into()));
    let target = format!("{}/stolen", elsewhere.url);
    let redirecting = Receiver::start(move |_| (302, target.clone()));
    let token = eventing(&app).await;
    let sub = subscribe(&app, &token, json!({"url": redirecting.url.clone()})).await;
    publish(&app, "go.elsewhere").await;
    let id = sub["id"].as_str().unwrap().to_string();
    eventually(
        "two attempts are recorded with 302",
        Duration::from_secs(15),
        || async {
            let detail = subscription_detail(&app, &id).await;
            detail["deliveries"][0]["attempts"]
                .as_array()
                .is_some_and(|a| a.len() >= 2 && a.iter().all(|a| a["status"] == 302))
        },
    )
    .await;
    let detail = subscription_detail(&app, &id).await;
    assert!(
        ["pending", "failed"].contains(&detail["deliveries"][0]["status"].as_str().unwrap()),
        "a redirect is not a success: {detail}"
    );
    assert!(redirecting.seen().len() >= 2);
    assert!(elsewhere.seen().is_empty(), "the redirect was followed");
}

/// Rows of a table, counted straight from storage.
async fn count_rows(app: &TestApp, table: &'static str) -> i64 {
    app.state
        .db
        .run(move |c| {
            use diesel::prelude::*;
            use oktell_gateway::db::schema::{deliveries, delivery_attempts, subscriptions};
            let n = match table {
                "subscriptions" => subscriptions::table.count().get_result::<i64>(c),
                "deliveries" => deliveries::table.count().get_result::<i64>(c),
                "delivery_attempts" => delivery_attempts::table.count().get_result::<i64>(c),
                other => panic!("no table {other}"),
            };
            n.map_err(oktell_gateway::db::StoreError::from)
        })
        .await
        .unwrap()
}

on_both!(deleting_a_channel_deletes_its_subscriptions_and_deliveries);

/// A deleted channel's subscriptions, their pending deliveries and attempts go with it:
/// nothing keeps being sent for it. Another channel's are untouched.
async fn deleting_a_channel_deletes_its_subscriptions_and_deliveries(backend: Backend) {
    let Some(app) = app_for_deliveries(backend).await else {
        return;
    };
    let failing = Receiver::start(|_| (500, "down".into()));
    let doomed = app
        .create_channel(json!({"code": "doomed", "kind": "eventing"}))
        .await;
    let kept = app
        .create_channel(json!({"code": "kept", "kind": "eventing"}))
        .await;
    subscribe(
        &app,
        &token_of(&doomed),
        json!({"url": failing.url.clone()}),
    )
    .await;
    subscribe(
        &app,
        &token_of(&doomed),
        json!({"url": failing.url.clone()}),
    )
    .await;
    let other = subscribe(&app, &token_of(&kept), json!({"url": failing.url.clone()})).await;
    publish(&app, "keeps.failing").await;
    eventually(
        "attempts were made for every subscription",
        Duration::from_secs(15),
        || async { failing.seen().len() >= 3 && count_rows(&app, "delivery_attempts").await >= 3 },
    )
    .await;
    let r = app
        .admin(
            "DELETE",
            &format!("/admin/v1/channels/{}", doomed["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let subs = app
        .admin("GET", "/admin/v1/subscriptions", None)
        .await
        .json();
    assert_eq!(
        subs["total"], 1,
        "only the other channel's subscription: {subs}"
    );
    assert_eq!(subs["items"][0]["id"], other["id"]);
    assert_eq!(count_rows(&app, "subscriptions").await, 1);
    // What is left belongs to the other channel's subscription only.
    let left = app
        .state
        .db
        .run(|c| {
            use diesel::prelude::*;
            use oktell_gateway::db::schema::deliveries;
            deliveries::table
                .select(deliveries::subscription_id)
                .load::<String>(c)
                .map_err(oktell_gateway::db::StoreError::from)
        })
        .await
        .unwrap();
    assert!(
        !left.is_empty() && left.iter().all(|s| s == other["id"].as_str().unwrap()),
        "{left:?}"
    );
    let attempts_of_others =
        subscription_detail(&app, other["id"].as_str().unwrap()).await["deliveries"][0]["attempts"]
            .as_array()
            .unwrap()
            .len() as i64;
    eventually(
        "every attempt left is the other subscription's",
        Duration::from_secs(15),
        || async {
            let others = subscription_detail(&app, other["id"].as_str().unwrap()).await
                ["deliveries"][0]["attempts"]
                .as_array()
                .unwrap()
                .len() as i64;
            count_rows(&app, "delivery_attempts").await == others
        },
    )
    .await;
    assert!(attempts_of_others >= 1);
}

on_both!(ended_deliveries_are_purged_after_the_retention);

/// Delivered and failed deliveries past the retention go, with their attempts; pending
/// ones stay whatever their age. Deleting a subscription takes its rows with it.
async fn ended_deliveries_are_purged_after_the_retention(backend: Backend) {
    let Some(app) = app_for_deliveries(backend).await else {
        return;
    };
    let ok = Receiver::start(|_| (200, String::new()));
    let failing = Receiver::start(|_| (500, "down".into()));
    let (held, hold) = Receiver::holding(|_| (200, String::new()));
    let token = eventing(&app).await;
    let delivered = subscribe(&app, &token, json!({"url": ok.url.clone()})).await;
    let failed = subscribe(&app, &token, json!({"url": failing.url.clone()})).await;
    let pending = subscribe(&app, &token, json!({"url": held.url.clone()})).await;
    publish(&app, "to.purge").await;
    let status_of = |sub: &Value| {
        let id = sub["id"].as_str().unwrap().to_string();
        let app = &app;
        async move { subscription_detail(app, &id).await["deliveries"][0]["status"].clone() }
    };
    eventually(
        "one delivered, one failed (retries used up), one in flight",
        Duration::from_secs(20),
        || async {
            status_of(&delivered).await == "delivered"
                && status_of(&failed).await == "failed"
                && hold.waiting() == 1
        },
    )
    .await;
    // 1 + 4 attempts (the first and three retries) are recorded; the held one has none.
    assert_eq!(count_rows(&app, "deliveries").await, 3);
    assert_eq!(count_rows(&app, "delivery_attempts").await, 5);
    // Within the retention: nothing goes.
    let kept = app
        .state
        .default_domain
        .events
        .purge_deliveries(3_600_000)
        .await
        .unwrap();
    assert_eq!(kept, (0, 0));
    // What the hourly job does once they are older than the retention.
    let purged = app
        .state
        .default_domain
        .events
        .purge_deliveries(-1000)
        .await
        .unwrap();
    assert_eq!(
        purged,
        (2, 5),
        "the delivered and the failed one, with their attempts"
    );
    assert_eq!(count_rows(&app, "deliveries").await, 1);
    assert_eq!(count_rows(&app, "delivery_attempts").await, 0);
    assert_eq!(
        status_of(&pending).await,
        "pending",
        "pending is never purged"
    );
    hold.release(10);
    eventually(
        "the held one is delivered",
        Duration::from_secs(15),
        || async { status_of(&pending).await == "delivered" },
    )
    .await;
    // Unsubscribing takes the subscription's deliveries and attempts with it.
    let r = app
        .send(
            app.client.delete(app.url(&format!(
                "/api/token/v1/{token}/subscribe/{}",
                pending["id"].as_str().unwrap()
            ))),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(count_rows(&app, "deliveries").await, 0);
    assert_eq!(count_rows(&app, "delivery_attempts").await, 0);
}

/// At-least-once across a crash, at scale: 1,000 events through one subscription, the
/// node SIGKILLed mid-batch, restarted on the same database: every event arrives, and
/// every repeat of an event carries the same `webhook-id`.
#[actix_web::test]
async fn a_batch_of_a_thousand_survives_a_sigkill_mid_way() {
    let receiver = Receiver::start(|_| (200, String::new()));
    let (dir, args) = crash_node("delivery_poll_ms = 50\n");
    let mut first = crate::helpers::GatewayProcess::start_in(&dir, &args).await;
    subscribe_process(&first, "bulk", &receiver.url).await;
    let events: Vec<Value> = (0..1000)
        .map(|i| json!({"type": "bulk.item", "data": {"n": i}}))
        .collect();
    let status = publish_process(&first, json!({ "events": events })).await;
    assert_eq!(status, 201, "acknowledged");
    eventually(
        "some of the batch arrived",
        Duration::from_secs(30),
        || async { receiver.seen().len() >= 50 },
    )
    .await;
    first.kill9();
    let before_restart = receiver.seen().len();
    let _second = crate::helpers::GatewayProcess::start_in(&dir, &args).await;
    let distinct = || {
        receiver
            .seen()
            .iter()
            .map(|s| {
                let body: Value = serde_json::from_slice(&s.body).unwrap();
                body["id"].as_i64().unwrap()
            })
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    // Rows the killed node had claimed wait for their lease (60 s) to run out.
    eventually(
        "all 1,000 events arrive after the restart",
        Duration::from_secs(150),
        || async { distinct() == 1000 },
    )
    .await;
    // One webhook-id per event, however often it was sent.
    let mut ids: std::collections::HashMap<i64, String> = std::collections::HashMap::new();
    for s in receiver.seen() {
        let body: Value = serde_json::from_slice(&s.body).unwrap();
        let event = body["id"].as_i64().unwrap();
        let id = s.headers["webhook-id"].clone();
        assert_eq!(
            ids.entry(event).or_insert_with(|| id.clone()),
            &id,
            "event {event}"
        );
    }
    assert!(
        before_restart < 1000,
        "the kill came after everything was sent ({before_restart})"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A folder and flags for a node of the SIGKILL tests: SQLite in the folder, private
/// targets allowed, `settings` in its config file.
pub fn crash_node(settings: &str) -> (std::path::PathBuf, Vec<String>) {
    let dir = std::env::temp_dir().join(format!("oktell-kill-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(&config, settings).unwrap();
    let args = vec![
        "--config".to_string(),
        config.display().to_string(),
        "--database-url".into(),
        dir.join("gw.db").display().to_string(),
        "--allow-private-targets".into(),
    ];
    (dir, args)
}

/// A new eventing channel on `node` with `url` subscribed to it.
pub async fn subscribe_process(node: &crate::helpers::GatewayProcess, code: &str, url: &str) {
    let channel = node
        .create_channel(json!({"code": code, "kind": "eventing"}))
        .await;
    let res = awc::Client::default()
        .post(format!(
            "{}/api/token/v1/{}/subscribe",
            node.base,
            token_of(&channel)
        ))
        .send_json(&json!({ "url": url }))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
}

/// Publishes through `node`'s admin API; the status.
pub async fn publish_process(node: &crate::helpers::GatewayProcess, body: Value) -> u16 {
    awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish()
        .post(format!("{}/admin/v1/events", node.base))
        .insert_header((
            "Authorization",
            format!("Bearer {}", crate::helpers::ADMIN_TOKEN),
        ))
        .send_json(&body)
        .await
        .unwrap()
        .status()
        .as_u16()
}

on_both!(one_slow_subscription_does_not_hold_every_slot);

/// A receiver that does not answer holds at most its subscription's share of the
/// node's delivery slots: another subscription's deliveries go on meanwhile, and the
/// held ones complete once it answers.
async fn one_slow_subscription_does_not_hold_every_slot(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.allow_private_targets = true;
        c.delivery_poll_ms = 50;
        c.delivery_concurrency = 4;
        c.delivery_max_in_flight_per_subscription = 2;
    })
    .await
    else {
        return;
    };
    let (slow, hold) = Receiver::holding(|_| (204, String::new()));
    let fast = Receiver::start(|_| (204, String::new()));
    let token = eventing(&app).await;
    subscribe(&app, &token, json!({"url": format!("{}/slow", slow.url)})).await;
    subscribe(&app, &token, json!({"url": format!("{}/fast", fast.url)})).await;
    let r = app
        .admin(
            "POST",
            "/admin/v1/events",
            Some(json!({"events": (0..6).map(|i| json!({"type": "t.x", "data": {"i": i}})).collect::<Vec<_>>()})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    eventually(
        "the fast receiver got all 6",
        Duration::from_secs(20),
        || async { fast.seen().len() >= 6 },
    )
    .await;
    assert_eq!(fast.seen().len(), 6);
    assert!(
        hold.waiting() <= 2 && slow.seen().len() <= 2,
        "the slow receiver holds {} (seen {}), more than its 2 slots",
        hold.waiting(),
        slow.seen().len()
    );
    hold.release(100);
    eventually(
        "the slow receiver got all 6",
        Duration::from_secs(20),
        || async { slow.seen().len() >= 6 },
    )
    .await;
    let ids: std::collections::HashSet<String> = slow
        .seen()
        .iter()
        .map(|s| s.headers["webhook-id"].clone())
        .collect();
    assert_eq!(ids.len(), 6);
}

on_both!(a_publish_writes_events_only_and_the_outbox_follows_its_cursor);

/// A publish stores its events only; their deliveries rows are written behind the log
/// (`fan_out`), in bounded chunks, in id order, for the subscriptions made before each
/// event; the retention never purges an event whose rows are not written yet.
async fn a_publish_writes_events_only_and_the_outbox_follows_its_cursor(backend: Backend) {
    use oktell_gateway::db::events as log;
    use oktell_gateway::db::subscriptions::{FannedOut, fan_out};
    // The worker only wakes when told (at start); here no one tells it.
    let Some(app) = spawn_app_with(backend, |c| {
        c.allow_private_targets = true;
        c.delivery_poll_ms = 3_600_000;
    })
    .await
    else {
        return;
    };
    let receiver = Receiver::start(|_| (200, String::new()));
    let token = eventing(&app).await;
    let first = subscribe(&app, &token, json!({"url": receiver.url.clone()})).await;
    let domain = app.state.config.domain.clone();
    let append = |n: usize| {
        let domain = domain.clone();
        app.state.db.run(move |c| {
            let new: Vec<_> = (0..n)
                .map(|i| log::NewEvent {
                    event_type: "fan.out".into(),
                    occurred_at: 0,
                    data: format!("{{\"i\":{i}}}"),
                    idempotency_key: None,
                })
                .collect();
            log::append(c, &domain, &new, oktell_gateway::db::now_millis(), 1000)
        })
    };
    // (rows written, events left above the cursor)
    let db = app.state.db.clone();
    let fan = |max_rows: usize| {
        let (db, domain) = (db.clone(), domain.clone());
        async move {
            db.run(move |c| fan_out(c, &domain, max_rows, oktell_gateway::db::now_millis(), None))
                .await
                .map(|f: FannedOut| (f.rows, f.more))
        }
    };
    let base = app
        .state
        .db
        .run({
            let domain = domain.clone();
            move |c| log::outbox_cursor(c, &domain)
        })
        .await
        .unwrap()
        .unwrap();
    append(3).await.unwrap();
    assert_eq!(
        count_rows(&app, "deliveries").await,
        0,
        "a publish writes no rows"
    );
    // Made after those three: not theirs.
    let second = subscribe(&app, &token, json!({"url": receiver.url.clone()})).await;
    assert_eq!(fan(2).await.unwrap(), (2, true));
    assert_eq!(fan(512).await.unwrap(), (1, false));
    assert_eq!(fan(512).await.unwrap(), (0, false), "caught up");
    let owners = || async {
        app.state
            .db
            .run(|c| {
                use diesel::prelude::*;
                use oktell_gateway::db::schema::deliveries;
                deliveries::table
                    .order(deliveries::event_id.asc())
                    .select((deliveries::subscription_id, deliveries::event_id))
                    .load::<(String, i64)>(c)
                    .map_err(oktell_gateway::db::StoreError::from)
            })
            .await
            .unwrap()
    };
    let first_id = first["id"].as_str().unwrap().to_string();
    let second_id = second["id"].as_str().unwrap().to_string();
    assert_eq!(
        owners().await,
        (1..=3)
            .map(|k| (first_id.clone(), base + k))
            .collect::<Vec<_>>()
    );
    // The next event is both subscriptions'.
    append(1).await.unwrap();
    assert_eq!(fan(512).await.unwrap(), (2, false));
    let rows = owners().await;
    assert_eq!(rows.len(), 5);
    assert!(rows.contains(&(second_id, base + 4)), "{rows:?}");
    // The retention purges events whose rows are written, never one above the cursor.
    append(1).await.unwrap();
    let purge = |domain: String| app.state.db.run(move |c| log::purge(c, &domain, i64::MAX));
    assert_eq!(purge(domain.clone()).await.unwrap(), (base + 4) as usize);
    assert_eq!(
        purge(domain.clone()).await.unwrap(),
        0,
        "event 5 waits for its rows"
    );
    assert_eq!(fan(512).await.unwrap(), (2, false));
    assert_eq!(purge(domain.clone()).await.unwrap(), 1);
}
