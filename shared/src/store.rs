//! DynamoDB storage of endpoints, events and deliveries.
//!
//! Every venue-owned read or write takes a [`Tenant`]: the only way to name a venue's data is
//! through a value that the API's authorisation (or a trusted internal queue) produced, so an
//! unscoped query cannot be written by accident.
//!
//! Tables (see `infra/template.yaml`):
//! - endpoints: `venue_id` (hash) + `endpoint_id` (range).
//! - events: `venue_id` + `event_id`; the conditional put on the id is the de-duplication.
//! - deliveries: `venue_id` (hash) + `delivery_id` (range). The first-try successes of one
//!   job (one event, up to ten endpoints) share one item under the group's id
//!   ([`GroupRecord`]); a delivery that needs more than one attempt has an item of its own
//!   under its delivery id ([`DeliveryRecord`]), which sorts right after its group's.
//!   An endpoint's history is a query of the venue, newest first, filtered on the endpoint.
//!   No secondary index: it would double the write cost of every item.

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::backoff;
use crate::config::Resources;
use crate::domain::{Attempt, DeliveryStatus, Endpoint, Event, Target};
use crate::error::{Error, Result};
use crate::ids::{ApiKeyId, DeliveryId, EndpointId, EventId, VenueId};

/// A venue whose data the caller may touch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant(VenueId);

impl Tenant {
    /// For the API's authorisation layer, after it has checked the caller's key.
    pub fn authorized(venue: VenueId) -> Self {
        Self(venue)
    }

    /// For messages on our own queues, whose venue was authorised when they were accepted.
    pub fn from_internal_message(venue: VenueId) -> Self {
        Self(venue)
    }

    pub fn venue(&self) -> &VenueId {
        &self.0
    }
}

/// An accepted event as stored, with where it fans out to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventRecord {
    pub venue_id: VenueId,
    pub event_id: EventId,
    pub event_type: String,
    pub timestamp: String,
    /// Compact JSON of the data object.
    pub data: String,
    pub targets: Vec<Target>,
    pub accepted_at: DateTime<Utc>,
    pub expires_at: i64,
}

impl EventRecord {
    /// An event accepted `now` for `tenant`, going to `targets`.
    pub fn accepted(
        tenant: &Tenant,
        event: &Event,
        targets: Vec<Target>,
        now: DateTime<Utc>,
        expires_at: i64,
    ) -> Self {
        Self {
            venue_id: tenant.venue().clone(),
            event_id: event.id.clone(),
            event_type: event.event_type.clone(),
            timestamp: event.timestamp.clone(),
            data: event.data.get().to_owned(),
            targets,
            accepted_at: now,
            expires_at,
        }
    }
}

/// A delivery as stored: the history item of one event at one endpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub delivery_id: DeliveryId,
    pub venue_id: VenueId,
    pub endpoint_id: EndpointId,
    pub event_id: EventId,
    pub event_type: String,
    pub status: DeliveryStatus,
    /// All attempts, scheduled and manual.
    #[serde(default)]
    pub attempt_count: u32,
    /// Attempts of the retry schedule; manual ones do not move it.
    #[serde(default)]
    pub scheduled_attempts: u32,
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub last_status_code: Option<u16>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub expires_at: i64,
    /// Read from its group's item (a first-try success), not from an item of its own.
    #[serde(skip)]
    pub in_group: bool,
}

/// The first-try successes of one group (one event, up to ten endpoints) in one item, under
/// the group's id: a single write for all of them. A delivery that needs more than one
/// attempt is not here; it has an item of its own ([`DeliveryRecord`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupRecord {
    pub venue_id: VenueId,
    /// The group's id; its members' delivery ids are [`DeliveryId::member`]s of it.
    pub delivery_id: DeliveryId,
    pub event_id: EventId,
    pub event_type: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: i64,
    /// The endpoints this item holds a delivery of (the history query filters on it).
    pub eps: Vec<EndpointId>,
    /// One per endpoint of `eps`, in the same order.
    pub entries: Vec<GroupEntry>,
    /// Endpoints whose delivery was moved to an item of its own (a manual retry of it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved: Vec<EndpointId>,
}

/// One first-try success in a group item: the member's place and its attempt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupEntry {
    pub i: usize,
    pub a: Attempt,
}

impl GroupRecord {
    /// The delivery of the member at `index`, unless it is not here (or moved out).
    pub fn member(&self, index: usize) -> Option<DeliveryRecord> {
        let k = self.entries.iter().position(|e| e.i == index)?;
        self.delivery(k)
    }

    /// This item's delivery to `endpoint`, unless it has none (or moved it out).
    pub fn of_endpoint(&self, endpoint: &EndpointId) -> Option<DeliveryRecord> {
        let k = self.eps.iter().position(|e| e == endpoint)?;
        self.delivery(k)
    }

    fn delivery(&self, k: usize) -> Option<DeliveryRecord> {
        let endpoint_id = self.eps.get(k)?;
        let entry = self.entries.get(k)?;
        if self.moved.contains(endpoint_id) {
            return None;
        }
        Some(DeliveryRecord {
            delivery_id: self.delivery_id.member(entry.i),
            venue_id: self.venue_id.clone(),
            endpoint_id: endpoint_id.clone(),
            event_id: self.event_id.clone(),
            event_type: self.event_type.clone(),
            status: DeliveryStatus::Succeeded,
            attempt_count: 1,
            scheduled_attempts: 1,
            created_at: self.created_at,
            updated_at: entry.a.at,
            last_status_code: entry.a.status_code,
            last_error: None,
            next_attempt_at: None,
            expires_at: self.expires_at,
            attempts: vec![entry.a.clone()],
            in_group: true,
        })
    }
}

/// An item of the deliveries table: a delivery's own, or a group's.
enum HistoryItem {
    Single(DeliveryRecord),
    Group(GroupRecord),
}

