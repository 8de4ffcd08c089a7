//! The attempts a person asks for: "Retry" of one delivery and "Send test", through the same
//! rendering, signing and HTTP client as every scheduled delivery.

use chrono::{Timelike, Utc};

use super::Dispatcher;
use crate::delivery::breaker::{Change, WindowWrite};
use crate::model::domain::{rfc3339, Attempt, DeliveryStatus, Endpoint, Event, Target, Trigger};
use crate::model::error::{Error, Result};
use crate::model::ids::{DeliveryId, EventId};
use crate::pipeline::ingest::record_event;
use crate::storage::store::{AttemptRecord, DeliveryRecord, EventRecord, Tenant};

impl Dispatcher {
    /// One manual attempt of a delivery, now: recorded with trigger `manual`, not followed by
    /// scheduled retries. A success finishes the delivery; a failure leaves a pending delivery
    /// to its schedule and a failed one failed.
    pub async fn retry_now(&self, tenant: &Tenant, delivery: &DeliveryRecord) -> Result<Attempt> {
        let endpoint = self
            .store
            .get_endpoint(tenant, &delivery.endpoint_id)
            .await?
            .ok_or(Error::NotFound("endpoint"))?;
        self.retry_with(tenant, &endpoint, delivery).await
    }

    /// [`Dispatcher::retry_now`] with the endpoint read already.
    pub(super) async fn retry_with(
        &self,
        tenant: &Tenant,
        endpoint: &Endpoint,
        delivery: &DeliveryRecord,
    ) -> Result<Attempt> {
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
                endpoint,
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
            if self
                .store
                .record_health(
                    tenant,
                    &endpoint.endpoint_id,
                    (&Change::Close, &WindowWrite::Clear),
                    now,
                )
                .await?
            {
                self.ops
                    .send(crate::pipeline::operational::OpsEvent::CircuitClosed {
                        endpoint,
                        at: now,
                    })
                    .await;
            }
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
        let delivery_id = DeliveryId::single(&endpoint.endpoint_id);
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
}
