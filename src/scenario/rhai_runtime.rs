//! The embedded runtime: sandboxed Rhai scripts.
//!
//! One `Engine` is shared by all scenario threads; what differs per run (start
//! parameters, deadline, channel, logger) sits in a thread-local set for the length of
//! the run, so that the functions scripts call can reach it without locks.

use std::sync::Arc;
use std::time::Instant;

use rhai::{AST, Dynamic, Engine, EvalAltResult, Map, Position, Scope};

use super::budget::{self, BudgetKind, Budgets, Spent};
use super::inline::{self, Inline, Stop};
use super::outgoing::OutgoingClient;
use super::pool::blocking;
use super::{CompileError, Compiled, RunContext, ScenarioError, ScenarioReply, ScenarioRuntime};
use crate::db::models::Channel;
use crate::redact::Secrets;

/// Limits of one run.
#[derive(Debug, Clone)]
pub struct RhaiLimits {
    pub max_operations: u64,
    pub max_call_depth: usize,
    pub max_string_bytes: usize,
    pub max_array_len: usize,
    pub max_map_len: usize,
    /// Memory, log, events, pushes, outgoing calls (`scenario::budget`).
    pub budgets: Budgets,
}

/// What the script-callable functions see of the current run: borrowed from the run's
/// caller for as long as the run lasts (no copies, no reference counts touched).
struct RunState<'a> {
    params: &'a dyn super::StartParams,
    deadline: Instant,
    logger: &'a slog::Logger,
    channel: &'a Arc<Channel>,
    host: &'a Arc<dyn super::ChannelHost>,
    spent: Spent<'a>,
    /// The channel's own secrets, kept out of what the script logs.
    secrets: &'a Secrets,
}

/// Makes a run's state the one of this thread until dropped (also when the run
/// panics), so that the state is never reached after it is gone.
struct CurrentRun<'a>(std::marker::PhantomData<&'a RunState<'a>>);

impl<'a> CurrentRun<'a> {
    fn set(state: &'a RunState<'a>) -> CurrentRun<'a> {
        CURRENT.set(std::ptr::from_ref(state).cast::<RunState<'static>>());
        CurrentRun(std::marker::PhantomData)
    }
}

impl Drop for CurrentRun<'_> {
    fn drop(&mut self) {
        CURRENT.set(std::ptr::null());
    }
}

thread_local! {
    /// The run on this thread (`CurrentRun`), null between runs.
    static CURRENT: std::cell::Cell<*const RunState<'static>> =
        const { std::cell::Cell::new(std::ptr::null()) };
    /// Operations of the run on this thread so far (of the last one, after it ended).
    static OPERATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// The scope of this thread's next run (`RunScope`).
    static SCOPE: std::cell::Cell<Option<Scope<'static>>> = const { std::cell::Cell::new(None) };
    /// The function lookups of the last script run on this thread (`RunCaches`).
    /// Boxed: its hash table and bloom filter are ~400 bytes, copied at each move.
    static CACHES: std::cell::Cell<Option<Box<RunCaches>>> = const { std::cell::Cell::new(None) };
}

/// A script's function lookups, kept between its runs on a thread. Rhai resolves a
/// call by searching the script's own functions, then every package of the engine, and
/// notes the answer in a cache it makes anew for each run (a hash table allocation),
/// and only from a call's second time in that run: a websocket echo's one
/// `startparam(2)` was searched in full every run (~800 of its ~13,500 instructions,
/// counted by callgrind). The cache belongs to the script it was made for (its answers
/// include the script's own functions), so it is kept only while the same script runs
/// again on this thread: the script is known by its allocation, held weakly (its
/// address cannot be reused while the weak reference lasts). The answers for the
/// script's own functions hold those functions, so a script replaced or deleted keeps
/// its functions' bodies (not the rest of it) on a thread until that thread runs
/// another script: one script's at most per thread.
struct RunCaches {
    script: std::sync::Weak<dyn std::any::Any + Send + Sync>,
    caches: rhai::Caches,
}

/// A kept cache with more entries than this is not kept (a script calls that many
/// different functions, or with that many kinds of arguments).
const KEPT_CACHE_MAX_ENTRIES: usize = 256;

impl RunCaches {
    /// The cache for `script`: this thread's kept one when it was made for it.
    fn take(script: &Arc<dyn std::any::Any + Send + Sync>) -> Box<RunCaches> {
        match CACHES.take() {
            Some(kept) if std::ptr::addr_eq(kept.script.as_ptr(), Arc::as_ptr(script)) => kept,
            _ => Box::new(RunCaches {
                script: Arc::downgrade(script),
                caches: rhai::Caches::new(),
            }),
        }
    }

    /// Kept for the next run of this thread, unless a run left it nested (a function
    /// call's own cache not unwound) or big.
    fn keep(mut self: Box<Self>) {
        if self.caches.fn_resolution_caches_len() == 1
            && self.caches.fn_resolution_cache_mut().dict.len() <= KEPT_CACHE_MAX_ENTRIES
        {
            CACHES.set(Some(self));
        }
    }
}

/// The variables every run starts with, and their values at its start.
const REPLY_VARIABLES: usize = 3;
/// A scope that held more variables than this at a run's end is not kept for the next.
const KEPT_SCOPE_MAX_LEN: usize = 64;

/// One empty string shared by every run (`ImmutableString::new` allocates).
static EMPTY: std::sync::LazyLock<rhai::ImmutableString> =
    std::sync::LazyLock::new(rhai::ImmutableString::new);

/// The variables every run starts with.
const REPLY_NAMES: [&str; REPLY_VARIABLES] =
    ["response_code", "response_content", "response_headers"];

/// The start value of `REPLY_NAMES[i]`.
fn reply_default(i: usize) -> Dynamic {
    match i {
        0 => Dynamic::from_int(200),
        1 => Dynamic::from(EMPTY.clone()),
        _ => Dynamic::from_map(Map::new()),
    }
}

