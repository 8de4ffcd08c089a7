//! The lease slots of a slow endpoint: while its attempts take long, each takes one, so that
//! only a few run at once ([`crate::pipeline::dispatch`]).
//!
//! The slots are one small item of the endpoint's own history partition (`sl_leases`, outside
//! the `dlv_…` range every history query reads; expiring with the history; purged with it),
//! not attributes of the endpoint's item: that item is large (sealed secrets, headers,
//! templates) and shares its partition key with every endpoint of the venue, so two writes an
//! attempt there (and three refused ones for each delivery held at the cap) spent the whole
//! venue's write capacity on one slow endpoint. Here a slot costs one write unit, on the
//! endpoint's key alone.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::Utc;

use super::deliveries::endpoint_item_key;
use super::{n, written, Store, Tenant};
use crate::model::error::Result;
use crate::model::ids::EndpointId;

/// The sort key of an endpoint's slots item.
const SLOTS: &str = "sl_leases";

fn slots_key(tenant: &Tenant, endpoint: &EndpointId) -> HashMap<String, AttributeValue> {
    endpoint_item_key(tenant, endpoint, SLOTS)
}

impl Store {
    /// The lease slots of a slow endpoint that are free at `now_ms` (unix ms), among
    /// `0..slots`: one eventually consistent read (half a read unit), so that a delivery that
    /// finds every slot taken spends no write, and one that finds a free slot writes once. A
    /// stale answer costs a refused write (or a short wait), never a second holder.
    pub async fn free_slots(
        &self,
        tenant: &Tenant,
        id: &EndpointId,
        slots: u32,
        now_ms: i64,
    ) -> Result<Vec<u32>> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.deliveries)
            .set_key(Some(slots_key(tenant, id)))
            .send()
            .await
            .map_err(|e| crate::model::error::Error::aws("dynamodb", e))?;
        let item = out.item.unwrap_or_default();
        Ok((0..slots)
            .filter(|slot| {
                let until = item
                    .get(&format!("lease_{slot}"))
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse::<i64>().ok());
                until.is_none_or(|until| until < now_ms)
            })
            .collect())
    }

    /// Takes lease slot `slot` of a slow endpoint until `until_ms` (unix ms): `true` if it
    /// was free (or its holder's lease ran out).
    pub async fn take_slot(
        &self,
        tenant: &Tenant,
        id: &EndpointId,
        slot: u32,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool> {
        let result = self
            .ddb
            .update_item()
            .table_name(&self.deliveries)
            .set_key(Some(slots_key(tenant, id)))
            .update_expression("SET #slot = :until, expires_at = :exp")
            .condition_expression("attribute_not_exists(#slot) OR #slot < :now")
            .expression_attribute_names("#slot", format!("lease_{slot}"))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":until", n(until_ms))
            .expression_attribute_values(":exp", n(self.expiry(Utc::now())))
            .send()
            .await;
        written(result)
    }

    /// Frees a lease slot taken by [`Store::take_slot`] (if it is still ours).
    pub async fn free_slot(
        &self,
        tenant: &Tenant,
        id: &EndpointId,
        slot: u32,
        until_ms: i64,
    ) -> Result<()> {
        let result = self
            .ddb
            .update_item()
            .table_name(&self.deliveries)
            .set_key(Some(slots_key(tenant, id)))
            .update_expression("REMOVE #slot")
            .condition_expression("#slot = :until")
            .expression_attribute_names("#slot", format!("lease_{slot}"))
            .expression_attribute_values(":until", n(until_ms))
            .send()
            .await;
        written(result).map(|_| ())
    }
}
