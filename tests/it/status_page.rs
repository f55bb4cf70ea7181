//! The status page in a real headless browser (Debian's chromium), driven over the
//! Chrome DevTools Protocol with the websocket client the other tests use: sign in by
//! typing the token, see a channel created through the API with a non-zero counter.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{ADMIN_TOKEN, Backend, spawn_app, token_of};

type Cdp =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn chromium() -> Option<&'static str> {
    let found = [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists());
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but no chromium is installed (.ci/run installs it)");
        }
        crate::helpers::skip_loudly(
            "browser test: no chromium at /usr/bin (apt-get install chromium)",
        );
    }
    found
}

/// A headless browser with remote debugging; killed on drop.
struct Browser {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Page {
    ws: Cdp,
    next_id: u64,
}

impl Page {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.ws
            .send(Message::text(
                json!({"id": id, "method": method, "params": params}).to_string(),
            ))
            .await
            .expect("CDP send");
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("CDP answers")
                .expect("CDP open")
                .expect("CDP frame");
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).expect("CDP JSON");
                if v["id"] == id {
                    return v;
                }
            }
        }
    }

    /// Polls an expression until it has the expected value (no sleeps as synchronisation).
    async fn wait_for(&mut self, what: &str, expr: &str, expected: Value) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.eval(expr).await;
            if got == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for: {what} (last: {got})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Evaluates a JavaScript expression in the page; its value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        r["result"]["result"]["value"].clone()
    }
}

#[actix_web::test]
async fn status_page_signs_in_and_shows_live_channels() {
    let Some(chrome) = chromium() else { return };
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let channel = app
        .public_channel("shown-in-browser", true, r#"response_content = "ok";"#)
        .await;
    for _ in 0..3 {
        assert_eq!(
            app.webhook(&token_of(&channel), "POST", "", "")
                .await
                .status,
            200
        );
    }

    let dir = std::env::temp_dir().join(format!("oktell-chrome-{}", uuid::Uuid::new_v4().simple()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(chrome)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--remote-debugging-port={port}"))
        .arg(format!("--user-data-dir={}", dir.display()))
        .arg("about:blank")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromium starts");
    let _browser = Browser { child, dir };

    // The page target's debugging websocket.
    let client = awc::Client::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let ws_url = loop {
        let found = match client
            .get(format!("http://127.0.0.1:{port}/json/list"))
            .send()
            .await
        {
            Ok(mut res) => res.json::<Value>().await.ok().and_then(|targets| {
                targets.as_array().and_then(|t| {
                    t.iter()
                        .find(|t| t["type"] == "page")
                        .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
                })
            }),
            Err(_) => None,
        };
        if let Some(url) = found {
            break url;
        }
        assert!(
            Instant::now() < deadline,
            "chromium's DevTools did not answer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .expect("CDP connects");
    let mut page = Page { ws, next_id: 0 };

    page.call("Page.navigate", json!({"url": app.url("/admin/")}))
        .await;
    page.wait_for(
        "the sign-in form shows",
        "!!document.querySelector('#login:not([hidden]) #token')",
        json!(true),
    )
    .await;
    // A wrong token is refused with a message.
    page.eval("document.querySelector('#token').value = 'wrong-token-wrong-token'; document.querySelector('#signin').click(); true").await;
    page.wait_for(
        "the wrong token is refused",
        "document.querySelector('#login-error').textContent.includes('refused')",
        json!(true),
    )
    .await;
    // Type the real one and sign in.
    page.eval(&format!(
        "document.querySelector('#token').value = '{ADMIN_TOKEN}'; document.querySelector('#signin').click(); true"
    ))
    .await;
    const REQUESTS: &str = "(() => { const r = document.querySelector('tr[data-code=\"shown-in-browser\"] td.requests'); return r ? r.textContent : null })()";
    page.wait_for(
        "the channel shows with its request count",
        REQUESTS,
        json!("3"),
    )
    .await;
    // More traffic shows up on the next refresh.
    app.webhook(&token_of(&channel), "POST", "", "").await;
    page.wait_for("the counter moves", REQUESTS, json!("4"))
        .await;
    assert_eq!(
        page.eval("document.querySelector('#c-channels').textContent")
            .await,
        "1"
    );
    // The node registry: this node, up.
    page.wait_for(
        "this node is listed as up",
        "(() => { const r = document.querySelector('#nodes tr'); return r ? r.children[0].textContent.endsWith('(this node)') && r.children[1].textContent : null })()",
        json!("up"),
    )
    .await;
}
