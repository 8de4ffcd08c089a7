//! One delivery attempt end to end: render, sign, POST, record. The deliver function runs it
//! per queued job (this file: a job's deliveries, their attempts and records); the API's
//! manual retry and send-test ([`manual`]) use the same [`Dispatcher::send`] ([`send`]);
//! [`health`] decides whether an endpoint may be tried now and records what the attempts
//! said about it; [`host`] does the same for the endpoint's host; [`waiting`] holds what may not go now, and paces a rate-limited endpoint.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::delivery::breaker::BreakerPolicy;
use crate::delivery::http_client::{text_excerpt, DeliveryClient, ErrorClass};
use crate::model::domain::{Attempt, DeliveryStatus, Endpoint, Event, Trigger};
use crate::model::error::{Error, Result};
use crate::pipeline::backlog::Backlogs;
use crate::pipeline::hosts::HostWatch;
use crate::pipeline::operational::{DisabledBy, Notifier, OpsEvent};
use crate::runtime::metrics::{Counter, Metrics};
use std::collections::HashMap;
use std::sync::Arc;

use crate::delivery::retry::{Decision, Outcome, RetryPolicy};
use crate::model::ids::{DeliveryId, EndpointId, VenueId};
use crate::pipeline::ingest::record_event;
use crate::storage::queue::{DeliveryJob, Queued};
use crate::storage::sealing::Sealer;
use crate::storage::services::Services;
use crate::storage::store::{
    AttemptRecord, DeliveryRecord, GroupEntry, GroupRecord, HeldEntry, Hold, HoldReason, Recorded,
    Store, Tenant,
};
use futures::future::join_all;

mod health;
mod host;
mod manual;
mod send;
mod waiting;

use health::{Admitted, NotNow};
pub use health::{Health, Tally};
pub use send::request_headers;
use waiting::await_turn;

/// How much of a receiver's answer a first-try success keeps in its group's item.
const GROUP_BODY_BYTES: usize = 256;
/// What a job's attempt whose record another copy of the job wrote first ends as: that
/// attempt went out and is not in the history.
const DUPLICATE: &str = "duplicate job";
/// How much of an error message an attempt keeps.
const ERROR_BYTES: usize = 1024;
/// What became of one delivery of a queued job.
#[derive(Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// Finished: delivered, failed for good, or nothing to do. The job leaves the queue.
    Done(&'static str),
    /// Not finished: to be tried again after this long.
    RetryIn(Duration),
    /// Not attempted: the endpoint's circuit is open; to be looked at again after this long.
    Held(Duration),
    /// Not attempted yet: its turn at an endpoint with a rate limit is then (unix ms).
    Paced(i64),
    /// Not attempted: too close to the invocation's deadline to send and record an attempt.
    /// Handed back as a job of its own, at once.
    HandedBack,
}

/// What became of a queued job (all its deliveries).
#[derive(Debug)]
pub struct Ran {
    /// What happened, for the log.
    pub outcome: &'static str,
    /// Deliveries that wait for a retry (or were set apart): each is stored as a job of its
    /// own, with its wait ([`crate::pipeline::waits::Waits::schedule`]), before the message leaves the
    /// queue.
    pub follow_ups: Vec<(DeliveryJob, Duration)>,
}

/// One delivery's first attempt, for its group.
enum First {
    /// Delivered: recorded in the group's item.
    Delivered(GroupEntry),
    /// Recorded in an item of its own: failed for good, or left unsent.
    Done,
    /// Recorded in an item of its own, pending: back after this long.
    RetryIn(Duration),
    /// Not attempted, nothing recorded: the endpoint is slow and at its cap.
    Held(Duration),
    /// Not attempted: held in the group's item (its circuit is open, or it is disabled),
    /// released later by the endpoint's backlog loop.
    Kept(HeldEntry, Hold),
    /// Not attempted, nothing recorded: its turn comes then (unix ms).
    Paced(i64),
    /// Not attempted, nothing recorded: too close to the deadline.
    HandedBack,
}

/// What a group's first attempts settled, for its item ([`Dispatcher::record_group`]).
#[derive(Default)]
struct Settled {
    /// First-try successes.
    entries: Vec<GroupEntry>,
    /// Members held (again): in the item's `held_members`, with `hold`.
    kept: Vec<HeldEntry>,
    hold: Option<Hold>,
    /// Places no longer held in the item (attempted, held again, or in an item of their own).
    gone: Vec<usize>,
}

/// A member held at its first attempt, for its group's item.
fn kept(
    delivery_id: &DeliveryId,
    event: &Event,
    (reason, next_look): (HoldReason, Option<DateTime<Utc>>),
) -> First {
    First::Kept(
        HeldEntry {
            i: delivery_id.group().map_or(0, |(_, i)| i),
            e: event.id.clone(),
            t: event.event_type.clone(),
        },
        Hold {
            reason,
            since: Utc::now(),
            next_look,
        },
    )
}

#[derive(Clone)]
pub struct Dispatcher {
    store: Store,
    sealer: Sealer,
    http: DeliveryClient,
    policy: RetryPolicy,
    breaker: BreakerPolicy,
    /// Operational events: endpoints disabled, circuits, deliveries failed for good.
    ops: Notifier,
    /// Where deliveries held at an open circuit or a disabled endpoint wait.
    backlog: Backlogs,
    /// The hosts that are not answering.
    hosts: Arc<HostWatch>,
    /// What this process's attempts did, until its function flushes it ([`crate::runtime::metrics`]).
    metrics: std::sync::Arc<Metrics>,
}

