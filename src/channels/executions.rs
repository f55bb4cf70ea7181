//! The service side of a channel's execution history (issue #13): listing and reading
//! recorded runs, and replaying one — its recorded input run again as a dry run against
//! the current script or a draft ([`ChannelService::dry_run`]).

use super::service::{ChannelService, ServiceError};
use crate::db::executions::{self as rows, ExecutionFilter};
use crate::db::models::Execution;
use crate::executions::{Detail, Inputs};
use crate::scenario::dry_run::{Mock, Report, Sample, WebhookSample, WebsocketSample};

impl ChannelService {
    /// A page of the channel's executions, newest first, and how many of its runs
    /// this node could not record (its queue was full) since it started.
    pub async fn executions(
        &self,
        id: &str,
        filter: ExecutionFilter,
    ) -> Result<(Vec<Execution>, u64), ServiceError> {
        self.get(id).await?;
        let (domain, owned) = (self.domain().to_string(), id.to_string());
        let items = self
            .database()
            .run(move |c| rows::list(c, &domain, &owned, &filter))
            .await?;
        let dropped = self
            .live_node()
            .and_then(|live| live.registry.get_by_id(id))
            .map_or(0, |h| {
                h.stats
                    .executions_dropped
                    .load(std::sync::atomic::Ordering::Relaxed)
            });
        Ok((items, dropped))
    }

    /// One recorded run of the channel.
    pub async fn execution(&self, id: &str, eid: &str) -> Result<Execution, ServiceError> {
        self.get(id).await?;
        let (domain, id, eid) = (self.domain().to_string(), id.to_string(), eid.to_string());
        self.database()
            .run(move |c| rows::find(c, &domain, &id, &eid))
            .await?
            .ok_or(ServiceError::ExecutionNotFound)
    }

    /// Runs a recorded input again as a dry run, against the channel's current script
    /// or `draft`; whether the input was recorded whole (not cut) comes with it.
    pub async fn replay(
        &self,
        id: &str,
        eid: &str,
        draft: Option<String>,
        live: bool,
        mocks: Vec<Mock>,
    ) -> Result<(Report, bool), ServiceError> {
        let recorded = self.execution(id, eid).await?;
        let detail: Detail = serde_json::from_str(&recorded.detail).map_err(|e| {
            ServiceError::Store(crate::db::StoreError::Setup(format!(
                "execution {eid} is unreadable: {e}"
            )))
        })?;
        let complete = detail.inputs.complete();
        let report = self
            .dry_run(id, sample_of(detail.inputs), draft, live, mocks)
            .await?;
        Ok((report, complete))
    }
}

/// The sample a recorded input replays as (masked values stay masked).
fn sample_of(inputs: Inputs) -> Sample {
    match inputs {
        Inputs::Webhook {
            method,
            path,
            host,
            secure,
            headers,
            body,
            peer_ip,
            protocol,
        } => Sample::Webhook(WebhookSample {
            method,
            path,
            headers,
            body: body.text,
            peer_ip,
            protocol,
            host,
            secure,
        }),
        Inputs::Websocket {
            session,
            text,
            peer_ip,
        } => Sample::Websocket(WebsocketSample {
            session,
            text: text.text,
            peer_ip,
        }),
    }
}
