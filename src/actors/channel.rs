//! ChannelActor: one per channel served by this node, under an actix `Supervisor`.
//!
//! The actor owns its channel: it holds the current version of its settings (token
//! included) and is the only one that publishes it. A create starts it with the first
//! version, an update sends it the next one ([`Apply`]), a delete retires it
//! ([`Retire`]); after a restart it reloads its settings from storage. What requests
//! need of a channel is published as an immutable [`ChannelHandle`] in the registry, so
//! that webhooks and websocket messages reach the scenario pool without a mailbox hop
//! (the hot paths: one cross-thread hop before a scenario starts); the actor's mailbox
//! takes the channel's changes.
//!
//! A panic inside a handler is caught, counted, and turned into a stop; the supervisor
//! then restarts the actor with fresh settings. One bad channel never disturbs another.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use actix::prelude::*;

use super::registry::ChannelRegistry;
use super::sessions::SessionTable;
use crate::db::models::Channel;
use crate::db::{Database, channels as channel_rows};
use crate::scenario::{CompileError, Compiled, ScenarioRuntime};

/// Which of a channel's scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptKind {
    Webhook,
    Websocket,
}

pub use super::stats::ChannelStats;

/// One version of a live channel, as requests see it. Immutable: a change publishes a
/// new handle. Scripts compile on first use (or come precompiled from the save).
pub struct ChannelHandle {
    pub channel: Arc<Channel>,
    pub stats: Arc<ChannelStats>,
    /// Open websocket sessions; shared by every version of the channel.
    pub sessions: Arc<SessionTable>,
    pub actor: Addr<ChannelActor>,
    /// Checks before any scenario (`channels::guards`), built when this version was
    /// published; `None` for a channel without any: the webhook pays one branch.
    pub guards: Option<Box<crate::channels::guards::Guards>>,
    /// Which runs go to the execution history (the channel's `history`).
    pub history: crate::executions::History,
    channel_json: OnceLock<Arc<str>>,
    secrets: OnceLock<Arc<crate::redact::Secrets>>,
    logger: OnceLock<slog::Logger>,
    host: OnceLock<Arc<dyn crate::scenario::ChannelHost>>,
    recording_host: OnceLock<Arc<crate::executions::capture::RecordingHost>>,
    webhook: OnceLock<Result<Compiled, CompileError>>,
    websocket: OnceLock<Result<Compiled, CompileError>>,
    /// Whether each script may still be tried inline (`scenario::inline`).
    webhook_inline: crate::scenario::inline::Strikes,
    websocket_inline: crate::scenario::inline::Strikes,
    /// Set by the registry when this handle stops being the one its token finds (a
    /// newer version was published, or the channel was removed): holders that kept it
    /// look the token up again.
    superseded: AtomicBool,
}

impl ChannelHandle {
    pub fn new(
        channel: Arc<Channel>,
        stats: Arc<ChannelStats>,
        sessions: Arc<SessionTable>,
        actor: Addr<ChannelActor>,
        precompiled: Precompiled,
        guards: Option<Box<crate::channels::guards::Guards>>,
    ) -> ChannelHandle {
        let handle = ChannelHandle {
            history: crate::executions::History::of(&channel),
            channel,
            stats,
            sessions,
            actor,
            guards,
            channel_json: OnceLock::new(),
            secrets: OnceLock::new(),
            logger: OnceLock::new(),
            host: OnceLock::new(),
            recording_host: OnceLock::new(),
            webhook: OnceLock::new(),
            websocket: OnceLock::new(),
            webhook_inline: Default::default(),
            websocket_inline: Default::default(),
            superseded: AtomicBool::new(false),
        };
        if let Some(c) = precompiled.webhook {
            let _ = handle.webhook.set(Ok(c));
        }
        if let Some(c) = precompiled.websocket {
            let _ = handle.websocket.set(Ok(c));
        }
        handle
    }