impl Dispatcher {
    pub fn new(services: &Services, http: DeliveryClient) -> Self {
        let config = &services.config;
        let hosts = HostWatch::new(services.store.clone(), config.breaker.clone());
        Self {
            store: services.store.clone(),
            sealer: services.sealer.clone(),
            http,
            policy: config.retry.clone(),
            breaker: config.breaker.clone(),
            ops: Notifier::new(services),
            backlog: Backlogs::new(services, hosts.clone()),
            hosts,
            metrics: std::sync::Arc::default(),
        }
    }

    /// When an endpoint failing since `since` is disabled if it goes on failing.
    pub fn disables_at(&self, since: DateTime<Utc>) -> Option<DateTime<Utc>> {
        chrono::TimeDelta::from_std(self.policy.disable_after)
            .ok()
            .map(|after| since + after)
    }

    /// The metrics of the attempts made (and their effects), for the function to flush.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The operational events' publisher, for changes made elsewhere (the API's PATCH).
    pub fn ops(&self) -> &Notifier {
        &self.ops
    }

    /// The endpoints' backlogs (the API's PATCH releases one; the deliver function runs
    /// their loops).
    pub fn backlog(&self) -> &Backlogs {
        &self.backlog
    }

    /// Runs one queued job. `receive` is SQS's receive count of the message. A fresh
    /// fan-out's job on its first receive reads nothing but its endpoints and records its
    /// successes in one item; anything else (a message back again, a retry, a replay, a
    /// resumed fan-out) checks each delivery's record first.
    ///
    /// `endpoints` holds the endpoints of the batch's fresh jobs ([`Dispatcher::endpoints_of`]),
    /// read once for all of them just before.
    ///
    /// What the attempts say about each endpoint's health is added to `health`, written once
    /// for the whole batch by [`Dispatcher::settle`].
    ///
    /// No attempt starts after `attempts_until` (the invocation's deadline less the time to
    /// send and record one): such deliveries are handed back as jobs of their own.
    pub async fn run(
        &self,
        job: &DeliveryJob,
        receive: u32,
        endpoints: &Endpoints,
        (health, attempts_until): (&Health, Option<Instant>),
    ) -> Result<Ran> {
        let single = job.deliveries.len() == 1;
        let batch = Batch {
            health,
            attempts_until,
            unrecorded: AtomicU32::new(0),
            metrics: &self.metrics,
        };
        let released_group = is_released_group(job);
        let results: Vec<(Queued, Result<JobOutcome>)> = if is_fresh(job, receive) || released_group
        {
            self.first_attempts(job, endpoints, &batch).await?
        } else {
            join_all(job.deliveries.iter().map(|d| async {
                (
                    d.clone(),
                    self.run_target(&job.single(d.clone()), &batch).await,
                )
            }))
            .await
        };
        let mut follow_ups = Vec::new();
        let mut outcome = "every delivery done";
        let mut failure = None;
        for (target, result) in results {
            match result {
                // Every wait is a job of its own, stored before this message leaves the queue
                // ([`crate::pipeline::waits`]): nothing waits in flight.
                Ok(JobOutcome::RetryIn(wait)) => {
                    outcome = "waiting for a retry";
                    // Attempted, so no longer held: its retry is an ordinary one (a released
                    // job's retry that stood down for that left the delivery pending for good).
                    let retry = DeliveryJob {
                        released: false,
                        ..job.single(target)
                    };
                    follow_ups.push((retry, wait));
                }
                Ok(JobOutcome::Held(wait)) => {
                    outcome = "held: the endpoint's circuit is open, or it is slow and at its cap";
                    self.metrics.count(Counter::DeliveriesHeld, 1);
                    HELD.fetch_add(1, Ordering::Relaxed);
                    let held = DeliveryJob {
                        held: job.held + 1,
                        ..job.alone(target, released_group)
                    };
                    follow_ups.push((held, wait));
                }
                Ok(JobOutcome::Paced(turn)) => {
                    outcome = "waiting for its turn at a rate-limited endpoint";
                    // Back one to two seconds before its turn (SQS delays whole seconds,
                    // and a delayed message is received up to a batching window late): the
                    // rest is waited when it comes back.
                    let wait = Duration::from_secs(
                        ((turn - Utc::now().timestamp_millis()) / 1000 - 1).max(0) as u64,
                    );
                    let paced = DeliveryJob {
                        paced_at: Some(turn),
                        ..job.alone(target, released_group)
                    };
                    follow_ups.push((paced, wait));
                }
                Ok(JobOutcome::HandedBack) => {
                    outcome = "handed back: too close to the deadline";
                    self.metrics.count(Counter::HandedBack, 1);
                    let again = DeliveryJob {
                        resumed: !released_group,
                        ..job.alone(target, released_group)
                    };
                    follow_ups.push((again, Duration::ZERO));
                }
                Ok(JobOutcome::Done(why)) if single => outcome = why,
                Ok(JobOutcome::Done(_)) => {}
                // A delivery that can never be processed (its item is damaged…) goes on as a
                // job of its own, which ends in the DLQ with the reason; the others go on.
                Err(e @ (Error::NotFound(_) | Error::Corrupt(_))) if !single => {
                    tracing::error!(venue_id = %job.venue_id, endpoint_id = %job.endpoint_id, event_id = %target.event_id, delivery_id = %target.delivery_id, error = %e, "a delivery of the job cannot be processed; set apart");
                    follow_ups.push((job.single(target), Duration::ZERO));
                }
                Err(e) => failure = Some(e),
            }
        }
        // Something could not be recorded: the whole job comes back, and each delivery is
        // then checked before it is attempted again.
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(Ran {
            outcome,
            follow_ups,
        })
    }

