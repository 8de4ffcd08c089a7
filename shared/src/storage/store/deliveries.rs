//! The deliveries table: history items (a delivery's own, or a group of first-try successes),
//! attempts and the rules that keep them consistent and bounded.
//!
//! Keys: `history_key` = "{venue}#{endpoint tag}" ([`crate::model::ids::EndpointId::tag`]), so each
//! endpoint's history is a partition of its own, and `delivery_id` (newest last). A delivery's
//! id carries its endpoint's tag, so the id alone finds its item. A group item (the first-try
//! successes of up to ten events at one endpoint) is under the group's id; a delivery that
//! needed more than one attempt has an item of its own under its delivery id, which sorts
//! right after its group's. Items that are not succeeded carry `status_key` =
//! "{venue}#{endpoint}#{status}", the key of the sparse index `by_status`: an endpoint's failed
//! (or pending) deliveries without reading its successes.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{from_item, is_conditional_failure, n, s, to_attr, to_item, written, Store, Tenant};
use crate::model::domain::{Attempt, DeliveryStatus, Trigger};
use crate::model::error::{Error, Result};
use crate::model::ids::{DeliveryId, EndpointId, EventId, VenueId};

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
    /// Held without an attempt, and why ([`super::backlog`]); cleared by its next attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<super::backlog::Hold>,
    /// Read from its group's item (a first-try success), not from an item of its own.
    #[serde(skip)]
    pub in_group: bool,
}

/// The first-try successes of one group (up to ten events at one endpoint) in one item,
/// under the group's id: a single write for all of them. A delivery that needs more than one
/// attempt is not here; it has an item of its own ([`DeliveryRecord`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupRecord {
    pub venue_id: VenueId,
    pub endpoint_id: EndpointId,
    /// The group's id; its members' delivery ids are [`DeliveryId::member`]s of it.
    pub delivery_id: DeliveryId,
    pub created_at: DateTime<Utc>,
    pub expires_at: i64,
    pub entries: Vec<GroupEntry>,
    /// Places of members moved to an item of their own (a manual retry of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved: Vec<usize>,
    /// Members held without an attempt (the endpoint's circuit was open, or it is disabled):
    /// recorded here together, one write for the group, instead of an item each. While there
    /// are any, the item is `pending` in the `by_status` index with `held` (why, the next
    /// look), and the endpoint's backlog loop releases the group as one job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_members: Vec<HeldEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<super::backlog::Hold>,
    /// Counts the item's writes once it holds members: a released group's write is
    /// conditional on the version it read (another copy of its job may have written since).
    #[serde(default)]
    pub version: u64,
}

/// A member of a group held without an attempt: its place, its event and the event's type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldEntry {
    pub i: usize,
    pub e: EventId,
    pub t: String,
}

/// One first-try success in a group item: the member's place, its event and what its
/// attempt said, in short attributes (ten of these share an item, a write unit holds 1 KB).
/// The rest of the attempt is what every first-try success has: number 1, scheduled, no error.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupEntry {
    /// The member's place in the group.
    pub i: usize,
    /// The event.
    pub e: EventId,
    /// The event's type.
    pub t: String,
    /// When the attempt started.
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub at: DateTime<Utc>,
    /// The receiver's status code.
    pub c: u16,
    /// How long the attempt took, in milliseconds.
    pub d: u64,
    /// The start of what the receiver answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<String>,
}

impl GroupEntry {
    /// The entry of a first-try success: the member at `index`, its event, its attempt.
    pub fn success(index: usize, (event_id, event_type): (&EventId, &str), a: Attempt) -> Self {
        Self {
            i: index,
            e: event_id.clone(),
            t: event_type.to_owned(),
            at: a.at,
            c: a.status_code.unwrap_or(200),
            d: a.duration_ms,
            b: a.response_body,
        }
    }

    /// The attempt as recorded.
    pub fn attempt(&self) -> Attempt {
        Attempt {
            attempt: 1,
            at: self.at,
            trigger: Trigger::Scheduled,
            status_code: Some(self.c),
            duration_ms: self.d,
            error: None,
            error_class: None,
            hint: None,
            response_body: self.b.clone(),
        }
    }
}

