//! A cluster: several real node processes of the built binary on one fresh PostgreSQL
//! database, acting as one gateway (issue #12).

use std::time::{Duration, Instant};

use awc::Client;
use diesel::Connection;
use diesel::connection::SimpleConnection;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    ADMIN_TOKEN, GatewayProcess, PG_URL, eventually, id_of, postgres_available, token_of,
};
use crate::websocket::next_close;

/// How soon a change made through one node must be live on the others.
const PROPAGATION: Duration = Duration::from_secs(1);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A database of its own, dropped (with every connection to it) at the end.
pub struct FreshDatabase {
    pub name: String,
}

impl FreshDatabase {
    pub fn create() -> Option<FreshDatabase> {
        if !postgres_available() {
            return None;
        }
        let name = format!("oktell_cl_{}", uuid::Uuid::new_v4().simple());
        let mut conn = diesel::PgConnection::establish(PG_URL).expect("connect to PostgreSQL");
        conn.batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create the test database");
        Some(FreshDatabase { name })
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    /// The URL through a proxy on `port` instead of the server itself.
    pub fn url_via(&self, port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{}", self.name)
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        if let Ok(mut conn) = diesel::PgConnection::establish(PG_URL) {
            let _ = conn.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// Nodes of one domain on a fresh database. Nodes are stopped before the database
/// is dropped (field order).
pub struct Cluster {
    pub nodes: Vec<GatewayProcess>,
    pub db: FreshDatabase,
}

/// Flags of node `i` (1-based) on `url`.
fn node_args(i: usize, url: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--database-url".into(),
        url.into(),
        "--node-id".into(),
        format!("node-{i}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn data_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("oktell-node-{}", uuid::Uuid::new_v4().simple()))
}

impl Cluster {
    /// `n` nodes started at once on an empty database (they race for the migrations).
    pub async fn start(n: usize) -> Option<Cluster> {
        Cluster::start_with(n, |_| Vec::new()).await
    }

    /// Like `start`, with extra flags per node (1-based).
    pub async fn start_with(
        n: usize,
        extra: impl Fn(usize) -> Vec<&'static str>,
    ) -> Option<Cluster> {
        let db = FreshDatabase::create()?;
        let url = db.url();
        let starts = (1..=n).map(|i| {
            let args = node_args(i, &url, &extra(i));
            async move { GatewayProcess::start_logging(&data_dir(), &args).await }
        });
        let nodes = futures_util::future::join_all(starts).await;
        Some(Cluster { nodes, db })
    }

    pub fn node(&self, i: usize) -> &GatewayProcess {
        &self.nodes[i - 1]
    }
}

async fn admin(
    node: &GatewayProcess,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let client = Client::builder().timeout(Duration::from_secs(30)).finish();
    let req = client
        .request(method.parse().unwrap(), format!("{}{path}", node.base))
        .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")));
    let mut res = match body {
        Some(b) => req.send_json(&b).await,
        None => req.send().await,
    }
    .expect("admin answers");
    let status = res.status().as_u16();
    let body = res.body().limit(4 << 20).await.expect("body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A webhook call: (status, body as text).
async fn call(node: &GatewayProcess, token: &str) -> (u16, String) {
    let client = Client::builder().timeout(Duration::from_secs(30)).finish();
    match client
        .post(format!("{}/api/token/v1/{token}", node.base))
        .send_body("x")
        .await
    {
        Ok(mut res) => {
            let body = res.body().await.map(|b| b.to_vec()).unwrap_or_default();
            (
                res.status().as_u16(),
                String::from_utf8_lossy(&body).into_owned(),
            )
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Polls until `node` answers `token` with `want` (status, body), within `within`;
/// returns how long it took.
async fn answers(
    node: &GatewayProcess,
    token: &str,
    want: (u16, &str),
    within: Duration,
) -> Duration {
    let started = Instant::now();
    let mut last = (0, String::new());
    while started.elapsed() < within {
        last = call(node, token).await;
        if last.0 == want.0 && last.1 == want.1 {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{} did not answer {want:?} within {within:?}; last answer {last:?}",
        node.base
    );
}

fn public(code: &str, reply: &str) -> Value {
    json!({
        "code": code,
        "kind": "public",
        "wait_for_completion": true,
        "webhook_scenario": format!("response_content = \"{reply}\";"),
        "websocket_scenario": "response_content = startparam(2);",
    })
}

async fn open_ws(node: &GatewayProcess, path: &str) -> Ws {
    let url = format!("ws://127.0.0.1:{}{path}", node.port);
    tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket opens")
        .0
}

async fn json_frame(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("reads");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).expect("JSON frame");
        }
    }
}

#[actix_web::test]
async fn channel_changes_made_on_one_node_apply_on_every_node() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    // Create on node 1, call on node 3.
    let (status, created) = admin(
        cluster.node(1),
        "POST",
        "/admin/v1/channels",
        Some(public("crm", "v1")),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (token, id) = (token_of(&created), id_of(&created));
    let took = answers(cluster.node(3), &token, (200, "v1"), PROPAGATION).await;
    eprintln!("create on node 1 -> live on node 3 in {took:?}");

    // Update on node 2, node 1 runs the new script.
    let (status, body) = admin(
        cluster.node(2),
        "PATCH",
        &format!("/admin/v1/channels/{id}"),
        Some(json!({"webhook_scenario": "response_content = \"v2\";"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let took = answers(cluster.node(1), &token, (200, "v2"), PROPAGATION).await;
    eprintln!("update on node 2 -> live on node 1 in {took:?}");

    // A websocket session on node 2; delete on node 3: node 2 answers 404 and closes
    // the session with 1001.
    let mut ws = open_ws(cluster.node(2), &format!("/ws/token/v1/{token}")).await;
    ws.send(Message::text("hello")).await.expect("send");
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a reply in time")
            .expect("open")
            .expect("reads"),
        Message::text("hello")
    );
    let (status, _) = admin(
        cluster.node(3),
        "DELETE",
        &format!("/admin/v1/channels/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let took = answers(
        cluster.node(2),
        &token,
        (404, r#"{"error":{"code":"channel_not_found","message":"no public channel with this token is served here"}}"#),
        PROPAGATION,
    )
    .await;
    eprintln!("delete on node 3 -> 404 on node 2 in {took:?}");
    assert_eq!(next_close(&mut ws).await.0, 1001);
    for i in 1..=3 {
        assert_eq!(call(cluster.node(i), &token).await.0, 404, "node {i}");
    }
}

#[actix_web::test]
async fn the_cli_notifies_the_running_nodes() {
    let Some(cluster) = Cluster::start(1).await else {
        return;
    };
    let binary = env!("CARGO_BIN_EXE_oktell-gateway");
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("webhook.rhai");
    std::fs::write(&script, "response_content = \"cli\";").unwrap();
    let out = std::process::Command::new(binary)
        .args(["channel", "create", "--database-url", &cluster.db.url()])
        .args([
            "--code",
            "from-cli",
            "--kind",
            "public",
            "--wait-for-completion",
            "true",
        ])
        .args(["--webhook-scenario-file", &script.display().to_string()])
        .output()
        .expect("the CLI runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).expect("the CLI prints the channel");
    answers(
        cluster.node(1),
        &token_of(&created),
        (200, "cli"),
        PROPAGATION,
    )
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

#[actix_web::test]
async fn events_reach_subscribers_on_every_node_and_resume_on_another_node() {
    let Some(mut cluster) = Cluster::start(3).await else {
        return;
    };
    let (status, feed) = admin(
        cluster.node(1),
        "POST",
        "/admin/v1/channels",
        Some(json!({"code": "feed", "kind": "eventing"})),
    )
    .await;
    assert_eq!(status, 201, "{feed}");
    let token = token_of(&feed);
    let path = format!("/ws/token/v1/{token}/subscribe");
    // The channel must be live on nodes 2 and 3 before they take subscribers.
    for i in [2, 3] {
        let node = cluster.node(i);
        let url = format!("{}{path}", node.base);
        eventually("the feed is served", PROPAGATION, || {
            let url = url.clone();
            async move {
                // A plain GET to the upgrade route: 404 until the channel is served.
                Client::default()
                    .get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() != 404)
            }
        })
        .await;
    }
    let mut on2 = open_ws(cluster.node(2), &path).await;
    let mut on3 = open_ws(cluster.node(3), &path).await;
    for ws in [&mut on2, &mut on3] {
        ws.send(Message::text(json!({"op": "subscribe"}).to_string()))
            .await
            .unwrap();
        assert_eq!(json_frame(ws).await["op"], "subscribed");
    }
    let mut ids = Vec::new();
    for n in 0..5 {
        let sent = Instant::now();
        let (status, e) = admin(
            cluster.node(1),
            "POST",
            "/admin/v1/events",
            Some(json!({"type": "call.started", "data": {"n": n}})),
        )
        .await;
        assert_eq!(status, 201, "{e}");
        let id = e["id"].as_i64().unwrap();
        ids.push(id);
        for ws in [&mut on2, &mut on3] {
            let got = json_frame(ws).await;
            assert_eq!(
                (got["op"].as_str(), got["id"].as_i64()),
                (Some("event"), Some(id)),
                "{got}"
            );
        }
        assert!(
            sent.elapsed() < PROPAGATION,
            "event {n} took {:?}",
            sent.elapsed()
        );
    }
    // The subscriber on node 3 read up to the third event; node 3 dies; it resumes on
    // node 2 from there: the last two, no gap, no duplicate.
    let read_up_to = ids[2];
    drop(on3);
    cluster.nodes[2].kill9();
    let mut resumed = open_ws(cluster.node(2), &path).await;
    resumed
        .send(Message::text(
            json!({"op": "subscribe", "since": read_up_to}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(json_frame(&mut resumed).await["op"], "subscribed");
    let (status, e) = admin(
        cluster.node(1),
        "POST",
        "/admin/v1/events",
        Some(json!({"type": "call.started", "data": {"n": 5}})),
    )
    .await;
    assert_eq!(status, 201, "{e}");
    ids.push(e["id"].as_i64().unwrap());
    let mut got = Vec::new();
    while got.len() < 3 {
        let f = json_frame(&mut resumed).await;
        assert_eq!(f["op"], "event", "{f}");
        got.push(f["id"].as_i64().unwrap());
    }
    assert_eq!(got, ids[3..].to_vec());
}

#[actix_web::test]
async fn a_subscriber_ahead_of_this_nodes_broker_is_not_refused() {
    // Read through node 1 up to id N; subscribe on node 2 with since = N even before
    // node 2's broker has pushed N: accepted, and what follows arrives.
    let Some(cluster) = Cluster::start(2).await else {
        return;
    };
    let (_, feed) = admin(
        cluster.node(1),
        "POST",
        "/admin/v1/channels",
        Some(json!({"code": "f", "kind": "eventing"})),
    )
    .await;
    let token = token_of(&feed);
    let (_, e) = admin(
        cluster.node(1),
        "POST",
        "/admin/v1/events",
        Some(json!({"type": "a.b"})),
    )
    .await;
    let n = e["id"].as_i64().unwrap();
    let path = format!("/ws/token/v1/{token}/subscribe");
    let url = format!("{}{path}", cluster.node(2).base);
    eventually("the feed is served on node 2", PROPAGATION, || {
        let url = url.clone();
        async move {
            Client::default()
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status() != 404)
        }
    })
    .await;
    let mut ws = open_ws(cluster.node(2), &path).await;
    ws.send(Message::text(
        json!({"op": "subscribe", "since": n}).to_string(),
    ))
    .await
    .unwrap();
    let f = json_frame(&mut ws).await;
    assert_eq!(f["op"], "subscribed", "{f}");
    let (_, e) = admin(
        cluster.node(1),
        "POST",
        "/admin/v1/events",
        Some(json!({"type": "a.c"})),
    )
    .await;
    let f = json_frame(&mut ws).await;
    assert_eq!(
        (f["op"].as_str(), f["id"].as_i64()),
        (Some("event"), e["id"].as_i64())
    );
    // An id the log never had is still refused.
    let mut other = open_ws(cluster.node(2), &path).await;
    other
        .send(Message::text(
            json!({"op": "subscribe", "since": n + 1000}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(json_frame(&mut other).await["code"], "not_recovered");
}

#[actix_web::test]
async fn nodes_started_together_on_an_empty_database_all_come_up_and_list_each_other() {
    let Some(mut cluster) = Cluster::start(3).await else {
        return;
    };
    let alive = |v: &Value, id: &str| {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == id)
            .map(|n| n["alive"] == true)
    };
    eventually(
        "every node lists all three alive",
        Duration::from_secs(10),
        || {
            let fut = admin(cluster.node(2), "GET", "/admin/v1/nodes", None);
            async move { fut.await.1["alive"] == 3 }
        },
    )
    .await;
    let (_, listing) = admin(cluster.node(2), "GET", "/admin/v1/nodes", None).await;
    assert_eq!(alive(&listing, "node-1"), Some(true));
    let (_, me) = admin(cluster.node(2), "GET", "/admin/v1/node", None).await;
    assert_eq!(me["node_id"], "node-2");
    assert_eq!(me["cluster"]["listening"], true, "{me}");
    // A killed node is shown down after three missed heartbeats.
    cluster.nodes[2].kill9();
    eventually("node 3 is shown down", Duration::from_secs(15), || {
        let fut = admin(cluster.node(1), "GET", "/admin/v1/nodes", None);
        async move {
            fut.await.1["items"].as_array().is_some_and(|items| {
                items
                    .iter()
                    .any(|n| n["node_id"] == "node-3" && n["alive"] == false)
            })
        }
    })
    .await;
}

#[actix_web::test]
async fn a_node_serves_only_the_channels_of_its_roles() {
    let Some(cluster) = Cluster::start_with(2, |i| {
        if i == 1 {
            vec!["--roles", "a"]
        } else {
            vec!["--roles", "b"]
        }
    })
    .await
    else {
        return;
    };
    let mut body = public("for-b", "b");
    body["ws_role"] = json!("b");
    let (status, created) = admin(cluster.node(1), "POST", "/admin/v1/channels", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let token = token_of(&created);
    answers(cluster.node(2), &token, (200, "b"), PROPAGATION).await;
    assert_eq!(call(cluster.node(1), &token).await.0, 404);
    // Moving it to role a moves it across.
    let (status, _) = admin(
        cluster.node(2),
        "PATCH",
        &format!("/admin/v1/channels/{}", id_of(&created)),
        Some(json!({"ws_role": "a"})),
    )
    .await;
    assert_eq!(status, 200);
    answers(cluster.node(1), &token, (200, "b"), PROPAGATION).await;
    assert_eq!(call(cluster.node(2), &token).await.0, 404);
}

/// A TCP proxy the test can cut: every connection through it is dropped and new ones
/// are refused until it is opened again.
struct CuttableProxy {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl CuttableProxy {
    async fn start(upstream: &'static str) -> CuttableProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> =
            Default::default();
        let (o, l) = (open.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !o.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                l.lock().unwrap().push(link.abort_handle());
            }
        });
        CuttableProxy { port, open, links }
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[actix_web::test]
async fn a_node_cut_off_from_the_database_serves_for_max_staleness_then_503_and_heals() {
    {
        let Some(db) = FreshDatabase::create() else {
            return;
        };
        let proxy = CuttableProxy::start("127.0.0.1:5432").await;
        let args = node_args(1, &db.url_via(proxy.port), &["--max-staleness-s", "2"]);
        let node = GatewayProcess::start_logging(&data_dir(), &args).await;
        let (status, created) =
            admin(&node, "POST", "/admin/v1/channels", Some(public("p", "ok"))).await;
        assert_eq!(status, 201, "{created}");
        let token = token_of(&created);
        assert_eq!(call(&node, &token).await, (200, "ok".to_string()));

        let mut ws = open_ws(&node, &format!("/ws/token/v1/{token}")).await;
        proxy.cut();
        let cut_at = Instant::now();
        // Serves what it has loaded for a while (no database needed for this script)...
        assert_eq!(call(&node, &token).await.0, 200);
        // ...then 503 once max_staleness has passed.
        let mut last = (0, String::new());
        while cut_at.elapsed() < Duration::from_secs(15) {
            last = call(&node, &token).await;
            if last.0 == 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(last.0, 503, "{last:?}");
        assert!(last.1.contains("stale_node"), "{}", last.1);
        let stale_after = cut_at.elapsed();
        assert!(
            stale_after >= Duration::from_secs(1),
            "stale after only {stale_after:?}"
        );
        let ready = Client::default()
            .get(format!("{}/readyz", node.base))
            .send()
            .await
            .expect("readyz answers");
        assert_eq!(ready.status(), 503);
        // Its websockets are closed too: clients go to a node that is in touch.
        assert_eq!(next_close(&mut ws).await.0, 1013);

        proxy.restore();
        answers(&node, &token, (200, "ok"), Duration::from_secs(30)).await;
        drop(node);
    }
}
