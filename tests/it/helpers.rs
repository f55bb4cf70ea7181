//! `spawn_app`: the real gateway per test, on a random port, with its own database.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use awc::Client;
use diesel::Connection;
use diesel::connection::SimpleConnection;
use oktell_gateway::app::Application;
use oktell_gateway::config::Config;
use serde_json::{Value, json};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Removes what a test's database left behind, even when the test fails.
enum Cleanup {
    Dir(PathBuf),
    Schema(String),
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        match self {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Schema(schema) => {
                if let Ok(mut conn) = diesel::PgConnection::establish(PG_URL) {
                    let _ = conn.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
                }
            }
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub metrics_port: Option<u16>,
    pub client: Client,
    /// The node's shared state, for tests that drive internal jobs (e.g. the purge).
    pub state: actix_web::web::Data<oktell_gateway::http::state::AppState>,
    server: actix_web::dev::ServerHandle,
    _cleanup: Cleanup,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let handle = self.server.clone();
        actix_web::rt::spawn(async move { handle.stop(false).await });
        // The node's actors and tasks (and their database connections) go too: a
        // test run starts dozens of nodes against one PostgreSQL.
        self.state.stop_background();
    }
}

/// Says that a test skipped, where it cannot be missed: straight to the process's
/// stderr, past the test harness's output capture (which hides `eprintln!` of passing
/// tests), so `cargo test` shows it between the result lines. Under CI nothing may skip
/// (callers panic there instead).
pub fn skip_loudly(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {what} ***");
}

/// Is PostgreSQL there? Under CI it must be; elsewhere its tests skip, loudly.
pub fn postgres_available() -> bool {
    match diesel::PgConnection::establish(PG_URL) {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but PostgreSQL at {PG_URL} does not answer: {e}");
            }
            skip_loudly(&format!(
                "PostgreSQL test: no server at {PG_URL} ({e}); start one to run it"
            ));
            false
        }
    }
}

pub fn test_config() -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        admin_token: Some(ADMIN_TOKEN.into()),
        workers: 2,
        scenario_threads: 2,
        db_pool_size: 4,
        access_log: false,
        ..Config::default()
    }
}

pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |_| {}).await
}

/// Starts a gateway; `None` only for PostgreSQL outside CI when no server answers.
pub async fn spawn_app_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Option<TestApp> {
    spawn_app_logging_to(backend, tweak, None).await
}

/// What a gateway logged (JSON lines), for tests that check the logs.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// The lines logged so far, parsed.
    pub fn lines(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}")))
            .collect()
    }

    /// Everything logged, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A gateway whose logs (every level, JSON, synchronous) go to the returned capture.
pub async fn spawn_app_logged(
    backend: Backend,
    tweak: impl FnOnce(&mut Config),
) -> Option<(TestApp, LogCapture)> {
    let capture = LogCapture::default();
    let logger = oktell_gateway::logging::to_writer(
        oktell_gateway::logging::format::Shape::Json,
        capture.clone(),
    );
    let app = spawn_app_logging_to(backend, tweak, Some(logger)).await?;
    Some((app, capture))
}