    /// Whether the registry no longer hands this handle out for its token.
    pub fn is_superseded(&self) -> bool {
        self.superseded.load(Ordering::Acquire)
    }

    pub(super) fn supersede(&self) {
        self.superseded.store(true, Ordering::Release);
    }

    /// `startparam(1)`: the channel as JSON, secrets left out.
    pub fn channel_json(&self) -> Arc<str> {
        self.channel_json
            .get_or_init(|| crate::channels::scenario_json(&self.channel).into())
            .clone()
    }

    /// What its runs keep out of what they write down (`channels::run_secrets`), made
    /// once per version rather than on every run.
    pub fn secrets(&self) -> &Arc<crate::redact::Secrets> {
        self.secrets
            .get_or_init(|| Arc::new(crate::channels::run_secrets(&self.channel)))
    }

    /// What this channel's scenarios reach (sessions, event log, channel state), made
    /// once per version.
    pub fn host(
        &self,
        events: &crate::events::EventService,
        state: Option<&Arc<crate::scenario::channel_state::StateStore>>,
    ) -> Arc<dyn crate::scenario::ChannelHost> {
        self.host
            .get_or_init(|| {
                Arc::new(super::scenario_host::ScenarioHost {
                    sessions: self.sessions.clone(),
                    events: events.clone(),
                    state: state.cloned(),
                })
            })
            .clone()
    }

    /// The host of runs recorded in the execution history: [`Self::host`], noting
    /// log lines and outgoing calls; made once per version (texts cut at `max_bytes`).
    pub fn recording_host(
        &self,
        events: &crate::events::EventService,
        state: Option<&Arc<crate::scenario::channel_state::StateStore>>,
        max_bytes: usize,
    ) -> Arc<crate::executions::capture::RecordingHost> {
        self.recording_host
            .get_or_init(|| {
                Arc::new(crate::executions::capture::RecordingHost::new(
                    self.host(events, state),
                    crate::scenario::record::Masker::new(self.channel.clone(), max_bytes),
                ))
            })
            .clone()
    }

    /// The node's logger tagged with this channel, made once per channel version.
    pub fn logger(&self, base: &slog::Logger) -> &slog::Logger {
        self.logger
            .get_or_init(|| base.new(slog::o!("channel" => self.channel.code.clone())))
    }

    /// The compiled script, compiling it on first use. Call on a scenario thread.
    pub fn script(
        &self,
        kind: ScriptKind,
        runtime: &dyn ScenarioRuntime,
    ) -> &Result<Compiled, CompileError> {
        let (cell, source) = match kind {
            ScriptKind::Webhook => (&self.webhook, &self.channel.webhook_scenario),
            ScriptKind::Websocket => (&self.websocket, &self.channel.websocket_scenario),
        };
        cell.get_or_init(|| runtime.compile(source))
    }

    /// One of the channel's scripts if it is compiled already.
    pub fn compiled(&self, kind: ScriptKind) -> Option<&Result<Compiled, CompileError>> {
        match kind {
            ScriptKind::Webhook => self.webhook.get(),
            ScriptKind::Websocket => self.websocket.get(),
        }
    }

    /// Whether one of the channel's scripts may still be tried inline.
    pub fn inline_strikes(&self, kind: ScriptKind) -> &crate::scenario::inline::Strikes {
        match kind {
            ScriptKind::Webhook => &self.webhook_inline,
            ScriptKind::Websocket => &self.websocket_inline,
        }
    }
}

/// Scripts already compiled when the channel was saved.
#[derive(Default)]
pub struct Precompiled {
    pub webhook: Option<Compiled>,
    pub websocket: Option<Compiled>,
}

