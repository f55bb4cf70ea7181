//! Webhook subscriptions of eventing channels, for the HTTP layer (the subscriber's
//! `/api/token/v1/{token}/subscribe` and the operator's `/admin/v1/subscriptions`) and
//! the command line alike: one place that creates, lists, deletes and re-enables them.

use crate::channels::ValidationError;
use crate::db::models::Subscription;
use crate::db::{Database, StoreError, events as log, now_millis, subscriptions as rows};

use super::signing::new_secret;
use super::webhooks::SubscriptionInput;

/// Subscriptions one channel may have.
pub const MAX_PER_CHANNEL: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("a channel may have at most {MAX_PER_CHANNEL} subscriptions")]
    TooMany,
    #[error("no subscription with this id")]
    NotFound,
    #[error("checking the URL failed: {0}")]
    Check(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The subscriptions of one domain.
pub struct SubscriptionService {
    db: Database,
    domain: String,
}

impl SubscriptionService {
    pub fn new(db: Database, domain: &str) -> SubscriptionService {
        SubscriptionService {
            db,
            domain: domain.to_string(),
        }
    }

    /// Subscribes a URL to an eventing channel's events; the row carries its new
    /// signing secret. The URL's host is resolved (a blocking lookup) off the caller's
    /// thread; private targets are refused unless `allow_private`.
    pub async fn create(
        &self,
        channel_id: &str,
        input: SubscriptionInput,
        allow_private: bool,
    ) -> Result<Subscription, SubscriptionError> {
        let (input, checked) = actix_web::rt::task::spawn_blocking(move || {
            let checked = input.validate(allow_private);
            (input, checked)
        })
        .await
        .map_err(|e| SubscriptionError::Check(e.to_string()))?;
        checked?;
        let now = now_millis();
        let sub = Subscription {
            id: format!("sub_{}", uuid::Uuid::now_v7().simple()),
            domain: self.domain.clone(),
            channel_id: channel_id.to_string(),
            url: input.url,
            event_types: if input.event_types.is_empty() {
                String::new()
            } else {
                serde_json::to_string(&input.event_types).unwrap_or_default()
            },
            description: input.description,
            secret: new_secret(),
            previous_secret: String::new(),
            previous_secret_until: 0,
            enabled: true,
            disabled_reason: String::new(),
            failing_since: 0,
            created_at: now,
            updated_at: now,
            after_event_id: 0,
        };
        let mut row = sub.clone();
        let (domain, channel_id) = (self.domain.clone(), channel_id.to_string());
        self.db
            .run(move |c| {
                if rows::list_for_channel(c, &domain, &channel_id)?.len() >= MAX_PER_CHANNEL {
                    return Ok(None);
                }
                // It gets the events stored after this (those not yet turned into
                // deliveries when it was made are not its).
                row.after_event_id = log::head(c, &domain)?.map_or(0, |h| h.last_id);
                rows::insert(c, &row)?;
                Ok(Some(row))
            })
            .await?
            .ok_or(SubscriptionError::TooMany)
    }

    /// The domain's subscriptions, or one channel's, oldest first.
    pub async fn list(&self, channel_id: Option<&str>) -> Result<Vec<Subscription>, StoreError> {
        let (domain, channel) = (self.domain.clone(), channel_id.map(str::to_string));
        self.db
            .run(move |c| rows::list_all(c, &domain, channel.as_deref()))
            .await
    }

    pub async fn find(&self, id: &str) -> Result<Subscription, SubscriptionError> {
        let (domain, id) = (self.domain.clone(), id.to_string());
        self.db
            .run(move |c| rows::find(c, &domain, &id))
            .await?
            .ok_or(SubscriptionError::NotFound)
    }

    /// Unsubscribes; its pending deliveries go with it.
    pub async fn delete(&self, id: &str) -> Result<(), SubscriptionError> {
        let (domain, id) = (self.domain.clone(), id.to_string());
        let deleted = self.db.run(move |c| rows::delete(c, &domain, &id)).await?;
        if deleted {
            Ok(())
        } else {
            Err(SubscriptionError::NotFound)
        }
    }

    /// Re-enables a subscription (its failure clock restarts).
    pub async fn enable(&self, id: &str) -> Result<Subscription, SubscriptionError> {
        let (domain, id, now) = (self.domain.clone(), id.to_string(), now_millis());
        self.db
            .run(move |c| rows::enable(c, &domain, &id, now))
            .await?
            .ok_or(SubscriptionError::NotFound)
    }
}
