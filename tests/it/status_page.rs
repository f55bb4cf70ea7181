//! The status page in a real headless browser (Debian's chromium), driven over the
//! Chrome DevTools Protocol with the websocket client the other tests use: sign in by
//! typing the token, see channels with their counters and sparklines, the eventing
//! panel, a channel's detail view (executions with the failing line, a dry run), and
//! markup in bodies, headers and log lines shown as text under a policy without
//! `unsafe-inline`.
//!
//! With `OKTELL_SCREENSHOT_DIR` set, the tests leave PNG screenshots of what they saw
//! there (to look at the page; nothing is compared).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, eventually, id_of, spawn_app_with, token_of};
use crate::receiver::Receiver;

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

    /// Saves the whole page as `<OKTELL_SCREENSHOT_DIR>/<name>.png`, when that is set.
    async fn screenshot(&mut self, name: &str) {
        let Ok(dir) = std::env::var("OKTELL_SCREENSHOT_DIR") else {
            return;
        };
        use base64::Engine;
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["result"]["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG");
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png)
            .expect("screenshot written");
    }

    /// Opens the status page and signs in by typing the token.
    async fn sign_in(&mut self, app: &TestApp) {
        self.call("Page.navigate", json!({"url": app.url("/admin/")}))
            .await;
        self.wait_for(
            "the sign-in form shows",
            "!!document.querySelector('#login:not([hidden]) #token')",
            json!(true),
        )
        .await;
        self.eval(&format!(
            "document.querySelector('#token').value = '{ADMIN_TOKEN}'; document.querySelector('#signin').click(); true"
        ))
        .await;
        self.wait_for(
            "signed in",
            "!document.querySelector('#status').hidden || !document.querySelector('#detail').hidden",
            json!(true),
        )
        .await;
    }
}

/// A headless chromium showing about:blank, and its page; `None` (skipped loudly) when
/// no chromium is installed outside CI.
async fn browser() -> Option<(Browser, Page)> {
    let chrome = chromium()?;
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
            "--window-size=1400,1000",
        ])
        .arg(format!("--remote-debugging-port={port}"))
        .arg(format!("--user-data-dir={}", dir.display()))
        .arg("about:blank")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromium starts");
    let browser = Browser { child, dir };

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
    Some((browser, Page { ws, next_id: 0 }))
}

/// A gateway sampling traffic every 200 ms (the page's sparklines fill at once).
async fn app() -> TestApp {
    spawn_app_with(Backend::Sqlite, |c| {
        c.status_sample_ms = 200;
        c.allow_private_targets = true;
        // A failed delivery waits a minute: it stays pending while the test looks.
        c.delivery_retry_delays_ms = vec![60_000];
        c.delivery_poll_ms = 50;
    })
    .await
    .expect("SQLite gateway")
}