/// Whether `REPLY_NAMES[i]` still holds its start value as the run found it (200, the
/// shared empty string, an empty map; untagged, not shared with a closure, whose
/// capture would outlive the run). Such a value is left for the next run instead of
/// being replaced by a new one (an empty map is an allocation).
fn is_start_value(i: usize, value: &Dynamic) -> bool {
    if value.is_shared() || value.tag() != 0 {
        return false;
    }
    match i {
        0 => value.as_int().is_ok_and(|n| n == 200),
        1 => value
            .read_lock::<rhai::ImmutableString>()
            .is_some_and(|text| text.ptr_eq(&EMPTY)),
        _ => value.read_lock::<Map>().is_some_and(|map| map.is_empty()),
    }
}

/// A run's scope, kept between the runs of a thread: a new scope allocated its
/// vectors and the three names (shared strings) anew for every run, and dropped them
/// after (~1,300 instructions of a ~16,000-instruction websocket echo, counted by
/// callgrind). When the run ends, what it declared is rewound and the three values are
/// reset; a scope whose values cannot be reset (one made constant) or that grew past
/// [`KEPT_SCOPE_MAX_LEN`] is dropped instead. Either way nothing of a run reaches the
/// next one (`export`, which would leave aliases on the kept entries, is refused at
/// compile time: scenarios have no modules).
struct RunScope {
    scope: Scope<'static>,
    /// Set once `reply` read the reply off the three variables and put their start
    /// values back (the scope holding nothing else): nothing is left to reset.
    reset: bool,
}

impl RunScope {
    fn take() -> RunScope {
        let scope = SCOPE.take().unwrap_or_else(|| {
            let mut scope = Scope::with_capacity(8);
            for (i, name) in REPLY_NAMES.into_iter().enumerate() {
                scope.push_dynamic(name, reply_default(i));
            }
            scope
        });
        RunScope {
            scope,
            reset: false,
        }
    }

    /// The reply the run left, each variable looked up once: read, and its start value
    /// put back in the same step when the scope holds just the three (the usual run,
    /// which declared nothing that outlived it); else read by name, reset on drop.
    fn reply(&mut self) -> Result<ScenarioReply, ScenarioError> {
        if self.scope.len() != REPLY_VARIABLES {
            return RhaiRuntime::reply_from_scope(&self.scope);
        }
        let mut reply = ScenarioReply::default();
        for (i, name) in REPLY_NAMES.into_iter().enumerate() {
            let Some(slot) = self.scope.get_mut(name) else {
                // (Read-only: not one of the three as a run starts with them.)
                return RhaiRuntime::reply_from_scope(&self.scope);
            };
            if is_start_value(i, slot) {
                continue;
            }
            let value = std::mem::replace(slot, reply_default(i));
            match i {
                0 => reply.code = reply_code(&value)?,
                1 => reply.content = reply_content(&value)?,
                _ => reply.headers = reply_headers(&value)?,
            }
        }
        self.reset = true;
        reply.validated()
    }
}

impl Drop for RunScope {
    fn drop(&mut self) {
        let mut scope = std::mem::take(&mut self.scope);
        if self.reset && scope.len() == REPLY_VARIABLES {
            SCOPE.set(Some(scope));
            return;
        }
        // A run that declared many variables leaves vectors that big: not kept.
        let small = scope.len() <= KEPT_SCOPE_MAX_LEN;
        scope.rewind(REPLY_VARIABLES);
        // A value still as it started (not shared with a closure) stays; one the run
        // changed is replaced.
        let reset = small
            && scope.len() == REPLY_VARIABLES
            && REPLY_NAMES
                .into_iter()
                .enumerate()
                .all(|(i, name)| match scope.get_mut(name) {
                    Some(slot) if is_start_value(i, slot) => true,
                    Some(slot) => {
                        *slot = reply_default(i);
                        true
                    }
                    None => false,
                });
        if reset {
            SCOPE.set(Some(scope));
        }
    }
}

/// The marker `on_progress` stops a script with when its time is up.
const TIMEOUT_MARK: &str = "oktell:timeout";

/// The mark a script is stopped with when it broke a budget. Stopping (`Terminated`)
/// cannot be caught by the script's `try`/`catch`.
#[derive(Debug, Clone, Copy)]
struct BudgetMark(BudgetKind);

/// The mark an inline run is stopped with (`scenario::inline`): it is then run on the
/// pool from its start. Like the others, it cannot be caught by the script.
#[derive(Debug, Clone, Copy)]
struct InlineMark;

/// Asked first by every function with an effect or a wait: stops an inline run.
fn no_inline() -> FnResult<()> {
    inline::effect().map_err(|_| {
        Box::new(EvalAltResult::ErrorTerminated(
            Dynamic::from(InlineMark),
            Position::NONE,
        ))
    })
}

fn over_budget(kind: BudgetKind) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorTerminated(
        Dynamic::from(BudgetMark(kind)),
        Position::NONE,
    ))
}

/// Charges the current run for something; stops the script when over budget.
fn charge(f: impl FnOnce(&Spent) -> Result<(), BudgetKind>) -> FnResult<()> {
    match with_run(|run| f(&run.spent)) {
        Some(Err(kind)) => Err(over_budget(kind)),
        _ => Ok(()),
    }
}

pub struct RhaiRuntime {
    engine: Engine,
    budgets: Budgets,
}

type FnResult<T> = Result<T, Box<EvalAltResult>>;

fn script_error(message: impl Into<String>) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(message.into()),
        Position::NONE,
    ))
}

