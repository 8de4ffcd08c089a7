//! Reading an endpoint's history: pages of its own partition, newest first, or of the
//! `by_status` index for its failed or pending deliveries; cursors that go on where a page
//! stopped, inside a group's item too.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};

use super::deliveries::{history_item_key, history_key, HistoryItem};
use super::{s, DeliveryRecord, Page, Store, Tenant};
use crate::model::domain::DeliveryStatus;
use crate::model::error::{Error, Result};
use crate::model::ids::{DeliveryId, EndpointId};

/// How many pages one filtered history request may read before it answers with a cursor.
const MAX_FILTER_PAGES: usize = 5;

/// One page read: its records (each with its item's key), and where to go on from.
type Read = (
    Vec<(DeliveryId, DeliveryRecord)>,
    Option<HashMap<String, AttributeValue>>,
);

impl Store {
    /// An endpoint's deliveries, newest first, optionally filtered, after `cursor` (where the
    /// previous page stopped). Its own partition holds them: a page reads about as many items
    /// as it shows, whatever the rest of the venue does. Failed and pending deliveries come
    /// from the `by_status` index, which holds nothing else; an event type is a filter.
    pub async fn list_deliveries(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        filter: &DeliveryFilter,
        limit: usize,
        cursor: Option<&HistoryCursor>,
    ) -> Result<Page<DeliveryRecord>> {
        let now = Utc::now();
        // Retention is enforced on read too: nothing older than it, whatever TTL has done.
        let oldest = now - self.retention;
        let from = DeliveryId::bound(filter.since.map_or(oldest, |s| s.max(oldest)), false);
        let to = match cursor {
            Some(c) => c.item.as_str().to_owned(),
            None => DeliveryId::bound(filter.until.unwrap_or(now), true),
        };
        let by_status = matches!(
            filter.status,
            Some(DeliveryStatus::Failed | DeliveryStatus::Pending)
        );
        let mut items = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        for _ in 0..MAX_FILTER_PAGES {
            let (records, last) = if by_status {
                self.status_page(tenant, endpoint, filter, (&from, &to), limit, start)
                    .await?
            } else {
                self.history_page(tenant, endpoint, filter, (&from, &to), limit, start)
                    .await?
            };
            for (key, record) in records {
                let seen = cursor.is_some_and(|c| key == c.item && record.delivery_id >= c.last);
                let wanted = filter.status.is_none_or(|s| s == record.status)
                    && filter
                        .event_type
                        .as_ref()
                        .is_none_or(|t| *t == record.event_type);
                if seen || !wanted || record.expires_at <= now.timestamp() {
                    continue;
                }
                let last = record.delivery_id.clone();
                items.push(record);
                if items.len() == limit {
                    return Ok(Page {
                        items,
                        next_cursor: Some(HistoryCursor { item: key, last }.encode()),
                    });
                }
            }
            start = last;
            if start.is_none() {
                break;
            }
        }
        // Stopped after reading its share of pages: the cursor goes on from there.
        let next_cursor = start.and_then(|key| {
            let item = key.get("delivery_id")?.as_s().ok()?;
            let item = DeliveryId::parse(item).ok()?;
            Some(
                HistoryCursor {
                    last: item.clone(),
                    item,
                }
                .encode(),
            )
        });
        Ok(Page { items, next_cursor })
    }

