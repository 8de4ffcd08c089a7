//! SQS: delivery jobs (batched sends) and dead-letter hand-offs with a reason.

use std::time::Duration;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, MessageAttributeValue, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use serde::{Deserialize, Serialize};

use std::collections::HashMap;

use crate::model::domain::Event;
use crate::model::error::{Error, Result};
use crate::model::ids::{DeliveryId, EndpointId, EventId, VenueId};

/// Events up to this size travel inside the job, which saves the deliver function a read;
/// larger ones are read from the events table.
pub const INLINE_EVENT_BYTES: usize = 16 * 1024;
const MAX_BATCH_ENTRIES: usize = 10;
/// SendMessageBatch's limit on the sum of the bodies.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Deliveries at one endpoint, as queued for the deliver function: the first attempts of a
/// batch of accepted events travel together (up to [`crate::model::ids::GROUP_SIZE`] events, one
/// group, one message, one history item for their successes); a retry, a replay or a resumed
/// job carries one delivery.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeliveryJob {
    pub venue_id: VenueId,
    pub endpoint_id: EndpointId,
    pub deliveries: Vec<Queued>,
    /// The first attempts of a fresh fan-out: nothing of these deliveries exists yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub first: bool,
    /// Set when fan-out was resumed after an interruption: the delivery may already exist.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    /// A replay: one manual attempt, never followed by scheduled retries.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub manual: bool,
    /// How many times this delivery was held by its endpoint's open circuit (each hold
    /// waits longer: [`crate::delivery::breaker::BreakerPolicy::hold_wait`]).
    #[serde(default, skip_serializing_if = "crate::model::domain::is_zero")]
    pub held: u32,
    /// Released from its endpoint's backlog ([`crate::pipeline::backlog`]): attempted only
    /// if it is still held (another job may have attempted it meanwhile).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
    /// The turn (unix ms) its delivery took at an endpoint with a rate limit
    /// ([`crate::storage::store::Store::take_turns`]): it goes then without taking another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paced_at: Option<i64>,
}

/// A replay task as it travels on the delivery queue, beside the jobs.
#[derive(Serialize, Deserialize)]
pub struct ReplayMessage<T> {
    pub replay: T,
}

/// An operational event to publish, as it travels on the delivery queue
/// ([`crate::pipeline::operational`]).
#[derive(Serialize, Deserialize)]
pub struct OpsMessage<T> {
    pub ops: T,
}

/// A step of an endpoint's backlog loop as it travels on the delivery queue
/// ([`crate::pipeline::backlog`]).
#[derive(Serialize, Deserialize)]
pub struct BacklogMessage<T> {
    pub backlog: T,
}

/// A step of a venue's removal as it travels on the delivery queue.
#[derive(Serialize, Deserialize)]
pub struct PurgeMessage<T> {
    pub purge: T,
}

/// One delivery of a job: an event, under its delivery id.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Queued {
    pub delivery_id: DeliveryId,
    pub event_id: EventId,
    pub event_type: String,
    /// The event itself when small enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Event>,
}

impl DeliveryJob {
    /// The job of one stored delivery (its event read when it runs), nothing else set: a
    /// replay's or a backlog's release sets what it is.
    pub fn of_stored(venue_id: &VenueId, d: &crate::storage::store::FailedDelivery) -> Self {
        Self::bare(
            venue_id,
            &d.endpoint_id,
            vec![Queued {
                delivery_id: d.delivery_id.clone(),
                event_id: d.event_id.clone(),
                event_type: d.event_type.clone(),
                event: None,
            }],
        )
    }

    /// A job of these deliveries, nothing else set.
    fn bare(
        venue_id: &VenueId,
        endpoint_id: &crate::model::ids::EndpointId,
        deliveries: Vec<Queued>,
    ) -> Self {
        Self {
            venue_id: venue_id.clone(),
            endpoint_id: endpoint_id.clone(),
            deliveries,
            first: false,
            resumed: false,
            manual: false,
            held: 0,
            released: false,
            paced_at: None,
        }
    }

    /// The job of a group's held members (their events read when it runs), nothing else set.
    pub fn of_held_group(
        venue_id: &VenueId,
        endpoint_id: &crate::model::ids::EndpointId,
        g: &crate::storage::store::HeldGroup,
    ) -> Self {
        let deliveries = g
            .held_members
            .iter()
            .map(|h| Queued {
                delivery_id: g.delivery_id.member(h.i),
                event_id: h.e.clone(),
                event_type: h.t.clone(),
                event: None,
            })
            .collect();
        Self::bare(venue_id, endpoint_id, deliveries)
    }

