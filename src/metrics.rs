//! `/metrics`: the Prometheus text exposition, built at scrape time from the counters
//! the actors keep as plain atomics (so the hot paths pay one atomic add, never a label
//! lookup). The `prometheus` crate's model and text encoder do the formatting.
//!
//! Per channel (labels `domain`, `channel`, `kind`; cardinality bounded by the channels
//! this node serves) and per node. Names and meanings are listed in README "Operating".

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};

use crate::actors::stats::{CLOSE_CODES, DURATION_BUCKETS};
use crate::http::state::AppState;

struct Families {
    list: Vec<MetricFamily>,
}

impl Families {
    fn family(&mut self, name: &str, help: &str, kind: MetricType) -> &mut MetricFamily {
        let mut mf = MetricFamily::default();
        mf.set_name(name.to_string());
        mf.set_help(help.to_string());
        mf.set_field_type(kind);
        self.list.push(mf);
        let last = self.list.len() - 1;
        &mut self.list[last]
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

fn counter(mf: &mut MetricFamily, pairs: &[(&str, &str)], value: f64) {
    let mut c = Counter::default();
    c.set_value(value);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_counter(c);
    mf.mut_metric().push(m);
}

fn gauge(mf: &mut MetricFamily, pairs: &[(&str, &str)], value: f64) {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_gauge(g);
    mf.mut_metric().push(m);
}

fn load(a: &AtomicU64) -> f64 {
    a.load(Ordering::Relaxed) as f64
}

/// Channel state calls of this node's scenarios (`crate::scenario::channel_state`).
fn channel_state(f: &mut Families) {
    use crate::scenario::channel_state::{self as cs, Op, Outcome};
    let mf = f.family(
        "oktell_channel_state_calls_total",
        "Channel state calls of scripts by op (get, set, del, seen_before) and outcome (hit: found/written/deleted/seen; miss: absent/first; limit; error; recorded: a dry run's write, not performed).",
        MetricType::COUNTER,
    );
    for op in Op::ALL {
        for outcome in Outcome::ALL {
            counter(
                mf,
                &[("op", op.as_str()), ("outcome", outcome.as_str())],
                cs::calls_total(op, outcome) as f64,
            );
        }
    }
    counter(
        f.family(
            "oktell_channel_state_wait_seconds_total",
            "Time channel state calls waited on the database (their compute slot given away).",
            MetricType::COUNTER,
        ),
        &[],
        cs::wait_seconds_total(),
    );
    counter(
        f.family(
            "oktell_channel_state_expired_removed_total",
            "Expired channel state rows this node removed (on read, at a channel's key limit, by the sweep).",
            MetricType::COUNTER,
        ),
        &[],
        cs::expired_removed_total() as f64,
    );
}

/// The node's part in the cluster (`crate::cluster`).
fn cluster(f: &mut Families, state: &AppState) {
    let c = &state.cluster_stats;
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    for (name, help, value) in [
        (
            "oktell_cluster_listening",
            "1 while the notification listener is connected and caught up (PostgreSQL).",
            flag(c.listening.load(Ordering::Relaxed)),
        ),
        (
            "oktell_cluster_stale",
            "1 while the node is out of touch with the cluster for longer than max_staleness_s (token routes answer 503).",
            flag(state.freshness.is_stale()),
        ),
        (
            "oktell_cluster_notification_queue_usage",
            "pg_notification_queue_usage() as last read by the listener (0..1; a stuck listener anywhere fills it).",
            c.queue_usage_ppm.load(Ordering::Relaxed) as f64 / 1e6,
        ),
    ] {
        gauge(f.family(name, help, MetricType::GAUGE), &[], value);
    }
    let mf = f.family(
        "oktell_cluster_notes_total",
        "Notes from other nodes applied here, by kind.",
        MetricType::COUNTER,
    );
    counter(mf, &[("kind", "channel")], load(&c.notes_channel));
    counter(mf, &[("kind", "events")], load(&c.notes_events));
    counter(mf, &[("kind", "sessions")], load(&c.notes_sessions));
    for (name, help, value) in [
        (
            "oktell_cluster_listener_connects_total",
            "Connections made by the notification listener (the first, then reconnects).",
            load(&c.listener_connects),
        ),
        (
            "oktell_cluster_notes_overflowed_total",
            "Times the listener's note queue was full (a full reconcile stood in).",
            load(&c.notes_overflowed),
        ),
        (
            "oktell_cluster_reconciles_total",
            "Full comparisons of this node's channels with the database.",
            load(&c.reconciles),
        ),
        (
            "oktell_cluster_reconciled_channels_total",
            "Channels started, changed or retired here to match the database.",
            load(&c.reconciled_channels),
        ),
        (
            "oktell_cluster_went_stale_total",
            "Times the node lost touch with the cluster for longer than max_staleness_s.",
            load(&c.went_stale),
        ),
    ] {
        counter(f.family(name, help, MetricType::COUNTER), &[], value);
    }
}

/// The execution history's queue and writer (`crate::executions`).
fn executions(f: &mut Families, state: &AppState) {
    let Some(log) = state.dispatcher.executions() else {
        return;
    };
    let st = &log.stats;
    for (name, help, value) in [
        (
            "oktell_executions_queued_total",
            "Scenario runs recorded and queued for the executions writer.",
            load(&st.queued),
        ),
        (
            "oktell_executions_dropped_total",
            "Scenario runs not recorded because the executions queue was full (the writer could not keep up).",
            load(&st.dropped),
        ),
        (
            "oktell_executions_written_total",
            "Execution records stored.",
            load(&st.written),
        ),
        (
            "oktell_executions_write_failed_total",
            "Execution records lost because storing their batch failed.",
            load(&st.write_errors),
        ),
        (
            "oktell_executions_trimmed_total",
            "Execution records deleted by the per-channel count bound, age, or a channel's deletion.",
            load(&st.trimmed),
        ),
    ] {
        counter(f.family(name, help, MetricType::COUNTER), &[], value);
    }
    gauge(
        f.family(
            "oktell_executions_queue",
            "Execution records waiting for the writer (bounded by executions_queue).",
            MetricType::GAUGE,
        ),
        &[],
        log.len() as f64,
    );
    gauge(
        f.family(
            "oktell_executions_queue_bytes",
            "Bytes the execution records waiting for the writer hold (bounded by executions_queue_bytes).",
            MetricType::GAUGE,
        ),
        &[],
        log.bytes() as f64,
    );
}

/// Renders the node's metrics; the per-channel series (they name every channel) only
/// with `per_channel` (see `http::ops`: who may see them).
pub fn render(
    state: &AppState,
    outbox: Option<crate::db::subscriptions::OutboxBacklog>,
    per_channel: bool,
) -> String {
    let mut f = Families { list: Vec::new() };
    let handles = if per_channel {
        state.registry.handles()
    } else {
        Vec::new()
    };
    let domain = state.config.domain.as_str();

    // Per channel. Each family is filled channel by channel.
    type Fill = dyn Fn(&mut MetricFamily, &[(&str, &str)], &crate::actors::ChannelHandle);
    let per_channel: Vec<(&str, &str, MetricType, Box<Fill>)> = vec![
        (
            "oktell_webhook_responses_total",
            "Webhook responses by status class.",
            MetricType::COUNTER,
            Box::new(|mf, l, h| {
                for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                    let mut with = l.to_vec();
                    with.push(("class", class));
                    counter(mf, &with, load(&h.stats.responses[i + 1]));
                }
            }),
        ),
        (
            "oktell_scenario_runs_total",
            "Scenario runs by outcome (completed, error, timeout).",
            MetricType::COUNTER,
            Box::new(|mf, l, h| {
                for (outcome, v) in [
                    ("completed", &h.stats.completed),
                    ("error", &h.stats.errors),
                    ("timeout", &h.stats.timeouts),
                ] {
                    let mut with = l.to_vec();
                    with.push(("outcome", outcome));
                    counter(mf, &with, load(v));
                }
            }),
        ),
        (
            "oktell_scenario_rejected_total",
            "Scenario runs refused: queue full or channel at its in-flight limit.",
            MetricType::COUNTER,
            Box::new(|mf, l, h| counter(mf, l, load(&h.stats.rejected))),
        ),
        (
            "oktell_scenario_in_flight",
            "Scenario runs queued or running.",
            MetricType::GAUGE,
            Box::new(|mf, l, h| gauge(mf, l, h.stats.in_flight.load(Ordering::Relaxed) as f64)),
        ),
        (
            "oktell_channel_restarts_total",
            "Supervisor restarts of the channel's actor.",
            MetricType::COUNTER,
            Box::new(|mf, l, h| counter(mf, l, load(&h.stats.restarts))),
        ),
        (
            "oktell_ws_sessions_open",
            "Open websocket sessions.",
            MetricType::GAUGE,
            Box::new(|mf, l, h| gauge(mf, l, h.sessions.len() as f64)),
        ),
        (
            "oktell_ws_subscribers_open",
            "Open event subscriber websockets (/ws/token/v1/{token}/subscribe).",
            MetricType::GAUGE,
            Box::new(|mf, l, h| gauge(mf, l, h.sessions.subscribers() as f64)),
        ),
        (
            "oktell_ws_sessions_opened_total",
            "Websocket sessions opened.",
            MetricType::COUNTER,
            Box::new(|mf, l, h| counter(mf, l, load(&h.stats.ws_opened))),
        ),
        (
            "oktell_ws_sessions_closed_total",
            "Websocket sessions closed, by close code (1006: no close frame).",
            MetricType::COUNTER,
            Box::new(|mf, l, h| {
                for (i, a) in h.stats.ws_closed_by_code.iter().enumerate() {
                    let value = load(a);
                    if value == 0.0 {
                        continue;
                    }
                    let code = CLOSE_CODES
                        .get(i)
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "other".into());
                    let mut with = l.to_vec();
                    with.push(("code", &code));
                    counter(mf, &with, value);
                }
            }),
        ),
        (
            "oktell_ws_messages_total",
            "Websocket messages by direction.",
            MetricType::COUNTER,
            Box::new(|mf, l, h| {
                for (dir, v) in [
                    ("in", &h.stats.ws_messages_in),
                    ("out", &h.stats.ws_messages_out),
                ] {
                    let mut with = l.to_vec();
                    with.push(("direction", dir));
                    counter(mf, &with, load(v));
                }
            }),
        ),
        (
            "oktell_channel_refusals_total",
            "Requests refused by the channel's guards before any scenario, by reason (ip: not in allow_ips, rate: over rate_limit, signature: verify failed, cors: preflight refused).",
            MetricType::COUNTER,
            Box::new(|mf, l, h| {
                for kind in crate::channels::guards::Refusal::ALL {
                    let mut with = l.to_vec();
                    // `kind` is the channel's kind already.
                    with.push(("reason", kind.as_str()));
                    counter(mf, &with, load(&h.stats.refused[kind as usize]));
                }
            }),
        ),
        (
            "oktell_channel_rate_limit_clients",
            "Client IPs with a rate-limit bucket on this node (rate_limit.per_client_ip; bound: rate_limit_max_clients_per_channel).",
            MetricType::GAUGE,
            Box::new(|mf, l, h| {
                let clients = h
                    .guards
                    .as_deref()
                    .and_then(|g| g.rate.as_ref())
                    .map_or(0, |r| r.clients());
                gauge(mf, l, clients as f64);
            }),
        ),
        (
            "oktell_channel_rate_limit_evictions_total",
            "Client IPs forgotten, least recently seen first, to keep the per-client rate-limit table within rate_limit_max_clients_per_channel.",
            MetricType::COUNTER,
            Box::new(|mf, l, h| counter(mf, l, load(&h.stats.rate_clients_evicted))),
        ),
        (
            "oktell_ws_errors_total",
            "Websocket messages whose scenario failed.",
            MetricType::COUNTER,
            Box::new(|mf, l, h| counter(mf, l, load(&h.stats.ws_errors))),
        ),
        (
            "oktell_ws_retries_total",
            "Websocket messages held back because the scenario queue or channel was full.",
            MetricType::COUNTER,
            Box::new(|mf, l, h| counter(mf, l, load(&h.stats.ws_retries))),
        ),
    ];
    for (name, help, kind, fill) in &per_channel {
        let mf = f.family(name, help, *kind);
        for h in &handles {
            let l = [
                ("domain", h.channel.domain.as_str()),
                ("channel", h.channel.code.as_str()),
                ("kind", h.channel.kind.as_str()),
            ];
            fill(mf, &l, h);
        }
    }
    let mf = f.family(
        "oktell_scenario_duration_seconds",
        "Scenario run time on the scenario threads.",
        MetricType::HISTOGRAM,
    );
    for h in &handles {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(DURATION_BUCKETS.len());
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += h.stats.duration_buckets[i].load(Ordering::Relaxed);
            let mut b = Bucket::default();
            b.set_upper_bound(*bound);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        let count =
            cumulative + h.stats.duration_buckets[DURATION_BUCKETS.len()].load(Ordering::Relaxed);
        let mut hist = Histogram::default();
        hist.set_bucket(buckets);
        hist.set_sample_count(count);
        hist.set_sample_sum(h.stats.duration_micros_sum.load(Ordering::Relaxed) as f64 / 1e6);
        let mut m = Metric::default();
        m.set_label(labels(&[
            ("domain", h.channel.domain.as_str()),
            ("channel", h.channel.code.as_str()),
            ("kind", h.channel.kind.as_str()),
        ]));
        m.set_histogram(hist);
        mf.mut_metric().push(m);
    }

