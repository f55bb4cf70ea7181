//! Broadcast amplification: 1 MiB broadcast four times to 1,000 websocket sessions that
//! never read. A broadcast's frame is stored once and shared by its sessions, the node's
//! outbound bytes stay within `ws_node_max_outbound_bytes`, the slow sessions are closed,
//! and the process's memory comes back once they are gone (the real binary, its RSS).

use std::time::Duration;

use serde_json::json;
use tokio::net::TcpSocket;

use crate::helpers::{GatewayProcess, eventually, rss_kib, token_of};

async fn metric(base: &str, name: &str) -> f64 {
    crate::helpers::process_metric(base, name, &[]).await
}

type Client = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A websocket client with a small receive buffer, that the test never reads from.
async fn silent_client(port: u16, token: &str) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    let url = format!("ws://127.0.0.1:{port}/ws/token/v1/{token}");
    let (ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("upgrade");
    ws
}

#[actix_web::test]
async fn a_broadcast_storm_to_non_reading_sessions_stays_in_budget() {
    let dir = std::env::temp_dir().join(format!("oktell-storm-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let budget: u64 = 64 * 1024 * 1024;
    let config = dir.join("storm.toml");
    std::fs::write(
        &config,
        format!("ws_node_max_outbound_bytes = {budget}\nmax_body_bytes = 1100000\n"),
    )
    .unwrap();
    let gw =
        GatewayProcess::start_in(&dir, &["--config".into(), config.display().to_string()]).await;
    let pid = gw.child.id();
    let channel = gw
        .create_channel(json!({
            "code": "chat", "kind": "public", "wait_for_completion": true,
            "webhook_scenario": "response_content = `${ws_broadcast(startparam(4))}`;",
        }))
        .await;
    let token = token_of(&channel);
    let baseline = rss_kib(pid);
    let mut clients = Vec::new();
    for _ in 0..1000 {
        clients.push(silent_client(gw.port, &token).await);
    }
    eventually("1,000 sessions open", Duration::from_secs(30), || async {
        metric(&gw.base, "oktell_ws_sessions_node_open").await >= 1000.0
    })
    .await;
    let with_sessions = rss_kib(pid);
    let body = "x".repeat(1024 * 1024);
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish();
    let mut peak = 0;
    let mut peak_outbound = 0.0f64;
    for _ in 0..4 {
        let mut res = client
            .post(format!("{}/api/token/v1/{token}", gw.base))
            .send_body(body.clone())
            .await
            .expect("the webhook answers");
        assert_eq!(res.status(), 200);
        let _ = res.body().await;
        peak = peak.max(rss_kib(pid));
        peak_outbound = peak_outbound.max(metric(&gw.base, "oktell_ws_outbound_bytes").await);
    }
    peak_outbound = peak_outbound.max(metric(&gw.base, "oktell_ws_outbound_bytes").await);
    peak = peak.max(rss_kib(pid));
    eprintln!(
        "RSS {} MiB before the sessions, {} MiB with 1,000, peak {} MiB in the storm; outbound peak {:.1} MiB",
        baseline / 1024,
        with_sessions / 1024,
        peak / 1024,
        peak_outbound / 1048576.0
    );
    assert!(
        peak_outbound <= budget as f64,
        "outbound {peak_outbound} over the budget {budget}"
    );
    // Without sharing, four 1 MiB broadcasts to 1,000 sessions held ~4 GB.
    assert!(
        peak < with_sessions + 200 * 1024,
        "RSS grew from {with_sessions} KiB to {peak} KiB in the storm"
    );
    drop(clients);
    eventually("the sessions are gone", Duration::from_secs(60), || async {
        metric(&gw.base, "oktell_ws_sessions_node_open").await == 0.0
    })
    .await;
    eventually(
        "RSS back within 20% of where it was before the sessions",
        Duration::from_secs(60),
        || async {
            let now = rss_kib(pid);
            if std::env::var("IT_SHOW_RSS").is_ok() {
                eprintln!("RSS {now} KiB");
            }
            now <= baseline + baseline / 5
        },
    )
    .await;
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}
