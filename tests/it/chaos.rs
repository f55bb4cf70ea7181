//! Chaos (issue #15): a node killed while it acknowledges publishes, the database cut
//! mid-load and brought back, SQLite held busy by another writer, and receivers that
//! hang, reset or answer 100 MB. Counted, not eyeballed: every acknowledged event must
//! be stored and delivered, every refusal must be a clear 503.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use awc::Client;
use diesel::connection::SimpleConnection;
use diesel::{Connection, RunQueryDsl};
use serde_json::{Value, json};

use crate::cluster::{CuttableProxy, FreshDatabase};
use crate::deliveries::{crash_node, subscribe_process};
use crate::helpers::{ADMIN_TOKEN, Backend, GatewayProcess, eventually, spawn_app_with, token_of};
use crate::receiver::Receiver;

/// Publishes one event through `base`; the stored id when acknowledged (201).
async fn publish_one(client: &Client, base: &str, n: u64) -> Result<i64, String> {
    let mut res = client
        .post(format!("{base}/admin/v1/events"))
        .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
        .send_json(&json!({"type": "chaos.item", "data": {"n": n}}))
        .await
        .map_err(|e| e.to_string())?;
    if res.status() != 201 {
        return Err(format!("status {}", res.status()));
    }
    let body: Value = res.json().await.map_err(|e| e.to_string())?;
    body["id"].as_i64().ok_or_else(|| "no id".to_string())
}

/// Every event of the log at `base`: id → data.n.
async fn logged(base: &str) -> std::collections::HashMap<i64, u64> {
    let client = Client::default();
    let mut out = std::collections::HashMap::new();
    let mut after = 0;
    loop {
        let mut res = client
            .get(format!("{base}/admin/v1/events?after={after}&limit=1000"))
            .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
            .send()
            .await
            .expect("the log answers");
        let body: Value = res.json().limit(64 << 20).await.expect("log JSON");
        let events = body["items"].as_array().expect("items").clone();
        if events.is_empty() {
            return out;
        }
        for e in events {
            let id = e["id"].as_i64().expect("id");
            out.insert(id, e["data"]["n"].as_u64().unwrap_or(u64::MAX));
            after = after.max(id);
        }
    }
}

/// The event ids a receiver got (each event once, however often it was sent).
fn delivered(receiver: &Receiver) -> HashSet<i64> {
    receiver
        .seen()
        .iter()
        .filter_map(|s| serde_json::from_slice::<Value>(&s.body).ok())
        .filter_map(|b| b["id"].as_i64())
        .collect()
}

/// Publishers that keep going while the node is SIGKILLed: every publish that was
/// acknowledged is in the log after the restart, with its data, and is delivered.
#[actix_web::test]
async fn acknowledged_publishes_survive_a_sigkill_under_load() {
    let receiver = Receiver::start(|_| (200, String::new()));
    let (dir, args) = crash_node("delivery_poll_ms = 50\n");
    let mut node = GatewayProcess::start_in(&dir, &args).await;
    subscribe_process(&node, "chaos", &receiver.url).await;

    let acked: Arc<Mutex<Vec<(i64, u64)>>> = Arc::default();
    let next = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for _ in 0..4 {
        let (acked, next, base) = (acked.clone(), next.clone(), node.base.clone());
        publishers.push(actix_web::rt::spawn(async move {
            let client = Client::builder().timeout(Duration::from_secs(10)).finish();
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                match publish_one(&client, &base, n).await {
                    Ok(id) => acked.lock().unwrap().push((id, n)),
                    Err(_) => return, // the node is gone
                }
            }
        }));
    }
    eventually(
        "publishes are acknowledged",
        Duration::from_secs(30),
        || {
            let n = acked.lock().unwrap().len();
            async move { n >= 200 }
        },
    )
    .await;
    node.kill9();
    for p in publishers {
        let _ = p.await;
    }
    let acked = acked.lock().unwrap().clone();
    let node = GatewayProcess::start_in(&dir, &args).await;
    let log = logged(&node.base).await;
    for (id, n) in &acked {
        assert_eq!(
            log.get(id),
            Some(n),
            "acknowledged event {id} (n = {n}) is stored"
        );
    }
    let wanted: HashSet<i64> = acked.iter().map(|(id, _)| *id).collect();
    // Rows the killed node had claimed wait for their lease (60 s) to run out.
    eventually(
        "every acknowledged event is delivered",
        Duration::from_secs(150),
        || {
            let missing = wanted.difference(&delivered(&receiver)).count();
            async move { missing == 0 }
        },
    )
    .await;
    drop(node);
    let _ = std::fs::remove_dir_all(dir);
}

