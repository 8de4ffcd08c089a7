//! The events table: accepted events (their data deflated, their targets as groups), and the
//! notes of events stored whose jobs could not be queued (swept later).

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{from_item, is_conditional_failure, n, s, to_attr, to_item, Store, Tenant};
use crate::model::domain::{Event, Target};
use crate::model::error::{Error, Result};
use crate::model::ids::{DeliveryId, EndpointId, EventId, VenueId};

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

/// The events table's partition of events stored whose jobs could not be queued.
const UNQUEUED_PARTITION: &str = "#unqueued";
/// Notes the sweep could not handle after [`NOTE_TRIES`] tries, kept for operators.
const SET_ASIDE_PARTITION: &str = "#unqueued-set-aside";
/// How often the sweep tries a note before it sets it aside.
pub const NOTE_TRIES: u32 = 5;

/// A note of an event stored and not queued ([`Store::note_unqueued`]).
#[derive(Clone, Debug)]
pub struct UnqueuedNote {
    /// `{venue}#{event}`, as stored.
    pub key: String,
    /// The venue and event it names; `None` if the key does not read.
    pub event: Option<(Tenant, EventId)>,
    /// Sweeps that failed on it so far.
    pub tries: u32,
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
    item.insert(
        "venue_id".into(),
        s(record.venue_id.spread_by(record.event_id.as_str())),
    );
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
    if let Some(fan) = as_fan(&record.targets) {
        item.remove("targets");
        item.insert("fan".into(), fan);
    }
    Ok(item)
}

fn event_record(mut item: HashMap<String, AttributeValue>) -> Result<EventRecord> {
    // The system venue's events are spread over keys `{venue}#{shard}`.
    if let Some(AttributeValue::S(key)) = item.get_mut("venue_id") {
        if let Some((venue, _)) = key.split_once('#') {
            *key = venue.to_owned();
        }
    }
    if let Some(AttributeValue::B(deflated)) = item.remove("data_z") {
        let data = miniz_oxide::inflate::decompress_to_vec_with_limit(
            deflated.as_ref(),
            INFLATE_LIMIT_BYTES,
        )
        .map_err(|e| Error::Corrupt(format!("event data: {e}")))?;
        let data = String::from_utf8(data).map_err(|e| Error::Corrupt(e.to_string()))?;
        item.insert("data".into(), s(data));
    }
    if let Some(AttributeValue::M(fan)) = item.remove("fan") {
        let field = |name: &str| fan.get(name).cloned();
        let (
            Some(AttributeValue::S(base)),
            Some(AttributeValue::N(place)),
            Some(AttributeValue::L(endpoints)),
        ) = (field("b"), field("i"), field("e"))
        else {
            return Err(Error::Corrupt("an event's targets".into()));
        };
        let corrupt = |e: String| Error::Corrupt(format!("an event's targets: {e}"));
        let base = DeliveryId::parse(&base).map_err(|e| corrupt(e.to_string()))?;
        let place: usize = place.parse().map_err(|_| corrupt(place.clone()))?;
        let mut targets = Vec::new();
        for endpoint in endpoints {
            let id = endpoint
                .as_s()
                .ok()
                .and_then(|e| EndpointId::parse(e).ok())
                .ok_or_else(|| corrupt("an endpoint id".into()))?;
            let delivery = base.group_at(&id).member(place);
            targets.push(AttributeValue::M(HashMap::from([
                ("endpoint_id".to_owned(), endpoint),
                ("delivery_id".to_owned(), s(delivery.as_str())),
            ])));
        }
        item.insert("targets".into(), AttributeValue::L(targets));
    }
    from_item(item)
}

/// Targets as the fan-out makes them (each the event's place in one batch base's group at its
/// endpoint) as one `{b, i, e}` map: the base, the place, the endpoints. The delivery ids
/// follow from them, so an event's item grows by an endpoint id per endpoint.
fn as_fan(targets: &[Target]) -> Option<AttributeValue> {
    let first = &targets.first()?.delivery_id;
    let (_, place) = first.group()?;
    let base = first.base();
    let fits = targets
        .iter()
        .all(|t| t.delivery_id == base.group_at(&t.endpoint_id).member(place));
    fits.then(|| {
        AttributeValue::M(HashMap::from([
            ("b".to_owned(), s(base.as_str())),
            ("i".to_owned(), n(place)),
            (
                "e".to_owned(),
                AttributeValue::L(targets.iter().map(|t| s(t.endpoint_id.as_str())).collect()),
            ),
        ]))
    })
}

impl Store {
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
            .key("venue_id", s(tenant.venue().spread_by(id.as_str())))
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

    /// Events of the venue stored a while ago (a released backlog's): one BatchGetItem,
    /// eventually consistent (half the read units; an event is never changed once stored).
    /// Those not found (or expired) are left out.
    pub async fn get_stored_events(
        &self,
        tenant: &Tenant,
        ids: &[EventId],
    ) -> Result<Vec<EventRecord>> {
        let keys = ids
            .iter()
            .map(|id| {
                HashMap::from([
                    (
                        "venue_id".to_owned(),
                        s(tenant.venue().spread_by(id.as_str())),
                    ),
                    ("event_id".to_owned(), s(id.as_str())),
                ])
            })
            .collect();
        let now = Utc::now().timestamp();
        self.batch_get_keys(&self.events, keys, false)
            .await?
            .into_iter()
            .map(event_record)
            .filter(|r| r.as_ref().map_or(true, |r| r.expires_at > now))
            .collect()
    }

    // ---- events stored whose jobs could not be queued ----

    /// Notes that an event was stored but its jobs could not be queued, so that the sweeper
    /// ([`crate::pipeline::ingest::Publisher::sweep_unqueued`]) queues them later. The note lives in the
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

