//! How fast and lean a node starts with many channels: fills a SQLite database with N
//! channels (default 100,000; `CHANNELS=n`), then measures, in the same process run,
//! a node start with 0 channels (baseline) and with N: start time and resident memory.
//! Run: `cargo bench --bench load_channels` (release build, a few seconds).

use std::time::Instant;

use diesel::Connection;
use oktell_gateway::app::Application;
use oktell_gateway::config::Config;
use oktell_gateway::db::models::Channel;
use oktell_gateway::db::{AnyConnection, Database, StoreError, channels};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn fill(db: &Database, n: usize) {
    let mut pooled = db.conn().expect("connection");
    let conn: &mut AnyConnection = &mut pooled;
    conn.transaction::<_, StoreError, _>(|c: &mut AnyConnection| {
        for i in 0..n {
            let channel = Channel {
                id: format!("00000000-0000-7000-8000-{i:012}"),
                domain: "default".into(),
                code: format!("ch-{i}"),
                kind: "public".into(),
                wait_for_completion: true,
                ws_role: String::new(),
                token: format!("token-{i:026}"),
                outgoing_url: "https://crm.example.com/api".into(),
                outgoing_token_primary: "primary".into(),
                outgoing_token_secondary: String::new(),
                webhook_scenario: "response_code = 200; response_content = startparam(4);".into(),
                websocket_scenario: String::new(),
                comment: String::new(),
                enabled: true,
                version: 1,
                created_at: 0,
                updated_at: 0,
                ws_hello: false,
                event_types: String::new(),
                guards: String::new(),
                history: "errors".into(),
            };
            channels::insert(
                c,
                &channel,
                &oktell_gateway::db::channel_versions::Save { note: "", keep: 50 },
            )?;
        }
        Ok(())
    })
    .expect("fill");
}

fn start(dir: &std::path::Path, name: &str) -> (f64, u64, usize) {
    let config = Config {
        listen: "127.0.0.1:0".into(),
        database_url: dir.join(name).display().to_string(),
        data_dir: dir.to_path_buf(),
        admin_token: Some("bench-admin-token-0123456789".into()),
        workers: 1,
        access_log: false,
        ..Config::default()
    };
    let system = actix_web::rt::System::new();
    system.block_on(async move {
        let before = rss_kib();
        let started = Instant::now();
        let app = Application::build(config, oktell_gateway::logging::discard())
            .await
            .expect("node starts");
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let served = app.state.registry.len();
        // Let the channel arbiter start every actor before reading memory.
        let probe = app.state.registry.handles().into_iter().last();
        if let Some(h) = probe {
            let _ = h
                .actor
                .ping
                .send(oktell_gateway::actors::handle::Ping)
                .await;
        }
        let grown = rss_kib().saturating_sub(before);
        drop(app);
        (ms, grown, served)
    })
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let n: usize = std::env::var("CHANNELS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = std::env::temp_dir().join(format!("oktell-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let empty = Database::connect(&dir.join("empty.db").display().to_string(), 1).expect("db");
    empty.migrate().expect("migrate");
    let full = Database::connect(&dir.join("full.db").display().to_string(), 1).expect("db");
    full.migrate().expect("migrate");
    let fill_started = Instant::now();
    fill(&full, n);
    eprintln!(
        "filled {n} channels in {:.1} s",
        fill_started.elapsed().as_secs_f64()
    );
    drop((empty, full));

    let (base_ms, base_kib, _) = start(&dir, "empty.db");
    let (ms, kib, served) = start(&dir, "full.db");
    let per_channel = (kib.saturating_sub(base_kib) as f64 * 1024.0) / n.max(1) as f64;
    println!("| node start | channels | start ms | RSS growth during start |");
    println!("|---|---:|---:|---:|");
    println!("| baseline | 0 | {base_ms:.0} | {base_kib} KiB |");
    println!("| loaded | {served} | {ms:.0} | {kib} KiB |");
    println!(
        "per channel: {per_channel:.0} bytes, {:.2} µs",
        (ms - base_ms).max(0.0) * 1000.0 / n.max(1) as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
}