    /// The endpoints of the fresh jobs among `jobs` (job, receive count): one read for a
    /// whole batch, however many jobs share an endpoint.
    pub async fn endpoints_of(&self, jobs: &[(&DeliveryJob, u32)]) -> Result<Endpoints> {
        let keys: Vec<(Tenant, EndpointId)> = jobs
            .iter()
            .filter(|(job, receive)| is_fresh(job, *receive) || is_released_group(job))
            .map(|(job, _)| {
                (
                    Tenant::from_internal_message(job.venue_id.clone()),
                    job.endpoint_id.clone(),
                )
            })
            .collect();
        if keys.is_empty() {
            return Ok(Endpoints::new());
        }
        self.store.get_endpoints(&keys).await
    }

    /// The first attempts of a fresh group (up to ten events at one endpoint), concurrently;
    /// the successes and the members held (an open circuit, a disabled endpoint) are recorded
    /// together in the group's item, everything else in an item of its own. A released
    /// group's job ([`is_released_group`]) goes by its item: only the members still held there
    /// go, and the item is written again from what it was.
    async fn first_attempts(
        &self,
        job: &DeliveryJob,
        endpoints: &Endpoints,
        batch: &Batch<'_>,
    ) -> Result<Vec<(Queued, Result<JobOutcome>)>> {
        let tenant = Tenant::from_internal_message(job.venue_id.clone());
        let now = Utc::now();
        let group_id = job
            .deliveries
            .first()
            .and_then(|d| d.delivery_id.group())
            .map(|(g, _)| g)
            .ok_or_else(|| Error::Corrupt("a first-attempt job without a group".into()))?;
        let (read, deliveries): (Option<GroupRecord>, Vec<&Queued>) = if job.released {
            let item = self.store.get_group(&tenant, &group_id).await?;
            let held: Vec<usize> = item
                .as_ref()
                .map(|g| g.still_held().map(|h| h.i).collect())
                .unwrap_or_default();
            let still: Vec<&Queued> = job
                .deliveries
                .iter()
                .filter(|q| {
                    q.delivery_id
                        .group()
                        .is_some_and(|(_, i)| held.contains(&i))
                })
                .collect();
            (item, still)
        } else {
            (None, job.deliveries.iter().collect())
        };
        let mut results: Vec<(Queued, Result<JobOutcome>)> = job
            .deliveries
            .iter()
            .filter(|q| !deliveries.iter().any(|d| d.delivery_id == q.delivery_id))
            .map(|q| {
                (
                    q.clone(),
                    Ok(JobOutcome::Done("released delivery no longer held")),
                )
            })
            .collect();
        if deliveries.is_empty() {
            return Ok(results);
        }
        let endpoint = endpoints
            .get(&(job.venue_id.clone(), job.endpoint_id.clone()))
            .map(|e| e.as_ref().map_err(String::as_str));
        // At a rate-limited endpoint the group's deliveries take their turns in one write.
        let turns = match endpoint {
            Some(Ok(ep)) if ep.enabled && job.paced_at.is_none() => {
                self.take_turns(&tenant, ep, deliveries.len()).await?
            }
            _ => None,
        };
        // A released group's events were stored a while ago: read together, eventually
        // consistent (one that is not there yet is read on its own, strongly consistent).
        let originals = deliveries;
        let mut deliveries: Vec<Queued> = originals.iter().map(|q| (*q).clone()).collect();
        if job.released {
            let ids: Vec<crate::model::ids::EventId> =
                deliveries.iter().map(|q| q.event_id.clone()).collect();
            let events = self.store.get_stored_events(&tenant, &ids).await?;
            for queued in deliveries.iter_mut().filter(|q| q.event.is_none()) {
                if let Some(record) = events.iter().find(|r| r.event_id == queued.event_id) {
                    queued.event = Some(record_event(record)?);
                }
            }
        }
        let tenant = &tenant;
        let firsts = join_all(deliveries.iter().enumerate().map(|(i, queued)| async move {
            let turn = turns
                .map(|(first, every)| first + every * i as i64)
                .or(job.paced_at);
            if let Some(turn) = await_turn(turn).await {
                return Ok(First::Paced(turn));
            }
            let event = self.event_of(tenant, queued).await?;
            let ids = (&queued.delivery_id, &job.endpoint_id);
            self.first_attempt(tenant, (&event, job.held), ids, endpoint, (now, batch))
                .await
        }))
        .await;
        // What this run settled: successes, members held (again), and those done elsewhere
        // (an item of their own); the rest stay as the item has them.
        let mut settled = Settled::default();
        // (Follow-ups carry the deliveries as they came: a stored event is not inlined.)
        for (queued, first) in originals.into_iter().zip(firsts) {
            let index = queued.delivery_id.group().map_or(0, |(_, i)| i);
            let result = match first {
                Ok(First::Delivered(entry)) => {
                    settled.entries.push(entry);
                    settled.gone.push(index);
                    Ok(JobOutcome::Done("delivered"))
                }
                Ok(First::Kept(entry, hold)) => {
                    self.metrics.count(Counter::DeliveriesHeld, 1);
                    HELD.fetch_add(1, Ordering::Relaxed);
                    settled.gone.push(index);
                    settled.kept.push(entry);
                    settled.hold = Some(hold);
                    Ok(JobOutcome::Done("held: in the endpoint's backlog"))
                }
                Ok(First::Done) => {
                    settled.gone.push(index);
                    Ok(JobOutcome::Done("recorded"))
                }
                Ok(First::RetryIn(wait)) => {
                    settled.gone.push(index);
                    Ok(JobOutcome::RetryIn(wait))
                }
                Ok(First::Held(wait)) => Ok(JobOutcome::Held(wait)),
                Ok(First::Paced(turn)) => Ok(JobOutcome::Paced(turn)),
                Ok(First::HandedBack) => Ok(JobOutcome::HandedBack),
                Err(e) => Err(e),
            };
            results.push((queued.clone(), result));
        }
        self.record_group(tenant, job, (group_id, read), settled, now, batch)
            .await?;
        Ok(results)
    }

