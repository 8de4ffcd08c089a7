//! Replays: a replay's progress, kept in its endpoint's history partition under the replay's
//! id (`rpl_…`, outside the `dlv_…` range every history query reads), and the pages of failed
//! deliveries it re-sends, from the `by_status` index.

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure, Select};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::deliveries::{history_key, status_key, FailedDelivery};
use super::{from_item, is_conditional_failure, n, s, to_attr, to_item, Store, Tenant};
use crate::model::domain::DeliveryStatus;
use crate::model::error::{Error, Result};
use crate::model::ids::{DeliveryId, EndpointId, VenueId};

/// Where a replay is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayState {
    /// Its deliveries are being queued, a page at a time.
    Running,
    /// Every delivery it found is queued.
    Done,
    /// It could not be started (the queue was unreachable); repeating it starts it again.
    Failed,
}

/// A replay of an endpoint's failed deliveries created in `[since, until]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplayRecord {
    pub venue_id: VenueId,
    pub endpoint_id: EndpointId,
    pub replay_id: String,
    pub since: DateTime<Utc>,
    /// As asked (`None`: up to when it started).
    pub until: Option<DateTime<Utc>>,
    /// Up to when it reaches.
    pub until_at: DateTime<Utc>,
    pub state: ReplayState,
    /// The failed deliveries it found when it started (at most its limit).
    pub found: usize,
    /// How many it has queued so far.
    pub queued: usize,
    /// The last delivery queued (the next page starts after it).
    #[serde(default)]
    pub after: Option<DeliveryId>,
    pub started_at: DateTime<Utc>,
    /// Stored in Unix milliseconds: the conditions of [`Store::start_replay`] compare it.
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub updated_at: DateTime<Utc>,
    pub expires_at: i64,
}

/// What [`Store::claim_replay_page`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum PageClaim {
    /// The page is this copy's to queue.
    Taken,
    /// Another copy of the task is queueing it (its lease has not run out).
    Busy,
    /// The replay moved on (the page was queued, or the replay ended): nothing to do.
    Moved,
}

/// A running replay that has not moved for this long is taken as stopped: repeating it starts
/// it again.
const STALLED_AFTER_MINUTES: i64 = 15;
/// For this long after a replay is done, repeating it answers it (a client's retry, a second
/// click); after, the same request replays again what is still failed.
const REPEAT_ANSWERS_DONE_MINUTES: i64 = 10;

impl ReplayRecord {
    /// The id of the replay of `[since, until]` (as asked): the same request names the same
    /// replay, so repeating it while it runs answers that replay instead of starting another.
    pub fn id_for(since: DateTime<Utc>, until: Option<DateTime<Utc>>) -> String {
        let since = since.timestamp_millis().max(0) as u64;
        let until = until.map_or((1u128 << 80) - 1, |u| {
            u128::from(u.timestamp_millis().max(0) as u64)
        });
        format!("rpl_{}", ulid::Ulid::from_parts(since, until))
    }

    /// Whether `raw` has the shape of a replay id.
    pub fn is_id(raw: &str) -> bool {
        raw.strip_prefix("rpl_")
            .is_some_and(|rest| ulid::Ulid::from_string(rest).is_ok())
    }
}

