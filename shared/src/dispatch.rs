//! One delivery attempt end to end: render, sign, POST, record. The deliver function runs it
//! per queued job; the API's manual retry and send-test use the same [`Dispatcher::send`].

use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderValue};

use crate::domain::{Attempt, Credential, DeliveryStatus, Endpoint, Event, Trigger};
use crate::envelope;
use crate::error::{Error, Result};
use crate::http_client::{DeliveryClient, Response};
use crate::ingest::record_event;
use crate::queue::DeliveryJob;
use crate::signing;
use crate::store::{AttemptRecord, Store, Tenant};

/// What became of a queued job.
#[derive(Debug, PartialEq, Eq)]
pub enum JobOutcome {
    Delivered,
    /// The attempt failed; the job stays queued for a later try.
    RetryLater,
    /// Nothing to send (already done, endpoint gone or disabled); the job leaves the queue.
    Skipped(&'static str),
}

#[derive(Clone)]
pub struct Dispatcher {
    store: Store,
    http: DeliveryClient,
}

impl Dispatcher {
    pub fn new(store: Store, http: DeliveryClient) -> Self {
        Self { store, http }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs one queued job. `receive` is SQS's receive count of the message: it numbers the
    /// attempt and makes a duplicate receive of an attempt already recorded harmless.
    pub async fn run_job(&self, job: &DeliveryJob, receive: u32) -> Result<JobOutcome> {
        let tenant = Tenant::from_internal_message(job.venue_id.clone());
        if job.resumed || receive > 1 {
            // Only a redelivered or resumed job can find its delivery already finished.
            if let Some(existing) = self.store.get_delivery_unscoped(&job.delivery_id).await? {
                if existing.status != DeliveryStatus::Pending {
                    return Ok(JobOutcome::Skipped("delivery already finished"));
                }
            }
        }
        let Some(endpoint) = self.store.get_endpoint(&tenant, &job.endpoint_id).await? else {
            return Ok(JobOutcome::Skipped("endpoint deleted"));
        };
        if !endpoint.enabled {
            return Ok(JobOutcome::Skipped("endpoint disabled"));
        }
        let event = match &job.event {
            Some(event) => event.clone(),
            None => {
                let record = self
                    .store
                    .get_event(&tenant, &job.event_id)
                    .await?
                    .ok_or(Error::NotFound("event"))?;
                record_event(&record)?
            }
        };
        let now = Utc::now();
        let (attempt, response) = self
            .send(&endpoint, &event, Trigger::Scheduled, receive, now)
            .await;
        let delivered = attempt.succeeded();
        let recorded = self
            .store
            .record_attempt(AttemptRecord {
                delivery_id: &job.delivery_id,
                tenant: &tenant,
                endpoint_id: &endpoint.endpoint_id,
                event_id: &event.id,
                event_type: &event.event_type,
                status: if delivered {
                    DeliveryStatus::Succeeded
                } else {
                    DeliveryStatus::Pending
                },
                next_attempt_at: None,
                attempt: attempt.clone(),
                receive: Some(receive),
            })
            .await?;
        tracing::info!(
            venue_id = %tenant.venue(),
            endpoint_id = %endpoint.endpoint_id,
            event_id = %event.id,
            delivery_id = %job.delivery_id,
            attempt = receive,
            status_code = attempt.status_code,
            duration_ms = attempt.duration_ms,
            error_class = response.error.as_ref().map(|(c, _)| c.as_str()),
            recorded,
            "delivery attempt"
        );
        Ok(if delivered {
            JobOutcome::Delivered
        } else {
            JobOutcome::RetryLater
        })
    }

    /// Renders, signs and POSTs one event to one endpoint; the attempt describes the outcome.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        event: &Event,
        trigger: Trigger,
        attempt_number: u32,
        now: DateTime<Utc>,
    ) -> (Attempt, Response) {
        let body = envelope::render(event, endpoint.payload_format);
        let headers = request_headers(&endpoint.credential, event, &body, now);
        let response = self.http.post(&endpoint.url, headers, body).await;
        let attempt = Attempt {
            attempt: attempt_number,
            at: now,
            trigger,
            status_code: response.status_code,
            duration_ms: response.duration.as_millis() as u64,
            error: response.error.as_ref().map(|(_, message)| message.clone()),
            response_body: response.body_excerpt.clone(),
        };
        (attempt, response)
    }
}

/// The Standard Webhooks headers, plus the signature or the bearer token.
pub fn request_headers(
    credential: &Credential,
    event: &Event,
    body: &[u8],
    now: DateTime<Utc>,
) -> HeaderMap {
    let timestamp = now.timestamp();
    let mut headers = HeaderMap::new();
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
            let keys = credential.signing_keys(now);
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
