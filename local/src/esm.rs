//! The local stand-in for Lambda's SQS event source mapping: long-polls a queue, hands each
//! batch to the function as the `SqsEvent` JSON Lambda would send, and deletes the messages
//! that succeeded. As on Lambda, batches run concurrently, up to the mapping's
//! `ScalingConfig.MaximumConcurrency`: a poller receives only when a batch may start (a
//! [`Concurrency`] permit), so a slow batch holds one slot, not the queue. With `ReportBatchItemFailures`, only the listed records stay on the queue; a
//! failed invocation leaves the whole batch. Messages that stay become visible again after the
//! queue's visibility timeout, and the queue's redrive policy moves them to the DLQ.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use serde_json::json;
use tokio::sync::watch;

use crate::provision::QueueTrigger;

/// Invocations of a function and the time they took (for the benchmarks' cost figures).
#[derive(Clone, Debug, Default)]
pub struct Invocations {
    pub count: u64,
    pub records: u64,
    pub busy: std::time::Duration,
    /// Invocations stopped at the function's timeout (their batches come back whole).
    pub timed_out: u64,
    /// Invocations stopped before it, as Lambda stops a function that crashes or runs out of
    /// memory ([`crate::Stack::stop_next_invocation`]): their batches come back whole too.
    pub stopped: u64,
    /// Stop the next invocation after this long.
    pub stop_next: Option<std::time::Duration>,
}

pub type Stats = Arc<std::sync::Mutex<std::collections::BTreeMap<String, Invocations>>>;

/// A function's handler: the batch, and the invocation's deadline.
pub type Handler = Arc<
    dyn Fn(SqsEvent, Instant) -> Pin<Box<dyn Future<Output = SqsBatchResponse> + Send>>
        + Send
        + Sync,
>;

/// The batches of one mapping that may run at once (shared by its pollers).
pub type Concurrency = Arc<tokio::sync::Semaphore>;

/// Polls until `shutdown` turns true, running each batch on its own task once a permit of
/// `concurrency` is free; returns once its batches have finished.
pub async fn run(
    sqs: aws_sdk_sqs::Client,
    trigger: QueueTrigger,
    handler: Handler,
    mut shutdown: watch::Receiver<bool>,
    stats: Stats,
    concurrency: Concurrency,
) {
    let mut running = tokio::task::JoinSet::new();
    loop {
        if *shutdown.borrow() {
            while running.join_next().await.is_some() {}
            return;
        }
        // Finished batches leave the set as they end.
        while running.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = concurrency.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = shutdown.changed() => continue,
        };
        // Not abandoned on shutdown: SQS would hand a message to a receive nobody reads.
        let received = sqs
            .receive_message()
            .queue_url(&trigger.queue_url)
            .max_number_of_messages(trigger.batch_size.clamp(1, 10))
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await;
        let mut messages = match received {
            Ok(out) => out.messages.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(
                    queue = trigger.queue_url,
                    error = shared::model::error::error_chain(&e),
                    "receive failed; retrying"
                );
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
        };
        if messages.is_empty() {
            continue;
        }
        gather(&sqs, &trigger, &mut messages).await;
        let (sqs, trigger, handler, stats) =
            (sqs.clone(), trigger.clone(), handler.clone(), stats.clone());
        running.spawn(async move {
            invoke(&sqs, &trigger, &handler, &stats, messages).await;
            drop(permit);
        });
    }
}

