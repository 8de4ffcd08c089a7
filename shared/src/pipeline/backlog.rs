//! An endpoint's backlog, released at a pace it can take. A delivery that meets an open
//! circuit, or a disabled endpoint, is recorded once as held ([`crate::storage::store::Hold`]:
//! `pending` in history with its reason and next look) and leaves the queue: nothing of it
//! is queued or read again while it waits. One loop per endpoint looks for it instead: a
//! chain of tasks on the delivery queue ([`BacklogTask`]), each step one of:
//!
//! - the circuit is open: wait until its cooldown ends (at most SQS's 15 minutes a step);
//! - its cooldown is over: release the oldest held delivery, which goes as the probe;
//! - the circuit is closed: release the next page, oldest first, pages starting at the
//!   breaker's threshold and doubling up to [`Backlogs::page_max`], a second apart (a
//!   receiver still down opens its circuit again at its threshold, and the loop waits again
//!   from the oldest);
//! - its host is not answering ([`crate::delivery::host_breaker`]): wait for the host's
//!   cooldown, then release one (the host's probe);
//! - nothing is held any more (a pass from the oldest finds none): the loop ends, and a check
//!   a while later starts another if a delivery was held meanwhile by someone who saw this
//!   loop still running.
//!
//! A disabled endpoint has no loop: enabling it (or changing it: `PATCH`) starts one.
//! The loop's item ([`crate::storage::store::BacklogLoop`]) names its one chain of tasks
//! (a token) and its step. A step is claimed (60 s), done, its successor queued, and only then
//! finished: a copy of a task (SQS delivers at least once) stops or comes back, and a step
//! whose copy stopped half way is taken over, so the chain neither forks nor breaks.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::delivery::breaker::{BreakerPolicy, Circuit, Gate};
use crate::model::error::{Error, Result};
use crate::model::ids::{DeliveryId, EndpointId, VenueId};
use crate::pipeline::hosts::HostWatch;
use crate::storage::queue::{BacklogMessage, DeliveryJob, Queues};
use crate::storage::services::Services;
use crate::storage::store::{HeldItem, StepClaim, Store, Tenant};
use std::sync::Arc;

/// The wait between two pages of a release: the attempts of one report the endpoint's
/// health before the next goes.
pub const PAGE_PAUSE: Duration = Duration::from_secs(1);

/// How long after its last page a loop looks again from the oldest (the jobs it released
/// have run by then, and are no longer held).
pub const CLEAN_PASS_AFTER: Duration = Duration::from_secs(10);

/// How long after a loop ends its check looks for deliveries held meanwhile.
pub const CHECK_AFTER: Duration = Duration::from_secs(60);

/// SQS's longest delay: a longer wait is several steps.
const MAX_STEP: Duration = Duration::from_secs(900);

/// How long a copy of a step's task holds the step: another copy takes it over after that
/// (the first stopped).
const STEP_LEASE_MS: i64 = 60_000;

/// One step of an endpoint's loop (`{"backlog": …}` on the delivery queue).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BacklogTask {
    pub venue_id: VenueId,
    pub endpoint_id: EndpointId,
    /// The loop's token; `None`: the check after a loop ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default)]
    pub step: u32,
    /// The last delivery released (the release goes on after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<DeliveryId>,
    /// The last page's size (pages double).
    #[serde(default)]
    pub page: usize,
}

impl BacklogTask {
    /// Queues it in its venue's fair-queue group, after `delay` (at most 15 minutes).
    pub async fn queue(&self, queues: &Queues, delay: Duration) -> Result<()> {
        queues
            .send_message(
                &BacklogMessage { backlog: self },
                delay.min(MAX_STEP),
                self.venue_id.to_string(),
            )
            .await
    }

    fn next(&self, after: Option<DeliveryId>, page: usize) -> Self {
        Self {
            step: self.step + 1,
            after,
            page,
            ..self.clone()
        }
    }
}

