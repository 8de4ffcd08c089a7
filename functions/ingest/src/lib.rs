//! The ingest function: events from the ingest queue, fanned out to the delivery queue.
//!
//! A message that can never be accepted (bad JSON, bad fields, too large, an id reused for other
//! content) goes straight to the ingest DLQ with its reason and leaves the queue; one that
//! failed for a passing reason (throttling, an AWS outage) is reported in `batchItemFailures`
//! and comes back.

// Release builds abort on panic (see the workspace's release profile): no panicking shortcuts.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::Utc;
use futures::future::join_all;
use shared::model::domain::IngestMessage;
use shared::model::ids::EventId;
use shared::pipeline::ingest::{IngestBatch, Publisher};
use shared::pipeline::waits::Waits;
use shared::runtime::metrics::{Counter, Metrics};
use shared::storage::queue::{self, DeliveryJob, Queues};
use shared::storage::services::Services;
use shared::storage::store::Tenant;
use shared::Error;

#[derive(Clone)]
pub struct Ingest {
    publisher: Publisher,
    store: shared::storage::store::Store,
    waits: Waits,
    queues: Queues,
    dlq_url: String,
    /// Its own queue, to make a message that failed for a passing reason wait longer each
    /// time (`None`: the queue's visibility timeout decides).
    queue_url: Option<String>,
    outage_backoff: std::time::Duration,
    /// What an invocation keeps before its deadline ([`shared::runtime::config::Limits`]).
    deadline_reserve: Duration,
    metrics: std::sync::Arc<Metrics>,
}

/// Why a record did not go through.
enum Refusal {
    /// Never acceptable: dead-letter it with this reason.
    Permanent(String),
    /// Try again later.
    Transient(String),
}

impl Ingest {
    pub fn from_services(services: &Services) -> Self {
        Self {
            publisher: Publisher::new(services),
            store: services.store.clone(),
            waits: Waits::new(services),
            queues: services.queues.clone(),
            dlq_url: services.config.resources.ingest_dlq_url.clone(),
            queue_url: services.config.resources.ingest_queue_url.clone(),
            outage_backoff: services.config.outage_backoff,
            deadline_reserve: services.config.limits.deadline_reserve,
            metrics: std::sync::Arc::default(),
        }
    }

    /// One invocation, whatever triggered it: a batch from the ingest queue (answered with
    /// its `batchItemFailures`), or the schedule (`aws.events`) that runs the sweeps: retries
    /// whose wait is over, and events stored while the delivery queue could not be reached.
    pub async fn invoke(&self, payload: serde_json::Value) -> Result<serde_json::Value, Error> {
        self.invoke_until(payload, Instant::now() + Duration::from_secs(30))
            .await
    }

    /// As [`Ingest::invoke`], answering by `deadline` (Lambda stops the function there).
    pub async fn invoke_until(
        &self,
        payload: serde_json::Value,
        deadline: Instant,
    ) -> Result<serde_json::Value, Error> {
        if payload.get("Records").is_some() {
            let event: SqsEvent = serde_json::from_value(payload)
                .map_err(|e| Error::Corrupt(format!("not an SQS event: {e}")))?;
            let response = self.handle_until(event, deadline).await;
            return serde_json::to_value(response).map_err(|e| Error::Corrupt(e.to_string()));
        }
        if payload.get("source").and_then(|s| s.as_str()) == Some("aws.events") {
            let (retries, events) = self.sweep_until(deadline).await?;
            return Ok(serde_json::json!({ "retries_queued": retries, "events_queued": events }));
        }
        Err(Error::Corrupt(
            "neither an SQS batch nor a scheduled event".into(),
        ))
    }

    /// Queues the retries of the retries table that are due (for at most 20 s of the
    /// function's 30), then the jobs of stored events whose jobs could not be queued when
    /// they were published (a page of them). Returns how many of each were queued.
    ///
    /// A sweep holds a lease (55 s) while it runs: one that finds another's lease does
    /// nothing, so two sweeps at once (a slow one and the next minute's) queue nothing twice.
    pub async fn sweep(&self) -> Result<(usize, usize), Error> {
        self.sweep_until(Instant::now() + Duration::from_secs(30))
            .await
    }

