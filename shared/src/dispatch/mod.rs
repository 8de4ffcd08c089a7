//! One delivery attempt end to end: render, sign, POST, record. The deliver function runs it
//! per queued job; the API's manual retry and send-test use the same [`Dispatcher::send`].

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use http::{HeaderMap, HeaderValue};

use crate::breaker::{BreakerPolicy, Change, Circuit, Gate};
use crate::domain::{
    rfc3339, Attempt, Credential, DeliveryStatus, Endpoint, Event, Target, Trigger,
};
use crate::envelope;
use crate::error::{Error, Result};
use crate::http_client::{text_excerpt, DeliveryClient, ErrorClass, Response};
use std::collections::HashMap;

use crate::ids::{DeliveryId, EndpointId, EventId, VenueId};
use crate::ingest::record_event;
use crate::queue::DeliveryJob;
use crate::retry::{Decision, Outcome, RetryPolicy};
use crate::sealing::Sealer;
use crate::services::Services;
use crate::signing;
use crate::store::{
    AttemptRecord, DeliveryRecord, EventRecord, GroupEntry, GroupRecord, Recorded, Store, Tenant,
};
use futures::future::join_all;

mod health;

pub use health::{Health, Tally};

/// How much of a receiver's answer a first-try success keeps in its group's item.
const GROUP_BODY_BYTES: usize = 256;
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
}

/// What became of a queued job (all its deliveries).
#[derive(Debug)]
pub struct Ran {
    /// What happened, for the log.
    pub outcome: &'static str,
    /// Deliveries that wait for a retry (or were set apart): each is stored as a job of its
    /// own, with its wait ([`crate::waits::Waits::schedule`]), before the message leaves the
    /// queue.
    pub follow_ups: Vec<(DeliveryJob, Duration)>,
}

/// One delivery's first attempt, for its group.
enum First {
    /// Delivered: recorded in the group's item.
    Delivered(GroupEntry, EndpointId),
    /// Recorded in an item of its own: failed for good, or left unsent.
    Done,
    /// Recorded in an item of its own, pending: back after this long.
    RetryIn(Duration),
    /// Not attempted, nothing recorded: the endpoint's circuit is open.
    Held(Duration),
}

#[derive(Clone)]
pub struct Dispatcher {
    store: Store,
    sealer: Sealer,
    http: DeliveryClient,
    policy: RetryPolicy,
    breaker: BreakerPolicy,
}

