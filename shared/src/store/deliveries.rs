//! The deliveries table: history items (a delivery's own, or a group of first-try successes),
//! attempts and the rules that keep them consistent and bounded.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    from_item, is_conditional_failure, n, s, to_attr, to_item, written, Page, Store, Tenant,
};
use crate::domain::{Attempt, DeliveryStatus};
use crate::error::{Error, Result};
use crate::ids::{DeliveryId, EndpointId, EventId, VenueId};

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

/// How many index pages one filtered history request may read before it answers with a cursor.
const MAX_FILTER_PAGES: usize = 5;

impl Store {
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
        // What the caller read, borrowed; replaced by what is there when a condition fails.
        let mut previous = rec.previous.map(std::borrow::Cow::Borrowed);
        for _ in 0..4 {
            match self.try_record(&rec, previous.as_deref(), true).await? {
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
                    previous = Some(std::borrow::Cow::Owned(old));
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