impl GroupRecord {
    /// The delivery of the member at `index`, unless it is not here (or moved out).
    pub fn member(&self, index: usize) -> Option<DeliveryRecord> {
        self.entries
            .iter()
            .find(|e| e.i == index)
            .and_then(|e| self.delivery(e))
            .or_else(|| {
                self.held_members
                    .iter()
                    .find(|h| h.i == index)
                    .and_then(|h| self.held_delivery(h))
            })
    }

    /// Every delivery this item holds, newest (highest place) first.
    pub(super) fn members(&self) -> Vec<DeliveryRecord> {
        let mut members: Vec<DeliveryRecord> = self
            .entries
            .iter()
            .filter_map(|e| self.delivery(e))
            .chain(
                self.held_members
                    .iter()
                    .filter_map(|h| self.held_delivery(h)),
            )
            .collect();
        members.sort_by(|a, b| b.delivery_id.cmp(&a.delivery_id));
        members
    }

    /// The members still held here (not moved out to an item of their own).
    pub fn still_held(&self) -> impl Iterator<Item = &HeldEntry> {
        self.held_members
            .iter()
            .filter(|h| !self.moved.contains(&h.i))
    }

    fn held_delivery(&self, entry: &HeldEntry) -> Option<DeliveryRecord> {
        let hold = self.held.clone()?;
        let mut record = self.record(entry.i, (&entry.e, &entry.t), hold.since)?;
        record.status = DeliveryStatus::Pending;
        record.held = Some(hold);
        Some(record)
    }

    /// The member at `index` as a record with nothing attempted, unless it moved out.
    fn record(
        &self,
        index: usize,
        (event_id, event_type): (&EventId, &str),
        updated_at: DateTime<Utc>,
    ) -> Option<DeliveryRecord> {
        if self.moved.contains(&index) {
            return None;
        }
        Some(DeliveryRecord {
            delivery_id: self.delivery_id.member(index),
            venue_id: self.venue_id.clone(),
            endpoint_id: self.endpoint_id.clone(),
            event_id: event_id.clone(),
            event_type: event_type.to_owned(),
            status: DeliveryStatus::Pending,
            attempt_count: 0,
            scheduled_attempts: 0,
            created_at: self.created_at,
            updated_at,
            last_status_code: None,
            last_error: None,
            next_attempt_at: None,
            expires_at: self.expires_at,
            attempts: Vec::new(),
            held: None,
            in_group: true,
        })
    }

    fn delivery(&self, entry: &GroupEntry) -> Option<DeliveryRecord> {
        let mut record = self.record(entry.i, (&entry.e, &entry.t), entry.at)?;
        record.status = DeliveryStatus::Succeeded;
        record.attempt_count = 1;
        record.scheduled_attempts = 1;
        record.last_status_code = Some(entry.c);
        record.attempts = vec![entry.attempt()];
        Some(record)
    }
}

/// An item of the deliveries table: a delivery's own, or a group's.
pub(super) enum HistoryItem {
    Single(DeliveryRecord),
    Group(GroupRecord),
}

impl HistoryItem {
    pub(super) fn from_item(item: HashMap<String, AttributeValue>) -> Result<Self> {
        if item.contains_key("entries") {
            from_item(item).map(Self::Group)
        } else {
            from_item(item).map(Self::Single)
        }
    }
}

/// Attempts kept in a delivery's item; older ones are only counted (`attempt_count`), so the
/// item stays far below DynamoDB's 400 KB.
pub const MAX_KEPT_ATTEMPTS: usize = 10;

/// What a delivery's item keeps of its attempts' answers (up to `RESPONSE_EXCERPT_BYTES`
/// each): the latest attempt's, and the last failure's that had one (why it failed, once it
/// succeeded or when the latest failure had no answer). Older attempts keep their status,
/// error and time (their hint is derived from the error class when read). A retry's write is
/// billed on the item's size, so with every answer kept a delivery failing with 2 KiB answers
/// paid for all of them again at each retry; this way a failing delivery's write is about the
/// one answer it adds.
pub fn trim_answers(attempts: &mut [Attempt]) {
    let Some((latest, older)) = attempts.split_last_mut() else {
        return;
    };
    let mut failure_kept = answered_failure(latest);
    for attempt in older.iter_mut().rev() {
        if !failure_kept && answered_failure(attempt) {
            failure_kept = true;
            continue;
        }
        attempt.response_body = None;
        attempt.hint = None;
    }
}

