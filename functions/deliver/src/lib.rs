//! The deliver function: each record of a batch is one delivery job, attempted concurrently.
//! Records whose attempt failed are returned in `batchItemFailures` so that only they come
//! back; a job that can never be processed goes to the delivery DLQ with its reason.

use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use futures::future::join_all;
use shared::dispatch::{Dispatcher, JobOutcome};
use shared::http_client::{BuildError, DeliveryClient};
use shared::queue::{DeliveryJob, Queues};
use shared::services::Services;
use shared::Error;

#[derive(Clone)]
pub struct Deliver {
    dispatcher: Dispatcher,
    queues: Queues,
    dlq_url: String,
}

impl Deliver {
    pub fn new(dispatcher: Dispatcher, queues: Queues, dlq_url: String) -> Self {
        Self {
            dispatcher,
            queues,
            dlq_url,
        }
    }

    pub fn from_services(services: &Services) -> Result<Self, BuildError> {
        let http = DeliveryClient::new(&services.config)?;
        Ok(Self::new(
            Dispatcher::new(services, http),
            services.queues.clone(),
            services.config.resources.delivery_dlq_url.clone(),
        ))
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let results = join_all(event.records.iter().map(|r| self.handle_record(r))).await;
        let mut response = SqsBatchResponse::default();
        let mut delays = Vec::new();
        for (record, result) in event.records.iter().zip(results) {
            let id = record.message_id.clone().unwrap_or_default();
            match result {
                Handled::Done => {}
                Handled::RetryIn(wait) => {
                    // Seconds, rounded up: SQS counts whole seconds.
                    let secs = wait.as_secs_f64().ceil().max(1.0) as i32;
                    if let Some(handle) = &record.receipt_handle {
                        delays.push((handle.clone(), secs));
                    }
                    response.add_failure(id);
                }
                Handled::Failed => response.add_failure(id),
            }
        }
        if !delays.is_empty() {
            self.queues.delay_received(&delays).await;
        }
        response
    }

    async fn handle_record(&self, record: &SqsMessage) -> Handled {
        let message_id = record.message_id.as_deref().unwrap_or("");
        let body = record.body.as_deref().unwrap_or("");
        let job: DeliveryJob = match serde_json::from_str(body) {
            Ok(job) => job,
            Err(e) => {
                return self
                    .poison(message_id, body, format!("not a delivery job: {e}"))
                    .await
            }
        };
        match self.dispatcher.run_job(&job, receive_count(record)).await {
            Ok(JobOutcome::Done(why)) => {
                tracing::debug!(delivery_id = %job.delivery_id, why, "job done");
                Handled::Done
            }
            Ok(JobOutcome::RetryIn(wait)) => Handled::RetryIn(wait),
            // Retrying cannot make a missing event or a corrupt item appear.
            Err(e @ (Error::NotFound(_) | Error::Corrupt(_))) => {
                self.poison(message_id, body, format!("cannot be delivered: {e}"))
                    .await
            }
            Err(e) => {
                tracing::error!(delivery_id = %job.delivery_id, error = %e, "job failed; it will be retried");
                Handled::Failed
            }
        }
    }
}

impl Deliver {
    /// Hands a job that can never succeed to the DLQ with its reason.
    async fn poison(&self, message_id: &str, body: &str, reason: String) -> Handled {
        tracing::error!(message_id, reason, "poison delivery job; sent to the DLQ");
        match self.queues.dead_letter(&self.dlq_url, body, &reason).await {
            Ok(()) => Handled::Done,
            Err(_) => Handled::Failed,
        }
    }
}

enum Handled {
    Done,
    RetryIn(Duration),
    /// Something broke (AWS unavailable…): back after the queue's visibility timeout.
    Failed,
}

/// SQS's count of how often this message was received, 1 on the first.
pub fn receive_count(record: &SqsMessage) -> u32 {
    record
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}