async fn spawn_app_logging_to(
    backend: Backend,
    tweak: impl FnOnce(&mut Config),
    logger: Option<slog::Logger>,
) -> Option<TestApp> {
    let mut config = test_config();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let cleanup = match backend {
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join(format!("oktell-it-{id}"));
            config.data_dir = dir.clone();
            config.database_url = dir.join("gateway.db").display().to_string();
            Cleanup::Dir(dir)
        }
        Backend::Postgres => {
            if !postgres_available() {
                return None;
            }
            let schema = format!("it_{id}");
            let mut conn = diesel::PgConnection::establish(PG_URL).expect("connect to PostgreSQL");
            conn.batch_execute(&format!("CREATE SCHEMA {schema}"))
                .expect("create test schema");
            config.database_url = format!("{PG_URL}?options=-csearch_path%3D{schema}");
            let dir = std::env::temp_dir().join(format!("oktell-it-{id}"));
            config.data_dir = dir;
            Cleanup::Schema(schema)
        }
    };
    tweak(&mut config);
    let logger = if let Some(logger) = logger {
        logger
    } else if std::env::var("IT_LOG").is_ok() {
        oktell_gateway::logging::build(&config)
    } else {
        oktell_gateway::logging::discard()
    };
    let app = Application::build(config, logger)
        .await
        .expect("gateway starts");
    let port = app.port();
    let metrics_port = app.metrics_port();
    let server = app.server_handle();
    let (server_future, state) = app.into_parts();
    actix_web::rt::spawn(server_future);
    Some(TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        metrics_port,
        state,
        client: Client::builder().timeout(Duration::from_secs(60)).finish(),
        server,
        _cleanup: cleanup,
    })
}

/// A response read whole.
pub struct Reply {
    pub status: u16,
    pub headers: awc::http::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// The `error.code` of a JSON error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl TestApp {
    /// The PostgreSQL schema of this app, if it runs on PostgreSQL.
    pub fn pg_schema(&self) -> Option<&str> {
        match &self._cleanup {
            Cleanup::Schema(s) => Some(s),
            Cleanup::Dir(_) => None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn send(&self, req: awc::ClientRequest, body: Option<Vec<u8>>) -> Reply {
        let mut res = match body {
            Some(b) => req.send_body(b).await,
            None => req.send().await,
        }
        .expect("request is answered");
        let body = res
            .body()
            .limit(64 * 1024 * 1024)
            .await
            .expect("body is read");
        Reply {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            body: body.to_vec(),
        }
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.admin_with_token(method, path, body, Some(ADMIN_TOKEN))
            .await
    }

    pub async fn admin_with_token(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Reply {
        let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, self.url(path));
        if let Some(token) = token {
            req = req.insert_header(("Authorization", format!("Bearer {token}")));
        }
        match body {
            Some(b) => {
                let req = req.insert_header(("Content-Type", "application/json"));
                self.send(req, Some(b.to_string().into_bytes())).await
            }
            None => self.send(req, None).await,
        }
    }

    /// Creates a channel and returns its JSON (with `id` and `token`).
    pub async fn create_channel(&self, body: Value) -> Value {
        let r = self.admin("POST", "/admin/v1/channels", Some(body)).await;
        assert_eq!(r.status, 201, "create channel: {}", r.text());
        r.json()
    }

    /// Creates a channel through another client and base URL (e.g. over TLS).
    pub async fn create_channel_over(&self, client: &Client, base: &str, body: Value) -> Value {
        let mut res = client
            .post(format!("{base}/admin/v1/channels"))
            .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
            .send_json(&body)
            .await
            .expect("admin answers");
        assert_eq!(res.status(), 201);
        res.json().await.expect("channel JSON")
    }

    /// `/metrics` as an operator scrapes it (with the admin token: all series).
    pub async fn metrics(&self) -> Reply {
        let req = self
            .client
            .get(self.url("/metrics"))
            .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")));
        self.send(req, None).await
    }

    /// A public channel with a webhook scenario.
    pub async fn public_channel(&self, code: &str, wait: bool, scenario: &str) -> Value {
        self.create_channel(json!({
            "code": code,
            "kind": "public",
            "wait_for_completion": wait,
            "webhook_scenario": scenario,
        }))
        .await
    }

    pub async fn webhook(&self, token: &str, method: &str, tail: &str, body: &str) -> Reply {
        let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
        let req = self
            .client
            .request(method, self.url(&format!("/api/token/v1/{token}{tail}")));
        self.send(req, Some(body.as_bytes().to_vec())).await
    }

    /// Makes the channel's actor panic (fault injection) and waits until its
    /// supervisor restarted it.
    pub async fn panic_channel_actor(&self, id: &str) {
        let r = self
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
            || async { self.runtime(id).await["restarts"] == 1 },
        )
        .await;
    }

    /// The channel's live counters on this node.
    pub async fn runtime(&self, id: &str) -> Value {
        let r = self
            .admin("GET", &format!("/admin/v1/channels/{id}"), None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["runtime"].clone()
    }
}

/// Polls `check` until it holds or the deadline passes (no sleeps as synchronisation).
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn token_of(channel: &Value) -> String {
    channel["token"].as_str().expect("token").to_string()
}

pub fn id_of(channel: &Value) -> String {
    channel["id"].as_str().expect("id").to_string()
}

/// Runs an async test body against SQLite and PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use $crate::helpers::{Backend, spawn_app};

                #[actix_web::test]
                async fn sqlite() {
                    let app = spawn_app(Backend::Sqlite).await.expect("sqlite app");
                    super::$name(app).await;
                }

                #[actix_web::test]
                async fn postgres() {
                    if let Some(app) = spawn_app(Backend::Postgres).await {
                        super::$name(app).await;
                    }
                }
            }
        )*
    };
}

