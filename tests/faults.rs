//! The fault suite: what a misbehaving receiver, a crashed worker or an unreachable AWS
//! endpoint does to deliveries. Runs on the local stack with a compressed retry schedule
//! (waits of 1 s instead of 5 s…10 h, 2 s instead of 60 s after overload, a 1.5 s request
//! timeout), so each case ends in seconds. The table in docs/FAULTS.md is this file.

use std::time::{Duration, Instant};

use integration_tests::faults::{FaultReceiver, FlakyProxy, Mode};
use integration_tests::*;
use local::StackOptions;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn options(extra: &[(&str, &str)]) -> StackOptions {
    compressed_options(extra)
}

struct Case {
    api: Client,
    venue: String,
    endpoint: String,
}

impl Case {
    async fn new(stack: &local::Stack, url: &str) -> Self {
        let api = Client::new(stack);
        let venue = format!("venue-{}", unique_prefix());
        let ep = api
            .create_endpoint(&venue, json!({"url": url, "event_types": ["*"]}))
            .await;
        let endpoint = ep["id"].as_str().unwrap().to_owned();
        Case {
            api,
            venue,
            endpoint,
        }
    }

    async fn publish(&self, n: usize) {
        for i in 0..n {
            let (status, body) = self
                .api
                .post(
                    &format!("/venues/{}/events", self.venue),
                    json!({"type": "order.created", "data": {"n": i}}),
                )
                .await;
            assert_eq!(status, 202, "{body}");
        }
    }

    async fn endpoint(&self) -> Value {
        self.api
            .get(&format!(
                "/venues/{}/endpoints/{}",
                self.venue, self.endpoint
            ))
            .await
            .1
    }

    /// Every delivery of the endpoint with its attempts, once none is pending (or `WAIT`).
    async fn settled(&self, expected: usize) -> Vec<Value> {
        let last = std::sync::Mutex::new(Value::Null);
        let found = eventually(WAIT, || async {
            let (_, page) = self
                .api
                .get(&format!(
                    "/venues/{}/endpoints/{}/deliveries?limit=100",
                    self.venue, self.endpoint
                ))
                .await;
            let list = page["data"].as_array().cloned().unwrap_or_default();
            *last.lock().unwrap() = page.clone();
            (list.len() == expected && list.iter().all(|d| d["status"] != "pending"))
                .then_some(list)
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "{expected} deliveries did not settle: {}",
                last.lock().unwrap()
            )
        });
        let mut full = Vec::new();
        for d in found {
            let (_, detail) = self
                .api
                .get(&format!(
                    "/venues/{}/deliveries/{}",
                    self.venue,
                    d["id"].as_str().unwrap()
                ))
                .await;
            full.push(detail);
        }
        full
    }
}

fn attempts(delivery: &Value) -> Vec<Value> {
    delivery["attempts"].as_array().cloned().unwrap_or_default()
}

fn gaps(hits: &[integration_tests::faults::Hit]) -> Vec<Duration> {
    hits.windows(2).map(|w| w[1].at - w[0].at).collect()
}

