//! The pace of an endpoint with a rate limit: each delivery to it takes the next free send
//! time (a turn), one `1/limit` of a second after the one before; a delivery whose turn is
//! later waits on the queue until then ([`crate::pipeline::dispatch`]), not in flight.
//!
//! The next free turn is one small item of the endpoint's own history partition (`rl_pace`,
//! outside the `dlv_…` range every history query reads; expiring with the history): a job
//! takes the turns of all its deliveries in one conditional write.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

use super::deliveries::endpoint_item_key;
use super::{is_conditional_failure, n, Store, Tenant};
use crate::model::error::{Error, Result};
use crate::model::ids::EndpointId;

/// The sort key of an endpoint's pace item.
const PACE: &str = "rl_pace";

fn pace_key(tenant: &Tenant, endpoint: &EndpointId) -> HashMap<String, AttributeValue> {
    endpoint_item_key(tenant, endpoint, PACE)
}

fn next_of(item: &HashMap<String, AttributeValue>) -> Option<i64> {
    item.get("next_ms")?.as_n().ok()?.parse().ok()
}

impl Store {
    /// Takes `count` turns at the endpoint, `every_ms` apart, the first no earlier than
    /// `now_ms`; returns the first (unix ms): one read (half a unit), one conditional write;
    /// a write that finds another's turns taken first takes the ones after them (a few tries).
    pub async fn take_turns(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        (count, every_ms): (u32, i64),
        now_ms: i64,
    ) -> Result<i64> {
        let mut read: Option<i64> = self
            .ddb
            .get_item()
            .table_name(&self.deliveries)
            .set_key(Some(pace_key(tenant, endpoint)))
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?
            .item
            .as_ref()
            .and_then(next_of);
        for _ in 0..8 {
            let first = read.unwrap_or(now_ms).max(now_ms);
            let next = first + every_ms * i64::from(count.max(1));
            let mut update = self
                .ddb
                .update_item()
                .table_name(&self.deliveries)
                .set_key(Some(pace_key(tenant, endpoint)))
                .update_expression("SET next_ms = :next, expires_at = :exp")
                .expression_attribute_values(":next", n(next))
                .expression_attribute_values(":exp", n(self.expiry(chrono::Utc::now())))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            update = match read {
                Some(was) => update
                    .condition_expression("next_ms = :was")
                    .expression_attribute_values(":was", n(was)),
                None => update.condition_expression("attribute_not_exists(next_ms)"),
            };
            match update.send().await {
                Ok(_) => return Ok(first),
                Err(e) if is_conditional_failure(&e) => {
                    read = match e.into_service_error() {
                        aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => {
                            c.item.as_ref().and_then(next_of)
                        }
                        _ => None,
                    };
                }
                Err(e) => return Err(Error::aws("dynamodb", e)),
            }
        }
        Err(Error::Conflict(format!(
            "the endpoint {endpoint}'s turns kept being taken by others"
        )))
    }
}