    /// Writes what a group's first attempts settled into its item: a new one, or (a released
    /// group) the one read, again from a fresh read if another copy wrote between.
    async fn record_group(
        &self,
        tenant: &Tenant,
        job: &DeliveryJob,
        (group_id, mut read): (DeliveryId, Option<GroupRecord>),
        settled: Settled,
        now: DateTime<Utc>,
        batch: &Batch<'_>,
    ) -> Result<()> {
        let successes = settled.entries.len();
        if !job.released {
            if settled.entries.is_empty() && settled.kept.is_empty() {
                return Ok(());
            }
            let group = GroupRecord {
                venue_id: job.venue_id.clone(),
                endpoint_id: job.endpoint_id.clone(),
                delivery_id: group_id,
                created_at: now,
                expires_at: self.store.expiry(now),
                entries: settled.entries,
                moved: Vec::new(),
                held_members: settled.kept,
                held: settled.hold,
                version: 0,
            };
            if self.store.put_group(&group).await? {
                batch.recorded(successes);
            } else {
                // This copy's successes went out and are not the ones in the history.
                tracing::warn!(group = %group.delivery_id, "group recorded by another copy of its job");
            }
            return Ok(());
        }
        for _ in 0..4 {
            let Some(base) = read.take() else {
                // The item is gone (the venue or endpoint was removed): nothing to record in.
                return Ok(());
            };
            let mut group = base.clone();
            group.held_members.retain(|h| !settled.gone.contains(&h.i));
            group.held_members.extend(settled.kept.iter().cloned());
            if settled.hold.is_some() {
                group.held = settled.hold.clone();
            }
            for entry in &settled.entries {
                if !group.entries.iter().any(|e| e.i == entry.i) {
                    group.entries.push(entry.clone());
                }
            }
            group.version = base.version + 1;
            if self.store.replace_group(&group, base.version).await? {
                batch.recorded(successes);
                return Ok(());
            }
            read = self.store.get_group(tenant, &group.delivery_id).await?;
        }
        Err(Error::Conflict(
            "a released group's item kept changing under this job; it comes back".into(),
        ))
    }