    /// One Query of the endpoint's partition: its records (each with its item's key), newest
    /// first, and where to go on from.
    pub(super) async fn history_page(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        filter: &DeliveryFilter,
        (from, to): (&str, &str),
        limit: usize,
        start: Option<HashMap<String, AttributeValue>>,
    ) -> Result<Read> {
        let mut query = self
            .ddb
            .query()
            .table_name(&self.deliveries)
            .key_condition_expression("history_key = :h AND delivery_id BETWEEN :from AND :to")
            .expression_attribute_values(":h", history_key(tenant, endpoint.tag()))
            .expression_attribute_values(":from", s(from))
            .expression_attribute_values(":to", s(to))
            .expression_attribute_values(":e", s(endpoint.as_str()))
            .scan_index_forward(false)
            .set_exclusive_start_key(start)
            // A group item holds up to ten: a page of items is enough for a page.
            .limit(limit.max(1) as i32);
        // Another endpoint that shares the tag (never one of the same venue) is filtered out.
        query = if filter.status == Some(DeliveryStatus::Succeeded) {
            query
                .filter_expression(
                    "endpoint_id = :e AND (#status = :status OR attribute_exists(entries))",
                )
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":status", s(DeliveryStatus::Succeeded.as_str()))
        } else {
            query.filter_expression("endpoint_id = :e")
        };
        let out = query.send().await.map_err(|e| Error::aws("dynamodb", e))?;
        let mut records = Vec::new();
        for item in out.items.unwrap_or_default() {
            match HistoryItem::from_item(item)? {
                HistoryItem::Single(d) => records.push((d.delivery_id.clone(), d)),
                HistoryItem::Group(g) => {
                    records.extend(g.members().into_iter().map(|d| (g.delivery_id.clone(), d)))
                }
            }
        }
        // A delivery with an item of its own is shown once, as that item says, even if its
        // group lists it too (a first run stopped at its deadline whose group write landed
        // after the copy it handed back recorded its own; the own item sorts right after).
        let own: std::collections::HashSet<DeliveryId> = records
            .iter()
            .filter(|(item, d)| *item == d.delivery_id)
            .map(|(_, d)| d.delivery_id.clone())
            .collect();
        records.retain(|(item, d)| *item == d.delivery_id || !own.contains(&d.delivery_id));
        Ok((records, out.last_evaluated_key))
    }

    /// One Query of the `by_status` index for the endpoint's deliveries in the filter's
    /// status, then their items (one BatchGetItem): records newest first, and where to go on.
    async fn status_page(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        filter: &DeliveryFilter,
        (from, to): (&str, &str),
        limit: usize,
        start: Option<HashMap<String, AttributeValue>>,
    ) -> Result<Read> {
        let status = filter.status.unwrap_or(DeliveryStatus::Failed);
        let (ids, last) = self
            .by_status(tenant, endpoint, status, (from, to), limit, start)
            .await?;
        // A group's item is in the index while it holds members: they are its records.
        let keys = ids.iter().map(|id| history_item_key(tenant, id)).collect();
        let mut by_id: HashMap<String, Vec<DeliveryRecord>> = HashMap::new();
        for item in self.batch_get_keys(&self.deliveries, keys, false).await? {
            let (id, records) = match HistoryItem::from_item(item)? {
                HistoryItem::Single(d) => (d.delivery_id.to_string(), vec![d]),
                HistoryItem::Group(g) => (g.delivery_id.to_string(), g.members()),
            };
            by_id.insert(id, records);
        }
        let venue = tenant.venue();
        let records = ids
            .into_iter()
            .flat_map(|id| {
                by_id
                    .remove(id.as_str())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|d| d.venue_id == *venue)
                    .map(move |d| (id.clone(), d))
            })
            .collect();
        Ok((records, last))
    }

    /// Delivery ids of the `by_status` index: the endpoint's deliveries in `status` created in
    /// the range, newest first, and where to go on from.
    async fn by_status(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        status: DeliveryStatus,
        (from, to): (&str, &str),
        limit: usize,
        start: Option<HashMap<String, AttributeValue>>,
    ) -> Result<(Vec<DeliveryId>, Option<HashMap<String, AttributeValue>>)> {
        let out = self
            .by_status_query(tenant, endpoint, status, (from, to))
            .scan_index_forward(false)
            .set_exclusive_start_key(start)
            .limit(limit.clamp(1, 100) as i32)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        let ids = out
            .items
            .unwrap_or_default()
            .iter()
            .filter_map(|item| DeliveryId::parse(item.get("delivery_id")?.as_s().ok()?).ok())
            .collect();
        Ok((ids, out.last_evaluated_key))
    }
}

/// Where a page of history stopped: the item it read last, and the last delivery it showed
/// of it (a group item holds several).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryCursor {
    pub item: DeliveryId,
    pub last: DeliveryId,
}

impl HistoryCursor {
    pub fn encode(&self) -> String {
        if self.item == self.last {
            self.item.to_string()
        } else {
            format!("{}.{}", self.item, self.last)
        }
    }

    pub fn decode(raw: &str) -> Option<Self> {
        let (item, last) = raw.split_once('.').unwrap_or((raw, raw));
        Some(Self {
            item: DeliveryId::parse(item).ok()?,
            last: DeliveryId::parse(last).ok()?,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_names_the_item_and_the_last_delivery_shown_of_it() {
        let endpoint = EndpointId::generate();
        let group = DeliveryId::batch_base().group_at(&endpoint);
        let inside = HistoryCursor {
            item: group.clone(),
            last: group.member(3),
        };
        assert_eq!(HistoryCursor::decode(&inside.encode()), Some(inside));
        let own = HistoryCursor {
            item: group.member(4),
            last: group.member(4),
        };
        assert_eq!(own.encode(), group.member(4).to_string());
        assert_eq!(HistoryCursor::decode(&own.encode()), Some(own));
        assert_eq!(HistoryCursor::decode("dlv_x.dlv_y"), None);
    }
}
