//! Deliveries failed for good, tallied per endpoint and window, so that the operational
//! endpoints hear one `delivery.exhausted` per endpoint and window (a count and sample ids)
//! rather than one per delivery ([`crate::pipeline::operational`]).
//!
//! A tally is an item of its endpoint's history partition (`xh_{window start}`, outside the
//! `dlv_…` range every history query reads, expiring with the history): each endpoint's
//! tallies are its own key, never one shared by every venue. Each delivery's window is chosen
//! once and remembered (`xd_{delivery}`), so a tally repeated later (a job that comes back
//! after its write's answers were lost) counts it in the same window. The first
//! [`TALLY_KEPT_IDS`] delivery ids are kept in a set, so that a job that comes back and
//! tallies its delivery again counts it once; past them the count is added to as is.

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::deliveries::endpoint_item_key;
use super::{from_item, is_conditional_failure, n, s, to_attr, Store, Tenant};
use crate::model::domain::{Attempt, Endpoint};
use crate::model::error::{Error, Result};
use crate::model::ids::{DeliveryId, EndpointId};

/// Delivery ids a tally keeps (and de-duplicates on).
pub const TALLY_KEPT_IDS: usize = 100;

/// The last failure a tally saw, as the event tells it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LastFailure {
    pub at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub status_code: Option<u16>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub error_class: Option<String>,
    #[serde(default)]
    pub hint: Option<String>,
}

impl LastFailure {
    pub fn of(attempt: &Attempt) -> Self {
        Self {
            at: Some(attempt.at),
            status_code: attempt.status_code,
            error: attempt.error.clone(),
            error_class: attempt.error_class.clone(),
            hint: attempt.hint.clone(),
        }
    }
}

/// A window's tally, as closed.
#[derive(Clone, Debug, Deserialize)]
pub struct ExhaustedTally {
    /// Deliveries counted.
    #[serde(rename = "n")]
    pub count: u64,
    /// The first [`TALLY_KEPT_IDS`] of them.
    #[serde(default)]
    pub ids: Vec<String>,
    pub url: String,
    #[serde(default)]
    pub description: String,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    #[serde(default)]
    pub last: LastFailure,
}

/// What tallying a delivery did. `flush_queued`: the window's close is known to be queued;
/// until it is, whoever tallies in the window queues it (the one that counted first may have
/// stopped, or lost its answer and found its own count on the retry, before queueing it).
#[derive(Debug, PartialEq, Eq)]
pub enum Tallied {
    /// Counted.
    Counted { flush_queued: bool },
    /// This delivery was counted before (its job came back, or the write's answer was lost).
    Already { flush_queued: bool },
    /// The window was closed meanwhile: count it in the next one.
    Closed,
}

fn tally_key(
    tenant: &Tenant,
    endpoint: &EndpointId,
    window: i64,
) -> HashMap<String, AttributeValue> {
    endpoint_item_key(tenant, endpoint, format!("xh_{window:012}"))
}

impl Store {
    /// Counts a delivery failed for good in its endpoint's tally of the window starting at
    /// `window` (Unix seconds).
    pub async fn tally_exhausted(
        &self,
        tenant: &Tenant,
        endpoint: &Endpoint,
        window: i64,
        (delivery_id, last): (&DeliveryId, &Attempt),
    ) -> Result<Tallied> {
        let key = tally_key(tenant, &endpoint.endpoint_id, window);
        let now = Utc::now();
        let values = HashMap::from([
            (":one".to_owned(), n(1)),
            (":url".to_owned(), s(&endpoint.url)),
            (
                ":d".to_owned(),
                s(endpoint.description.clone().unwrap_or_default()),
            ),
            (":now".to_owned(), to_attr(&now)?),
            (":last".to_owned(), to_attr(&LastFailure::of(last))?),
            (":exp".to_owned(), n(self.expiry(now))),
        ]);
        let set = "SET #url = :url, #d = :d, first_at = if_not_exists(first_at, :now), \
                   last_at = :now, #last = :last, expires_at = :exp";
        let names = HashMap::from([
            ("#n".to_owned(), "n".to_owned()),
            ("#url".to_owned(), "url".to_owned()),
            ("#d".to_owned(), "description".to_owned()),
            ("#last".to_owned(), "last".to_owned()),
        ]);
        // Kept (and de-duplicated on) while the set is short.
        let mut kept = values.clone();
        kept.insert(
            ":ids".into(),
            AttributeValue::Ss(vec![delivery_id.to_string()]),
        );
        kept.insert(":id".into(), s(delivery_id.as_str()));
        kept.insert(":cap".into(), n(TALLY_KEPT_IDS as i64));
        let first = self
            .ddb
            .update_item()
            .table_name(&self.deliveries)
            .set_key(Some(key.clone()))
            .update_expression(format!("ADD #n :one, #ids :ids {set}"))
            .condition_expression(
                "attribute_not_exists(closed) AND NOT contains(#ids, :id) \
                 AND (attribute_not_exists(#ids) OR size(#ids) < :cap)",
            )
            .set_expression_attribute_names(Some({
                let mut names = names.clone();
                names.insert("#ids".into(), "ids".into());
                names
            }))
            .set_expression_attribute_values(Some(kept))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let old = match first {
            Ok(out) => return Ok(counted_as(out.attributes)),
            Err(e) if is_conditional_failure(&e) => match e.into_service_error() {
                UpdateItemError::ConditionalCheckFailedException(c) => c.item.unwrap_or_default(),
                _ => HashMap::new(),
            },
            Err(e) => return Err(Error::aws("dynamodb", e)),
        };
        let seen = matches!(old.get("ids"), Some(AttributeValue::Ss(ids)) if ids.iter().any(|i| i == delivery_id.as_str()));
        if seen {
            // Counted here before: told by this window's close (queued, or done).
            return Ok(Tallied::Already {
                flush_queued: close_queued(&old) || old.contains_key("closed"),
            });
        }
        if old.contains_key("closed") {
            return Ok(Tallied::Closed);
        }
        // The set is full: counted without it.
        let more = self
            .ddb
            .update_item()
            .table_name(&self.deliveries)
            .set_key(Some(key))
            .update_expression(format!("ADD #n :one {set}"))
            .condition_expression("attribute_not_exists(closed)")
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match more {
            Ok(out) => Ok(counted_as(out.attributes)),
            Err(e) if is_conditional_failure(&e) => Ok(Tallied::Closed),
            Err(e) => Err(Error::aws("dynamodb", e)),
        }
    }

