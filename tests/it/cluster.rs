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
use crate::subscribe::frame as json_frame;
use crate::websocket::{next_close, next_text as text_frame};

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
/// is dropped (field order). One cluster test runs at a time: with the other tests'
/// databases, several clusters at once would pass PostgreSQL's max_connections.
pub struct Cluster {
    pub nodes: Vec<GatewayProcess>,
    pub db: FreshDatabase,
    _one_at_a_time: tokio::sync::MutexGuard<'static, ()>,
}

pub static CLUSTER_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Flags of node `i` (1-based) on `url`.
fn node_args(i: usize, url: &str, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--database-url".into(),
        url.into(),
        "--node-id".into(),
        format!("node-{i}"),
        // Each node also holds its listener: 4 nodes-worth stay far below
        // max_connections next to the other tests.
        "--db-pool-size".into(),
        "4".into(),
    ];
    args.extend(extra.iter().cloned());
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

    /// One node per entry, serving the domain(s) it names (`--domain`).
    pub async fn with_domains(domains: &[&str]) -> Option<Cluster> {
        Cluster::start_with(domains.len(), |i| {
            vec!["--domain".into(), domains[i - 1].to_string()]
        })
        .await
    }

    /// Like `start`, with extra flags per node (1-based).
    pub async fn start_with(n: usize, extra: impl Fn(usize) -> Vec<String>) -> Option<Cluster> {
        let turn = CLUSTER_TESTS.lock().await;
        let db = FreshDatabase::create()?;
        let url = db.url();
        let starts = (1..=n).map(|i| {
            let args = node_args(i, &url, &extra(i));
            async move { GatewayProcess::start_logging(&data_dir(), &args).await }
        });
        let nodes = futures_util::future::join_all(starts).await;
        Some(Cluster {
            nodes,
            db,
            _one_at_a_time: turn,
        })
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
    admin_as(node, None, method, path, body).await
}

/// An admin call, in the domain named (`X-Oktell-Domain`) or the node's default one.
async fn admin_as(
    node: &GatewayProcess,
    domain: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let client = Client::builder().timeout(Duration::from_secs(30)).finish();
    let mut req = client
        .request(method.parse().unwrap(), format!("{}{path}", node.base))
        .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")));
    if let Some(domain) = domain {
        req = req.insert_header(("X-Oktell-Domain", domain));
    }
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
    call_with(node, token, "x".to_string()).await
}

