//! An endpoint's backlog: deliveries held without an attempt (its circuit is open, or it is
//! disabled), recorded once, in history as `pending` with the reason, and then left alone
//! (no message on the queue, no re-reads) until the endpoint can take them
//! ([`crate::pipeline::backlog`] releases them, oldest first).
//!
//! A held delivery is its own history item (status `pending`, in the `by_status` index, with
//! `held`: the reason, since when, the next look). The loop that looks at the endpoint and
//! releases its backlog is one small item of the endpoint's own history partition
//! (`bk_loop`, outside the `dlv_…` range every history query reads): its token names the one
//! task chain that runs it, its step number and a claim on it let only one copy of a step go on, and another copy
//! take over a step whose copy stopped.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::deliveries::{endpoint_item_key, history_key, status_key, FailedDelivery, HeldEntry};
use super::{from_item, is_conditional_failure, n, s, to_attr, written, Store, Tenant};
use crate::model::domain::DeliveryStatus;
use crate::model::error::{Error, Result};
use crate::model::ids::{DeliveryId, EndpointId, EventId};

/// Why a delivery waits without being attempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldReason {
    /// The endpoint's circuit is open: its receiver kept failing. A probe looks again.
    CircuitOpen,
    /// The endpoint is disabled: its events are kept for it until it is enabled again.
    EndpointDisabled,
    /// The endpoint's host answers none of its endpoints (a receiver shared by many, down):
    /// one probe at the host looks again ([`crate::delivery::host_breaker`]).
    HostNotAnswering,
}

impl HoldReason {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::CircuitOpen => "circuit_open",
            HoldReason::EndpointDisabled => "endpoint_disabled",
            HoldReason::HostNotAnswering => "host_not_answering",
        }
    }

    /// What the venue is told.
    pub fn message(self) -> &'static str {
        match self {
            HoldReason::CircuitOpen => {
                "held: the receiver kept failing, so the endpoint's circuit is open; a probe looks again at the next look, and once one succeeds the held deliveries go, oldest first"
            }
            HoldReason::EndpointDisabled => {
                "held: the endpoint is disabled; this event is kept for it and sent when the endpoint is enabled again"
            }
            HoldReason::HostNotAnswering => {
                "held: the receiving server is not answering this endpoint nor the others at the same address; it is tried again at the next look, and once it answers the held deliveries go, oldest first"
            }
        }
    }
}

/// A delivery held without an attempt, as its item says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    pub reason: HoldReason,
    /// When it was held (last, if it was held more than once).
    pub since: DateTime<Utc>,
    /// When the endpoint is looked at again (the circuit's cooldown ends); `None` while it
    /// is disabled (it goes when it is enabled).
    #[serde(default)]
    pub next_look: Option<DateTime<Utc>>,
}

/// The loop that looks at an endpoint with a backlog and releases it, as its item says.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct BacklogLoop {
    pub token: String,
    pub step: u32,
    /// A copy of the task of `step` is doing it until then (unix ms).
    #[serde(default)]
    pub claimed_until: Option<i64>,
}

/// What [`Store::claim_backlog_step`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum StepClaim {
    /// The step is this copy's to do.
    Taken,
    /// Another copy is doing it (its claim has not run out): this one comes back.
    Busy,
    /// The loop is past it, or another loop took over: nothing to do.
    Moved,
    /// The step before is not finished yet (its task queued this one and stopped before
    /// finishing): this one comes back.
    Early,
}

/// What [`Store::hold_delivery`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Held {
    /// Recorded as held.
    Held,
    /// The delivery had finished meanwhile (succeeded or failed): nothing to hold.
    Finished,
}

/// A held item of an endpoint's backlog, as the `by_status` index has it.
#[derive(Clone, Debug)]
pub enum HeldItem {
    /// A delivery's own item (held at a retry, or a test send).
    Single(FailedDelivery),
    /// A group's members held at their first attempts: released together, as one job.
    Group(HeldGroup),
}

/// A group item's held members, as the `by_status` index has them.
#[derive(Clone, Debug, Deserialize)]
pub struct HeldGroup {
    pub delivery_id: DeliveryId,
    pub held_members: Vec<HeldEntry>,
}

impl HeldItem {
    /// The item's id (where the next page goes on from).
    pub fn id(&self) -> &DeliveryId {
        match self {
            HeldItem::Single(d) => &d.delivery_id,
            HeldItem::Group(g) => &g.delivery_id,
        }
    }