    /// Its fair-queue group: its venue (the system venue's jobs spread by their event).
    fn group(&self) -> String {
        let event = self.deliveries.first().map_or("", |d| d.event_id.as_str());
        self.venue_id.spread_by(event)
    }

    /// One of its deliveries, as a job of its own.
    pub fn single(&self, delivery: Queued) -> Self {
        Self {
            deliveries: vec![delivery],
            first: false,
            ..self.clone()
        }
    }

    /// One of its deliveries as a job of its own; a released group's member stays one
    /// (`group`: first attempts that go by the group's item).
    pub fn alone(&self, delivery: Queued, group: bool) -> Self {
        if group {
            Self {
                deliveries: vec![delivery],
                ..self.clone()
            }
        } else {
            self.single(delivery)
        }
    }

    /// The jobs of one group as one: the first attempts of a batch's events at one endpoint
    /// ([`crate::pipeline::ingest`] makes one job per delivery, then merges them here). Jobs of
    /// different groups, or not first attempts, stay as they are; order is kept.
    pub fn merge_groups(jobs: Vec<DeliveryJob>) -> Vec<DeliveryJob> {
        let mut merged: Vec<DeliveryJob> = Vec::new();
        let mut at: HashMap<(VenueId, DeliveryId), usize> = HashMap::new();
        for job in jobs {
            let group = match (&job.deliveries[..], job.first && !job.manual) {
                ([only], true) => only.delivery_id.group().map(|(g, _)| g),
                _ => None,
            };
            let Some(group) = group else {
                merged.push(job);
                continue;
            };
            match at.get(&(job.venue_id.clone(), group.clone())) {
                Some(&i) => merged[i].deliveries.extend(job.deliveries),
                None => {
                    at.insert((job.venue_id.clone(), group), merged.len());
                    merged.push(job);
                }
            }
        }
        for job in &mut merged {
            job.deliveries
                .sort_by(|a, b| a.delivery_id.cmp(&b.delivery_id));
        }
        merged
    }
}

#[derive(Clone)]
pub struct Queues {
    sqs: Client,
    delivery_queue_url: String,
}

impl Queues {
    pub fn new(sqs: Client, delivery_queue_url: String) -> Self {
        Self {
            sqs,
            delivery_queue_url,
        }
    }

    /// Enqueues jobs with as few SendMessageBatch calls as the limits allow, re-sending entries
    /// that SQS reports as failed. Either every job is on the queue or this returns an error.
    /// `delay` holds them back (at most 900 s, SQS's limit).
    pub async fn send_jobs(&self, jobs: &[DeliveryJob], delay: Duration) -> Result<()> {
        let delayed: Vec<(&DeliveryJob, Duration)> = jobs.iter().map(|j| (j, delay)).collect();
        self.send_delayed(&delayed).await
    }