impl HistoryItem {
    fn from_item(item: HashMap<String, AttributeValue>) -> Result<Self> {
        if item.contains_key("entries") {
            from_item(item).map(Self::Group)
        } else {
            from_item(item).map(Self::Single)
        }
    }
}

/// Attempts kept in full in a delivery's item; older ones are only counted
/// (`attempt_count`), so the item stays far below DynamoDB's 400 KB.
pub const MAX_KEPT_ATTEMPTS: usize = 10;

/// What [`Store::record_attempt`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The attempt and the state it leads to.
    Written,
    /// A scheduled attempt of this number was recorded before (a copy of the job ran it).
    Duplicate,
    /// The attempt is kept in the history, but the delivery had moved on meanwhile (it
    /// succeeded, or a manual attempt found another status than it read): the state stays.
    StateKept(DeliveryStatus),
}

enum Written {
    Yes,
    /// The condition failed; the item as it is, if any.
    No(Option<HashMap<String, AttributeValue>>),
}

/// What one attempt changes on its delivery.
pub struct AttemptRecord<'a> {
    pub delivery_id: &'a DeliveryId,
    pub tenant: &'a Tenant,
    pub endpoint_id: &'a EndpointId,
    pub event_id: &'a EventId,
    pub event_type: &'a str,
    pub attempt: Attempt,
    pub status: DeliveryStatus,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// For a scheduled attempt, its number in the schedule: recorded only if the delivery
    /// has exactly one scheduled attempt fewer, so a duplicate job cannot record twice.
    /// `None` for manual attempts.
    pub scheduled: Option<u32>,
    /// The delivery as the caller read it before the attempt (`None`: it has no item yet).
    pub previous: Option<&'a DeliveryRecord>,
}

pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// A venue API key as stored: its hash, never the key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub key_id: ApiKeyId,
    pub venue_id: VenueId,
    pub key_sha256: String,
    pub hint: String,
    #[serde(default)]
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub last_used_at: Option<DateTime<Utc>>,
}

#[derive(Clone)]
pub struct Store {
    ddb: Client,
    endpoints: String,
    events: String,
    deliveries: String,
    api_keys: String,
    retention: Duration,
}

/// The events table's partition of events stored whose jobs could not be queued.
const UNQUEUED_PARTITION: &str = "#unqueued";

/// How many times one BatchGetItem is sent for the keys it leaves unprocessed.
const UNPROCESSED_ROUNDS: u32 = 6;

/// How many index pages one filtered history request may read before it answers with a cursor.
const MAX_FILTER_PAGES: usize = 5;

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn from_item<T: serde::de::DeserializeOwned>(item: HashMap<String, AttributeValue>) -> Result<T> {
    serde_dynamo::from_item(item).map_err(|e| Error::Corrupt(e.to_string()))
}

fn to_item<T: Serialize>(value: &T) -> Result<HashMap<String, AttributeValue>> {
    serde_dynamo::to_item(value).map_err(|e| Error::Corrupt(e.to_string()))
}

fn to_attr<T: Serialize>(value: &T) -> Result<AttributeValue> {
    serde_dynamo::to_attribute_value(value).map_err(|e| Error::Corrupt(e.to_string()))
}

fn is_conditional_failure<E>(err: &aws_sdk_dynamodb::error::SdkError<E>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    err.as_service_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "ConditionalCheckFailedException")
}

/// The outcome of a conditional write: `true` if written, `false` if its condition did not
/// hold (not an error where the caller expects that), an error for anything else.
fn written<T, E>(
    result: std::result::Result<T, aws_sdk_dynamodb::error::SdkError<E>>,
) -> Result<bool>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match result {
        Ok(_) => Ok(true),
        Err(e) if is_conditional_failure(&e) => Ok(false),
        Err(e) => Err(Error::aws("dynamodb", e)),
    }
}

/// Event data at least this long is stored deflated when that makes it shorter: a 1 KiB
/// event then fits one write unit with its targets.
const COMPRESS_FROM_BYTES: usize = 200;
/// What inflating stored data may produce at most (far above any accepted payload).
const INFLATE_LIMIT_BYTES: usize = 16 * 1024 * 1024;

/// An event as its item: the data deflated (`data_z`) when that is shorter, and the
/// targets as their groups (`groups`: the group id and its endpoints in order), which
/// leaves out the delivery ids (each is its group's `member(i)`).
fn event_item(record: &EventRecord) -> Result<HashMap<String, AttributeValue>> {
    let mut item = to_item(record)?;
    if record.data.len() >= COMPRESS_FROM_BYTES {
        let deflated = miniz_oxide::deflate::compress_to_vec(record.data.as_bytes(), 6);
        if deflated.len() < record.data.len() {
            item.remove("data");
            item.insert(
                "data_z".into(),
                AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(deflated)),
            );
        }
    }
    if let Some(groups) = as_groups(&record.targets) {
        item.remove("targets");
        item.insert("groups".into(), AttributeValue::L(groups));
    }
    Ok(item)
}