/// PostgreSQL cut mid-load (every connection dropped, new ones refused) and brought
/// back: publishes get 503 `database_unavailable` while it is gone, webhooks that need
/// no database keep answering, and without a restart publishing works again and every
/// acknowledged event is delivered (no outbox row stuck).
#[actix_web::test]
async fn a_database_cut_mid_load_gives_503s_and_recovers_without_a_restart() {
    let _one_at_a_time = crate::cluster::CLUSTER_TESTS.lock().await;
    let Some(db) = FreshDatabase::create() else {
        return;
    };
    let proxy = CuttableProxy::start("127.0.0.1:5432").await;
    let receiver = Receiver::start(|_| (200, String::new()));
    let dir = std::env::temp_dir().join(format!("oktell-cut-{}", uuid::Uuid::new_v4().simple()));
    let args: Vec<String> = [
        "--database-url",
        &db.url_via(proxy.port),
        "--db-pool-size",
        "4",
        "--allow-private-targets",
        // The listener goes through the proxy too: keep serving loaded channels
        // through the cut (the staleness bound has its own tests).
        "--max-staleness-s",
        "120",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let node = GatewayProcess::start_in(&dir, &args).await;
    subscribe_process(&node, "cut", &receiver.url).await;
    let public = node
        .create_channel(json!({"code": "pub", "kind": "public", "webhook_scenario": "let x = 1;"}))
        .await;
    let hook = format!("{}/api/token/v1/{}", node.base, token_of(&public));

    let client = Client::builder().timeout(Duration::from_secs(30)).finish();
    let mut acked = HashSet::new();
    for n in 0..50 {
        acked.insert(
            publish_one(&client, &node.base, n)
                .await
                .expect("published"),
        );
    }
    proxy.cut();
    // While it is cut: a clear 503, within the pool's wait, and nothing else.
    let started = std::time::Instant::now();
    let mut res = client
        .post(format!("{}/admin/v1/events", node.base))
        .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
        .send_json(&json!({"type": "chaos.item", "data": {"n": 1000}}))
        .await
        .expect("an answer while the database is gone");
    assert_eq!(res.status(), 503, "publish while the database is cut");
    let body: Value = res.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
    assert!(res.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the 503 took {:?}",
        started.elapsed()
    );
    let res = client
        .post(&hook)
        .send_body("x")
        .await
        .expect("webhook answers");
    assert_eq!(res.status(), 200, "a webhook that needs no database");

    proxy.restore();
    let mut n = 2000;
    eventually(
        "publishing works again without a restart",
        Duration::from_secs(60),
        || {
            n += 1;
            let (client, base) = (client.clone(), node.base.clone());
            async move { publish_one(&client, &base, n).await.is_ok() }
        },
    )
    .await;
    for n in 3000..3050 {
        acked.insert(
            publish_one(&client, &node.base, n)
                .await
                .expect("published"),
        );
    }
    eventually(
        "every acknowledged event is delivered after the cut",
        Duration::from_secs(150),
        || {
            let missing = acked.difference(&delivered(&receiver)).count();
            async move { missing == 0 }
        },
    )
    .await;
    eventually("the outbox is empty", Duration::from_secs(30), || {
        let base = node.base.clone();
        async move {
            crate::helpers::process_metric(&base, "oktell_outbox_events_behind", &[]).await == 0.0
        }
    })
    .await;
    drop(node);
    let _ = std::fs::remove_dir_all(dir);
}

/// Another process holding SQLite's write lock: a publish waits for it (busy_timeout)
/// and succeeds once it is let go; held past the wait, the publish gets a clear 503
/// `database_busy` and stores nothing; the file stays intact either way.
#[actix_web::test]
async fn sqlite_busy_is_waited_for_then_refused_never_corrupt() {
    let app = spawn_app_with(Backend::Sqlite, |_| {})
        .await
        .expect("sqlite app");
    let file = app.state.config.database_url.clone();
    let mut other = diesel::SqliteConnection::establish(&file).expect("a second connection");
    // The gateway writes too (the outbox cursor after a publish, sweeps): this
    // connection waits for such a short write instead of failing to take the lock.
    other
        .batch_execute("PRAGMA busy_timeout = 10000")
        .expect("busy_timeout");
    let before = logged(&app.url("")).await.len();

    // Held briefly: the publish waits and then goes through.
    other.batch_execute("BEGIN EXCLUSIVE").expect("lock");
    let base = app.url("");
    let publish = actix_web::rt::spawn(async move {
        let client = Client::builder().timeout(Duration::from_secs(30)).finish();
        publish_one(&client, &base, 1).await
    });
    let mut publish = Box::pin(publish);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut publish)
            .await
            .is_err(),
        "a publish went through another writer's lock"
    );
    other.batch_execute("COMMIT").expect("unlock");
    let id = publish
        .await
        .expect("task")
        .expect("published once the lock was let go");
    assert!(id > 0);

    // Held past busy_timeout: 503, nothing stored.
    other.batch_execute("BEGIN EXCLUSIVE").expect("lock");
    let res = app
        .admin(
            "POST",
            "/admin/v1/events",
            Some(json!({"type": "chaos.item", "data": {"n": 2}})),
        )
        .await;
    other.batch_execute("COMMIT").expect("unlock");
    assert_eq!(res.status, 503, "{}", res.text());
    assert_eq!(res.error_code(), "database_busy");
    assert!(res.header("retry-after").is_some());
    assert_eq!(
        logged(&app.url("")).await.len(),
        before + 1,
        "nothing more stored"
    );

    let check: Vec<String> = {
        #[derive(diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            integrity_check: String,
        }
        diesel::sql_query("PRAGMA integrity_check")
            .load::<Row>(&mut other)
            .expect("integrity_check runs")
            .into_iter()
            .map(|r| r.integrity_check)
            .collect()
    };
    assert_eq!(check, vec!["ok".to_string()]);
    let client = Client::default();
    publish_one(&client, &app.url(""), 3)
        .await
        .expect("publishing goes on");
}

