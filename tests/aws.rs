//! What AWS does and moto does not, and what the code does about it (docs/FAULTS.md, second
//! table): throttling and partial results, eventually consistent reads, a queue that cannot be
//! reached while an event is published, one bad delivery in a job, races between a manual
//! and a scheduled attempt, items that would outgrow DynamoDB's limit, templates that would
//! take a function down, an outage that outlasts the receives, and the DLQs drained again.
//!
//! The AWS faults come from a proxy in front of moto (`support::proxy`); the schedule is
//! compressed as in the fault suite.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use integration_tests::faults::{FaultReceiver, Mode};
use integration_tests::proxy::{Fault, FaultProxy};
use integration_tests::*;
use local::iam::EVENT_SOURCE;
use local::{Stack, StackOptions};
use serde_json::{json, Value};
use shared::model::domain::Trigger;

const WAIT: Duration = Duration::from_secs(60);

/// The fault suite's compressed clock, plus: resumed jobs after 1 s, an outage backoff from
/// 0.5 s, the ingest queue's visibility at 2 s, the schedule every second.
fn options(extra: &[(&str, &str)]) -> StackOptions {
    let mut o = compressed_options(&[
        ("RESUME_DELAY_SECONDS", "1"),
        ("OUTAGE_BACKOFF_BASE_MS", "500"),
    ]);
    for (k, v) in extra {
        o.env_overrides.insert(k.to_string(), v.to_string());
    }
    o.queue_overrides.insert(
        "IngestQueue".into(),
        [("VisibilityTimeout".to_owned(), "2".to_owned())].into(),
    );
    o.schedule_every = Some(Duration::from_secs(1));
    o
}

/// A stack whose functions reach AWS through a fault proxy.
async fn proxied(options: StackOptions) -> (Stack, FaultProxy) {
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("run with `make test`");
    let proxy = FaultProxy::start(&moto).await;
    let aws = aws_config::defaults(shared::storage::services::behavior_version())
        .endpoint_url(&proxy.url)
        .load()
        .await;
    let stack = Stack::start(aws, options).await.expect("stack starts");
    proxy.trust_stack(&stack);
    (stack, proxy)
}

fn venue() -> String {
    format!("aws-{}", unique_prefix())
}

/// Every delivery of an endpoint (one page of up to 100), with `status`.
async fn history(api: &Client, venue: &str, endpoint: &str) -> Vec<Value> {
    let (status, page) = read_history(api, venue, endpoint).await;
    assert_eq!(status, 200, "{page}");
    page["data"].as_array().cloned().unwrap_or_default()
}

async fn read_history(api: &Client, venue: &str, endpoint: &str) -> (u16, Value) {
    api.get(&format!(
        "/venues/{venue}/endpoints/{endpoint}/deliveries?limit=100"
    ))
    .await
}

/// Waits until the endpoint has `n` deliveries, none pending; returns them.
async fn settled(api: &Client, venue: &str, endpoint: &str, n: usize) -> Vec<Value> {
    let last = std::sync::Mutex::new(Vec::new());
    eventually(WAIT, || async {
        // While AWS is failing, the API answers 503: keep waiting.
        let (status, page) = read_history(api, venue, endpoint).await;
        let h = page["data"].as_array().cloned().unwrap_or_default();
        *last.lock().unwrap() = h.clone();
        if status != 200 {
            return None;
        }
        (h.len() == n && h.iter().all(|d| d["status"] != "pending")).then_some(h)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "{n} deliveries of {endpoint} did not settle: {:?}\nthe functions logged:\n{}",
            last.lock().unwrap(),
            function_errors()
        )
    })
}

async fn delivery(api: &Client, venue: &str, id: &str) -> Value {
    let (status, d) = api.get(&format!("/venues/{venue}/deliveries/{id}")).await;
    assert_eq!(status, 200, "{d}");
    d
}

/// Messages on a queue: visible, in flight and delayed.
async fn on_queue(sqs: &aws_sdk_sqs::Client, url: &str) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(A::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap_or_default();
    attrs.values().map(|v| v.parse::<u64>().unwrap_or(0)).sum()
}

/// Publishes one event over HTTP; it must be accepted. Returns the answer.
/// Both dead-letter queues hold nothing.
async fn dlqs_are_empty(stack: &Stack) {
    let sqs = aws_sdk_sqs::Client::new(&direct().await);
    for dlq in ["DeliveryDeadLetterQueue", "IngestDeadLetterQueue"] {
        assert_eq!(on_queue(&sqs, stack.queue_url(dlq)).await, 0, "{dlq}");
    }
}

async fn publish(api: &Client, venue: &str, event: Value) -> Value {
    let (status, answer) = api.post(&format!("/venues/{venue}/events"), event).await;
    assert_eq!(status, 202, "{answer}");
    answer
}

/// The operator's view of the local AWS, not through the proxy.
async fn direct() -> aws_config::SdkConfig {
    aws().await
}