    /// How many deliveries it holds.
    pub fn size(&self) -> usize {
        match self {
            HeldItem::Single(_) => 1,
            HeldItem::Group(g) => g.held_members.len().max(1),
        }
    }
}

/// The sort key of an endpoint's loop item.
const LOOP: &str = "bk_loop";

fn loop_key(tenant: &Tenant, endpoint: &EndpointId) -> HashMap<String, AttributeValue> {
    endpoint_item_key(tenant, endpoint, LOOP)
}

impl Store {
    /// Records a delivery as held (created if it has no item yet), unless it finished
    /// meanwhile. One write.
    pub async fn hold_delivery(
        &self,
        tenant: &Tenant,
        endpoint_id: &EndpointId,
        (delivery_id, event_id, event_type): (&DeliveryId, &EventId, &str),
        hold: &Hold,
    ) -> Result<Held> {
        let now = Utc::now();
        let result = self
            .ddb
            .update_item()
            .table_name(&self.deliveries)
            .key("history_key", history_key(tenant, delivery_id.tag()))
            .key("delivery_id", s(delivery_id.as_str()))
            .update_expression(
                "SET venue_id = :venue, endpoint_id = :endpoint, event_id = :event, \
                 event_type = :type, created_at = if_not_exists(created_at, :now), \
                 updated_at = :now, #status = :pending, status_key = :status_key, \
                 attempt_count = if_not_exists(attempt_count, :zero), \
                 expires_at = if_not_exists(expires_at, :ttl), \
                 held = :held \
                 REMOVE next_attempt_at",
            )
            .condition_expression("attribute_not_exists(#status) OR #status = :pending")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":venue", s(tenant.venue().as_str()))
            .expression_attribute_values(":endpoint", s(endpoint_id.as_str()))
            .expression_attribute_values(":event", s(event_id.as_str()))
            .expression_attribute_values(":type", s(event_type))
            .expression_attribute_values(":now", to_attr(&now)?)
            .expression_attribute_values(":pending", s(DeliveryStatus::Pending.as_str()))
            .expression_attribute_values(
                ":status_key",
                s(status_key(tenant, endpoint_id, DeliveryStatus::Pending)),
            )
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":ttl", n(self.expiry(now)))
            .expression_attribute_values(":held", to_attr(hold)?)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Held::Held),
            Err(e) if is_conditional_failure(&e) => Ok(Held::Finished),
            Err(e) => Err(Error::aws("dynamodb", e)),
        }
    }

    /// The endpoint's held items, oldest first, after `after`: up to `limit` deliveries (a
    /// group counts its held members), and where the next page goes on after (`None`: no more;
    /// past pending deliveries that wait for a retry, read and left out, so a page that finds
    /// none still moves on). From the `by_status` index's pending entries (those with `held`).
    pub async fn held_page(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        after: Option<&DeliveryId>,
        limit: usize,
    ) -> Result<(Vec<HeldItem>, Option<DeliveryId>)> {
        let pending = DeliveryStatus::Pending;
        let (from, to) = ("dlv_", "dlv_~");
        let mut found: Vec<HeldItem> = Vec::new();
        let mut count = 0;
        let mut start: Option<HashMap<String, AttributeValue>> = after.map(|after| {
            HashMap::from([
                (
                    "status_key".to_owned(),
                    s(status_key(tenant, endpoint, pending)),
                ),
                ("delivery_id".to_owned(), s(after.as_str())),
                ("history_key".to_owned(), history_key(tenant, after.tag())),
            ])
        });
        // A page reads pending deliveries waiting for a retry too (filtered out): a few
        // pages at most, then the caller goes on from where this stopped.
        for _ in 0..4 {
            let out = self
                .by_status_query(tenant, endpoint, pending, (from, to))
                .filter_expression("attribute_exists(held)")
                .limit(limit.saturating_sub(count).clamp(1, 1000) as i32)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| Error::aws("dynamodb", e))?;
            for item in out.items.unwrap_or_default() {
                let held = if item.contains_key("held_members") {
                    let group: HeldGroup = from_item(item)?;
                    HeldItem::Group(group)
                } else {
                    HeldItem::Single(from_item::<FailedDelivery>(item)?)
                };
                count += held.size();
                found.push(held);
            }
            start = out.last_evaluated_key;
            if start.is_none() || count >= limit {
                break;
            }
        }
        let next =
            start.and_then(|key| DeliveryId::parse(key.get("delivery_id")?.as_s().ok()?).ok());
        Ok((found, next))
    }

    /// The endpoint's backlog loop, if one runs (strongly consistent).
    pub async fn backlog_loop(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
    ) -> Result<Option<BacklogLoop>> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.deliveries)
            .set_key(Some(loop_key(tenant, endpoint)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        out.item.map(from_item).transpose()
    }

    /// Makes `token` the endpoint's loop: only if none runs (`take_over`: whatever runs; the
    /// one running then stops at its next step). `false`: another loop runs.
    pub async fn claim_backlog_loop(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        token: &str,
        take_over: bool,
    ) -> Result<bool> {
        let now = Utc::now();
        let mut put = self
            .ddb
            .put_item()
            .table_name(&self.deliveries)
            .set_item(Some({
                let mut item = loop_key(tenant, endpoint);
                item.insert("token".into(), s(token));
                item.insert("step".into(), n(0));
                item.insert("started_at".into(), to_attr(&now)?);
                item.insert("expires_at".into(), n(self.expiry(now)));
                item
            }))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if !take_over {
            put = put.condition_expression("attribute_not_exists(#token)");
            put = put.expression_attribute_names("#token", "token");
        }
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => {
                // This very claim, landed with its answer lost, or another loop's.
                let old = match e.into_service_error() {
                    aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => c.item,
                    _ => None,
                };
                Ok(old
                    .and_then(|old| old.get("token").and_then(|t| t.as_s().ok()).cloned())
                    .is_some_and(|t| t == token))
            }
            Err(e) => Err(Error::aws("dynamodb", e)),
        }
    }

    /// Claims step `step` of the loop `token` for this copy of its task until `until_ms`
    /// (unix ms; another copy takes it over after that, this one having stopped).
    pub async fn claim_backlog_step(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        (token, step): (&str, u32),
        (now_ms, until_ms): (i64, i64),
    ) -> Result<StepClaim> {
        let result = self
            .ddb
            .update_item()
            .table_name(&self.deliveries)
            .set_key(Some(loop_key(tenant, endpoint)))
            .update_expression("SET claimed_until = :until")
            .condition_expression(
                "#token = :token AND step = :step \
                 AND (attribute_not_exists(claimed_until) OR claimed_until < :now)",
            )
            .expression_attribute_names("#token", "token")
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":step", n(step))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":until", n(until_ms))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(StepClaim::Taken),
            Err(e) if is_conditional_failure(&e) => {
                let old = match e.into_service_error() {
                    aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => c.item,
                    _ => None,
                };
                let Some(old) = old.map(from_item::<BacklogLoop>).transpose()? else {
                    return Ok(StepClaim::Moved);
                };
                Ok(if old.token != token || old.step > step {
                    StepClaim::Moved
                } else if old.step < step {
                    StepClaim::Early
                } else if old.claimed_until == Some(until_ms) {
                    // This very claim, its answer lost.
                    StepClaim::Taken
                } else {
                    StepClaim::Busy
                })
            }
            Err(e) => Err(Error::aws("dynamodb", e)),
        }
    }

    /// Moves the loop `token` past `step` (its work done and the next step queued).
    pub async fn finish_backlog_step(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        (token, step): (&str, u32),
    ) -> Result<()> {
        let result = self
            .ddb
            .update_item()
            .table_name(&self.deliveries)
            .set_key(Some(loop_key(tenant, endpoint)))
            .update_expression("SET step = :next REMOVE claimed_until")
            .condition_expression("#token = :token AND step = :step")
            .expression_attribute_names("#token", "token")
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":step", n(step))
            .expression_attribute_values(":next", n(step + 1))
            .send()
            .await;
        // Not at that step: moved on already (this write's answer lost), or taken over.
        written(result).map(|_| ())
    }

    /// Ends the loop `token` (nothing held is left); nothing if another loop took over.
    pub async fn end_backlog_loop(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        token: &str,
    ) -> Result<()> {
        let result = self
            .ddb
            .delete_item()
            .table_name(&self.deliveries)
            .set_key(Some(loop_key(tenant, endpoint)))
            .condition_expression("#token = :token")
            .expression_attribute_names("#token", "token")
            .expression_attribute_values(":token", s(token))
            .send()
            .await;
        written(result).map(|_| ())
    }
}