    /// The window a delivery failed for good is counted in: `window` for its first tally
    /// (an item `xd_{delivery}` of its endpoint's partition remembers it), the one remembered
    /// for every later one (its job came back, a write's answers were lost), so that it is
    /// counted in one window only, however often and whenever it is tallied.
    pub async fn exhausted_window(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        delivery_id: &DeliveryId,
        window: i64,
    ) -> Result<i64> {
        let now = Utc::now();
        let result = self
            .ddb
            .put_item()
            .table_name(&self.deliveries)
            .set_item(Some({
                let mut item = marker_key(tenant, endpoint, delivery_id);
                item.insert("window".into(), n(window));
                item.insert("expires_at".into(), n(self.expiry(now)));
                item
            }))
            .condition_expression("attribute_not_exists(#w)")
            .expression_attribute_names("#w", "window")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(window),
            Err(e) if is_conditional_failure(&e) => Ok(match e.into_service_error() {
                aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => {
                    c.item.as_ref().and_then(window_of).unwrap_or(window)
                }
                _ => window,
            }),
            Err(e) => Err(Error::aws("dynamodb", e)),
        }
    }

    /// Moves a delivery's window from `from` (closed without it) to `to`; the window it has
    /// after (another tally of it may have moved it first).
    pub async fn move_exhausted_window(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        delivery_id: &DeliveryId,
        (from, to): (i64, i64),
    ) -> Result<i64> {
        let result = self
            .ddb
            .update_item()
            .table_name(&self.deliveries)
            .set_key(Some(marker_key(tenant, endpoint, delivery_id)))
            .update_expression("SET #w = :to")
            .condition_expression("#w = :from")
            .expression_attribute_names("#w", "window")
            .expression_attribute_values(":from", n(from))
            .expression_attribute_values(":to", n(to))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(to),
            Err(e) if is_conditional_failure(&e) => Ok(match e.into_service_error() {
                UpdateItemError::ConditionalCheckFailedException(c) => {
                    c.item.as_ref().and_then(window_of).unwrap_or(to)
                }
                _ => to,
            }),
            Err(e) => Err(Error::aws("dynamodb", e)),
        }
    }

    /// Notes that the close of a window's tally is queued (later tallies need not queue it).
    pub async fn tally_close_queued(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        window: i64,
    ) -> Result<()> {
        self.ddb
            .update_item()
            .table_name(&self.deliveries)
            .set_key(Some(tally_key(tenant, endpoint, window)))
            .update_expression("SET close_queued = :t")
            .condition_expression("attribute_exists(#n)")
            .expression_attribute_names("#n", "n")
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .send()
            .await
            .map(|_| ())
            .or_else(|e| {
                if is_conditional_failure(&e) {
                    Ok(())
                } else {
                    Err(Error::aws("dynamodb", e))
                }
            })
    }

    /// Closes a window's tally (later deliveries count in the next window) and returns it;
    /// `None` if there is none (the venue was removed). Closing twice returns the same tally.
    pub async fn close_tally(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        window: i64,
    ) -> Result<Option<ExhaustedTally>> {
        let out = self
            .ddb
            .update_item()
            .table_name(&self.deliveries)
            .set_key(Some(tally_key(tenant, endpoint, window)))
            .update_expression("SET closed = :t")
            .condition_expression("attribute_exists(#n)")
            .expression_attribute_names("#n", "n")
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        let mut item = match out {
            Ok(out) => out.attributes.unwrap_or_default(),
            Err(e) if is_conditional_failure(&e) => return Ok(None),
            Err(e) => return Err(Error::aws("dynamodb", e)),
        };
        // A string set reads as a list, sorted (delivery ids sort by time).
        if let Some(AttributeValue::Ss(mut ids)) = item.remove("ids") {
            ids.sort();
            item.insert(
                "ids".into(),
                AttributeValue::L(ids.into_iter().map(s).collect()),
            );
        }
        from_item(item).map(Some)
    }
}

fn marker_key(
    tenant: &Tenant,
    endpoint: &EndpointId,
    delivery_id: &DeliveryId,
) -> HashMap<String, AttributeValue> {
    endpoint_item_key(tenant, endpoint, format!("xd_{delivery_id}"))
}

fn window_of(item: &HashMap<String, AttributeValue>) -> Option<i64> {
    item.get("window")?.as_n().ok()?.parse().ok()
}

fn counted_as(item: Option<HashMap<String, AttributeValue>>) -> Tallied {
    Tallied::Counted {
        flush_queued: item.as_ref().is_some_and(close_queued),
    }
}

fn close_queued(item: &HashMap<String, AttributeValue>) -> bool {
    matches!(item.get("close_queued"), Some(AttributeValue::Bool(true)))
}