fn event_record(mut item: HashMap<String, AttributeValue>) -> Result<EventRecord> {
    if let Some(AttributeValue::B(deflated)) = item.remove("data_z") {
        let data = miniz_oxide::inflate::decompress_to_vec_with_limit(
            deflated.as_ref(),
            INFLATE_LIMIT_BYTES,
        )
        .map_err(|e| Error::Corrupt(format!("event data: {e}")))?;
        let data = String::from_utf8(data).map_err(|e| Error::Corrupt(e.to_string()))?;
        item.insert("data".into(), s(data));
    }
    if let Some(AttributeValue::L(groups)) = item.remove("groups") {
        let mut targets = Vec::new();
        for group in groups {
            let (Some(AttributeValue::S(id)), Some(AttributeValue::L(endpoints))) = (
                group.as_m().ok().and_then(|m| m.get("g")).cloned(),
                group.as_m().ok().and_then(|m| m.get("e")).cloned(),
            ) else {
                return Err(Error::Corrupt("an event's target group".into()));
            };
            let id = DeliveryId::parse(&id).map_err(|e| Error::Corrupt(e.to_string()))?;
            for (i, endpoint) in endpoints.into_iter().enumerate() {
                let mut target = HashMap::new();
                target.insert("endpoint_id".to_owned(), endpoint);
                target.insert("delivery_id".to_owned(), s(id.member(i).as_str()));
                targets.push(AttributeValue::M(target));
            }
        }
        item.insert("targets".into(), AttributeValue::L(targets));
    }
    from_item(item)
}

/// Targets that are whole groups in order (as the fan-out makes them), as `{g, e}` maps.
fn as_groups(targets: &[Target]) -> Option<Vec<AttributeValue>> {
    let mut groups: Vec<(DeliveryId, Vec<AttributeValue>)> = Vec::new();
    for target in targets {
        let (group, index) = target.delivery_id.group()?;
        let endpoint = s(target.endpoint_id.as_str());
        if let Some((g, endpoints)) = groups.last_mut() {
            if *g == group && endpoints.len() == index {
                endpoints.push(endpoint);
                continue;
            }
        }
        if index != 0 || groups.iter().any(|(g, _)| *g == group) {
            return None;
        }
        groups.push((group, vec![endpoint]));
    }
    Some(
        groups
            .into_iter()
            .map(|(g, endpoints)| {
                AttributeValue::M(HashMap::from([
                    ("g".to_owned(), s(g.as_str())),
                    ("e".to_owned(), AttributeValue::L(endpoints)),
                ]))
            })
            .collect(),
    )
}

impl Store {
    pub fn new(ddb: Client, resources: &Resources, retention_days: i64) -> Self {
        Self {
            ddb,
            endpoints: resources.endpoints_table.clone(),
            events: resources.events_table.clone(),
            deliveries: resources.deliveries_table.clone(),
            api_keys: resources.api_keys_table.clone(),
            retention: Duration::days(retention_days),
        }
    }

    /// Unix seconds at which an item written now expires (the tables' TTL attribute).
    pub fn expiry(&self, now: DateTime<Utc>) -> i64 {
        (now + self.retention).timestamp()
    }

    // ---- endpoints ----

    pub async fn create_endpoint(&self, endpoint: &Endpoint) -> Result<()> {
        self.put_generated(&self.endpoints, to_item(endpoint)?, "endpoint_id")
            .await
    }

    /// Writes a new item; `false` (nothing written) if an item with its key is there.
    async fn put_new(
        &self,
        table: &str,
        item: HashMap<String, AttributeValue>,
        key_attr: &str,
    ) -> Result<bool> {
        let result = self
            .ddb
            .put_item()
            .table_name(table)
            .set_item(Some(item))
            .condition_expression(format!("attribute_not_exists({key_attr})"))
            .send()
            .await;
        written(result)
    }