#[derive(Clone)]
pub struct Backlogs {
    store: Store,
    queues: Queues,
    breaker: BreakerPolicy,
    /// The most a page releases (`BACKLOG_PAGE_MAX`, 1,000): with a page a second, the
    /// fastest a backlog goes.
    page_max: usize,
    /// The hosts that are not answering: an endpoint's backlog waits for its host too.
    hosts: Arc<HostWatch>,
}

impl Backlogs {
    pub fn new(services: &Services, hosts: Arc<HostWatch>) -> Self {
        Self {
            hosts,
            store: services.store.clone(),
            queues: services.queues.clone(),
            breaker: services.config.breaker.clone(),
            page_max: services.config.backlog_page_max,
        }
    }

    /// After a delivery was held at an open circuit: makes sure a loop looks at the endpoint
    /// (one strongly consistent read of a small item when one runs), first at `look`.
    pub async fn ensure_loop(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        look: DateTime<Utc>,
    ) -> Result<()> {
        if self.store.backlog_loop(tenant, endpoint).await?.is_some() {
            return Ok(());
        }
        self.start(tenant, endpoint, look, false).await
    }

    /// Starts a loop at `look`: unless one runs, or (`take_over`: the venue enabled or changed
    /// the endpoint) in place of whichever runs. Its first task is queued before the loop is
    /// claimed, so a claimed loop always has its task; a task whose claim lost stops.
    pub async fn start(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        look: DateTime<Utc>,
        take_over: bool,
    ) -> Result<()> {
        let token = ulid::Ulid::new().to_string();
        let task = BacklogTask {
            venue_id: tenant.venue().clone(),
            endpoint_id: endpoint.clone(),
            token: Some(token.clone()),
            step: 0,
            after: None,
            page: 0,
        };
        let wait = (look - Utc::now()).to_std().unwrap_or_default();
        task.queue(&self.queues, wait).await?;
        let claimed = self
            .store
            .claim_backlog_loop(tenant, endpoint, &token, take_over)
            .await?;
        tracing::info!(venue_id = %tenant.venue(), endpoint_id = %endpoint, claimed, wait_s = wait.as_secs(), "backlog loop started");
        Ok(())
    }

    /// One step of a loop (or the check after one): claimed, done, its successor queued,
    /// then finished. An error: the task comes back and runs the step again (a copy that
    /// finds the step claimed comes back too; one that finds it done stops).
    pub async fn step(&self, task: &BacklogTask) -> Result<()> {
        let tenant = Tenant::from_internal_message(task.venue_id.clone());
        let id = &task.endpoint_id;
        let Some(token) = &task.token else {
            // The check: a delivery held by someone who saw the last loop still running.
            // (A page that found none but read on may have more: a loop looks.)
            if self.store.backlog_loop(&tenant, id).await?.is_none() {
                let (page, next) = self.store.held_page(&tenant, id, None, 1).await?;
                if !page.is_empty() || next.is_some() {
                    self.start(&tenant, id, Utc::now(), false).await?;
                }
            }
            return Ok(());
        };
        let now_ms = Utc::now().timestamp_millis();
        match self
            .store
            .claim_backlog_step(&tenant, id, (token, task.step), (now_ms, now_ms + STEP_LEASE_MS))
            .await?
        {
            StepClaim::Taken => {}
            StepClaim::Moved => {
                tracing::info!(endpoint_id = %id, step = task.step, "backlog step done by a copy, or another loop runs; stopped");
                return Ok(());
            }
            StepClaim::Busy | StepClaim::Early => {
                return Err(Error::Conflict(
                    "another copy of this backlog step runs, or the step before is unfinished; this one comes back"
                        .into(),
                ))
            }
        }
        let (next, wait) = match self.work(&tenant, task, token).await? {
            Some(next) => next,
            None => return Ok(()),
        };
        next.queue(&self.queues, wait).await?;
        self.store
            .finish_backlog_step(&tenant, id, (token, task.step))
            .await
    }