pub struct ChannelActor {
    id: String,
    /// The version of the channel this actor serves: the one it published last.
    channel: Arc<Channel>,
    /// Scripts compiled when this version was saved, published with it at start.
    precompiled: Option<Precompiled>,
    db: Database,
    domain: String,
    registry: Weak<ChannelRegistry>,
    stats: Arc<ChannelStats>,
    sessions: Arc<SessionTable>,
    logger: slog::Logger,
    /// Client IPs a per-client rate limit keeps (`rate_limit_max_clients_per_channel`).
    rate_clients: usize,
    /// Deleted or moved off this node: never republish.
    retired: bool,
}

impl ChannelActor {
    pub fn new(
        channel: Channel,
        precompiled: Precompiled,
        db: Database,
        registry: Weak<ChannelRegistry>,
        shared: (Arc<ChannelStats>, Arc<SessionTable>),
        logger: &slog::Logger,
        rate_clients: usize,
    ) -> ChannelActor {
        let (stats, sessions) = shared;
        ChannelActor {
            id: channel.id.clone(),
            logger: logger.new(slog::o!("channel" => channel.code.clone())),
            domain: channel.domain.clone(),
            channel: Arc::new(channel),
            precompiled: Some(precompiled),
            db,
            registry,
            stats,
            sessions,
            rate_clients,
            retired: false,
        }
    }

    /// Makes the actor's version of the channel the one requests see; a channel that
    /// stops taking websockets lets its open sessions go, and an eventing channel's
    /// subscribers filter by its event types as they are now.
    fn publish(&mut self, ctx: &mut Context<Self>, compiled: Precompiled) {
        let Some(registry) = self.registry.upgrade() else {
            return;
        };
        let channel = &self.channel;
        let going_away = super::close_code::GOING_AWAY;
        if !channel.enabled || channel.kind != crate::channels::KIND_PUBLIC {
            self.sessions.close_sessions(going_away, "channel disabled");
        }
        if !channel.enabled || channel.kind != crate::channels::KIND_EVENTING {
            self.sessions
                .close_subscribers(going_away, "channel disabled");
        }
        self.sessions
            .event_types()
            .set(crate::channels::event_types_of(channel));
        // The guards are built here, once per version, off the request path.
        let (guards, broken) =
            crate::channels::guards::Guards::build(channel, &self.stats, self.rate_clients);
        if let Some(e) = broken {
            slog::error!(self.logger, "channel guards"; "error" => %e);
        }
        let handle = ChannelHandle::new(
            channel.clone(),
            self.stats.clone(),
            self.sessions.clone(),
            ctx.address(),
            compiled,
            guards,
        );
        registry.publish(Arc::new(handle));
    }

    /// Runs handler work; a panic is logged and stops the actor so that the
    /// supervisor restarts it with fresh settings.
    fn guarded<R>(
        &mut self,
        ctx: &mut Context<Self>,
        work: impl FnOnce(&mut Self) -> R,
    ) -> Option<R> {
        match catch_unwind(AssertUnwindSafe(|| work(self))) {
            Ok(r) => Some(r),
            Err(_) => {
                slog::error!(self.logger, "channel actor panicked; restarting it");
                ctx.stop();
                None
            }
        }
    }
}

impl Actor for ChannelActor {
    type Context = Context<Self>;

    /// The first version is published before any message is handled: whoever started
    /// the actor and then sends it a message sees the channel live when it answers.
    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(compiled) = self.precompiled.take() {
            self.publish(ctx, compiled);
        }
    }
}

