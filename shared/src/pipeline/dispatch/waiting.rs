//! Deliveries that do not go now: held at an open circuit or a disabled endpoint (recorded
//! once, then left to the endpoint's backlog loop, [`crate::pipeline::backlog`]), and turns
//! at an endpoint with a rate limit ([`crate::storage::store::Store::take_turns`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Dispatcher, JobOutcome, HELD};
use crate::model::domain::{Endpoint, Event};
use crate::model::error::Result;
use crate::model::ids::{DeliveryId, EndpointId};
use crate::runtime::metrics::Counter;
use crate::storage::queue::DeliveryJob;
use crate::storage::store::{Held, Hold, HoldReason, Tenant};

/// A turn at a rate-limited endpoint within two seconds is waited for in the invocation
/// (far below the queue's visibility timeout, 180 s); a later one on the queue.
const TURN_WAIT_MS: i64 = 2000;

/// Waits for a turn (unix ms) that comes within [`TURN_WAIT_MS`]; a later one is returned.
pub(super) async fn await_turn(turn: Option<i64>) -> Option<i64> {
    let turn = turn?;
    let left = turn - Utc::now().timestamp_millis();
    if left > TURN_WAIT_MS {
        return Some(turn);
    }
    if left > 0 {
        tokio::time::sleep(Duration::from_millis(left as u64)).await;
    }
    None
}

impl Dispatcher {
    /// At an endpoint with a rate limit, `count` turns for a job's deliveries: the first
    /// (unix ms) and the time between two.
    pub(super) async fn take_turns(
        &self,
        tenant: &Tenant,
        endpoint: &Endpoint,
        count: usize,
    ) -> Result<Option<(i64, i64)>> {
        let Some(limit) = endpoint.rate_limit else {
            return Ok(None);
        };
        let every = (1000 / i64::from(limit.max(1))).max(1);
        let first = self
            .store
            .take_turns(
                tenant,
                &endpoint.endpoint_id,
                (count as u32, every),
                Utc::now().timestamp_millis(),
            )
            .await?;
        Ok(Some((first, every)))
    }

    /// A single delivery's turn at a rate-limited endpoint (taken now, or by the job before
    /// it was queued again): waited for here if it comes within a second, else returned (the
    /// job goes back on the queue until then).
    pub(super) async fn turn_of(
        &self,
        tenant: &Tenant,
        endpoint: &Endpoint,
        job: &DeliveryJob,
    ) -> Result<Option<i64>> {
        let turn = match job.paced_at {
            Some(turn) => Some(turn),
            None => self
                .take_turns(tenant, endpoint, 1)
                .await?
                .map(|(first, _)| first),
        };
        Ok(await_turn(turn).await)
    }

    /// Records a delivery as held without an attempt (its job then leaves the queue: the
    /// endpoint's backlog loop releases it, [`crate::pipeline::backlog`]).
    pub(super) async fn hold(
        &self,
        tenant: &Tenant,
        endpoint: &Endpoint,
        (delivery_id, _, event): (&DeliveryId, &EndpointId, &Event),
        (reason, next_look): (HoldReason, Option<DateTime<Utc>>),
    ) -> Result<JobOutcome> {
        let hold = Hold {
            reason,
            since: Utc::now(),
            next_look,
        };
        let ids = (delivery_id, &event.id, event.event_type.as_str());
        match self
            .store
            .hold_delivery(tenant, &endpoint.endpoint_id, ids, &hold)
            .await?
        {
            Held::Finished => Ok(JobOutcome::Done("finished meanwhile")),
            Held::Held => {
                self.metrics.count(Counter::DeliveriesHeld, 1);
                HELD.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(venue_id = %tenant.venue(), endpoint_id = %endpoint.endpoint_id, %delivery_id, reason = reason.as_str(), "delivery held");
                Ok(JobOutcome::Done("held: in the endpoint's backlog"))
            }
        }
    }
}
