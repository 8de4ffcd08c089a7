//! DynamoDB storage of endpoints, events and deliveries.
//!
//! Every venue-owned read or write takes a [`Tenant`]: the only way to name a venue's data is
//! through a value that the API's authorisation (or a trusted internal queue) produced, so an
//! unscoped query cannot be written by accident.
//!
//! Tables (see `infra/template.yaml`):
//! - endpoints: `venue_id` (hash) + `endpoint_id` (range).
//! - events: `venue_id` + `event_id`; the conditional put on the id is the de-duplication.
//! - deliveries: `history_key` ("{venue}#{endpoint tag}": a partition per endpoint) +
//!   `delivery_id`. The first-try successes of one job (up to ten events at one endpoint)
//!   share one item under the group's id ([`GroupRecord`]); a delivery that needs more than
//!   one attempt has an item of its own under its delivery id ([`DeliveryRecord`]), which
//!   sorts right after its group's. A delivery id carries its endpoint's tag, so it finds its
//!   item alone. The sparse index `by_status` holds the deliveries that are not succeeded.
//!
//!   A replay's progress is an item of its endpoint's partition too, under its id (`rpl_…`,
//!   outside the range of delivery ids every history query reads).
//!   So is a tally of its deliveries failed for good in a window (`xh_…`, [`exhausted`]),
//!   and the loop that releases its held deliveries (`bk_loop`, [`backlog`]), and the next
//!   free turn of an endpoint with a rate limit (`rl_pace`, [`pacing`]).
//! - retries: jobs waiting longer than SQS can delay them, by due slot and shard.
//!
//! One file per table: [`endpoints`], [`events`] (and the notes of events whose jobs could not
//! be queued), [`deliveries`] (history items, attempts and their rules), [`history`] (reading
//! an endpoint's history), [`replays`], [`backlog`] (deliveries held without an attempt),
//! [`api_keys`] (and each venue's publishing count, [`publish_rate`]), [`retries`]. This
//! file holds the store itself and what they share (conditional puts, batched reads).

mod api_keys;
mod backlog;
mod deliveries;
mod endpoints;
mod events;
mod exhausted;
mod history;
mod hosts;
mod pacing;
mod publish_rate;
mod replays;
mod retries;
mod slots;
mod stats;
mod venues;

pub use api_keys::{ApiKeyRecord, PortalSessionRecord};
pub use backlog::{BacklogLoop, Held, HeldGroup, HeldItem, Hold, HoldReason, StepClaim};
pub use deliveries::{
    history_partition, AttemptRecord, DeliveryRecord, FailedDelivery, GroupEntry, GroupRecord,
    HeldEntry, Recorded, MAX_KEPT_ATTEMPTS,
};
pub use endpoints::FanoutEndpoint;
pub use events::{EventRecord, UnqueuedNote, NOTE_TRIES};
pub use exhausted::{ExhaustedTally, LastFailure, Tallied, TALLY_KEPT_IDS};
pub use history::{DeliveryFilter, HistoryCursor};
pub use hosts::HostList;
pub use replays::{PageClaim, ReplayRecord, ReplayState};
pub use retries::Waiting;
pub use stats::{AttemptCounts, DeliveryCounts, EndpointStats, Percentiles};

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::delivery::backoff;
use crate::model::error::{Error, Result};
use crate::model::ids::VenueId;
use crate::runtime::config::Resources;

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

pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

#[derive(Clone)]
pub struct Store {
    ddb: Client,
    endpoints: String,
    events: String,
    deliveries: String,
    api_keys: String,
    retries: String,
    retention: Duration,
}

/// How many times one BatchGetItem (or BatchWriteItem) is sent for what it leaves unprocessed.
const UNPROCESSED_ROUNDS: u32 = 6;

/// Before round `round` of a batch call's unprocessed part: nothing before the first, then
/// jittered backoff from 50 ms up to 1 s.
async fn pause_before(round: u32) {
    if round > 0 {
        tokio::time::sleep(backoff::jittered(
            round - 1,
            std::time::Duration::from_millis(50),
            std::time::Duration::from_secs(1),
        ))
        .await;
    }
}

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

impl Store {
    pub fn new(ddb: Client, resources: &Resources, retention_days: i64) -> Self {
        Self {
            ddb,
            endpoints: resources.endpoints_table.clone(),
            events: resources.events_table.clone(),
            deliveries: resources.deliveries_table.clone(),
            api_keys: resources.api_keys_table.clone(),
            retries: resources.retries_table.clone(),
            retention: Duration::days(retention_days),
        }
    }

    /// Unix seconds at which an item written now expires (the tables' TTL attribute).
    pub fn expiry(&self, now: DateTime<Utc>) -> i64 {
        (now + self.retention).timestamp()
    }

    /// Writes a new item; `false` (nothing written) if an item with its key is there. The very
    /// item there is this write's own (it landed, its answer was lost, and the SDK's retry
    /// found it): `true`.
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
            .set_item(Some(item.clone()))
            .condition_expression(format!("attribute_not_exists({key_attr})"))
            .return_values_on_condition_check_failure(
                aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld,
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(match e.into_service_error() {
                aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => {
                    c.item.is_some_and(|old| old == item)
                }
                _ => false,
            }),
            Err(e) => Err(Error::aws("dynamodb", e)),
        }
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

    /// BatchGetItem of the items of these venues whose range key `range` is the one given.
    async fn batch_get_of(
        &self,
        table: &str,
        range: &str,
        keys: &[(&Tenant, &str)],
        consistent: bool,
    ) -> Result<Vec<HashMap<String, AttributeValue>>> {
        let keys = keys
            .iter()
            .map(|(tenant, id)| {
                HashMap::from([
                    ("venue_id".to_owned(), s(tenant.venue().as_str())),
                    (range.to_owned(), s(*id)),
                ])
            })
            .collect();
        self.batch_get_keys(table, keys, consistent).await
    }

    /// BatchGetItem of these keys, a hundred a call, re-asking for what it leaves.
    async fn batch_get_keys(
        &self,
        table: &str,
        keys: Vec<HashMap<String, AttributeValue>>,
        consistent: bool,
    ) -> Result<Vec<HashMap<String, AttributeValue>>> {
        let mut found = Vec::new();
        for chunk in keys.chunks(100) {
            let mut keys: Vec<HashMap<String, AttributeValue>> = chunk.to_vec();
            // BatchGetItem may return only part (throttling, size): ask again for what it
            // left, with jittered backoff. Keys still left make the read an error: "not
            // found" would end deliveries whose items exist.
            for round in 0..UNPROCESSED_ROUNDS {
                if keys.is_empty() {
                    break;
                }
                pause_before(round).await;
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
}