/// The real binary, serving on a free port with SQLite in a temp folder (for tests of
/// process behaviour: signals, exit codes). Killed and cleaned up on drop.
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub base: String,
    pub port: u16,
    dir: PathBuf,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child process being started: killed and reaped when dropped, unless taken.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    /// Its exit status, once it has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    fn take(&mut self) -> std::process::Child {
        self.0.take().expect("the child is there until taken")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl GatewayProcess {
    pub async fn start() -> GatewayProcess {
        let dir =
            std::env::temp_dir().join(format!("oktell-proc-{}", uuid::Uuid::new_v4().simple()));
        GatewayProcess::start_in(&dir, &[]).await
    }

    /// Starts on a given data folder (kept across restarts), with extra flags.
    pub async fn start_in(dir: &std::path::Path, extra: &[String]) -> GatewayProcess {
        GatewayProcess::start_with(dir, extra, &[], false).await
    }

    /// Like `start_in`, with everything the process writes to stderr (its log) kept
    /// in `stderr.log` of the data folder ([`GatewayProcess::log_text`]).
    pub async fn start_logging(dir: &std::path::Path, extra: &[String]) -> GatewayProcess {
        GatewayProcess::start_with(dir, extra, &[], true).await
    }

    /// What the process logged so far (`start_logging`).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Starts through `wrapper`, a command that execs the gateway (e.g. `prlimit
    /// --nofile=256:256`), so that the child's pid is the gateway's.
    pub async fn start_wrapped(
        dir: &std::path::Path,
        extra: &[String],
        wrapper: &[&str],
    ) -> GatewayProcess {
        GatewayProcess::start_with(dir, extra, wrapper, false).await
    }

    async fn start_with(
        dir: &std::path::Path,
        extra: &[String],
        wrapper: &[&str],
        log: bool,
    ) -> GatewayProcess {
        let dir = dir.to_path_buf();
        // The port is picked by binding :0 and letting it go, so another test may take
        // it before the child binds it. The child is known by its node id: a gateway
        // that answers with another id is someone else's. A child that exits at start
        // because the port was taken is started again on a new port; any other exit
        // fails the test with what the child wrote.
        let given_id = extra
            .iter()
            .position(|a| a == "--node-id")
            .map(|i| extra.get(i + 1).cloned().unwrap_or_default());
        let own_id = given_id.is_none();
        let node_id = given_id.unwrap_or_else(|| format!("test-{}", uuid::Uuid::new_v4().simple()));
        assert!(
            !extra.iter().any(|a| a.starts_with("--node-id=")),
            "pass --node-id and its value as two arguments (the start checks the id)"
        );
        let binary = env!("CARGO_BIN_EXE_oktell-gateway");
        let client = Client::default();
        // What the child writes to stderr: its log when asked for, else a temp file
        // that is removed once it runs.
        let stderr_path = if log {
            std::fs::create_dir_all(&dir).expect("data folder");
            dir.join("stderr.log")
        } else {
            std::env::temp_dir().join(format!(
                "oktell-start-{}.log",
                uuid::Uuid::new_v4().simple()
            ))
        };
        for attempt in 1..=3 {
            let stderr = std::process::Stdio::from(
                std::fs::File::create(&stderr_path).expect("stderr file"),
            );
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut command = match wrapper.split_first() {
                Some((first, rest)) => {
                    let mut c = std::process::Command::new(first);
                    c.args(rest).arg(binary);
                    c
                }
                None => std::process::Command::new(binary),
            };
            let child = command
                .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
                .args(["--data-dir", &dir.display().to_string()])
                .args(["--admin-token", ADMIN_TOKEN])
                .args(if own_id {
                    vec!["--node-id".to_string(), node_id.clone()]
                } else {
                    vec![]
                })
                .args(if extra.iter().any(|a| a == "--log-level") {
                    &[][..]
                } else {
                    &["--log-level", "warn"][..]
                })
                .args(extra)
                .stderr(stderr)
                .spawn()
                .expect("gateway starts");
            // Killed if the start fails or is cancelled (say, a cluster start whose
            // other node failed): no gateway outlives its test.
            let mut child = KillOnDrop(Some(child));
            let base = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = child.exited() {
                    let said = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                    if attempt < 3 && said.contains("Address already in use") {
                        eprintln!(
                            "port {port} was taken before the gateway bound it: trying another"
                        );
                        break;
                    }
                    panic!(
                        "the gateway exited at start ({status}); args: {extra:?}; stderr:\n{said}"
                    );
                }
                if GatewayProcess::answers_as(&client, &base, &node_id).await {
                    if !log {
                        let _ = std::fs::remove_file(&stderr_path);
                    }
                    return GatewayProcess {
                        child: child.take(),
                        base,
                        port,
                        dir,
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for: the gateway answers"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        unreachable!("three starts tried")
    }

    /// Answers `/healthz` and names itself `node_id` (not another test's gateway that
    /// took the port first).
    async fn answers_as(client: &Client, base: &str, node_id: &str) -> bool {
        let healthy = client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if !healthy {
            return false;
        }
        let Ok(mut res) = client
            .get(format!("{base}/admin/v1/node"))
            .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
            .send()
            .await
        else {
            return false;
        };
        let node: Value = res.json().limit(1 << 20).await.unwrap_or_default();
        node["node_id"] == node_id
    }

    /// Creates a channel through the admin API; returns its JSON.
    pub async fn create_channel(&self, body: Value) -> Value {
        let mut res = Client::default()
            .post(format!("{}/admin/v1/channels", self.base))
            .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
            .send_json(&body)
            .await
            .expect("admin answers");
        assert_eq!(res.status(), 201);
        res.json().await.expect("channel JSON")
    }

    /// SIGKILL: no shutdown, no flush, nothing released.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit; its exit code.
    pub async fn exit_code(&mut self) -> Option<i32> {
        let mut status = None;
        eventually("the gateway exits", Duration::from_secs(30), || {
            status = self.child.try_wait().ok().flatten();
            let done = status.is_some();
            async move { done }
        })
        .await;
        status.and_then(|s| s.code())
    }
}

/// The resident memory of a process (`VmRSS`), in KiB; 0 when it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A sample of a gateway's `/metrics` at `base` (with the admin token: every series);
/// -1 when the series is not there.
pub async fn process_metric(base: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut res = awc::Client::default()
        .get(format!("{base}/metrics"))
        .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
        .send()
        .await
        .expect("metrics answer");
    let body = res.body().limit(16 << 20).await.unwrap_or_default();
    crate::ops::sample(&String::from_utf8_lossy(&body), name, labels).unwrap_or(-1.0)
}