/// `f` of the run on this thread, if a run is on. What `f` returns cannot borrow from
/// the state (`T` is chosen outside the state's lifetime).
fn with_run<T>(f: impl for<'r> FnOnce(&'r RunState<'r>) -> T) -> Option<T> {
    let state = CURRENT.get();
    // SAFETY: non-null only while a `CurrentRun` lives, which borrows the state for
    // its own life and clears the pointer when dropped; the state is only ever read
    // through shared references, and `f` is given one no longer than this call.
    (!state.is_null()).then(|| f(unsafe { &*state }))
}

/// A line the script logs: charged to its log budget (a line over it is not written;
/// the run stops at its next check), its channel's secrets hidden. Control characters
/// are escaped by the log format (`crate::logging`).
fn log_line(level: &str, text: &str) {
    with_run(|run| {
        if run.spent.log(text.len()).is_err() {
            return;
        }
        let text = run.secrets.hide(text);
        if !inline::hold_log(level, &text) {
            write_log(run, level, &text);
        }
    });
}

/// A line the script logged, into its run's record (when recorded) or the log.
fn write_log(run: &RunState, level: &str, text: &str) {
    if !run.host.capture_log(level, text) {
        log_to(run, level, text)
    }
}

fn log_to(run: &RunState, level: &str, text: &str) {
    match level.to_ascii_lowercase().as_str() {
        "error" => slog::error!(run.logger, "{}", text; "source" => "scenario"),
        "warn" | "warning" => slog::warn!(run.logger, "{}", text; "source" => "scenario"),
        "debug" | "trace" => slog::debug!(run.logger, "{}", text; "source" => "scenario"),
        _ => slog::info!(run.logger, "{}", text; "source" => "scenario"),
    }
}

impl RhaiRuntime {
    pub fn new(limits: &RhaiLimits, outgoing: Arc<OutgoingClient>) -> RhaiRuntime {
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_depth)
            .set_max_expr_depths(128, 64)
            .set_max_string_size(limits.max_string_bytes)
            .set_max_array_size(limits.max_array_len)
            .set_max_map_size(limits.max_map_len)
            .set_max_variables(10_000)
            .set_max_functions(1_000)
            .set_max_modules(0)
            // Rhai interns strings assigned to variables in one table behind a lock shared
            // by every thread of the engine, hashing each whole string first (a 2 KiB body:
            // ~2,000 instructions); scenario runs are short, the sharing saves nothing.
            .set_max_strings_interned(0);
        // Scenarios have no modules (`set_max_modules(0)`), so `export` has no use; it
        // would leave aliases on the kept scope's entries (`RunScope`).
        engine.disable_symbol("export");
        // Budgets (memory included): a thread-local read, between every two operations.
        // Wall time: checked every 1024 operations, which keeps the check cheap.
        engine.on_progress(|ops| {
            OPERATIONS.set(ops);
            if let Some(kind) = budget::broken() {
                return Some(Dynamic::from(BudgetMark(kind)));
            }
            if inline::progress(ops).is_err() {
                return Some(Dynamic::from(InlineMark));
            }
            if ops & 0x3ff != 0 {
                return None;
            }
            let late = with_run(|run| Instant::now() >= run.deadline).unwrap_or(false);
            late.then(|| Dynamic::from(TIMEOUT_MARK))
        });
        engine.on_print(|text| log_line("info", text));
        engine.on_debug(|text, _, _| log_line("debug", text));

        engine.register_fn("startparam", |n: i64| -> FnResult<rhai::ImmutableString> {
            // The script's string is made from the parameter as held (no copy first).
            let value = with_run(|run| {
                let param = run.params.get_str(usize::try_from(n).ok()?)?;
                Some(match param {
                    std::borrow::Cow::Borrowed(text) => rhai::ImmutableString::from(text),
                    std::borrow::Cow::Owned(text) => rhai::ImmutableString::from(text),
                })
            })
            .flatten();
            value.ok_or_else(|| script_error(format!("startparam({n}): no such start parameter")))
        });
        // The body as received, for verifying a signature over the exact bytes. A blob,
        // so bounded by `scenario_max_array_len`: a longer body is refused before it is
        // copied, with a message that names the setting.
        let max_blob = limits.max_array_len;
        engine.register_fn("body_bytes", move || -> FnResult<rhai::Blob> {
            let body = with_run(|run| {
                run.params.body_bytes().map(|b| {
                    if b.len() > max_blob {
                        Err(script_error(format!(
                            "body_bytes(): the body is {} bytes, over scenario_max_array_len ({max_blob})",
                            b.len()
                        )))
                    } else {
                        Ok(b.to_vec())
                    }
                })
            })
            .flatten();
            body.unwrap_or_else(|| Err(script_error("body_bytes(): this run has no request body")))
        });
        // Rhai's own `sleep(seconds)` blocks the thread past any time budget: replaced by
        // sleeps that wait (compute slot given away) and end at the run's deadline.
        engine.register_fn("sleep_ms", |ms: i64| sleep_within_deadline(ms));
        engine.register_fn("sleep", |seconds: i64| {
            sleep_within_deadline(seconds.saturating_mul(1000))
        });
        engine.register_fn("sleep", |seconds: f64| {
            sleep_within_deadline((seconds * 1000.0) as i64)
        });
        engine.register_fn("stop", || -> FnResult<()> {
            Err(Box::new(EvalAltResult::Exit(Dynamic::UNIT, Position::NONE)))
        });
        engine.register_fn("log", |level: &str, text: &str| log_line(level, text));
        engine.register_fn("log", |text: &str| log_line("info", text));
        engine.register_fn("parse_json", |text: &str| -> FnResult<Dynamic> {
            super::rhai_json::parse(text).map_err(|e| script_error(format!("parse_json: {e}")))
        });
        engine.register_fn("to_json", |value: Dynamic| -> FnResult<String> {
            serde_json::to_string(&value).map_err(|e| script_error(format!("to_json: {e}")))
        });
        // Rhai's own `to_json(map)` is picked before the above for maps (an exact type
        // match) and writes strings with Rust's escapes (`\u{1b}`), which JSON has not.
        engine.register_fn("to_json", |map: &mut Map| -> FnResult<String> {
            serde_json::to_string(map).map_err(|e| script_error(format!("to_json: {e}")))
        });
        super::script_crypto::register(&mut engine, limits.max_string_bytes);
        register_outgoing(&mut engine, outgoing);
        register_websocket(&mut engine);
        register_state(&mut engine);
        RhaiRuntime {
            engine,
            budgets: limits.budgets.clone(),
        }
    }

    /// The reply a script left in `scope` (the last declared of each name).
    fn reply_from_scope(scope: &Scope) -> Result<ScenarioReply, ScenarioError> {
        let mut reply = ScenarioReply::default();
        if let Some(code) = scope.get("response_code") {
            reply.code = reply_code(code)?;
        }
        if let Some(content) = scope.get("response_content") {
            reply.content = reply_content(content)?;
        }
        if let Some(headers) = scope.get("response_headers") {
            reply.headers = reply_headers(headers)?;
        }
        reply.validated()
    }
}

