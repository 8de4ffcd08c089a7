//! One delivery attempt end to end: render, sign, POST, record. The deliver function runs it
//! per queued job; the API's manual retry and send-test use the same [`Dispatcher::send`].

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use http::{HeaderMap, HeaderValue};

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

/// How much of a receiver's answer a first-try success keeps in its group's item.
const GROUP_BODY_BYTES: usize = 256;
/// How much of an error message an attempt keeps.
const ERROR_BYTES: usize = 1024;

/// What became of one delivery of a queued job.
#[derive(Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// Finished: delivered, failed for good, or nothing to do. The job leaves the queue.
    Done(&'static str),
    /// Not finished: the job stays queued and comes back after this long.
    RetryIn(Duration),
}

/// What became of a queued job (all its deliveries).
#[derive(Debug)]
pub struct Ran {
    /// For the message: done, or back after a while (a job of one delivery).
    pub outcome: JobOutcome,
    /// Deliveries of a job of several that wait for a retry: each is queued on its own, with
    /// its wait, before the message leaves the queue.
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
}

#[derive(Clone)]
pub struct Dispatcher {
    store: Store,
    sealer: Sealer,
    http: DeliveryClient,
    policy: RetryPolicy,
    max_hop: Duration,
}

impl Dispatcher {
    pub fn new(services: &Services, http: DeliveryClient) -> Self {
        let config = &services.config;
        Self {
            store: services.store.clone(),
            sealer: services.sealer.clone(),
            http,
            policy: config.retry.clone(),
            max_hop: config.max_hop,
        }
    }

    /// Runs one queued job. `receive` is SQS's receive count of the message. A fresh
    /// fan-out's job on its first receive reads nothing but its endpoints and records its
    /// successes in one item; anything else (a message back again, a retry, a replay, a
    /// resumed fan-out) checks each delivery's record first.
    ///
    /// `endpoints` holds the endpoints of the batch's fresh jobs ([`Dispatcher::endpoints_of`]),
    /// read once for all of them just before.
    pub async fn run(&self, job: &DeliveryJob, receive: u32, endpoints: &Endpoints) -> Result<Ran> {
        let single = job.targets.len() == 1;
        let results: Vec<(Target, Result<JobOutcome>)> = if is_fresh(job, receive) {
            self.first_attempts(job, endpoints).await?
        } else {
            join_all(
                job.targets
                    .iter()
                    .map(|t| async { (t.clone(), self.run_target(&job.single(t.clone())).await) }),
            )
            .await
        };
        let mut follow_ups = Vec::new();
        let mut outcome = JobOutcome::Done("every delivery done");
        let mut failure = None;
        for (target, result) in results {
            match result {
                Ok(JobOutcome::RetryIn(wait)) if single => outcome = JobOutcome::RetryIn(wait),
                Ok(JobOutcome::RetryIn(wait)) => follow_ups.push((job.single(target), wait)),
                Ok(JobOutcome::Done(why)) if single => outcome = JobOutcome::Done(why),
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
    ) -> Result<Vec<(Target, Result<JobOutcome>)>> {
        let tenant = Tenant::from_internal_message(job.venue_id.clone());
        let now = Utc::now();
        let event = self.event_of(&tenant, job).await?;
        let firsts = join_all(job.targets.iter().map(|target| {
            let endpoint = endpoints
                .get(&(job.venue_id.clone(), target.endpoint_id.clone()))
                .map(|e| e.as_ref().map_err(String::as_str));
            self.first_attempt(&tenant, &event, target, endpoint, now)
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
        event: &Event,
        target: &Target,
        endpoint: Option<std::result::Result<&Endpoint, &str>>,
        now: DateTime<Utc>,
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
        let (attempt, decision) = self
            .attempt(tenant, endpoint, event, &target.delivery_id, 1, now)
            .await?;
        if decision == Decision::Delivered {
            self.track_health(tenant, endpoint, &decision, now).await?;
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
                    now,
                )
                .await?
            {
                JobOutcome::RetryIn(wait) => First::RetryIn(wait),
                JobOutcome::Done(_) => First::Done,
            },
        )
    }

    /// One delivery that may be under way already: what its record says decides.
    async fn run_target(&self, job: &DeliveryJob) -> Result<JobOutcome> {
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
                // Back early: a wait longer than one visibility hop, or a crash retry.
                if let Ok(left) = (due - now).to_std() {
                    if left > Duration::from_millis(50) {
                        return Ok(JobOutcome::RetryIn(left.min(self.max_hop)));
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
        let (attempt, decision) = self
            .attempt(&tenant, &endpoint, &event, &target.delivery_id, number, now)
            .await?;
        self.record_scheduled(
            &tenant,
            &endpoint,
            &event,
            &target.delivery_id,
            attempt,
            (number, existing.as_ref()),
            decision,
            now,
        )
        .await
    }

    /// Sends one scheduled attempt and decides what follows it.
    async fn attempt(
        &self,
        tenant: &Tenant,
        endpoint: &Endpoint,
        event: &Event,
        delivery_id: &DeliveryId,
        number: u32,
        now: DateTime<Utc>,
    ) -> Result<(Attempt, Decision)> {
        let (attempt, response) = self
            .send(endpoint, event, Trigger::Scheduled, number, now)
            .await?;
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
        now: DateTime<Utc>,
    ) -> Result<JobOutcome> {
        let (status, next_attempt_at) = match decision {
            Decision::Delivered => (DeliveryStatus::Succeeded, None),
            Decision::RetryAt(at) => (DeliveryStatus::Pending, Some(at)),
            Decision::GiveUp | Decision::DisableEndpoint => (DeliveryStatus::Failed, None),
        };
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
                self.track_health(tenant, endpoint, &decision, now).await?;
                return Ok(JobOutcome::Done("finished meanwhile"));
            }
        }
        self.track_health(tenant, endpoint, &decision, now).await?;
        Ok(match decision {
            Decision::Delivered => JobOutcome::Done("delivered"),
            Decision::RetryAt(at) => {
                JobOutcome::RetryIn((at - now).to_std().unwrap_or_default().min(self.max_hop))
            }
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
        if attempt.succeeded() && endpoint.failing_since.is_some() {
            self.store
                .clear_failing(tenant, &endpoint.endpoint_id)
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

    /// The endpoint's failure clock: started by a failure, stopped by a success, and the
    /// endpoint disabled when it has run too long or the receiver answered 410.
    async fn track_health(
        &self,
        tenant: &Tenant,
        endpoint: &Endpoint,
        decision: &Decision,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let id = &endpoint.endpoint_id;
        match (decision, endpoint.failing_since) {
            (Decision::Delivered, Some(_)) => self.store.clear_failing(tenant, id).await,
            (Decision::Delivered, None) => Ok(()),
            (Decision::DisableEndpoint, _) => {
                tracing::warn!(venue_id = %tenant.venue(), endpoint_id = %id, "receiver answered 410 Gone; endpoint disabled");
                self.store
                    .disable_endpoint(tenant, id, "the receiver answered 410 Gone")
                    .await
            }
            (_, None) => self.store.mark_failing(tenant, id, now).await,
            (_, Some(since)) if self.policy.should_disable(since, now) => {
                tracing::warn!(venue_id = %tenant.venue(), endpoint_id = %id, %since, "failing too long; endpoint disabled");
                self.store
                    .disable_endpoint(
                        tenant,
                        id,
                        &format!("every delivery failed since {}", rfc3339(since)),
                    )
                    .await
            }
            (_, Some(_)) => Ok(()),
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
