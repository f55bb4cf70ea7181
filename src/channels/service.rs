//! ChannelService: create, change and delete channels — validated, stored, and applied
//! live to this node's registry so that the next request sees the change.

use std::sync::Arc;

use actix::prelude::*;

use super::validate::{ChannelInput, ValidationError, generate_token};
use crate::actors::close_code;
use crate::actors::handle::{Apply, Ping, Precompiled, Retire};
use crate::actors::sessions::SessionTable;
use crate::actors::{ChannelActor, ChannelRegistry, ChannelStats};
use crate::config::Config;
use crate::db::channel_versions::{self as versions, Save};
use crate::db::channels::{self as rows, ChannelFilter};
use crate::db::models::{Channel, ChannelVersion};
use crate::db::{Database, StoreError, now_millis};
use crate::scenario::dispatch::Dispatcher;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("no channel with this id")]
    NotFound,
    #[error("this channel has no kept version {0}")]
    VersionNotFound(i64),
    #[error("this channel has no recorded execution with this id")]
    ExecutionNotFound,
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(StoreError),
    /// A dry run the node could not take (busy), or that never reported back.
    #[error(transparent)]
    Scenario(crate::scenario::ScenarioError),
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
    pub arbiters: super::ChannelArbiters,
    pub logger: slog::Logger,
    /// The node's outbound websocket budget, shared by every channel's sessions.
    pub outbound: Arc<crate::actors::ws_backlog::OutboundBudget>,
    /// Sessions on the cluster's other nodes (PostgreSQL); None on a single node.
    pub elsewhere: Option<Arc<dyn crate::actors::sessions::ElsewhereSessions>>,
}