/// What a script set as `response_code`: a number, or a string of one.
fn reply_code(code: &Dynamic) -> Result<u16, ScenarioError> {
    if let Ok(n) = code.as_int() {
        u16::try_from(n)
            .map_err(|_| ScenarioError::InvalidReply(format!("response_code {n} is out of range")))
    } else if let Some(s) = code.read_lock::<rhai::ImmutableString>() {
        s.trim().parse::<u16>().map_err(|_| {
            ScenarioError::InvalidReply(format!("response_code {:?} is not a number", s.as_str()))
        })
    } else {
        Err(ScenarioError::InvalidReply(format!(
            "response_code must be a number, not {}",
            code.type_name()
        )))
    }
}

/// What a script set as `response_content`: text, a blob, nothing, or any other value
/// as JSON.
fn reply_content(content: &Dynamic) -> Result<Vec<u8>, ScenarioError> {
    Ok(if content.is_unit() {
        Vec::new()
    } else if let Some(s) = content.read_lock::<rhai::ImmutableString>() {
        s.as_bytes().to_vec()
    } else if content.is_blob() {
        content.clone().into_blob().unwrap_or_default()
    } else {
        serde_json::to_vec(content)
            .map_err(|e| ScenarioError::InvalidReply(format!("response_content: {e}")))?
    })
}

/// What a script set as `response_headers`: a map (values that are not strings are
/// written as text), a JSON object in a string, or nothing (unit, blank string). Names
/// and values are checked by `ScenarioReply::validated`.
pub fn reply_headers(headers: &Dynamic) -> Result<Vec<(String, String)>, ScenarioError> {
    if headers.is_unit() {
        Ok(Vec::new())
    } else if let Some(s) = headers.read_lock::<rhai::ImmutableString>() {
        if s.trim().is_empty() {
            return Ok(Vec::new());
        }
        let value: serde_json::Value = serde_json::from_str(s.as_str()).map_err(|e| {
            ScenarioError::InvalidReply(format!("response_headers is not JSON: {e}"))
        })?;
        ScenarioReply::headers_from_json(&value)
    } else if let Some(map) = headers.read_lock::<Map>() {
        Ok(map
            .iter()
            .map(|(k, v)| {
                let v = match v.read_lock::<rhai::ImmutableString>() {
                    Some(s) => s.to_string(),
                    None => v.to_string(),
                };
                (k.to_string(), v)
            })
            .collect())
    } else {
        Err(ScenarioError::InvalidReply(
            "response_headers must be a map or a JSON object string".into(),
        ))
    }
}

/// `sleep_ms(ms)`: waits without computing; a sleep that would outlast the run's
/// deadline waits until the deadline and then times the run out.
fn sleep_within_deadline(ms: i64) -> FnResult<()> {
    no_inline()?;
    let deadline =
        with_run(|run| run.deadline).ok_or_else(|| script_error("sleep outside a run"))?;
    if ms <= 0 {
        return Ok(());
    }
    let wanted = Instant::now() + std::time::Duration::from_millis(ms as u64);
    let until = wanted.min(deadline);
    blocking(|| std::thread::sleep(until.saturating_duration_since(Instant::now())));
    if wanted > deadline {
        return Err(Box::new(EvalAltResult::ErrorTerminated(
            Dynamic::from(TIMEOUT_MARK),
            Position::NONE,
        )));
    }
    Ok(())
}

/// `outgoing_request(method, path[, body[, headers]])` → `#{status, body, headers}`.
fn register_outgoing(engine: &mut Engine, client: Arc<OutgoingClient>) {
    let call = move |method: &str, path: &str, body: Dynamic, headers: Dynamic| -> FnResult<Map> {
        no_inline()?;
        charge(|spent| spent.outgoing_call())?;
        let body = dynamic_bytes(&body)?;
        let headers = dynamic_headers(&headers)?;
        let (channel, deadline, host) =
            with_run(|run| (run.channel.clone(), run.deadline, run.host.clone()))
                .ok_or_else(|| script_error("outgoing_request outside a run"))?;
        let call = super::OutgoingCall {
            channel: &channel,
            method,
            path,
            body: &body,
            headers: &headers,
        };
        // Waiting on the outside system is not computing: the compute slot goes to
        // another run meanwhile.
        let response = host
            .outgoing(&call, &mut || {
                blocking(|| client.request(&channel, method, path, &body, &headers, deadline))
            })
            .map_err(script_error)?;
        let mut out = Map::new();
        out.insert("status".into(), Dynamic::from(i64::from(response.status)));
        out.insert(
            "body".into(),
            Dynamic::from(String::from_utf8_lossy(&response.body).into_owned()),
        );
        let mut hs = Map::new();
        for (k, v) in response.headers {
            hs.insert(k.to_ascii_lowercase().into(), Dynamic::from(v));
        }
        out.insert("headers".into(), Dynamic::from_map(hs));
        Ok(out)
    };
    let c2 = call.clone();
    let c3 = call.clone();
    engine.register_fn("outgoing_request", call);
    engine.register_fn("outgoing_request", move |m: &str, p: &str, b: Dynamic| {
        c3(m, p, b, Dynamic::UNIT)
    });
    engine.register_fn("outgoing_request", move |m: &str, p: &str| {
        c2(m, p, Dynamic::UNIT, Dynamic::UNIT)
    });
}