/// Fails on line 4 when the body says so; answers `ok <body>` otherwise.
const FAILS_ON_DEMAND: &str = "let body = startparam(4);
log(\"got \" + body);
if body.contains(\"fail\") {
    throw \"asked to fail\";
}
response_content = \"ok \" + body;";

async fn history_of(app: &TestApp, id: &str) -> Value {
    let r = app
        .admin(
            "GET",
            &format!("/admin/v1/stats/history?channel_id={id}"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn sum(v: &Value) -> u64 {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).sum())
        .unwrap_or_default()
}

#[actix_web::test]
async fn status_page_signs_in_and_shows_live_channels() {
    let app = app().await;
    let channel = app
        .public_channel("shown-in-browser", true, FAILS_ON_DEMAND)
        .await;
    let (id, token) = (id_of(&channel), token_of(&channel));
    for _ in 0..3 {
        assert_eq!(app.webhook(&token, "POST", "", "hi").await.status, 200);
    }
    assert_eq!(app.webhook(&token, "POST", "", "fail").await.status, 500);
    // The sampler keeps them in its buckets (not only in the one still filling).
    eventually(
        "the sampler took the requests and the error",
        Duration::from_secs(10),
        || async {
            let h = history_of(&app, &id).await;
            let c = &h["channels"][0];
            sum(&c["requests"]) == 4 && sum(&c["errors"]) == 1
        },
    )
    .await;
    // Eventing: one subscriber failing (its delivery pending for a minute), one gone
    // (disabled at once).
    let failing = Receiver::start(|_| (500, "down".into()));
    let gone = Receiver::start(|_| (410, "gone".into()));
    let feed = app
        .create_channel(json!({"code": "feed", "kind": "eventing"}))
        .await;
    for target in [&failing.url, &gone.url] {
        let req = app
            .client
            .post(app.url(&format!("/api/token/v1/{}/subscribe", token_of(&feed))))
            .insert_header(("Content-Type", "application/json"));
        let r = app
            .send(
                req,
                // Not `subscription.disabled`: the gone one's event adds no delivery.
                Some(
                    json!({"url": target, "event_types": ["call.*"]})
                        .to_string()
                        .into_bytes(),
                ),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = app
        .admin(
            "POST",
            "/admin/v1/events",
            Some(json!({"type": "call.ended", "data": {}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    eventually(
        "one subscription failing, one disabled, a delivery pending",
        Duration::from_secs(10),
        || async {
            let e = app
                .admin("GET", "/admin/v1/stats/eventing", None)
                .await
                .json();
            e["subscriptions"]["failing"] == 1
                && e["subscriptions"]["disabled"] == 1
                && e["outbox"]["pending"] == 1
        },
    )
    .await;

    let Some((_browser, mut page)) = browser().await else {
        return;
    };
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
    page.sign_in(&app).await;
    const REQUESTS: &str = "(() => { const r = document.querySelector('tr[data-code=\"shown-in-browser\"] td.requests'); return r ? r.textContent : null })()";
    page.wait_for(
        "the channel shows with its request count",
        REQUESTS,
        json!("4"),
    )
    .await;
    // More traffic shows up on the next refresh.
    app.webhook(&token, "POST", "", "more").await;
    page.wait_for("the counter moves", REQUESTS, json!("5"))
        .await;
    // Its sparkline: five requests (a line) and one error (a bar).
    page.wait_for(
        "the sparkline counts the requests and the error",
        "(() => { const s = document.querySelector('tr[data-code=\"shown-in-browser\"] svg.spark'); return s && [s.dataset.requests, s.dataset.errors, !!s.querySelector('polyline.requests'), s.querySelectorAll('rect.errors').length] })()",
        json!(["5", "1", true, 1]),
    )
    .await;
    // The eventing channel got no traffic: an empty sparkline.
    assert_eq!(
        page.eval("document.querySelector('tr[data-code=\"feed\"] svg.spark').dataset.requests")
            .await,
        "0"
    );
    assert_eq!(
        page.eval("document.querySelector('#c-channels').textContent")
            .await,
        "2"
    );
    // The eventing panel: the pending delivery, the failing and the disabled subscription.
    page.wait_for(
        "the eventing panel shows the outbox and the subscriptions",
        "['e-pending', 'e-failing', 'e-disabled', 'e-total'].map((id) => document.getElementById(id).textContent).concat([document.querySelectorAll('#attention tr').length])",
        json!(["1", "1", "1", "2", 2]),
    )
    .await;
    assert_eq!(
        page.eval("[...document.querySelectorAll('#attention tr')].map((r) => [r.children[1].textContent, r.children[3].textContent])")
            .await,
        json!([["feed", "disabled"], ["feed", "failing"]])
    );
    let oldest = page
        .eval("document.getElementById('e-oldest').textContent")
        .await;
    assert!(
        oldest.as_str().is_some_and(|s| s.ends_with(" s")),
        "{oldest}"
    );
    let footer = page
        .eval("document.querySelector('#footer').textContent")
        .await;
    let footer = footer.as_str().unwrap_or_default();
    assert!(
        !footer.contains("once webhook subscriptions land"),
        "{footer}"
    );
    assert!(footer.contains("/admin/v1/subscriptions/{id}"), "{footer}");
    // The node registry: this node, up.
    page.wait_for(
        "this node is listed as up",
        "(() => { const r = document.querySelector('#nodes tr'); return r ? r.children[0].textContent.endsWith('(this node)') && r.children[1].textContent : null })()",
        json!("up"),
    )
    .await;
    page.screenshot("status-list").await;
}

#[actix_web::test]
async fn channel_detail_lists_failures_with_their_line_and_dry_runs() {
    let app = app().await;
    let channel = app.public_channel("orders", true, FAILS_ON_DEMAND).await;
    let token = token_of(&channel);
    assert_eq!(app.webhook(&token, "POST", "", "hi").await.status, 200);
    assert_eq!(app.webhook(&token, "POST", "", "fail").await.status, 500);

    let Some((_browser, mut page)) = browser().await else {
        return;
    };
    page.sign_in(&app).await;
    // From the list to the channel's view, by its link.
    page.wait_for(
        "the channel is listed",
        "!!document.querySelector('tr[data-code=\"orders\"] a')",
        json!(true),
    )
    .await;
    page.eval("document.querySelector('tr[data-code=\"orders\"] a').click(); true")
        .await;
    page.wait_for(
        "the detail view shows the channel",
        "!document.querySelector('#detail').hidden && document.querySelector('#d-code').textContent",
        json!("orders"),
    )
    .await;
    // The failed run (history = errors records only it), with its line.
    const FAILED: &str = "(() => { const r = [...document.querySelectorAll('#d-executions tr')]; return r.map((t) => [t.dataset.outcome, t.classList.contains('failed'), t.querySelector('td.where') && t.querySelector('td.where').textContent.startsWith('line 4,')]) })()";
    page.wait_for(
        "the failed run is listed, highlighted, with its line",
        FAILED,
        json!([["error", true, true]]),
    )
    .await;
    page.wait_for(
        "the sparkline shows the two requests",
        "document.querySelector('#d-spark svg').dataset.requests",
        json!("2"),
    )
    .await;
    // Opened: its input, log line, and the script around line 4 with that line marked.
    page.eval("document.querySelector('#d-executions tr[data-outcome=\"error\"]').click(); true")
        .await;
    page.wait_for(
        "the execution opens",
        "(() => { const d = document.querySelector('#d-execution'); return !d.hidden && [d.textContent.includes('asked to fail'), d.textContent.includes('[info] got fail'), (d.querySelector('pre.script .hit') || {}).textContent] })()",
        json!([true, true, "   4      throw \"asked to fail\";"]),
    )
    .await;
    page.screenshot("status-detail").await;

    // A dry run from the form: the reply, the log line.
    page.eval("document.querySelector('#dr-body').value = 'from the form'; document.querySelector('#dr-run').click(); true")
        .await;
    page.wait_for(
        "the dry run answers",
        "(() => { const r = document.querySelector('#dr-result'); return !r.hidden && [r.firstChild.dataset.ok, r.textContent.includes('ok from the form'), r.textContent.includes('[info] got from the form')] })()",
        json!(["true", true, true]),
    )
    .await;
    // A draft that does not compile: the error with its line, from the form.
    page.eval("document.querySelector('#dr-script').value = 'let a = 1;\\nlet = ;'; document.querySelector('#dr-run').click(); true")
        .await;
    page.wait_for(
        "the draft's syntax error shows",
        "(() => { const r = document.querySelector('#dr-result'), e = document.querySelector('#dr-error'); return (!r.hidden && r.textContent.includes('line 2')) || e.textContent.includes('line 2') })()",
        json!(true),
    )
    .await;
    page.screenshot("status-dry-run").await;
    // Dry runs are not recorded: still the one failed run.
    assert_eq!(page.eval(FAILED).await, json!([["error", true, true]]));
}

const INJECTED: &str = r#"<img src=x onerror="window.__pwned=1">"#;

#[actix_web::test]
async fn markup_from_requests_and_scripts_is_shown_as_text() {
    let app = app().await;
    // The page and its files: a policy without unsafe-inline, types, GET only.
    let index = app.send(app.client.get(app.url("/admin/")), None).await;
    let csp = index.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("style-src 'self'"),
        "{csp}"
    );
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert!(!index.text().contains("<script>") && !index.text().contains("style="));
    for (path, content_type) in [
        ("/admin/status.js", "text/javascript; charset=utf-8"),
        ("/admin/status.css", "text/css; charset=utf-8"),
    ] {
        let r = app.send(app.client.get(app.url(path)), None).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type").as_deref(), Some(content_type));
        assert_eq!(
            r.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
        let r = app.send(app.client.post(app.url(path)), None).await;
        assert_eq!(
            (r.status, r.header("allow").as_deref()),
            (405, Some("GET")),
            "{path}"
        );
    }

    // Every run recorded; the script logs the body and a header, echoes the body with a
    // header of its own, and fails when asked (its message carries the body).
    let channel = app
        .create_channel(json!({
            "code": "injected", "kind": "public", "wait_for_completion": true, "history": "all",
            "webhook_scenario": "let body = startparam(4);
let headers = parse_json(startparam(5));
log(\"body \" + body);
log(\"header \" + headers[\"x-evil\"]);
if body.contains(\"fail\") { throw \"failed on \" + body; }
response_headers = #{ \"Content-Type\": \"text/html\", \"X-Echo\": body };
response_content = body;",
        }))
        .await;
    let token = token_of(&channel);
    for body in [INJECTED.to_string(), format!("fail {INJECTED}")] {
        let req = app
            .client
            .post(app.url(&format!("/api/token/v1/{token}?q=%3Cimg%20src%3Dx%3E")))
            .insert_header(("X-Evil", INJECTED));
        let r = app.send(req, Some(body.into_bytes())).await;
        assert!(
            r.status == 200 || r.status == 500,
            "{} {}",
            r.status,
            r.text()
        );
    }

    let Some((_browser, mut page)) = browser().await else {
        return;
    };
    page.sign_in(&app).await;
    page.eval(&format!(
        "location.hash = '#channel={}'; true",
        id_of(&channel)
    ))
    .await;
    page.wait_for(
        "both runs are listed",
        "document.querySelectorAll('#d-executions tr[data-eid]').length",
        json!(2),
    )
    .await;
    // The failed one: its message in the list, then everything it recorded.
    let listed = page
        .eval("document.querySelector('#d-executions tr[data-outcome=\"error\"] td.where').textContent")
        .await;
    assert!(
        listed.as_str().is_some_and(|s| s.contains(INJECTED)),
        "{listed}"
    );
    for outcome in ["error", "ok"] {
        page.eval(&format!(
            "document.querySelector('#d-executions tr[data-outcome=\"{outcome}\"]').click(); true"
        ))
        .await;
        page.wait_for(
            "the execution opens, the markup as text",
            &format!(
                "(() => {{ const d = document.querySelector('#d-execution'); const row = document.querySelector('#d-executions tr.selected'); return !d.hidden && row.dataset.outcome === '{outcome}' && d.dataset.eid === row.dataset.eid && d.textContent.includes('x-evil: ' + {injected}) && d.textContent.includes('[info] body ') && d.textContent.includes('[info] header ' + {injected}) }})()",
                injected = serde_json::to_string(INJECTED).unwrap()
            ),
            json!(true),
        )
        .await;
    }
    // The reply of the run that succeeded: its body and its header, as text.
    let shown = page
        .eval("document.querySelector('#d-execution').textContent")
        .await;
    let shown = shown.as_str().unwrap_or_default().to_lowercase();
    assert!(shown.contains(&format!("x-echo: {INJECTED}")), "{shown}");
    // A dry run with the markup: the reply shown as text too.
    page.eval(&format!(
        "document.querySelector('#dr-body').value = {}; document.querySelector('#dr-run').click(); true",
        serde_json::to_string(INJECTED).unwrap()
    ))
    .await;
    page.wait_for(
        "the dry run answers",
        &format!(
            "(() => {{ const r = document.querySelector('#dr-result'); return !r.hidden && r.textContent.includes({}) }})()",
            serde_json::to_string(INJECTED).unwrap()
        ),
        json!(true),
    )
    .await;
    page.screenshot("status-injection").await;
    // Nothing ran and no element was made from the markup.
    assert_eq!(
        page.eval("[typeof window.__pwned, document.querySelectorAll('img').length, document.querySelectorAll('[onerror]').length]")
            .await,
        json!(["undefined", 0, 0])
    );
}