    /// As [`Queues::send_jobs`], each job with its own delay (SQS holds a message back
    /// for at most 900 s; a longer wait continues when the job comes back early).
    pub async fn send_delayed(&self, jobs: &[(&DeliveryJob, Duration)]) -> Result<()> {
        let entries = jobs
            .iter()
            .map(|(job, delay)| {
                // Whole seconds, rounded up: a job back early only waits again.
                let secs = delay.as_secs_f64().ceil().min(900.0) as i32;
                serde_json::to_string(job).map(|body| (body, secs, job.group()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Corrupt(e.to_string()))?;
        for batch in batches(&entries) {
            self.send_batch(batch).await?;
        }
        Ok(())
    }

    /// Queues one message of the delivery queue's own (an operational task, say) in `group`,
    /// after `delay` (at most 900 s).
    pub async fn send_message<T: Serialize>(
        &self,
        message: &T,
        delay: Duration,
        group: String,
    ) -> Result<()> {
        let body = serde_json::to_string(message).map_err(|e| Error::Corrupt(e.to_string()))?;
        let secs = delay.as_secs_f64().ceil().min(900.0) as i32;
        self.send_batch(vec![&(body, secs, group)]).await
    }

    /// Sends one batch. Each job carries its venue as `MessageGroupId`: on a standard queue
    /// that makes SQS a fair queue, so one venue's burst does not hold up the others.
    async fn send_batch(&self, mut pending: Vec<&Entry>) -> Result<()> {
        // Entries SQS reports as `Failed` are sent again, with jittered backoff; the call
        // fails only if some are still refused after the last round.
        for round in 0..4u32 {
            if round > 0 {
                tokio::time::sleep(crate::delivery::backoff::jittered(
                    round,
                    Duration::from_millis(50),
                    Duration::from_secs(1),
                ))
                .await;
            }
            let entries = pending
                .iter()
                .enumerate()
                .map(|(i, (body, delay, group))| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(sqs_safe(body))
                        .message_group_id(group.as_str())
                        .set_delay_seconds((*delay > 0).then_some(*delay))
                        .build()
                        .map_err(|e| Error::aws("sqs", e))
                })
                .collect::<Result<Vec<_>>>()?;
            let out = self
                .sqs
                .send_message_batch()
                .queue_url(&self.delivery_queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| Error::aws("sqs", e))?;
            if out.failed.is_empty() {
                return Ok(());
            }
            let failed: Vec<usize> = out
                .failed
                .iter()
                .filter_map(|f| f.id.parse().ok())
                .collect();
            tracing::warn!(
                failed = failed.len(),
                round,
                "SQS refused part of a batch; re-sending"
            );
            pending = failed
                .into_iter()
                .filter_map(|i| pending.get(i).copied())
                .collect();
        }
        Err(Error::Aws {
            service: "sqs",
            message: "SendMessageBatch kept failing for some entries".into(),
        })
    }

    /// Hides received jobs for a while (their retry wait): one ChangeMessageVisibilityBatch
    /// call per ten. Entries: (receipt handle, seconds). Returns how many failed; a job whose
    /// change failed simply comes back after the queue's visibility timeout.
    pub async fn delay_received(&self, entries: &[(String, i32)]) -> usize {
        let url = self.delivery_queue_url.clone();
        self.delay_received_on(&url, entries).await
    }

    /// As [`Queues::delay_received`], on another queue (the ingest function's own).
    pub async fn delay_received_on(&self, queue_url: &str, entries: &[(String, i32)]) -> usize {
        let mut failed = 0;
        for chunk in entries.chunks(MAX_BATCH_ENTRIES) {
            let batch: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, (handle, secs))| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(handle)
                        .visibility_timeout(*secs)
                        .build()
                        .ok()
                })
                .collect();
            match self
                .sqs
                .change_message_visibility_batch()
                .queue_url(queue_url)
                .set_entries(Some(batch))
                .send()
                .await
            {
                Ok(out) => failed += out.failed.len(),
                Err(e) => {
                    tracing::warn!(error = %crate::model::error::error_chain(&e), "could not delay jobs");
                    failed += chunk.len();
                }
            }
        }
        failed
    }

    /// Hands a message that can never be processed to a dead-letter queue, with the reason as
    /// a message attribute, so that it is kept and not retried.
    pub async fn dead_letter(&self, dlq_url: &str, body: &str, reason: &str) -> Result<()> {
        let reason_attr = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(truncate(reason, 1024).replace(['\u{FFFE}', '\u{FFFF}'], "\u{FFFD}"))
            .build()
            .map_err(|e| Error::aws("sqs", e))?;
        self.sqs
            .send_message()
            .queue_url(dlq_url)
            .message_body(sqs_safe(body))
            .message_attributes("reason", reason_attr)
            .send()
            .await
            .map_err(|e| Error::aws("sqs", e))?;
        Ok(())
    }
}

/// A wait as a visibility timeout: whole seconds, rounded up (SQS counts whole seconds; a
/// message back early only waits again), at least one.
pub fn visibility_secs(wait: Duration) -> i32 {
    wait.as_secs_f64().ceil().clamp(1.0, i32::MAX as f64) as i32
}

