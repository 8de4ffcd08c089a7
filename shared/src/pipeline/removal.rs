//! A venue that leaves Popup (`DELETE /venues/{venue_id}`): its keys, portal sessions and
//! endpoints go at once; its events and history are deleted a page at a time, as much as the
//! request's time allows and the rest by purge tasks on the delivery queue (run by deliver).
//! A removal record makes deliver drop, unrecorded, what of the venue was still in flight
//! (first attempts already queued, retries waiting for days), and a last purge task 15
//! minutes later takes anything an attempt that was running at that moment wrote.
//!
//! The continuation is queued before the request does any of the work (a purge task that
//! also deletes the keys, sessions and endpoints, after the request's budget; the last one),
//! so a request stopped anywhere after the removal record still ends with nothing stored.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::error::Result;
use crate::model::ids::{EndpointId, VenueId};
use crate::storage::queue::{PurgeMessage, Queues};
use crate::storage::services::Services;
use crate::storage::store::{Store, Tenant};

/// When the last purge task runs: after anything running at the removal has finished
/// (an attempt takes at most the request timeout; SQS delays at most 15 minutes).
pub const LAST_SWEEP_DELAY_SECS: i32 = 900;

/// What is left of a removal: the venue's events (while any remain) and the history
/// partitions of these endpoints (`{"purge": …}` on the delivery queue).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PurgeTask {
    pub venue_id: VenueId,
    pub endpoints: BTreeSet<EndpointId>,
    /// Deletes the venue's keys, portal sessions and endpoints first (the continuation of a
    /// removal request, in case it was stopped before it did).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub access: bool,
}

impl PurgeTask {
    /// Queues it in its venue's group, after `delay_secs` (at most 900).
    pub async fn queue(&self, queues: &Queues, delay_secs: i32) -> Result<()> {
        let delay = Duration::from_secs(delay_secs.clamp(0, 900) as u64);
        queues
            .send_message(
                &PurgeMessage { purge: self },
                delay,
                self.venue_id.to_string(),
            )
            .await
    }
}

/// What `DELETE /venues/{venue_id}` did.
#[derive(Clone, Debug, Serialize)]
pub struct Removal {
    pub venue_id: VenueId,
    pub endpoints_deleted: usize,
    pub api_keys_revoked: usize,
    pub portal_sessions_revoked: usize,
    /// Whether its events and history are all deleted already (else within minutes).
    pub purged: bool,
    pub removed_at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct Remover {
    store: Store,
    queues: Queues,
    /// Items one step deletes at most (a Query page; 25 a BatchWriteItem).
    page: usize,
    /// Steps the removal request runs itself, at most.
    inline_steps: usize,
}

impl Remover {
    pub fn new(services: &Services) -> Self {
        Self {
            store: services.store.clone(),
            queues: services.queues.clone(),
            page: services.config.purge_page,
            inline_steps: services.config.purge_inline_steps,
        }
    }

    /// Removes the venue: idempotent (a second removal finds nothing and says so).
    pub async fn remove(
        &self,
        tenant: &Tenant,
        now: DateTime<Utc>,
        budget: Duration,
    ) -> Result<Removal> {
        let started = Instant::now();
        // First, so that whatever of the venue is in flight from now on is dropped.
        self.store.mark_removed(tenant, now).await?;
        // Then what finishes the removal if this request is stopped: everything again once
        // its budget is over, and the last sweep. (The events name every endpoint with
        // history, deleted ones too.)
        let whole = PurgeTask {
            venue_id: tenant.venue().clone(),
            endpoints: BTreeSet::new(),
            access: true,
        };
        let after_budget = (budget.as_secs() as i32 + 5).min(LAST_SWEEP_DELAY_SECS);
        whole.queue(&self.queues, after_budget).await?;
        whole.queue(&self.queues, LAST_SWEEP_DELAY_SECS).await?;
        let (api_keys, sessions) = self.store.delete_venue_access(tenant).await?;
        let endpoints = self.store.delete_venue_endpoints(tenant).await?;
        let all = PurgeTask {
            venue_id: tenant.venue().clone(),
            endpoints: endpoints.iter().cloned().collect(),
            access: false,
        };
        let mut left = Some(all);
        let mut steps = 0;
        while let Some(task) = left.take() {
            steps += 1;
            if started.elapsed() >= budget || steps > self.inline_steps {
                task.queue(&self.queues, 0).await?;
                left = Some(task);
                break;
            }
            left = self.step(&task).await?;
        }
        tracing::info!(venue_id = %tenant.venue(), endpoints = endpoints.len(), api_keys, sessions, purged = left.is_none(), "venue removed");
        Ok(Removal {
            venue_id: tenant.venue().clone(),
            endpoints_deleted: endpoints.len(),
            api_keys_revoked: api_keys,
            portal_sessions_revoked: sessions,
            purged: left.is_none(),
            removed_at: now,
        })
    }

    /// One page of a removal: the venue's events first (they name the endpoints whose
    /// history goes too, including endpoints deleted before), then each endpoint's history.
    /// The task of what is left, if anything.
    pub async fn step(&self, task: &PurgeTask) -> Result<Option<PurgeTask>> {
        let tenant = Tenant::from_internal_message(task.venue_id.clone());
        let mut endpoints = task.endpoints.clone();
        if task.access {
            self.store.delete_venue_access(&tenant).await?;
            endpoints.extend(self.store.delete_venue_endpoints(&tenant).await?);
            return Ok(Some(PurgeTask {
                venue_id: task.venue_id.clone(),
                endpoints,
                access: false,
            }));
        }
        let (deleted, named, _) = self.store.purge_events(&tenant, self.page).await?;
        endpoints.extend(named);
        if deleted > 0 {
            return Ok(Some(PurgeTask {
                venue_id: task.venue_id.clone(),
                endpoints,
                access: false,
            }));
        }
        let Some(endpoint) = endpoints.first().cloned() else {
            return Ok(None);
        };
        let (_, more) = self
            .store
            .purge_history(&tenant, &endpoint, self.page)
            .await?;
        if !more {
            endpoints.remove(&endpoint);
        }
        Ok((!endpoints.is_empty()).then(|| PurgeTask {
            venue_id: task.venue_id.clone(),
            endpoints,
            access: false,
        }))
    }
}