    async fn first_attempt(
        &self,
        tenant: &Tenant,
        (event, held): (&Event, u32),
        (delivery_id, endpoint_id): (&DeliveryId, &EndpointId),
        endpoint: Option<std::result::Result<&Endpoint, &str>>,
        (now, batch): (DateTime<Utc>, &Batch<'_>),
    ) -> Result<First> {
        let health = batch.health;
        let job_target = (delivery_id, endpoint_id, event);
        let endpoint = match endpoint {
            Some(Ok(endpoint)) if endpoint.enabled => endpoint,
            Some(Err(reason)) => {
                self.end_unsent(tenant, job_target, &unreadable(reason))
                    .await?;
                return Ok(First::Done);
            }
            Some(Ok(_)) => {
                // Kept for it until it is enabled again.
                return Ok(kept(
                    delivery_id,
                    event,
                    (HoldReason::EndpointDisabled, None),
                ));
            }
            None => {
                self.end_deleted(tenant, job_target).await?;
                return Ok(First::Done);
            }
        };
        if !batch.may_attempt(self.http.timeout()) {
            return Ok(First::HandedBack);
        }
        let admitted = match self
            .pass(tenant, endpoint, (held, batch.health), now)
            .await?
        {
            Ok(admitted) => admitted,
            Err(NotNow::Cap(wait)) => return Ok(First::Held(wait)),
            Err(not_now @ (NotNow::Circuit(until) | NotNow::Host(until))) => {
                batch.circuit_hold(self, tenant, endpoint, until).await?;
                return Ok(kept(delivery_id, event, (not_now.reason(), Some(until))));
            }
        };
        // Admission may have taken a while (a lease write): still in time?
        if !batch.may_attempt(self.http.timeout()) {
            self.unadmit(tenant, endpoint, &admitted).await;
            return Ok(First::HandedBack);
        }
        let probed = admitted.probed;
        let (attempt, decision) = self
            .attempt(
                tenant,
                endpoint,
                event,
                (delivery_id, 1),
                (now, batch, admitted),
            )
            .await?;
        if decision == Decision::Delivered {
            health.note(endpoint, &attempt, probed);
            let index = delivery_id.group().map_or(0, |(_, i)| i);
            // Ten of these share an item: each keeps only the start of what its receiver said.
            let mut attempt = attempt;
            attempt.response_body = attempt
                .response_body
                .map(|b| text_excerpt(b.as_bytes(), GROUP_BODY_BYTES));
            return Ok(First::Delivered(GroupEntry::success(
                index,
                (&event.id, &event.event_type),
                attempt,
            )));
        }
        let recorded = self
            .record_scheduled(
                tenant,
                endpoint,
                event,
                delivery_id,
                attempt,
                (1, None),
                decision,
                (now, health, probed),
            )
            .await?;
        if recorded != JobOutcome::Done(DUPLICATE) {
            batch.recorded(1);
        }
        Ok(match recorded {
            JobOutcome::RetryIn(wait) => First::RetryIn(wait),
            JobOutcome::Held(wait) => First::Held(wait),
            JobOutcome::Paced(turn) => First::Paced(turn),
            JobOutcome::HandedBack => First::HandedBack,
            JobOutcome::Done(_) => First::Done,
        })
    }

    /// One delivery that may be under way already: what its record says decides.
    async fn run_target(&self, job: &DeliveryJob, batch: &Batch<'_>) -> Result<JobOutcome> {
        let health = batch.health;
        let tenant = Tenant::from_internal_message(job.venue_id.clone());
        let target = job
            .deliveries
            .first()
            .ok_or_else(|| Error::Corrupt("a delivery job without deliveries".into()))?;
        let now = Utc::now();
        let existing = self
            .store
            .find_delivery(&tenant, &target.delivery_id, true)
            .await?;
        if job.manual {
            let Some(delivery) = existing else {
                return Ok(JobOutcome::Done("replayed delivery no longer exists"));
            };
            // Replays are of failed deliveries: a success is this job's own first run (sent,
            // then handed back or failed while its record was in flight) or another's. Not
            // sent again.
            if delivery.status == DeliveryStatus::Succeeded {
                return Ok(JobOutcome::Done("replayed delivery succeeded already"));
            }
            return self.replay_one(&tenant, job, &delivery, (batch, now)).await;
        }
        // A resumed copy whose delivery exists behaves like any job of it: a finished delivery
        // ends it, a pending one is attempted when due, and the scheduled attempt's number
        // lets only one copy record (and go on with) each attempt. Standing down whenever the
        // delivery exists would strand a pending delivery whose own job was this copy.
        if let Some(d) = existing.as_ref().filter(|d| d.in_group && d.held.is_some()) {
            // A member held in its group's item, reached by a job of its own (its fresh job
            // came back after an error): it goes on in an item of its own, so the group's
            // release leaves it out.
            self.store.move_out_of_group(&tenant, d).await?;
        }
        if job.released && existing.as_ref().is_none_or(|d| d.held.is_none()) {
            // Attempted meanwhile by another job of it (a release that was repeated).
            return Ok(JobOutcome::Done("released delivery no longer held"));
        }
        if let Some(delivery) = &existing {
            if delivery.status != DeliveryStatus::Pending {
                return Ok(JobOutcome::Done("delivery already finished"));
            }
            if let Some(due) = delivery.next_attempt_at {
                // Back early: a duplicate, or a job sent again after a crash.
                if let Ok(left) = (due - now).to_std() {
                    if left > Duration::from_millis(50) {
                        return Ok(JobOutcome::RetryIn(left));
                    }
                }
            }
        }
        let number = existing.as_ref().map_or(0, |d| d.scheduled_attempts) + 1;
        let event = match self.event_of(&tenant, target).await {
            // The venue was removed and its events with it: nothing is left to deliver.
            Err(Error::NotFound(_)) if self.store.is_removed(&tenant).await? => {
                return Ok(JobOutcome::Done("venue removed"));
            }
            event => event?,
        };
        let job_target = (&target.delivery_id, &job.endpoint_id, &event);
        let endpoint = match self.store.get_endpoint(&tenant, &job.endpoint_id).await {
            Ok(Some(endpoint)) => endpoint,
            Ok(None) => {
                self.end_deleted(&tenant, job_target).await?;
                return Ok(JobOutcome::Done("endpoint deleted"));
            }
            Err(Error::Corrupt(reason)) => {
                self.end_unsent(&tenant, job_target, &unreadable(&reason))
                    .await?;
                return Ok(JobOutcome::Done("endpoint unreadable"));
            }
            Err(e) => return Err(e),
        };
        if !endpoint.enabled {
            // Kept for it until it is enabled again.
            return self
                .hold(
                    &tenant,
                    &endpoint,
                    job_target,
                    (HoldReason::EndpointDisabled, None),
                )
                .await;
        }
        if let Some(turn) = self.turn_of(&tenant, &endpoint, job).await? {
            return Ok(JobOutcome::Paced(turn));
        }
        if !batch.may_attempt(self.http.timeout()) {
            return Ok(JobOutcome::HandedBack);
        }
        let admitted = match self
            .pass(&tenant, &endpoint, (job.held, batch.health), now)
            .await?
        {
            Ok(admitted) => admitted,
            Err(NotNow::Cap(wait)) => return Ok(JobOutcome::Held(wait)),
            Err(not_now @ (NotNow::Circuit(until) | NotNow::Host(until))) => {
                let held = self
                    .hold(
                        &tenant,
                        &endpoint,
                        job_target,
                        (not_now.reason(), Some(until)),
                    )
                    .await?;
                batch.circuit_hold(self, &tenant, &endpoint, until).await?;
                return Ok(held);
            }
        };
        if !batch.may_attempt(self.http.timeout()) {
            self.unadmit(&tenant, &endpoint, &admitted).await;
            return Ok(JobOutcome::HandedBack);
        }
        let probed = admitted.probed;
        let (attempt, decision) = self
            .attempt(
                &tenant,
                &endpoint,
                &event,
                (&target.delivery_id, number),
                (now, batch, admitted),
            )
            .await?;
        let recorded = self
            .record_scheduled(
                &tenant,
                &endpoint,
                &event,
                &target.delivery_id,
                attempt,
                (number, existing.as_ref()),
                decision,
                (now, health, probed),
            )
            .await?;
        if recorded != JobOutcome::Done(DUPLICATE) {
            batch.recorded(1);
        }
        Ok(recorded)
    }

    /// A replayed delivery: one manual attempt, admitted like every scheduled attempt (the
    /// endpoint's circuit, its cap on slow requests) and counted in its health, so a replay
    /// to a receiver still down stops at the breaker's threshold like any traffic.
    async fn replay_one(
        &self,
        tenant: &Tenant,
        job: &DeliveryJob,
        delivery: &DeliveryRecord,
        (batch, now): (&Batch<'_>, DateTime<Utc>),
    ) -> Result<JobOutcome> {
        let endpoint = match self.store.get_endpoint(tenant, &job.endpoint_id).await? {
            Some(endpoint) if endpoint.enabled => endpoint,
            _ => {
                return Ok(JobOutcome::Done(
                    "replayed delivery's endpoint is gone or disabled",
                ))
            }
        };
        if let Some(turn) = self.turn_of(tenant, &endpoint, job).await? {
            return Ok(JobOutcome::Paced(turn));
        }
        if !batch.may_attempt(self.http.timeout()) {
            return Ok(JobOutcome::HandedBack);
        }
        let admitted = match self
            .pass(tenant, &endpoint, (job.held, batch.health), now)
            .await?
        {
            Ok(admitted) => admitted,
            // A replay paces itself by the circuit: its attempt waits on the queue.
            Err(NotNow::Circuit(until) | NotNow::Host(until)) => {
                return Ok(JobOutcome::Held(self.breaker.hold_wait(
                    until,
                    job.held,
                    now,
                    rand::random::<f64>(),
                )))
            }
            Err(NotNow::Cap(wait)) => return Ok(JobOutcome::Held(wait)),
        };
        batch.sent();
        let attempt = self.retry_with(tenant, &endpoint, delivery).await;
        self.unadmit(tenant, &endpoint, &admitted).await;
        let attempt = attempt?;
        batch.recorded(1);
        batch.health.note(&endpoint, &attempt, admitted.probed);
        Ok(JobOutcome::Done("replayed"))
    }

    /// Gives back an admission, used or not: its lease slot (which frees itself when its
    /// lease runs out if this fails); a probe's lease runs out by itself.
    async fn unadmit(&self, tenant: &Tenant, endpoint: &Endpoint, admitted: &Admitted) {
        if let Some((slot, until_ms)) = admitted.slot {
            if let Err(e) = self
                .store
                .free_slot(tenant, &endpoint.endpoint_id, slot, until_ms)
                .await
            {
                tracing::warn!(endpoint_id = %endpoint.endpoint_id, error = %e, "could not free a lease slot");
            }
        }
    }

    /// Sends one scheduled attempt and decides what follows it. An attempt still running
    /// after `slow_after` marks its endpoint slow and strikes its host; one at a host that is
    /// not answering stops waiting; a lease slot it holds is freed after.
    async fn attempt(
        &self,
        tenant: &Tenant,
        endpoint: &Endpoint,
        event: &Event,
        (delivery_id, number): (&DeliveryId, u32),
        (now, batch, admitted): (DateTime<Utc>, &Batch<'_>, Admitted),
    ) -> Result<(Attempt, Decision)> {
        // From here the request may go out: it counts as sent until its caller records it.
        batch.sent();
        let send = self.send(endpoint, event, Trigger::Scheduled, number, now);
        tokio::pin!(send);
        let started = Instant::now();
        let sent = match self
            .watched(
                &mut send,
                tenant,
                endpoint,
                (batch.health, admitted.host_probe),
            )
            .await
        {
            Some(sent) => sent,
            None => Ok(self.stopped_waiting(endpoint, number, now, started.elapsed())),
        };

        self.unadmit(tenant, endpoint, &admitted).await;
        let (attempt, response) = sent?;
        let unanswered = matches!(
            response.error.as_ref().map(|(c, _)| c),
            Some(ErrorClass::Timeout | ErrorClass::Connect)
        ) && response.status_code.is_none();
        if admitted.host_probe {
            self.host_probed(endpoint, !unanswered, started.elapsed())
                .await;
        } else if unanswered {
            // A refused connection tells on the host too (a timeout struck already).
            self.strike(endpoint, batch.health).await;
        } else if started.elapsed() >= self.breaker.slow_after {
            self.answered_slowly(endpoint, batch.health).await;
        }
        let decision = self.policy.decide(
            number,
            &Outcome::of(&response, now),
            now,
            rand::random::<f64>(),
        );
        // A line for each failed attempt; a success is in the history and the metrics (and
        // the invocation's summary line), and a line each would be most of the logs' bill.
        macro_rules! attempt_line {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    venue_id = %tenant.venue(),
                    endpoint_id = %endpoint.endpoint_id,
                    event_id = %event.id,
                    %delivery_id,
                    attempt = number,
                    status_code = attempt.status_code,
                    duration_ms = attempt.duration_ms,
                    error_class = response.error.as_ref().map(|(c, _)| c.as_str()),
                    outcome = ?decision,
                    "delivery attempt"
                )
            };
        }
        if attempt.succeeded() {
            attempt_line!(tracing::Level::DEBUG);
        } else {
            attempt_line!(tracing::Level::INFO);
        }
        if number == 1 {
            let accepted = delivery_id.created_ms() as i64;
            let delay = attempt
                .at
                .timestamp_millis()
                .saturating_sub(accepted)
                .max(0);
            self.metrics.first_attempt_delay(delay as u64);
        }
        Ok((attempt, decision))
    }

    /// Records a scheduled attempt in the delivery's own item, and its effect on the
    /// endpoint's health.
    #[allow(clippy::too_many_arguments)]
    async fn record_scheduled(
        &self,
        tenant: &Tenant,
        endpoint: &Endpoint,
        event: &Event,
        delivery_id: &DeliveryId,
        attempt: Attempt,
        (number, previous): (u32, Option<&DeliveryRecord>),
        decision: Decision,
        (now, health, probed): (DateTime<Utc>, &Health, bool),
    ) -> Result<JobOutcome> {
        let (status, next_attempt_at) = match decision {
            Decision::Delivered => (DeliveryStatus::Succeeded, None),
            Decision::RetryAt(at) => (DeliveryStatus::Pending, Some(at)),
            Decision::GiveUp | Decision::DisableEndpoint => (DeliveryStatus::Failed, None),
        };
        health.note(endpoint, &attempt, probed);
        if decision == Decision::DisableEndpoint {
            tracing::warn!(venue_id = %tenant.venue(), endpoint_id = %endpoint.endpoint_id, "receiver answered 410 Gone; endpoint disabled");
            let reason = "the receiver answered 410 Gone";
            if self
                .store
                .disable_endpoint(tenant, &endpoint.endpoint_id, reason)
                .await?
            {
                self.ops
                    .send(OpsEvent::EndpointDisabled {
                        endpoint,
                        by: DisabledBy::Gone,
                        reason,
                        at: now,
                    })
                    .await;
            }
        }
        let last = matches!(decision, Decision::GiveUp | Decision::DisableEndpoint);
        if last {
            // Failed for good: tallied for the operational endpoints before it is recorded, so
            // that a job that comes back tallies it again (once: the tally keeps its ids)
            // rather than finding it finished and untold.
            self.ops.exhausted(endpoint, delivery_id, &attempt).await?;
        }
        let recorded = self
            .store
            .record_attempt(AttemptRecord {
                delivery_id,
                tenant,
                endpoint_id: &endpoint.endpoint_id,
                event_id: &event.id,
                event_type: &event.event_type,
                status,
                next_attempt_at,
                attempt,
                scheduled: Some(number),
                previous,
            })
            .await?;
        match recorded {
            Recorded::Written => {}
            Recorded::Duplicate => {
                // Another copy of this job recorded this attempt first; it owns what follows.
                tracing::info!(%delivery_id, attempt = number, "duplicate job stood down");
                return Ok(JobOutcome::Done(DUPLICATE));
            }
            Recorded::StateKept(status) => {
                // A manual attempt finished the delivery meanwhile; this one is in the history.
                tracing::info!(%delivery_id, attempt = number, status = status.as_str(), "delivery finished meanwhile");
                return Ok(JobOutcome::Done("finished meanwhile"));
            }
        }
        if last {
            self.metrics.count(Counter::DeliveriesExhausted, 1);
        }
        Ok(match decision {
            Decision::Delivered => JobOutcome::Done("delivered"),
            Decision::RetryAt(at) => JobOutcome::RetryIn((at - now).to_std().unwrap_or_default()),
            Decision::GiveUp => JobOutcome::Done("failed after the last attempt"),
            Decision::DisableEndpoint => JobOutcome::Done("receiver answered 410 Gone"),
        })
    }

    async fn event_of(&self, tenant: &Tenant, queued: &Queued) -> Result<Event> {
        match &queued.event {
            Some(event) => Ok(event.clone()),
            None => {
                let record = self
                    .store
                    .get_event(tenant, &queued.event_id)
                    .await?
                    .ok_or(Error::NotFound("event"))?;
                record_event(&record)
            }
        }
    }

    /// A delivery whose endpoint is gone ends as "the endpoint was deleted"; unless its venue
    /// was removed ([`crate::pipeline::removal`]): then nothing of it is written again.
    async fn end_deleted(
        &self,
        tenant: &Tenant,
        job_target: (&DeliveryId, &EndpointId, &Event),
    ) -> Result<()> {
        if self.store.is_removed(tenant).await? {
            tracing::info!(venue_id = %tenant.venue(), delivery_id = %job_target.0, "the venue was removed: delivery dropped");
            return Ok(());
        }
        self.end_unsent(tenant, job_target, "the endpoint was deleted")
            .await
    }

    async fn end_unsent(
        &self,
        tenant: &Tenant,
        (delivery_id, endpoint_id, event): (&DeliveryId, &EndpointId, &Event),
        reason: &str,
    ) -> Result<()> {
        self.store
            .finish_without_attempt(
                delivery_id,
                tenant,
                endpoint_id,
                &event.id,
                &event.event_type,
                reason,
            )
            .await
    }
}

/// Attempts of this process that went out and were never recorded (their job was stopped
/// at the deadline, or its record failed): each may reach its receiver again.
static UNRECORDED: AtomicU64 = AtomicU64::new(0);

/// How many attempts of this process went out and were never recorded.
pub fn unrecorded_attempts() -> u64 {
    UNRECORDED.load(Ordering::Relaxed)
}

/// Times a delivery of this process was held without an attempt (and waits to look again).
static HELD: AtomicU64 = AtomicU64::new(0);

/// How often deliveries of this process were held without an attempt.
pub fn held_looks() -> u64 {
    HELD.load(Ordering::Relaxed)
}

/// What the deliveries of one job share: the health their attempts report, the last moment
/// an attempt may start, and the attempts sent and not yet recorded.
struct Batch<'a> {
    health: &'a Health,
    attempts_until: Option<Instant>,
    unrecorded: AtomicU32,
    metrics: &'a Metrics,
}