#[derive(Clone)]
pub struct ChannelService {
    db: Database,
    /// The domain whose channels this service manages (a node may serve several).
    domain: String,
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
            domain: config.domain.clone(),
            config,
            dispatcher,
            live,
            writes: Arc::default(),
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The same service for another domain of this node, going live through `live`
    /// (that domain's sessions directory; the registry is shared: tokens are unique).
    pub fn for_domain(&self, domain: &str, live: Option<LiveNode>) -> ChannelService {
        ChannelService {
            db: self.db.clone(),
            domain: domain.to_string(),
            config: self.config.clone(),
            dispatcher: self.dispatcher.clone(),
            live,
            writes: Arc::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// Where changes go live (absent for the CLI).
    pub fn live_node(&self) -> Option<&LiveNode> {
        self.live.as_ref()
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
            domain: self.domain.clone(),
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
            guards: String::new(),
            history: crate::executions::History::Errors.as_str().to_string(),
        };
        input.apply(&mut channel)?;
        let compiled = self.compile(&channel).await?;
        let row = channel.clone();
        let (note, keep) = self.save_of(&input);
        let _writing = self.writes.lock().await;
        self.db
            .run(move |c| rows::insert(c, &row, &Save { note: &note, keep }))
            .await?;
        self.go_live(channel.clone(), compiled).await;
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
        let (note, keep) = self.save_of(&input);
        let _writing = self.writes.lock().await;
        let written = self
            .db
            .run(move |c| rows::update(c, &row, expected, &Save { note: &note, keep }))
            .await?;
        if !written {
            // Gone meanwhile (404), or changed meanwhile (409).
            self.get(id).await?;
            return Err(ServiceError::Conflict(
                "the channel changed while this update was made; read it again and retry".into(),
            ));
        }
        self.go_live(channel.clone(), compiled).await;
        Ok(channel)
    }

    /// The note and the bound of the version a save makes.
    fn save_of(&self, input: &ChannelInput) -> (String, i64) {
        let keep = i64::try_from(self.config.channel_versions_kept).unwrap_or(i64::MAX);
        (input.note.clone().unwrap_or_default(), keep)
    }

    /// The channel's kept versions, newest first (the first is the current one).
    pub async fn versions(&self, id: &str) -> Result<Vec<ChannelVersion>, ServiceError> {
        self.get(id).await?;
        let (domain, id) = (self.domain.clone(), id.to_string());
        Ok(self
            .db
            .run(move |c| versions::list(c, &domain, &id))
            .await?)
    }

    /// One kept version of the channel.
    pub async fn version(&self, id: &str, version: i64) -> Result<ChannelVersion, ServiceError> {
        self.get(id).await?;
        let (domain, id) = (self.domain.clone(), id.to_string());
        self.db
            .run(move |c| versions::find(c, &domain, &id, version))
            .await?
            .ok_or(ServiceError::VersionNotFound(version))
    }

    /// Saves a new version whose scripts are those of `version`, through [`Self::update`]
    /// (compiled, stored with the cluster told in its transaction, applied live). The
    /// note defaults to "restored from version N".
    pub async fn restore(
        &self,
        id: &str,
        version: i64,
        note: Option<String>,
    ) -> Result<Channel, ServiceError> {
        let old = self.version(id, version).await?;
        let input = ChannelInput {
            webhook_scenario: Some(old.webhook_scenario),
            websocket_scenario: Some(old.websocket_scenario),
            note: Some(note.unwrap_or_else(|| format!("restored from version {version}"))),
            ..ChannelInput::default()
        };
        self.update(id, input).await
    }

    pub async fn delete(&self, id: &str) -> Result<(), ServiceError> {
        let (domain, owned) = (self.domain.clone(), id.to_string());
        let _writing = self.writes.lock().await;
        let deleted = self
            .db
            .run(move |c| rows::delete(c, &domain, &owned))
            .await?;
        if !deleted {
            return Err(ServiceError::NotFound);
        }
        self.retire(id).await;
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Channel, ServiceError> {
        let (domain, id) = (self.domain.clone(), id.to_string());
        self.db
            .run(move |c| rows::find(c, &domain, &id))
            .await?
            .ok_or(ServiceError::NotFound)
    }

    pub async fn get_by_code(&self, code: &str) -> Result<Channel, ServiceError> {
        let (domain, code) = (self.domain.clone(), code.to_string());
        self.db
            .run(move |c| rows::find_by_code(c, &domain, &code))
            .await?
            .ok_or(ServiceError::NotFound)
    }

    pub async fn list(
        &self,
        mut filter: ChannelFilter,
    ) -> Result<(Vec<Channel>, i64), ServiceError> {
        filter.domain = self.domain.clone();
        Ok(self.db.run(move |c| rows::list(c, &filter)).await?)
    }

    /// Loads every channel of the domain into the registry (node start).
    pub async fn load_all(&self) -> Result<usize, ServiceError> {
        let domain = self.domain.clone();
        let all = self.db.run(move |c| rows::load_domain(c, &domain)).await?;
        let Some(live) = &self.live else {
            return Ok(0);
        };
        // Every actor starts (and publishes its channel) on its arbiter; then each is
        // asked once that it runs, all at once.
        let started: Vec<Addr<ChannelActor>> = all
            .into_iter()
            .filter(|c| self.config.serves_role(&c.ws_role))
            .map(|c| self.start_actor(live, c, Precompiled::default()))
            .collect();
        futures_util::future::join_all(started.iter().map(|a| a.send(Ping))).await;
        Ok(started.len())
    }

    /// Brings one channel on this node in line with the database after a note from
    /// another node: started, changed (only to a newer version), or retired when it is
    /// gone or no longer of this node's roles. Returns whether anything changed.
    pub async fn reconcile_one(&self, id: &str) -> Result<bool, ServiceError> {
        let Some(live) = &self.live else {
            return Ok(false);
        };
        // One at a time with this node's own writes, and in the order notes came: a
        // read made before a delete can never be applied after it.
        let _writing = self.writes.lock().await;
        let (domain, owned) = (self.domain.clone(), id.to_string());
        let stored = self.db.run(move |c| rows::find(c, &domain, &owned)).await?;
        let served = live.registry.get_by_id(id).map(|h| h.channel.version);
        match stored {
            Some(channel) if self.config.serves_role(&channel.ws_role) => {
                if served.is_some_and(|v| v >= channel.version) {
                    return Ok(false);
                }
                self.go_live(channel, Precompiled::default()).await;
                Ok(true)
            }
            _ if served.is_some() => {
                self.retire(id).await;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Brings every channel on this node in line with the database, comparing the
    /// *set* of ids and their versions (a version check alone would miss deletes).
    /// Run when the notification listener (re)connects, and periodically. Returns how
    /// many channels changed.
    pub async fn reconcile_all(&self) -> Result<usize, ServiceError> {
        let Some(live) = &self.live else {
            return Ok(0);
        };
        let _writing = self.writes.lock().await;
        let domain = self.domain.clone();
        let stored = self.db.run(move |c| rows::versions(c, &domain)).await?;
        let wanted: std::collections::HashMap<&str, i64> = stored
            .iter()
            .filter(|(_, _, role)| self.config.serves_role(role))
            .map(|(id, v, _)| (id.as_str(), *v))
            .collect();
        let mut changed = 0;
        for handle in live.registry.handles() {
            if handle.channel.domain == self.domain
                && !wanted.contains_key(handle.channel.id.as_str())
            {
                self.retire(&handle.channel.id).await;
                changed += 1;
            }
        }
        let behind: Vec<String> = wanted
            .iter()
            .filter(|(id, v)| {
                live.registry
                    .get_by_id(id)
                    .is_none_or(|h| h.channel.version < **v)
            })
            .map(|(id, _)| id.to_string())
            .collect();
        for id in behind {
            let domain = self.domain.clone();
            let owned = id.clone();
            // Gone since the listing: the next note or round retires it.
            if let Some(channel) = self.db.run(move |c| rows::find(c, &domain, &owned)).await? {
                self.go_live(channel, Precompiled::default()).await;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Hands a stored channel to its actor on this node (starting one for a channel new
    /// here), or retires it when it left this node's roles. Returns once the actor has
    /// published it: the change is visible when the caller answers.
    async fn go_live(&self, channel: Channel, compiled: Precompiled) {
        let Some(live) = &self.live else { return };
        if !self.config.serves_role(&channel.ws_role) {
            self.retire(&channel.id).await;
            return;
        }
        match live.registry.get_by_id(&channel.id) {
            Some(current) => {
                let _ = current.actor.apply.send(Apply { channel, compiled }).await;
            }
            None => {
                let actor = self.start_actor(live, channel, compiled);
                let _ = actor.send(Ping).await;
            }
        }
    }

    /// Starts the actor of a channel; it publishes the channel before anything else.
    fn start_actor(
        &self,
        live: &LiveNode,
        channel: Channel,
        compiled: Precompiled,
    ) -> Addr<ChannelActor> {
        let stats = Arc::new(ChannelStats::default());
        let sessions = Arc::new(
            SessionTable::new(live.outbound.clone())
                .reachable_from(live.elsewhere.clone(), &channel.id),
        );
        let (db, registry, logger) = (
            self.db.clone(),
            Arc::downgrade(&live.registry),
            live.logger.clone(),
        );
        let arbiter = live.arbiters.for_channel(&channel.id);
        let rate_clients = self.config.rate_limit_max_clients_per_channel;
        Supervisor::start_in_arbiter(arbiter, move |_| {
            ChannelActor::new(
                channel,
                compiled,
                db,
                registry,
                (stats, sessions),
                &logger,
                rate_clients,
            )
        })
    }

    /// Takes a channel out of service on this node (its actor does, and closes its
    /// websockets); returns once done.
    async fn retire(&self, id: &str) {
        let Some(live) = &self.live else { return };
        let Some(handle) = live.registry.get_by_id(id) else {
            return;
        };
        if handle.actor.retire.send(Retire).await.is_err() {
            // The actor is gone: do what it would have done.
            live.registry.remove(id);
            handle
                .sessions
                .close_all(close_code::GOING_AWAY, "channel removed");
        }
    }
}