fn event_ids(hits: &[integration_tests::faults::Hit]) -> BTreeSet<String> {
    hits.iter()
        .filter_map(|h| serde_json::from_str::<Value>(&h.body).ok())
        .filter_map(|b| b["id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_partial_results_lose_nothing_and_strand_nothing() {
    let (stack, proxy) = proxied(options(&[])).await;
    let api = Client::new(&stack);
    let v = venue();
    let receivers = [
        FaultReceiver::start(vec![Mode::Status(200)]).await,
        FaultReceiver::start(vec![Mode::Status(500), Mode::Status(200)]).await,
        FaultReceiver::start(vec![Mode::Status(200)]).await,
    ];
    let mut endpoints = Vec::new();
    for rx in &receivers {
        let ep = api
            .create_endpoint(&v, json!({"url": rx.url, "event_types": ["*"]}))
            .await;
        endpoints.push(ep["id"].as_str().unwrap().to_owned());
    }

    // Three events through the ingest queue and two over HTTP, just before the faults (their
    // jobs meet them), and one over HTTP during them (retried by the client until accepted,
    // as a producer would).
    let direct = direct().await;
    let source = aws_sdk_sqs::Client::new(
        &stack
            .provisioned
            .identity_of(EVENT_SOURCE)
            .unwrap()
            .sdk_config(&direct),
    );
    let mut ids = BTreeSet::new();
    for i in 0..3 {
        let id = format!("queued-{i}");
        source
            .send_message()
            .queue_url(stack.queue_url("IngestQueue"))
            .message_body(
                json!({"venue_id": v, "id": id, "type": "order.created", "data": {"n": i}})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        ids.insert(id);
    }
    let mut refusals = 0;
    let started = Instant::now();
    for i in 0..3 {
        if i == 2 {
            // For 10 s: every BatchGetItem leaves every key unprocessed, every PutItem and
            // UpdateItem is throttled, one entry of every SendMessageBatch fails. Then 10 s
            // more of throttled updates and failed entries alone, so that the work that gets
            // through the first faults meets the others.
            let window = Duration::from_secs(10);
            proxy.inject("BatchGetItem", Fault::Unprocessed, window);
            proxy.inject("PutItem", Fault::Throttled, window);
            proxy.inject("UpdateItem", Fault::Throttled, 2 * window);
            proxy.inject("SendMessageBatch", Fault::FailOneEntry, 2 * window);
        }
        let id = format!("http-{i}");
        let body = json!({"id": id, "type": "order.created", "data": {"n": i}});
        loop {
            let (status, answer) = api.post(&format!("/venues/{v}/events"), body.clone()).await;
            if status == 202 {
                break;
            }
            assert_eq!(status, 503, "{answer}");
            refusals += 1;
            assert!(started.elapsed() < WAIT, "never accepted: {answer}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        ids.insert(id);
    }

    // Afterwards: every event delivered to every endpoint and recorded once, succeeded.
    for (rx, endpoint) in receivers.iter().zip(&endpoints) {
        let h = settled(&api, &v, endpoint, ids.len()).await;
        assert!(h.iter().all(|d| d["status"] == "succeeded"), "{h:?}");
        let recorded: BTreeSet<String> = h
            .iter()
            .map(|d| d["event_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(recorded, ids, "one delivery per event");
        assert_eq!(event_ids(&rx.hits()), ids, "the receiver got every event");
    }
    // Nothing left behind: the delivery queue drains, both DLQs are empty.
    let sqs = aws_sdk_sqs::Client::new(&direct);
    let drained = eventually(WAIT, || async {
        (on_queue(&sqs, stack.queue_url("DeliveryQueue")).await == 0).then_some(())
    })
    .await;
    assert!(drained.is_some(), "jobs left on the delivery queue");
    for dlq in ["DeliveryDeadLetterQueue", "IngestDeadLetterQueue"] {
        assert_eq!(on_queue(&sqs, stack.queue_url(dlq)).await, 0, "{dlq}");
    }
    // The faults did happen.
    let applied = proxy.applied();
    for fault in [
        "BatchGetItem Unprocessed",
        "PutItem Throttled",
        "UpdateItem Throttled",
        "SendMessageBatch FailOneEntry",
    ] {
        assert!(
            applied.get(fault).copied().unwrap_or(0) > 0,
            "{fault} never applied: {applied:?}"
        );
    }
    assert!(refusals > 0, "the HTTP publishes were never refused");
    stack.stop().await;
}

/// DynamoDB's capacity per partition key, which moto does not have: the stack's meter
/// (`local::capacity`), its budgets scaled down so this machine reaches them. A burst of one
/// venue's events spends its keys' seconds; those keys are throttled as AWS throttles them,
/// other keys are not, and every event is delivered all the same, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_is_throttled_as_on_aws_and_nothing_is_lost() {
    let mut o = options(&[]);
    // 10 write units and 30 read units a second per key.
    o.capacity = Some(local::capacity::Budgets::scaled(0.01));
    let stack = start_with(o).await;
    let api = Client::new(&stack);
    let v = venue();
    let rx = FaultReceiver::start(vec![Mode::Status(200)]).await;
    let ep = api
        .create_endpoint(&v, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    let ep = ep["id"].as_str().unwrap().to_owned();
    let source = aws_sdk_sqs::Client::new(&stack.aws_of(EVENT_SOURCE).unwrap());
    let mut ids = BTreeSet::new();
    for batch in 0..4 {
        let mut send = source
            .send_message_batch()
            .queue_url(stack.queue_url("IngestQueue"));
        for i in 0..10 {
            let id = format!("burst-{batch}-{i}");
            let body = json!({"venue_id": v, "id": id, "type": "order.created",
                "data": {"note": "x".repeat(600)}});
            send = send.entries(
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body.to_string())
                    .build()
                    .unwrap(),
            );
            ids.insert(id);
        }
        let sent = send.send().await.unwrap();
        assert!(sent.failed.is_empty(), "{sent:?}");
    }

    let h = settled(&api, &v, &ep, ids.len()).await;
    assert!(h.iter().all(|d| d["status"] == "succeeded"), "{h:?}");
    assert_eq!(event_ids(&rx.hits()), ids, "the receiver got every event");
    assert_eq!(rx.hits().len(), ids.len(), "each once");

    // The venue's key of the events table took the burst and was throttled; the meter says
    // which keys spent what.
    let meter = stack.capacity.as_ref().expect("the stack meters capacity");
    let usage = meter.usage();
    let venue_events = usage
        .iter()
        .find(|u| u.resource == "EventsTable" && u.key == v)
        .unwrap_or_else(|| panic!("no usage of the venue's events key: {usage:?}"));
    assert!(
        venue_events.write_units >= ids.len() as f64,
        "{venue_events:?}"
    );
    assert!(venue_events.throttled > 0, "never throttled: {usage:?}");
    assert!(
        venue_events.peak_write <= 2.0 * 5.0 + 5.0,
        "{venue_events:?}"
    );
    dlqs_are_empty(&stack).await;
    stack.stop().await;
}

/// Lambda's deadline: the local mapping stops deliver at its `Timeout` (here 5 s) as Lambda
/// does. With every DynamoDB write of deliver slowed by 2 s, a batch cannot finish in time:
/// deliver starts no attempt it could not record before its deadline and hands back what it
/// has not done as jobs of its own, before the deadline. Every delivery is made and recorded,
/// no invocation is stopped, nothing reaches the DLQ, and a receiver sees an event twice only
/// where an attempt went out and its record could not be written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_cannot_finish_in_time_hands_its_work_back() {
    let mut o = options(&[("DEADLINE_RESERVE_MS", "2500")]);
    o.function_timeouts
        .insert(local::DELIVER_FUNCTION.into(), Duration::from_secs(5));
    // As the template keeps it: longer than the function's timeout, so that no job is
    // received again while an invocation still works on it.
    o.queue_overrides.insert(
        "DeliveryQueue".into(),
        [("VisibilityTimeout".to_owned(), "6".to_owned())].into(),
    );
    let (stack, proxy) = proxied(o).await;
    let api = Client::new(&stack);
    let v = venue();
    let mut receivers = Vec::new();
    let mut endpoints = Vec::new();
    for _ in 0..3 {
        // The first attempts fail: failures, retries and successes are all recorded.
        let mut script = vec![Mode::Status(500); 12];
        script.push(Mode::Status(200));
        let rx = FaultReceiver::start(script).await;
        let ep = api
            .create_endpoint(&v, json!({"url": rx.url, "event_types": ["*"]}))
            .await;
        endpoints.push(ep["id"].as_str().unwrap().to_owned());
        receivers.push(rx);
    }
    let unrecorded_before = shared::pipeline::dispatch::unrecorded_attempts();
    let deliver = stack
        .provisioned
        .identity_of(local::DELIVER_FUNCTION)
        .unwrap();
    for op in ["PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"] {
        proxy.inject_for(deliver, op, Fault::Slow(Duration::from_secs(2)), WAIT);
    }
    let mut ids = BTreeSet::new();
    for i in 0..12 {
        let id = format!("late-{i}");
        publish(
            &api,
            &v,
            json!({"id": id, "type": "order.created", "data": {"n": i}}),
        )
        .await;
        ids.insert(id);
    }
    // Requests a receiver got beyond the attempts recorded: each is an attempt that went
    // out and whose record could not be written, which deliver counts.
    let mut unexplained = 0;
    for (rx, endpoint) in receivers.iter().zip(&endpoints) {
        let h = settled(&api, &v, endpoint, ids.len()).await;
        assert!(h.iter().all(|d| d["status"] == "succeeded"), "{h:?}");
        let got = event_ids(&rx.hits());
        assert_eq!(got, ids, "the receiver got every event");
        for d in &h {
            let event = d["event_id"].as_str().unwrap();
            let receipts = rx
                .hits()
                .iter()
                .filter(|hit| hit.body.contains(&format!("\"{event}\"")))
                .count();
            let recorded = d["attempt_count"].as_u64().unwrap() as usize;
            unexplained += receipts.saturating_sub(recorded);
        }
    }
    let unrecorded = shared::pipeline::dispatch::unrecorded_attempts() - unrecorded_before;
    assert!(
        unexplained as u64 <= unrecorded,
        "{unexplained} requests beyond the recorded attempts, {unrecorded} attempts unrecorded; {:?}",
        stack.invocations.lock().unwrap()
    );
    let invocations = stack.invocations.lock().unwrap().clone();
    let delivered = &invocations[local::DELIVER_FUNCTION];
    assert_eq!(
        delivered.timed_out, 0,
        "deliver was stopped at its deadline: {delivered:?}"
    );
    assert!(
        proxy.applied().keys().any(|k| k.contains(" Slow")),
        "{:?}",
        proxy.applied()
    );
    dlqs_are_empty(&stack).await;
    stack.stop().await;
}

/// Ingest and the API know their deadlines: with their writes slowed past them, ingest
/// reports the records it could not finish (they come back; none of its invocations is
/// stopped, none reaches the DLQ) and the API answers its own 503 `timeout` with
/// `Retry-After` before the gateway's; every event is delivered once in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_the_api_answer_before_their_deadlines() {
    let mut o = options(&[("DEADLINE_RESERVE_MS", "1500")]);
    for function in [local::INGEST_FUNCTION, local::API_FUNCTION] {
        o.function_timeouts
            .insert(function.into(), Duration::from_secs(4));
    }
    o.queue_overrides.insert(
        "IngestQueue".into(),
        [("VisibilityTimeout".to_owned(), "5".to_owned())].into(),
    );
    let (stack, proxy) = proxied(o).await;
    let api = Client::new(&stack);
    let v = venue();
    let rx = FaultReceiver::start(vec![Mode::Status(200)]).await;
    api.create_endpoint(&v, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    let slow = Duration::from_secs(10);
    for (function, delay) in [(local::INGEST_FUNCTION, 5), (local::API_FUNCTION, 6)] {
        let identity = stack.provisioned.identity_of(function).unwrap();
        proxy.inject_for(
            identity,
            "PutItem",
            Fault::Slow(Duration::from_secs(delay)),
            slow,
        );
    }
    let source = aws_sdk_sqs::Client::new(
        &stack
            .provisioned
            .identity_of(EVENT_SOURCE)
            .unwrap()
            .sdk_config(&direct().await),
    );
    let mut ids = BTreeSet::new();
    for i in 0..4 {
        let id = format!("queued-{i}");
        source
            .send_message()
            .queue_url(stack.queue_url("IngestQueue"))
            .message_body(
                json!({"venue_id": v, "id": id, "type": "order.created", "data": {"n": i}})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        ids.insert(id);
    }
    // The API's own answer, before the gateway's.
    let body = json!({"id": "http-slow", "type": "order.created", "data": {}});
    let started = Instant::now();
    let (status, answer) = api.post(&format!("/venues/{v}/events"), body.clone()).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "timeout", "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // Repeated until accepted, as a producer would.
    let accepted = eventually(WAIT, || async {
        let (status, _) = api.post(&format!("/venues/{v}/events"), body.clone()).await;
        (status == 202).then_some(())
    })
    .await;
    assert!(accepted.is_some());
    ids.insert("http-slow".into());

    let delivered = eventually(WAIT, || async {
        (event_ids(&rx.hits()) == ids).then_some(())
    })
    .await;
    assert!(delivered.is_some(), "got {:?}", event_ids(&rx.hits()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.hits().len(), ids.len(), "each event once");
    let applied = proxy.applied();
    assert!(
        applied.contains_key("PutItem Slow(5s)") && applied.contains_key("PutItem Slow(6s)"),
        "both functions' writes were slowed: {applied:?}"
    );
    let invocations = stack.invocations.lock().unwrap().clone();
    let ingested = &invocations[local::INGEST_FUNCTION];
    assert_eq!(ingested.timed_out, 0, "ingest was stopped: {ingested:?}");
    dlqs_are_empty(&stack).await;
    stack.stop().await;
}

/// At-least-once on the ingest queue: a message without an `id` that comes back (here its
/// jobs could not be queued: its event is stored, the message fails and is received again)
/// gets the same event id each time: one event stored, one fan-out, one `webhook-id` per
/// endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_event_without_an_id_that_comes_back_is_one_event() {
    let (stack, proxy) = proxied(options(&[])).await;
    let api = Client::new(&stack);
    let v = venue();
    let receivers = [
        FaultReceiver::start(vec![Mode::Status(200)]).await,
        FaultReceiver::start(vec![Mode::Status(200)]).await,
    ];
    for rx in &receivers {
        api.create_endpoint(&v, json!({"url": rx.url, "event_types": ["*"]}))
            .await;
    }
    let ingest = stack
        .provisioned
        .identity_of(local::INGEST_FUNCTION)
        .unwrap();
    proxy.inject_for(
        ingest,
        "SendMessageBatch",
        Fault::Throttled,
        Duration::from_secs(4),
    );
    let source = aws_sdk_sqs::Client::new(&stack.aws_of(EVENT_SOURCE).unwrap());
    source
        .send_message()
        .queue_url(stack.queue_url("IngestQueue"))
        .message_body(json!({"venue_id": v, "type": "order.created", "data": {"n": 1}}).to_string())
        .send()
        .await
        .unwrap();
    for rx in &receivers {
        let got = eventually(WAIT, || async { (!rx.hits().is_empty()).then_some(()) }).await;
        assert!(got.is_some(), "{}", function_errors());
    }
    // Anything stored and not queued is queued by the sweep (every second here): wait past
    // it, then count.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(proxy.applied().contains_key("SendMessageBatch Throttled"));
    for rx in &receivers {
        let ids = event_ids(&rx.hits());
        assert_eq!(ids.len(), 1, "one event reached this endpoint: {ids:?}");
        assert_eq!(rx.hits().len(), 1, "once");
    }
    let stored = all_items(&stack)
        .await
        .into_iter()
        .filter(|(table, item)| table == "EventsTable" && item.contains(&v))
        .count();
    assert_eq!(stored, 1, "one event stored");
    stack.stop().await;
}

/// Operational events are durable: with every write of the system venue's keys (its events,
/// its endpoints' history) throttled for a while, each still reaches the operational
/// endpoint, once; and deliveries failed for good at an endpoint are one event per window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_events_outlast_throttled_writes_and_lost_answers() {
    let (stack, proxy) = proxied(options(&[
        ("RETRY_SCHEDULE_SECONDS", "1"),
        ("EXHAUSTED_WINDOW_SECONDS", "1"),
        ("BREAKER_THRESHOLD", "100"),
    ]))
    .await;
    let (admin, ops_rx, _) = with_operational_endpoint(&stack).await;
    let v = venue();
    let failing = FaultReceiver::start(vec![Mode::Status(503)]).await;
    let mut endpoints = Vec::new();
    for types in [["*"], ["*"], ["*"], ["order.cancelled"]] {
        let ep = admin
            .create_endpoint(&v, json!({"url": failing.url, "event_types": types}))
            .await;
        endpoints.push(ep["id"].as_str().unwrap().to_owned());
    }
    let window = Duration::from_secs(8);
    proxy.inject_matching("PutItem", "_operational#", Fault::Throttled, window);
    proxy.inject_matching("UpdateItem", "_operational#", Fault::Throttled, window);
    // The endpoints' tallies are written, but their answers lost: every retry finds its
    // delivery counted already, and must still see the window closed and told.
    proxy.inject_matching("UpdateItem", "xh_", Fault::AnswerLost, window);
    for n in 0..2 {
        let (status, _) = admin
            .post(
                &format!("/venues/{v}/events"),
                json!({"type": "order.created", "data": {"n": n}}),
            )
            .await;
        assert_eq!(status, 202);
    }
    // Disabled by hand while the writes are throttled: said once all the same.
    let (status, _) = admin
        .patch(
            &format!("/venues/{v}/endpoints/{}", endpoints[3]),
            json!({"enabled": false}),
        )
        .await;
    assert_eq!(status, 200);

    // Each event once (by webhook-id), parsed.
    let heard = || {
        let mut seen = BTreeSet::new();
        ops_rx
            .received()
            .into_iter()
            .filter(|r| seen.insert(r.headers["webhook-id"].clone()))
            .map(|r| serde_json::from_str::<Value>(&r.body).unwrap())
            .collect::<Vec<_>>()
    };
    let counted = |events: &[Value], endpoint: &str| -> u64 {
        events
            .iter()
            .filter(|e| e["type"] == "delivery.exhausted" && e["data"]["endpoint_id"] == endpoint)
            .map(|e| e["data"]["count"].as_u64().unwrap())
            .sum()
    };
    let all = eventually(WAIT, || async {
        let events = heard();
        let disabled = events
            .iter()
            .filter(|e| e["type"] == "endpoint.disabled")
            .count();
        (endpoints[..3].iter().all(|e| counted(&events, e) == 2) && disabled == 1).then_some(events)
    })
    .await;
    let Some(events) = all else {
        panic!("heard: {:#?}; faults: {:?}", heard(), proxy.applied());
    };
    let applied = proxy.applied();
    assert!(
        applied.get("PutItem Throttled").copied().unwrap_or(0) > 0,
        "the system venue's writes were throttled: {applied:?}"
    );
    assert!(
        applied.get("UpdateItem AnswerLost").copied().unwrap_or(0) > 0,
        "tallies' answers were lost: {applied:?}"
    );
    // Two deliveries per endpoint failed a moment apart: one event each (two where a 1 s
    // window's end fell between them), never one per delivery and never a second copy.
    for endpoint in &endpoints[..3] {
        let of_it = events
            .iter()
            .filter(|e| e["type"] == "delivery.exhausted" && e["data"]["endpoint_id"] == *endpoint)
            .count();
        assert!((1..=2).contains(&of_it), "{events:#?}");
    }
    let disabled: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "endpoint.disabled")
        .collect();
    assert_eq!(disabled[0]["data"]["endpoint_id"], endpoints[3].as_str());
    assert_eq!(disabled[0]["data"]["reason"], "by_hand");
    // Nothing more comes, and nothing reached a dead-letter queue.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(heard().len(), events.len(), "{:#?}", heard());
    dlqs_are_empty(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_whose_answers_are_lost_are_taken_as_done_once() {
    let (stack, proxy) = proxied(options(&[("RETRY_SCHEDULE_SECONDS", "1")])).await;
    let api = Client::new(&stack);
    let v = venue();
    let rx = FaultReceiver::start(vec![Mode::Status(500)]).await;
    // The new endpoint is stored, and the answer lost: created all the same, once.
    proxy.inject_times("PutItem", &rx.url, Fault::AnswerLost, 1);
    let ep = api
        .create_endpoint(&v, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    let ep_id = ep["id"].as_str().unwrap();
    let (_, listed) = api.get(&format!("/venues/{v}/endpoints")).await;
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(1), "{listed}");
    // The first attempt's record lands and its answer is lost: the SDK's retry finds the
    // attempt there. Taken for another copy's, the retry would never be scheduled.
    proxy.inject_times("UpdateItem", "scheduled_attempts", Fault::AnswerLost, 1);
    publish(&api, &v, json!({"type": "order.created", "data": {"n": 1}})).await;
    let h = settled(&api, &v, ep_id, 1).await;
    assert_eq!(h[0]["status"], "failed", "{h:?}");
    let id = h[0]["id"].as_str().unwrap();
    let d = delivery(&api, &v, id).await;
    assert_eq!(d["attempt_count"], 2, "{d}");
    assert_eq!(d["attempts"].as_array().map(Vec::len), Some(2), "{d}");
    assert_eq!(rx.hits().len(), 2);

    // A manual retry's record, likewise: one attempt in the history, however often written.
    rx.set_script(vec![Mode::Status(200)]);
    proxy.inject_times("UpdateItem", id, Fault::AnswerLost, 1);
    let (status, attempt) = api
        .post(&format!("/venues/{v}/deliveries/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, 200, "{attempt}");
    let d = delivery(&api, &v, id).await;
    assert_eq!(d["status"], "succeeded", "{d}");
    assert_eq!(d["attempt_count"], 3, "{d}");
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{d}");
    assert_eq!(attempts[2]["trigger"], "manual");
    assert_eq!(proxy.applied().get("UpdateItem AnswerLost"), Some(&2));
    assert_eq!(proxy.applied().get("PutItem AnswerLost"), Some(&1));
    assert_eq!(rx.hits().len(), 3);
    dlqs_are_empty(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_failed_for_good_is_told_once_when_its_tally_is_done_again_later() {
    // Windows of 4 s. The first delivery's tally lands and every answer to it is lost (the
    // SDK's four tries): its job fails and comes back 5 s later, in another window, and
    // tallies it again. A second delivery, failed for good in the first window, closes and
    // tells that window, with the first delivery in it. Told once: 2 in all (a tally that
    // took the current window each time counted the first delivery twice: 3).
    let (stack, proxy) = proxied(options(&[
        ("RETRY_SCHEDULE_SECONDS", "1"),
        ("EXHAUSTED_WINDOW_SECONDS", "4"),
        ("BREAKER_THRESHOLD", "100"),
        ("OUTAGE_BACKOFF_BASE_MS", "5000"),
    ]))
    .await;
    let (admin, ops_rx, _) = with_operational_endpoint(&stack).await;
    let v = venue();
    let failing = FaultReceiver::start(vec![Mode::Status(503)]).await;
    let ep = admin
        .create_endpoint(&v, json!({"url": failing.url, "event_types": ["*"]}))
        .await;
    let ep_id = ep["id"].as_str().unwrap().to_owned();
    // Just after a window starts.
    let into = chrono::Utc::now().timestamp_millis().rem_euclid(4000) as u64;
    tokio::time::sleep(Duration::from_millis((4000 + 200 - into) % 4000)).await;
    proxy.inject_times("UpdateItem", "xh_", Fault::AnswerLost, 4);
    publish(
        &admin,
        &v,
        json!({"type": "order.created", "data": {"n": 1}}),
    )
    .await;
    // Failed for good about 2.9 s into the window, once the first one's tries are over.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    publish(
        &admin,
        &v,
        json!({"type": "order.created", "data": {"n": 2}}),
    )
    .await;
    let told = |ops_rx: &Receiver| -> Vec<Value> {
        let mut seen = BTreeSet::new();
        ops_rx
            .received()
            .into_iter()
            .filter(|r| seen.insert(r.headers["webhook-id"].clone()))
            .map(|r| serde_json::from_str::<Value>(&r.body).unwrap())
            .filter(|e| e["type"] == "delivery.exhausted" && e["data"]["endpoint_id"] == ep_id)
            .collect()
    };
    let counted = |events: &[Value]| -> u64 {
        events
            .iter()
            .map(|e| e["data"]["count"].as_u64().unwrap())
            .sum()
    };
    let both = eventually(WAIT, || async {
        (counted(&told(&ops_rx)) >= 2).then_some(())
    })
    .await;
    assert!(both.is_some(), "told: {:#?}", told(&ops_rx));
    // The first one's job came back and tallied it again: its window closes too, untold.
    // (Under load the second delivery's tally may take one of the four faults: then the
    // first one's tries end on a true answer, its job does not come back, and this run only
    // shows the count right.)
    let came_back = eventually(Duration::from_secs(30), || async {
        (failing.hits().len() >= 5).then_some(())
    })
    .await
    .is_some();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let events = told(&ops_rx);
    assert_eq!(counted(&events), 2, "came back: {came_back}; {events:#?}");
    assert_eq!(proxy.applied().get("UpdateItem AnswerLost"), Some(&4));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eventually_consistent_read_never_ends_a_delivery() {
    let (stack, proxy) = proxied(options(&[])).await;
    // Every read that is not strongly consistent finds nothing, as a stale replica would.
    proxy.inject("GetItem", Fault::StaleRead, Duration::from_secs(3600));
    proxy.inject("BatchGetItem", Fault::StaleRead, Duration::from_secs(3600));
    let api = Client::new(&stack);
    let v = venue();
    let rx = Receiver::start(200).await;
    // Created just before the events: the deliver function's read of it must see it.
    let ep = api
        .create_endpoint(&v, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    let ep_id = ep["id"].as_str().unwrap();
    // A small event travels in its job; a large one (over 16 KiB) is read from the table.
    let big = "x".repeat(20 * 1024);
    for data in [json!({"n": 1}), json!({"s": big})] {
        publish(&api, &v, json!({"type": "order.created", "data": data})).await;
    }
    let h = settled(&api, &v, ep_id, 2).await;
    assert!(h.iter().all(|d| d["status"] == "succeeded"), "{h:?}");
    assert_eq!(rx.wait_for(2, WAIT).await.len(), 2);

    // The fault is live: a read that may be stale (a delivery by id) is answered stale.
    let id = h[0]["id"].as_str().unwrap();
    let (status, _) = api.get(&format!("/venues/{v}/deliveries/{id}")).await;
    assert_eq!(
        status, 404,
        "the proxy did not answer the eventually consistent read"
    );
    assert!(proxy.applied().contains_key("BatchGetItem StaleRead"));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stored_while_the_queue_is_down_is_delivered_when_it_is_back() {
    let (stack, proxy) = proxied(options(&[])).await;
    let api = Client::new(&stack);
    let v = venue();
    let rx = Receiver::start(200).await;
    let ep = api
        .create_endpoint(&v, json!({"url": rx.url, "event_types": ["*"]}))
        .await;

    // SQS unreachable for 6 s: the event is stored, its jobs cannot be queued.
    proxy.inject("AmazonSQS.", Fault::Unavailable, Duration::from_secs(6));
    let (status, answer) = api
        .post(
            &format!("/venues/{v}/events"),
            json!({"id": "while-sqs-is-down", "type": "order.created", "data": {}}),
        )
        .await;
    // Accepted, and saying that its deliveries are not queued yet. The client gives up here.
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["queued"], false, "{answer}");
    assert!(rx.received().is_empty());

    // SQS is back: the sweep queues it, it is delivered once.
    let got = rx.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "not delivered:\n{}", function_errors());
    let h = settled(&api, &v, ep["id"].as_str().unwrap(), 1).await;
    assert_eq!(h[0]["status"], "succeeded");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rx.received().len(), 1, "delivered more than once");
    stack.stop().await;
}

/// The sweep of stored-but-unqueued events handles each note on its own: a note that cannot
/// be handled (its event does not read; its key names no event) is set aside after its tries,
/// kept for operators, and the events noted behind it are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_note_the_sweep_cannot_handle_is_set_aside_and_the_rest_go() {
    let (stack, proxy) = proxied(options(&[])).await;
    let api = Client::new(&stack);
    let v = venue();
    let rx = Receiver::start(200).await;
    api.create_endpoint(&v, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    // Two notes that sort before any venue's: one whose event item does not read, one whose
    // key names no event.
    let ddb = aws_sdk_dynamodb::Client::new(&direct().await);
    let events = stack.provisioned.physical["EventsTable"].clone();
    let s = |v: &str| aws_sdk_dynamodb::types::AttributeValue::S(v.to_owned());
    ddb.put_item()
        .table_name(&events)
        .item("venue_id", s("0-damaged"))
        .item("event_id", s("evt-damaged"))
        .item("data_z", s("not a blob"))
        .send()
        .await
        .unwrap();
    for key in ["0-damaged#evt-damaged", "0-no-event-named"] {
        ddb.put_item()
            .table_name(&events)
            .item("venue_id", s("#unqueued"))
            .item("event_id", s(key))
            .send()
            .await
            .unwrap();
    }
    // An event stored while SQS is down: noted behind them.
    proxy.inject("AmazonSQS.", Fault::Unavailable, Duration::from_secs(3));
    let (status, answer) = api
        .post(
            &format!("/venues/{v}/events"),
            json!({"id": "behind-the-bad-notes", "type": "order.created", "data": {}}),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["queued"], false, "{answer}");
    let got = rx.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "not delivered:\n{}", function_errors());
    // Both bad notes are set aside (after 5 tries: a sweep a second here) with their reason.
    let aside = eventually(WAIT, || async {
        let items = all_items(&stack).await;
        let aside: Vec<String> = items
            .iter()
            .filter(|(t, i)| t == "EventsTable" && i.contains("#unqueued-set-aside"))
            .map(|(_, i)| i.clone())
            .collect();
        let left = items
            .iter()
            .filter(|(t, i)| t == "EventsTable" && i.contains("S(\"#unqueued\")"))
            .count();
        (aside.len() == 2 && left == 0).then_some(aside)
    })
    .await
    .unwrap_or_else(|| panic!("not set aside: {:?}", function_errors()));
    assert!(
        aside.iter().any(|i| i.contains("0-no-event-named")),
        "{aside:?}"
    );
    assert!(aside.iter().all(|i| i.contains("reason")), "{aside:?}");
    assert_eq!(rx.received().len(), 1, "delivered once");
    stack.stop().await;
}

/// A venue's removal stopped mid-way (API Gateway's limit, here the api function's 3 s
/// timeout, with every batch write of the api held 4 s, so none is made): its continuation
/// was queued before the work, so the venue still ends with nothing stored: keys, endpoints,
/// events and history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_stopped_mid_way_still_leaves_nothing() {
    let mut o = options(&[("PURGE_PAGE_SIZE", "25"), ("PURGE_INLINE_STEPS", "100")]);
    o.function_timeouts
        .insert(local::API_FUNCTION.into(), Duration::from_secs(3));
    let (stack, proxy) = proxied(o).await;
    let api = Client::new(&stack);
    let v = venue();
    let rx = Receiver::start(200).await;
    api.create_endpoint(&v, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    let (status, _) = api.post(&format!("/venues/{v}/api-keys"), json!({})).await;
    assert_eq!(status, 201);
    for i in 0..6 {
        publish(&api, &v, json!({"type": "order.created", "data": {"n": i}})).await;
    }
    rx.wait_for(6, WAIT).await;
    let api_identity = stack.provisioned.identity_of(local::API_FUNCTION).unwrap();
    proxy.inject_for(
        api_identity,
        "BatchWriteItem",
        Fault::Slow(Duration::from_secs(4)),
        WAIT,
    );
    let (status, answer) = api.delete(&format!("/venues/{v}")).await;
    assert_eq!(status, 503, "the request was not stopped: {answer}");
    let stored = || async {
        all_items(&stack)
            .await
            .into_iter()
            .filter(|(_, item)| item.contains(&v) && !item.contains(&format!("rmv_{v}")))
            .map(|(table, item)| format!("{table}: {item}"))
            .collect::<Vec<String>>()
    };
    let gone = eventually(WAIT, || async { stored().await.is_empty().then_some(()) }).await;
    assert!(
        gone.is_some(),
        "the venue's items are still stored: {:?}\n{}",
        stored().await,
        function_errors()
    );
    let (_, endpoints) = api.get(&format!("/venues/{v}/endpoints")).await;
    assert_eq!(endpoints["data"], json!([]));
    let (_, keys) = api.get(&format!("/venues/{v}/api-keys")).await;
    assert_eq!(keys["data"], json!([]));
    stack.abort();
}

/// `n` events to an endpoint whose receiver fails: each ends `failed` after 2 attempts.
async fn failed_deliveries(api: &Client, v: &str, endpoint: &str, n: usize) {
    for i in 0..n {
        publish(api, v, json!({"type": "order.created", "data": {"n": i}})).await;
    }
    let h = settled(api, v, endpoint, n).await;
    assert!(h.iter().all(|d| d["status"] == "failed"), "{h:?}");
}

/// At-least-once on the delivery queue: a replay task received twice (here a copy of it sent
/// again as it starts) queues each page once, so each failed delivery is sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_task_received_twice_queues_each_page_once() {
    let mut o = options(&[("RETRY_SCHEDULE_SECONDS", "0.2"), ("REPLAY_PAGE_SIZE", "2")]);
    // As long as the template's: no job is received again while it is processed, so a
    // request twice can only come from a page queued twice.
    o.queue_overrides.insert(
        "DeliveryQueue".into(),
        [("VisibilityTimeout".to_owned(), "30".to_owned())].into(),
    );
    let stack = start_with(o).await;
    let api = Client::new(&stack);
    let v = venue();
    let rx = FaultReceiver::start(vec![Mode::Status(500)]).await;
    let ep = api
        .create_endpoint(&v, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    let ep = ep["id"].as_str().unwrap().to_owned();
    let since = chrono::Utc::now() - chrono::Duration::seconds(5);
    failed_deliveries(&api, &v, &ep, 8).await;
    rx.set_script(vec![Mode::Status(200)]);
    let before = rx.hits().len();
    let (status, replay) = api
        .post(
            &format!("/venues/{v}/endpoints/{ep}/replay"),
            json!({"since": since.to_rfc3339()}),
        )
        .await;
    assert_eq!(status, 202, "{replay}");
    let task =
        json!({"replay": {"venue_id": v, "endpoint_id": ep, "replay_id": replay["replay_id"]}});
    let sqs = aws_sdk_sqs::Client::new(&direct().await);
    for _ in 0..2 {
        sqs.send_message()
            .queue_url(stack.queue_url("DeliveryQueue"))
            .message_body(task.to_string())
            .send()
            .await
            .unwrap();
    }
    let all = eventually(WAIT, || async {
        let h = history(&api, &v, &ep).await;
        h.iter().all(|d| d["status"] == "succeeded").then_some(())
    })
    .await;
    assert!(all.is_some(), "replayed deliveries succeed");
    // Past the copies' comings back (a busy page waits its outage backoff, 0.5 s here).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        rx.hits().len() - before,
        8,
        "each failed delivery sent once"
    );
    stack.stop().await;
}

/// A replay goes through the breaker like any traffic: replaying 60 failed deliveries to a
/// receiver that still fails opens the endpoint's circuit at its threshold (5) and stops
/// sending, instead of 60 requests; the replay waits for the circuit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_to_a_receiver_still_down_stops_at_the_breaker() {
    let mut o = options(&[("RETRY_SCHEDULE_SECONDS", "0.2")]);
    let first = start_with(o.clone()).await;
    let api = Client::new(&first);
    let v = venue();
    let rx = FaultReceiver::start(vec![Mode::Status(500)]).await;
    let ep = api
        .create_endpoint(&v, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    let ep = ep["id"].as_str().unwrap().to_owned();
    let since = chrono::Utc::now() - chrono::Duration::seconds(5);
    failed_deliveries(&api, &v, &ep, 60).await;
    first.abort();
    // The same tables, the breaker at its usual strictness.
    o.env_overrides
        .insert("BREAKER_THRESHOLD".into(), "5".into());
    let stack = start_with(o).await;
    let api = Client::new(&stack);
    // One delivery retried by hand while the receiver is up: its failure count starts
    // again from nothing. Then the receiver is down again, and the rest are replayed.
    rx.set_script(vec![Mode::Status(200)]);
    let one = history(&api, &v, &ep).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, retried) = api
        .post(&format!("/venues/{v}/deliveries/{one}/retry"), json!({}))
        .await;
    assert_eq!(
        (status, &retried["status_code"]),
        (200, &json!(200)),
        "{retried}"
    );
    rx.set_script(vec![Mode::Status(500)]);
    let before = rx.hits().len();
    let (status, replay) = api
        .post(
            &format!("/venues/{v}/endpoints/{ep}/replay"),
            json!({"since": since.to_rfc3339()}),
        )
        .await;
    assert_eq!(status, 202, "{replay}");
    assert_eq!(replay["replaying"], 59, "{replay}");
    let replay_id = replay["replay_id"].as_str().unwrap().to_owned();
    // Its first page is the breaker's threshold; those five fail, the circuit opens, and the
    // replay waits for it (a 30 s cooldown) instead of sending the rest.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let sent = rx.hits().len() - before;
    assert_eq!(sent, 5, "the circuit should open at 5 and hold the rest");
    let (_, progress) = api
        .get(&format!("/venues/{v}/endpoints/{ep}/replays/{replay_id}"))
        .await;
    assert_eq!(
        (&progress["state"], &progress["queued"]),
        (&json!("running"), &json!(5)),
        "{progress}"
    );
    stack.abort();
}

/// SQS refuses U+FFFE and U+FFFF in a message (moto takes them; the local stand-in refuses
/// them as SQS does). Event data may hold them: they reach the receiver as published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noncharacters_in_event_data_reach_the_receiver_as_published() {
    let stack = start_with(options(&[])).await;
    let api = Client::new(&stack);
    let v = venue();
    let rx = Receiver::start(200).await;
    api.create_endpoint(&v, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    let note = "before\u{FFFE}between\u{FFFF}after";
    let answer = publish(
        &api,
        &v,
        json!({"type": "order.created", "data": {"note": note}}),
    )
    .await;
    assert_eq!(answer["queued"], true, "{answer}");
    let got = rx.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "not delivered:\n{}", function_errors());
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["data"]["note"], note);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_delivery_of_a_job_spoils_nothing_else() {
    // The event is fanned out first, the endpoints damaged after, then the job runs.
    let mut first = options(&[]);
    first.run_deliver = false;
    let prefix = first.prefix.clone();
    let stack = start_with(first).await;
    let api = Client::new(&stack);
    let v = venue();
    let tampered_rx = Receiver::start(200).await;
    let corrupt_rx = Receiver::start(200).await;
    let flaky = FaultReceiver::start(vec![Mode::Status(500), Mode::Status(200)]).await;
    let tampered = api
        .create_endpoint(&v, json!({"url": tampered_rx.url, "event_types": ["*"]}))
        .await;
    let corrupt = api
        .create_endpoint(&v, json!({"url": corrupt_rx.url, "event_types": ["*"]}))
        .await;
    let good = api
        .create_endpoint(&v, json!({"url": flaky.url, "event_types": ["*"]}))
        .await;

    // One event: one job for the three endpoints.
    let answer = publish(&api, &v, json!({"type": "order.created", "data": {"n": 1}})).await;

    // Damage two endpoints at rest: a sealed secret that no longer opens, and an item that
    // no longer reads as an endpoint.
    let ddb = aws_sdk_dynamodb::Client::new(&direct().await);
    let table = &stack.provisioned.physical["EndpointsTable"];
    let key = |ep: &Value| {
        use aws_sdk_dynamodb::types::AttributeValue as V;
        std::collections::HashMap::from([
            ("venue_id".to_owned(), V::S(v.clone())),
            (
                "endpoint_id".to_owned(),
                V::S(ep["id"].as_str().unwrap().to_owned()),
            ),
        ])
    };
    let item = ddb
        .get_item()
        .table_name(table)
        .set_key(Some(key(&tampered)))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    let auth = item["auth"].as_m().unwrap();
    let secrets = auth["secrets"].as_l().unwrap();
    let sealed = secrets[0].as_m().unwrap()["sealed"].as_m().unwrap();
    let ciphertext = sealed["ciphertext"].as_s().unwrap();
    let mut flipped: Vec<u8> = ciphertext.bytes().collect();
    flipped[2] = if flipped[2] == b'A' { b'B' } else { b'A' };
    ddb.update_item()
        .table_name(table)
        .set_key(Some(key(&tampered)))
        .update_expression("SET #auth.secrets[0].sealed.ciphertext = :c")
        .expression_attribute_names("#auth", "auth")
        .expression_attribute_values(
            ":c",
            aws_sdk_dynamodb::types::AttributeValue::S(String::from_utf8(flipped).unwrap()),
        )
        .send()
        .await
        .unwrap();
    ddb.update_item()
        .table_name(table)
        .set_key(Some(key(&corrupt)))
        .update_expression("SET payload_format = :n")
        .expression_attribute_values(":n", aws_sdk_dynamodb::types::AttributeValue::N("7".into()))
        .send()
        .await
        .unwrap();

    stack.stop().await;
    let mut second = options(&[]);
    second.prefix = prefix;
    let stack = start_with(second).await;
    let api = Client::new(&stack);

    // The good endpoint: failed first (500), retried on its own, delivered.
    let h = settled(&api, &v, good["id"].as_str().unwrap(), 1).await;
    assert_eq!(h[0]["status"], "succeeded", "{h:?}");
    let d = delivery(&api, &v, h[0]["id"].as_str().unwrap()).await;
    let codes: Vec<Value> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].clone())
        .collect();
    assert_eq!(codes, vec![json!(500), json!(200)]);

    // The tampered one: failed for good, with its reason, nothing sent.
    let h = settled(&api, &v, tampered["id"].as_str().unwrap(), 1).await;
    assert_eq!(h[0]["status"], "failed", "{h:?}");
    let d = delivery(&api, &v, h[0]["id"].as_str().unwrap()).await;
    let attempt = &d["attempts"][0];
    assert_eq!(attempt["error_class"], "secret", "{d}");
    assert!(attempt["hint"].as_str().unwrap().contains("rotate"), "{d}");
    assert!(tampered_rx.received().is_empty());

    // The unreadable one (its history page needs the endpoint, so read through the event):
    // failed with the reason, nothing sent.
    let event_id = answer["id"].as_str().unwrap();
    let corrupt_id = corrupt["id"].as_str().unwrap();
    let found = eventually(WAIT, || async {
        let (_, event) = api.get(&format!("/venues/{v}/events/{event_id}")).await;
        event["deliveries"]
            .as_array()?
            .iter()
            .find(|d| d["endpoint_id"] == corrupt_id && d["status"] == "failed")
            .cloned()
    })
    .await
    .expect("the unreadable endpoint's delivery failed");
    let d = delivery(&api, &v, found["id"].as_str().unwrap()).await;
    assert!(
        d["last_error"]
            .as_str()
            .unwrap()
            .contains("could not be read"),
        "{d}"
    );
    assert!(corrupt_rx.received().is_empty());

    // Publishing goes on: the others get the event (the unreadable endpoint's subscriptions
    // still read from the fan-out index; its delivery ends as above).
    publish(&api, &v, json!({"type": "order.created", "data": {"n": 2}})).await;
    assert_eq!(flaky.wait_for(3, WAIT).await.len(), 3);
    stack.stop().await;
}

/// One delivery, pending after a failed first attempt, its retry job in hand; the test then
/// runs the scheduled attempt (the deliver handler, as Lambda would) and a manual one.
struct Race {
    stack: Stack,
    api: Client,
    venue: String,
    delivery_id: String,
    receiver: FaultReceiver,
    deliver: deliver::Deliver,
    trigger: local::provision::QueueTrigger,
    retry_job: Vec<aws_sdk_sqs::types::Message>,
}

impl Race {
    /// The receiver fails the first attempt, then answers the next one slowly with a 500
    /// and the one after at once with a 200.
    async fn start() -> Self {
        let script = vec![
            Mode::Status(500),
            Mode::Delayed(Duration::from_millis(1500), 500),
            Mode::Status(200),
        ];
        let mut o = options(&[]);
        o.run_deliver = false;
        let overrides = o.env_overrides.clone();
        let stack = start_with(o).await;
        let api = Client::new(&stack);
        let venue = venue();
        let receiver = FaultReceiver::start(script).await;
        let ep = api
            .create_endpoint(&venue, json!({"url": receiver.url, "event_types": ["*"]}))
            .await;
        publish(&api, &venue, json!({"type": "order.created", "data": {}})).await;
        let (deliver, sqs, trigger) = played_deliver(&stack, &overrides);
        // The first attempt fails: pending, its retry due in about a second.
        let first = receive_jobs(&sqs, &trigger.queue_url, 1, Duration::from_secs(15)).await;
        let response = deliver
            .handle(local::esm::to_event(&trigger, &first).unwrap())
            .await;
        // The job leaves the queue (the mapping deletes it); its retry is a job of its own,
        // delayed: nothing waits in flight.
        assert!(
            response.batch_item_failures.is_empty(),
            "the job is done; its retry waits as a new message"
        );
        sqs.delete_message()
            .queue_url(&trigger.queue_url)
            .receipt_handle(first[0].receipt_handle().unwrap())
            .send()
            .await
            .unwrap();
        let h = history(&api, &venue, ep["id"].as_str().unwrap()).await;
        assert_eq!(h[0]["status"], "pending");
        let delivery_id = h[0]["id"].as_str().unwrap().to_owned();
        let retry_job = receive_jobs(&sqs, &trigger.queue_url, 1, Duration::from_secs(15)).await;
        assert_eq!(retry_job.len(), 1);
        Race {
            stack,
            api,
            venue,
            delivery_id,
            receiver,
            deliver,
            trigger,
            retry_job,
        }
    }

    async fn scheduled(&self) {
        self.deliver
            .handle(local::esm::to_event(&self.trigger, &self.retry_job).unwrap())
            .await;
    }

    async fn manual(&self) {
        let (status, answer) = self
            .api
            .post(
                &format!(
                    "/venues/{}/deliveries/{}/retry",
                    self.venue, self.delivery_id
                ),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
    }

    /// `slow` starts first (and meets the slow failure); the other starts 400 ms later and
    /// succeeds first. Then: the delivery ends succeeded, with all three attempts, and
    /// nothing more is sent.
    async fn slow_then_fast(self, slow: Trigger) {
        let this = &self;
        let later = |trigger: Trigger| async move {
            if trigger != slow {
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            match trigger {
                Trigger::Manual => this.manual().await,
                _ => this.scheduled().await,
            }
        };
        tokio::join!(later(Trigger::Manual), later(Trigger::Scheduled));
        self.check().await;
    }

    async fn check(self) {
        let d = delivery(&self.api, &self.venue, &self.delivery_id).await;
        assert_eq!(d["status"], "succeeded", "{d}");
        assert_eq!(d["attempt_count"], 3, "{d}");
        assert!(d["next_attempt_at"].is_null(), "{d}");
        let triggers: BTreeMap<String, usize> =
            d["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .fold(BTreeMap::new(), |mut m, a| {
                    *m.entry(a["trigger"].as_str().unwrap().to_owned())
                        .or_default() += 1;
                    m
                });
        assert_eq!(
            triggers,
            BTreeMap::from([("manual".into(), 1), ("scheduled".into(), 2)])
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            self.receiver.hits().len(),
            3,
            "sent again after it succeeded"
        );
        self.stack.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_stays_when_a_slower_manual_attempt_fails() {
    // The manual attempt reads "pending", is slow and fails; meanwhile the scheduled one
    // succeeds. The manual failure must not make it pending (or failed) again.
    Race::start().await.slow_then_fast(Trigger::Manual).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_stays_when_a_slower_scheduled_attempt_fails() {
    // The scheduled attempt is slow and fails; meanwhile a manual one succeeds.
    Race::start().await.slow_then_fast(Trigger::Scheduled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_item_stays_small_whatever_the_receiver_answers() {
    let stack = start_with(options(&[])).await;
    let api = Client::new(&stack);
    let v = venue();
    // 4 KiB of 0xFF: each byte becomes a three-byte U+FFFD when made text.
    let rx = FaultReceiver::start(vec![Mode::Body(200, vec![0xFF; 4096])]).await;
    let ep = api
        .create_endpoint(&v, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    publish(&api, &v, json!({"type": "order.created", "data": {}})).await;
    let h = settled(&api, &v, ep["id"].as_str().unwrap(), 1).await;
    let id = h[0]["id"].as_str().unwrap().to_owned();
    for _ in 0..40 {
        let (status, answer) = api
            .post(&format!("/venues/{v}/deliveries/{id}/retry"), json!({}))
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    let d = delivery(&api, &v, &id).await;
    assert_eq!(d["attempt_count"], 41);
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        shared::storage::store::MAX_KEPT_ATTEMPTS,
        "the last ones kept"
    );
    assert_eq!(attempts.last().unwrap()["attempt"], 41);
    // The latest answer is kept (older attempts keep status and error only), each cut.
    assert!(
        attempts.last().unwrap()["response_body"].is_string(),
        "{attempts:?}"
    );
    for a in attempts {
        if let Some(body) = a["response_body"].as_str() {
            assert!(body.len() <= 4096, "{} bytes kept", body.len());
        }
    }
    // Another attempt still records, and the item is far below DynamoDB's 400 KB.
    let (status, _) = api
        .post(&format!("/venues/{v}/deliveries/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(delivery(&api, &v, &id).await["attempt_count"], 42);
    let ddb = aws_sdk_dynamodb::Client::new(&direct().await);
    let item = ddb
        .get_item()
        .table_name(&stack.provisioned.physical["DeliveriesTable"])
        .key(
            "history_key",
            aws_sdk_dynamodb::types::AttributeValue::S(shared::storage::store::history_partition(
                &shared::model::ids::VenueId::parse(&v).unwrap(),
                shared::model::ids::DeliveryId::parse(&id).unwrap().tag(),
            )),
        )
        .key(
            "delivery_id",
            aws_sdk_dynamodb::types::AttributeValue::S(id.clone()),
        )
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    let size = format!("{item:?}").len();
    assert!(size < 100 * 1024, "the item is about {size} bytes");
    stack.stop().await;
}

fn doubling(levels: usize) -> String {
    vec!["{a:@,b:@}"; levels].join(" | ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_cannot_take_the_function_down() {
    let stack = start_with(options(&[])).await;
    let api = Client::new(&stack);
    let v = venue();

    // Refused on save, at once.
    let started = Instant::now();
    let (status, answer) = api
        .post(
            &format!("/venues/{v}/endpoints"),
            json!({"url": "http://127.0.0.1:9/hooks", "event_types": ["*"],
                   "payload_format": "template", "template": doubling(40)}),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(answer.to_string().contains("template"), "{answer}");

    // Templates that only fail on real data, in one job with an endpoint that works.
    let ok = Receiver::start(200).await;
    let big = Receiver::start(200).await;
    let boom = Receiver::start(200).await;
    let ok_ep = api
        .create_endpoint(&v, json!({"url": ok.url, "event_types": ["*"]}))
        .await;
    // Seven copies of a field: fine on the catalog example, too large on a 40 KiB one.
    let big_ep = api
        .create_endpoint(
            &v,
            json!({"url": big.url, "event_types": ["*"], "payload_format": "template",
                   "template": "{a: data.s, b: data.s, c: data.s, d: data.s, e: data.s, f: data.s, g: data.s}"}),
        )
        .await;
    // One saved before templates were bounded (written to the table directly): it doubles
    // its input forty times when the event carries `boom`.
    let boom_ep = api
        .create_endpoint(
            &v,
            json!({"url": boom.url, "event_types": ["*"], "payload_format": "template",
                   "template": "{t: 'ok'}"}),
        )
        .await;
    let ddb = aws_sdk_dynamodb::Client::new(&direct().await);
    ddb.update_item()
        .table_name(&stack.provisioned.physical["EndpointsTable"])
        .key(
            "venue_id",
            aws_sdk_dynamodb::types::AttributeValue::S(v.clone()),
        )
        .key(
            "endpoint_id",
            aws_sdk_dynamodb::types::AttributeValue::S(boom_ep["id"].as_str().unwrap().into()),
        )
        .update_expression("SET #t = :t")
        .expression_attribute_names("#t", "template")
        .expression_attribute_values(
            ":t",
            aws_sdk_dynamodb::types::AttributeValue::S(format!(
                "data.boom && ({}) || {{t: 'ok'}}",
                doubling(40)
            )),
        )
        .send()
        .await
        .unwrap();

    publish(
        &api,
        &v,
        json!({"type": "order.created", "data": {"boom": true, "s": "x".repeat(40 * 1024)}}),
    )
    .await;
    let started = Instant::now();
    let h = settled(&api, &v, ok_ep["id"].as_str().unwrap(), 1).await;
    assert_eq!(h[0]["status"], "succeeded");
    for (ep, what) in [
        (&big_ep, "more than 262144 bytes"),
        (&boom_ep, "times the size"),
    ] {
        let h = settled(&api, &v, ep["id"].as_str().unwrap(), 1).await;
        assert_eq!(h[0]["status"], "failed", "{h:?}");
        let d = delivery(&api, &v, h[0]["id"].as_str().unwrap()).await;
        assert_eq!(d["attempts"][0]["error_class"], "template", "{d}");
        assert!(
            d["attempts"][0]["error"].as_str().unwrap().contains(what),
            "{d}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(big.received().is_empty() && boom.received().is_empty());
    assert_eq!(ok.received().len(), 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_backs_off_instead_of_using_up_the_receives() {
    // The delivery queue's own visibility timeout is a minute here: only the function's
    // backoff can bring a job back sooner.
    let mut o = options(&[("OUTAGE_BACKOFF_BASE_MS", "1000")]);
    o.queue_overrides.insert(
        "DeliveryQueue".into(),
        [("VisibilityTimeout".to_owned(), "60".to_owned())].into(),
    );
    let (stack, proxy) = proxied(o).await;
    let api = Client::new(&stack);
    let v = venue();
    let rx = Receiver::start(200).await;
    let ep = api
        .create_endpoint(&v, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    // DynamoDB down for the deliver function for 6 s; the event is accepted meanwhile.
    let deliver = stack
        .provisioned
        .identity_of(local::DELIVER_FUNCTION)
        .unwrap();
    proxy.inject_for(
        deliver,
        "DynamoDB_20120810.",
        Fault::Unavailable,
        Duration::from_secs(6),
    );
    let started = Instant::now();
    publish(&api, &v, json!({"type": "order.created", "data": {}})).await;
    let h = settled(&api, &v, ep["id"].as_str().unwrap(), 1).await;
    assert_eq!(h[0]["status"], "succeeded");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(40),
        "back after {took:?}: the backoff did not set the wait"
    );
    let invocations = stack.invocations.lock().unwrap()[local::DELIVER_FUNCTION].count;
    assert!(
        invocations <= 8,
        "{invocations} invocations: the job spun instead of backing off"
    );
    let failures = proxy.applied().values().sum::<usize>();
    assert!(failures > 0, "the outage never met the job");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_queues_can_be_put_back() {
    // A job and an event that ended in their DLQs (as after an outage longer than the
    // receives), put back by the code `make redrive` runs, once the cause is gone.
    let mut o = options(&[]);
    o.run_deliver = false;
    o.run_ingest = false;
    let prefix = o.prefix.clone();
    let stack = start_with(o).await;
    let api = Client::new(&stack);
    let v = venue();
    let rx = Receiver::start(200).await;
    api.create_endpoint(&v, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    publish(
        &api,
        &v,
        json!({"id": "via-http", "type": "order.created", "data": {}}),
    )
    .await;
    let sqs = aws_sdk_sqs::Client::new(&stack.aws);
    let job = receive_jobs(
        &sqs,
        stack.queue_url("DeliveryQueue"),
        1,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(job.len(), 1);
    sqs.send_message()
        .queue_url(stack.queue_url("DeliveryDeadLetterQueue"))
        .message_body(job[0].body().unwrap())
        .send()
        .await
        .unwrap();
    sqs.delete_message()
        .queue_url(stack.queue_url("DeliveryQueue"))
        .receipt_handle(job[0].receipt_handle().unwrap())
        .send()
        .await
        .unwrap();
    sqs.send_message()
        .queue_url(stack.queue_url("IngestDeadLetterQueue"))
        .message_body(
            json!({"venue_id": v, "id": "via-queue", "type": "order.created", "data": {}})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    let urls = stack.provisioned.physical.clone();
    stack.stop().await;

    let mut moved = 0;
    for (dlq, queue) in local::redrive::dead_letter_pairs(&local::default_template()).unwrap() {
        moved += local::redrive::redrive(&sqs, &urls[&dlq], &urls[&queue])
            .await
            .unwrap();
    }
    assert_eq!(moved, 2);
    for dlq in ["DeliveryDeadLetterQueue", "IngestDeadLetterQueue"] {
        assert_eq!(on_queue(&sqs, &urls[dlq]).await, 0);
    }

    let mut o = options(&[]);
    o.prefix = prefix;
    let stack = start_with(o).await;
    let got = rx.wait_for(2, WAIT).await;
    assert_eq!(
        event_ids_of(&got),
        BTreeSet::from(["via-http".to_owned(), "via-queue".to_owned()])
    );
    stack.stop().await;
}

fn event_ids_of(got: &[Captured]) -> BTreeSet<String> {
    got.iter()
        .filter_map(|c| serde_json::from_str::<Value>(&c.body).ok())
        .filter_map(|b| b["id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_one_item_at_once_all_land() {
    // DynamoDB applies each write to an item atomically: sixteen UpdateItems adding to one
    // item that is not there yet leave sixteen (moto, in steps, lost one now and then: two
    // deliveries failed for good at once were told as one). Rounds, so that a race shows.
    let stack = start_with(options(&[])).await;
    let ddb = aws_sdk_dynamodb::Client::new(&direct().await);
    let table = stack.provisioned.physical["DeliveriesTable"].clone();
    let partition = format!("atomic-{}", unique_prefix());
    let s = aws_sdk_dynamodb::types::AttributeValue::S;
    let mut short = Vec::new();
    for round in 0..150 {
        let key = format!("xh_{round:012}");
        let writes: Vec<_> = (0..16)
            .map(|i| {
                let write = ddb
                    .update_item()
                    .table_name(&table)
                    .key("history_key", s(partition.clone()))
                    .key("delivery_id", s(key.clone()))
                    .update_expression("ADD n :one, ids :id")
                    .expression_attribute_values(
                        ":one",
                        aws_sdk_dynamodb::types::AttributeValue::N("1".into()),
                    )
                    .expression_attribute_values(
                        ":id",
                        aws_sdk_dynamodb::types::AttributeValue::Ss(vec![i.to_string()]),
                    );
                tokio::spawn(write.send())
            })
            .collect();
        for write in writes {
            write.await.unwrap().unwrap();
        }
        let item = ddb
            .get_item()
            .table_name(&table)
            .key("history_key", s(partition.clone()))
            .key("delivery_id", s(key))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
            .unwrap();
        let n: u32 = item["n"].as_n().unwrap().parse().unwrap();
        if n != 16 {
            short.push((round, n));
        }
    }
    assert!(
        short.is_empty(),
        "rounds that kept fewer than 16: {short:?}"
    );
    stack.stop().await;
}
