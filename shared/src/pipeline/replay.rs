//! Replays of an endpoint's failed deliveries, in the background: the API records the replay
//! and answers at once ([`Replayer::start`]); a replay task on the delivery queue then queues
//! one manual attempt per failed delivery, a page at a time ([`Replayer::run_page`], run by the
//! deliver function), recording its progress after each page. Repeating a replay while it runs
//! (or within minutes of its end) answers the same replay.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::delivery::breaker::{BreakerPolicy, Circuit, Gate};
use crate::model::error::Result;
use crate::model::ids::{EndpointId, VenueId};
use crate::storage::queue::{DeliveryJob, Queues, ReplayMessage};
use crate::storage::services::Services;
use crate::storage::store::{PageClaim, ReplayRecord, ReplayState, Store, Tenant};

/// How long a copy of a replay task holds the page it queues: another copy waits that long
/// before taking the page over (the first copy stopped after claiming it).
const PAGE_LEASE_MS: i64 = 60_000;

/// The wait between two pages of a replay: the first page's attempts report the endpoint's
/// health before the next is queued.
pub const PAGE_PAUSE: Duration = Duration::from_secs(1);

/// How many deliveries one replay re-sends at most.
pub const REPLAY_MAX_DELIVERIES: usize = 10_000;

/// The message that runs the next page of a replay (`{"replay": …}` on the delivery queue).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplayTask {
    pub venue_id: VenueId,
    pub endpoint_id: EndpointId,
    pub replay_id: String,
}

impl ReplayTask {
    /// Queues it in its venue's group, after `delay` (at most 15 minutes).
    pub async fn queue(&self, queues: &Queues, delay: Duration) -> Result<()> {
        queues
            .send_message(
                &ReplayMessage { replay: self },
                delay,
                self.venue_id.to_string(),
            )
            .await
    }
}

#[derive(Clone)]
pub struct Replayer {
    store: Store,
    queues: Queues,
    /// How many deliveries one page queues at most (100; fewer in tests).
    page: usize,
    breaker: BreakerPolicy,
}

impl Replayer {
    pub fn new(services: &Services) -> Self {
        Self {
            store: services.store.clone(),
            queues: services.queues.clone(),
            page: services.config.replay_page,
            breaker: services.config.breaker.clone(),
        }
    }

    /// Starts a replay of the endpoint's failed deliveries created in `[since, until]`
    /// (`until` as asked; `None`: up to now), or answers the same one if it is running.
    pub async fn start(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        (since, until): (DateTime<Utc>, Option<DateTime<Utc>>),
        now: DateTime<Utc>,
    ) -> Result<ReplayRecord> {
        let until_at = until.unwrap_or(now).min(now);
        let found = self
            .store
            .count_failed_between(tenant, endpoint, (since, until_at), REPLAY_MAX_DELIVERIES)
            .await?;
        let record = ReplayRecord {
            venue_id: tenant.venue().clone(),
            endpoint_id: endpoint.clone(),
            replay_id: ReplayRecord::id_for(since, until),
            since,
            until,
            until_at,
            state: if found == 0 {
                ReplayState::Done
            } else {
                ReplayState::Running
            },
            found,
            queued: 0,
            after: None,
            started_at: now,
            updated_at: now,
            expires_at: self.store.expiry(now),
        };
        let (record, started) = self.store.start_replay(&record).await?;
        if started && record.state == ReplayState::Running {
            let task = ReplayTask {
                venue_id: record.venue_id.clone(),
                endpoint_id: record.endpoint_id.clone(),
                replay_id: record.replay_id.clone(),
            };
            if let Err(e) = task.queue(&self.queues, Duration::ZERO).await {
                // Not running after all: a repeat starts it again.
                if let Err(e) = self
                    .store
                    .advance_replay(&record, 0, None, (ReplayState::Failed, None))
                    .await
                {
                    tracing::warn!(replay_id = %record.replay_id, error = %e, "could not mark the replay failed; a repeat restarts it once it counts as stalled");
                }
                return Err(e);
            }
            tracing::info!(venue_id = %tenant.venue(), endpoint_id = %endpoint, replay_id = %record.replay_id, found, "replay started");
        }
        Ok(record)
    }