async fn call_with(node: &GatewayProcess, token: &str, body: String) -> (u16, String) {
    let client = Client::builder().timeout(Duration::from_secs(30)).finish();
    match client
        .post(format!("{}/api/token/v1/{token}", node.base))
        .send_body(body)
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
    // Its listener connects (and catches up) on its own, next to the heartbeat.
    eventually("node 2 listens", Duration::from_secs(10), || {
        let fut = admin(cluster.node(2), "GET", "/admin/v1/node", None);
        async move { fut.await.1["cluster"]["listening"] == true }
    })
    .await;
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
            vec!["--roles".into(), "a".into()]
        } else {
            vec!["--roles".into(), "b".into()]
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
pub struct CuttableProxy {
    pub port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl CuttableProxy {
    pub async fn start(upstream: &'static str) -> CuttableProxy {
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

    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    pub fn restore(&self) {
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
        let args = node_args(
            1,
            &db.url_via(proxy.port),
            &["--max-staleness-s".into(), "2".into()],
        );
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

#[actix_web::test]
async fn two_domains_in_one_database_never_see_each_other() {
    let Some(cluster) = Cluster::with_domains(&["d1", "d2"]).await else {
        return;
    };
    let (d1, d2) = (cluster.node(1), cluster.node(2));
    // The same code in both domains; each token works only in its own.
    let (s1, c1) = admin(
        d1,
        "POST",
        "/admin/v1/channels",
        Some(public("same", "one")),
    )
    .await;
    let (s2, c2) = admin(
        d2,
        "POST",
        "/admin/v1/channels",
        Some(public("same", "two")),
    )
    .await;
    assert_eq!((s1, s2), (201, 201), "{c1} {c2}");
    answers(d1, &token_of(&c1), (200, "one"), PROPAGATION).await;
    answers(d2, &token_of(&c2), (200, "two"), PROPAGATION).await;
    let (_, list) = admin(d2, "GET", "/admin/v1/channels", None).await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(
        admin(
            d2,
            "GET",
            &format!("/admin/v1/channels/{}", id_of(&c1)),
            None
        )
        .await
        .0,
        404
    );
    // Events: a subscriber of d2 sees only d2's.
    let (_, feed) = admin(
        d2,
        "POST",
        "/admin/v1/channels",
        Some(json!({"code": "feed", "kind": "eventing"})),
    )
    .await;
    let mut ws = open_ws(d2, &format!("/ws/token/v1/{}/subscribe", token_of(&feed))).await;
    ws.send(Message::text(json!({"op": "subscribe"}).to_string()))
        .await
        .unwrap();
    assert_eq!(json_frame(&mut ws).await["op"], "subscribed");
    let (_, e1) = admin(
        d1,
        "POST",
        "/admin/v1/events",
        Some(json!({"type": "in.one"})),
    )
    .await;
    let (_, e2) = admin(
        d2,
        "POST",
        "/admin/v1/events",
        Some(json!({"type": "in.two"})),
    )
    .await;
    let got = json_frame(&mut ws).await;
    assert_eq!(got["type"], "in.two", "{got}");
    assert_eq!(
        (e1["id"].as_i64(), e2["id"].as_i64()),
        (Some(1), Some(1)),
        "ids are per domain"
    );
    let (_, log) = admin(d2, "GET", "/admin/v1/events", None).await;
    assert_eq!(log["items"].as_array().map(|a| a.len()), Some(1), "{log}");
    // Each node registry lists its own domain's nodes.
    for (node, id) in [(d1, "node-1"), (d2, "node-2")] {
        let mut listing = Value::Null;
        for _ in 0..100 {
            listing = admin(node, "GET", "/admin/v1/nodes", None).await.1;
            if listing["total"] == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(listing["total"], 1, "{listing}");
        assert_eq!(listing["items"][0]["node_id"], id);
    }
}

/// A channel whose webhook runs the session call the body asks for.
fn session_operator(code: &str) -> Value {
    json!({
        "code": code,
        "kind": "public",
        "wait_for_completion": true,
        "ws_hello": true,
        "websocket_scenario": "response_content = \"echo:\" + startparam(2);",
        "webhook_scenario": r#"
            let body = startparam(4);
            let r = if body.starts_with("{") { parse_json(body) } else { #{ op: "" } };
            if r.op == "send" { response_content = to_json(ws_send(r.code, r.text)); }
            else if r.op == "broadcast" { response_content = to_json(ws_broadcast(r.text)); }
            else if r.op == "close" { response_content = to_json(ws_close(r.code, "bye")); }
            else if r.op == "list" { let s = ws_sessions(); s.sort(); response_content = to_json(s); }
        "#,
    })
}

async fn hello(ws: &mut Ws) -> String {
    let hello = json_frame(ws).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    hello["code"].as_str().unwrap().to_string()
}

#[actix_web::test]
async fn pushes_and_closes_reach_sessions_on_whichever_node_holds_them() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    let (status, created) = admin(
        cluster.node(1),
        "POST",
        "/admin/v1/channels",
        Some(session_operator("ops")),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (token, id) = (token_of(&created), id_of(&created));
    for i in [2, 3] {
        answers(cluster.node(i), &token, (200, ""), PROPAGATION).await;
    }
    let path = format!("/ws/token/v1/{token}");
    let mut on2 = open_ws(cluster.node(2), &path).await;
    let code2 = hello(&mut on2).await;
    let mut on3 = open_ws(cluster.node(3), &path).await;
    let code3 = hello(&mut on3).await;
    let op = |v: Value| v.to_string();

    // ws_send from a webhook scenario on node 1 reaches the session on node 2 (once
    // node 2's directory entry is written: poll), and says false for no session.
    let sent = Instant::now();
    loop {
        let (status, body) = call_with(
            cluster.node(1),
            &token,
            op(json!({"op": "send", "code": code2, "text": "to-2"})),
        )
        .await;
        assert_eq!(status, 200);
        if body == "true" {
            break;
        }
        assert!(
            sent.elapsed() < PROPAGATION,
            "the session on node 2 was not found: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(text_frame(&mut on2).await, "to-2");
    let (_, body) = call_with(
        cluster.node(1),
        &token,
        op(json!({"op": "send", "code": "no-such-session", "text": "x"})),
    )
    .await;
    assert_eq!(body, "false");
    // Larger than a notification's payload: carried through the database.
    let big = "b".repeat(20_000);
    let (_, body) = call_with(
        cluster.node(1),
        &token,
        op(json!({"op": "send", "code": code3, "text": big})),
    )
    .await;
    assert_eq!(body, "true");
    assert_eq!(text_frame(&mut on3).await.len(), 20_000);

    // ws_sessions and ws_broadcast see every node's sessions.
    let mut both = vec![code2.clone(), code3.clone()];
    both.sort();
    let (_, body) = call_with(cluster.node(1), &token, op(json!({"op": "list"}))).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!(both));
    let (_, body) = call_with(
        cluster.node(1),
        &token,
        op(json!({"op": "broadcast", "text": "all"})),
    )
    .await;
    assert_eq!(body, "2");
    assert_eq!(text_frame(&mut on2).await, "all");
    assert_eq!(text_frame(&mut on3).await, "all");

    // The admin API of node 3 lists the session on node 2 and pushes to it.
    let (status, list) = admin(
        cluster.node(3),
        "GET",
        &format!("/admin/v1/channels/{id}/sessions"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total"], 2, "{list}");
    let remote = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["code"] == code2.as_str())
        .expect("node 2's session listed");
    assert_eq!(remote["node_id"], "node-2");
    let (status, _) = admin(
        cluster.node(3),
        "POST",
        &format!("/admin/v1/channels/{id}/sessions/{code2}/messages"),
        Some(json!({"text": "from-admin-3"})),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(text_frame(&mut on2).await, "from-admin-3");

    // ws_close from node 1 closes the session on node 3.
    let (_, body) = call_with(
        cluster.node(1),
        &token,
        op(json!({"op": "close", "code": code3})),
    )
    .await;
    assert_eq!(body, "true");
    let (code, reason) = next_close(&mut on3).await;
    assert_eq!((code, reason.as_str()), (1000, "bye"));
    // Once closed, it is gone from the directory.
    let only_2 = json!([code2]).to_string();
    eventually(
        "the closed session leaves the directory",
        PROPAGATION,
        || {
            let fut = call_with(cluster.node(1), &token, op(json!({"op": "list"})));
            let only_2 = only_2.clone();
            async move { fut.await.1 == only_2 }
        },
    )
    .await;
}

#[actix_web::test]
async fn a_node_killed_while_a_thousand_deliveries_are_in_flight_loses_none() {
    let receiver = crate::receiver::Receiver::start(|_| (200, String::new()));
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(&config, "delivery_poll_ms = 50\n").unwrap();
    let config = config.display().to_string();
    let Some(mut cluster) = Cluster::start_with(3, |_| {
        vec![
            "--config".into(),
            config.clone(),
            "--allow-private-targets".into(),
        ]
    })
    .await
    else {
        return;
    };
    crate::deliveries::subscribe_process(cluster.node(1), "bulk", &receiver.url).await;
    let events: Vec<Value> = (0..1000)
        .map(|i| json!({"type": "bulk.item", "data": {"n": i}}))
        .collect();
    let status =
        crate::deliveries::publish_process(cluster.node(2), json!({ "events": events })).await;
    assert_eq!(status, 201);
    eventually(
        "some of the batch arrived",
        Duration::from_secs(30),
        || async { receiver.seen().len() >= 50 },
    )
    .await;
    cluster.nodes[0].kill9();
    let before = receiver.seen().len();
    let events_of = || -> Vec<(i64, String)> {
        receiver
            .seen()
            .iter()
            .map(|s| {
                let body: Value = serde_json::from_slice(&s.body).unwrap();
                (
                    body["id"].as_i64().unwrap(),
                    s.headers["webhook-id"].clone(),
                )
            })
            .collect()
    };
    // What the killed node had claimed waits for its lease to run out (~45 s).
    eventually(
        "all 1,000 events arrive",
        Duration::from_secs(150),
        || async {
            events_of()
                .iter()
                .map(|(e, _)| *e)
                .collect::<std::collections::HashSet<_>>()
                .len()
                == 1000
        },
    )
    .await;
    let seen = events_of();
    let mut ids: std::collections::HashMap<i64, String> = std::collections::HashMap::new();
    for (event, id) in &seen {
        assert_eq!(
            ids.entry(*event).or_insert_with(|| id.clone()),
            id,
            "event {event}: one webhook-id"
        );
    }
    eprintln!(
        "1,000 events: {} deliveries, {} duplicates (same webhook-id), {before} before the kill",
        seen.len(),
        seen.len() - 1000
    );
    assert!(before < 1000, "the kill came after everything was sent");
    let _ = std::fs::remove_dir_all(dir);
}

#[actix_web::test]
async fn a_node_serves_several_domains_and_admin_calls_name_theirs() {
    let Some(cluster) = Cluster::with_domains(&["d1,d2", "d2"]).await else {
        return;
    };
    let (both, only2) = (cluster.node(1), cluster.node(2));
    // Without the header: the first domain.
    let (status, c1) = admin(
        both,
        "POST",
        "/admin/v1/channels",
        Some(public("one", "in-d1")),
    )
    .await;
    assert_eq!(status, 201, "{c1}");
    assert_eq!(c1["domain"], "d1");
    // Named: d2, live on the d2-only node too; its script's events go to d2's log.
    let mut body = public("two", "in-d2");
    body["webhook_scenario"] = json!("emit_event(\"made.in_d2\"); response_content = \"in-d2\";");
    let (status, c2) = admin_as(both, Some("d2"), "POST", "/admin/v1/channels", Some(body)).await;
    assert_eq!(status, 201, "{c2}");
    assert_eq!(c2["domain"], "d2");
    answers(both, &token_of(&c2), (200, "in-d2"), PROPAGATION).await;
    answers(only2, &token_of(&c2), (200, "in-d2"), PROPAGATION).await;
    answers(both, &token_of(&c1), (200, "in-d1"), PROPAGATION).await;
    assert_eq!(
        call(only2, &token_of(&c1)).await.0,
        404,
        "d1 is not served by node 2"
    );
    let (_, d2_log) = admin(only2, "GET", "/admin/v1/events", None).await;
    assert!(
        d2_log["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "made.in_d2"),
        "{d2_log}"
    );
    let (_, d1_log) = admin(both, "GET", "/admin/v1/events", None).await;
    assert_eq!(
        d1_log["items"].as_array().map(|a| a.len()),
        Some(0),
        "{d1_log}"
    );
    // Listings stay in their domain.
    let (_, l1) = admin(both, "GET", "/admin/v1/channels", None).await;
    let (_, l2) = admin_as(both, Some("d2"), "GET", "/admin/v1/channels", None).await;
    assert_eq!(
        (l1["total"].as_i64(), l2["total"].as_i64()),
        (Some(1), Some(1))
    );
    // A domain the node does not serve.
    let (status, err) = admin_as(only2, Some("d1"), "GET", "/admin/v1/channels", None).await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "domain_not_served");
    // Each domain's node list: node 1 is in both.
    let (_, n2) = admin_as(both, Some("d2"), "GET", "/admin/v1/nodes", None).await;
    let ids: Vec<&str> = n2["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["node_id"].as_str())
        .collect();
    assert!(ids.contains(&"node-1") && ids.contains(&"node-2"), "{n2}");
    // A change in d2 made through node 2 reaches node 1.
    let (status, _) = admin(
        only2,
        "PATCH",
        &format!("/admin/v1/channels/{}", id_of(&c2)),
        Some(json!({"webhook_scenario": "response_content = \"d2-v2\";"})),
    )
    .await;
    assert_eq!(status, 200);
    answers(both, &token_of(&c2), (200, "d2-v2"), PROPAGATION).await;
}