impl Batch<'_> {
    /// After a delivery was held at `endpoint`'s open circuit: once a batch, makes sure a
    /// loop looks at its backlog when the circuit's cooldown ends.
    async fn circuit_hold(
        &self,
        dispatcher: &Dispatcher,
        tenant: &Tenant,
        endpoint: &Endpoint,
        until: DateTime<Utc>,
    ) -> Result<()> {
        if !self.health.first_hold(endpoint) {
            return Ok(());
        }
        dispatcher
            .backlog
            .ensure_loop(tenant, &endpoint.endpoint_id, until)
            .await
    }

    /// Whether an attempt that may take `request_timeout` can start now.
    fn may_attempt(&self, request_timeout: Duration) -> bool {
        self.attempts_until
            .is_none_or(|until| Instant::now() + request_timeout <= until)
    }

    fn sent(&self) {
        self.unrecorded.fetch_add(1, Ordering::Relaxed);
    }

    fn recorded(&self, n: usize) {
        let _ = self
            .unrecorded
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n as u32))
            });
    }
}

/// A job stopped (or failed) between sending attempts and recording them says so.
impl Drop for Batch<'_> {
    fn drop(&mut self) {
        let unrecorded = *self.unrecorded.get_mut();
        if unrecorded > 0 {
            UNRECORDED.fetch_add(u64::from(unrecorded), Ordering::Relaxed);
            self.metrics
                .count(Counter::AttemptsUnrecorded, u64::from(unrecorded));
            tracing::warn!(
                unrecorded,
                "attempts went out and were not recorded; their deliveries may be sent again"
            );
        }
    }
}

