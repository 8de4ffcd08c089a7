//! The deliver function: each record of a batch is one delivery job, attempted concurrently.
//! Records whose attempt failed are returned in `batchItemFailures` so that only they come
//! back; a job that can never be processed goes to the delivery DLQ with its reason.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use futures::future::join_all;
use shared::dispatch::{Dispatcher, JobOutcome};
use shared::http_client::{BuildError, DeliveryClient};
use shared::queue::{DeliveryJob, Queues};
use shared::services::Services;

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
            Dispatcher::new(services.store.clone(), http),
            services.queues.clone(),
            services.config.resources.delivery_dlq_url.clone(),
        ))
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let results = join_all(event.records.iter().map(|r| self.handle_record(r))).await;
        let mut response = SqsBatchResponse::default();
        for (record, done) in event.records.iter().zip(results) {
            if !done {
                response.add_failure(record.message_id.clone().unwrap_or_default());
            }
        }
        response
    }

    /// `true` when the record may leave the queue.
    async fn handle_record(&self, record: &SqsMessage) -> bool {
        let message_id = record.message_id.as_deref().unwrap_or("");
        let body = record.body.as_deref().unwrap_or("");
        let job: DeliveryJob = match serde_json::from_str(body) {
            Ok(job) => job,
            Err(e) => {
                let reason = format!("not a delivery job: {e}");
                tracing::error!(message_id, reason, "poison delivery job; sent to the DLQ");
                return self
                    .queues
                    .dead_letter(&self.dlq_url, body, &reason)
                    .await
                    .is_ok();
            }
        };
        let receive = receive_count(record);
        match self.dispatcher.run_job(&job, receive).await {
            Ok(JobOutcome::Delivered) => true,
            Ok(JobOutcome::Skipped(why)) => {
                tracing::info!(delivery_id = %job.delivery_id, endpoint_id = %job.endpoint_id, why, "job skipped");
                true
            }
            Ok(JobOutcome::RetryLater) => false,
            Err(e) => {
                tracing::error!(delivery_id = %job.delivery_id, error = %e, "job failed; it will be retried");
                false
            }
        }
    }
}

/// SQS's count of how often this message was received, 1 on the first.
pub fn receive_count(record: &SqsMessage) -> u32 {
    record
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}