fn answered_failure(attempt: &Attempt) -> bool {
    !attempt.succeeded() && attempt.response_body.is_some()
}

/// Whether [`trim_answers`] would change anything in `attempts` once `next` is added.
fn answers_to_trim(attempts: &[Attempt], next: &Attempt) -> bool {
    let mut failure_kept = answered_failure(next);
    for attempt in attempts.iter().rev() {
        if !failure_kept && answered_failure(attempt) {
            failure_kept = true;
            continue;
        }
        if attempt.response_body.is_some() || attempt.hint.is_some() {
            return true;
        }
    }
    false
}

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

impl Store {
    /// Records the first-try successes of a group in one item. Returns `false` if the group
    /// was recorded before (a copy of its job ran first).
    pub async fn put_group(&self, group: &GroupRecord) -> Result<bool> {
        let item = self.group_item(group)?;
        self.put_new(&self.deliveries, item, "delivery_id").await
    }

    /// Writes a released group's item in place of the one read at version `read` (its
    /// `group.version` is the next). `false`: another write came between (a copy of the job).
    pub async fn replace_group(&self, group: &GroupRecord, read: u64) -> Result<bool> {
        let item = self.group_item(group)?;
        let result = self
            .ddb
            .put_item()
            .table_name(&self.deliveries)
            .set_item(Some(item))
            .condition_expression("#version = :read")
            .expression_attribute_names("#version", "version")
            .expression_attribute_values(":read", n(read))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(Error::aws("dynamodb", e)),
        }
    }

    /// A group's item as stored, in the `by_status` index as pending while it holds members.
    fn group_item(&self, group: &GroupRecord) -> Result<HashMap<String, AttributeValue>> {
        let mut item = to_item(group)?;
        let tenant = Tenant::from_internal_message(group.venue_id.clone());
        item.insert(
            "history_key".into(),
            history_key(&tenant, group.delivery_id.tag()),
        );
        if group.still_held().next().is_some() {
            item.insert(
                "status_key".into(),
                s(status_key(
                    &tenant,
                    &group.endpoint_id,
                    DeliveryStatus::Pending,
                )),
            );
        } else {
            item.remove("held");
        }
        Ok(item)
    }

    /// A group's item as it is now (strongly consistent): what a released group's job goes by.
    pub async fn get_group(
        &self,
        tenant: &Tenant,
        group: &DeliveryId,
    ) -> Result<Option<GroupRecord>> {
        let item = self
            .batch_get_keys(
                &self.deliveries,
                vec![history_item_key(tenant, group)],
                true,
            )
            .await?
            .pop();
        match item.map(HistoryItem::from_item).transpose()? {
            Some(HistoryItem::Group(g)) if g.venue_id == *tenant.venue() => Ok(Some(g)),
            _ => Ok(None),
        }
    }

    /// Records one attempt in its delivery's own item, creating it on its first attempt.
    ///
    /// The state never goes backwards, whatever runs at the same time: a success is final (a
    /// failed attempt recorded after it is kept in the attempts, the status stays), a scheduled
    /// attempt is recorded once per number (a duplicate job stands down), and a manual attempt
    /// changes the status only from the one it read. Each attempt is recorded once: a write
    /// retried after its answer was lost finds itself there (by the attempt's time and
    /// number) rather than taking it for another copy's. Only the last
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
                    if old
                        .attempts
                        .iter()
                        .any(|a| a.at == rec.attempt.at && a.attempt == rec.attempt.attempt)
                    {
                        // This write landed and its answer was lost: the SDK's retry found
                        // it. Not another copy's.
                        return Ok(if old.status == rec.status {
                            Recorded::Written
                        } else {
                            Recorded::StateKept(old.status)
                        });
                    }
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
            .key(
                "history_key",
                history_key(rec.tenant, rec.delivery_id.tag()),
            )
            .key("delivery_id", s(rec.delivery_id.as_str()))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":venue", s(rec.tenant.venue().as_str()))
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
            "SET venue_id = :venue, endpoint_id = :endpoint, event_id = :event, \
             event_type = :type, created_at = if_not_exists(created_at, :now), \
             updated_at = :now, expires_at = :ttl",
        );
        // A manual attempt that fails leaves a held delivery held: no retry is scheduled for
        // it, so its endpoint's backlog must still release it (it waited for nothing before).
        let keep_held = rec.scheduled.is_none()
            && rec.status != DeliveryStatus::Succeeded
            && rec.previous.is_some_and(|p| p.held.is_some());
        let mut remove = if keep_held { "" } else { " REMOVE held" };
        let mut conditions: Vec<String> = Vec::new();
        // The attempts: appended; or, when an older answer is to be dropped or the cap is
        // reached, the list written again as it is to be. Either on the count read.
        let kept = previous.map_or(0, |p| p.attempts.len());
        let to_trim = previous.is_some_and(|p| answers_to_trim(&p.attempts, &rec.attempt));
        if kept + 1 > MAX_KEPT_ATTEMPTS || to_trim {
            let mut attempts: Vec<Attempt> = previous
                .map(|p| {
                    p.attempts
                        .iter()
                        .skip((kept + 1).saturating_sub(MAX_KEPT_ATTEMPTS))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            attempts.push(rec.attempt.clone());
            trim_answers(&mut attempts);
            set.push_str(", attempts = :attempts");
            update = update.expression_attribute_values(":attempts", to_attr(&attempts)?);
        } else {
            set.push_str(", attempts = list_append(if_not_exists(attempts, :empty), :attempt)");
            update = update
                .expression_attribute_values(":empty", AttributeValue::L(Vec::new()))
                .expression_attribute_values(
                    ":attempt",
                    AttributeValue::L(vec![to_attr(&rec.attempt)?]),
                );
        }
        // On the count read: a retry of this very write (its answer lost) or a concurrent
        // append fails here and is told apart by what is there (`record_attempt`).
        let count = previous.map_or(0, |p| p.attempt_count);
        update = update.expression_attribute_values(":count", n(count));
        conditions.push(if count == 0 {
            "(attribute_not_exists(attempt_count) OR attempt_count = :count)".into()
        } else {
            "attempt_count = :count".into()
        });
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
            // In the `by_status` index while not succeeded.
            if rec.status == DeliveryStatus::Succeeded {
                remove = " REMOVE held, status_key";
            } else {
                set.push_str(", status_key = :status_key");
                update = update.expression_attribute_values(
                    ":status_key",
                    s(status_key(rec.tenant, rec.endpoint_id, rec.status)),
                );
            }
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
        update = update.condition_expression(conditions.join(" AND "));
        let result = update
            .update_expression(format!("{set} ADD attempt_count :one{remove}"))
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
            .key("history_key", history_key(tenant, delivery_id.tag()))
            .key("delivery_id", s(delivery_id.as_str()))
            .update_expression(
                "SET venue_id = :venue, endpoint_id = :endpoint, event_id = :event, \
                 event_type = :type, created_at = if_not_exists(created_at, :now), \
                 updated_at = :now, #status = :failed, last_error = :reason, \
                 attempt_count = if_not_exists(attempt_count, :zero), expires_at = :ttl, \
                 status_key = :status_key \
                 REMOVE next_attempt_at, held",
            )
            .condition_expression("attribute_not_exists(#status) OR #status = :pending")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":venue", s(tenant.venue().as_str()))
            .expression_attribute_values(":endpoint", s(endpoint_id.as_str()))
            .expression_attribute_values(":event", s(event_id.as_str()))
            .expression_attribute_values(":type", s(event_type))
            .expression_attribute_values(":now", to_attr(&now)?)
            .expression_attribute_values(
                ":status_key",
                s(status_key(tenant, endpoint_id, DeliveryStatus::Failed)),
            )
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
        let keys: Vec<HashMap<String, AttributeValue>> =
            keys.iter().map(|id| history_item_key(tenant, id)).collect();
        let mut singles: HashMap<String, DeliveryRecord> = HashMap::new();
        let mut grouped: HashMap<String, GroupRecord> = HashMap::new();
        for item in self
            .batch_get_keys(&self.deliveries, keys, consistent)
            .await?
        {
            match HistoryItem::from_item(item)? {
                // The partition names the venue; the item says so too.
                HistoryItem::Single(d) if d.venue_id == *tenant.venue() => {
                    singles.insert(d.delivery_id.to_string(), d);
                }
                HistoryItem::Group(g) if g.venue_id == *tenant.venue() => {
                    grouped.insert(g.delivery_id.to_string(), g);
                }
                _ => {}
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
        let Some((group, index)) = delivery.delivery_id.group() else {
            return Ok(());
        };
        let mut item = to_item(delivery)?;
        item.insert(
            "history_key".into(),
            history_key(tenant, delivery.delivery_id.tag()),
        );
        // A held member stays in the `by_status` index as pending (and its backlog's).
        if delivery.status != DeliveryStatus::Succeeded {
            item.insert(
                "status_key".into(),
                s(status_key(tenant, &delivery.endpoint_id, delivery.status)),
            );
        }
        // Already moved by a concurrent retry: that copy is as good as this one.
        self.put_new(&self.deliveries, item, "delivery_id").await?;
        let result = self
            .ddb
            .update_item()
            .table_name(&self.deliveries)
            .key("history_key", history_key(tenant, group.tag()))
            .key("delivery_id", s(group.as_str()))
            // A new version: a released group's write of the item read before loses.
            .update_expression(
                "SET moved = list_append(if_not_exists(moved, :empty), :index), \
                 version = if_not_exists(version, :zero) + :one",
            )
            .condition_expression("attribute_exists(delivery_id)")
            .expression_attribute_values(":empty", AttributeValue::L(Vec::new()))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":index", AttributeValue::L(vec![n(index)]))
            .send()
            .await;
        written(result).map(|_| ())
    }
}