/// A raw TCP receiver that misbehaves: `hang` reads the request and never answers,
/// `reset` closes with RST, `huge` answers 200 with a 100 MB body and keeps the most it
/// managed to write on one connection.
struct BadReceiver {
    url: String,
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Drop for BadReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl BadReceiver {
    fn start(kind: &'static str) -> BadReceiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let written = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (w, s) = (written.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                match kind {
                    "hang" => {
                        let _ = stream.read(&mut [0u8; 4096]);
                        held.push(stream);
                    }
                    // Closing with received bytes unread makes the kernel answer RST.
                    "reset" => {
                        let _ = stream.read(&mut [0u8; 1]);
                        drop(stream);
                    }
                    _ => {
                        let _ = stream.read(&mut [0u8; 4096]);
                        let (w, s) = (w.clone(), s.clone());
                        std::thread::spawn(move || {
                            let total: u64 = 100 << 20;
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {total}\r\ncontent-type: text/plain\r\n\r\n"
                            );
                            if stream.write_all(head.as_bytes()).is_err() {
                                return;
                            }
                            let chunk = vec![b'x'; 64 << 10];
                            let mut sent = 0;
                            while sent < total && !s.load(Ordering::SeqCst) {
                                match stream.write(&chunk) {
                                    Ok(n) => {
                                        sent += n as u64;
                                        w.fetch_max(sent, Ordering::SeqCst);
                                    }
                                    Err(_) => return,
                                }
                            }
                        });
                    }
                }
            }
        });
        BadReceiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            written,
            stop,
        }
    }
}

/// Subscriptions whose receivers hang, reset and answer 100 MB, beside a good one on
/// the same channel: the good one gets every event while the others fail, and the huge
/// answer is not read to its end.
#[actix_web::test]
async fn receivers_that_hang_reset_or_flood_do_not_stall_the_others() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.allow_private_targets = true;
        c.delivery_poll_ms = 50;
        c.delivery_timeout_ms = 2000;
        c.delivery_concurrency = 4;
        c.delivery_max_in_flight_per_subscription = 1;
    })
    .await
    .expect("sqlite app");
    let good = Receiver::start(|_| (200, String::new()));
    let bad: Vec<BadReceiver> = ["hang", "reset", "huge"]
        .into_iter()
        .map(BadReceiver::start)
        .collect();
    let channel = app
        .create_channel(json!({"code": "bad-peers", "kind": "eventing"}))
        .await;
    let token = token_of(&channel);
    for url in bad.iter().map(|b| b.url.clone()).chain([good.url.clone()]) {
        let res = app
            .send(
                Client::default().post(app.url(&format!("/api/token/v1/{token}/subscribe"))),
                Some(json!({ "url": url }).to_string().into_bytes()),
            )
            .await;
        assert_eq!(res.status, 201, "{}", res.text());
    }
    let client = Client::default();
    let mut acked = HashSet::new();
    for n in 0..30 {
        acked.insert(
            publish_one(&client, &app.url(""), n)
                .await
                .expect("published"),
        );
    }
    eventually(
        "the good receiver gets every event",
        Duration::from_secs(30),
        || {
            let missing = acked.difference(&delivered(&good)).count();
            async move { missing == 0 }
        },
    )
    .await;
    let huge = &bad[2];
    eventually(
        "the huge answer was started",
        Duration::from_secs(30),
        || {
            let w = huge.written.load(Ordering::SeqCst);
            async move { w > 0 }
        },
    )
    .await;
    let written = huge.written.load(Ordering::SeqCst);
    assert!(
        written < 32 << 20,
        "the gateway read {written} bytes of one 100 MB answer"
    );
}