    /// Queues the next page of a replay's deliveries and records it; the task of the page
    /// after, if there is more, and when to run it.
    ///
    /// Paced by the endpoint's health, as a receiver would want: while its circuit is open
    /// the replay waits; a probe's time sends one delivery; a closed circuit starts with
    /// pages of the breaker's threshold and doubles them up to the page size (a receiver
    /// still down opens its circuit at its threshold, not after thousands of requests), and
    /// each page waits [`PAGE_PAUSE`] for its attempts to report before the next.
    pub async fn run_page(&self, task: &ReplayTask) -> Result<Option<(ReplayTask, Duration)>> {
        let tenant = Tenant::from_internal_message(task.venue_id.clone());
        let Some(record) = self
            .store
            .get_replay(&tenant, &task.endpoint_id, &task.replay_id)
            .await?
        else {
            tracing::warn!(replay_id = %task.replay_id, "replay task without its replay; dropped");
            return Ok(None);
        };
        if record.state != ReplayState::Running {
            return Ok(None);
        }
        let now = chrono::Utc::now();
        let Some(endpoint) = self.store.get_endpoint(&tenant, &task.endpoint_id).await? else {
            self.store
                .advance_replay(&record, 0, record.after.as_ref(), (ReplayState::Done, None))
                .await?;
            return Ok(None);
        };
        let threshold = self.breaker.threshold.max(1) as usize;
        let size = match self.breaker.gate(&Circuit::of(&endpoint), now) {
            Gate::Hold(until) => {
                let wait = (until - now).to_std().unwrap_or_default();
                tracing::info!(replay_id = %task.replay_id, wait_s = wait.as_secs(), "replay waits: the endpoint's circuit is open");
                return Ok(Some((task.clone(), wait.max(PAGE_PAUSE))));
            }
            Gate::Probe => 1,
            Gate::Pass if endpoint.failures_in_row > 0 => threshold
                .saturating_sub(endpoint.failures_in_row as usize)
                .max(1),
            Gate::Pass => record.queued.max(threshold),
        };
        // The page is this copy's alone: a task received twice queues it once.
        let now_ms = chrono::Utc::now().timestamp_millis();
        let claim = now_ms + PAGE_LEASE_MS;
        match self.store.claim_replay_page(&record, now_ms, claim).await? {
            PageClaim::Taken => {}
            PageClaim::Moved => {
                tracing::info!(replay_id = %task.replay_id, "replay page done by another copy of its task");
                return Ok(None);
            }
            PageClaim::Busy => {
                return Err(crate::Error::Conflict(
                    "another copy of this replay task is queueing its page; this one comes back"
                        .into(),
                ))
            }
        }
        let room = REPLAY_MAX_DELIVERIES.saturating_sub(record.queued);
        let (page, more) = self
            .store
            .failed_page(
                &tenant,
                &task.endpoint_id,
                (record.since, record.until_at),
                record.after.as_ref(),
                self.page.min(room).min(size),
            )
            .await?;
        let jobs: Vec<DeliveryJob> = page
            .iter()
            .map(|d| DeliveryJob {
                manual: true,
                ..DeliveryJob::of_stored(&task.venue_id, d)
            })
            .collect();
        self.queues
            .send_jobs(&jobs, std::time::Duration::ZERO)
            .await?;
        let after = page
            .last()
            .map(|d| &d.delivery_id)
            .or(record.after.as_ref());
        let done = !more || page.is_empty() || jobs.len() >= room;
        let state = if done {
            ReplayState::Done
        } else {
            ReplayState::Running
        };
        self.store
            .advance_replay(&record, jobs.len(), after, (state, Some(claim)))
            .await?;
        tracing::info!(replay_id = %task.replay_id, queued = record.queued + jobs.len(), done, "replay page queued");
        Ok((!done).then(|| (task.clone(), PAGE_PAUSE)))
    }
}