/// The sparse index of deliveries that are not succeeded, by endpoint and status.
const BY_STATUS: &str = "by_status";

impl Store {
    /// A Query of the `by_status` index: the endpoint's deliveries in `status` whose ids are in
    /// `[from, to]` (ascending unless the caller says otherwise).
    pub(super) fn by_status_query(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        status: DeliveryStatus,
        (from, to): (&str, &str),
    ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        self.ddb
            .query()
            .table_name(&self.deliveries)
            .index_name(BY_STATUS)
            .key_condition_expression("status_key = :k AND delivery_id BETWEEN :from AND :to")
            .expression_attribute_values(":k", s(status_key(tenant, endpoint, status)))
            .expression_attribute_values(":from", s(from))
            .expression_attribute_values(":to", s(to))
    }
}

/// A failed delivery as the `by_status` index has it: what a replay needs.
#[derive(Clone, Debug, Deserialize)]
pub struct FailedDelivery {
    pub delivery_id: DeliveryId,
    pub endpoint_id: EndpointId,
    pub event_id: EventId,
    pub event_type: String,
}

/// The partition of the history of the venue's endpoint with this tag.
pub(super) fn history_key(tenant: &Tenant, tag: u64) -> AttributeValue {
    s(history_partition(tenant.venue(), tag))
}

