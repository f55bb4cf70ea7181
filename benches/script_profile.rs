//! Where a scenario's time goes on a real payload: the JSON order webhook of
//! `benches/forward_run.sh` (a 2 KiB order of 35 items, summed, answered as JSON), run
//! step by step in the embedded Rhai runtime on this thread, with the gateway's
//! allocator. Prints microseconds per run of each cumulative step.
//!
//!   cargo bench --bench script_profile
//!
//! For an instruction profile, fewer runs of one step (1-based; 6 is the whole scenario):
//!
//!   SCRIPT_PROFILE_RUNS=2000 SCRIPT_PROFILE_STEP=6 valgrind --tool=callgrind \
//!       --callgrind-out-file=/tmp/cg.out target/release/deps/script_profile-*

use std::sync::Arc;
use std::time::{Duration, Instant};

use oktell_gateway::db::models::Channel;
use oktell_gateway::scenario::outgoing::{OutgoingClient, OutgoingSettings};
use oktell_gateway::scenario::rhai_runtime::{RhaiLimits, RhaiRuntime};
use oktell_gateway::scenario::{ChannelHost, NoHost, RunContext, ScenarioRuntime, StartParams};

// The allocator is the gateway's own (oktell_gateway::alloc: mimalloc, counting runs).

/// Runs per step (`SCRIPT_PROFILE_RUNS` overrides).
const RUNS: usize = 20_000;

fn order_body() -> String {
    let items: Vec<String> = (1..=35)
        .map(|i| {
            format!(
                r#"{{"sku":"SKU-{i:05}","name":"Item {i} of order 7","price":{}.{:02},"qty":{}}}"#,
                (i * 13) % 90 + 5,
                i % 100,
                i % 9 + 1
            )
        })
        .collect();
    format!(
        r#"{{"id":1007,"customer":"c-7","currency":"EUR","items":[{}]}}"#,
        items.join(",")
    )
}

/// µs per run of `run`, the best of 3 batches of `runs`.
fn best_of_3(runs: usize, mut run: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        for _ in 0..runs {
            run()?;
        }
        best = best.min(started.elapsed().as_secs_f64() * 1e6 / runs as f64);
    }
    Ok(best)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs: usize = match std::env::var("SCRIPT_PROFILE_RUNS") {
        Ok(v) => v.parse()?,
        Err(_) => RUNS,
    };
    let only_step: Option<usize> = match std::env::var("SCRIPT_PROFILE_STEP") {
        Ok(v) => Some(v.parse()?),
        Err(_) => None,
    };
    let outgoing = Arc::new(OutgoingClient::new(
        &OutgoingSettings {
            timeout: Duration::from_secs(1),
            max_response_bytes: 1024,
            max_connections_per_host: 1,
            idle_timeout: Duration::from_secs(15),
        },
        oktell_gateway::net::tls::client_config(None)?,
    ));
    // The defaults of config.default.toml.
    let rt = RhaiRuntime::new(
        &RhaiLimits {
            max_operations: 10_000_000,
            max_call_depth: 64,
            max_string_bytes: 4 * 1024 * 1024,
            max_array_len: 100_000,
            max_map_len: 100_000,
            budgets: Default::default(),
        },
        outgoing,
    );
    let channel = Arc::new(Channel {
        code: "order".into(),
        kind: "public".into(),
        wait_for_completion: true,
        enabled: true,
        version: 1,
        ..Channel::default()
    });
    let params: Arc<dyn StartParams> = Arc::new(vec![
        "{}".to_string(),
        "POST".into(),
        "http://127.0.0.1/api/token/v1/t".into(),
        order_body(),
        "{}".into(),
        "127.0.0.1".into(),
        "HTTP/1.1".into(),
    ]);
    let host: Arc<dyn ChannelHost> = Arc::new(NoHost);
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let steps = [
        ("empty script", ""),
        ("startparam(4)", "let b = startparam(4);"),
        ("+ parse_json", "let o = parse_json(startparam(4));"),
        (
            "+ for it in o.items {}",
            "let o = parse_json(startparam(4)); for it in o.items { }",
        ),
        (
            "+ total += it.price * it.qty",
            "let o = parse_json(startparam(4)); let total = 0.0; for it in o.items { total += it.price * it.qty; }",
        ),
        (
            "+ to_json reply (the whole scenario)",
            r#"let o = parse_json(startparam(4)); let total = 0.0; for it in o.items { total += it.price * it.qty; } response_content = to_json(#{ id: o.id, total: total, items: o.items.len() }); response_headers = #{"Content-Type": "application/json"};"#,
        ),
    ];
    println!(
        "{:40} {:>10} {:>11}",
        "step (cumulative)", "µs / run", "operations"
    );
    let steps_len = steps.len();
    for (i, (name, src)) in steps.into_iter().enumerate() {
        if only_step.is_some_and(|n| n != i + 1) {
            continue;
        }
        let compiled = rt.compile(src).map_err(|e| e.message)?;
        // As a channel handle keeps them: made once, not per run.
        let secrets = Arc::new(oktell_gateway::channels::run_secrets(&channel));
        let context = || RunContext {
            channel: &channel,
            secrets: &secrets,
            params: &*params,
            deadline: Instant::now() + Duration::from_secs(5),
            logger: &logger,
            host: &host,
        };
        let best = best_of_3(runs, || {
            rt.run(&compiled, context())
                .map(drop)
                .map_err(|e| e.to_string())
        })?;
        let operations = rt.last_operations().unwrap_or(0);
        println!("{name:40} {best:>10.2} {operations:>11}");
        // The whole scenario again as the gateway runs it by default: inline, on the
        // HTTP worker, within `scenario_inline_us` (INLINE_US, default 200; the bound is
        // checked by the clock every few operations).
        if i + 1 == steps_len {
            let bound = Duration::from_micros(
                std::env::var("INLINE_US")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(200),
            );
            // A run the machine held up past the bound (preempted, say) is stopped, as
            // in the gateway (which runs it again on the pool): counted, not fatal.
            let mut stopped = 0;
            let best = best_of_3(runs, || {
                match rt.run_inline(&compiled, context(), Instant::now() + bound) {
                    Ok(outcome) => outcome.map(drop).map_err(|e| e.to_string()),
                    Err(_) => {
                        stopped += 1;
                        Ok(())
                    }
                }
            })?;
            let label = format!("  the same, inline ({} µs bound)", bound.as_micros());
            println!(
                "{label:40} {best:>10.2} {operations:>11}   ({stopped} of {} stopped by the bound)",
                runs * 3
            );
        }
    }
    let body = order_body();
    let started = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(serde_json::from_str::<serde_json::Value>(&body)?);
    }
    println!(
        "{:40} {:>10.2}",
        "(reference: serde_json::Value parse)",
        started.elapsed().as_secs_f64() * 1e6 / runs as f64
    );
    Ok(())
}