/// `ws_send(code, text)`, `ws_broadcast(text)`, `ws_close(code[, reason])`,
/// `ws_sessions()`: the channel's websocket sessions, on whichever node holds them.
fn register_websocket(engine: &mut Engine) {
    /// The run's host and deadline (sessions on other nodes are a database wait).
    fn host() -> FnResult<(Arc<dyn super::ChannelHost>, Instant)> {
        no_inline()?;
        with_run(|run| (run.host.clone(), run.deadline))
            .ok_or_else(|| script_error("no run in progress"))
    }
    engine.register_fn("ws_send", |code: &str, text: &str| -> FnResult<bool> {
        no_inline()?;
        charge(|spent| spent.push(text.len()))?;
        let (host, deadline) = host()?;
        host.ws_send(code, text, deadline)
            .map_err(|e| script_error(format!("ws_send: {e}")))
    });
    engine.register_fn("ws_broadcast", |text: &str| -> FnResult<i64> {
        no_inline()?;
        charge(|spent| spent.push(text.len()))?;
        let (host, deadline) = host()?;
        host.ws_broadcast(text, deadline)
            .map(|n| n as i64)
            .map_err(|e| script_error(format!("ws_broadcast: {e}")))
    });
    fn close(code: &str, reason: &str) -> FnResult<bool> {
        let (host, deadline) = host()?;
        host.ws_close(code, 1000, reason, deadline)
            .map_err(|e| script_error(format!("ws_close: {e}")))
    }
    engine.register_fn("ws_close", |code: &str, reason: &str| -> FnResult<bool> {
        close(code, reason)
    });
    engine.register_fn("ws_close", |code: &str| -> FnResult<bool> {
        close(code, "")
    });
    fn emit(event_type: &str, data: serde_json::Value) -> FnResult<i64> {
        no_inline()?;
        let bytes = event_type.len() + serde_json::to_string(&data).map_or(0, |s| s.len());
        charge(|spent| spent.event(bytes))?;
        let (host, deadline) = with_run(|run| (run.host.clone(), run.deadline))
            .ok_or_else(|| script_error("no run in progress"))?;
        // A database write is a wait: the compute slot goes to another run meanwhile.
        blocking(|| host.emit_event(event_type, data, deadline)).map_err(script_error)
    }
    engine.register_fn(
        "emit_event",
        |event_type: &str, data: Dynamic| -> FnResult<i64> {
            no_inline()?;
            let data = serde_json::to_value(&data)
                .map_err(|e| script_error(format!("emit_event: {e}")))?;
            emit(event_type, data)
        },
    );
    engine.register_fn("emit_event", |event_type: &str| -> FnResult<i64> {
        emit(event_type, serde_json::json!({}))
    });
    engine.register_fn("ws_sessions", || -> FnResult<rhai::Array> {
        let (host, deadline) = host()?;
        Ok(host
            .ws_sessions(deadline)
            .map_err(|e| script_error(format!("ws_sessions: {e}")))?
            .into_iter()
            .map(Dynamic::from)
            .collect())
    });
}

/// Channel state: `state_get(key)` → the value or `()`, `state_set(key, value[,
/// ttl_s])`, `state_del(key)` → bool, `seen_before(key, ttl_s)` → bool. Values are
/// kept as JSON (strings, numbers, booleans, arrays, maps). Each call is a database
/// wait: the compute slot goes to another run meanwhile, and the host bounds it by
/// the run's deadline. Errors (bounds included) are script errors the script can
/// catch.
fn register_state(engine: &mut Engine) {
    fn run_of(func: &str) -> FnResult<(Arc<dyn super::ChannelHost>, Arc<Channel>, Instant)> {
        no_inline()?;
        with_run(|run| (run.host.clone(), run.channel.clone(), run.deadline))
            .ok_or_else(|| script_error(format!("{func} outside a run")))
    }
    fn fail(func: &str) -> impl FnOnce(super::channel_state::StateError) -> Box<EvalAltResult> {
        move |e| script_error(format!("{func}: {e}"))
    }
    fn set(key: &str, value: &Dynamic, ttl_s: i64) -> FnResult<()> {
        no_inline()?;
        if value.is_unit() {
            return Err(script_error(
                "state_set: the value is (); state_del(key) removes a key",
            ));
        }
        if value.is_blob() {
            return Err(script_error(
                "state_set: blobs are not stored; store to_hex(blob) or to_base64(blob)",
            ));
        }
        let json = serde_json::to_string(value)
            .map_err(|e| script_error(format!("state_set: the value is not storable: {e}")))?;
        let (host, channel, deadline) = run_of("state_set")?;
        blocking(|| host.state_set(&channel.id, key, &json, ttl_s, deadline))
            .map_err(fail("state_set"))
    }
    engine.register_fn("state_get", |key: &str| -> FnResult<Dynamic> {
        let (host, channel, deadline) = run_of("state_get")?;
        match blocking(|| host.state_get(&channel.id, key, deadline)).map_err(fail("state_get"))? {
            Some(json) => super::rhai_json::parse(&json)
                .map_err(|e| script_error(format!("state_get: the stored value: {e}"))),
            None => Ok(Dynamic::UNIT),
        }
    });
    engine.register_fn(
        "state_set",
        |key: &str, value: Dynamic, ttl_s: i64| -> FnResult<()> { set(key, &value, ttl_s) },
    );
    engine.register_fn("state_set", |key: &str, value: Dynamic| -> FnResult<()> {
        set(key, &value, 0)
    });
    engine.register_fn("state_del", |key: &str| -> FnResult<bool> {
        let (host, channel, deadline) = run_of("state_del")?;
        blocking(|| host.state_del(&channel.id, key, deadline)).map_err(fail("state_del"))
    });
    engine.register_fn("seen_before", |key: &str, ttl_s: i64| -> FnResult<bool> {
        let (host, channel, deadline) = run_of("seen_before")?;
        blocking(|| host.seen_before(&channel.id, key, ttl_s, deadline))
            .map_err(fail("seen_before"))
    });
}