/// No job of this stack is left on the delivery queue.
async fn queue_drains(stack: &local::Stack) {
    let sqs = aws_sdk_sqs::Client::new(&stack.aws);
    let url = stack.queue_url("DeliveryQueue").to_owned();
    let drained = eventually(WAIT, || async {
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .ok()?
            .attributes?;
        let count = |name: &str| {
            attrs
                .get(&aws_sdk_sqs::types::QueueAttributeName::from(name))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        (count("ApproximateNumberOfMessages") + count("ApproximateNumberOfMessagesNotVisible") == 0)
            .then_some(())
    })
    .await;
    assert!(drained.is_some(), "jobs left on the delivery queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_is_retried_on_schedule_then_failed_for_good() {
    let stack = start_with(options(&[])).await;
    // Each answer says which attempt it answered, in 2 KiB.
    let body = |n: usize| format!("attempt {n} failed: {}", "x".repeat(2048)).into_bytes();
    let rx = FaultReceiver::start((1..=4).map(|n| Mode::Body(500, body(n))).collect()).await;
    let case = Case::new(&stack, &rx.url).await;
    case.publish(1).await;
    let deliveries = case.settled(1).await;
    let d = &deliveries[0];
    assert_eq!(d["status"], "failed");
    let tries = attempts(d);
    assert_eq!(tries.len(), 4, "1 + 3 scheduled retries");
    for (i, a) in tries.iter().enumerate() {
        assert_eq!(a["attempt"], i as u64 + 1);
        assert_eq!(a["status_code"], 500);
        assert_eq!(a["error_class"], "http_5xx");
        assert_eq!(a["trigger"], "scheduled");
        // What the receiver said is kept for the latest attempt only (a retry does not write
        // every earlier answer again); each keeps its hint.
        assert_eq!(
            a["hint"], "the receiver failed: check its availability and logs",
            "{i}"
        );
        let said = a["response_body"].as_str();
        if i < 3 {
            assert_eq!(
                said.map(str::len),
                None,
                "attempt {}: its body is kept",
                i + 1
            );
        } else {
            assert!(
                said.is_some_and(|s| s.starts_with(&format!("attempt {} failed", i + 1))),
                "attempt {}: {a}",
                i + 1
            );
        }
    }
    assert_eq!(rx.hits().len(), 4);
    for gap in gaps(&rx.hits()) {
        assert!(
            gap >= Duration::from_millis(750),
            "waited {gap:?}, the schedule says 1 s ±20%"
        );
    }
    queue_drains(&stack).await;
    let ep = case.endpoint().await;
    assert_eq!(ep["enabled"], true);
    assert!(ep["failing_since"].is_string(), "{ep}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_recovers_gets_the_delivery_and_its_failure_clock_resets() {
    let stack = start_with(options(&[])).await;
    let rx = FaultReceiver::start(vec![
        Mode::Body(502, b"bad gateway".to_vec()),
        Mode::Body(503, b"down for maintenance".to_vec()),
        Mode::Reset,
        Mode::Status(200),
    ])
    .await;
    let case = Case::new(&stack, &rx.url).await;
    case.publish(1).await;
    let d = &case.settled(1).await[0];
    assert_eq!(d["status"], "succeeded");
    // The success's answer and the last answered failure's are kept (why it failed); the
    // first failure's is not written again at each retry.
    let bodies: Vec<Value> = attempts(d)
        .iter()
        .map(|a| a["response_body"].clone())
        .collect();
    assert_eq!(
        bodies,
        [
            Value::Null,
            json!("down for maintenance"),
            Value::Null,
            json!("no")
        ],
        "{d}"
    );
    let classes: Vec<Value> = attempts(d)
        .iter()
        .map(|a| a["error_class"].clone())
        .collect();
    assert_eq!(classes[..2], ["http_5xx", "http_5xx"]);
    assert!(
        classes[2] == "connect" || classes[2] == "other",
        "{classes:?}"
    );
    assert_eq!(classes[3], Value::Null);
    let ep = case.endpoint().await;
    assert_eq!(
        ep["failing_since"],
        Value::Null,
        "a success stops the clock: {ep}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_and_overload_stretch_the_wait() {
    let stack = start_with(options(&[])).await;
    let rx = FaultReceiver::start(vec![
        Mode::StatusWith(503, vec![("retry-after", "3".into())]),
        Mode::Status(429),
        Mode::Status(200),
    ])
    .await;
    let case = Case::new(&stack, &rx.url).await;
    case.publish(1).await;
    let d = &case.settled(1).await[0];
    assert_eq!(d["status"], "succeeded");
    let gaps = gaps(&rx.hits());
    // 503 + Retry-After: 3 → max(1 s planned, 2 s overload) = 2 s, asked 3 s, allowed ≤ 4 s.
    assert!(gaps[0] >= Duration::from_millis(2900), "{gaps:?}");
    assert!(gaps[0] < Duration::from_millis(6000), "{gaps:?}");
    // 429 without Retry-After: at least the overload wait.
    assert!(gaps[1] >= Duration::from_millis(1900), "{gaps:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint_at_once_until_it_is_re_enabled() {
    let stack = start_with(options(&[])).await;
    let rx = FaultReceiver::start(vec![Mode::Status(410)]).await;
    let case = Case::new(&stack, &rx.url).await;
    case.publish(1).await;
    let d = &case.settled(1).await[0];
    assert_eq!(d["status"], "failed");
    assert_eq!(attempts(d).len(), 1, "410 is final");
    let ep = case.endpoint().await;
    assert_eq!(ep["enabled"], false);
    assert!(
        ep["disabled_reason"].as_str().unwrap().contains("410"),
        "{ep}"
    );

    case.publish(1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.hits().len(), 1, "a disabled endpoint receives nothing");

    rx.set_script(vec![Mode::Status(200)]);
    let (status, ep) = case
        .api
        .patch(
            &format!("/venues/{}/endpoints/{}", case.venue, case.endpoint),
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(ep["disabled_reason"], Value::Null);
    case.publish(1).await;
    assert_eq!(
        rx.wait_for(2, WAIT).await.len(),
        2,
        "re-enabled: new events arrive"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_slow_bodies_huge_bodies_and_redirects_are_bounded() {
    let stack = start_with(options(&[("RETRY_SCHEDULE_SECONDS", "1")])).await;
    let hang = FaultReceiver::start(vec![Mode::Hang(Duration::from_secs(8))]).await;
    let trickle = FaultReceiver::start(vec![Mode::Trickle {
        bytes: 100,
        every: Duration::from_millis(100),
    }])
    .await;
    let huge = FaultReceiver::start(vec![Mode::Huge(50 * 1024 * 1024)]).await;
    let redirect = FaultReceiver::start(vec![Mode::StatusWith(
        302,
        vec![(
            "location",
            "http://169.254.169.254/latest/meta-data/".into(),
        )],
    )])
    .await;
    let cases = [
        Case::new(&stack, &hang.url).await,
        Case::new(&stack, &trickle.url).await,
        Case::new(&stack, &huge.url).await,
        Case::new(&stack, &redirect.url).await,
    ];
    for case in &cases {
        case.publish(1).await;
    }

    // Hang past the 1.5 s timeout: a timeout, retried after the overload wait, failed.
    let d = &cases[0].settled(1).await[0];
    assert_eq!(d["status"], "failed");
    for a in attempts(d) {
        assert_eq!(a["error_class"], "timeout");
        assert!(a["duration_ms"].as_u64().unwrap() < 3000, "{a}");
    }
    assert!(gaps(&hang.hits())[0] >= Duration::from_millis(1900));

    // A 200 whose body trickles past the timeout is still a success, and the wait is bounded.
    let d = &cases[1].settled(1).await[0];
    assert_eq!(d["status"], "succeeded");
    assert!(attempts(d)[0]["duration_ms"].as_u64().unwrap() < 3000);

    // A 50 MiB answer: 4 KiB read, the rest never; a first-try success keeps 256 bytes of it
    // in its group's item (ten share one item).
    let d = &cases[2].settled(1).await[0];
    assert_eq!(d["status"], "succeeded");
    let a = &attempts(d)[0];
    assert_eq!(a["response_body"].as_str().unwrap().len(), 256);
    assert!(a["duration_ms"].as_u64().unwrap() < 3000);

    // A redirect to the metadata address is a failure and is never followed.
    let d = &cases[3].settled(1).await[0];
    assert_eq!(d["status"], "failed");
    for a in attempts(d) {
        assert_eq!(a["status_code"], 302);
        assert_eq!(a["error_class"], "redirect");
    }
    assert_eq!(redirect.hits().len(), 2);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_longer_than_sqs_can_delay_waits_in_the_retries_table() {
    // SQS may delay a message 2 s here (900 s on AWS); the planned wait is 4 s, so the job
    // waits in the retries table (1 s slots) until the sweep (every second) queues it.
    let mut o = options(&[
        ("RETRY_SCHEDULE_SECONDS", "4"),
        ("MAX_QUEUE_DELAY_SECONDS", "2"),
        ("RETRY_SLOT_SECONDS", "1"),
        ("RETRY_SHARDS", "2"),
    ]);
    o.schedule_every = Some(Duration::from_secs(1));
    let stack = start_with(o).await;
    let rx = FaultReceiver::start(vec![Mode::Status(500), Mode::Status(200)]).await;
    let case = Case::new(&stack, &rx.url).await;
    case.publish(1).await;
    rx.wait_for(1, WAIT).await;
    let waiting = eventually(WAIT, || async {
        let n = waiting_retries(&stack).await;
        (n > 0).then_some(n)
    })
    .await;
    assert_eq!(waiting, Some(1), "the retry waits in the table");
    let d = &case.settled(1).await[0];
    assert_eq!(d["status"], "succeeded");
    let gap = gaps(&rx.hits())[0];
    assert!(
        gap >= Duration::from_millis(3200),
        "waited {gap:?}, planned 4 s ±20%"
    );
    assert!(gap < Duration::from_secs(8), "waited {gap:?}");
    assert_eq!(waiting_retries(&stack).await, 0, "the sweep removed it");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_too_long_is_disabled() {
    let stack = start_with(options(&[
        ("RETRY_SCHEDULE_SECONDS", "1,1,1,1,1,1"),
        ("DISABLE_AFTER_SECONDS", "2"),
        ("EXHAUSTED_WINDOW_SECONDS", "1"),
    ]))
    .await;
    let rx = FaultReceiver::start(vec![Mode::Status(500)]).await;
    let case = Case::new(&stack, &rx.url).await;
    case.publish(1).await;
    // While it fails, the endpoint says when it will be disabled.
    let failing = eventually(WAIT, || async {
        let ep = case.endpoint().await;
        (ep["enabled"] == true && ep["failing_since"].is_string()).then_some(ep)
    })
    .await
    .expect("the endpoint starts failing");
    let at = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    assert_eq!(
        at(&failing["disables_at"]) - at(&failing["failing_since"]),
        chrono::TimeDelta::seconds(2),
        "{failing}"
    );
    // Disabled: the delivery is kept for it (held, pending), not failed.
    let held = eventually(WAIT, || async {
        let (_, page) = case
            .api
            .get(&format!(
                "/venues/{}/endpoints/{}/deliveries",
                case.venue, case.endpoint
            ))
            .await;
        let d = page["data"][0].clone();
        (d["held"]["reason"] == "endpoint_disabled").then_some(d)
    })
    .await
    .expect("the delivery is held for the disabled endpoint");
    assert_eq!(held["status"], "pending", "{held}");
    let ep = case.endpoint().await;
    assert_eq!(ep["disables_at"], Value::Null, "{ep}");
    assert_eq!(ep["enabled"], false, "{ep}");
    assert!(ep["disabled_reason"]
        .as_str()
        .unwrap()
        .contains("failed since"));
    let tried = rx.hits().len();
    assert!(tried < 7, "disabled before the schedule ran out: {tried}");
    // The receiver is fixed and the venue enables the endpoint: the delivery goes.
    rx.set_script(vec![Mode::Status(200)]);
    let (status, body) = case
        .api
        .patch(
            &format!("/venues/{}/endpoints/{}", case.venue, case.endpoint),
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let d = &case.settled(1).await[0];
    assert_eq!(d["status"], "succeeded", "{d}");
    assert_eq!(rx.hits().len(), tried + 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_retry_and_replay_resend_failed_deliveries() {
    // Pages of one delivery: the replay of two goes on from where its first page stopped.
    let stack = start_with(options(&[
        ("RETRY_SCHEDULE_SECONDS", "1"),
        ("REPLAY_PAGE_SIZE", "1"),
    ]))
    .await;
    let rx = FaultReceiver::start(vec![Mode::Status(500)]).await;
    let case = Case::new(&stack, &rx.url).await;
    let since = chrono::Utc::now() - chrono::Duration::seconds(5);
    case.publish(3).await;
    let failed = case.settled(3).await;
    assert!(failed.iter().all(|d| d["status"] == "failed"));
    assert_eq!(rx.hits().len(), 6);

    rx.set_script(vec![Mode::Status(200)]);
    let first = failed[0]["id"].as_str().unwrap();
    let (status, attempt) = case
        .api
        .post(
            &format!("/venues/{}/deliveries/{first}/retry", case.venue),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{attempt}");
    assert_eq!(attempt["trigger"], "manual");
    assert_eq!(attempt["status_code"], 200);
    assert_eq!(attempt["attempt"], 3);
    let (_, d) = case
        .api
        .get(&format!("/venues/{}/deliveries/{first}", case.venue))
        .await;
    assert_eq!(d["status"], "succeeded");

    let (status, replay) = case
        .api
        .post(
            &format!("/venues/{}/endpoints/{}/replay", case.venue, case.endpoint),
            json!({"since": since}),
        )
        .await;
    assert_eq!(status, 202, "{replay}");
    assert_eq!(replay["replaying"], 2, "only the deliveries still failed");
    // The work runs in the background; the same request again answers the same replay.
    let replay_id = replay["replay_id"].as_str().unwrap().to_owned();
    let (status, again) = case
        .api
        .post(
            &format!("/venues/{}/endpoints/{}/replay", case.venue, case.endpoint),
            json!({"since": since}),
        )
        .await;
    assert_eq!(
        (status, again["replay_id"].as_str()),
        (202, Some(replay_id.as_str())),
        "{again}"
    );
    let progress = format!(
        "/venues/{}/endpoints/{}/replays/{replay_id}",
        case.venue, case.endpoint
    );
    let done = eventually(WAIT, || async {
        let (_, r) = case.api.get(&progress).await;
        (r["state"] == "done").then_some(r)
    })
    .await
    .expect("the replay finishes");
    assert_eq!(
        (done["replaying"].as_u64(), done["queued"].as_u64()),
        (Some(2), Some(2)),
        "{done}"
    );
    let (status, _) = case
        .api
        .get(&format!(
            "/venues/{}/endpoints/{}/replays/rpl_01KB0000000000000000000000",
            case.venue, case.endpoint
        ))
        .await;
    assert_eq!(status, 404);
    let all = eventually(WAIT, || async {
        let (_, page) = case
            .api
            .get(&format!(
                "/venues/{}/endpoints/{}/deliveries?status=succeeded",
                case.venue, case.endpoint
            ))
            .await;
        (page["data"].as_array().map_or(0, Vec::len) == 3).then_some(())
    })
    .await;
    assert!(all.is_some(), "replayed deliveries succeed");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        rx.hits().len(),
        6 + 1 + 2,
        "one manual attempt each, no scheduled retries after"
    );

    let (status, bad) = case
        .api
        .post(
            &format!("/venues/{}/endpoints/{}/replay", case.venue, case.endpoint),
            json!({"since": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, 422, "{bad}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deliver_worker_killed_mid_batch_loses_nothing() {
    let mut first = options(&[]);
    let prefix = first.prefix.clone();
    first.pollers = 1;
    let stack = start_with(first).await;
    let rx = FaultReceiver::start(vec![Mode::Hang(Duration::from_secs(1))]).await;
    let case = Case::new(&stack, &rx.url).await;
    case.publish(5).await;
    rx.wait_for(1, WAIT).await;
    stack.abort(); // mid-batch: requests in flight, nothing recorded or deleted

    rx.set_script(vec![Mode::Status(200)]);
    let mut second = options(&[]);
    second.prefix = prefix;
    let stack = start_with(second).await;
    let case = Case {
        api: Client::new(&stack),
        ..case
    };
    let deliveries = case.settled(5).await;
    assert!(
        deliveries.iter().all(|d| d["status"] == "succeeded"),
        "every accepted event delivered"
    );
    for d in &deliveries {
        for a in attempts(d) {
            assert!(
                a["status_code"].is_u64() || a["error"].is_string(),
                "no half-written attempt: {a}"
            );
        }
    }
    queue_drains(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_gets_its_cap_at_once_and_spends_its_own_key() {
    // An attempt running 300 ms marks its endpoint slow; then 2 attempts at once at most.
    let mut o = options(&[
        ("SLOW_ATTEMPT_MS", "300"),
        ("ENDPOINT_MAX_CONCURRENCY", "2"),
    ]);
    // The template's visibility timeout: a batch of attempts at a slow endpoint outlasts the
    // compressed one (2 s), and a second copy of a job would send its attempt again.
    o.queue_overrides.remove("DeliveryQueue");
    let stack = start_with(o).await;
    let rx = FaultReceiver::start(vec![Mode::Hang(Duration::from_secs(1))]).await;
    let case = Case::new(&stack, &rx.url).await;
    case.publish(1).await;
    case.settled(1).await;
    let meter = stack.capacity.as_ref().expect("the stack meters capacity");
    meter.reset_usage();
    case.publish(12).await;
    let deliveries = case.settled(13).await;
    assert!(
        deliveries.iter().all(|d| d["status"] == "succeeded"),
        "{deliveries:?}"
    );
    // Each request hangs 1 s: those that arrived within 0.9 s of one another overlapped.
    let mut arrivals: Vec<Instant> = rx.hits().iter().skip(1).map(|h| h.at).collect();
    arrivals.sort();
    assert_eq!(arrivals.len(), 12);
    let most = arrivals
        .iter()
        .map(|t| {
            arrivals
                .iter()
                .filter(|u| *u <= t && t.duration_since(**u) < Duration::from_millis(900))
                .count()
        })
        .max()
        .unwrap();
    assert!(most <= 2, "{most} requests at once: {arrivals:?}");
    // The slots are the endpoint's own key: the venue's endpoints key (shared by all its
    // endpoints, its items large) is not written for each attempt.
    let usage = meter.usage();
    let venue_key: f64 = usage
        .iter()
        .filter(|u| u.resource == "EndpointsTable" && u.key == case.venue)
        .map(|u| u.write_units)
        .sum();
    eprintln!("slow endpoint: {venue_key} write units on the venue's endpoints key for 12 attempts, {most} at once");
    assert!(
        venue_key < 12.0,
        "{venue_key} write units on the venue's endpoints key for 12 attempts: {usage:#?}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_aws_endpoint_during_a_batch_loses_nothing() {
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("make test sets AWS_ENDPOINT_URL");
    let proxy = FlakyProxy::start(&moto).await;
    let aws = aws_config::defaults(shared::storage::services::behavior_version())
        .endpoint_url(&proxy.url)
        .load()
        .await;
    let options = options(&[]);
    let stack = local::Stack::start(aws, options).await.expect("stack");
    let rx = FaultReceiver::start(vec![Mode::Hang(Duration::from_millis(500))]).await;
    let case = Case::new(&stack, &rx.url).await;
    case.publish(6).await;
    rx.wait_for(1, WAIT).await;
    // DynamoDB and SQS vanish while the batch is being sent, for 3 s.
    proxy.set_down(true);
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set_down(false);
    assert!(outage.elapsed() >= Duration::from_secs(3));

    let deliveries = case.settled(6).await;
    assert!(
        deliveries.iter().all(|d| d["status"] == "succeeded"),
        "every accepted event delivered: {deliveries:?}"
    );
    let mut bodies: Vec<String> = rx.hits().into_iter().map(|h| h.body).collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(
        bodies.len(),
        6,
        "each event reached the receiver (at least once)"
    );
    queue_drains(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_time_checks_stop_what_the_save_time_check_allowed() {
    // Saved while loopback was allow-listed; sent after the allow-list was emptied, as if
    // the name had been re-pointed at an internal address.
    let first = options(&[]);
    let prefix = first.prefix.clone();
    let stack = start_with(first).await;
    let rx = Receiver::start(200).await;
    let by_name = rx.url.replace("127.0.0.1", "localhost");
    let literal = Case::new(&stack, &rx.url).await;
    let named = Case::new(&stack, &by_name).await;
    stack.stop().await;

    let mut second = options(&[("DESTINATION_ALLOW_CIDRS", "")]);
    second.prefix = prefix;
    let stack = start_with(second).await;
    for case in [literal, named] {
        let case = Case {
            api: Client::new(&stack),
            ..case
        };
        case.publish(1).await;
        let d = &case.settled(1).await[0];
        assert_eq!(d["status"], "failed");
        for a in attempts(d) {
            assert_eq!(a["error_class"], "blocked_address", "{a}");
            assert_eq!(a["status_code"], Value::Null);
        }
    }
    assert!(
        rx.received().is_empty(),
        "no request reached the internal address"
    );
    stack.stop().await;
}

/// The operational events the ops receiver got, by type (each verified first).
fn ops_events(secret: &str, got: &[Captured]) -> Vec<Value> {
    let verdicts = verify_with_python(secret, got);
    assert!(
        verdicts.iter().all(|v| v == "ok"),
        "standardwebhooks verifies every operational event: {verdicts:?}"
    );
    got.iter()
        .map(|r| serde_json::from_str::<Value>(&r.body).unwrap())
        .collect()
}

fn of_type<'a>(events: &'a [Value], kind: &str, endpoint: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == kind && e["data"]["endpoint_id"] == endpoint)
        .collect()
}

async fn publish_to(admin: &Client, venue: &str, n: u32) {
    let (status, _) = admin
        .post(
            &format!("/venues/{venue}/events"),
            json!({"type": "order.created", "data": {"n": n}}),
        )
        .await;
    assert_eq!(status, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_disable_and_410_each_tell_the_operational_endpoint_once() {
    let stack = start_with(options(&[
        ("RETRY_SCHEDULE_SECONDS", "1,1,1,1,1,1"),
        ("DISABLE_AFTER_SECONDS", "2"),
        ("EXHAUSTED_WINDOW_SECONDS", "1"),
    ]))
    .await;
    let (admin, ops_rx, secret) = with_operational_endpoint(&stack).await;
    let (_, listed) = admin.get("/operational-endpoints").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    // Operational types are for operational endpoints, venue types for venues.
    let (status, _) = admin
        .post(
            "/operational-endpoints",
            json!({"url": ops_rx.url, "event_types": ["order.created"]}),
        )
        .await;
    assert_eq!(status, 422);
    let venue = format!("ops-{}", unique_prefix());
    let (status, refused) = admin
        .post(
            &format!("/venues/{venue}/endpoints"),
            json!({"url": ops_rx.url, "event_types": ["endpoint.disabled"]}),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(refused["error"]["message"]
        .as_str()
        .unwrap()
        .contains("operational"));
    // A venue key reaches neither the operational endpoints nor the reserved venue.
    let (_, key) = admin
        .post(&format!("/venues/{venue}/api-keys"), json!({}))
        .await;
    let mut as_venue = Client::new(&stack);
    as_venue.key = Some(key["key"].as_str().unwrap().to_owned());
    assert_eq!(as_venue.get("/operational-endpoints").await.0, 403);
    assert_eq!(admin.get("/venues/_operational/endpoints").await.0, 404);

    // One endpoint fails for longer than DISABLE_AFTER_SECONDS; another answers 410 Gone.
    let failing = FaultReceiver::start(vec![Mode::Status(500)]).await;
    let gone = FaultReceiver::start(vec![Mode::Status(410)]).await;
    let failing_id = admin
        .create_endpoint(&venue, json!({"url": failing.url, "event_types": ["*"]}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let gone_id = admin
        .create_endpoint(&venue, json!({"url": gone.url, "event_types": ["*"]}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for n in 0..3 {
        publish_to(&admin, &venue, n).await;
    }
    let heard = eventually(WAIT, || async {
        let events = ops_events(&secret, &ops_rx.received());
        (of_type(&events, "endpoint.disabled", &failing_id).len() == 1
            && of_type(&events, "endpoint.disabled", &gone_id).len() == 1
            && !of_type(&events, "delivery.exhausted", &gone_id).is_empty())
        .then_some(())
    })
    .await;
    assert!(
        heard.is_some(),
        "heard: {:#?}",
        ops_events(&secret, &ops_rx.received())
    );
    // Whatever else runs meanwhile (the other deliveries, their retries): once each.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = ops_events(&secret, &ops_rx.received());
    let failing_disabled = of_type(&events, "endpoint.disabled", &failing_id);
    let gone_disabled = of_type(&events, "endpoint.disabled", &gone_id);
    assert_eq!(failing_disabled.len(), 1, "{events:#?}");
    assert_eq!(gone_disabled.len(), 1, "{events:#?}");
    let d = &failing_disabled[0]["data"];
    assert_eq!(d["venue_id"], venue.as_str());
    assert_eq!(d["reason"], "failing");
    assert_eq!(d["url"], failing.url.as_str());
    assert!(
        d["message"].as_str().unwrap().contains("failed since"),
        "{d}"
    );
    assert!(d["action"].as_str().unwrap().contains("enable"), "{d}");
    assert_eq!(gone_disabled[0]["data"]["reason"], "gone");
    // The 410 ended its delivery for good, too.
    let gone_exhausted = of_type(&events, "delivery.exhausted", &gone_id);
    assert!(!gone_exhausted.is_empty(), "{events:#?}");
    assert_eq!(gone_exhausted[0]["data"]["last_status_code"], 410);

    // By hand: enabled (twice: said once), then disabled.
    let path = format!("/venues/{venue}/endpoints/{gone_id}");
    assert_eq!(admin.patch(&path, json!({"enabled": true})).await.0, 200);
    assert_eq!(admin.patch(&path, json!({"enabled": true})).await.0, 200);
    assert_eq!(admin.patch(&path, json!({"enabled": false})).await.0, 200);
    let both = eventually(WAIT, || async {
        let events = ops_events(&secret, &ops_rx.received());
        let by_hand = of_type(&events, "endpoint.disabled", &gone_id)
            .iter()
            .any(|e| e["data"]["reason"] == "by_hand");
        (by_hand && of_type(&events, "endpoint.enabled", &gone_id).len() == 1).then_some(())
    })
    .await;
    assert!(
        both.is_some(),
        "{:#?}",
        ops_events(&secret, &ops_rx.received())
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_failed_for_good_tell_the_operational_endpoint_once_per_window() {
    // Three attempts a second apart; no endpoint is disabled in this test's time; the
    // deliveries failed for good at one endpoint within 3 s are one event.
    let stack = start_with(options(&[
        ("RETRY_SCHEDULE_SECONDS", "1,1"),
        ("EXHAUSTED_WINDOW_SECONDS", "3"),
        ("BREAKER_THRESHOLD", "100"),
    ]))
    .await;
    let (admin, ops_rx, secret) = with_operational_endpoint(&stack).await;
    let venue = format!("ops-{}", unique_prefix());
    let failing = FaultReceiver::start(vec![Mode::Status(503)]).await;
    let failing_id = admin
        .create_endpoint(&venue, json!({"url": failing.url, "event_types": ["*"]}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for n in 0..4 {
        publish_to(&admin, &venue, n).await;
    }
    let counted = |events: &[Value]| {
        of_type(events, "delivery.exhausted", &failing_id)
            .iter()
            .map(|e| e["data"]["count"].as_u64().unwrap())
            .sum::<u64>()
    };
    let heard = eventually(WAIT, || async {
        let events = ops_events(&secret, &ops_rx.received());
        (counted(&events) == 4).then_some(events)
    })
    .await;
    let Some(events) = heard else {
        // Where the missing ones are: the venue's deliveries, and what the operational
        // endpoint was sent (pending there, or never published).
        let (_, venue_side) = admin
            .get(&format!(
                "/venues/{venue}/endpoints/{failing_id}/deliveries?limit=100"
            ))
            .await;
        let (_, ops) = admin.get("/operational-endpoints").await;
        let (_, ops_side) = admin
            .get(&format!(
                "/operational-endpoints/{}/deliveries",
                ops["data"][0]["id"].as_str().unwrap_or_default()
            ))
            .await;
        panic!(
            "heard: {:#?}\nthe venue's deliveries: {venue_side:#}\nthe operational endpoint's: {ops_side:#}\nhits at the failing receiver: {}",
            ops_events(&secret, &ops_rx.received()),
            failing.hits().len()
        );
    };
    // Four deliveries failed within a second or two of each other: one event, or two where
    // a window's end fell between them; never one per delivery.
    let exhausted = of_type(&events, "delivery.exhausted", &failing_id);
    assert!(exhausted.len() <= 2, "{events:#?}");
    let ids: Vec<&str> = exhausted
        .iter()
        .flat_map(|e| e["data"]["delivery_ids"].as_array().unwrap())
        .map(|id| id.as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4, "{events:#?}");
    assert_eq!(
        ids.iter().collect::<std::collections::BTreeSet<_>>().len(),
        4
    );
    let x = &exhausted[0]["data"];
    assert_eq!(x["venue_id"], venue.as_str());
    assert_eq!(x["url"], failing.url.as_str());
    assert_eq!(x["last_status_code"], 503);
    assert_eq!(x["last_error_class"], "http_5xx");
    assert!(x["hint"].as_str().unwrap().contains("availability"), "{x}");
    assert!(x["window_start"].as_str().unwrap() < x["window_end"].as_str().unwrap());
    // Each is one event however often its window's close ran: no second one comes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let again = ops_events(&secret, &ops_rx.received());
    assert_eq!(
        of_type(&again, "delivery.exhausted", &failing_id).len(),
        exhausted.len()
    );
    let x = &exhausted[0]["data"];
    let (status, delivery) = admin
        .get(&format!(
            "/venues/{venue}/deliveries/{}",
            x["delivery_ids"][0].as_str().unwrap()
        ))
        .await;
    assert_eq!((status, &delivery["status"]), (200, &json!("failed")));
    assert_eq!(delivery["attempts"].as_array().map(Vec::len), Some(3));
    assert_eq!(failing.hits().len(), 12);
    // The operational endpoint's own history shows what it was sent.
    let (_, ops) = admin.get("/operational-endpoints").await;
    let ops_id = ops["data"][0]["id"].as_str().unwrap();
    let (status, history) = admin
        .get(&format!("/operational-endpoints/{ops_id}/deliveries"))
        .await;
    assert_eq!(status, 200, "{history}");
    assert!(history["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["event_type"] == "delivery.exhausted" && d["status"] == "succeeded"));
    stack.stop().await;
}