    /// Writes a new item whose key was just generated: one already there is an error.
    async fn put_generated(
        &self,
        table: &str,
        item: HashMap<String, AttributeValue>,
        key_attr: &str,
    ) -> Result<()> {
        if self.put_new(table, item, key_attr).await? {
            Ok(())
        } else {
            Err(Error::Conflict(format!(
                "generated {key_attr} already taken"
            )))
        }
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

    /// Starts an endpoint's failure clock, unless it is already running.
    pub async fn mark_failing(
        &self,
        tenant: &Tenant,
        id: &EndpointId,
        since: DateTime<Utc>,
    ) -> Result<()> {
        self.update_endpoint_health(
            tenant,
            id,
            "SET failing_since = :since",
            "attribute_exists(endpoint_id) AND attribute_not_exists(failing_since)",
            vec![(":since", to_attr(&since)?)],
        )
        .await
    }

    /// A success stops the failure clock.
    pub async fn clear_failing(&self, tenant: &Tenant, id: &EndpointId) -> Result<()> {
        self.update_endpoint_health(
            tenant,
            id,
            "REMOVE failing_since",
            "attribute_exists(endpoint_id)",
            vec![],
        )
        .await
    }

    /// Disables an endpoint on the system's own account, saying why.
    pub async fn disable_endpoint(
        &self,
        tenant: &Tenant,
        id: &EndpointId,
        reason: &str,
    ) -> Result<()> {
        let now = Utc::now();
        self.update_endpoint_health(
            tenant,
            id,
            "SET enabled = :false, disabled_reason = :reason, updated_at = :now REMOVE failing_since",
            "attribute_exists(endpoint_id)",
            vec![
                (":false", AttributeValue::Bool(false)),
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
        let mut request = self
            .ddb
            .update_item()
            .table_name(&self.endpoints)
            .key("venue_id", s(tenant.venue().as_str()))
            .key("endpoint_id", s(id.as_str()))
            .update_expression(update)
            .condition_expression(condition);
        for (name, value) in values {
            request = request.expression_attribute_values(name, value);
        }
        // Deleted meanwhile, or the clock was already running: nothing to do.
        written(request.send().await).map(|_| ())
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

    /// Every enabled endpoint of a venue (the fan-out set), all pages.
    pub async fn enabled_endpoints(&self, tenant: &Tenant) -> Result<Vec<Endpoint>> {
        let mut found = Vec::new();
        let mut pages = self
            .ddb
            .query()
            .table_name(&self.endpoints)
            .key_condition_expression("venue_id = :v")
            .filter_expression("enabled = :t")
            .expression_attribute_values(":v", s(tenant.venue().as_str()))
            .expression_attribute_values(":t", AttributeValue::Bool(true))
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
            match from_item(item) {
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

    // ---- events ----

    /// Stores an event unless its id is taken. Returns the stored record: the new one, or the
    /// one that already had this id (`false`).
    pub async fn put_event(&self, record: &EventRecord) -> Result<(EventRecord, bool)> {
        let result = self
            .ddb
            .put_item()
            .table_name(&self.events)
            .set_item(Some(event_item(record)?))
            .condition_expression("attribute_not_exists(event_id)")
            .return_values_on_condition_check_failure(
                aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld,
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok((record.clone(), true)),
            Err(e) if is_conditional_failure(&e) => {
                let existing = match e.into_service_error() {
                    PutItemError::ConditionalCheckFailedException(c) => c.item,
                    _ => None,
                };
                // DynamoDB returns the item that failed the condition (asked for above); an
                // answer without it is a passing fault: the caller tries again.
                match existing {
                    Some(item) => Ok((event_record(item)?, false)),
                    None => Err(Error::Aws {
                        service: "dynamodb",
                        message: "the event id is taken, but its item did not come back".into(),
                    }),
                }
            }
            Err(e) => Err(Error::aws("dynamodb", e)),
        }
    }

    /// An event, strongly consistent: the deliver function reads events over 16 KiB just
    /// after they are stored, and an absent answer would end their deliveries.
    pub async fn get_event(&self, tenant: &Tenant, id: &EventId) -> Result<Option<EventRecord>> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.events)
            .key("venue_id", s(tenant.venue().as_str()))
            .key("event_id", s(id.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        let now = Utc::now().timestamp();
        // TTL deletion is lazy (and never happens locally): an expired item is gone.
        Ok(out
            .item
            .map(event_record)
            .transpose()?
            .filter(|r| r.expires_at > now))
    }

    // ---- events stored whose jobs could not be queued ----

    /// Notes that an event was stored but its jobs could not be queued, so that the sweeper
    /// ([`crate::ingest::Publisher::sweep_unqueued`]) queues them later. The note lives in the
    /// events table under a partition no venue can have (`#` is not allowed in venue ids);
    /// only this failure path writes it.
    pub async fn note_unqueued(&self, tenant: &Tenant, event: &EventId) -> Result<()> {
        let now = Utc::now();
        self.ddb
            .put_item()
            .table_name(&self.events)
            .item("venue_id", s(UNQUEUED_PARTITION))
            .item(
                "event_id",
                s(format!("{}#{}", tenant.venue().as_str(), event.as_str())),
            )
            .item("noted_at", to_attr(&now)?)
            .item("expires_at", n(self.expiry(now)))
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        Ok(())
    }

    /// Up to `limit` events noted by [`Store::note_unqueued`], oldest first.
    pub async fn unqueued(&self, limit: i32) -> Result<Vec<(Tenant, EventId)>> {
        let out = self
            .ddb
            .query()
            .table_name(&self.events)
            .key_condition_expression("venue_id = :v")
            .expression_attribute_values(":v", s(UNQUEUED_PARTITION))
            .consistent_read(true)
            .limit(limit)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        Ok(out
            .items
            .unwrap_or_default()
            .iter()
            .filter_map(|item| {
                let key = item.get("event_id")?.as_s().ok()?;
                let (venue, event) = key.split_once('#')?;
                Some((
                    Tenant(VenueId::parse(venue).ok()?),
                    EventId::parse(event).ok()?,
                ))
            })
            .collect())
    }

    /// The event's jobs are queued: its note goes.
    pub async fn clear_unqueued(&self, tenant: &Tenant, event: &EventId) -> Result<()> {
        self.ddb
            .delete_item()
            .table_name(&self.events)
            .key("venue_id", s(UNQUEUED_PARTITION))
            .key(
                "event_id",
                s(format!("{}#{}", tenant.venue().as_str(), event.as_str())),
            )
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        Ok(())
    }

    // ---- deliveries ----

    /// Records the first-try successes of a group in one item. Returns `false` if the group
    /// was recorded before (a copy of its job ran first).
    pub async fn put_group(&self, group: &GroupRecord) -> Result<bool> {
        self.put_new(&self.deliveries, to_item(group)?, "delivery_id")
            .await
    }

    /// Records one attempt in its delivery's own item, creating it on its first attempt.
    ///
    /// The state never goes backwards, whatever runs at the same time: a success is final (a
    /// failed attempt recorded after it is kept in the attempts, the status stays), a scheduled
    /// attempt is recorded once per number (a duplicate job stands down), and a manual attempt
    /// changes the status only from the one it read. Only the last
    /// [`MAX_KEPT_ATTEMPTS`] attempts are kept in full; `attempt_count` counts them all.
    pub async fn record_attempt(&self, rec: AttemptRecord<'_>) -> Result<Recorded> {
        let mut previous = rec.previous.cloned();
        for _ in 0..4 {
            match self.try_record(&rec, previous.as_ref(), true).await? {
                Written::Yes => return Ok(Recorded::Written),
                Written::No(old) => {
                    let Some(old) = old else {
                        // Nothing there, yet the condition failed: read and try again.
                        previous = None;
                        continue;
                    };
                    let old: DeliveryRecord = from_item(old)?;
                    if let Some(number) = rec.scheduled {
                        if old.scheduled_attempts != number.saturating_sub(1) {
                            return Ok(Recorded::Duplicate);
                        }
                    }
                    let moved_on = match rec.scheduled {
                        // A scheduled attempt on a delivery that succeeded meanwhile.
                        Some(_) => old.status == DeliveryStatus::Succeeded,
                        // A manual attempt whose status changed since it was read.
                        None => {
                            rec.previous.map(|p| p.status) != Some(old.status)
                                || old.status == DeliveryStatus::Succeeded
                        }
                    };
                    if moved_on && rec.status != DeliveryStatus::Succeeded {
                        // Keep the attempt in the history; leave the state as it is.
                        return match self.try_record(&rec, Some(&old), false).await? {
                            Written::Yes => Ok(Recorded::StateKept(old.status)),
                            Written::No(_) => {
                                previous = None;
                                continue;
                            }
                        };
                    }
                    // Only the attempts changed under us (a concurrent append): again, on
                    // what is there now.
                    previous = Some(old);
                }
            }
        }
        Err(Error::Conflict(format!(
            "delivery {} kept changing while an attempt was recorded",
            rec.delivery_id
        )))
    }

    /// One conditional update for [`Store::record_attempt`]: with `set_state`, the attempt and
    /// the delivery's state; without, the attempt alone. Built on `previous`, what the caller
    /// last read of the delivery (`None`: nothing yet).
    async fn try_record(
        &self,
        rec: &AttemptRecord<'_>,
        previous: Option<&DeliveryRecord>,
        set_state: bool,
    ) -> Result<Written> {
        let now = rec.attempt.at;
        let mut update = self
            .ddb
            .update_item()
            .table_name(&self.deliveries)
            .key("venue_id", s(rec.tenant.venue().as_str()))
            .key("delivery_id", s(rec.delivery_id.as_str()))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":endpoint", s(rec.endpoint_id.as_str()))
            .expression_attribute_values(":event", s(rec.event_id.as_str()))
            .expression_attribute_values(":type", s(rec.event_type))
            .expression_attribute_values(":now", to_attr(&now)?)
            .expression_attribute_values(":ttl", n(self.expiry(now)))
            .expression_attribute_values(":one", n(1))
            .return_values_on_condition_check_failure(
                aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld,
            );
        let mut set = String::from(
            "SET endpoint_id = :endpoint, event_id = :event, event_type = :type, \
             created_at = if_not_exists(created_at, :now), updated_at = :now, expires_at = :ttl",
        );
        let mut conditions: Vec<String> = Vec::new();
        // The attempts: appended, or (at the cap) the last ones kept, on the count read.
        let kept = previous.map_or(0, |p| p.attempts.len());
        if kept + 1 > MAX_KEPT_ATTEMPTS {
            let mut attempts: Vec<&Attempt> = previous
                .map(|p| {
                    p.attempts
                        .iter()
                        .skip(kept + 1 - MAX_KEPT_ATTEMPTS)
                        .collect()
                })
                .unwrap_or_default();
            attempts.push(&rec.attempt);
            set.push_str(", attempts = :attempts");
            update = update
                .expression_attribute_values(":attempts", to_attr(&attempts)?)
                .expression_attribute_values(":count", n(previous.map_or(0, |p| p.attempt_count)));
            conditions.push("attempt_count = :count".into());
        } else {
            set.push_str(", attempts = list_append(if_not_exists(attempts, :empty), :attempt)");
            update = update
                .expression_attribute_values(":empty", AttributeValue::L(Vec::new()))
                .expression_attribute_values(
                    ":attempt",
                    AttributeValue::L(vec![to_attr(&rec.attempt)?]),
                );
        }
        if set_state {
            set.push_str(
                ", #status = :status, last_status_code = :code, last_error = :error, \
                 next_attempt_at = :next",
            );
            update = update
                .expression_attribute_values(":status", s(rec.status.as_str()))
                .expression_attribute_values(":code", to_attr(&rec.attempt.status_code)?)
                .expression_attribute_values(":error", to_attr(&rec.attempt.error)?)
                .expression_attribute_values(":next", to_attr(&rec.next_attempt_at)?);
            if let Some(number) = rec.scheduled {
                set.push_str(", scheduled_attempts = :number");
                update = update
                    .expression_attribute_values(":number", n(number))
                    .expression_attribute_values(":previous", n(number.saturating_sub(1)));
                conditions.push(
                    "(attribute_not_exists(scheduled_attempts) OR scheduled_attempts = :previous)"
                        .into(),
                );
            }
            if rec.status != DeliveryStatus::Succeeded {
                // A success is final.
                update = update.expression_attribute_values(
                    ":succeeded",
                    s(DeliveryStatus::Succeeded.as_str()),
                );
                conditions.push("(attribute_not_exists(#status) OR #status <> :succeeded)".into());
                if rec.scheduled.is_none() {
                    // A manual attempt moves the state only from what it read.
                    match rec.previous {
                        Some(read) => {
                            update = update
                                .expression_attribute_values(":read", s(read.status.as_str()));
                            conditions.push("#status = :read".into());
                        }
                        None => conditions.push("attribute_not_exists(#status)".into()),
                    }
                }
            }
        } else {
            conditions.push("attribute_exists(#status)".into());
        }
        if !conditions.is_empty() {
            update = update.condition_expression(conditions.join(" AND "));
        }
        let result = update
            .update_expression(format!("{set} ADD attempt_count :one"))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Written::Yes),
            Err(e) if is_conditional_failure(&e) => Ok(Written::No(match e.into_service_error() {
                aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => c.item,
                _ => None,
            })),
            Err(e) => Err(Error::aws("dynamodb", e)),
        }
    }

    /// Ends a delivery without an attempt (its endpoint was disabled or deleted meanwhile).
    pub async fn finish_without_attempt(
        &self,
        delivery_id: &DeliveryId,
        tenant: &Tenant,
        endpoint_id: &EndpointId,
        event_id: &EventId,
        event_type: &str,
        reason: &str,
    ) -> Result<()> {
        let now = Utc::now();
        let result = self
            .ddb
            .update_item()
            .table_name(&self.deliveries)
            .key("venue_id", s(tenant.venue().as_str()))
            .key("delivery_id", s(delivery_id.as_str()))
            .update_expression(
                "SET endpoint_id = :endpoint, event_id = :event, \
                 event_type = :type, created_at = if_not_exists(created_at, :now), \
                 updated_at = :now, #status = :failed, last_error = :reason, \
                 attempt_count = if_not_exists(attempt_count, :zero), expires_at = :ttl \
                 REMOVE next_attempt_at",
            )
            .condition_expression("attribute_not_exists(#status) OR #status = :pending")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":endpoint", s(endpoint_id.as_str()))
            .expression_attribute_values(":event", s(event_id.as_str()))
            .expression_attribute_values(":type", s(event_type))
            .expression_attribute_values(":now", to_attr(&now)?)
            .expression_attribute_values(":failed", s(DeliveryStatus::Failed.as_str()))
            .expression_attribute_values(":pending", s(DeliveryStatus::Pending.as_str()))
            .expression_attribute_values(":reason", s(reason))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":ttl", n(self.expiry(now)))
            .send()
            .await;
        written(result).map(|_| ())
    }

    /// A delivery with its attempts; `None` if it is another venue's or expired. It is read
    /// from its own item, or else from its group's: one BatchGetItem either way.
    pub async fn get_delivery(
        &self,
        tenant: &Tenant,
        id: &DeliveryId,
    ) -> Result<Option<DeliveryRecord>> {
        self.find_delivery(tenant, id, false).await
    }

    /// As [`Store::get_delivery`], strongly consistent: the deliver function's check of what
    /// became of a delivery before it attempts it again.
    pub async fn find_delivery(
        &self,
        tenant: &Tenant,
        id: &DeliveryId,
        consistent: bool,
    ) -> Result<Option<DeliveryRecord>> {
        Ok(self
            .get_deliveries_with(tenant, std::slice::from_ref(id), consistent)
            .await?
            .pop())
    }

    /// Several deliveries of the venue (an event's fan-out); those not found are left out.
    pub async fn get_deliveries(
        &self,
        tenant: &Tenant,
        ids: &[DeliveryId],
    ) -> Result<Vec<DeliveryRecord>> {
        self.get_deliveries_with(tenant, ids, false).await
    }

    async fn get_deliveries_with(
        &self,
        tenant: &Tenant,
        ids: &[DeliveryId],
        consistent: bool,
    ) -> Result<Vec<DeliveryRecord>> {
        let mut keys: Vec<&DeliveryId> = Vec::new();
        let groups: Vec<Option<(DeliveryId, usize)>> = ids.iter().map(DeliveryId::group).collect();
        for key in ids.iter().chain(groups.iter().flatten().map(|(g, _)| g)) {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        let mut singles: HashMap<String, DeliveryRecord> = HashMap::new();
        let mut grouped: HashMap<String, GroupRecord> = HashMap::new();
        let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
        let items = self
            .batch_get(&self.deliveries, tenant, "delivery_id", &keys, consistent)
            .await?;
        for item in items {
            match HistoryItem::from_item(item)? {
                HistoryItem::Single(d) => {
                    singles.insert(d.delivery_id.to_string(), d);
                }
                HistoryItem::Group(g) => {
                    grouped.insert(g.delivery_id.to_string(), g);
                }
            }
        }
        let now = Utc::now().timestamp();
        Ok(ids
            .iter()
            .zip(groups)
            .filter_map(|(id, group)| {
                singles.remove(id.as_str()).or_else(|| {
                    let (group, index) = group?;
                    grouped.get(group.as_str())?.member(index)
                })
            })
            .filter(|d| d.expires_at > now)
            .collect())
    }

    /// BatchGetItem of the venue's items whose range key `range` is one of `keys`,
    /// re-asking for what it leaves.
    async fn batch_get(
        &self,
        table: &str,
        tenant: &Tenant,
        range: &str,
        keys: &[&str],
        consistent: bool,
    ) -> Result<Vec<HashMap<String, AttributeValue>>> {
        let keys: Vec<(&Tenant, &str)> = keys.iter().map(|k| (tenant, *k)).collect();
        self.batch_get_of(table, range, &keys, consistent).await
    }

    /// As [`Store::batch_get`], over several venues.
    async fn batch_get_of(
        &self,
        table: &str,
        range: &str,
        keys: &[(&Tenant, &str)],
        consistent: bool,
    ) -> Result<Vec<HashMap<String, AttributeValue>>> {
        let mut found = Vec::new();
        for chunk in keys.chunks(100) {
            let mut keys: Vec<HashMap<String, AttributeValue>> = chunk
                .iter()
                .map(|(tenant, id)| {
                    HashMap::from([
                        ("venue_id".to_owned(), s(tenant.venue().as_str())),
                        (range.to_owned(), s(*id)),
                    ])
                })
                .collect();
            // BatchGetItem may return only part (throttling, size): ask again for what it
            // left, with jittered backoff. Keys still left make the read an error: "not
            // found" would end deliveries whose items exist.
            for round in 0..UNPROCESSED_ROUNDS {
                if keys.is_empty() {
                    break;
                }
                if round > 0 {
                    tokio::time::sleep(backoff::jittered(
                        round - 1,
                        std::time::Duration::from_millis(50),
                        std::time::Duration::from_secs(1),
                    ))
                    .await;
                }
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(consistent)
                    .build()
                    .map_err(|e| Error::aws("dynamodb", e))?;
                let out = self
                    .ddb
                    .batch_get_item()
                    .request_items(table, request)
                    .send()
                    .await
                    .map_err(|e| Error::aws("dynamodb", e))?;
                found.extend(
                    out.responses
                        .and_then(|mut r| r.remove(table))
                        .unwrap_or_default(),
                );
                keys = out
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(table))
                    .map(|k| k.keys)
                    .unwrap_or_default();
            }
            if !keys.is_empty() {
                return Err(Error::Aws {
                    service: "dynamodb",
                    message: format!(
                        "BatchGetItem left {} keys unprocessed after {UNPROCESSED_ROUNDS} rounds (throttled)",
                        keys.len()
                    ),
                });
            }
        }
        Ok(found)
    }

    /// Gives a delivery that lives in its group's item an item of its own (before a manual
    /// attempt appends to it); the group item then hides it.
    pub async fn move_out_of_group(
        &self,
        tenant: &Tenant,
        delivery: &DeliveryRecord,
    ) -> Result<()> {
        let Some((group, _)) = delivery.delivery_id.group() else {
            return Ok(());
        };
        let mut item = to_item(delivery)?;
        item.insert("venue_id".into(), s(tenant.venue().as_str()));
        // Already moved by a concurrent retry: that copy is as good as this one.
        self.put_new(&self.deliveries, item, "delivery_id").await?;
        let result = self
            .ddb
            .update_item()
            .table_name(&self.deliveries)
            .key("venue_id", s(tenant.venue().as_str()))
            .key("delivery_id", s(group.as_str()))
            .update_expression("SET moved = list_append(if_not_exists(moved, :empty), :endpoint)")
            .condition_expression("attribute_exists(delivery_id)")
            .expression_attribute_values(":empty", AttributeValue::L(Vec::new()))
            .expression_attribute_values(
                ":endpoint",
                AttributeValue::L(vec![s(delivery.endpoint_id.as_str())]),
            )
            .send()
            .await;
        written(result).map(|_| ())
    }

    /// An endpoint's deliveries, newest first, optionally filtered. The venue's history is
    /// one partition; the endpoint, status and type are filters on it.
    pub async fn list_deliveries(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        filter: &DeliveryFilter,
        limit: usize,
        before: Option<&DeliveryId>,
    ) -> Result<Page<DeliveryRecord>> {
        let mut items = Vec::new();
        let mut start = before.map(|id| id.as_str().to_owned());
        let now = Utc::now();
        // Retention is enforced on read too: nothing older than it, whatever TTL has done.
        let oldest = now - self.retention;
        let from = DeliveryId::bound(filter.since.map_or(oldest, |s| s.max(oldest)), false);
        let to = DeliveryId::bound(filter.until.unwrap_or(now), true);
        let now = now.timestamp();
        for _ in 0..MAX_FILTER_PAGES {
            let mut query = self
                .ddb
                .query()
                .table_name(&self.deliveries)
                .key_condition_expression("venue_id = :v AND delivery_id BETWEEN :from AND :to")
                .filter_expression(filter.expression())
                .expression_attribute_values(":v", s(tenant.venue().as_str()))
                .expression_attribute_values(":e", s(endpoint.as_str()))
                .expression_attribute_values(":from", s(from.clone()))
                .expression_attribute_values(":to", s(to.clone()))
                .expression_attribute_values(":now", n(now))
                .scan_index_forward(false)
                // Other endpoints' deliveries share the partition: read more than a page.
                .limit((limit * 4).clamp(50, 400) as i32);
            if let Some(status) = filter.status {
                query = query
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":status", s(status.as_str()));
            }
            if let Some(event_type) = &filter.event_type {
                query = query.expression_attribute_values(":type", s(event_type.as_str()));
            }
            if let Some(after) = &start {
                query = query
                    .exclusive_start_key("venue_id", s(tenant.venue().as_str()))
                    .exclusive_start_key("delivery_id", s(after.as_str()));
            }
            let out = query.send().await.map_err(|e| Error::aws("dynamodb", e))?;
            for item in out.items.unwrap_or_default() {
                let key = item.get("delivery_id").and_then(|v| v.as_s().ok()).cloned();
                let record = match HistoryItem::from_item(item)? {
                    HistoryItem::Single(d) => Some(d),
                    HistoryItem::Group(g) => g.of_endpoint(endpoint),
                };
                let Some(record) = record else { continue };
                items.push(record);
                if items.len() == limit {
                    // The item's key, not the delivery's id: a group item holds several.
                    return Ok(Page {
                        items,
                        next_cursor: key,
                    });
                }
            }
            start = out
                .last_evaluated_key
                .and_then(|key| key.get("delivery_id").and_then(|v| v.as_s().ok()).cloned());
            if start.is_none() {
                break;
            }
        }
        Ok(Page {
            items,
            next_cursor: start,
        })
    }
}