/// A request body from a script value: strings and blobs as they are, `()` empty,
/// anything else as JSON.
fn dynamic_bytes(value: &Dynamic) -> FnResult<Vec<u8>> {
    if value.is_unit() {
        Ok(Vec::new())
    } else if let Some(s) = value.read_lock::<rhai::ImmutableString>() {
        Ok(s.as_bytes().to_vec())
    } else if value.is_blob() {
        Ok(value.clone().into_blob().unwrap_or_default())
    } else {
        serde_json::to_vec(value).map_err(|e| script_error(format!("body: {e}")))
    }
}

/// Request headers from a map or a JSON object string.
fn dynamic_headers(value: &Dynamic) -> FnResult<Vec<(String, String)>> {
    if value.is_unit() {
        return Ok(Vec::new());
    }
    if let Some(map) = value.read_lock::<Map>() {
        return Ok(map
            .iter()
            .map(|(k, v)| {
                let v = match v.read_lock::<rhai::ImmutableString>() {
                    Some(s) => s.to_string(),
                    None => v.to_string(),
                };
                (k.to_string(), v)
            })
            .collect());
    }
    if let Some(s) = value.read_lock::<rhai::ImmutableString>() {
        if s.trim().is_empty() {
            return Ok(Vec::new());
        }
        let parsed: serde_json::Value = serde_json::from_str(s.as_str())
            .map_err(|e| script_error(format!("headers are not a JSON object: {e}")))?;
        return ScenarioReply::headers_from_json(&parsed).map_err(|e| script_error(e.to_string()));
    }
    Err(script_error(
        "headers must be a map or a JSON object string",
    ))
}

/// The innermost error, through the wrappers Rhai adds at each function call.
fn root_cause(err: &EvalAltResult) -> &EvalAltResult {
    match err {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
        | EvalAltResult::ErrorInModule(_, inner, _) => root_cause(inner),
        other => other,
    }
}

impl ScenarioRuntime for RhaiRuntime {
    fn name(&self) -> &'static str {
        "rhai"
    }

    fn compile(&self, source: &str) -> Result<Compiled, CompileError> {
        match self.engine.compile(source) {
            Ok(ast) => Ok(Compiled(Arc::new(ast))),
            Err(err) => {
                let pos = err.position();
                Err(CompileError {
                    message: err.err_type().to_string(),
                    line: pos.line(),
                    column: pos.position(),
                })
            }
        }
    }

    fn run(&self, script: &Compiled, ctx: RunContext<'_>) -> Result<ScenarioReply, ScenarioError> {
        OPERATIONS.set(0);
        // (An inline run starts at once: its deadline is far.)
        if Instant::now() >= ctx.deadline {
            return Err(ScenarioError::Timeout);
        }
        let outcome = self.run_counted(script, ctx);
        // The run's values are dropped by now.
        crate::alloc::give_back_after_big_run();
        outcome
    }

    fn run_inline(
        &self,
        script: &Compiled,
        ctx: RunContext<'_>,
        until: Instant,
    ) -> Result<Result<ScenarioReply, ScenarioError>, Stop> {
        let run = Inline::begin(until);
        OPERATIONS.set(0);
        let outcome = self.run_counted(script, ctx);
        let stopped = inline::stopped();
        drop(run);
        crate::alloc::give_back_after_big_run();
        match stopped {
            Some(stop) => Err(stop),
            None => Ok(outcome),
        }
    }

    fn last_operations(&self) -> Option<u64> {
        Some(OPERATIONS.get())
    }
}

/// Where a failed run failed: the innermost position Rhai knows (inside a function
/// the script defined, rather than where it was called).
fn fault_position(err: &EvalAltResult) -> Position {
    let inner = match err {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
        | EvalAltResult::ErrorInModule(_, inner, _) => fault_position(inner),
        _ => Position::NONE,
    };
    if inner.is_none() {
        err.position()
    } else {
        inner
    }
}

impl RhaiRuntime {
    /// `Engine::run_ast_with_scope` with the function lookups' cache given (its own
    /// steps, minus a debugger, which scenarios have not; `RunCaches`). The statement
    /// evaluation that takes a cache is Rhai's internals API, marked deprecated there
    /// as a warning that it may change between versions (`Cargo.lock` pins the
    /// version; a change fails this build, not a run).
    fn eval(
        &self,
        caches: &mut rhai::Caches,
        scope: &mut Scope,
        ast: &AST,
    ) -> Result<(), Box<EvalAltResult>> {
        let mut global = self.engine.new_global_runtime_state();
        global.source = ast.source().map(Into::into);
        global.lib.push(ast.shared_lib().clone());
        global.embedded_module_resolver = ast.resolver().cloned();
        #[allow(deprecated)]
        self.engine
            .eval_statements_raw(&mut global, caches, scope, ast.statements())
            .map(drop)
    }