impl Supervised for ChannelActor {
    /// After a crash: reload the channel from storage and publish it again, so that the
    /// next request sees a consistent, current channel.
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        if self.retired {
            // Requests still holding its address keep it alive until they finish;
            // then the mailbox disconnects and the supervisor lets it go.
            return;
        }
        self.stats.restarts.fetch_add(1, Ordering::Relaxed);
        let db = self.db.clone();
        let (domain, id) = (self.domain.clone(), self.id.clone());
        let fut = async move { db.run(move |c| channel_rows::find(c, &domain, &id)).await };
        ctx.wait(fut.into_actor(self).map(|loaded, act, ctx| {
            let Some(registry) = act.registry.upgrade() else {
                ctx.stop();
                return;
            };
            match loaded {
                Ok(Some(channel)) => {
                    // Only the same or a newer version than the actor's: a change
                    // applied while reloading wins.
                    if act.retired || channel.version < act.channel.version {
                        return;
                    }
                    act.channel = Arc::new(channel);
                    act.publish(ctx, Precompiled::default());
                    slog::info!(act.logger, "channel actor restarted"; "restarts" => act.stats.restarts.load(Ordering::Relaxed));
                }
                Ok(None) => {
                    // Deleted behind our back (e.g. by the CLI): retire for good.
                    act.retired = true;
                    act.sessions
                        .close_all(super::close_code::GOING_AWAY, "channel removed");
                    registry.remove(&act.id);
                    ctx.stop();
                }
                Err(e) => {
                    // Keep serving the last published version; the next restart retries.
                    slog::error!(act.logger, "reloading the channel after a restart failed"; "error" => %e);
                }
            }
        }));
    }
}

/// A new version of the channel (saved by the admin API): the actor takes it and
/// publishes it. An older version than the actor's is ignored.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Apply {
    pub channel: Channel,
    pub compiled: Precompiled,
}

impl Handler<Apply> for ChannelActor {
    type Result = ();
    fn handle(&mut self, msg: Apply, ctx: &mut Context<Self>) {
        if self.retired || msg.channel.version < self.channel.version {
            return;
        }
        self.channel = Arc::new(msg.channel);
        self.publish(ctx, msg.compiled);
    }
}

/// The version of the channel the actor serves (admin view, tests).
#[derive(Message)]
#[rtype(result = "i64")]
pub struct CurrentVersion;

impl Handler<CurrentVersion> for ChannelActor {
    type Result = i64;
    fn handle(&mut self, _: CurrentVersion, _: &mut Context<Self>) -> i64 {
        self.channel.version
    }
}

/// The channel was deleted or left this node: taken out of service, its websockets
/// closed (1001), the actor stopped for good.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire;

impl Handler<Retire> for ChannelActor {
    type Result = ();
    fn handle(&mut self, _: Retire, ctx: &mut Context<Self>) {
        self.retired = true;
        if let Some(registry) = self.registry.upgrade() {
            registry.remove(&self.id);
        }
        self.sessions
            .close_all(super::close_code::GOING_AWAY, "channel removed");
        ctx.stop();
    }
}

/// Answers once the actor runs (start-up probes and benchmarks).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;

impl Handler<Ping> for ChannelActor {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
}

/// Test hook (only with `fault_injection`): panic inside the actor.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct InjectPanic;

impl Handler<InjectPanic> for ChannelActor {
    type Result = bool;
    fn handle(&mut self, _: InjectPanic, ctx: &mut Context<Self>) -> bool {
        self.guarded(ctx, |_| -> bool {
            panic!("fault injection: channel actor panic")
        })
        .unwrap_or(false)
    }
}

/// A websocket message's start parameters: `startparam(1)` the session code, `(2)` the
/// message, `(3)` the channel as JSON (shared, not copied), `(4)` the peer IP.
pub struct WsParams {
    pub code: Arc<str>,
    pub text: bytestring::ByteString,
    pub channel_json: Arc<str>,
    pub peer_ip: Arc<str>,
}

impl crate::scenario::StartParams for WsParams {
    fn count(&self) -> usize {
        4
    }

    fn get(&self, n: usize) -> Option<String> {
        Some(match n {
            // Copies of the text (`to_string` on these types goes through formatting).
            1 => String::from(&*self.code),
            2 => String::from(&*self.text),
            3 => String::from(&*self.channel_json),
            4 => String::from(&*self.peer_ip),
            _ => return None,
        })
    }

    fn held_bytes(&self) -> usize {
        self.code.len() + self.text.len() + self.peer_ip.len()
    }

    fn input_bytes(&self) -> usize {
        self.text.len()
    }
}