impl Store {
    /// The failed deliveries of an endpoint created in `[from, to)` (delivery ids sort by
    /// creation time), at most `max`. A failed delivery always has an item of its own.
    pub async fn failed_deliveries_between(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        max: usize,
    ) -> Result<Vec<DeliveryRecord>> {
        let mut pages = self
            .ddb
            .query()
            .table_name(&self.deliveries)
            .key_condition_expression("venue_id = :v AND delivery_id BETWEEN :from AND :to")
            .filter_expression("endpoint_id = :e AND #status = :failed AND expires_at > :now")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":v", s(tenant.venue().as_str()))
            .expression_attribute_values(":e", s(endpoint.as_str()))
            .expression_attribute_values(":from", s(DeliveryId::bound(from, false)))
            .expression_attribute_values(":to", s(DeliveryId::bound(to, true)))
            .expression_attribute_values(":failed", s(DeliveryStatus::Failed.as_str()))
            .expression_attribute_values(":now", n(Utc::now().timestamp()))
            .into_paginator()
            .items()
            .send();
        let mut found = Vec::new();
        while let Some(item) = pages.next().await {
            found.push(from_item(item.map_err(|e| Error::aws("dynamodb", e))?)?);
            if found.len() >= max {
                break;
            }
        }
        Ok(found)
    }
}

