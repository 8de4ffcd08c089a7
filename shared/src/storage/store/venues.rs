//! Removing a venue's data: its keys and portal sessions, its endpoints, and its events and
//! history a page at a time; and the removal record that tells deliver to drop, unrecorded,
//! whatever of the venue was still in flight.

use std::collections::{BTreeSet, HashMap};

use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, WriteRequest};
use chrono::{DateTime, Utc};

use super::{n, s, to_attr, Store, Tenant};
use crate::model::error::{Error, Result};
use crate::model::ids::EndpointId;

/// The removal record's `key_id` in the API keys table: `rmv_{venue}` (no key or session
/// id has this prefix).
const REMOVAL_PREFIX: &str = "rmv_";

fn removal_key(tenant: &Tenant) -> AttributeValue {
    s(format!("{REMOVAL_PREFIX}{}", tenant.venue().as_str()))
}

fn delete_request(key: HashMap<String, AttributeValue>) -> Result<WriteRequest> {
    let request = DeleteRequest::builder()
        .set_key(Some(key))
        .build()
        .map_err(|e| Error::Corrupt(e.to_string()))?;
    Ok(WriteRequest::builder().delete_request(request).build())
}

impl Store {
    /// Records that the venue was removed `now`; kept as long as its history would have been
    /// (by then nothing of it can still be in flight).
    pub async fn mark_removed(&self, tenant: &Tenant, now: DateTime<Utc>) -> Result<()> {
        self.ddb
            .put_item()
            .table_name(&self.api_keys)
            .item("key_id", removal_key(tenant))
            .item("venue_id", s(tenant.venue().as_str()))
            .item("removed_at", to_attr(&now)?)
            .item("expires_at", n(self.expiry(now)))
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        Ok(())
    }

    /// Whether the venue was removed (read only when a delivery finds its endpoint or event
    /// gone, which is rare).
    pub async fn is_removed(&self, tenant: &Tenant) -> Result<bool> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.api_keys)
            .key("key_id", removal_key(tenant))
            .projection_expression("key_id")
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        Ok(out.item.is_some())
    }

    /// Deletes every API key and portal session of the venue; how many of each.
    pub async fn delete_venue_access(&self, tenant: &Tenant) -> Result<(usize, usize)> {
        let mut pages = self
            .ddb
            .query()
            .table_name(&self.api_keys)
            .index_name("by_venue")
            .key_condition_expression("venue_id = :v")
            .expression_attribute_values(":v", s(tenant.venue().as_str()))
            .projection_expression("key_id")
            .into_paginator()
            .items()
            .send();
        let (mut keys, mut sessions, mut requests) = (0, 0, Vec::new());
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| Error::aws("dynamodb", e))?;
            let Some(id) = item.get("key_id").and_then(|v| v.as_s().ok()) else {
                continue;
            };
            if id.starts_with(REMOVAL_PREFIX) {
                continue;
            }
            if id.starts_with(crate::model::ids::PortalSessionId::PREFIX) {
                sessions += 1;
            } else {
                keys += 1;
            }
            requests.push(delete_request(HashMap::from([(
                "key_id".to_owned(),
                s(id.as_str()),
            )]))?);
        }
        // Its publishing counters of the last minute (no `venue_id`: not in the index).
        for key in super::publish_rate::publish_counter_keys(
            tenant.venue(),
            chrono::Utc::now().timestamp(),
        ) {
            requests.push(delete_request(HashMap::from([(
                "key_id".to_owned(),
                s(key.as_str()),
            )]))?);
        }
        self.write_batches(&self.api_keys, requests).await?;
        Ok((keys, sessions))
    }

    /// Deletes the venue's endpoints (all of them: a venue has at most a thousand); their ids.
    pub async fn delete_venue_endpoints(&self, tenant: &Tenant) -> Result<Vec<EndpointId>> {
        let ids = self.endpoint_ids(tenant, 10_000).await?;
        let requests = ids
            .iter()
            .map(|id| {
                delete_request(HashMap::from([
                    ("venue_id".to_owned(), s(tenant.venue().as_str())),
                    ("endpoint_id".to_owned(), s(id.as_str())),
                ]))
            })
            .collect::<Result<Vec<_>>>()?;
        self.write_batches(&self.endpoints, requests).await?;
        Ok(ids)
    }

    /// Deletes up to `budget` of the venue's events; returns how many, the endpoints their
    /// targets name (whose history goes too), and whether any are left.
    pub async fn purge_events(
        &self,
        tenant: &Tenant,
        budget: usize,
    ) -> Result<(usize, BTreeSet<EndpointId>, bool)> {
        let partition = ("venue_id", s(tenant.venue().as_str()));
        let (items, more) = self
            .purge_partition(
                &self.events,
                partition,
                ("event_id", "event_id, targets, fan"),
                budget,
            )
            .await?;
        let endpoints = items.iter().flat_map(target_endpoints).collect();
        Ok((items.len(), endpoints, more))
    }

    /// Deletes up to `budget` items of one endpoint's history partition (deliveries, group
    /// items, replays); returns how many and whether any are left.
    pub async fn purge_history(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        budget: usize,
    ) -> Result<(usize, bool)> {
        let partition = (
            "history_key",
            super::deliveries::history_key(tenant, endpoint.tag()),
        );
        let (items, more) = self
            .purge_partition(
                &self.deliveries,
                partition,
                ("delivery_id", "delivery_id"),
                budget,
            )
            .await?;
        Ok((items.len(), more))
    }

    /// Reads up to `budget` items of one partition of `table` (one Query page, strongly
    /// consistent, `projection` only: it names the sort key `sort`) and deletes them, 25 a
    /// call; returns them and whether any are left.
    async fn purge_partition(
        &self,
        table: &str,
        (key, value): (&str, AttributeValue),
        (sort, projection): (&str, &str),
        budget: usize,
    ) -> Result<(Vec<HashMap<String, AttributeValue>>, bool)> {
        let out = self
            .ddb
            .query()
            .table_name(table)
            .key_condition_expression("#k = :k")
            .expression_attribute_names("#k", key)
            .expression_attribute_values(":k", value.clone())
            .projection_expression(projection)
            .consistent_read(true)
            .limit(budget.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        let items = out.items.unwrap_or_default();
        let requests = items
            .iter()
            .filter_map(|item| item.get(sort).cloned())
            .map(|id| {
                delete_request(HashMap::from([
                    (key.to_owned(), value.clone()),
                    (sort.to_owned(), id),
                ]))
            })
            .collect::<Result<Vec<_>>>()?;
        self.write_batches(table, requests).await?;
        Ok((items, out.last_evaluated_key.is_some()))
    }
}

/// The endpoint ids an event item's targets name (`targets` or its compact `fan`).
fn target_endpoints(item: &HashMap<String, AttributeValue>) -> Vec<EndpointId> {
    let parse = |v: &AttributeValue| v.as_s().ok().and_then(|e| EndpointId::parse(e).ok());
    match (item.get("fan"), item.get("targets")) {
        (Some(AttributeValue::M(fan)), _) => match fan.get("e") {
            Some(AttributeValue::L(ids)) => ids.iter().filter_map(parse).collect(),
            _ => Vec::new(),
        },
        (_, Some(AttributeValue::L(targets))) => targets
            .iter()
            .filter_map(|t| t.as_m().ok()?.get("endpoint_id").and_then(parse))
            .collect(),
        _ => Vec::new(),
    }
}
