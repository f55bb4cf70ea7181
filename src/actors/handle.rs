//! ChannelHandle: one version of a live channel as requests see it, published by its
//! `ChannelActor` in the registry; and the messages the actor takes. Both live apart
//! from the actor so that the registry, the sessions and the HTTP layer need the handle
//! without needing the actor (`actors::channel` depends on this module, not the
//! reverse).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use actix::prelude::*;

use super::sessions::SessionTable;
use crate::db::models::Channel;
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
    /// The channel's actor: its changes go there.
    pub actor: ChannelMailbox,
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
        actor: ChannelMailbox,
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
    pub fn channel_json(&self) -> &Arc<str> {
        self.channel_json
            .get_or_init(|| crate::channels::scenario_json(&self.channel).into())
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

/// The channel's actor as a handle reaches it: one recipient per message it takes.
#[derive(Clone)]
pub struct ChannelMailbox {
    pub apply: Recipient<Apply>,
    pub retire: Recipient<Retire>,
    pub ping: Recipient<Ping>,
    pub inject_panic: Recipient<InjectPanic>,
}

/// A new version of the channel (saved by the admin API): the actor takes it and
/// publishes it. An older version than the actor's is ignored.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Apply {
    pub channel: Channel,
    pub compiled: Precompiled,
}

/// The channel was deleted or left this node: taken out of service, its websockets
/// closed (1001), the actor stopped for good.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire;

/// Answers once the actor runs (start-up probes and benchmarks).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;

/// Test hook (only with `fault_injection`): panic inside the actor.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct InjectPanic;