impl Store {
    /// Records a replay as started, unless the same one is running or was done a moment ago
    /// (see [`REPEAT_ANSWERS_DONE_MINUTES`]): then that one is returned, with `false`.
    pub async fn start_replay(&self, record: &ReplayRecord) -> Result<(ReplayRecord, bool)> {
        let tenant = Tenant::from_internal_message(record.venue_id.clone());
        let mut item = to_item(record)?;
        item.insert(
            "history_key".into(),
            history_key(&tenant, record.endpoint_id.tag()),
        );
        item.insert("delivery_id".into(), s(record.replay_id.as_str()));
        let ms = |minutes| (record.started_at - Duration::minutes(minutes)).timestamp_millis();
        let result = self
            .ddb
            .put_item()
            .table_name(&self.deliveries)
            .set_item(Some(item))
            .condition_expression(
                "attribute_not_exists(delivery_id) OR #state = :failed \
                 OR (#state = :done AND updated_at < :settled) OR updated_at < :stalled",
            )
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":failed", to_attr(&ReplayState::Failed)?)
            .expression_attribute_values(":done", to_attr(&ReplayState::Done)?)
            .expression_attribute_values(":settled", n(ms(REPEAT_ANSWERS_DONE_MINUTES)))
            .expression_attribute_values(":stalled", n(ms(STALLED_AFTER_MINUTES)))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok((record.clone(), true)),
            Err(e) if is_conditional_failure(&e) => match e.into_service_error() {
                PutItemError::ConditionalCheckFailedException(c) => match c.item {
                    Some(item) => Ok((from_item(item)?, false)),
                    None => Err(Error::Conflict("the replay is running; ask again".into())),
                },
                _ => Err(Error::Conflict("the replay is running; ask again".into())),
            },
            Err(e) => Err(Error::aws("dynamodb", e)),
        }
    }

    /// A replay of the venue's endpoint; `None` if there is none of this id.
    pub async fn get_replay(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        replay_id: &str,
    ) -> Result<Option<ReplayRecord>> {
        let key = HashMap::from([
            (
                "history_key".to_owned(),
                history_key(tenant, endpoint.tag()),
            ),
            ("delivery_id".to_owned(), s(replay_id)),
        ]);
        let found = self
            .batch_get_keys(&self.deliveries, vec![key], true)
            .await?;
        Ok(found
            .into_iter()
            .next()
            .map(from_item::<ReplayRecord>)
            .transpose()?
            .filter(|r| r.venue_id == *tenant.venue() && r.endpoint_id == *endpoint))
    }

    /// Records a page of the replay: `queued` more deliveries, the last of them `after`, and
    /// its new state.
    /// Takes the next page of a running replay (the one after the cursor `record` was read
    /// with) until `until_ms`, so that two copies of its task never queue it both.
    pub async fn claim_replay_page(
        &self,
        record: &ReplayRecord,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<PageClaim> {
        let tenant = Tenant::from_internal_message(record.venue_id.clone());
        let result = self
            .ddb
            .update_item()
            .table_name(&self.deliveries)
            .key(
                "history_key",
                history_key(&tenant, record.endpoint_id.tag()),
            )
            .key("delivery_id", s(record.replay_id.as_str()))
            .update_expression("SET claim_until = :until")
            .condition_expression(
                "attribute_exists(delivery_id) AND queued = :q AND #state = :running \
                 AND (attribute_not_exists(claim_until) OR claim_until < :now)",
            )
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":until", n(until_ms))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":q", n(record.queued))
            .expression_attribute_values(":running", to_attr(&ReplayState::Running)?)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(PageClaim::Taken),
            Err(e) if is_conditional_failure(&e) => {
                let old = match e.into_service_error() {
                    aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => c.item,
                    _ => None,
                };
                let moved = old.as_ref().is_none_or(|item| {
                    let queued = item.get("queued").and_then(|q| q.as_n().ok());
                    let state = item.get("state").and_then(|s| s.as_s().ok());
                    queued != Some(&record.queued.to_string())
                        || state.map(String::as_str) != Some("running")
                });
                Ok(if moved {
                    PageClaim::Moved
                } else {
                    PageClaim::Busy
                })
            }
            Err(e) => Err(Error::aws("dynamodb", e)),
        }
    }

    /// Records a page queued (`claim`: the lease it was claimed with, given back).
    pub async fn advance_replay(
        &self,
        record: &ReplayRecord,
        queued: usize,
        after: Option<&DeliveryId>,
        (state, claim): (ReplayState, Option<i64>),
    ) -> Result<()> {
        let tenant = Tenant::from_internal_message(record.venue_id.clone());
        let mut update = self
            .ddb
            .update_item()
            .table_name(&self.deliveries)
            .key(
                "history_key",
                history_key(&tenant, record.endpoint_id.tag()),
            )
            .key("delivery_id", s(record.replay_id.as_str()));
        update = match claim {
            None => update
                .update_expression(
                    "SET #state = :state, updated_at = :now, #after = :after ADD queued :n",
                )
                .condition_expression("attribute_exists(delivery_id)"),
            Some(until) => update
                .update_expression(
                    "SET #state = :state, updated_at = :now, #after = :after ADD queued :n \
                     REMOVE claim_until",
                )
                .condition_expression("attribute_exists(delivery_id) AND claim_until = :claim")
                .expression_attribute_values(":claim", n(until)),
        };
        update
            .expression_attribute_names("#state", "state")
            .expression_attribute_names("#after", "after")
            .expression_attribute_values(":state", to_attr(&state)?)
            .expression_attribute_values(":now", n(Utc::now().timestamp_millis()))
            .expression_attribute_values(":after", to_attr(&after)?)
            .expression_attribute_values(":n", n(queued))
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        Ok(())
    }

    /// How many failed deliveries of the endpoint were created in `[from, to]`, counting up
    /// to `max` (the `by_status` index: its small entries, not the deliveries).
    pub async fn count_failed_between(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
        max: usize,
    ) -> Result<usize> {
        let (from, to) = (DeliveryId::bound(from, false), DeliveryId::bound(to, true));
        let mut count = 0;
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .by_status_query(tenant, endpoint, DeliveryStatus::Failed, (&from, &to))
                .select(Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| Error::aws("dynamodb", e))?;
            count += out.count as usize;
            start = out.last_evaluated_key;
            if start.is_none() || count >= max {
                return Ok(count.min(max));
            }
        }
    }

    /// Up to `limit` failed deliveries of the endpoint created in `[from, to]`, oldest first,
    /// after `after`; and whether there are more.
    pub async fn failed_page(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
        after: Option<&DeliveryId>,
        limit: usize,
    ) -> Result<(Vec<FailedDelivery>, bool)> {
        let failed = DeliveryStatus::Failed;
        let key = s(status_key(tenant, endpoint, failed));
        let (from, to) = (DeliveryId::bound(from, false), DeliveryId::bound(to, true));
        let mut query = self
            .by_status_query(tenant, endpoint, failed, (&from, &to))
            .limit(limit.clamp(1, 1000) as i32);
        if let Some(after) = after {
            // The index's key, and the table's (every index entry carries both).
            let history = history_key(tenant, after.tag());
            query = query
                .exclusive_start_key("status_key", key)
                .exclusive_start_key("delivery_id", s(after.as_str()))
                .exclusive_start_key("history_key", history);
        }
        let out = query.send().await.map_err(|e| Error::aws("dynamodb", e))?;
        let found = out
            .items
            .unwrap_or_default()
            .into_iter()
            .map(from_item)
            .collect::<Result<Vec<FailedDelivery>>>()?;
        Ok((found, out.last_evaluated_key.is_some()))
    }
}
