//! The endpoints table: a venue's endpoints, their health, the fan-out set.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};

use super::{
    from_item, is_conditional_failure, n, s, to_attr, to_item, written, Page, Store, Tenant,
};
use crate::delivery::breaker::{Change, WindowWrite};
use crate::model::domain::Endpoint;
use crate::model::error::{Error, Result};
use crate::model::ids::{EndpointId, VenueId};

impl Store {
    pub async fn create_endpoint(&self, endpoint: &Endpoint) -> Result<()> {
        self.put_generated(&self.endpoints, to_item(endpoint)?, "endpoint_id")
            .await
    }

    /// Replaces an endpoint, provided nobody else changed it since `previous_updated_at`.
    pub async fn replace_endpoint(
        &self,
        endpoint: &Endpoint,
        previous_updated_at: DateTime<Utc>,
    ) -> Result<()> {
        let result = self
            .ddb
            .put_item()
            .table_name(&self.endpoints)
            .set_item(Some(to_item(endpoint)?))
            .condition_expression("attribute_exists(endpoint_id) AND updated_at = :prev")
            .expression_attribute_values(":prev", to_attr(&previous_updated_at)?)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Err(Error::Conflict(
                "the endpoint was changed or deleted by another request; read it again and retry"
                    .into(),
            )),
            Err(e) => Err(Error::aws("dynamodb", e)),
        }
    }

    /// An endpoint, strongly consistent: an absent answer ends deliveries, so it must not be
    /// a stale one.
    pub async fn get_endpoint(&self, tenant: &Tenant, id: &EndpointId) -> Result<Option<Endpoint>> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.endpoints)
            .key("venue_id", s(tenant.venue().as_str()))
            .key("endpoint_id", s(id.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        out.item.map(from_item).transpose()
    }

    /// Endpoints of one or more venues in as few BatchGetItem calls as possible (one per
    /// hundred), strongly consistent (an endpoint just created is there); missing ones are
    /// left out, and an item that does not read as an endpoint is there as its error, so that
    /// it fails its own deliveries and nobody else's.
    pub async fn get_endpoints(
        &self,
        keys: &[(Tenant, EndpointId)],
    ) -> Result<HashMap<(VenueId, EndpointId), std::result::Result<Endpoint, String>>> {
        let mut unique: Vec<(&Tenant, &str)> =
            keys.iter().map(|(t, id)| (t, id.as_str())).collect();
        unique
            .sort_unstable_by(|a, b| (a.0.venue().as_str(), a.1).cmp(&(b.0.venue().as_str(), b.1)));
        unique.dedup();
        let mut found = HashMap::new();
        for item in self
            .batch_get_of(&self.endpoints, "endpoint_id", &unique, true)
            .await?
        {
            let key_of = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
            let (Some(venue), Some(id)) = (key_of("venue_id"), key_of("endpoint_id")) else {
                continue;
            };
            let (Ok(venue), Ok(id)) = (VenueId::parse(&venue), EndpointId::parse(&id)) else {
                continue;
            };
            let endpoint = from_item::<Endpoint>(item).map_err(|e| e.to_string());
            found.insert((venue, id), endpoint);
        }
        Ok(found)
    }

    pub async fn delete_endpoint(&self, tenant: &Tenant, id: &EndpointId) -> Result<()> {
        let result = self
            .ddb
            .delete_item()
            .table_name(&self.endpoints)
            .key("venue_id", s(tenant.venue().as_str()))
            .key("endpoint_id", s(id.as_str()))
            .condition_expression("attribute_exists(endpoint_id)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Err(Error::NotFound("endpoint")),
            Err(e) => Err(Error::aws("dynamodb", e)),
        }
    }

    /// Writes a batch's effect on the endpoint's circuit and its failure-rate window (one
    /// write, none when neither changed). `true` when this write flipped the circuit (opened
    /// a closed one, or closed an open one): of several batches that reach the same
    /// conclusion at once, only one is told so (the old item says what it found).
    pub async fn record_health(
        &self,
        tenant: &Tenant,
        id: &EndpointId,
        (change, window): (&Change, &WindowWrite),
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut set: Vec<&str> = Vec::new();
        let mut add: Vec<&str> = Vec::new();
        let mut remove: Vec<&str> = Vec::new();
        let mut values: Vec<(&str, AttributeValue)> = Vec::new();
        match change {
            Change::None => {}
            Change::Close => {
                set.push("failures_in_row = :zero, circuit_opens = :zero");
                remove.push("failing_since, circuit_open_until, probe_until");
                values.push((":zero", n(0)));
            }
            Change::Count(failures) => {
                set.push("failing_since = if_not_exists(failing_since, :now)");
                add.push("failures_in_row :n");
                values.push((":now", to_attr(&now)?));
                values.push((":n", n(*failures)));
            }
            Change::Open {
                until,
                opens,
                failures,
            } => {
                set.push("failing_since = if_not_exists(failing_since, :now), circuit_open_until = :until, circuit_opens = :opens");
                add.push("failures_in_row :n");
                remove.push("probe_until");
                values.push((":now", to_attr(&now)?));
                values.push((":until", to_attr(until)?));
                values.push((":opens", n(*opens)));
                values.push((":n", n(*failures)));
            }
        }
        match window {
            WindowWrite::Keep => {}
            WindowWrite::Start {
                since,
                attempts,
                failures,
            } => {
                set.push("failure_window_since = :wsince, failure_window_attempts = :wa, failure_window_failures = :wf");
                values.push((":wsince", to_attr(since)?));
                values.push((":wa", n(*attempts)));
                values.push((":wf", n(*failures)));
            }
            WindowWrite::Add { attempts, failures } => {
                add.push("failure_window_attempts :wa, failure_window_failures :wf");
                values.push((":wa", n(*attempts)));
                values.push((":wf", n(*failures)));
            }
            WindowWrite::Clear => {
                remove
                    .push("failure_window_since, failure_window_attempts, failure_window_failures");
            }
        }
        if set.is_empty() && add.is_empty() && remove.is_empty() {
            return Ok(false);
        }
        let mut update = String::new();
        for (keyword, parts) in [("SET", &set), ("ADD", &add), ("REMOVE", &remove)] {
            if !parts.is_empty() {
                update.push_str(&format!("{keyword} {} ", parts.join(", ")));
            }
        }
        // Deleted meanwhile: nothing to do.
        let sent = self
            .endpoint_update(
                tenant,
                id,
                (update.trim_end(), "attribute_exists(endpoint_id)"),
                None,
                values,
            )
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await;
        let was_open = match sent {
            Ok(out) => out
                .attributes
                .is_some_and(|old| old.contains_key("circuit_open_until")),
            Err(e) if is_conditional_failure(&e) => return Ok(false),
            Err(e) => return Err(Error::aws("dynamodb", e)),
        };
        Ok(match change {
            Change::Open { .. } => !was_open,
            Change::Close => was_open,
            _ => false,
        })
    }

    /// Marks the endpoint slow until `until` (unless it is already).
    pub async fn mark_slow(
        &self,
        tenant: &Tenant,
        id: &EndpointId,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<()> {
        self.update_endpoint_health(
            tenant,
            id,
            "SET slow_until = :until",
            "attribute_exists(endpoint_id) AND (attribute_not_exists(slow_until) OR slow_until < :now)",
            vec![(":now", to_attr(&now)?), (":until", to_attr(&until)?)],
        )
        .await
    }

    /// The probe's lease of an endpoint whose circuit's cooldown is over: `true` for the one
    /// caller that gets it (until `until`), `false` for everyone else.
    pub async fn take_probe(
        &self,
        tenant: &Tenant,
        id: &EndpointId,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool> {
        self.update_endpoint_if(
            tenant,
            id,
            (
                "SET probe_until = :until",
                "circuit_open_until <= :now AND (attribute_not_exists(probe_until) OR probe_until < :now)",
            ),
            None,
            vec![(":now", to_attr(&now)?), (":until", to_attr(&until)?)],
        )
        .await
    }

    /// Disables an endpoint on the system's own account, saying why.
    /// Disables an enabled endpoint with `reason`; `false` if it was disabled (or deleted)
    /// already, so that only one of several disablers says so.
    pub async fn disable_endpoint(
        &self,
        tenant: &Tenant,
        id: &EndpointId,
        reason: &str,
    ) -> Result<bool> {
        let now = Utc::now();
        self.update_endpoint_if(
            tenant,
            id,
            (
                "SET enabled = :false, disabled_reason = :reason, updated_at = :now REMOVE failing_since",
                "attribute_exists(endpoint_id) AND enabled = :true",
            ),
            None,
            vec![
                (":false", AttributeValue::Bool(false)),
                (":true", AttributeValue::Bool(true)),
                (":reason", s(reason)),
                (":now", to_attr(&now)?),
            ],
        )
        .await
    }

    async fn update_endpoint_health(
        &self,
        tenant: &Tenant,
        id: &EndpointId,
        update: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<()> {
        // Deleted meanwhile, or the clock was already running: nothing to do.
        self.update_endpoint_if(tenant, id, (update, condition), None, values)
            .await
            .map(|_| ())
    }

    /// A conditional UpdateItem of the endpoint's item: `false` if the condition did not hold.
    async fn update_endpoint_if(
        &self,
        tenant: &Tenant,
        id: &EndpointId,
        expressions: (&str, &str),
        name: Option<(&str, String)>,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<bool> {
        written(
            self.endpoint_update(tenant, id, expressions, name, values)
                .send()
                .await,
        )
    }

    /// The UpdateItem of the endpoint's item with these expressions, ready to send.
    fn endpoint_update(
        &self,
        tenant: &Tenant,
        id: &EndpointId,
        (update, condition): (&str, &str),
        name: Option<(&str, String)>,
        values: Vec<(&str, AttributeValue)>,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        let mut request = self
            .ddb
            .update_item()
            .table_name(&self.endpoints)
            .key("venue_id", s(tenant.venue().as_str()))
            .key("endpoint_id", s(id.as_str()))
            .update_expression(update)
            .condition_expression(condition);
        if let Some((placeholder, attribute)) = name {
            request = request.expression_attribute_names(placeholder, attribute);
        }
        for (name, value) in values {
            request = request.expression_attribute_values(name, value);
        }
        request
    }

    /// One page of a venue's endpoints, oldest first.
    pub async fn list_endpoints(
        &self,
        tenant: &Tenant,
        limit: i32,
        after: Option<&EndpointId>,
    ) -> Result<Page<Endpoint>> {
        let mut query = self
            .ddb
            .query()
            .table_name(&self.endpoints)
            .key_condition_expression("venue_id = :v")
            .expression_attribute_values(":v", s(tenant.venue().as_str()))
            .limit(limit);
        if let Some(after) = after {
            query = query
                .exclusive_start_key("venue_id", s(tenant.venue().as_str()))
                .exclusive_start_key("endpoint_id", s(after.as_str()));
        }
        let out = query.send().await.map_err(|e| Error::aws("dynamodb", e))?;
        let items: Vec<Endpoint> = out
            .items
            .unwrap_or_default()
            .into_iter()
            .map(from_item)
            .collect::<Result<_>>()?;
        let next_cursor = out
            .last_evaluated_key
            .and_then(|key| key.get("endpoint_id").and_then(|v| v.as_s().ok()).cloned());
        Ok(Page { items, next_cursor })
    }

    /// The ids of a venue's endpoints (enabled or not), up to `limit` of them (what is past
    /// it is not read).
    pub async fn endpoint_ids(&self, tenant: &Tenant, limit: usize) -> Result<Vec<EndpointId>> {
        let mut ids = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .ddb
                .query()
                .table_name(&self.endpoints)
                .key_condition_expression("venue_id = :v")
                .expression_attribute_values(":v", s(tenant.venue().as_str()))
                .projection_expression("endpoint_id")
                .consistent_read(true)
                .limit((limit - ids.len()).clamp(1, 1000) as i32)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| Error::aws("dynamodb", e))?;
            ids.extend(
                out.items.unwrap_or_default().iter().filter_map(|item| {
                    EndpointId::parse(item.get("endpoint_id")?.as_s().ok()?).ok()
                }),
            );
            start = out.last_evaluated_key;
            if start.is_none() || ids.len() >= limit {
                return Ok(ids);
            }
        }
    }

    /// Every endpoint of a venue with what fan-out needs of it (the `fanout` index: its id
    /// and event types, not its whole item), all pages. Disabled ones too: their deliveries
    /// are kept for them, held until they are enabled ([`crate::pipeline::backlog`]).
    pub async fn fanout_endpoints(&self, tenant: &Tenant) -> Result<Vec<FanoutEndpoint>> {
        let mut found = Vec::new();
        let mut pages = self
            .ddb
            .query()
            .table_name(&self.endpoints)
            .index_name("fanout")
            .key_condition_expression("venue_id = :v")
            .expression_attribute_values(":v", s(tenant.venue().as_str()))
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| Error::aws("dynamodb", e))?;
            let id = item
                .get("endpoint_id")
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default();
            match from_item::<FanoutEndpoint>(item) {
                Ok(endpoint) => found.push(endpoint),
                // One damaged item must not stop the venue's other endpoints from getting
                // their events: it is left out (its subscriptions cannot be read) and said.
                Err(e) => tracing::error!(
                    venue_id = %tenant.venue(),
                    endpoint_id = id,
                    error = %e,
                    "an endpoint's item does not read; it is left out of the fan-out"
                ),
            }
        }
        Ok(found)
    }
}

/// An endpoint as fan-out sees it: its id and the event types it subscribes to.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct FanoutEndpoint {
    pub endpoint_id: crate::model::ids::EndpointId,
    pub event_types: Vec<String>,
}

impl FanoutEndpoint {
    pub fn subscribes_to(&self, event_type: &str) -> bool {
        self.event_types
            .iter()
            .any(|pattern| crate::model::domain::pattern_matches(pattern, event_type))
    }
}