/// Endpoints by venue and id, as read for a batch of jobs; an item that does not read as an
/// endpoint is there as the reason.
pub type Endpoints = HashMap<(VenueId, EndpointId), std::result::Result<Endpoint, String>>;

/// Why a delivery ends when its endpoint's item does not read as an endpoint.
fn unreadable(reason: &str) -> String {
    format!("the endpoint's stored settings could not be read ({reason}); save the endpoint again")
}

/// A fresh fan-out's job on its first receive: nothing of its deliveries exists yet, so
/// nothing is read but its endpoints, and its successes share one history item.
pub fn is_fresh(job: &DeliveryJob, receive: u32) -> bool {
    job.first && !job.resumed && !job.manual && receive == 1 && one_group(job)
}

/// Members of a group held at their first attempts and released by the endpoint's backlog
/// loop: however often the job comes, its group's item says which are still to go.
pub fn is_released_group(job: &DeliveryJob) -> bool {
    job.first && job.released && !job.manual && one_group(job)
}

fn one_group(job: &DeliveryJob) -> bool {
    let group = job.deliveries.first().and_then(|d| d.delivery_id.group());
    group.as_ref().is_some_and(|(g, _)| {
        job.deliveries
            .iter()
            .all(|d| d.delivery_id.group().is_some_and(|(h, _)| &h == g))
    })
}