/// One invocation: the batch to the function, then the messages that succeeded deleted.
async fn invoke(
    sqs: &aws_sdk_sqs::Client,
    trigger: &QueueTrigger,
    handler: &Handler,
    stats: &Stats,
    messages: Vec<Message>,
) {
    let event = match to_event(trigger, &messages) {
        Ok(event) => event,
        Err(e) => {
            tracing::error!(error = %e, "could not build the SQS event");
            return;
        }
    };
    let started = Instant::now();
    // Lambda stops the handler at the function's timeout: its future is dropped here, so
    // nothing after that point runs; no message is deleted, and the whole batch comes back
    // after the visibility timeout. (Locally the process lives on: work the handler spawned
    // on other tasks is not stopped.)
    // A stop asked for (a crash, say) comes without warning: the deadline the handler is
    // given is the timeout's.
    let stop_after = stats.lock().ok().and_then(|mut stats| {
        stats
            .entry(trigger.function.clone())
            .or_default()
            .stop_next
            .take()
    });
    let limit = stop_after.map_or(trigger.timeout, |after| after.min(trigger.timeout));
    let ran = tokio::time::timeout(
        limit,
        shared::runtime::logging::with_request_id(
            request_id(),
            handler(event, started + trigger.timeout),
        ),
    )
    .await;
    if let Ok(mut stats) = stats.lock() {
        let entry = stats.entry(trigger.function.clone()).or_default();
        entry.count += 1;
        entry.records += messages.len() as u64;
        entry.busy += started.elapsed();
        match (&ran, stop_after) {
            (Err(_), Some(after)) if after < trigger.timeout => entry.stopped += 1,
            (Err(_), _) => entry.timed_out += 1,
            _ => {}
        }
    }
    let Ok(response) = ran else {
        tracing::warn!(
            function = trigger.function,
            timeout_s = trigger.timeout.as_secs_f64(),
            records = messages.len(),
            "invocation stopped; its batch comes back after the visibility timeout"
        );
        return;
    };
    let failed: HashSet<String> = if trigger.reports_batch_item_failures {
        response
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect()
    } else {
        HashSet::new()
    };
    let done: Vec<DeleteMessageBatchRequestEntry> = messages
        .iter()
        .filter(|m| !m.message_id.as_ref().is_some_and(|id| failed.contains(id)))
        .enumerate()
        .filter_map(|(i, m)| delete_entry(i, m))
        .collect();
    if done.is_empty() {
        return;
    }
    if let Err(e) = sqs
        .delete_message_batch()
        .queue_url(&trigger.queue_url)
        .set_entries(Some(done))
        .send()
        .await
    {
        tracing::warn!(
            error = shared::model::error::error_chain(&e),
            "delete failed; the messages will be received again"
        );
    }
}

/// The DeleteMessageBatch entry of a received message, with `i` as its entry id.
pub fn delete_entry(i: usize, message: &Message) -> Option<DeleteMessageBatchRequestEntry> {
    DeleteMessageBatchRequestEntry::builder()
        .id(i.to_string())
        .set_receipt_handle(message.receipt_handle.clone())
        .build()
        .ok()
}

/// Like Lambda's batching window: after the first messages, keeps receiving until the batch is
/// full or the window has passed.
async fn gather(sqs: &aws_sdk_sqs::Client, trigger: &QueueTrigger, messages: &mut Vec<Message>) {
    let started = std::time::Instant::now();
    let batch = trigger.batch_size.max(1) as usize;
    while messages.len() < batch && started.elapsed() < trigger.batching_window {
        let more = sqs
            .receive_message()
            .queue_url(&trigger.queue_url)
            .max_number_of_messages((batch - messages.len()).min(10) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .ok()
            .and_then(|out| out.messages)
            .unwrap_or_default();
        if more.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        messages.extend(more);
    }
}

/// The event exactly as Lambda shapes it (`Records`, camelCase fields, string attributes).
pub fn to_event(
    trigger: &QueueTrigger,
    messages: &[Message],
) -> Result<SqsEvent, serde_json::Error> {
    let region = trigger.queue_arn.split(':').nth(3).unwrap_or("us-east-1");
    let records: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| {
            let attributes: serde_json::Map<String, serde_json::Value> = m
                .attributes
                .iter()
                .flatten()
                .map(|(k, v)| (k.as_str().to_owned(), json!(v)))
                .collect();
            let message_attributes: serde_json::Map<String, serde_json::Value> = m
                .message_attributes
                .iter()
                .flatten()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        json!({
                            "stringValue": v.string_value,
                            "dataType": v.data_type,
                            "stringListValues": [],
                            "binaryListValues": [],
                        }),
                    )
                })
                .collect();
            json!({
                "messageId": m.message_id,
                "receiptHandle": m.receipt_handle,
                "body": m.body,
                "attributes": attributes,
                "messageAttributes": message_attributes,
                "md5OfBody": m.md5_of_body,
                "eventSource": "aws:sqs",
                "eventSourceARN": trigger.queue_arn,
                "awsRegion": region,
            })
        })
        .collect();
    serde_json::from_value(json!({ "Records": records }))
}

/// A request id of the shape Lambda gives each invocation (36 characters), for the log lines.
pub fn request_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:08x}-0000-4000-8000-{n:012x}", std::process::id())
}
