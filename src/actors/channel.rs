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
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use actix::prelude::*;

use super::handle::{
    Apply, ChannelHandle, ChannelMailbox, ChannelStats, InjectPanic, Ping, Precompiled, Retire,
};
use super::registry::ChannelRegistry;
use super::sessions::SessionTable;
use crate::db::models::Channel;
use crate::db::{Database, channels as channel_rows};

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
            mailbox(ctx.address()),
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
                    // Out of the registry first, as `Retire` does: a session that
                    // registers after `close_all` then finds its channel gone
                    // (`WsSession::started`).
                    registry.remove(&act.id);
                    act.sessions
                        .close_all(super::close_code::GOING_AWAY, "channel removed");
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

impl Handler<Ping> for ChannelActor {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
}

impl Handler<InjectPanic> for ChannelActor {
    type Result = bool;
    fn handle(&mut self, _: InjectPanic, ctx: &mut Context<Self>) -> bool {
        self.guarded(ctx, |_| -> bool {
            panic!("fault injection: channel actor panic")
        })
        .unwrap_or(false)
    }
}

/// What a handle keeps of the actor's address: the messages others send it.
fn mailbox(actor: Addr<ChannelActor>) -> ChannelMailbox {
    ChannelMailbox {
        apply: actor.clone().recipient(),
        retire: actor.clone().recipient(),
        ping: actor.clone().recipient(),
        inject_panic: actor.recipient(),
    }
}