const BY_VENUE: &str = "by_venue";
/// `last_used_at` is written at most this often per key, not on every request.
const LAST_USED_RESOLUTION_SECONDS: i64 = 60;

impl Store {
    pub async fn create_api_key(&self, record: &ApiKeyRecord) -> Result<()> {
        self.put_generated(&self.api_keys, to_item(record)?, "key_id")
            .await
    }

    /// For authentication: the record a presented key names, whatever its venue.
    pub async fn get_api_key(&self, id: &ApiKeyId) -> Result<Option<ApiKeyRecord>> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.api_keys)
            .key("key_id", s(id.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        out.item.map(from_item).transpose()
    }

    pub async fn list_api_keys(&self, tenant: &Tenant) -> Result<Vec<ApiKeyRecord>> {
        let mut pages = self
            .ddb
            .query()
            .table_name(&self.api_keys)
            .index_name(BY_VENUE)
            .key_condition_expression("venue_id = :v")
            .expression_attribute_values(":v", s(tenant.venue().as_str()))
            .into_paginator()
            .items()
            .send();
        let mut found = Vec::new();
        while let Some(item) = pages.next().await {
            found.push(from_item(item.map_err(|e| Error::aws("dynamodb", e))?)?);
        }
        Ok(found)
    }

    /// Revokes a key at once: the record is gone, so the next request with it is a 401.
    pub async fn delete_api_key(&self, tenant: &Tenant, id: &ApiKeyId) -> Result<()> {
        let result = self
            .ddb
            .delete_item()
            .table_name(&self.api_keys)
            .key("key_id", s(id.as_str()))
            .condition_expression("venue_id = :v")
            .expression_attribute_values(":v", s(tenant.venue().as_str()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Err(Error::NotFound("api key")),
            Err(e) => Err(Error::aws("dynamodb", e)),
        }
    }

    /// Notes that a key was used, at most once a minute per key.
    pub async fn touch_api_key(&self, record: &ApiKeyRecord, now: DateTime<Utc>) -> Result<()> {
        let fresh = record
            .last_used_at
            .is_some_and(|at| (now - at).num_seconds() < LAST_USED_RESOLUTION_SECONDS);
        if fresh {
            return Ok(());
        }
        let result = self
            .ddb
            .update_item()
            .table_name(&self.api_keys)
            .key("key_id", s(record.key_id.as_str()))
            .update_expression("SET last_used_at = :now")
            .condition_expression("attribute_exists(key_id)")
            .expression_attribute_values(":now", to_attr(&now)?)
            .send()
            .await;
        written(result).map(|_| ())
    }
}

#[derive(Clone, Debug, Default)]
pub struct DeliveryFilter {
    pub status: Option<DeliveryStatus>,
    pub event_type: Option<String>,
    /// Deliveries created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Deliveries created at or before this time.
    pub until: Option<DateTime<Utc>>,
}

impl DeliveryFilter {
    /// Over a venue's history items: an item of its own for the endpoint, or a group item
    /// that holds the endpoint's delivery (always a success) and has not moved it out.
    fn expression(&self) -> String {
        let status = match self.status {
            None => "",
            Some(DeliveryStatus::Succeeded) => {
                " AND (#status = :status OR attribute_exists(entries))"
            }
            Some(_) => " AND #status = :status",
        };
        let event_type = if self.event_type.is_some() {
            " AND event_type = :type"
        } else {
            ""
        };
        format!(
            "expires_at > :now AND (endpoint_id = :e OR (contains(eps, :e) AND NOT contains(moved, :e))){status}{event_type}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(targets: Vec<Target>, data: String) -> EventRecord {
        EventRecord {
            venue_id: VenueId::parse("v1").unwrap(),
            event_id: EventId::parse("evt_1").unwrap(),
            event_type: "order.created".into(),
            timestamp: "2026-11-27T10:15:00Z".into(),
            data,
            targets,
            accepted_at: Utc::now(),
            expires_at: 1,
        }
    }

    fn group_targets(n: usize) -> Vec<Target> {
        let group = DeliveryId::generate_group();
        (0..n)
            .map(|i| Target {
                endpoint_id: EndpointId::generate(),
                delivery_id: group.member(i),
            })
            .collect()
    }

    fn same(a: &EventRecord, b: &EventRecord) -> bool {
        serde_json::to_value(a).unwrap() == serde_json::to_value(b).unwrap()
    }

    #[test]
    fn event_items_store_data_deflated_and_targets_as_groups() {
        let data = serde_json::json!({"order_id": "o-1", "note": "two tickets, balcony, row B"})
            .to_string()
            .repeat(8);
        let data = format!("[{}]", data.replace("}{", "},{"));
        let mut targets = group_targets(3);
        targets.extend(group_targets(2));
        let r = record(targets, data.clone());
        let item = event_item(&r).unwrap();
        assert!(item.contains_key("data_z") && !item.contains_key("data"));
        assert!(item.contains_key("groups") && !item.contains_key("targets"));
        assert!(size(&item) < data.len());
        assert!(same(&event_record(item).unwrap(), &r));
    }

    #[test]
    fn event_items_keep_what_does_not_shrink_as_it_is() {
        // Short data and targets that are not whole groups in order stay plain.
        let mut targets = group_targets(3);
        targets.swap(0, 1);
        let r = record(targets, r#"{"a":1}"#.into());
        let item = event_item(&r).unwrap();
        assert!(item.contains_key("data") && item.contains_key("targets"));
        assert!(same(&event_record(item).unwrap(), &r));
        let lone = vec![Target {
            endpoint_id: EndpointId::generate(),
            delivery_id: DeliveryId::generate_group().member(1),
        }];
        assert!(as_groups(&lone).is_none());
    }

    fn size(item: &HashMap<String, AttributeValue>) -> usize {
        item.iter()
            .map(|(k, v)| {
                k.len()
                    + match v {
                        AttributeValue::S(s) => s.len(),
                        AttributeValue::B(b) => b.as_ref().len(),
                        _ => 0,
                    }
            })
            .sum()
    }
}