    /// What a claimed step does; the next step and its wait (`None`: the loop ended).
    async fn work(
        &self,
        tenant: &Tenant,
        task: &BacklogTask,
        token: &str,
    ) -> Result<Option<(BacklogTask, Duration)>> {
        let id = &task.endpoint_id;
        let endpoint = match self.store.get_endpoint(tenant, id).await? {
            Some(endpoint) if endpoint.enabled => endpoint,
            // Deleted, or disabled: its deliveries wait for it to be enabled (which starts a
            // loop of its own).
            _ => {
                self.store.end_backlog_loop(tenant, id, token).await?;
                return Ok(None);
            }
        };
        let now = Utc::now();
        let threshold = self.breaker.threshold.max(1) as usize;
        let size = match self.breaker.gate(&Circuit::of(&endpoint), now) {
            Gate::Hold(until) => {
                let wait = (until - now).to_std().unwrap_or_default().max(PAGE_PAUSE);
                tracing::info!(venue_id = %task.venue_id, endpoint_id = %id, wait_s = wait.as_secs(), "backlog waits: the circuit is open");
                // From the oldest again: deliveries released before it opened again were
                // held again.
                return Ok(Some((task.next(None, 0), wait)));
            }
            Gate::Probe => 1,
            Gate::Pass if endpoint.failures_in_row > 0 => threshold
                .saturating_sub(endpoint.failures_in_row as usize)
                .max(1),
            Gate::Pass => (task.page * 2).max(threshold),
        }
        .min(self.page_max)
        // A rate-limited endpoint's page a second is its limit (each takes its turn too).
        .min(endpoint.rate_limit.map_or(usize::MAX, |r| r.max(1) as usize));
        // Its host not answering: the backlog waits for the host's cooldown (spread, so the
        // backlogs of a thousand endpoints at it do not all look at once), and then one goes
        // (the host's probe, if no other delivery took it first).
        let size = match self.hosts.host(&endpoint.url) {
            Some(host) => match self.hosts.gate(&host, now).await {
                Gate::Hold(until) => {
                    let wait = (until - now).to_std().unwrap_or_default().max(PAGE_PAUSE);
                    let wait = wait + wait.mul_f64(0.1 * rand::random::<f64>());
                    tracing::info!(venue_id = %task.venue_id, endpoint_id = %id, %host, wait_s = wait.as_secs(), "backlog waits: the host is not answering");
                    return Ok(Some((task.next(None, 0), wait)));
                }
                Gate::Probe => 1,
                Gate::Pass => size,
            },
            None => size,
        };
        let (page, next) = self
            .store
            .held_page(tenant, id, task.after.as_ref(), size)
            .await?;
        let more = next.is_some();
        if page.is_empty() && !more && task.after.is_some() {
            // At the end: once more from the oldest (a delivery released earlier may have
            // been held again behind the cursor); the loop ends on a pass that finds none.
            return Ok(Some((task.next(None, task.page), CLEAN_PASS_AFTER)));
        }
        if page.is_empty() && !more {
            self.store.end_backlog_loop(tenant, id, token).await?;
            tracing::info!(venue_id = %task.venue_id, endpoint_id = %id, "backlog released; loop ended");
            let check = BacklogTask {
                token: None,
                ..task.next(None, 0)
            };
            check.queue(&self.queues, CHECK_AFTER).await?;
            return Ok(None);
        }
        let released: usize = page.iter().map(HeldItem::size).sum();
        let jobs: Vec<DeliveryJob> = page
            .iter()
            .map(|held| match held {
                HeldItem::Single(d) => DeliveryJob {
                    released: true,
                    ..DeliveryJob::of_stored(&task.venue_id, d)
                },
                // A group's held members go as one job: their first attempts, together.
                HeldItem::Group(g) => DeliveryJob {
                    released: true,
                    first: true,
                    ..DeliveryJob::of_held_group(&task.venue_id, id, g)
                },
            })
            .collect();
        self.queues.send_jobs(&jobs, Duration::ZERO).await?;
        tracing::info!(venue_id = %task.venue_id, endpoint_id = %id, released, jobs = jobs.len(), "backlog page released");
        let after = next
            .or_else(|| page.last().map(|d| d.id().clone()))
            .or(task.after.clone());
        Ok(Some((task.next(after, released), PAGE_PAUSE)))
    }
}
