//! End to end on the local stack (moto + the three functions + real HTTP receivers).

use std::collections::HashSet;
use std::time::Duration;

use integration_tests::*;
use local::iam::EVENT_SOURCE;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

fn venue() -> String {
    format!("venue-{}", unique_prefix())
}

/// The `reason` attributes of up to `n` messages of a dead-letter queue (waits up to `WAIT`).
async fn dead_letter_reasons(sqs: &aws_sdk_sqs::Client, dlq: &str, n: usize) -> Vec<String> {
    let mut reasons = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while reasons.len() < n && tokio::time::Instant::now() < deadline {
        let out = sqs
            .receive_message()
            .queue_url(dlq)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        for m in out.messages.unwrap_or_default() {
            reasons.push(
                m.message_attributes
                    .and_then(|a| a.get("reason").and_then(|r| r.string_value.clone()))
                    .unwrap_or_default(),
            );
        }
    }
    reasons
}

async fn deliveries_of(api: &Client, venue: &str, endpoint: &str) -> Vec<Value> {
    let (status, page) = api
        .get(&format!("/venues/{venue}/endpoints/{endpoint}/deliveries"))
        .await;
    assert_eq!(status, 200, "{page}");
    page["data"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribed_endpoints_receive_exact_signed_envelopes_from_http_and_queue() {
    let stack = start_stack().await;
    let api = Client::new(&stack);
    let venue = venue();

    let signed_rx = Receiver::start(200).await;
    let bearer_rx = Receiver::start(204).await;
    let unsubscribed_rx = Receiver::start(200).await;
    let disabled_rx = Receiver::start(200).await;

    let signed = api
        .create_endpoint(
            &venue,
            json!({"url": signed_rx.url, "event_types": ["order.*"], "description": "CRM"}),
        )
        .await;
    let secret = signed["secret"]
        .as_str()
        .expect("secret shown once")
        .to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(signed["auth"]["mode"], "signed_secret");

    let token = "venue-own-token-0123456789";
    let bearer = api
        .create_endpoint(
            &venue,
            json!({"url": bearer_rx.url, "event_types": ["order.created"],
                   "auth": {"mode": "bearer_token", "token": token}}),
        )
        .await;
    assert_eq!(bearer["token"], token);
    api.create_endpoint(
        &venue,
        json!({"url": unsubscribed_rx.url, "event_types": ["registration.*"]}),
    )
    .await;
    api.create_endpoint(
        &venue,
        json!({"url": disabled_rx.url, "event_types": ["*"], "enabled": false}),
    )
    .await;

    // Reads never show the secret again.
    let signed_id = signed["id"].as_str().unwrap().to_owned();
    let (status, read) = api
        .get(&format!("/venues/{venue}/endpoints/{signed_id}"))
        .await;
    assert_eq!(status, 200);
    assert!(read.get("secret").is_none());
    assert!(!read.to_string().contains(&secret[6..]));
    assert_eq!(
        read["auth"]["secret_hint"],
        format!("whsec_…{}", &secret[secret.len() - 4..])
    );

    // One event over HTTP, one through the ingest queue.
    let (status, published) = api
        .post(
            &format!("/venues/{venue}/events"),
            json!({"type": "order.created", "data": {"order_id": "o-1", "total": 12.5, "items": [1, 2]},
                   "timestamp": "2026-11-27T10:15:00Z"}),
        )
        .await;
    assert_eq!(status, 202, "{published}");
    let http_event_id = published["id"].as_str().unwrap().to_owned();
    assert!(http_event_id.starts_with("evt_"));

    // As an event source would: under the identity allowed only to send to the ingest queue.
    let sqs = aws_sdk_sqs::Client::new(&stack.aws_of(EVENT_SOURCE).unwrap());
    sqs.send_message()
        .queue_url(stack.queue_url("IngestQueue"))
        .message_body(
            json!({"venue_id": venue, "type": "order.created", "id": "order-2-created",
                   "timestamp": "2026-11-27T10:16:00Z", "data": {"order_id": "o-2"}})
            .to_string(),
        )
        .send()
        .await
        .expect("send to ingest queue");

    let got = signed_rx.wait_for(2, WAIT).await;
    assert_eq!(
        got.len(),
        2,
        "signed endpoint gets both events; the functions logged:\n{}",
        function_errors()
    );
    let bodies: HashSet<String> = got.iter().map(|c| c.body.clone()).collect();
    let expected: HashSet<String> = [
        format!(r#"{{"id":"{http_event_id}","type":"order.created","timestamp":"2026-11-27T10:15:00Z","data":{{"order_id":"o-1","total":12.5,"items":[1,2]}}}}"#),
        r#"{"id":"order-2-created","type":"order.created","timestamp":"2026-11-27T10:16:00Z","data":{"order_id":"o-2"}}"#.to_owned(),
    ]
    .into();
    assert_eq!(bodies, expected);
    for c in &got {
        assert_eq!(c.headers["content-type"], "application/json");
        assert!(c.headers["user-agent"].starts_with("PopupWebhooks/"));
        let body: Value = serde_json::from_str(&c.body).unwrap();
        assert_eq!(c.headers["webhook-id"], body["id"].as_str().unwrap());
        assert!(!c.headers.contains_key("authorization"));
    }
    assert_eq!(verify_with_python(&secret, &got), vec!["ok", "ok"]);
    assert_eq!(verify_with_node(&secret, &got), vec!["ok", "ok"]);
    // A wrong secret must fail, or the verifiers prove nothing.
    let other = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    assert!(verify_with_python(other, &got[..1])[0].starts_with("fail"));
    assert!(verify_with_node(other, &got[..1])[0].starts_with("fail"));

    let got = bearer_rx.wait_for(2, WAIT).await;
    assert_eq!(got.len(), 2);
    for c in &got {
        assert_eq!(c.headers["authorization"], format!("Bearer {token}"));
        assert!(!c.headers.contains_key("webhook-signature"));
    }

    // Let any stray delivery arrive before checking that none did.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        unsubscribed_rx.received().is_empty(),
        "unsubscribed endpoint got a request"
    );
    assert!(
        disabled_rx.received().is_empty(),
        "disabled endpoint got a request"
    );

    // History: each delivery with its attempt.
    let history = eventually(WAIT, || async {
        let h = deliveries_of(&api, &venue, &signed_id).await;
        (h.len() == 2 && h.iter().all(|d| d["status"] == "succeeded")).then_some(h)
    })
    .await
    .expect("history shows both deliveries succeeded");
    assert!(
        history[0]["id"].as_str() > history[1]["id"].as_str(),
        "newest first"
    );
    for d in &history {
        assert_eq!(d["attempt_count"], 1);
        assert_eq!(d["last_status_code"], 200);
    }
    let delivery_id = history[0]["id"].as_str().unwrap();
    let (status, delivery) = api
        .get(&format!("/venues/{venue}/deliveries/{delivery_id}"))
        .await;
    assert_eq!(status, 200);
    let attempts = delivery["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(attempts[0]["trigger"], "scheduled");
    assert_eq!(attempts[0]["status_code"], 200);
    assert_eq!(attempts[0]["response_body"], "receiver answered 200");
    assert!(attempts[0]["duration_ms"].is_u64());

    // The event shows where it went: the signed and the bearer endpoint, both succeeded;
    // the disabled endpoint keeps it, held, for when it is enabled again.
    let (status, event) = api
        .get(&format!("/venues/{venue}/events/order-2-created"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(event["type"], "order.created");
    assert_eq!(event["data"], json!({"order_id": "o-2"}));
    let went = event["deliveries"].as_array().unwrap();
    let mut statuses: Vec<&str> = went.iter().map(|d| d["status"].as_str().unwrap()).collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        vec!["pending", "succeeded", "succeeded"],
        "{event}"
    );
    let kept = went.iter().find(|d| d["status"] == "pending").unwrap();
    assert_eq!(kept["held"]["reason"], "endpoint_disabled", "{event}");

    stack.stop().await;
}

/// A message's `MessageGroupId` (the venue, for delivery jobs).
fn group_of(message: &aws_sdk_sqs::types::Message) -> Option<&str> {
    message
        .attributes()?
        .get(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId)
        .map(String::as_str)
}

/// A stack whose deliver function the test plays, calling its handler as Lambda would; a
/// venue with one endpoint per receiver status, and events published to all of them, accepted
/// together as one batch of the ingest function is (so the first attempts of the events at
/// one endpoint are one job).
struct PlayedDeliver {
    stack: local::Stack,
    api: Client,
    venue: String,
    receivers: Vec<Receiver>,
    ids: Vec<String>,
    sqs: aws_sdk_sqs::Client,
    trigger: local::provision::QueueTrigger,
    deliver: deliver::Deliver,
}

impl PlayedDeliver {
    async fn start(statuses: &[u16], events: &[Value]) -> Self {
        let mut options = local_options();
        options.run_deliver = false;
        let stack = start_with(options).await;
        let api = Client::new(&stack);
        let venue = venue();
        let mut receivers = Vec::new();
        let mut ids = Vec::new();
        for status in statuses {
            let rx = Receiver::start(*status).await;
            let ep = api
                .create_endpoint(&venue, json!({"url": rx.url, "event_types": ["*"]}))
                .await;
            ids.push(ep["id"].as_str().unwrap().to_owned());
            receivers.push(rx);
        }
        publish_together(&stack, &venue, events).await;
        let (deliver, sqs, trigger) = played_deliver(&stack, &Default::default());
        Self {
            stack,
            api,
            venue,
            receivers,
            ids,
            sqs,
            trigger,
            deliver,
        }
    }

    async fn receive(&self, want: usize, within: Duration) -> Vec<aws_sdk_sqs::types::Message> {
        receive_jobs(&self.sqs, &self.trigger.queue_url, want, within).await
    }

    async fn handle(
        &self,
        messages: &[aws_sdk_sqs::types::Message],
    ) -> aws_lambda_events::event::sqs::SqsBatchResponse {
        self.deliver
            .handle(local::esm::to_event(&self.trigger, messages).unwrap())
            .await
    }

    /// Requests each receiver got so far, in the order of `statuses`.
    fn hits(&self) -> Vec<usize> {
        self.receivers.iter().map(|r| r.received().len()).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_leaves_the_batch_alone_and_retries_on_its_own() {
    let t = PlayedDeliver::start(
        &[200, 201, 500],
        &[json!({"type": "registration.created", "data": {"attendee": "A"}})],
    )
    .await;
    let (api, venue, ids) = (&t.api, &t.venue, &t.ids);

    // A job per endpoint, handled as one batch.
    let messages = t.receive(3, Duration::from_secs(10)).await;
    assert_eq!(
        messages.len(),
        3,
        "one job for each of the event's endpoints"
    );
    for message in &messages {
        // The venue is the job's fair-queue group.
        assert_eq!(group_of(message), Some(venue.as_str()));
        let job: Value = serde_json::from_str(message.body().unwrap()).unwrap();
        assert_eq!(job["deliveries"].as_array().unwrap().len(), 1, "{job}");
    }
    let response = t.handle(&messages).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "the batch is done: its failed delivery was queued on its own"
    );
    assert_eq!(t.hits(), vec![1, 1, 1]);

    let failing_history = deliveries_of(api, venue, &ids[2]).await;
    assert_eq!(failing_history.len(), 1);
    assert_eq!(failing_history[0]["status"], "pending");
    assert_eq!(failing_history[0]["last_status_code"], 500);
    let (_, pending) = api
        .get(&format!(
            "/venues/{venue}/endpoints/{}/deliveries?status=pending",
            ids[2]
        ))
        .await;
    assert_eq!(pending["data"].as_array().unwrap().len(), 1);
    let (_, succeeded) = api
        .get(&format!(
            "/venues/{venue}/endpoints/{}/deliveries?status=succeeded",
            ids[2]
        ))
        .await;
    assert!(succeeded["data"].as_array().unwrap().is_empty());
    for (id, code) in ids[..2].iter().zip([200, 201]) {
        let h = deliveries_of(api, venue, id).await;
        assert_eq!(h.len(), 1);
        assert_eq!(h[0]["status"], "succeeded");
        assert_eq!(h[0]["attempt_count"], 1);
        let (status, one) = api
            .get(&format!(
                "/venues/{venue}/deliveries/{}",
                h[0]["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(status, 200);
        assert_eq!(one["attempts"][0]["status_code"], json!(code));
    }

    // The retry (5 s ± 20%) comes back as a job of its own; failing again, that job is done
    // too, and its next wait (5 min) is a new message, delayed: nothing waits in flight.
    let retry = t.receive(1, Duration::from_secs(12)).await;
    assert_eq!(retry.len(), 1, "the failed delivery came back on its own");
    let job: Value = serde_json::from_str(retry[0].body().unwrap()).unwrap();
    assert_eq!(job["endpoint_id"], json!(ids[2]), "{job}");
    assert_eq!(group_of(&retry[0]), Some(venue.as_str()));
    assert_eq!(job["deliveries"].as_array().unwrap().len(), 1, "{job}");
    let response = t.handle(&retry).await;
    let failed: Vec<String> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    let attributes = t
        .sqs
        .get_queue_attributes()
        .queue_url(&t.trigger.queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .unwrap();
    let delayed = attributes
        .attributes()
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        })
        .cloned();
    assert_eq!(
        delayed.as_deref(),
        Some("1"),
        "the next retry waits, delayed"
    );
    assert_eq!(t.hits(), vec![1, 1, 2], "no one else got it again");
    let history = deliveries_of(api, venue, &ids[2]).await;
    assert_eq!(history[0]["attempt_count"], 2);
    assert_eq!(history[0]["status"], "pending");
    t.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_several_back_again_sends_only_what_is_not_recorded() {
    // Three events accepted together: their first attempts at the endpoint are one job.
    let events: Vec<Value> = (1..=3)
        .map(|n| json!({"type": "order.created", "data": {"n": n}}))
        .collect();
    let t = PlayedDeliver::start(&[200], &events).await;
    t.receivers[0].answer(r#""n":3"#, 503);
    let first = t.receive(1, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 1);
    let job: Value = serde_json::from_str(first[0].body().unwrap()).unwrap();
    assert_eq!(job["deliveries"].as_array().unwrap().len(), 3, "{job}");
    assert!(t.handle(&first).await.batch_item_failures.is_empty());
    assert_eq!(t.hits(), vec![3]);

    // As if the worker had died before Lambda deleted the message: it comes back (second
    // receive). The two successes are recorded, the failure waits for its retry: nothing is
    // sent again now.
    t.sqs
        .change_message_visibility()
        .queue_url(&t.trigger.queue_url)
        .receipt_handle(first[0].receipt_handle().unwrap())
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();
    let again = t.receive(1, Duration::from_secs(10)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].message_id, first[0].message_id,
        "the same job, back"
    );
    let receive_count = again[0].attributes().and_then(|a| {
        a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
    });
    assert_eq!(receive_count.map(String::as_str), Some("2"));
    assert!(t.handle(&again).await.batch_item_failures.is_empty());
    assert_eq!(
        t.hits(),
        vec![3],
        "nothing re-sent: the successes are recorded, the failure is not due"
    );
    let h = deliveries_of(&t.api, &t.venue, &t.ids[0]).await;
    let states: Vec<(Option<&str>, Option<u64>)> = h
        .iter()
        .map(|d| (d["status"].as_str(), d["attempt_count"].as_u64()))
        .collect();
    assert_eq!(h.len(), 3, "{h:?}");
    assert_eq!(
        states
            .iter()
            .filter(|s| **s == (Some("succeeded"), Some(1)))
            .count(),
        2,
        "{h:?}"
    );
    assert!(states.contains(&(Some("pending"), Some(1))), "{h:?}");
    // Each of the three reads back by its id, the two successes from their group's one item.
    for d in &h {
        let (status, one) = t
            .api
            .get(&format!(
                "/venues/{}/deliveries/{}",
                t.venue,
                d["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!((status, &one["event_id"]), (200, &d["event_id"]), "{one}");
    }
    t.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_retry_of_a_first_try_success_keeps_one_history_entry() {
    let stack = start_stack().await;
    let api = Client::new(&stack);
    let venue = venue();
    let a = Receiver::start(200).await;
    let b = Receiver::start(200).await;
    let mut ids = Vec::new();
    for rx in [&a, &b] {
        let ep = api
            .create_endpoint(&venue, json!({"url": rx.url, "event_types": ["*"]}))
            .await;
        ids.push(ep["id"].as_str().unwrap().to_owned());
    }
    let (status, published) = api
        .post(
            &format!("/venues/{venue}/events"),
            json!({"type": "order.created", "id": "order-77", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(status, 202, "{published}");
    a.wait_for(1, WAIT).await;
    b.wait_for(1, WAIT).await;
    let first = eventually(WAIT, || async {
        let h = deliveries_of(&api, &venue, &ids[0]).await;
        (h.len() == 1 && h[0]["status"] == "succeeded").then(|| h[0].clone())
    })
    .await
    .expect("the first attempt is in history");
    let id = first["id"].as_str().unwrap();

    let (status, attempt) = api
        .post(&format!("/venues/{venue}/deliveries/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, 200, "{attempt}");
    assert_eq!(
        (attempt["trigger"].clone(), attempt["attempt"].clone()),
        (json!("manual"), json!(2))
    );
    assert_eq!(a.received().len(), 2);
    assert_eq!(b.received().len(), 1);

    // Still one delivery for the endpoint, now with both attempts; the other endpoint's
    // delivery of the same event is untouched.
    let history = deliveries_of(&api, &venue, &ids[0]).await;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["id"], json!(id));
    assert_eq!(history[0]["attempt_count"], 2);
    let (_, one) = api.get(&format!("/venues/{venue}/deliveries/{id}")).await;
    let triggers: Vec<&str> = one["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["trigger"].as_str().unwrap())
        .collect();
    assert_eq!(triggers, vec!["scheduled", "manual"]);
    let other = deliveries_of(&api, &venue, &ids[1]).await;
    assert_eq!(other.len(), 1);
    assert_eq!(other[0]["attempt_count"], 1);
    let (_, event) = api.get(&format!("/venues/{venue}/events/order-77")).await;
    let counts: Vec<u64> = event["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["attempt_count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, vec![2, 1]);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_signatures_match_the_python_reference_library() {
    let secrets = [
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
        shared::model::secret::Secret::generate_signing()
            .expose()
            .to_owned(),
        shared::model::secret::Secret::generate_signing()
            .expose()
            .to_owned(),
    ];
    let bodies = [
        r#"{"test": 2432232314}"#.to_owned(),
        r#"{"id":"evt_1","type":"order.created","timestamp":"2026-11-27T10:15:00Z","data":{"name":"Zoë ✓"}}"#.to_owned(),
        "x".repeat(70_000),
    ];
    let mut inputs = Vec::new();
    for (i, secret) in secrets.iter().enumerate() {
        for (j, body) in bodies.iter().enumerate() {
            inputs.push((
                secret.clone(),
                format!("evt_{i}_{j}"),
                1_614_265_330 + (i * 10 + j) as i64,
                body.clone(),
            ));
        }
    }
    let reference = sign_with_python(&inputs);
    assert_eq!(reference.len(), inputs.len());
    for ((secret, id, ts, body), expected) in inputs.iter().zip(reference) {
        let secret: shared::model::secret::Secret = serde_json::from_value(json!(secret)).unwrap();
        let key = secret.signing_key().unwrap();
        assert_eq!(
            shared::delivery::signing::sign(&key, id, *ts, body.as_bytes()),
            expected
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_stores_nothing() {
    let stack = start_stack().await;
    let api = Client::new(&stack);
    let venue = venue();
    let endpoints = format!("/venues/{venue}/endpoints");
    let events = format!("/venues/{venue}/events");
    let good_url = "http://127.0.0.1:9/hooks";
    let limit_zero = format!("{endpoints}?limit=0");
    let unknown_endpoint = format!("{endpoints}/ep_nope");
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("POST", &endpoints, b"not json".to_vec(), 400, "invalid_json"),
        ("POST", &endpoints, b"".to_vec(), 400, "invalid_json"),
        ("POST", &endpoints, br#"{"event_types":["*"]}"#.to_vec(), 422, "missing field `url`"),
        ("POST", &endpoints, format!(r#"{{"url":"{good_url}","event_types":"*"}}"#).into_bytes(), 422, "invalid type"),
        ("POST", &endpoints, format!(r#"{{"url":"{good_url}","event_types":["*"],"auth":{{"mode":"basic"}}}}"#).into_bytes(), 422, "unknown variant `basic`"),
        ("POST", &endpoints, br#"{"url":"not a url","event_types":["*"]}"#.to_vec(), 422, "url:"),
        ("POST", &endpoints, br#"{"url":"ftp://127.0.0.1/x","event_types":["*"]}"#.to_vec(), 422, "scheme must be https"),
        ("POST", &endpoints, br#"{"url":"https://10.0.0.7/x","event_types":["*"]}"#.to_vec(), 422, "public internet address"),
        ("POST", &endpoints, br#"{"url":"https://169.254.169.254/latest","event_types":["*"]}"#.to_vec(), 422, "public internet address"),
        ("POST", &endpoints, format!(r#"{{"url":"{good_url}","event_types":["order created"]}}"#).into_bytes(), 422, "event_types"),
        ("POST", &endpoints, format!(r#"{{"url":"{good_url}","event_types":[]}}"#).into_bytes(), 422, "at least one"),
        ("POST", &endpoints, format!(r#"{{"url":"{good_url}","event_types":["*"],"colour":"red"}}"#).into_bytes(), 422, "unknown field `colour`"),
        ("POST", &endpoints, format!(r#"{{"url":"{good_url}","event_types":["*"],"auth":{{"mode":"bearer_token","token":"short"}}}}"#).into_bytes(), 422, "16 to 256"),
        ("POST", &events, br#"{"type":"order created","data":{}}"#.to_vec(), 422, "not an event type"),
        ("POST", &events, br#"{"type":"order.created","data":[1]}"#.to_vec(), 422, "JSON object"),
        ("POST", &events, br#"{"type":"order.created","data":{},"id":"has.dot"}"#.to_vec(), 422, "event id"),
        ("POST", &events, br#"{"type":"order.created","data":{},"timestamp":"yesterday"}"#.to_vec(), 422, "RFC 3339"),
        ("POST", &events, format!(r#"{{"type":"order.created","data":{{"blob":"{}"}}}}"#, "x".repeat(300 * 1024)).into_bytes(), 413, "limit"),
        ("GET", &limit_zero, Vec::new(), 422, "limit"),
        ("GET", &unknown_endpoint, Vec::new(), 404, "endpoint not found"),
        ("PUT", &endpoints, Vec::new(), 405, "not supported"),
        ("GET", "/nowhere", Vec::new(), 404, "route"),
    ];
    for (method, path, body, status, needle) in cases {
        let body = (!body.is_empty()).then_some(body);
        let (got, answer) = api.send_raw(method, path, body).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        let message = format!("{} {}", answer["error"]["code"], answer["error"]["message"]);
        assert!(
            message.contains(needle),
            "{method} {path}: `{message}` lacks `{needle}`"
        );
    }

    let (status, answer) = Client::without_key(&stack).get(&endpoints).await;
    assert_eq!(status, 401);
    assert_eq!(answer["error"]["code"], "unauthorized");
    let mut wrong = Client::new(&stack);
    wrong.key = Some("not-the-key".into());
    assert_eq!(wrong.get(&endpoints).await.0, 401);
    assert_eq!(
        wrong
            .post(&endpoints, json!({"url": good_url, "event_types": ["*"]}))
            .await
            .0,
        401
    );

    // Nothing was stored.
    let (status, list) = api.get(&endpoints).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"], json!([]));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_paginate_patch_and_delete() {
    let stack = start_stack().await;
    let api = Client::new(&stack);
    let venue = venue();
    let rx = Receiver::start(200).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let ep = api
            .create_endpoint(
                &venue,
                json!({"url": rx.url, "event_types": ["order.created"], "description": format!("n{i}")}),
            )
            .await;
        ids.push(ep["id"].as_str().unwrap().to_owned());
    }
    let (_, first) = api.get(&format!("/venues/{venue}/endpoints?limit=2")).await;
    let first_ids: Vec<&str> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(first_ids, vec![ids[0].as_str(), ids[1].as_str()]);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let (_, second) = api
        .get(&format!(
            "/venues/{venue}/endpoints?limit=2&cursor={cursor}"
        ))
        .await;
    let second_ids: Vec<&str> = second["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(second_ids, vec![ids[2].as_str()]);

    // Another venue sees none of them.
    let (status, other) = api.get(&format!("/venues/other-{venue}/endpoints")).await;
    assert_eq!(status, 200);
    assert_eq!(other["data"], json!([]));
    let (status, _) = api
        .get(&format!("/venues/other-{venue}/endpoints/{}", ids[0]))
        .await;
    assert_eq!(status, 404);

    // PATCH: absent fields stay, null clears, and a disabled endpoint receives nothing.
    let path = format!("/venues/{venue}/endpoints/{}", ids[0]);
    let (status, patched) = api.patch(&path, json!({"enabled": false})).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["description"], "n0");
    let (_, patched) = api.patch(&path, json!({"description": null})).await;
    assert_eq!(patched["description"], Value::Null);
    assert_eq!(patched["enabled"], false);
    let (status, answer) = api.patch(&path, json!({"url": null})).await;
    assert_eq!(status, 422, "{answer}");
    let (status, _) = api.patch(&path, json!({"url": "https://10.1.1.1/"})).await;
    assert_eq!(status, 422);

    // Delete: gone, and a second delete is a 404.
    let gone = format!("/venues/{venue}/endpoints/{}", ids[1]);
    assert_eq!(api.delete(&gone).await.0, 204);
    assert_eq!(api.get(&gone).await.0, 404);
    assert_eq!(api.delete(&gone).await.0, 404);

    let (status, _) = api
        .post(
            &format!("/venues/{venue}/events"),
            json!({"type": "order.created", "data": {}}),
        )
        .await;
    assert_eq!(status, 202);
    let got = rx.wait_for(1, WAIT).await;
    assert_eq!(
        got.len(),
        1,
        "only the one enabled, remaining endpoint receives it"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.received().len(), 1);
    assert_eq!(deliveries_of(&api, &venue, &ids[2]).await.len(), 1);
    // The disabled one keeps it for when it is enabled again.
    let kept = deliveries_of(&api, &venue, &ids[0]).await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["held"]["reason"], "endpoint_disabled");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_the_same_event_id_twice_delivers_once() {
    // Re-sent jobs of a repeated event wait 3 s here (900 s in production): long enough for
    // the original job to be recorded first, even on a loaded machine.
    let stack = start_with(local_options_with(&[
        ("RESUME_DELAY_SECONDS", "3"),
        ("RETRY_SCHEDULE_SECONDS", "1,1"),
    ]))
    .await;
    let api = Client::new(&stack);
    let venue = venue();
    let rx = Receiver::start(200).await;
    let ep = api
        .create_endpoint(&venue, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    let event = json!({"type": "lead.created", "id": "lead-42", "data": {"email": "a@b.c"}});
    let path = format!("/venues/{venue}/events");
    let (status, first) = api.post(&path, event.clone()).await;
    assert_eq!((status, first["duplicate"].clone()), (202, json!(false)));
    let (status, again) = api.post(&path, event).await;
    assert_eq!(status, 202);
    assert_eq!(again["id"], "lead-42");
    assert_eq!(again["duplicate"], true);
    let (status, conflict) = api
        .post(
            &path,
            json!({"type": "lead.created", "id": "lead-42", "data": {"email": "other"}}),
        )
        .await;
    assert_eq!(status, 409, "{conflict}");
    rx.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        rx.received().len(),
        1,
        "delivered once: the re-sent copy stood down"
    );

    // A publish that crashed after storing the event and before queueing its jobs: the
    // producer's retry finishes the fan-out.
    let env = stack.provisioned.env_of(local::API_FUNCTION).unwrap();
    let services = shared::storage::services::Services::new(
        shared::runtime::config::Config::from_map(env).unwrap(),
        &stack.aws_of(local::API_FUNCTION).unwrap(),
    );
    let now = chrono::Utc::now();
    let record = shared::storage::store::EventRecord {
        venue_id: shared::model::ids::VenueId::parse(&venue).unwrap(),
        event_id: shared::model::ids::EventId::parse("lead-43").unwrap(),
        event_type: "lead.created".into(),
        timestamp: "2026-11-27T10:15:00Z".into(),
        data: r#"{"email":"c@d.e"}"#.into(),
        targets: {
            let endpoint_id =
                shared::model::ids::EndpointId::parse(ep["id"].as_str().unwrap()).unwrap();
            let base = shared::model::ids::DeliveryId::batch_base();
            vec![shared::model::domain::Target {
                delivery_id: base.group_at(&endpoint_id).member(0),
                endpoint_id,
            }]
        },
        accepted_at: now,
        expires_at: services.store.expiry(now),
    };
    services.store.put_event(&record).await.unwrap();
    // The resumed job owns its delivery: a failed attempt is retried, not abandoned.
    rx.set_status(500);
    let (status, retried) = api
        .post(
            &path,
            json!({"type": "lead.created", "id": "lead-43", "data": {"email": "c@d.e"}}),
        )
        .await;
    assert_eq!((status, retried["duplicate"].clone()), (202, json!(true)));
    let got = rx.wait_for(2, WAIT).await;
    assert_eq!(got.len(), 2, "the interrupted fan-out completed");
    assert!(got[1].body.contains("lead-43"));
    rx.set_status(200);
    let got = rx.wait_for(3, WAIT).await;
    assert_eq!(got.len(), 3, "the resumed delivery was retried");
    assert!(got[2].body.contains("lead-43"));
    let settled = eventually(WAIT, || async {
        let h = deliveries_of(&api, &venue, ep["id"].as_str().unwrap()).await;
        let d = h.iter().find(|d| d["event_id"] == "lead-43")?.clone();
        (d["status"] == "succeeded").then_some(d)
    })
    .await
    .expect("the resumed delivery succeeded");
    assert_eq!(settled["attempt_count"], 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.received().len(), 3);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprocessable_messages_go_to_their_dlq_with_the_reason() {
    let stack = start_stack().await;
    let sqs = aws_sdk_sqs::Client::new(&stack.aws);
    let source = aws_sdk_sqs::Client::new(&stack.aws_of(EVENT_SOURCE).unwrap());
    for body in [
        "this is not json".to_owned(),
        json!({"venue_id": "v", "type": "bad type", "data": {}}).to_string(),
        json!({"type": "order.created", "data": {}}).to_string(),
    ] {
        source
            .send_message()
            .queue_url(stack.queue_url("IngestQueue"))
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    // A delivery job that is not one, and one whose event does not exist.
    let rx = Receiver::start(200).await;
    let venue = venue();
    let ep = Client::new(&stack)
        .create_endpoint(&venue, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    for body in [
        "garbage".to_owned(),
        json!({"venue_id": venue, "endpoint_id": ep["id"],
               "deliveries": [{"delivery_id": "dlv_01KB0000000000000000000000",
                               "event_id": "evt_missing", "event_type": "order.created"}]})
        .to_string(),
    ] {
        sqs.send_message()
            .queue_url(stack.queue_url("DeliveryQueue"))
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    let dlq = stack.queue_url("IngestDeadLetterQueue").to_owned();
    let mut reasons = dead_letter_reasons(&sqs, &dlq, 3).await;
    assert_eq!(reasons.len(), 3, "three dead letters, got {reasons:?}");
    reasons.sort();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("not an ingest message: expected")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("not an event type")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("missing field `venue_id`")),
        "{reasons:?}"
    );

    let dlq = stack.queue_url("DeliveryDeadLetterQueue").to_owned();
    let mut reasons = dead_letter_reasons(&sqs, &dlq, 2).await;
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].starts_with("cannot be delivered"), "{reasons:?}");
    assert!(reasons[1].starts_with("not a delivery job"), "{reasons:?}");
    assert!(rx.received().is_empty());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_functions_use_exactly_the_tables_and_queues_of_the_template() {
    let mut options = local_options();
    options.run_api = false;
    options.run_ingest = false;
    options.run_deliver = false;
    let stack = start_with(options).await;
    let provisioned = &stack.provisioned;
    let physical: HashSet<&String> = provisioned.physical.values().collect();
    for function in [
        local::API_FUNCTION,
        local::INGEST_FUNCTION,
        local::DELIVER_FUNCTION,
    ] {
        let env = provisioned.env_of(function).unwrap();
        let config = shared::runtime::config::Config::from_map(env).unwrap();
        let r = &config.resources;
        for name in [
            &r.endpoints_table,
            &r.events_table,
            &r.deliveries_table,
            &r.delivery_queue_url,
            &r.delivery_dlq_url,
            &r.ingest_dlq_url,
        ] {
            assert!(
                physical.contains(name),
                "{function} uses {name}, not in the template"
            );
        }
    }
    let ingest = provisioned.trigger_of(local::INGEST_FUNCTION).unwrap();
    assert_eq!(ingest.queue_url, stack.queue_url("IngestQueue"));
    assert!(ingest.reports_batch_item_failures);
    let deliver = provisioned.trigger_of(local::DELIVER_FUNCTION).unwrap();
    assert_eq!(deliver.queue_url, stack.queue_url("DeliveryQueue"));
    assert!(deliver.reports_batch_item_failures);

    // The redrive policies of the template are in force.
    let sqs = aws_sdk_sqs::Client::new(&stack.aws);
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(stack.queue_url("DeliveryQueue"))
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap();
    let redrive = &attrs[&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy];
    assert!(redrive.contains("DeliveryDeadLetterQueue"), "{redrive}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_from_the_queues_record_one_delivery() {
    // 1. The same event twice on the ingest queue: delivered once. (The copy's re-sent job
    // waits 3 s here, 900 s in production, so the original job is recorded first.)
    let options = local_options_with(&[("RESUME_DELAY_SECONDS", "3")]);
    let prefix = options.prefix.clone();
    let stack = start_with(options).await;
    let api = Client::new(&stack);
    let venue = venue();
    let rx = Receiver::start(200).await;
    let ep = api
        .create_endpoint(&venue, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    let ep_id = ep["id"].as_str().unwrap().to_owned();
    // The operator inspects the queues; the event source only sends.
    let sqs = aws_sdk_sqs::Client::new(&stack.aws);
    let source = aws_sdk_sqs::Client::new(&stack.aws_of(EVENT_SOURCE).unwrap());
    let body = json!({"venue_id": venue, "type": "subscriber.created", "id": "sub-7",
                      "data": {"email": "x@y.z"}})
    .to_string();
    for _ in 0..2 {
        source
            .send_message()
            .queue_url(stack.queue_url("IngestQueue"))
            .message_body(&body)
            .send()
            .await
            .unwrap();
    }
    rx.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        rx.received().len(),
        1,
        "the duplicate event was delivered once"
    );
    stack.stop().await;

    // 2. A delivery job that SQS hands out twice (at-least-once): one success recorded.
    let mut options = local_options();
    options.prefix = prefix.clone();
    options.run_deliver = false;
    let stack = start_with(options).await;
    let api = Client::new(&stack);
    let (status, published) = api
        .post(
            &format!("/venues/{venue}/events"),
            json!({"type": "subscriber.created", "id": "sub-8", "data": {}}),
        )
        .await;
    assert_eq!(status, 202, "{published}");
    let delivery_queue = stack.queue_url("DeliveryQueue").to_owned();
    let job = eventually(WAIT, || async {
        let out = sqs
            .receive_message()
            .queue_url(&delivery_queue)
            .send()
            .await
            .ok()?;
        let m = out.messages?.into_iter().next()?;
        sqs.delete_message()
            .queue_url(&delivery_queue)
            .set_receipt_handle(m.receipt_handle)
            .send()
            .await
            .ok()?;
        m.body
    })
    .await
    .expect("the job of sub-8");
    stack.stop().await;
    let mut options = local_options();
    options.prefix = prefix;
    let stack = start_with(options).await;
    let api = Client::new(&stack);
    // One copy after the other: the second finds the attempt recorded. (Concurrent copies
    // rely on DynamoDB's atomic conditional write, which moto does not promise.)
    for n in [2, 3] {
        sqs.send_message()
            .queue_url(&delivery_queue)
            .message_body(&job)
            .send()
            .await
            .unwrap();
        assert_eq!(
            rx.wait_for(n, WAIT).await.len(),
            n,
            "each copy is sent (at least once)"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let history = deliveries_of(&api, &venue, &ep_id).await;
    assert_eq!(history.len(), 2);
    let sub8 = history.iter().find(|d| d["event_id"] == "sub-8").unwrap();
    assert_eq!(sub8["status"], "succeeded");
    assert_eq!(sub8["attempt_count"], 1, "one success recorded, not two");
    stack.stop().await;
}

/// The test the IAM net is shown on: with an action removed from the deliver policy, it fails.
const NAMED: &str = "subscribed_endpoints_receive_exact_signed_envelopes_from_http_and_queue";

#[test]
fn without_one_action_of_the_deliver_policy_the_delivery_test_fails_with_access_denied() {
    // A copy of the template whose deliver policy lacks kms:Decrypt (opening an endpoint's
    // signing secret: no delivery can be signed without it).
    let template = std::fs::read_to_string(local::default_template()).unwrap();
    let statement = "            - Effect: Allow\n              Action: kms:Decrypt\n              Resource: !GetAtt SecretsKey.Arn\n";
    let deliver = template.find("\n  DeliverFunction:").unwrap();
    let at = deliver + template[deliver..].find(statement).unwrap();
    let copy = format!("{}{}", &template[..at], &template[at + statement.len()..]);
    let path = std::env::temp_dir().join(format!("popup-iam-{}.yaml", unique_prefix()));
    std::fs::write(&path, copy).unwrap();

    // The named test of this binary, in a child process, on a moto of its own.
    let moto = OwnMoto::start();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAMED])
        .envs(moto.env())
        .env("POPUP_TEMPLATE", &path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "the test passed without the action:\n{text}"
    );
    let failure = text
        .split_once(&format!("---- {NAMED} stdout ----"))
        .map(|(_, f)| f)
        .unwrap_or_else(|| panic!("no failure message:\n{text}"));
    assert!(
        failure.contains("AccessDenied") && failure.contains("kms:Decrypt"),
        "the failure does not say AccessDenied for kms:Decrypt:\n{failure}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_headers_go_with_every_request_and_reserved_ones_are_refused() {
    let stack = start_stack().await;
    let api = Client::new(&stack);
    let venue = venue();
    let rx = Receiver::start(200).await;
    let api_key = "rk_live_0123456789abcdef";
    let ep = api
        .create_endpoint(
            &venue,
            json!({"url": rx.url, "event_types": ["order.created"],
                   "headers": {"X-Api-Key": api_key, "X-Team": "ops"}}),
        )
        .await;
    // Shown as hints only: a long value's last 4 characters, a short one's nothing.
    assert_eq!(ep["headers"], json!({"x-api-key": "…cdef", "x-team": "…"}));
    let id = ep["id"].as_str().unwrap();
    let path = format!("/venues/{venue}/endpoints/{id}");
    let (_, read) = api.get(&path).await;
    assert_eq!(read["headers"], ep["headers"]);
    assert!(!read.to_string().contains(api_key));

    // Published events and test sends carry them, beside a signature that still verifies.
    let (status, _) = api
        .post(
            &format!("/venues/{venue}/events"),
            json!({"type": "order.created", "data": {"order_id": "o-1"}}),
        )
        .await;
    assert_eq!(status, 202);
    let (status, test) = api.post(&format!("{path}/test"), json!({})).await;
    assert_eq!((status, &test["succeeded"]), (200, &json!(true)), "{test}");
    let got = rx.wait_for(2, WAIT).await;
    assert_eq!(got.len(), 2);
    for request in &got {
        assert_eq!(request.headers["x-api-key"], api_key);
        assert_eq!(request.headers["x-team"], "ops");
    }
    let secret = ep["secret"].as_str().unwrap();
    assert_eq!(verify_with_python(secret, &got), vec!["ok", "ok"]);

    // Refused with a 422 on `headers`, and nothing saved: every reserved name (in any case),
    // a header injection, a bad name, too many.
    let eleven: serde_json::Map<String, Value> =
        (0..11).map(|i| (format!("x-h{i}"), json!("v"))).collect();
    let refused = [
        json!({"Authorization": "Bearer x"}),
        json!({"content-type": "text/plain"}),
        json!({"Content-Length": "1"}),
        json!({"host": "example.com"}),
        json!({"webhook-signature": "v1,forged"}),
        json!({"Webhook-Id": "msg_1"}),
        json!({"webhook-timestamp": "1"}),
        json!({"transfer-encoding": "chunked"}),
        json!({"connection": "close"}),
        json!({"user-agent": "x"}),
        json!({"x-api-key": "v\r\nx-injected: 1"}),
        json!({"x-api-key": "v\nx-injected: 1"}),
        json!({"x api": "v"}),
        json!({"x-api-key\r\nx-injected": "1"}),
        Value::Object(eleven),
    ];
    for headers in &refused {
        let (status, answer) = api
            .post(
                &format!("/venues/{venue}/endpoints"),
                json!({"url": rx.url, "event_types": ["order.created"], "headers": headers}),
            )
            .await;
        assert_eq!(status, 422, "create with {headers}: {answer}");
        assert_eq!(answer["error"]["field"], "headers", "{answer}");
        let (status, answer) = api.patch(&path, json!({"headers": headers})).await;
        assert_eq!(status, 422, "patch with {headers}: {answer}");
    }
    let (_, list) = api.get(&format!("/venues/{venue}/endpoints")).await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        1,
        "none was created"
    );
    let (_, read) = api.get(&path).await;
    assert_eq!(read["headers"], ep["headers"], "none was half-saved");

    // PATCH merges: a value sets, null removes, the rest stays; `"headers": null` clears.
    let (status, patched) = api
        .patch(
            &path,
            json!({"headers": {"X-Team": null, "x-region": "eu-west-1"}}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        patched["headers"],
        json!({"x-api-key": "…cdef", "x-region": "…"})
    );
    api.post(&format!("{path}/test"), json!({})).await;
    let got = rx.wait_for(3, WAIT).await;
    assert_eq!(got[2].headers["x-api-key"], api_key);
    assert_eq!(got[2].headers["x-region"], "eu-west-1");
    assert!(!got[2].headers.contains_key("x-team"));
    let (_, cleared) = api.patch(&path, json!({"headers": null})).await;
    assert_eq!(cleared["headers"], json!({}));
    api.post(&format!("{path}/test"), json!({})).await;
    let got = rx.wait_for(4, WAIT).await;
    assert!(!got[3].headers.contains_key("x-api-key"));
    stack.stop().await;
}