impl Dispatcher {
    pub fn new(services: &Services, http: DeliveryClient) -> Self {
        let config = &services.config;
        Self {
            store: services.store.clone(),
            sealer: services.sealer.clone(),
            http,
            policy: config.retry.clone(),
            breaker: config.breaker.clone(),
        }
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
    pub async fn run(
        &self,
        job: &DeliveryJob,
        receive: u32,
        endpoints: &Endpoints,
        health: &Health,
    ) -> Result<Ran> {
        let single = job.targets.len() == 1;
        let results: Vec<(Target, Result<JobOutcome>)> = if is_fresh(job, receive) {
            self.first_attempts(job, endpoints, health).await?
        } else {
            join_all(job.targets.iter().map(|t| async {
                (
                    t.clone(),
                    self.run_target(&job.single(t.clone()), health).await,
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
                // ([`crate::waits`]): nothing waits in flight.
                Ok(JobOutcome::RetryIn(wait)) => {
                    outcome = "waiting for a retry";
                    follow_ups.push((job.single(target), wait));
                }
                Ok(JobOutcome::Held(wait)) => {
                    outcome = "held: the endpoint's circuit is open";
                    let held = DeliveryJob {
                        held: job.held + 1,
                        ..job.single(target)
                    };
                    follow_ups.push((held, wait));
                }
                Ok(JobOutcome::Done(why)) if single => outcome = why,
                Ok(JobOutcome::Done(_)) => {}
                // A delivery that can never be processed (its item is damaged…) goes on as a
                // job of its own, which ends in the DLQ with the reason; the others go on.
                Err(e @ (Error::NotFound(_) | Error::Corrupt(_))) if !single => {
                    tracing::error!(venue_id = %job.venue_id, event_id = %job.event_id, delivery_id = %target.delivery_id, error = %e, "a delivery of the job cannot be processed; set apart");
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
            .filter(|(job, receive)| is_fresh(job, *receive))
            .flat_map(|(job, _)| {
                job.targets.iter().map(|t| {
                    (
                        Tenant::from_internal_message(job.venue_id.clone()),
                        t.endpoint_id.clone(),
                    )
                })
            })
            .collect();
        if keys.is_empty() {
            return Ok(Endpoints::new());
        }
        self.store.get_endpoints(&keys).await
    }

    /// The first attempts of a fresh group, concurrently; the successes are recorded
    /// together in the group's item, everything else in an item of its own.
    async fn first_attempts(
        &self,
        job: &DeliveryJob,
        endpoints: &Endpoints,
        health: &Health,
    ) -> Result<Vec<(Target, Result<JobOutcome>)>> {
        let tenant = Tenant::from_internal_message(job.venue_id.clone());
        let now = Utc::now();
        let event = self.event_of(&tenant, job).await?;
        let firsts = join_all(job.targets.iter().map(|target| {
            let endpoint = endpoints
                .get(&(job.venue_id.clone(), target.endpoint_id.clone()))
                .map(|e| e.as_ref().map_err(String::as_str));
            self.first_attempt(&tenant, (&event, job.held), target, endpoint, (now, health))
        }))
        .await;
        let mut group = GroupRecord {
            venue_id: job.venue_id.clone(),
            delivery_id: job
                .targets
                .first()
                .and_then(|t| t.delivery_id.group())
                .map(|(g, _)| g)
                .ok_or_else(|| Error::Corrupt("a first-attempt job without a group".into()))?,
            event_id: event.id.clone(),
            event_type: event.event_type.clone(),
            created_at: now,
            expires_at: self.store.expiry(now),
            eps: Vec::new(),
            entries: Vec::new(),
            moved: Vec::new(),
        };
        let mut results = Vec::new();
        for (target, first) in job.targets.iter().zip(firsts) {
            let result = match first {
                Ok(First::Delivered(entry, endpoint)) => {
                    group.eps.push(endpoint);
                    group.entries.push(entry);
                    Ok(JobOutcome::Done("delivered"))
                }
                Ok(First::Done) => Ok(JobOutcome::Done("recorded")),
                Ok(First::RetryIn(wait)) => Ok(JobOutcome::RetryIn(wait)),
                Ok(First::Held(wait)) => Ok(JobOutcome::Held(wait)),
                Err(e) => Err(e),
            };
            results.push((target.clone(), result));
        }
        if !group.entries.is_empty() && !self.store.put_group(&group).await? {
            tracing::warn!(group = %group.delivery_id, "group recorded by another copy of its job");
        }
        Ok(results)
    }

    async fn first_attempt(
        &self,
        tenant: &Tenant,
        (event, held): (&Event, u32),
        target: &Target,
        endpoint: Option<std::result::Result<&Endpoint, &str>>,
        (now, health): (DateTime<Utc>, &Health),
    ) -> Result<First> {
        let job_target = (&target.delivery_id, &target.endpoint_id, event);
        let endpoint = match endpoint {
            Some(Ok(endpoint)) if endpoint.enabled => endpoint,
            Some(Err(reason)) => {
                self.end_unsent(tenant, job_target, &unreadable(reason))
                    .await?;
                return Ok(First::Done);
            }
            Some(Ok(_)) => {
                self.end_unsent(tenant, job_target, "the endpoint is disabled")
                    .await?;
                return Ok(First::Done);
            }
            None => {
                self.end_unsent(tenant, job_target, "the endpoint was deleted")
                    .await?;
                return Ok(First::Done);
            }
        };
        let admitted = match self.pass(tenant, endpoint, held, now).await? {
            Ok(admitted) => admitted,
            Err(wait) => return Ok(First::Held(wait)),
        };
        let probed = admitted.probed;
        let (attempt, decision) = self
            .attempt(
                tenant,
                endpoint,
                event,
                (&target.delivery_id, 1),
                (now, health, admitted),
            )
            .await?;
        if decision == Decision::Delivered {
            health.note(endpoint, &attempt, probed);
            let index = target.delivery_id.group().map_or(0, |(_, i)| i);
            // Ten of these share an item: each keeps only the start of what its receiver said.
            let mut attempt = attempt;
            attempt.response_body = attempt
                .response_body
                .map(|b| text_excerpt(b.as_bytes(), GROUP_BODY_BYTES));
            return Ok(First::Delivered(
                GroupEntry {
                    i: index,
                    a: attempt,
                },
                endpoint.endpoint_id.clone(),
            ));
        }
        Ok(
            match self
                .record_scheduled(
                    tenant,
                    endpoint,
                    event,
                    &target.delivery_id,
                    attempt,
                    (1, None),
                    decision,
                    (now, health, probed),
                )
                .await?
            {
                JobOutcome::RetryIn(wait) => First::RetryIn(wait),
                JobOutcome::Held(wait) => First::Held(wait),
                JobOutcome::Done(_) => First::Done,
            },
        )
    }

    /// One delivery that may be under way already: what its record says decides.
    async fn run_target(&self, job: &DeliveryJob, health: &Health) -> Result<JobOutcome> {
        let tenant = Tenant::from_internal_message(job.venue_id.clone());
        let target = job
            .targets
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
            self.retry_now(&tenant, &delivery).await?;
            return Ok(JobOutcome::Done("replayed"));
        }
        // A resumed copy whose delivery exists behaves like any job of it: a finished delivery
        // ends it, a pending one is attempted when due, and the scheduled attempt's number
        // lets only one copy record (and go on with) each attempt. Standing down whenever the
        // delivery exists would strand a pending delivery whose own job was this copy.
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
        let event = self.event_of(&tenant, job).await?;
        let job_target = (&target.delivery_id, &target.endpoint_id, &event);
        let endpoint = match self.store.get_endpoint(&tenant, &target.endpoint_id).await {
            Ok(Some(endpoint)) => endpoint,
            Ok(None) => {
                self.end_unsent(&tenant, job_target, "the endpoint was deleted")
                    .await?;
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
            self.end_unsent(&tenant, job_target, "the endpoint is disabled")
                .await?;
            return Ok(JobOutcome::Done("endpoint disabled"));
        }
        let admitted = match self.pass(&tenant, &endpoint, job.held, now).await? {
            Ok(admitted) => admitted,
            Err(wait) => return Ok(JobOutcome::Held(wait)),
        };
        let probed = admitted.probed;
        let (attempt, decision) = self
            .attempt(
                &tenant,
                &endpoint,
                &event,
                (&target.delivery_id, number),
                (now, health, admitted),
            )
            .await?;
        self.record_scheduled(
            &tenant,
            &endpoint,
            &event,
            &target.delivery_id,
            attempt,
            (number, existing.as_ref()),
            decision,
            (now, health, probed),
        )
        .await
    }

    /// Sends one scheduled attempt and decides what follows it. An attempt still running
    /// after `slow_after` marks its endpoint slow; a lease slot it holds is freed after.
    async fn attempt(
        &self,
        tenant: &Tenant,
        endpoint: &Endpoint,
        event: &Event,
        (delivery_id, number): (&DeliveryId, u32),
        (now, health, admitted): (DateTime<Utc>, &Health, Admitted),
    ) -> Result<(Attempt, Decision)> {
        let send = self.send(endpoint, event, Trigger::Scheduled, number, now);
        tokio::pin!(send);
        let sent = tokio::select! {
            sent = &mut send => sent,
            () = tokio::time::sleep(self.breaker.slow_after) => {
                self.mark_slow(tenant, endpoint, health).await;
                send.await
            }
        };
        if let Some((slot, until_ms)) = admitted.slot {
            if let Err(e) = self
                .store
                .free_slot(tenant, &endpoint.endpoint_id, slot, until_ms)
                .await
            {
                // It frees itself when its lease runs out.
                tracing::warn!(endpoint_id = %endpoint.endpoint_id, error = %e, "could not free a lease slot");
            }
        }
        let (attempt, response) = sent?;
        let decision = self.policy.decide(
            number,
            &Outcome::of(&response, now),
            now,
            rand::random::<f64>(),
        );
        tracing::info!(
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
        );
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
            self.store
                .disable_endpoint(
                    tenant,
                    &endpoint.endpoint_id,
                    "the receiver answered 410 Gone",
                )
                .await?;
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
                return Ok(JobOutcome::Done("duplicate job"));
            }
            Recorded::StateKept(status) => {
                // A manual attempt finished the delivery meanwhile; this one is in the history.
                tracing::info!(%delivery_id, attempt = number, status = status.as_str(), "delivery finished meanwhile");
                return Ok(JobOutcome::Done("finished meanwhile"));
            }
        }
        Ok(match decision {
            Decision::Delivered => JobOutcome::Done("delivered"),
            Decision::RetryAt(at) => JobOutcome::RetryIn((at - now).to_std().unwrap_or_default()),
            Decision::GiveUp => JobOutcome::Done("failed after the last attempt"),
            Decision::DisableEndpoint => JobOutcome::Done("receiver answered 410 Gone"),
        })
    }

    /// One manual attempt of a delivery, now: recorded with trigger `manual`, not followed by
    /// scheduled retries. A success finishes the delivery; a failure leaves a pending delivery
    /// to its schedule and a failed one failed.
    pub async fn retry_now(&self, tenant: &Tenant, delivery: &DeliveryRecord) -> Result<Attempt> {
        let endpoint = self
            .store
            .get_endpoint(tenant, &delivery.endpoint_id)
            .await?
            .ok_or(Error::NotFound("endpoint"))?;
        let record = self
            .store
            .get_event(tenant, &delivery.event_id)
            .await?
            .ok_or(Error::NotFound("event (it is past its retention)"))?;
        let event = record_event(&record)?;
        if delivery.in_group {
            self.store.move_out_of_group(tenant, delivery).await?;
        }
        let now = Utc::now();
        let (attempt, _) = self
            .send(
                &endpoint,
                &event,
                Trigger::Manual,
                delivery.attempt_count + 1,
                now,
            )
            .await?;
        let status = if attempt.succeeded() {
            DeliveryStatus::Succeeded
        } else {
            delivery.status
        };
        self.store
            .record_attempt(AttemptRecord {
                delivery_id: &delivery.delivery_id,
                tenant,
                endpoint_id: &endpoint.endpoint_id,
                event_id: &event.id,
                event_type: &event.event_type,
                status,
                next_attempt_at: (status == DeliveryStatus::Pending)
                    .then_some(delivery.next_attempt_at)
                    .flatten(),
                attempt: attempt.clone(),
                scheduled: None,
                previous: Some(delivery),
            })
            .await?;
        if attempt.succeeded() && (endpoint.failing_since.is_some() || endpoint.failures_in_row > 0)
        {
            // The receiver is back: the failure clock stops and the circuit closes.
            self.store
                .record_health(tenant, &endpoint.endpoint_id, &Change::Close, now)
                .await?;
        }
        Ok(attempt)
    }

    /// "Send test": one attempt now of a sample event, through the same rendering, signing
    /// and HTTP client as every delivery. The event and the delivery are stored, so the
    /// attempt shows in history (trigger `test`) and can be retried.
    pub async fn send_test(
        &self,
        tenant: &Tenant,
        endpoint: &Endpoint,
        event_type: String,
        data: Box<serde_json::value::RawValue>,
    ) -> Result<(DeliveryId, Event, Attempt)> {
        let now = Utc::now();
        let event = Event {
            id: EventId::generate(),
            event_type,
            timestamp: rfc3339(now.with_nanosecond(0).unwrap_or(now)),
            data,
        };
        let delivery_id = DeliveryId::generate();
        let targets = vec![Target {
            endpoint_id: endpoint.endpoint_id.clone(),
            delivery_id: delivery_id.clone(),
        }];
        let record = EventRecord::accepted(tenant, &event, targets, now, self.store.expiry(now));
        self.store.put_event(&record).await?;
        let (attempt, _) = self.send(endpoint, &event, Trigger::Test, 1, now).await?;
        self.store
            .record_attempt(AttemptRecord {
                delivery_id: &delivery_id,
                tenant,
                endpoint_id: &endpoint.endpoint_id,
                event_id: &event.id,
                event_type: &event.event_type,
                status: if attempt.succeeded() {
                    DeliveryStatus::Succeeded
                } else {
                    DeliveryStatus::Failed
                },
                next_attempt_at: None,
                attempt: attempt.clone(),
                scheduled: None,
                previous: None,
            })
            .await?;
        Ok((delivery_id, event, attempt))
    }

    async fn event_of(&self, tenant: &Tenant, job: &DeliveryJob) -> Result<Event> {
        match &job.event {
            Some(event) => Ok(event.clone()),
            None => {
                let record = self
                    .store
                    .get_event(tenant, &job.event_id)
                    .await?
                    .ok_or(Error::NotFound("event"))?;
                record_event(&record)
            }
        }
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

    /// Whether a delivery to `endpoint` may be attempted now: by its circuit breaker (the
    /// one probe of an endpoint whose cooldown is over goes), and, if it is slow, by a free
    /// lease slot. `Err(wait)`: held for that long without being attempted.
    async fn pass(
        &self,
        tenant: &Tenant,
        endpoint: &Endpoint,
        held: u32,
        now: DateTime<Utc>,
    ) -> Result<std::result::Result<Admitted, Duration>> {
        let hold = |until| {
            let wait = self
                .breaker
                .hold_wait(until, held, now, rand::random::<f64>());
            tracing::debug!(venue_id = %tenant.venue(), endpoint_id = %endpoint.endpoint_id, wait_ms = wait.as_millis() as u64, "held without an attempt");
            Ok(Err(wait))
        };
        let lease = now
            + chrono::TimeDelta::from_std(self.breaker.probe_lease)
                .unwrap_or(chrono::TimeDelta::MAX / 2);
        let probed = match self.breaker.gate(&Circuit::of(endpoint), now) {
            Gate::Pass => false,
            Gate::Hold(until) => return hold(until),
            Gate::Probe => {
                if !self
                    .store
                    .take_probe(tenant, &endpoint.endpoint_id, now, lease)
                    .await?
                {
                    return hold(lease);
                }
                tracing::info!(venue_id = %tenant.venue(), endpoint_id = %endpoint.endpoint_id, "circuit half open: this delivery is the probe");
                true
            }
        };
        let slow = endpoint.slow_until.is_some_and(|until| until > now);
        if !slow {
            return Ok(Ok(Admitted { probed, slot: None }));
        }
        // A few tries at random slots; all taken: wait while the others finish.
        let slots = self.breaker.max_concurrent.max(1);
        let first = rand::random::<u32>() % slots;
        for k in 0..slots.min(3) {
            let slot = (first + k) % slots;
            if self
                .store
                .take_slot(
                    tenant,
                    &endpoint.endpoint_id,
                    slot,
                    now.timestamp_millis(),
                    lease.timestamp_millis(),
                )
                .await?
            {
                return Ok(Ok(Admitted {
                    probed,
                    slot: Some((slot, lease.timestamp_millis())),
                }));
            }
        }
        tracing::info!(venue_id = %tenant.venue(), endpoint_id = %endpoint.endpoint_id, slots, "slow endpoint at its concurrency cap; held");
        hold(now + chrono::TimeDelta::from_std(self.breaker.slow_after).unwrap_or_default())
    }

    /// Marks a slow endpoint as such (once a batch, and not again while the mark stands),
    /// so that attempts from then on take lease slots.
    async fn mark_slow(&self, tenant: &Tenant, endpoint: &Endpoint, health: &Health) {
        let now = Utc::now();
        let marked = endpoint.slow_until.is_some_and(|until| until > now);
        if marked || !health.first_slow(endpoint) {
            return;
        }
        let until = now + chrono::TimeDelta::from_std(self.breaker.slow_for).unwrap_or_default();
        tracing::warn!(venue_id = %tenant.venue(), endpoint_id = %endpoint.endpoint_id, "slow endpoint: its attempts now take lease slots");
        if let Err(e) = self
            .store
            .mark_slow(tenant, &endpoint.endpoint_id, now, until)
            .await
        {
            tracing::warn!(endpoint_id = %endpoint.endpoint_id, error = %e, "could not mark the endpoint slow");
        }
    }

    /// Writes what a batch's attempts said about each endpoint's health, one write per
    /// endpoint at most: the failure clock (started by a failure, stopped by a success; the
    /// endpoint disabled when it has run too long) and the circuit breaker. A write that
    /// fails is logged and dropped: the next batch writes the endpoint's health again.
    pub async fn settle(&self, health: Health) {
        let now = Utc::now();
        for tally in health.take() {
            let tenant = Tenant::from_internal_message(tally.endpoint.venue_id.clone());
            let endpoint = &tally.endpoint;
            let id = &endpoint.endpoint_id;
            let failed_last = !tally.last_succeeded && tally.failures > 0;
            let result = match endpoint.failing_since {
                Some(since) if failed_last && self.policy.should_disable(since, now) => {
                    tracing::warn!(venue_id = %tenant.venue(), endpoint_id = %id, %since, "failing too long; endpoint disabled");
                    self.store
                        .disable_endpoint(
                            &tenant,
                            id,
                            &format!("every delivery failed since {}", rfc3339(since)),
                        )
                        .await
                }
                _ => {
                    let change = match self.breaker.after(
                        &Circuit::of(endpoint),
                        (tally.successes, tally.failures, tally.last_succeeded),
                        (tally.probed, rand::random::<f64>()),
                        now,
                    ) {
                        Change::None if !failed_last && endpoint.failing_since.is_some() => {
                            Change::Close
                        }
                        Change::None if failed_last && endpoint.failing_since.is_none() => {
                            Change::Count(0)
                        }
                        change => change,
                    };
                    if let Change::Open { until, opens, .. } = &change {
                        tracing::warn!(venue_id = %tenant.venue(), endpoint_id = %id, %until, opens, "circuit opened: deliveries wait unattempted until a probe succeeds");
                    }
                    self.store.record_health(&tenant, id, &change, now).await
                }
            };
            if let Err(e) = result {
                tracing::warn!(venue_id = %tenant.venue(), endpoint_id = %id, error = %e, "could not record the endpoint's health");
            }
        }
    }

    /// Renders, signs and POSTs one event to one endpoint; the attempt describes the outcome.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        event: &Event,
        trigger: Trigger,
        attempt_number: u32,
        now: DateTime<Utc>,
    ) -> Result<(Attempt, Response)> {
        let not_sent = |class: ErrorClass, message: String| Response {
            status_code: None,
            duration: std::time::Duration::ZERO,
            error: Some((class, message)),
            body_excerpt: None,
            retry_after: None,
        };
        let response = match self.sealer.open_credential(endpoint, now).await {
            Ok(credential) => {
                match envelope::render(event, endpoint.payload_format, endpoint.template.as_deref())
                    .await
                {
                    Ok(body) => {
                        let headers = request_headers(&credential, event, &body, now);
                        self.http.post(&endpoint.url, headers, body).await
                    }
                    Err(message) => not_sent(ErrorClass::Template, message),
                }
            }
            // Damaged at rest: this delivery fails with the reason; nothing else is held up.
            Err(Error::Corrupt(reason)) => not_sent(
                ErrorClass::Secret,
                format!("the endpoint's secret does not open: {reason}"),
            ),
            Err(e) => return Err(e),
        };
        let attempt = Attempt {
            attempt: attempt_number,
            at: now,
            trigger,
            status_code: response.status_code,
            duration_ms: response.duration.as_millis() as u64,
            error: response
                .error
                .as_ref()
                .map(|(_, message)| text_excerpt(message.as_bytes(), ERROR_BYTES)),
            error_class: response
                .error
                .as_ref()
                .map(|(class, _)| class.as_str().to_owned()),
            hint: response
                .error
                .as_ref()
                .map(|(class, _)| class.hint(response.status_code).to_owned()),
            response_body: response.body_excerpt.clone(),
        };
        Ok((attempt, response))
    }
}

/// A delivery let through to its attempt: whether it is the circuit's probe, and the lease
/// slot it holds at a slow endpoint (slot, lease end in unix ms).
#[derive(Clone, Copy, Debug)]
struct Admitted {
    probed: bool,
    slot: Option<(u32, i64)>,
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
    let group = job.targets.first().and_then(|t| t.delivery_id.group());
    let one_group = group.as_ref().is_some_and(|(g, _)| {
        job.targets
            .iter()
            .all(|t| t.delivery_id.group().is_some_and(|(h, _)| &h == g))
    });
    job.first && !job.resumed && !job.manual && receive == 1 && one_group
}

/// The Standard Webhooks headers, plus the signature or the bearer token.
pub fn request_headers(
    credential: &Credential,
    event: &Event,
    body: &[u8],
    now: DateTime<Utc>,
) -> HeaderMap {
    let timestamp = now.timestamp();
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Ids are `[A-Za-z0-9_-]` and timestamps digits, so both are valid header values.
    if let Ok(id) = HeaderValue::from_str(event.id.as_str()) {
        headers.insert("webhook-id", id);
    }
    headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
    match credential {
        Credential::SignedSecret { .. } => {
            let keys = credential.signing_keys();
            let signature = signing::signature_header(
                keys.iter().map(Vec::as_slice),
                event.id.as_str(),
                timestamp,
                body,
            );
            if let Ok(value) = HeaderValue::from_str(&signature) {
                headers.insert("webhook-signature", value);
            }
        }
        Credential::BearerToken { token } => {
            if let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {}", token.expose())) {
                value.set_sensitive(true);
                headers.insert(http::header::AUTHORIZATION, value);
            }
        }
    }
    headers
}
