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

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::Utc;
use futures::future::join_all;
use shared::domain::IngestMessage;
use shared::ingest::Publisher;
use shared::queue::{DeliveryJob, Queues};
use shared::services::Services;
use shared::store::Tenant;
use shared::Error;

#[derive(Clone)]
pub struct Ingest {
    publisher: Publisher,
    queues: Queues,
    dlq_url: String,
}

/// Why a record did not go through.
enum Refusal {
    /// Never acceptable: dead-letter it with this reason.
    Permanent(String),
    /// Try again later.
    Transient(String),
}

impl Ingest {
    pub fn new(publisher: Publisher, queues: Queues, dlq_url: String) -> Self {
        Self {
            publisher,
            queues,
            dlq_url,
        }
    }

    pub fn from_services(services: &Services) -> Self {
        Self::new(
            Publisher::new(services),
            services.queues.clone(),
            services.config.resources.ingest_dlq_url.clone(),
        )
    }

    /// Accepts every record, then queues the jobs of the whole batch together: a batch of
    /// ten events at fan-out 3 takes 3 SendMessageBatch calls, not 10.
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let results = join_all(event.records.iter().map(|r| self.handle_record(r))).await;
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
        if let Err(e) = self.publisher.enqueue(&jobs).await {
            // Their events are stored; the retried messages re-send the stored jobs.
            tracing::warn!(error = %e, records = with_jobs.len(), "queueing failed; the events will be retried");
            for id in with_jobs {
                response.add_failure(id);
            }
        }
        response
    }

    /// The jobs of an accepted record (`Some`, maybe empty), or `None` to retry it later.
    async fn handle_record(&self, record: &SqsMessage) -> Option<Vec<DeliveryJob>> {
        let message_id = record.message_id.as_deref().unwrap_or("");
        let body = record.body.as_deref().unwrap_or("");
        match self.accept(body).await {
            Ok(jobs) => Some(jobs),
            Err(Refusal::Transient(reason)) => {
                tracing::warn!(
                    message_id,
                    reason,
                    "ingest failed; the message will be retried"
                );
                None
            }
            Err(Refusal::Permanent(reason)) => {
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

    async fn accept(&self, body: &str) -> Result<Vec<DeliveryJob>, Refusal> {
        self.publisher
            .check_size(body.len())
            .map_err(|e| Refusal::Permanent(e.to_string()))?;
        let message: IngestMessage = serde_json::from_str(body)
            .map_err(|e| Refusal::Permanent(format!("not an ingest message: {e}")))?;
        let (venue, request) = message
            .split()
            .map_err(|e| Refusal::Permanent(e.to_string()))?;
        let tenant = Tenant::from_internal_message(venue);
        match self.publisher.accept(&tenant, request, Utc::now()).await {
            Ok(accepted) => Ok(accepted.jobs),
            Err(
                e @ (Error::Validation(_) | Error::Conflict(_) | Error::PayloadTooLarge { .. }),
            ) => Err(Refusal::Permanent(e.to_string())),
            Err(e) => Err(Refusal::Transient(e.to_string())),
        }
    }
}
