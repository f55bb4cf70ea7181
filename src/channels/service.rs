//! ChannelService: create, change and delete channels — validated, stored, and applied
//! live to this node's registry so that the next request sees the change.

use std::sync::Arc;

use actix::prelude::*;

use super::validate::{ChannelInput, ValidationError, generate_token};
use crate::actors::channel::{Precompiled, Retire};
use crate::actors::sessions::{SessionTable, close_code};
use crate::actors::{ChannelActor, ChannelHandle, ChannelRegistry, ChannelStats};
use crate::config::Config;
use crate::db::channels::{self as rows, ChannelFilter};
use crate::db::models::Channel;
use crate::db::{Database, StoreError, now_millis};
use crate::scenario::dispatch::Dispatcher;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("no channel with this id")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::DuplicateCode => ServiceError::Conflict(
                "code: another channel of this domain already uses this code".into(),
            ),
            other => ServiceError::Store(other),
        }
    }
}

/// Where changes go live: absent for the CLI, which only edits storage.
#[derive(Clone)]
pub struct LiveNode {
    pub registry: Arc<ChannelRegistry>,
    pub arbiter: ArbiterHandle,
    pub logger: slog::Logger,
    /// The node's outbound websocket budget, shared by every channel's sessions.
    pub outbound: Arc<crate::actors::ws_backlog::OutboundBudget>,
}

#[derive(Clone)]
pub struct ChannelService {
    db: Database,
    config: Arc<Config>,
    dispatcher: Arc<Dispatcher>,
    live: Option<LiveNode>,
    /// Channel writes on this node go one at a time, from the database write to the
    /// registry update, so that a delete and an update (or two updates) cannot publish
    /// out of order. Admin writes are rare; reads never take it.
    writes: Arc<tokio::sync::Mutex<()>>,
}

impl ChannelService {
    pub fn new(
        db: Database,
        config: Arc<Config>,
        dispatcher: Arc<Dispatcher>,
        live: Option<LiveNode>,
    ) -> ChannelService {
        ChannelService {
            db,
            config,
            dispatcher,
            live,
            writes: Arc::default(),
        }
    }

    pub fn domain(&self) -> &str {
        &self.config.domain
    }

    /// Compiles both scripts (off the async threads); a syntax error names the field.
    async fn compile(&self, channel: &Channel) -> Result<Precompiled, ServiceError> {
        let dispatcher = self.dispatcher.clone();
        let (webhook, websocket) = (
            channel.webhook_scenario.clone(),
            channel.websocket_scenario.clone(),
        );
        actix_web::rt::task::spawn_blocking(move || {
            let w = dispatcher
                .compile(&webhook)
                .map_err(|e| ValidationError::scenario("webhook_scenario", e))?;
            let s = dispatcher
                .compile(&websocket)
                .map_err(|e| ValidationError::scenario("websocket_scenario", e))?;
            Ok(Precompiled {
                webhook: Some(w),
                websocket: Some(s),
            })
        })
        .await
        .map_err(|e| ServiceError::Store(StoreError::Blocking(e.to_string())))?
    }

    pub async fn create(&self, input: ChannelInput) -> Result<Channel, ServiceError> {
        if input.code.is_none() {
            return Err(ValidationError::new("code", "is required").into());
        }
        if input.kind.is_none() {
            return Err(ValidationError::new("kind", "is required").into());
        }
        let now = now_millis();
        let mut channel = Channel {
            id: uuid::Uuid::now_v7().to_string(),
            domain: self.config.domain.clone(),
            code: String::new(),
            kind: String::new(),
            wait_for_completion: false,
            ws_role: String::new(),
            token: generate_token(),
            outgoing_url: String::new(),
            outgoing_token_primary: String::new(),
            outgoing_token_secondary: String::new(),
            webhook_scenario: String::new(),
            websocket_scenario: String::new(),
            comment: String::new(),
            enabled: true,
            version: 1,
            created_at: now,
            updated_at: now,
            ws_hello: false,
            event_types: String::new(),
        };
        input.apply(&mut channel)?;
        let compiled = self.compile(&channel).await?;
        let row = channel.clone();
        let _writing = self.writes.lock().await;
        self.db.run(move |c| rows::insert(c, &row)).await?;
        self.go_live(channel.clone(), compiled);
        Ok(channel)
    }