/// The `history_key` of the venue's endpoint with this tag (tests read items by it).
pub fn history_partition(venue: &VenueId, tag: u64) -> String {
    format!("{}#{tag:010x}", venue.as_str())
}

/// The key of an endpoint's own item of its history partition that is not a delivery (a
/// tally `xh_…`, a loop `bk_loop`, lease slots `sl_leases`…): outside the `dlv_…` range every
/// history query reads, purged and expiring with the history.
pub(super) fn endpoint_item_key(
    tenant: &Tenant,
    endpoint: &EndpointId,
    sort: impl Into<String>,
) -> HashMap<String, AttributeValue> {
    HashMap::from([
        (
            "history_key".to_owned(),
            history_key(tenant, endpoint.tag()),
        ),
        ("delivery_id".to_owned(), s(sort.into())),
    ])
}

/// The key of a delivery's item (or of its group's, given the group's id).
pub(super) fn history_item_key(
    tenant: &Tenant,
    id: &DeliveryId,
) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("history_key".to_owned(), history_key(tenant, id.tag())),
        ("delivery_id".to_owned(), s(id.as_str())),
    ])
}

/// The `by_status` key of an endpoint's deliveries in `status`.
pub(super) fn status_key(tenant: &Tenant, endpoint: &EndpointId, status: DeliveryStatus) -> String {
    format!(
        "{}#{}#{}",
        tenant.venue().as_str(),
        endpoint,
        status.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_item_gives_back_its_members_newest_first_without_those_moved_out() {
        let endpoint = EndpointId::generate();
        let group = DeliveryId::batch_base().group_at(&endpoint);
        let at = Utc::now();
        let attempt = |status| Attempt {
            attempt: 1,
            at,
            trigger: Trigger::Scheduled,
            status_code: Some(status),
            duration_ms: 7,
            error: None,
            error_class: None,
            hint: None,
            response_body: Some("ok".into()),
        };
        let record = GroupRecord {
            venue_id: VenueId::parse("v1").unwrap(),
            endpoint_id: endpoint.clone(),
            delivery_id: group.clone(),
            created_at: at,
            expires_at: at.timestamp() + 60,
            entries: (0..3)
                .map(|i| {
                    let event = EventId::parse(&format!("evt_{i}")).unwrap();
                    GroupEntry::success(i, (&event, "order.created"), attempt(200 + i as u16))
                })
                .collect(),
            moved: vec![1, 4],
            // Two held at their first attempts, one of them since moved out (a manual retry).
            held_members: [3, 4]
                .into_iter()
                .map(|i| HeldEntry {
                    i,
                    e: EventId::parse(&format!("evt_{i}")).unwrap(),
                    t: "order.paid".into(),
                })
                .collect(),
            held: Some(super::super::backlog::Hold {
                reason: super::super::backlog::HoldReason::CircuitOpen,
                since: at,
                next_look: Some(at + chrono::Duration::minutes(1)),
            }),
            version: 2,
        };
        let item = to_item(&record).unwrap();
        let back: GroupRecord = from_item(item).unwrap();
        let members = back.members();
        let ids: Vec<_> = members.iter().map(|d| d.delivery_id.clone()).collect();
        assert_eq!(ids, vec![group.member(3), group.member(2), group.member(0)]);
        assert_eq!(members[1].attempts[0].status_code, Some(202));
        assert_eq!(members[1].event_id.as_str(), "evt_2");
        assert_eq!(members[1].endpoint_id, endpoint);
        assert!(back.member(1).is_none(), "moved out");
        assert!(back.member(4).is_none(), "moved out while held");
        let held = back.member(3).unwrap();
        assert_eq!(held.status, DeliveryStatus::Pending);
        assert_eq!(held.event_type, "order.paid");
        assert_eq!(held.attempt_count, 0);
        assert!(held.attempts.is_empty());
        assert_eq!(
            held.held.map(|h| h.next_look),
            Some(Some(at + chrono::Duration::minutes(1)))
        );
        assert_eq!(back.still_held().map(|h| h.i).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn an_item_keeps_the_latest_answer_and_the_last_answered_failure() {
        let attempt = |n: u32, status: Option<u16>, body: Option<&str>| Attempt {
            attempt: n,
            at: Utc::now(),
            trigger: Trigger::Scheduled,
            status_code: status,
            duration_ms: 1,
            error: status.is_none_or(|s| s >= 300).then(|| "failed".to_owned()),
            error_class: None,
            hint: Some("a hint".into()),
            response_body: body.map(str::to_owned),
        };
        let bodies = |list: &[Attempt]| -> Vec<Option<String>> {
            list.iter().map(|a| a.response_body.clone()).collect()
        };
        // Failing with answers: only the latest is kept.
        let mut failing = vec![
            attempt(1, Some(500), Some("a")),
            attempt(2, Some(500), Some("b")),
            attempt(3, Some(500), Some("c")),
        ];
        assert!(answers_to_trim(&failing[..2], &failing[2]));
        trim_answers(&mut failing);
        assert_eq!(bodies(&failing), [None, None, Some("c".into())]);
        assert_eq!(failing[0].hint, None);
        assert_eq!(failing[2].hint.as_deref(), Some("a hint"));
        // The latest failed without an answer (a reset): the last answer stays with it.
        let mut reset = vec![
            attempt(1, Some(502), Some("a")),
            attempt(2, Some(503), Some("b")),
            attempt(3, None, None),
        ];
        trim_answers(&mut reset);
        assert_eq!(bodies(&reset), [None, Some("b".into()), None]);
        // Then a success: its answer, and why it failed before.
        reset.push(attempt(4, Some(200), Some("ok")));
        assert!(answers_to_trim(&reset[..3], &reset[3]));
        trim_answers(&mut reset);
        assert_eq!(
            bodies(&reset),
            [None, Some("b".into()), None, Some("ok".into())]
        );
        // Nothing to trim: appended as it is.
        let first = [attempt(1, Some(500), Some("a"))];
        assert!(!answers_to_trim(&[], &first[0]));
    }
}