    /// As [`Ingest::sweep`], done by `deadline`: the retries for at most 20 s and two thirds
    /// of the time there is, the events' notes until the reserve (a note not reached is
    /// there next minute).
    pub async fn sweep_until(&self, deadline: Instant) -> Result<(usize, usize), Error> {
        let now_ms = Utc::now().timestamp_millis();
        let until_ms = now_ms + 55_000;
        if !self.store.take_sweep_lease(now_ms, until_ms).await? {
            tracing::info!("another sweep is running; this one stands down");
            return Ok((0, 0));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let retries = self
            .waits
            .sweep(Utc::now(), Duration::from_secs(20).min(left * 2 / 3))
            .await;
        // One failing does not keep the other from running.
        let events = tokio::time::timeout_at(
            self.reserve_before(deadline).into(),
            self.publisher.sweep_unqueued(100),
        )
        .await
        .unwrap_or_else(|_| {
            tracing::warn!("the sweep of unqueued events reached the deadline; the rest next time");
            Ok((0, 0))
        });
        if let Err(e) = self.store.release_sweep_lease(until_ms).await {
            tracing::warn!(error = %e, "could not give the sweep's lease back; it runs out by itself");
        }
        let (events, set_aside) = events?;
        self.metrics.count(Counter::NotesSetAside, set_aside as u64);
        self.metrics.flush("ingest");
        Ok((retries?.queued, events))
    }

    /// Accepts every record, then queues the jobs of the whole batch together: the first
    /// attempts of its events at one endpoint travel as one job, so a batch of ten events of
    /// one venue at fan-out 3 is 3 jobs in one SendMessageBatch call.
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        self.handle_until(event, Instant::now() + Duration::from_secs(30))
            .await
    }

    /// The moment an invocation that must answer by `deadline` stops starting work: its
    /// reserve before it (never more than half the time there is).
    fn reserve_before(&self, deadline: Instant) -> Instant {
        let reserve = self
            .deadline_reserve
            .min(deadline.saturating_duration_since(Instant::now()) / 2);
        deadline.checked_sub(reserve).unwrap_or_else(Instant::now)
    }

    /// As [`Ingest::handle`], answered by `deadline`: a record not accepted when the reserve
    /// begins, or whose jobs are not queued by half of it, is reported failed and comes back
    /// (its id, given or derived from the message, makes it the same event), instead of the
    /// whole batch coming back after Lambda stops the function.
    pub async fn handle_until(&self, event: SqsEvent, deadline: Instant) -> SqsBatchResponse {
        let accept_until = self.reserve_before(deadline);
        let queue_until = accept_until + deadline.saturating_duration_since(accept_until) / 2;
        // Events of one venue in the batch share one read of its endpoints, and its groups.
        let batch = IngestBatch::default();
        let results = join_all(event.records.iter().map(|r| async {
            tokio::time::timeout_at(accept_until.into(), self.handle_record(r, &batch))
                .await
                .unwrap_or_else(|_| {
                    tracing::warn!(
                        message_id = r.message_id.as_deref().unwrap_or(""),
                        "not accepted before the deadline; the message comes back"
                    );
                    None
                })
        }))
        .await;
        let mut jobs = Vec::new();
        let mut with_jobs = Vec::new();
        let mut response = SqsBatchResponse::default();
        for (record, result) in event.records.iter().zip(results) {
            let id = record.message_id.clone().unwrap_or_default();
            match result {
                Some(accepted) if !accepted.is_empty() => {
                    jobs.extend(accepted);
                    with_jobs.push(id);
                }
                Some(_) => {}
                None => response.add_failure(id),
            }
        }
        let queued = tokio::time::timeout_at(queue_until.into(), self.publisher.enqueue(&jobs))
            .await
            .unwrap_or_else(|_| {
                Err(Error::Aws {
                    service: "sqs",
                    message: "the jobs were not queued before the deadline".into(),
                })
            });
        let queued_ok = queued.is_ok();
        if let Err(e) = queued {
            // Their events are stored; the retried messages re-send the stored jobs.
            tracing::warn!(error = %e, records = with_jobs.len(), "queueing failed; the events will be retried");
            for id in with_jobs {
                response.add_failure(id);
            }
        }
        // The waits of the failed records, given up rather than outlive the invocation (they
        // then come back after the visibility timeout).
        let answer_by = queue_until + deadline.saturating_duration_since(queue_until) / 2;
        if tokio::time::timeout_at(answer_by.into(), self.back_off(&event, &response))
            .await
            .is_err()
        {
            tracing::warn!("the failed records' waits were not set before the deadline");
        }
        // One line per invocation (each event is in the events table, and its fate in history).
        tracing::info!(
            records = event.records.len(),
            accepted = self.metrics.counted(Counter::EventsAccepted),
            refused = self.metrics.counted(Counter::EventsRefused),
            deliveries_queued = if queued_ok {
                jobs.iter().map(|j| j.deliveries.len()).sum::<usize>()
            } else {
                0
            },
            failed_records = response.batch_item_failures.len(),
            "ingest batch"
        );
        self.metrics.flush("ingest");
        response
    }