    /// One run, its memory and other spending counted (`scenario::budget`).
    fn run_counted(
        &self,
        script: &Compiled,
        ctx: RunContext<'_>,
    ) -> Result<ScenarioReply, ScenarioError> {
        let ast = script.0.downcast_ref::<AST>().ok_or_else(|| {
            ScenarioError::Script("script was compiled by another runtime".into())
        })?;
        // However the run ends (a panic too), its state does not outlive it: its
        // memory counting would go on counting the thread's own allocations (an HTTP
        // worker's, for an inline run).
        let state = RunState {
            params: ctx.params,
            deadline: ctx.deadline,
            logger: ctx.logger,
            channel: ctx.channel,
            host: ctx.host,
            spent: Spent::start(&self.budgets),
            secrets: ctx.secrets,
        };
        let current = CurrentRun::set(&state);
        // The run's scope, kept for the next run of this thread (reset when this ends).
        let mut run_scope = RunScope::take();
        let scope = &mut run_scope.scope;
        let mut caches = RunCaches::take(&script.0);
        let outcome = self.eval(&mut caches.caches, scope, ast);
        caches.keep();
        // An inline run that ended writes the lines it held back.
        if inline::active() && inline::stopped().is_none() {
            let held = inline::take_held_log();
            if !held.is_empty() {
                with_run(|run| {
                    for (level, text) in &held {
                        write_log(run, level, text);
                    }
                });
            }
        }
        // A budget broken where the script could not be stopped at once (a print on
        // its last line) fails the run all the same.
        let broken = budget::broken();
        drop(current);
        drop(state);
        let secrets = ctx.secrets;
        if let Some(kind) = broken {
            budget::count_exceeded(kind);
            return Err(ScenarioError::Budget(kind));
        }
        match outcome {
            Ok(()) => run_scope.reply(),
            Err(err) => match root_cause(&err) {
                EvalAltResult::Exit(..) => run_scope.reply(),
                EvalAltResult::ErrorTerminated(mark, _) if mark.is::<BudgetMark>() => {
                    let kind = mark.clone().cast::<BudgetMark>().0;
                    budget::count_exceeded(kind);
                    Err(ScenarioError::Budget(kind))
                }
                EvalAltResult::ErrorTerminated(mark, _)
                    if mark
                        .read_lock::<rhai::ImmutableString>()
                        .is_some_and(|m| m.as_str() == TIMEOUT_MARK) =>
                {
                    Err(ScenarioError::Timeout)
                }
                EvalAltResult::ErrorTooManyOperations(_) => {
                    Err(ScenarioError::Limit("operations".into()))
                }
                EvalAltResult::ErrorStackOverflow(_) => {
                    Err(ScenarioError::Limit("call depth".into()))
                }
                EvalAltResult::ErrorDataTooLarge(what, _) => {
                    Err(ScenarioError::Limit(format!("size ({what})")))
                }
                _ => {
                    let at = fault_position(&err);
                    Err(ScenarioError::Script(super::ScriptFault {
                        message: secrets.hide(&err.to_string()).into_owned(),
                        line: at.line(),
                        column: at.position(),
                    }))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn outgoing() -> Arc<OutgoingClient> {
        Arc::new(OutgoingClient::new(
            &crate::scenario::outgoing::OutgoingSettings {
                timeout: Duration::from_secs(1),
                max_response_bytes: 1024,
                max_connections_per_host: 4,
                idle_timeout: Duration::from_secs(15),
            },
            crate::net::tls::client_config(None).unwrap(),
        ))
    }

    fn runtime() -> RhaiRuntime {
        RhaiRuntime::new(
            &RhaiLimits {
                max_operations: 1_000_000,
                max_call_depth: 32,
                max_string_bytes: 1 << 20,
                max_array_len: 10_000,
                max_map_len: 10_000,
                budgets: Budgets::default(),
            },
            outgoing(),
        )
    }

    fn channel() -> Arc<Channel> {
        Arc::new(Channel {
            id: "id".into(),
            domain: "d".into(),
            code: "c".into(),
            kind: "public".into(),
            wait_for_completion: true,
            token: "t".into(),
            enabled: true,
            version: 1,
            ..Channel::default()
        })
    }

    fn run(src: &str, timeout: Duration) -> Result<ScenarioReply, ScenarioError> {
        let rt = runtime();
        let compiled = rt.compile(src).map_err(ScenarioError::Compile)?;
        run_compiled(&rt, &compiled, timeout)
    }

    fn run_compiled(
        rt: &RhaiRuntime,
        compiled: &Compiled,
        timeout: Duration,
    ) -> Result<ScenarioReply, ScenarioError> {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let params = (1..=7).map(|i| format!("p{i}")).collect::<Vec<String>>();
        rt.run(
            compiled,
            RunContext {
                channel: &channel(),
                secrets: &Arc::default(),
                params: &params,
                deadline: Instant::now() + timeout,
                logger: &logger,
                host: &no_host(),
            },
        )
    }

    fn no_host() -> Arc<dyn super::super::ChannelHost> {
        Arc::new(super::super::NoHost)
    }

    #[test]
    fn reply_fields_and_stop_keep_what_was_set() {
        let r = run(
            r#"response_code = 201; response_content = startparam(2);
               response_headers = #{"X-A": "1"}; stop(); response_code = 500;"#,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(r.code, 201);
        assert_eq!(r.content, b"p2");
        assert_eq!(r.headers, vec![("X-A".to_string(), "1".to_string())]);
    }

    #[test]
    fn a_reply_variable_declared_again_is_the_one_replied() {
        // The reply takes the last declared of each name.
        let r = run(
            r#"let response_content = "own"; let response_code = 201; let x = 1;"#,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!((r.code, r.content.as_slice()), (201, &b"own"[..]));
        let r = run(r#"response_content = "top";"#, Duration::from_secs(5)).unwrap();
        assert_eq!((r.code, r.content.as_slice()), (200, &b"top"[..]));
    }

    #[test]
    fn nothing_of_a_run_reaches_the_next_on_its_thread() {
        // The scope is kept between the runs of a thread (`RunScope`): what a run
        // declared, shadowed, shared or made constant is gone, the three reply variables
        // are back at their defaults.
        let first = [
            r#"let leftover = 1; response_code = 500; response_content = "x";
               response_headers = #{"X-A": "1"};"#,
            r#"let response_code = 404; const response_content = "c"; response_code = 201;"#,
            r#"let f = || response_content; response_content = "shared"; f.call();
               response_headers.put = 1;"#,
            "fn g() { 1 } response_code = 1000;",
            // (On a map, `.tag` is its key "tag".)
            "response_code.tag = 7; response_content.tag = 7; response_headers.tag = 7;",
            r#"response_code = #{}; response_content = #{}; response_headers = "";"#,
            r#"response_headers.x = 1; response_headers.remove("x"); response_content = "";"#,
        ];
        for script in first {
            let _ = run(script, Duration::from_secs(5));
            let r = run(
                r#"if is_def_var("leftover") || is_def_var("f") { response_code = 500; }
                   if response_code.tag != 0 || response_content.tag != 0 { response_code = 501; }
                   response_content += "next"; response_headers.next = type_of(response_headers);"#,
                Duration::from_secs(5),
            )
            .unwrap();
            assert_eq!(r.code, 200, "after {script}");
            assert_eq!(r.content, b"next", "after {script}");
            assert_eq!(
                r.headers,
                vec![("next".to_string(), "map".to_string())],
                "after {script}"
            );
        }
    }

    #[test]
    fn each_script_finds_its_own_functions() {
        // A thread keeps the function lookups of the script it ran last (`RunCaches`):
        // two scripts with a function of the same name, run in turns, each call their own.
        let rt = runtime();
        let one = rt
            .compile("fn f() { 1 } response_code = 200 + f() + f();")
            .unwrap();
        let two = rt
            .compile("fn f() { 2 } response_code = 200 + f() + f();")
            .unwrap();
        let codes: Vec<u16> = [&one, &one, &two, &two, &one, &two]
            .into_iter()
            .map(|script| {
                run_compiled(&rt, script, Duration::from_secs(5))
                    .unwrap()
                    .code
            })
            .collect();
        assert_eq!(codes, [202, 202, 204, 204, 202, 204]);
        // The script run last dropped, and another compiled (the kept lookups hold the
        // old one's address weakly, so the new one cannot take it).
        drop(two);
        let three = rt
            .compile("fn f() { 3 } response_code = 200 + f() + f();")
            .unwrap();
        assert_eq!(
            run_compiled(&rt, &three, Duration::from_secs(5))
                .unwrap()
                .code,
            206
        );
    }

    #[test]
    fn export_is_refused() {
        let err = run("export response_code as x;", Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, ScenarioError::Compile(_)), "{err:?}");
    }

    #[test]
    fn stop_inside_a_function_is_a_correct_end() {
        let r = run(
            "fn f() { stop(); } response_code = 202; f(); response_code = 500;",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(r.code, 202);
    }

    #[test]
    fn loops_and_recursion_are_stopped() {
        assert_eq!(
            run("loop {}", Duration::from_secs(5)),
            Err(ScenarioError::Limit("operations".into()))
        );
        assert_eq!(
            run("fn f(n) { f(n + 1) } f(0);", Duration::from_secs(5)),
            Err(ScenarioError::Limit("call depth".into()))
        );
        let rt = RhaiRuntime::new(
            &RhaiLimits {
                max_operations: 0,
                max_call_depth: 8,
                max_string_bytes: 1 << 20,
                max_array_len: 10,
                max_map_len: 10,
                budgets: Budgets::default(),
            },
            outgoing(),
        );
        let compiled = rt.compile("loop {}").unwrap();
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let err = rt.run(
            &compiled,
            RunContext {
                channel: &channel(),
                secrets: &Arc::default(),
                params: &Vec::<String>::new(),
                deadline: Instant::now() + Duration::from_millis(50),
                logger: &logger,
                host: &no_host(),
            },
        );
        assert_eq!(err, Err(ScenarioError::Timeout));
    }

    #[test]
    fn compile_errors_have_a_position() {
        let err = runtime().compile("let x = 1;\nlet y = ;").err().unwrap();
        assert_eq!(err.line, Some(2));
        assert!(err.column.is_some());
    }

    #[test]
    fn json_helpers_round_trip() {
        let r = run(
            r#"let v = parse_json("{\"a\":[1,2]}"); response_content = to_json(v.a);"#,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(r.content, b"[1,2]");
        let r = run(
            r#"let v = parse_json("{\"a\":1,\"b\":2.5,\"c\":[true,null,\"x\"],\"d\":{\"e\":-3}}");
               response_content = `${type_of(v.a)} ${type_of(v.b)} ${v.c[0]} ${v.c[1] == ()} ${v.c[2]} ${v.d.e}`;"#,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&r.content),
            "i64 f64 true true x -3"
        );
        assert!(run(r#"parse_json("{");"#, Duration::from_secs(5)).is_err());
    }

    #[test]
    fn to_json_writes_json_for_maps_too() {
        let r = run(
            r#"let m = #{ b: "tab\t esc\x1b del\x7f é", a: [1, 2.5, ()], c: #{ d: true } };
               response_content = to_json(m);"#,
            Duration::from_secs(5),
        )
        .unwrap();
        let text = String::from_utf8(r.content).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"a": [1, 2.5, null], "b": "tab\t esc\u{1b} del\u{7f} é", "c": {"d": true}})
        );
    }
}