/// SQS's count of how often a message was received (its `ApproximateReceiveCount`
/// attribute, as Lambda passes it), 1 on the first.
pub fn receive_count(attributes: &std::collections::HashMap<String, String>) -> u32 {
    attributes
        .get("ApproximateReceiveCount")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Groups bodies (with their delays) into SendMessageBatch calls: at most 10 entries and
/// 256 KiB each.
/// A job as sent: its body, its delay in seconds, its message group (the venue).
type Entry = (String, i32, String);

fn batches(bodies: &[Entry]) -> Vec<Vec<&Entry>> {
    let mut out: Vec<Vec<&Entry>> = Vec::new();
    let mut size = 0;
    for entry in bodies {
        let body = &entry.0;
        let full = out
            .last()
            .is_none_or(|b| b.len() == MAX_BATCH_ENTRIES || size + body.len() > MAX_BATCH_BYTES);
        if full {
            out.push(Vec::new());
            size = 0;
        }
        size += body.len();
        if let Some(last) = out.last_mut() {
            last.push(entry);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(
        venue: &str,
        endpoint: &EndpointId,
        delivery_id: DeliveryId,
        first: bool,
    ) -> DeliveryJob {
        DeliveryJob {
            venue_id: VenueId::parse(venue).unwrap(),
            endpoint_id: endpoint.clone(),
            deliveries: vec![Queued {
                delivery_id,
                event_id: EventId::generate(),
                event_type: "order.created".into(),
                event: None,
            }],
            first,
            resumed: !first,
            manual: false,
            held: 0,
            released: false,
            paced_at: None,
        }
    }

    #[test]
    fn the_first_attempts_of_one_group_merge_into_one_job() {
        let (a, b) = (EndpointId::generate(), EndpointId::generate());
        let base = DeliveryId::batch_base();
        let (ga, gb) = (base.group_at(&a), base.group_at(&b));
        let jobs = vec![
            one("v1", &a, ga.member(1), true),
            one("v1", &b, gb.member(0), true),
            one("v1", &a, ga.member(0), true),
            // A resumed copy stays on its own.
            one("v1", &a, ga.member(2), false),
            one("v1", &b, gb.member(1), true),
        ];
        let merged = DeliveryJob::merge_groups(jobs);
        let shape: Vec<(EndpointId, Vec<DeliveryId>)> = merged
            .iter()
            .map(|j| {
                let ids = j.deliveries.iter().map(|d| d.delivery_id.clone()).collect();
                (j.endpoint_id.clone(), ids)
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (a.clone(), vec![ga.member(0), ga.member(1)]),
                (b.clone(), vec![gb.member(0), gb.member(1)]),
                (a, vec![ga.member(2)]),
            ]
        );
    }

    #[test]
    fn batches_respect_count_and_size() {
        let small: Vec<Entry> = (0..25).map(|i| (i.to_string(), 0, "v".into())).collect();
        let sizes: Vec<usize> = batches(&small).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![10, 10, 5]);

        let big: Vec<Entry> = (0..4)
            .map(|_| ("x".repeat(100 * 1024), 0, "v".into()))
            .collect();
        let sizes: Vec<usize> = batches(&big).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 2]);
        assert!(batches(&[]).is_empty());
    }

    #[test]
    fn waits_become_whole_seconds_and_receive_counts_default_to_one() {
        assert_eq!(visibility_secs(Duration::from_millis(1)), 1);
        assert_eq!(visibility_secs(Duration::from_millis(2500)), 3);
        let mut attributes = std::collections::HashMap::new();
        assert_eq!(receive_count(&attributes), 1);
        attributes.insert("ApproximateReceiveCount".to_owned(), "4".to_owned());
        assert_eq!(receive_count(&attributes), 4);
    }
}

/// A JSON message body as SQS takes it. SQS accepts only #x9, #xA, #xD, #x20–#xD7FF,
/// #xE000–#xFFFD and #x10000–#x10FFFF; JSON written by `serde_json` escapes the control
/// characters, but keeps U+FFFE and U+FFFF (valid in JSON and in event data) as they are.
/// They can only stand inside JSON strings, so they are written as `\ufffe`/`\uffff`: the same
/// JSON value, which SQS accepts.
pub fn sqs_safe(body: &str) -> String {
    if !body.contains(['\u{FFFE}', '\u{FFFF}']) {
        return body.to_owned();
    }
    body.replace('\u{FFFE}', "\\ufffe")
        .replace('\u{FFFF}', "\\uffff")
}

#[cfg(test)]
mod sqs_characters {
    #[test]
    fn noncharacters_are_escaped_to_the_same_json_value() {
        let value = serde_json::json!({"data": {"note": "a\u{FFFE}b\u{FFFF}c"}});
        let body = serde_json::to_string(&value).unwrap();
        assert!(body.contains('\u{FFFE}'));
        let safe = super::sqs_safe(&body);
        assert!(!safe.contains(['\u{FFFE}', '\u{FFFF}']), "{safe}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&safe).unwrap(),
            value
        );
        assert_eq!(super::sqs_safe("{\"a\":1}"), "{\"a\":1}");
    }
}