    pub async fn update(&self, id: &str, input: ChannelInput) -> Result<Channel, ServiceError> {
        let mut channel = self.get(id).await?;
        let expected = channel.version;
        input.apply(&mut channel)?;
        let compiled = self.compile(&channel).await?;
        channel.version = expected + 1;
        channel.updated_at = now_millis().max(channel.updated_at);
        let row = channel.clone();
        let _writing = self.writes.lock().await;
        let written = self
            .db
            .run(move |c| rows::update(c, &row, expected))
            .await?;
        if !written {
            // Gone meanwhile (404), or changed meanwhile (409).
            self.get(id).await?;
            return Err(ServiceError::Conflict(
                "the channel changed while this update was made; read it again and retry".into(),
            ));
        }
        self.go_live(channel.clone(), compiled);
        Ok(channel)
    }

    pub async fn delete(&self, id: &str) -> Result<(), ServiceError> {
        let (domain, owned) = (self.config.domain.clone(), id.to_string());
        let _writing = self.writes.lock().await;
        let deleted = self
            .db
            .run(move |c| rows::delete(c, &domain, &owned))
            .await?;
        if !deleted {
            return Err(ServiceError::NotFound);
        }
        self.retire(id);
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Channel, ServiceError> {
        let (domain, id) = (self.config.domain.clone(), id.to_string());
        self.db
            .run(move |c| rows::find(c, &domain, &id))
            .await?
            .ok_or(ServiceError::NotFound)
    }

    pub async fn get_by_code(&self, code: &str) -> Result<Channel, ServiceError> {
        let (domain, code) = (self.config.domain.clone(), code.to_string());
        self.db
            .run(move |c| rows::find_by_code(c, &domain, &code))
            .await?
            .ok_or(ServiceError::NotFound)
    }

    pub async fn list(
        &self,
        mut filter: ChannelFilter,
    ) -> Result<(Vec<Channel>, i64), ServiceError> {
        filter.domain = self.config.domain.clone();
        Ok(self.db.run(move |c| rows::list(c, &filter)).await?)
    }

    /// Loads every channel of the domain into the registry (node start).
    pub async fn load_all(&self) -> Result<usize, ServiceError> {
        let domain = self.config.domain.clone();
        let all = self.db.run(move |c| rows::load_domain(c, &domain)).await?;
        let mut served = 0;
        for channel in all {
            if self.config.serves_role(&channel.ws_role) {
                self.go_live(channel, Precompiled::default());
                served += 1;
            }
        }
        Ok(served)
    }

    /// Publishes a stored channel on this node (or takes it off when it left this
    /// node's roles). Synchronous, so the change is visible when the caller returns.
    fn go_live(&self, channel: Channel, compiled: Precompiled) {
        let Some(live) = &self.live else { return };
        if !self.config.serves_role(&channel.ws_role) {
            self.retire(&channel.id);
            return;
        }
        let channel = Arc::new(channel);
        let (actor, stats, sessions) = match live.registry.get_by_id(&channel.id) {
            Some(current) => (
                current.actor.clone(),
                current.stats.clone(),
                current.sessions.clone(),
            ),
            None => {
                let stats = Arc::new(ChannelStats::default());
                let sessions = Arc::new(SessionTable::new(live.outbound.clone()));
                let (db, registry, logger, dispatcher) = (
                    self.db.clone(),
                    Arc::downgrade(&live.registry),
                    live.logger.clone(),
                    self.dispatcher.clone(),
                );
                let (shared, c) = ((stats.clone(), sessions.clone()), channel.clone());
                let actor = Supervisor::start_in_arbiter(&live.arbiter, move |_| {
                    ChannelActor::new(&c, db, registry, dispatcher, shared, &logger)
                });
                (actor, stats, sessions)
            }
        };
        // A channel that stops taking websockets lets its open sessions go; an eventing
        // channel's open subscribers filter by its event types as they are now.
        if !channel.enabled || channel.kind != super::KIND_PUBLIC {
            sessions.close_sessions(close_code::GOING_AWAY, "channel disabled");
        }
        if !channel.enabled || channel.kind != super::KIND_EVENTING {
            sessions.close_subscribers(close_code::GOING_AWAY, "channel disabled");
        }
        sessions.event_types().set(super::event_types_of(&channel));
        let handle = ChannelHandle::new(channel, stats, sessions, actor, compiled);
        live.registry.publish(Arc::new(handle));
    }

    fn retire(&self, id: &str) {
        if let Some(live) = &self.live
            && let Some(handle) = live.registry.remove(id)
        {
            handle
                .sessions
                .close_all(close_code::GOING_AWAY, "channel removed");
            handle.actor.do_send(Retire);
        }
    }
}
