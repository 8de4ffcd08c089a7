//! The retries table: delivery jobs that wait longer than SQS can hold a message back
//! (`DelaySeconds` ≤ 15 min), out of the delivery queue, so that no waiting retry counts
//! against SQS's in-flight limit. Items are keyed by the time slot they fall due in and a
//! shard (`slot` = `"{slot start, unix seconds}#{shard}"`), and the delivery (`id`); the
//! sweep ([`crate::pipeline::waits::Waits::sweep`]) reads each slot once it is due, queues its jobs and
//! removes them. One item (`slot` = `id` = `#cursor`) remembers the last slot swept.

use aws_sdk_dynamodb::types::{DeleteRequest, PutRequest, WriteRequest};

use super::{n, s, written, Store};
use crate::model::error::{Error, Result};

/// BatchWriteItem's limit.
const MAX_WRITE_ENTRIES: usize = 25;
const CURSOR: &str = "#cursor";

/// A job waiting in the retries table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// `"{slot start}#{shard}"`.
    pub slot: String,
    /// The delivery's id.
    pub id: String,
    /// When it is due, unix milliseconds.
    pub due_ms: i64,
    /// The delivery job, as its queue message body.
    pub job: String,
}

impl Store {
    /// Writes waiting jobs (BatchWriteItem, 25 a call, re-sending what DynamoDB leaves
    /// unprocessed). Either all are written or this is an error.
    pub async fn put_waiting(&self, waiting: &[Waiting]) -> Result<()> {
        // One BatchWriteItem may not name a key twice (two copies of a job in one batch):
        // the last wins.
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<&Waiting> = waiting
            .iter()
            .rev()
            .filter(|w| seen.insert((w.slot.as_str(), w.id.as_str())))
            .collect();
        let requests = unique
            .into_iter()
            .map(|w| {
                PutRequest::builder()
                    .item("slot", s(&w.slot))
                    .item("id", s(&w.id))
                    .item("due_ms", n(w.due_ms))
                    .item("job", s(&w.job))
                    .build()
                    .map(|put| WriteRequest::builder().put_request(put).build())
                    .map_err(|e| Error::aws("dynamodb", e))
            })
            .collect::<Result<Vec<_>>>()?;
        self.write_batches(&self.retries, requests).await
    }

    /// The first page of the jobs waiting in one slot's shard (strongly consistent: a job
    /// written a moment ago is there), and whether more follow. The sweep removes each page
    /// once queued, so the next page is again the first.
    pub async fn waiting_in(&self, slot: &str, limit: i32) -> Result<(Vec<Waiting>, bool)> {
        let out = self
            .ddb
            .query()
            .table_name(&self.retries)
            .key_condition_expression("slot = :s")
            .expression_attribute_values(":s", s(slot))
            .consistent_read(true)
            .limit(limit)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        let items = out
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|item| {
                let text = |name: &str| {
                    item.get(name)
                        .and_then(|v| v.as_s().ok())
                        .cloned()
                        .ok_or_else(|| Error::Corrupt(format!("a waiting job without `{name}`")))
                };
                Ok(Waiting {
                    slot: text("slot")?,
                    id: text("id")?,
                    due_ms: item
                        .get("due_ms")
                        .and_then(|v| v.as_n().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    job: text("job")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((items, out.last_evaluated_key.is_some()))
    }

    /// Removes jobs that are queued again.
    pub async fn remove_waiting(&self, waiting: &[Waiting]) -> Result<()> {
        let requests = waiting
            .iter()
            .map(|w| {
                DeleteRequest::builder()
                    .key("slot", s(&w.slot))
                    .key("id", s(&w.id))
                    .build()
                    .map(|delete| WriteRequest::builder().delete_request(delete).build())
                    .map_err(|e| Error::aws("dynamodb", e))
            })
            .collect::<Result<Vec<_>>>()?;
        self.write_batches(&self.retries, requests).await
    }

    /// The start of the last slot the sweep finished, if it ever ran.
    pub async fn sweep_cursor(&self) -> Result<Option<i64>> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.retries)
            .key("slot", s(CURSOR))
            .key("id", s(CURSOR))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        Ok(out
            .item
            .and_then(|item| item.get("swept").and_then(|v| v.as_n().ok()).cloned())
            .and_then(|v| v.parse().ok()))
    }

    /// Takes the sweep's lease until `until_ms` unless another sweep holds one (`false`):
    /// two sweeps never run at once, so nothing is queued twice by them.
    pub async fn take_sweep_lease(&self, now_ms: i64, until_ms: i64) -> Result<bool> {
        self.update_cursor(
            "SET lease_until = :until",
            "attribute_not_exists(lease_until) OR lease_until < :now",
            &[(":until", until_ms), (":now", now_ms)],
        )
        .await
    }

    /// Gives the sweep's lease back (if it is still the one taken until `until_ms`).
    pub async fn release_sweep_lease(&self, until_ms: i64) -> Result<bool> {
        self.update_cursor(
            "SET lease_until = :zero",
            "lease_until = :until",
            &[(":until", until_ms), (":zero", 0)],
        )
        .await
    }

    /// Moves the cursor forward to `slot` (never back: `false` if a sweep running at the same
    /// time is ahead).
    pub async fn advance_sweep_cursor(&self, slot: i64) -> Result<bool> {
        self.update_cursor(
            "SET swept = :s",
            "attribute_not_exists(swept) OR swept < :s",
            &[(":s", slot)],
        )
        .await
    }

    /// One conditional write of the sweep's cursor item (`false`: the condition failed).
    async fn update_cursor(
        &self,
        update: &str,
        condition: &str,
        values: &[(&str, i64)],
    ) -> Result<bool> {
        let result = self
            .ddb
            .update_item()
            .table_name(&self.retries)
            .key("slot", s(CURSOR))
            .key("id", s(CURSOR))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_values(Some(
                values
                    .iter()
                    .map(|(name, value)| ((*name).to_owned(), n(value)))
                    .collect(),
            ))
            .send()
            .await;
        written(result)
    }

    /// BatchWriteItem of `requests` on `table`, 25 a call; what DynamoDB leaves unprocessed
    /// is sent again with jittered backoff, and an error if some is still left.
    pub(super) async fn write_batches(
        &self,
        table: &str,
        requests: Vec<WriteRequest>,
    ) -> Result<()> {
        for chunk in requests.chunks(MAX_WRITE_ENTRIES) {
            let mut pending = chunk.to_vec();
            for round in 0..super::UNPROCESSED_ROUNDS {
                if pending.is_empty() {
                    break;
                }
                super::pause_before(round).await;
                let out = self
                    .ddb
                    .batch_write_item()
                    .request_items(table, pending)
                    .send()
                    .await
                    .map_err(|e| Error::aws("dynamodb", e))?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(table))
                    .unwrap_or_default();
            }
            if !pending.is_empty() {
                return Err(Error::Aws {
                    service: "dynamodb",
                    message: format!(
                        "BatchWriteItem left {} items unprocessed (throttled)",
                        pending.len()
                    ),
                });
            }
        }
        Ok(())
    }
}
