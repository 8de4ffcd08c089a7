//! An endpoint's backlog (`shared::pipeline::backlog`): deliveries that meet an open circuit
//! or a disabled endpoint are recorded once as held (pending in history, with the reason and
//! the next look), leave the queue, and go oldest first when the endpoint can take them.
//! On the fault suite's compressed clock.

use std::time::Duration;

use integration_tests::faults::{FaultReceiver, Mode};
use integration_tests::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(40);

async fn publish_numbered(api: &Client, venue: &str, numbers: std::ops::Range<u64>) {
    for n in numbers {
        let (status, body) = api
            .post(
                &format!("/venues/{venue}/events"),
                json!({"type": "order.created", "data": {"n": n}}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
}

/// The endpoint's deliveries (one page of up to 100).
async fn deliveries(api: &Client, endpoint: &str, query: &str) -> Vec<Value> {
    let (status, page) = api
        .get(&format!("{endpoint}/deliveries?limit=100{query}"))
        .await;
    assert_eq!(status, 200, "{page}");
    page["data"].as_array().cloned().unwrap_or_default()
}

/// The `n` of each event a receiver got, in the order it got them.
fn numbers(bodies: impl Iterator<Item = String>) -> Vec<u64> {
    bodies
        .filter_map(|b| serde_json::from_str::<Value>(&b).ok())
        .filter_map(|v| v["data"]["n"].as_u64())
        .collect()
}

/// Messages on the delivery queue, visible, delayed or in flight.
async fn on_queue(stack: &local::Stack) -> u64 {
    let sqs = aws_sdk_sqs::Client::new(&stack.aws);
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(stack.queue_url("DeliveryQueue"))
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap_or_default();
    [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    .iter()
    .map(|name| {
        attrs
            .get(&aws_sdk_sqs::types::QueueAttributeName::from(*name))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    })
    .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_endpoint_keeps_its_events_and_gets_them_when_enabled() {
    let stack = start_with(compressed_options(&[])).await;
    let rx = Receiver::start(200).await;
    let api = Client::new(&stack);
    let venue = format!("kept-{}", unique_prefix());
    let ep = api
        .create_endpoint(&venue, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    let endpoint = format!("/venues/{venue}/endpoints/{}", ep["id"].as_str().unwrap());
    let (status, body) = api.patch(&endpoint, json!({"enabled": false})).await;
    assert_eq!(status, 200, "{body}");

    publish_numbered(&api, &venue, 0..5).await;
    // Each is in history, pending, saying why; nothing reached the receiver.
    let held = eventually(WAIT, || async {
        let list = deliveries(&api, &endpoint, "&status=pending").await;
        (list.len() == 5 && list.iter().all(|d| d["held"].is_object())).then_some(list)
    })
    .await
    .expect("5 deliveries held for the disabled endpoint");
    for d in &held {
        assert_eq!(d["status"], "pending", "{d}");
        assert_eq!(d["held"]["reason"], "endpoint_disabled", "{d}");
        assert!(d["held"]["message"]
            .as_str()
            .unwrap()
            .contains("enabled again"));
        assert_eq!(d["held"]["next_look"], Value::Null, "{d}");
        assert_eq!(d["attempt_count"], 0, "{d}");
    }
    // The event's own view shows the delivery too.
    let event_id = held[0]["event_id"].as_str().unwrap();
    let (status, event) = api.get(&format!("/venues/{venue}/events/{event_id}")).await;
    assert_eq!(status, 200, "{event}");
    assert!(
        event.to_string().contains(held[0]["id"].as_str().unwrap()),
        "{event}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        rx.received().is_empty(),
        "a disabled endpoint got a request"
    );

    // Enabled again: the five go (one page: at once), and history says delivered.
    let (status, body) = api.patch(&endpoint, json!({"enabled": true})).await;
    assert_eq!(status, 200, "{body}");
    let delivered = eventually(WAIT, || async {
        let list = deliveries(&api, &endpoint, "").await;
        (list.len() == 5 && list.iter().all(|d| d["status"] == "succeeded")).then_some(list)
    })
    .await
    .expect("the five are delivered once the endpoint is enabled");
    assert!(delivered.iter().all(|d| d["held"].is_null()));
    let mut got = numbers(rx.received().into_iter().map(|c| c.body));
    got.sort_unstable();
    assert_eq!(got, vec![0, 1, 2, 3, 4], "each once");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_held_at_an_open_circuit_show_in_history_and_go_when_a_probe_succeeds() {
    // Opens after 3 failures in a row, for 3 s (up to 6 s).
    let stack = start_with(compressed_options(&[
        ("BREAKER_THRESHOLD", "3"),
        ("BREAKER_COOLDOWN_MS", "3000"),
        ("BREAKER_MAX_COOLDOWN_MS", "6000"),
        ("RETRY_SCHEDULE_SECONDS", "1,1,1,1,1,1,1,1"),
    ]))
    .await;
    let rx = FaultReceiver::start(vec![Mode::Status(503)]).await;
    let api = Client::new(&stack);
    let venue = format!("held-{}", unique_prefix());
    let ep = api
        .create_endpoint(&venue, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    let endpoint = format!("/venues/{venue}/endpoints/{}", ep["id"].as_str().unwrap());
    publish_numbered(&api, &venue, 0..3).await;
    eventually(WAIT, || async {
        let (_, ep) = api.get(&endpoint).await;
        (ep["circuit"]["state"] == "open").then_some(())
    })
    .await
    .expect("the circuit opens");

    // Published while it is open: each recorded once as held, with the next look; their
    // jobs left the queue (what is left there: the loop's step, the first three's retries).
    publish_numbered(&api, &venue, 3..23).await;
    let held = eventually(WAIT, || async {
        let list = deliveries(&api, &endpoint, "&status=pending").await;
        let held: Vec<Value> = list
            .into_iter()
            .filter(|d| d["held"]["reason"] == "circuit_open")
            .collect();
        (held.len() >= 20).then_some(held)
    })
    .await
    .expect("the deliveries published while the circuit is open are held, in history");
    for d in &held {
        assert!(d["held"]["next_look"].is_string(), "{d}");
        assert!(d["held"]["message"].as_str().unwrap().contains("circuit"));
    }
    let (_, stats) = api.get(&format!("{endpoint}/stats")).await;
    assert!(
        stats["deliveries"]["pending"].as_u64().unwrap() >= 20,
        "{stats}"
    );
    let waiting = on_queue(&stack).await;
    assert!(
        waiting <= 6,
        "{waiting} messages on the queue for 20 held deliveries"
    );
    // Retried by hand while the receiver still fails: the attempt is recorded, and the
    // delivery stays held (its backlog still releases it; nothing else would).
    let tried = held[0]["id"].as_str().unwrap();
    let (status, answer) = api
        .post(
            &format!("/venues/{venue}/deliveries/{tried}/retry"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let (_, after) = api
        .get(&format!("/venues/{venue}/deliveries/{tried}"))
        .await;
    assert_eq!(after["status"], "pending", "{after}");
    assert_eq!(after["attempt_count"], 1, "{after}");
    assert_eq!(
        after["held"]["reason"], "circuit_open",
        "still held: {after}"
    );

    // The receiver is back: a probe closes the circuit, and every delivery goes; those held
    // go oldest first (a page at a time; a page's attempts run at once).
    let before = rx.hits().len();
    rx.set_script(vec![Mode::Status(200)]);
    let delivered = eventually(Duration::from_secs(60), || async {
        let list = deliveries(&api, &endpoint, "").await;
        (list.len() == 23 && list.iter().all(|d| d["status"] == "succeeded")).then_some(list)
    })
    .await;
    assert!(
        delivered.is_some(),
        "every delivery succeeds once the receiver is back: {:#}",
        json!(deliveries(&api, &endpoint, "").await)
    );
    let mut order = Vec::new();
    for n in numbers(rx.hits()[before..].iter().map(|h| h.body.clone())) {
        if !order.contains(&n) {
            order.push(n);
        }
    }
    assert_eq!(order.len(), 23, "each delivered: {order:?}");
    for (i, later) in order.iter().enumerate() {
        for earlier in &order[..i] {
            assert!(
                *earlier < later + 12,
                "{earlier} went before {later}, far older: {order:?}"
            );
        }
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_endpoint_gets_its_deliveries_at_its_pace() {
    // A delivery waits the last second or two before its turn in the invocation: the
    // delivery queue's visibility timeout as deployed (180 s), not the compressed 2 s.
    let mut options = compressed_options(&[]);
    options.queue_overrides.remove("DeliveryQueue");
    let stack = start_with(options).await;
    let rx = FaultReceiver::start(vec![Mode::Status(200)]).await;
    let api = Client::new(&stack);
    let venue = format!("paced-{}", unique_prefix());
    // Bad limits are refused and change nothing.
    for bad in [json!(0), json!(-1), json!(1.5), json!("5"), json!(10_001)] {
        let (status, body) = api
            .post(
                &format!("/venues/{venue}/endpoints"),
                json!({"url": rx.url, "event_types": ["*"], "rate_limit": bad}),
            )
            .await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
    let (_, listed) = api.get(&format!("/venues/{venue}/endpoints")).await;
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(0), "{listed}");
    let ep = api
        .create_endpoint(
            &venue,
            json!({"url": rx.url, "event_types": ["*"], "rate_limit": 20}),
        )
        .await;
    assert_eq!(ep["rate_limit"], 20, "{ep}");
    let endpoint = format!("/venues/{venue}/endpoints/{}", ep["id"].as_str().unwrap());
    let (status, body) = api.patch(&endpoint, json!({"rate_limit": 0})).await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = api.patch(&endpoint, json!({"rate_limit": 5})).await;
    assert_eq!((status, &body["rate_limit"]), (200, &json!(5)), "{body}");

    // 50 events at 5 a second: they arrive over at least 9 s, each once, all succeeded,
    // about 5 in any second: each at its turn, to within milliseconds, unless the queue
    // hands its job back late, which then goes at once (up to about twice the limit).
    let started = std::time::Instant::now();
    publish_numbered(&api, &venue, 0..50).await;
    eventually(Duration::from_secs(60), || async {
        (rx.hits().len() >= 50).then_some(())
    })
    .await
    .expect("50 requests");
    let hits = rx.hits();
    let mut numbers = numbers(hits.iter().map(|h| h.body.clone()));
    numbers.sort_unstable();
    assert_eq!(numbers, (0..50).collect::<Vec<_>>(), "each once");
    let arrivals: Vec<std::time::Instant> = hits.iter().map(|h| h.at).collect();
    let span = *arrivals.last().unwrap() - arrivals[0];
    assert!(span >= Duration::from_secs(9), "50 arrived within {span:?}");
    let busiest = arrivals
        .iter()
        .map(|t| {
            arrivals
                .iter()
                .filter(|u| **u >= *t && **u < *t + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    let offsets: Vec<u128> = arrivals
        .iter()
        .map(|t| (*t - arrivals[0]).as_millis())
        .collect();
    assert!(busiest <= 12, "{busiest} within one second: {offsets:?}");
    let delivered = eventually(WAIT, || async {
        let list = deliveries(&api, &endpoint, "").await;
        (list.len() == 50 && list.iter().all(|d| d["status"] == "succeeded")).then_some(())
    })
    .await;
    assert!(delivered.is_some(), "all 50 succeeded in history");
    println!(
        "paced: 50 deliveries at 5/s over {span:?} ({:?} after the first publish), at most {busiest} in a second",
        started.elapsed()
    );
    // No limit again: the next ones go at once.
    let (status, body) = api.patch(&endpoint, json!({"rate_limit": null})).await;
    assert_eq!((status, &body["rate_limit"]), (200, &Value::Null), "{body}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_held_at_an_open_circuit_is_one_item_shown_delivery_by_delivery() {
    // Opens after 3 failures in a row, for 3 s (up to 6 s).
    let stack = start_with(compressed_options(&[
        ("BREAKER_THRESHOLD", "3"),
        ("BREAKER_COOLDOWN_MS", "3000"),
        ("BREAKER_MAX_COOLDOWN_MS", "6000"),
        ("RETRY_SCHEDULE_SECONDS", "1,1,1,1,1,1,1,1"),
    ]))
    .await;
    let rx = FaultReceiver::start(vec![Mode::Status(503)]).await;
    let api = Client::new(&stack);
    let venue = format!("heldbatch-{}", unique_prefix());
    let ep = api
        .create_endpoint(&venue, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    let ep_id = ep["id"].as_str().unwrap().to_owned();
    let endpoint = format!("/venues/{venue}/endpoints/{ep_id}");
    publish_numbered(&api, &venue, 0..3).await;
    eventually(WAIT, || async {
        let (_, ep) = api.get(&endpoint).await;
        (ep["circuit"]["state"] == "open").then_some(())
    })
    .await
    .expect("the circuit opens");

    // Ten events in one batch of the ingest queue: one group at this endpoint, held.
    let source = aws_sdk_sqs::Client::new(&stack.aws_of(local::iam::EVENT_SOURCE).unwrap());
    let mut send = source
        .send_message_batch()
        .queue_url(stack.queue_url("IngestQueue"));
    for n in 100..110u64 {
        let body = json!({"venue_id": venue, "id": format!("batch-{n}"), "type": "order.created", "data": {"n": n}});
        send = send.entries(
            aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                .id(n.to_string())
                .message_body(body.to_string())
                .build()
                .unwrap(),
        );
    }
    assert!(send.send().await.unwrap().failed.is_empty());
    let held = eventually(WAIT, || async {
        let list = deliveries(&api, &endpoint, "&status=pending").await;
        let held: Vec<Value> = list
            .into_iter()
            .filter(|d| d["held"]["reason"] == "circuit_open")
            .filter(|d| d["event_id"].as_str().unwrap_or("").starts_with("batch-"))
            .collect();
        (held.len() == 10).then_some(held)
    })
    .await
    .expect("each of the ten shows in history as pending, held");
    for d in &held {
        assert_eq!(d["attempt_count"], 0, "{d}");
        assert!(d["held"]["next_look"].is_string(), "{d}");
        // Its own page too, and the event's view.
        let id = d["id"].as_str().unwrap();
        let (status, one) = api.get(&format!("/venues/{venue}/deliveries/{id}")).await;
        assert_eq!(status, 200, "{one}");
        assert_eq!(one["status"], "pending", "{one}");
        assert_eq!(one["held"]["reason"], "circuit_open", "{one}");
        let event = d["event_id"].as_str().unwrap();
        let (status, ev) = api.get(&format!("/venues/{venue}/events/{event}")).await;
        assert_eq!(status, 200, "{ev}");
        assert!(
            ev.to_string().contains(id),
            "the event's view names its delivery: {ev}"
        );
    }
    // Recorded together: the ten are one item of the endpoint's history.
    let tag = shared::model::ids::EndpointId::parse(&ep_id).unwrap().tag();
    let items = aws_sdk_dynamodb::Client::new(&stack.aws)
        .query()
        .table_name(&stack.provisioned.physical["DeliveriesTable"])
        .key_condition_expression("history_key = :h AND begins_with(delivery_id, :d)")
        .expression_attribute_values(
            ":h",
            aws_sdk_dynamodb::types::AttributeValue::S(shared::storage::store::history_partition(
                &shared::model::ids::VenueId::parse(&venue).unwrap(),
                tag,
            )),
        )
        .expression_attribute_values(
            ":d",
            aws_sdk_dynamodb::types::AttributeValue::S("dlv_".into()),
        )
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    let holding: Vec<_> = items
        .iter()
        .filter(|i| i.contains_key("held_members"))
        .collect();
    assert_eq!(holding.len(), 1, "one item holds the ten: {items:?}");

    // Back: the ten go, each once, and history shows each succeeded.
    let before = rx.hits().len();
    rx.set_script(vec![Mode::Status(200)]);
    let done = eventually(Duration::from_secs(60), || async {
        let list = deliveries(&api, &endpoint, "").await;
        (list.len() == 13 && list.iter().all(|d| d["status"] == "succeeded")).then_some(list)
    })
    .await;
    assert!(
        done.is_some(),
        "every delivery succeeds once the receiver is back: {:#}",
        json!(deliveries(&api, &endpoint, "").await)
    );
    let mut got: Vec<u64> = numbers(rx.hits()[before..].iter().map(|h| h.body.clone()))
        .into_iter()
        .filter(|n| *n >= 100)
        .collect();
    got.sort_unstable();
    assert_eq!(got, (100..110).collect::<Vec<_>>(), "each of the ten once");
    assert!(deliveries(&api, &endpoint, "&status=pending")
        .await
        .is_empty());
    stack.stop().await;
}