    /// Up to `limit` notes of [`Store::note_unqueued`] (key order), every one, whether it
    /// reads or not.
    pub async fn unqueued(&self, limit: i32) -> Result<Vec<UnqueuedNote>> {
        self.notes(UNQUEUED_PARTITION, limit).await
    }

    /// The notes the sweep set aside, for operators.
    pub async fn set_aside_notes(&self, limit: i32) -> Result<Vec<UnqueuedNote>> {
        self.notes(SET_ASIDE_PARTITION, limit).await
    }

    async fn notes(&self, partition: &str, limit: i32) -> Result<Vec<UnqueuedNote>> {
        let out = self
            .ddb
            .query()
            .table_name(&self.events)
            .key_condition_expression("venue_id = :v")
            .expression_attribute_values(":v", s(partition))
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
                let key = item.get("event_id")?.as_s().ok()?.clone();
                let event = key.split_once('#').and_then(|(venue, event)| {
                    Some((
                        Tenant(VenueId::parse(venue).ok()?),
                        EventId::parse(event).ok()?,
                    ))
                });
                let tries = item
                    .get("tries")
                    .and_then(|t| t.as_n().ok())
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                Some(UnqueuedNote { key, event, tries })
            })
            .collect())
    }

    /// The event's jobs are queued: its note goes.
    pub async fn clear_unqueued(&self, note: &UnqueuedNote) -> Result<()> {
        self.ddb
            .delete_item()
            .table_name(&self.events)
            .key("venue_id", s(UNQUEUED_PARTITION))
            .key("event_id", s(note.key.as_str()))
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        Ok(())
    }

    /// A sweep failed on the note: one try more (`true` when it has had its tries).
    pub async fn note_failed(&self, note: &UnqueuedNote) -> Result<bool> {
        let out = self
            .ddb
            .update_item()
            .table_name(&self.events)
            .key("venue_id", s(UNQUEUED_PARTITION))
            .key("event_id", s(note.key.as_str()))
            .update_expression("ADD tries :one")
            .condition_expression("attribute_exists(event_id)")
            .expression_attribute_values(":one", n(1))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew)
            .send()
            .await;
        let tries = match out {
            Ok(out) => out
                .attributes
                .and_then(|a| a.get("tries").and_then(|t| t.as_n().ok()).cloned())
                .and_then(|t| t.parse::<u32>().ok())
                .unwrap_or(NOTE_TRIES),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(Error::aws("dynamodb", e)),
        };
        Ok(tries >= NOTE_TRIES)
    }

    /// Moves a note the sweep cannot handle out of its way, with the reason, for operators
    /// (kept until the retention ends).
    pub async fn set_note_aside(&self, note: &UnqueuedNote, reason: &str) -> Result<()> {
        let now = Utc::now();
        self.ddb
            .put_item()
            .table_name(&self.events)
            .item("venue_id", s(SET_ASIDE_PARTITION))
            .item("event_id", s(note.key.as_str()))
            .item("reason", s(reason))
            .item("tries", n(note.tries + 1))
            .item("set_aside_at", to_attr(&now)?)
            .item("expires_at", n(self.expiry(now)))
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        self.clear_unqueued(note).await
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

    /// The targets of the event at `place` in a batch, at `n` endpoints.
    fn fan_targets(n: usize, place: usize) -> Vec<Target> {
        let base = DeliveryId::batch_base();
        (0..n)
            .map(|_| {
                let endpoint_id = EndpointId::generate();
                Target {
                    delivery_id: base.group_at(&endpoint_id).member(place),
                    endpoint_id,
                }
            })
            .collect()
    }

    fn same(a: &EventRecord, b: &EventRecord) -> bool {
        serde_json::to_value(a).unwrap() == serde_json::to_value(b).unwrap()
    }

    #[test]
    fn event_items_store_data_deflated_and_targets_as_their_fan() {
        let data = serde_json::json!({"order_id": "o-1", "note": "two tickets, balcony, row B"})
            .to_string()
            .repeat(8);
        let data = format!("[{}]", data.replace("}{", "},{"));
        let r = record(fan_targets(5, 3), data.clone());
        let item = event_item(&r).unwrap();
        assert!(item.contains_key("data_z") && !item.contains_key("data"));
        assert!(item.contains_key("fan") && !item.contains_key("targets"));
        assert!(size(&item) < data.len());
        assert!(same(&event_record(item).unwrap(), &r));
    }

    #[test]
    fn event_items_keep_what_does_not_shrink_as_it_is() {
        // Short data and targets of different batches or places stay plain.
        let mut targets = fan_targets(3, 0);
        targets.extend(fan_targets(1, 0));
        let r = record(targets, r#"{"a":1}"#.into());
        let item = event_item(&r).unwrap();
        assert!(item.contains_key("data") && item.contains_key("targets"));
        assert!(same(&event_record(item).unwrap(), &r));
        let mut places = fan_targets(2, 1);
        places[1].delivery_id = places[1].delivery_id.group().unwrap().0.member(2);
        assert!(as_fan(&places).is_none());
        assert!(as_fan(&[]).is_none());
    }

    #[test]
    fn the_system_venues_events_are_spread_over_keys_and_read_back_as_its_own() {
        let mut r = record(Vec::new(), r#"{"a":1}"#.into());
        assert_eq!(event_item(&r).unwrap()["venue_id"], s("v1"));
        r.venue_id = VenueId::parse("_operational").unwrap();
        let item = event_item(&r).unwrap();
        let key = item["venue_id"].as_s().unwrap().clone();
        assert!(key.starts_with("_operational#"), "{key}");
        assert!(same(&event_record(item).unwrap(), &r));
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