    // Per node.
    let pool = state.dispatcher.pool();
    let stats = pool.stats();
    let node_gauges = [
        (
            "oktell_scenario_pool_queue_depth",
            "Scenario runs waiting for a thread.",
            pool.queued() as f64,
        ),
        (
            "oktell_scenario_pool_queue_capacity",
            "Runs admitted at most (scenario_max_admitted): queued, computing or waiting.",
            pool.max_admitted() as f64,
        ),
        (
            "oktell_scenario_pool_admitted",
            "Runs admitted now: queued, computing or waiting.",
            pool.admitted() as f64,
        ),
        (
            "oktell_scenario_pool_slots",
            "Compute slots (scenario_threads): runs computing at once at most.",
            pool.slots() as f64,
        ),
        (
            "oktell_scenario_pool_threads",
            "Scenario threads alive: slot holders, runs waiting on the outside world, spares.",
            stats.threads.load(Ordering::Relaxed) as f64,
        ),
        (
            "oktell_scenario_pool_busy",
            "Runs computing now (holding a compute slot).",
            stats.busy.load(Ordering::Relaxed) as f64,
        ),
        (
            "oktell_scenario_pool_waiting",
            "Runs waiting on the outside world now (their compute slot given away).",
            stats.waiting.load(Ordering::Relaxed) as f64,
        ),
        (
            "oktell_scenario_pool_returning",
            "Runs back from a wait, queued for a compute slot.",
            pool.returning() as f64,
        ),
        (
            "oktell_scenario_pool_spare_threads",
            "Threads parked without a slot (they retire after 10 s idle).",
            stats.spare.load(Ordering::Relaxed) as f64,
        ),
        (
            "oktell_scenario_pool_recent_compute_seconds",
            "Smoothed compute time of one run (waits excluded), used to estimate start delays.",
            pool.recent_compute().as_secs_f64(),
        ),
        (
            "oktell_channels_served",
            "Channels this node serves.",
            state.registry.len() as f64,
        ),
        (
            "oktell_ws_sessions_node_open",
            "Open websocket sessions on this node.",
            state.ws_sessions.load(Ordering::Relaxed) as f64,
        ),
        (
            "oktell_outgoing_in_flight",
            "Outgoing HTTP calls of scenarios under way.",
            state.outgoing.in_flight.load(Ordering::Relaxed) as f64,
        ),
        (
            "oktell_outgoing_origins",
            "Host:ports keeping idle outgoing connections (at most 1,024; closed after outgoing_idle_timeout_s).",
            state.outgoing.origins.load(Ordering::Relaxed) as f64,
        ),
        (
            "oktell_ws_subscribers_node_open",
            "Open event subscriber websockets on this node (limit: ws_max_subscribers_per_node).",
            state.event_sockets.load(Ordering::Relaxed) as f64,
        ),
        (
            "oktell_ws_inbound_bytes",
            "Websocket messages waiting for their scenario on this node, in bytes (budget: ws_node_max_inbound_bytes).",
            state.ws_inbound.bytes() as f64,
        ),
        (
            "oktell_ws_outbound_bytes",
            "Websocket frames queued for clients on this node, each counted once however many sessions share it (budget: ws_node_max_outbound_bytes).",
            state.outbound.bytes() as f64,
        ),
        (
            "oktell_uptime_seconds",
            "Seconds since the node started.",
            state.started.elapsed().as_secs_f64(),
        ),
    ];
    for (name, help, value) in node_gauges {
        gauge(f.family(name, help, MetricType::GAUGE), &[], value);
    }
    gauge(
        f.family(
            "oktell_scenario_memory_reserved_bytes",
            "Memory held by running scenarios, counted by the allocator in 256 KiB steps (budget: scenario_node_memory_bytes).",
            MetricType::GAUGE,
        ),
        &[],
        state.node_memory.reserved() as f64,
    );
    counter(
        f.family(
            "oktell_ws_outbound_evicted_total",
            "Websockets whose queue was dropped (and closed 1008) to keep the node within ws_node_max_outbound_bytes.",
            MetricType::COUNTER,
        ),
        &[],
        state.outbound.evicted() as f64,
    );
    let mf = f.family(
        "oktell_scenario_budget_exceeded_total",
        "Scenario runs failed for breaking a budget, by budget (memory, node_memory, log_bytes, events, event_bytes, pushes, push_bytes, outgoing_calls).",
        MetricType::COUNTER,
    );
    for kind in crate::scenario::budget::BudgetKind::ALL {
        counter(
            mf,
            &[("budget", kind.as_str())],
            crate::scenario::budget::exceeded_total(kind) as f64,
        );
    }
    channel_state(&mut f);
    let ev = &state.default_domain.events.stats;
    gauge(
        f.family(
            "oktell_event_subscribers",
            "Websocket event subscriptions on this node.",
            MetricType::GAUGE,
        ),
        &[("domain", domain)],
        ev.subscribers.load(Ordering::Relaxed) as f64,
    );
    for (name, help, value) in [
        (
            "oktell_events_published_total",
            "Events stored by publishes on this node (not counting idempotent repeats).",
            load(&ev.published),
        ),
        (
            "oktell_events_duplicates_total",
            "Publishes answered with an already stored event (idempotency key).",
            load(&ev.duplicates),
        ),
        (
            "oktell_events_pushed_total",
            "Events pushed to websocket subscribers.",
            load(&ev.pushed),
        ),
        (
            "oktell_event_subscribers_dropped_total",
            "Subscribers closed for falling behind (1013).",
            load(&ev.slow_closed),
        ),
        (
            "oktell_event_subscribers_refused_total",
            "Subscribe upgrades refused at a subscriber limit (503).",
            load(&ev.subscribers_refused),
        ),
    ] {
        counter(
            f.family(name, help, MetricType::COUNTER),
            &[("domain", domain)],
            value,
        );
    }
    if let Some(crate::db::subscriptions::OutboxBacklog {
        pending,
        oldest,
        events_behind,
    }) = outbox
    {
        gauge(
            f.family(
                "oktell_outbox_events_behind",
                "Events published whose webhook delivery rows are not written yet (how far the delivery workers' outbox cursor is behind the log).",
                MetricType::GAUGE,
            ),
            &[("domain", domain)],
            events_behind as f64,
        );
        gauge(
            f.family(
                "oktell_outbox_pending",
                "Webhook deliveries waiting to be sent (the domain's, all nodes).",
                MetricType::GAUGE,
            ),
            &[("domain", domain)],
            pending as f64,
        );
        let age = oldest.map_or(0.0, |t| {
            ((crate::db::now_millis() - t).max(0) as f64) / 1000.0
        });
        gauge(
            f.family(
                "oktell_outbox_oldest_pending_age_seconds",
                "Age of the oldest waiting delivery.",
                MetricType::GAUGE,
            ),
            &[("domain", domain)],
            age,
        );
    }
    let ds = &state.default_domain.delivery_stats;
    let mf = f.family(
        "oktell_deliveries_total",
        "Webhook delivery attempts by outcome: delivered, retried (will be tried again), failed (given up).",
        MetricType::COUNTER,
    );
    for (outcome, v) in [
        ("delivered", &ds.delivered),
        ("retried", &ds.failed_attempts),
        ("failed", &ds.gave_up),
    ] {
        counter(mf, &[("domain", domain), ("outcome", outcome)], load(v));
    }
    counter(
        f.family(
            "oktell_delivery_attempt_seconds_total",
            "Time spent in delivery requests (divide by attempts).",
            MetricType::COUNTER,
        ),
        &[("domain", domain)],
        ds.latency_micros.load(Ordering::Relaxed) as f64 / 1e6,
    );
    counter(
        f.family(
            "oktell_delivery_attempts_total",
            "Delivery requests made.",
            MetricType::COUNTER,
        ),
        &[("domain", domain)],
        load(&ds.attempts),
    );
    counter(
        f.family(
            "oktell_delivery_leases_lost_total",
            "Delivery attempts not recorded because the delivery's lease was no longer this node's (another node owns it).",
            MetricType::COUNTER,
        ),
        &[("domain", domain)],
        load(&ds.leases_lost),
    );
    gauge(
        f.family(
            "oktell_deliveries_in_flight",
            "Delivery requests under way on this node.",
            MetricType::GAUGE,
        ),
        &[("domain", domain)],
        ds.in_flight.load(Ordering::Relaxed) as f64,
    );
    let node_counters = [
        (
            "oktell_scenario_pool_completed_total",
            "Jobs the scenario threads finished.",
            load(&stats.completed),
        ),
        (
            "oktell_scenario_pool_rejected_total",
            "Runs refused at admission (scenario_max_admitted reached, or no start before the deadline).",
            load(&stats.rejected),
        ),
        (
            "oktell_scenario_pool_handoffs_total",
            "Waits that gave their compute slot to another thread.",
            load(&stats.handoffs),
        ),
        (
            "oktell_scenario_pool_threads_started_total",
            "Spare scenario threads started for runs that wait.",
            load(&stats.spawned),
        ),
        (
            "oktell_scenario_pool_threads_retired_total",
            "Spare scenario threads ended after idling.",
            load(&stats.retired),
        ),
        (
            "oktell_scenario_pool_panics_total",
            "Jobs that panicked (caught; the thread goes on).",
            load(&stats.panicked),
        ),
        (
            "oktell_scenario_inline_runs_total",
            "Runs that ran inline on the HTTP worker that received them (short, touching nothing outside themselves; scenario_inline_us).",
            load(&stats.inline),
        ),
        (
            "oktell_scenario_inline_stopped_total",
            "Inline runs stopped (an effect or a wait, or past scenario_inline_us) and run on the pool from their start instead.",
            load(&stats.inline_stopped),
        ),
        (
            "oktell_scenario_pool_wakeups_total",
            "Times a producer had to wake a sleeping scenario thread.",
            load(&stats.wakeups),
        ),
        (
            "oktell_outgoing_requests_total",
            "Outgoing HTTP calls of scenarios made.",
            load(&state.outgoing.requests),
        ),
        (
            "oktell_outgoing_failed_total",
            "Outgoing HTTP calls that failed (connect, TLS, timeout, size cap).",
            load(&state.outgoing.failed),
        ),
        (
            "oktell_outgoing_waited_for_connection_total",
            "Outgoing HTTP calls that waited for a connection (outgoing_max_connections_per_host in use).",
            load(&state.outgoing.waited_for_connection),
        ),
    ];
    for (name, help, value) in node_counters {
        counter(f.family(name, help, MetricType::COUNTER), &[], value);
    }
    // Connection hygiene (issue #10).
    let conn = &state.conn_stats;
    for (name, help, value) in [
        (
            "oktell_http_body_timeouts_total",
            "Request bodies that did not arrive within http_body_timeout_ms (answered 408, connection closed).",
            load(&conn.body_timeouts),
        ),
        (
            "oktell_http_unread_body_closes_total",
            "Connections closed after the response because the request body was not read to its end (refused before reading it, 408, 413).",
            load(&conn.closed_unread_body),
        ),
        (
            "oktell_ws_frames_refused_total",
            "Websocket frames refused on their declared length, before buffering (closed 1009).",
            load(&conn.ws_frames_refused),
        ),
    ] {
        counter(f.family(name, help, MetricType::COUNTER), &[], value);
    }
    let db = state.db.pool_state();
    let mf = f.family(
        "oktell_db_pool_connections",
        "Database pool connections by state.",
        MetricType::GAUGE,
    );
    gauge(mf, &[("state", "idle")], db.idle as f64);
    gauge(mf, &[("state", "in_use")], db.in_use as f64);
    let waits = state.db.pool_waits();
    for (name, help, value) in [
        (
            "oktell_db_pool_acquired_total",
            "Connections taken from the database pool.",
            load(&waits.count),
        ),
        (
            "oktell_db_pool_wait_seconds_total",
            "Time spent waiting for a pooled connection (divide by acquired_total for the mean).",
            waits.micros.load(Ordering::Relaxed) as f64 / 1e6,
        ),
        (
            "oktell_db_pool_timeouts_total",
            "Waits for a pooled connection that gave up.",
            load(&waits.timeouts),
        ),
    ] {
        counter(f.family(name, help, MetricType::COUNTER), &[], value);
    }
    gauge(
        f.family(
            "oktell_db_pool_max",
            "Database pool size.",
            MetricType::GAUGE,
        ),
        &[],
        db.max as f64,
    );
    cluster(&mut f, state);
    executions(&mut f, state);
    gauge(
        f.family(
            "oktell_status_history_channels",
            "Channels whose recent requests and errors the status page's sampler keeps (90 samples each; bounded by the channels served here).",
            MetricType::GAUGE,
        ),
        &[],
        state.stats_history.len() as f64,
    );
    gauge(
        f.family(
            "oktell_build_info",
            "Build of this node.",
            MetricType::GAUGE,
        ),
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("backend", state.db.backend_name()),
        ],
        1.0,
    );

    // The encoder refuses a family without samples (e.g. no channel served yet).
    f.list.retain(|mf| !mf.get_metric().is_empty());
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&f.list, &mut out) {
        slog::error!(state.logger, "encoding metrics failed"; "error" => %e);
    }
    String::from_utf8(out).unwrap_or_default()
}