    /// The records that failed wait longer with each receive (an outage of hours must not use
    /// up the receives before the DLQ).
    async fn back_off(&self, event: &SqsEvent, response: &SqsBatchResponse) {
        let Some(queue_url) = &self.queue_url else {
            return;
        };
        let delays: Vec<(String, i32)> = response
            .batch_item_failures
            .iter()
            .filter_map(|failure| {
                let record = event
                    .records
                    .iter()
                    .find(|r| r.message_id.as_deref() == Some(failure.item_identifier.as_str()))?;
                let wait = shared::delivery::backoff::outage_wait(
                    queue::receive_count(&record.attributes),
                    self.outage_backoff,
                );
                Some((record.receipt_handle.clone()?, queue::visibility_secs(wait)))
            })
            .collect();
        if !delays.is_empty() {
            self.queues.delay_received_on(queue_url, &delays).await;
        }
    }

    /// The jobs of an accepted record (`Some`, maybe empty), or `None` to retry it later.
    async fn handle_record(
        &self,
        record: &SqsMessage,
        batch: &IngestBatch,
    ) -> Option<Vec<DeliveryJob>> {
        let message_id = record.message_id.as_deref().unwrap_or("");
        let body = record.body.as_deref().unwrap_or("");
        match self.accept(record, batch).await {
            Ok(jobs) => {
                self.metrics.count(Counter::EventsAccepted, 1);
                Some(jobs)
            }
            Err(Refusal::Transient(reason)) => {
                tracing::warn!(
                    message_id,
                    reason,
                    "ingest failed; the message will be retried"
                );
                None
            }
            Err(Refusal::Permanent(reason)) => {
                self.metrics.count(Counter::EventsRefused, 1);
                tracing::error!(
                    message_id,
                    reason,
                    "unacceptable ingest message; sent to the DLQ"
                );
                match self.queues.dead_letter(&self.dlq_url, body, &reason).await {
                    Ok(()) => Some(Vec::new()),
                    Err(e) => {
                        tracing::error!(message_id, error = %e, "could not dead-letter; retrying");
                        None
                    }
                }
            }
        }
    }

    async fn accept(
        &self,
        record: &SqsMessage,
        batch: &IngestBatch,
    ) -> Result<Vec<DeliveryJob>, Refusal> {
        let body = record.body.as_deref().unwrap_or("");
        self.publisher
            .check_size(body.len())
            .map_err(|e| Refusal::Permanent(e.to_string()))?;
        let mut message: IngestMessage = serde_json::from_str(body)
            .map_err(|e| Refusal::Permanent(format!("not an ingest message: {e}")))?;
        // No id from the producer: one from the message, the same each time it comes.
        if message.id.is_none() {
            if let Some(message_id) = record.message_id.as_deref() {
                let sent_ms = record
                    .attributes
                    .get("SentTimestamp")
                    .and_then(|t| t.parse().ok())
                    .unwrap_or_else(|| Utc::now().timestamp_millis().max(0) as u64);
                message.id = Some(EventId::of_message(message_id, sent_ms).to_string());
            }
        }
        let (venue, request) = message
            .split()
            .map_err(|e| Refusal::Permanent(e.to_string()))?;
        if shared::pipeline::operational::is_reserved(venue.as_str()) {
            return Err(Refusal::Permanent(format!(
                "venue_id `{venue}` is reserved for the system (ids starting with `_`)"
            )));
        }
        let tenant = Tenant::from_internal_message(venue);
        match self
            .publisher
            .accept(&tenant, request, (Utc::now(), batch))
            .await
        {
            Ok(accepted) => Ok(accepted.jobs),
            Err(
                e @ (Error::Validation(_) | Error::Conflict(_) | Error::PayloadTooLarge { .. }),
            ) => Err(Refusal::Permanent(e.to_string())),
            Err(e) => Err(Refusal::Transient(e.to_string())),
        }
    }
}
