//! The chaos soak (`make soak`: 10 minutes; a short run in `make test`): mixed traffic from
//! several venues (HTTP and the ingest queue, with and without ids, bursts) to receivers that
//! are healthy, flaky (10% 5xx), slow (3 s), hanging and gone (410), while a seeded schedule
//! of faults hits the functions' AWS calls: throttles, failed batch entries, writes slowed
//! past deliver's deadline, a deliver invocation stopped mid-batch, KMS errors, and every
//! partition key held to 5% of its AWS capacity. Then a ledger accounts for every accepted
//! event at every subscribed endpoint (docs/FAULTS.md has the figures of a long run).
//!
//! `SOAK_SECONDS` (traffic and faults; 30 by default, which `make test` runs) and `SOAK_SEED`
//! (7) choose the run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::proxy::{Fault, FaultProxy};
use integration_tests::*;
use local::iam::EVENT_SOURCE;
use local::{Stack, StackOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// The receivers' behaviours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Healthy,
    /// 500 to the first request of one event in ten, 200 after.
    Flaky,
    /// 200 after 3 s (the request timeout is 4 s here).
    Slow,
    /// Says nothing for 30 s.
    Hanging,
    /// 410 Gone: the endpoint is disabled at its first attempt.
    Gone,
}

const KINDS: [Kind; 5] = [
    Kind::Healthy,
    Kind::Flaky,
    Kind::Slow,
    Kind::Hanging,
    Kind::Gone,
];

impl Kind {
    /// Whether every accepted event must end delivered there.
    fn delivers(self) -> bool {
        matches!(self, Kind::Healthy | Kind::Flaky | Kind::Slow)
    }
}

/// What one accepted event is known by: its id, or (a queued message without one) the part
/// of the id ingest derives from the message id.
#[derive(Clone, Debug)]
enum Known {
    Id(String),
    MessageSuffix(String),
}

#[derive(Default)]
struct Published {
    /// (venue, seq) → how the event is known.
    accepted: BTreeMap<(usize, u64), Known>,
    /// HTTP publishes without an id answered 5xx (their event may be stored all the same).
    refused_without_id: usize,
    /// HTTP answers 503 `timeout` (the api's own, before its deadline).
    api_timeouts: usize,
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The traffic: one event after a pause drawn from this range (ms), and a burst of 20 every
/// `BURST_EVERY_SECONDS`: about 1.5 events a second, 7.5 deliveries, and the retries, holds
/// and probes of the failing receivers. What this machine's stack (moto serving every call
/// of three functions, through two proxies) drains while faults hit it: at 5 events a second
/// (pauses of 50–250 ms, a burst every 8 s) a 60 s run passed and 120 s runs left thousands
/// of jobs waiting in the delivery queue at the end of the drain.
const PAUSE_MS: std::ops::Range<u64> = 500..1500;
const BURST_EVERY_SECONDS: u64 = 40;

fn soak_options() -> StackOptions {
    let mut o = local_options_with(&[
        ("RETRY_SCHEDULE_SECONDS", "1,2,2"),
        ("REQUEST_TIMEOUT_MS", "4000"),
        ("OVERLOAD_WAIT_MS", "2000"),
        ("OUTAGE_BACKOFF_BASE_MS", "500"),
        ("RESUME_DELAY_SECONDS", "1"),
        ("DEADLINE_RESERVE_MS", "3000"),
        ("EXHAUSTED_WINDOW_SECONDS", "2"),
        // The breaker's clock compressed like the retries': an open circuit probes after 5 s
        // (up to 20 s), a held delivery looks again within a minute. (Within 10 s, the
        // hanging receivers' ~1,700 held deliveries were re-queued faster than this machine's
        // deliver takes them: 3,839 messages waiting at the end of a 120 s run, healthy jobs
        // among them. Each held delivery is a message of its own until the next issue.)
        ("BREAKER_MAX_HOLD_MS", "60000"),
        ("BREAKER_COOLDOWN_MS", "5000"),
        ("BREAKER_MAX_COOLDOWN_MS", "20000"),
        // The slow receivers (3 s a request) at 20 attempts at once: 6.7 deliveries a second
        // each, above the traffic's ~5 events a second, so their backlog drains. (At the
        // template's 10 they take 3.3 a second: a run outgrows them, as it would on AWS,
        // and its ledger would wait on the cap, not on anything lost.)
        ("ENDPOINT_MAX_CONCURRENCY", "20"),
    ]);
    for (function, secs) in [
        (local::DELIVER_FUNCTION, 12),
        (local::INGEST_FUNCTION, 8),
        (local::API_FUNCTION, 8),
    ] {
        o.function_timeouts
            .insert(function.into(), Duration::from_secs(secs));
    }
    // Twice the functions' timeouts (the template keeps six times): a batch is not handed
    // to a second invocation while the first, started late in a busy moment, still runs.
    for (queue, secs) in [("DeliveryQueue", "24"), ("IngestQueue", "16")] {
        o.queue_overrides.insert(
            queue.into(),
            [("VisibilityTimeout".to_owned(), secs.to_owned())].into(),
        );
    }
    o.schedule_every = Some(Duration::from_secs(1));
    o.capacity = Some(local::capacity::Budgets::scaled(0.05));
    o
}

/// A receiver that keeps every request (headers and body) and answers as its kind does.
#[derive(Clone)]
struct SoakReceiver {
    kind: Kind,
    url: String,
    got: Arc<Mutex<Vec<Captured>>>,
    seen: Arc<Mutex<HashMap<String, usize>>>,
}

impl SoakReceiver {
    async fn start(kind: Kind) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rx = SoakReceiver {
            kind,
            url: format!("http://{}/hooks", listener.local_addr().unwrap()),
            got: Arc::default(),
            seen: Arc::default(),
        };
        let handle = rx.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let handle = handle.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let handle = handle.clone();
                            async move { handle.answer(req).await }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        rx
    }

    async fn answer(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, hyper::Error> {
        use http_body_util::BodyExt;
        let mut headers: HashMap<String, String> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        // The moment of receipt: verified later as the receiver would have verified it then
        // (tests/verifiers/verify.py), not with a clock minutes past the timestamp tolerance.
        let received_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        headers.insert("x-received-at".into(), received_at.to_string());
        let body = req.into_body().collect().await?.to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        let id = headers.get("webhook-id").cloned().unwrap_or_default();
        let nth = {
            let mut seen = self.seen.lock().unwrap();
            let n = seen.entry(id.clone()).or_default();
            *n += 1;
            *n
        };
        self.got.lock().unwrap().push(Captured { headers, body });
        let status = match self.kind {
            Kind::Healthy => 200,
            Kind::Flaky if nth == 1 && shared::model::ids::shard_of(&id, 10) == 0 => 500,
            Kind::Flaky => 200,
            Kind::Slow => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                200
            }
            Kind::Hanging => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                200
            }
            Kind::Gone => 410,
        };
        let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(
            "soak receiver",
        )));
        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        Ok(response)
    }

    fn received(&self) -> Vec<Captured> {
        self.got.lock().unwrap().clone()
    }
}

/// One venue's endpoints: (kind, id, secret).
type Endpoints = Vec<(Kind, String, String)>;

/// The seeded schedule of faults: one every 4 s, each for 2 to 3 s. Returns what it armed.
fn arm_fault(proxy: &FaultProxy, stack: &Stack, rng: &mut StdRng) -> &'static str {
    let deliver = stack
        .provisioned
        .identity_of(local::DELIVER_FUNCTION)
        .unwrap();
    let short = Duration::from_millis(rng.random_range(2000..3000));
    match rng.random_range(0..6) {
        0 => {
            proxy.inject("PutItem", Fault::Throttled, short);
            proxy.inject("UpdateItem", Fault::Throttled, short);
            "DynamoDB writes throttled"
        }
        1 => {
            proxy.inject("SendMessageBatch", Fault::FailOneEntry, short);
            "one entry of every SendMessageBatch failed"
        }
        2 => {
            for op in ["PutItem", "UpdateItem", "BatchWriteItem"] {
                proxy.inject_for(deliver, op, Fault::Slow(Duration::from_secs(5)), short);
            }
            "deliver's writes slowed past its reserve"
        }
        3 => {
            // As Lambda stops a function that crashes: no warning, the batch back whole.
            let after = Duration::from_millis(rng.random_range(300..3000));
            stack.stop_next_invocation(local::DELIVER_FUNCTION, after);
            "a deliver invocation stopped mid-batch"
        }
        4 => {
            proxy.inject("TrentService.", Fault::Unavailable, short);
            "KMS unavailable"
        }
        _ => {
            proxy.inject("BatchGetItem", Fault::Unprocessed, short);
            "BatchGetItem unprocessed"
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_accounts_for_every_accepted_event() {
    let seconds = env_number("SOAK_SECONDS", 30);
    let seed = env_number("SOAK_SEED", 7);
    init_logs();
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("run with `make test` or `make soak`");
    let proxy = FaultProxy::start(&moto).await;
    let through_proxy = aws_config::defaults(shared::storage::services::behavior_version())
        .endpoint_url(&proxy.url)
        .load()
        .await;
    let stack = Stack::start(through_proxy, soak_options())
        .await
        .expect("stack starts");
    proxy.trust_stack(&stack);
    let api = Client::new(&stack);
    let prefix = unique_prefix();

    let mut receivers = BTreeMap::new();
    for kind in KINDS {
        receivers.insert(kind, SoakReceiver::start(kind).await);
    }
    let venues: Vec<String> = (0..3).map(|i| format!("soak-{prefix}-{i}")).collect();
    let mut endpoints: Vec<Endpoints> = Vec::new();
    for venue in &venues {
        let mut of_venue = Vec::new();
        for kind in KINDS {
            let ep = api
                .create_endpoint(
                    venue,
                    json!({"url": receivers[&kind].url, "event_types": ["*"]}),
                )
                .await;
            of_venue.push((
                kind,
                ep["id"].as_str().unwrap().to_owned(),
                ep["secret"].as_str().unwrap().to_owned(),
            ));
        }
        endpoints.push(of_venue);
    }
    let source = aws_sdk_sqs::Client::new(
        &stack
            .provisioned
            .identity_of(EVENT_SOURCE)
            .unwrap()
            .sdk_config(&aws().await),
    );
    let unrecorded_before = shared::pipeline::dispatch::unrecorded_attempts();

    // Traffic and faults, for `seconds`.
    let mut rng = StdRng::seed_from_u64(seed);
    // The faults draw from their own sequence: the same seed arms the same faults in order.
    let mut fault_rng = StdRng::seed_from_u64(seed ^ 0xfa_u64);
    let published = Arc::new(Mutex::new(Published::default()));
    let seq = AtomicUsize::new(0);
    let mut armed: BTreeMap<&str, usize> = BTreeMap::new();
    let started = Instant::now();
    let mut next_fault = started + Duration::from_secs(2);
    let mut next_burst = started + Duration::from_secs(5);
    let mut http = tokio::task::JoinSet::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        if Instant::now() >= next_fault {
            *armed
                .entry(arm_fault(&proxy, &stack, &mut fault_rng))
                .or_default() += 1;
            next_fault += Duration::from_secs(4);
        }
        let venue = rng.random_range(0..venues.len());
        let burst = Instant::now() >= next_burst;
        if burst {
            next_burst += Duration::from_secs(BURST_EVERY_SECONDS);
        }
        let count = if burst { 20 } else { 1 };
        let by_queue = burst || rng.random_bool(0.5);
        let with_id = rng.random_bool(0.5);
        let mut entries = Vec::new();
        for _ in 0..count {
            let n = seq.fetch_add(1, Ordering::SeqCst) as u64;
            let id = with_id.then(|| format!("soak-{prefix}-{n}"));
            entries.push((n, id));
        }
        if by_queue {
            for chunk in entries.chunks(10) {
                let batch: Vec<_> = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, (n, id))| {
                        let mut body = json!({"venue_id": venues[venue], "type": "order.created", "data": {"seq": n}});
                        if let Some(id) = id {
                            body["id"] = json!(id);
                        }
                        aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(body.to_string())
                            .build()
                            .unwrap()
                    })
                    .collect();
                let out = source
                    .send_message_batch()
                    .queue_url(stack.queue_url("IngestQueue"))
                    .set_entries(Some(batch))
                    .send()
                    .await
                    .unwrap();
                assert!(out.failed.is_empty(), "{:?}", out.failed);
                let mut p = published.lock().unwrap();
                for ok in out.successful {
                    let (n, id) = &chunk[ok.id.parse::<usize>().unwrap()];
                    let known = match id {
                        Some(id) => Known::Id(id.clone()),
                        None => Known::MessageSuffix(message_suffix(&ok.message_id)),
                    };
                    p.accepted.insert((venue, *n), known);
                }
            }
        } else {
            let (n, id) = entries.remove(0);
            let (api, path, published) = (
                api.clone(),
                format!("/venues/{}/events", venues[venue]),
                published.clone(),
            );
            http.spawn(async move {
                let mut body = json!({"type": "order.created", "data": {"seq": n}});
                if let Some(id) = &id {
                    body["id"] = json!(id);
                }
                // With an id, repeated until accepted, as a producer would; without one a
                // repeat would be another event, so a 5xx is a refusal.
                for _ in 0..20 {
                    let (status, answer) = api.post(&path, body.clone()).await;
                    let done = {
                        let mut p = published.lock().unwrap();
                        if answer["error"]["code"] == "timeout" {
                            p.api_timeouts += 1;
                        }
                        match status {
                            202 => {
                                let id = answer["id"].as_str().unwrap().to_owned();
                                p.accepted.insert((venue, n), Known::Id(id));
                                true
                            }
                            500..=599 if id.is_none() => {
                                p.refused_without_id += 1;
                                true
                            }
                            500..=599 => false,
                            _ => panic!("{status} {answer}"),
                        }
                    };
                    if done {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                panic!("event {n} refused 20 times");
            });
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(PAUSE_MS))).await;
    }
    while let Some(done) = http.join_next().await {
        done.unwrap();
    }
    let traffic = started.elapsed();

    // The ledger: every accepted event at every endpoint, once what must be delivered is.
    let by_id = |published: &Published| {
        let mut ids: HashMap<(usize, String), u64> = HashMap::new();
        for ((venue, n), known) in &published.accepted {
            let key = match known {
                Known::Id(id) => id.clone(),
                Known::MessageSuffix(suffix) => suffix.clone(),
            };
            ids.insert((*venue, key), *n);
        }
        ids
    };
    let published = Arc::try_unwrap(published)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap();
    let drained = eventually(Duration::from_secs(180 + seconds / 2), || async {
        let ledger = Ledger::read(&api, &venues, &endpoints, &by_id(&published)).await;
        ledger.complete(published.accepted.len()).then_some(ledger)
    })
    .await;
    let ledger = match drained {
        Some(ledger) => ledger,
        None => {
            let ledger = Ledger::read(&api, &venues, &endpoints, &by_id(&published)).await;
            panic!(
                "not every accepted event was delivered where it must be: {:#?}\n{:#?}\nwhere they are:\n{}\nthe hottest keys:\n{}\nthe functions logged:\n{}",
                ledger.missing(published.accepted.len()),
                (&ledger.unreadable, &ledger.undelivered, &ledger.absent),
                whereabouts(&stack, &ledger.undelivered).await,
                hottest_keys(&stack),
                function_errors()
            );
        }
    };

    // Receipts beyond the recorded attempts: each an attempt that went out and whose record
    // could not be written (a stopped invocation, a write that failed), which deliver counts.
    // The receipts are taken first, the attempts read once every request then under way has
    // ended and been recorded (the request timeout is 4 s).
    let snapshot: BTreeMap<Kind, Vec<Captured>> = receivers
        .iter()
        .map(|(kind, rx)| (*kind, rx.received()))
        .collect();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let ids = by_id(&published);
    let after = match eventually(Duration::from_secs(60), || async {
        let ledger = Ledger::read(&api, &venues, &endpoints, &ids).await;
        ledger.complete(published.accepted.len()).then_some(ledger)
    })
    .await
    {
        Some(after) => after,
        None => {
            let ledger = Ledger::read(&api, &venues, &endpoints, &ids).await;
            panic!(
                "the history no longer tells every accepted event: {:?}; not in history: {:#?}",
                ledger.counts, ledger.absent
            );
        }
    };
    let mut extra = 0;
    let mut unexplained = Vec::new();
    let mut extra_by_kind: BTreeMap<Kind, usize> = BTreeMap::new();
    for (kind, got) in &snapshot {
        let mut receipts: HashMap<String, usize> = HashMap::new();
        for r in got {
            *receipts.entry(r.headers["webhook-id"].clone()).or_default() += 1;
        }
        for (event, n) in receipts {
            let recorded = after
                .attempts
                .get(&(*kind, event.clone()))
                .copied()
                .unwrap_or(0);
            let beyond = n.saturating_sub(recorded);
            if beyond > 0 && unexplained.len() < 12 {
                let history = after.entries.get(&(*kind, event.clone()));
                unexplained.push(format!(
                    "{kind:?} {event}: {n} receipts, {recorded} recorded: {history:?}"
                ));
            }
            extra += beyond;
            *extra_by_kind.entry(*kind).or_default() += beyond;
        }
    }
    let unrecorded = shared::pipeline::dispatch::unrecorded_attempts() - unrecorded_before;
    assert!(
        extra as u64 <= unrecorded,
        "{extra} receipts beyond the recorded attempts ({extra_by_kind:?}), {unrecorded} attempts unrecorded; some: {unexplained:#?}"
    );
    // Every receipt verifies, under the secret of one of its receiver's endpoints.
    for kind in receivers.keys() {
        let got = &snapshot[kind];
        let secrets: Vec<&str> = endpoints
            .iter()
            .flat_map(|eps| eps.iter().filter(|(k, _, _)| k == kind))
            .map(|(_, _, secret)| secret.as_str())
            .collect();
        let verdicts: Vec<Vec<String>> = secrets
            .iter()
            .map(|secret| verify_with_python(secret, got))
            .collect();
        for i in 0..got.len() {
            assert!(
                verdicts.iter().any(|v| v[i] == "ok"),
                "a receipt at the {kind:?} receiver does not verify: {:?}",
                got[i].headers
            );
        }
    }

    // Events in history that no accepted publish names: only HTTP publishes without an id
    // that were answered 5xx after their event was stored.
    assert!(
        ledger.unknown_events.len() <= published.refused_without_id,
        "unknown events {:?}, refusals {}",
        ledger.unknown_events,
        published.refused_without_id
    );
    // Nothing in a DLQ, no note of an unqueued event left.
    let sqs = aws_sdk_sqs::Client::new(&aws().await);
    for dlq in ["DeliveryDeadLetterQueue", "IngestDeadLetterQueue"] {
        let url = stack.queue_url(dlq);
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .unwrap();
        let n = attrs
            .attributes()
            .and_then(|a| {
                a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            })
            .cloned()
            .unwrap_or_default();
        assert_eq!(n, "0", "{dlq}");
    }
    let notes = eventually(Duration::from_secs(30), || async {
        let left = all_items(&stack)
            .await
            .into_iter()
            .filter(|(t, i)| t == "EventsTable" && i.contains("S(\"#unqueued"))
            .count();
        (left == 0).then_some(())
    })
    .await;
    assert!(notes.is_some(), "notes of unqueued events left");

    let invocations = stack.invocations.lock().unwrap().clone();
    let stopped: BTreeMap<&String, u64> =
        invocations.iter().map(|(f, i)| (f, i.timed_out)).collect();
    let receipts: usize = receivers.values().map(|r| r.received().len()).sum();
    println!(
        "soak: seed {seed}, {:.0} s of traffic and faults; {} events accepted ({} over HTTP without an id refused, {} api timeouts); {receipts} receipts, all verified; {extra} beyond the recorded attempts, {unrecorded} attempts unrecorded",
        traffic.as_secs_f64(),
        published.accepted.len(),
        published.refused_without_id,
        published.api_timeouts,
    );
    println!("soak: ledger {:?}", ledger.counts);
    assert!(after.twice.is_empty(), "{:#?}", after.twice);
    println!(
        "soak: faults armed {armed:?}; applied {:?}",
        proxy.applied()
    );
    println!(
        "soak: capacity throttles {}; invocations (stopped mid-batch, stopped at the timeout) {stopped:?}",
        stack.capacity.as_ref().map_or(0, |m| m.throttled())
    );
    println!("soak: the hottest keys:\n{}", hottest_keys(&stack));
    stack.stop().await;
}

/// What the queues hold, and the stored items that name each event not in history (its
/// event item; a waiting job in the retries table): whether its work still waits somewhere.
async fn whereabouts(stack: &local::Stack, undelivered: &[String]) -> String {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let sqs = aws_sdk_sqs::Client::new(&aws().await);
    let mut out = Vec::new();
    for queue in ["DeliveryQueue", "IngestQueue", "DeliveryDeadLetterQueue"] {
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(stack.queue_url(queue))
            .attribute_names(A::All)
            .send()
            .await
            .ok()
            .and_then(|a| a.attributes)
            .unwrap_or_default();
        let get = |a: A| attrs.get(&a).cloned().unwrap_or_default();
        out.push(format!(
            "  {queue}: {} visible, {} in flight, {} delayed",
            get(A::ApproximateNumberOfMessages),
            get(A::ApproximateNumberOfMessagesNotVisible),
            get(A::ApproximateNumberOfMessagesDelayed)
        ));
    }
    // What waits in the delivery queue: a sample, left visible.
    if let Ok(sample) = sqs
        .receive_message()
        .queue_url(stack.queue_url("DeliveryQueue"))
        .max_number_of_messages(10)
        .visibility_timeout(0)
        .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
        .send()
        .await
    {
        for m in sample.messages() {
            out.push(format!(
                "  waiting (received {} times): {}",
                m.attributes()
                    .and_then(|a| a.get(
                        &aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount
                    ))
                    .cloned()
                    .unwrap_or_default(),
                m.body().unwrap_or("").chars().take(240).collect::<String>()
            ));
        }
    }
    let ddb = aws_sdk_dynamodb::Client::new(&stack.aws);
    let mut items = Vec::new();
    for table in ["EventsTable", "RetriesTable"] {
        let mut pages = ddb
            .scan()
            .table_name(&stack.provisioned.physical[table])
            .into_paginator()
            .items()
            .send();
        while let Some(Ok(item)) = pages.next().await {
            items.push((table.to_owned(), format!("{item:?}")));
        }
    }
    for line in undelivered
        .iter()
        .filter(|l| l.ends_with("not in history"))
        .take(6)
    {
        let Some(key) = line.split(['(', ')']).nth(1) else {
            continue;
        };
        let naming: Vec<String> = items
            .iter()
            .filter(|(_, item)| item.contains(key))
            .map(|(table, item)| format!("{table}: {}", item.chars().take(300).collect::<String>()))
            .collect();
        out.push(format!("  {line}: named by {naming:#?}"));
    }
    out.join("\n")
}

/// The partition keys the meter refused most often, with what they spent (one a line).
fn hottest_keys(stack: &local::Stack) -> String {
    let Some(meter) = stack.capacity.as_ref() else {
        return String::new();
    };
    let mut usage = meter.usage();
    usage.sort_by_key(|u| std::cmp::Reverse(u.throttled));
    usage
        .iter()
        .take(8)
        .map(|u| {
            format!(
                "  {} {}: {} refused; {:.0} read, {:.0} write units (peak {:.0}/{:.0} a second)",
                u.resource,
                u.key,
                u.throttled,
                u.read_units,
                u.write_units,
                u.peak_read,
                u.peak_write
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The part of an event id ingest derives from a queued message's id (its last 16
/// characters: [`shared::model::ids::EventId::of_message`]).
fn message_suffix(message_id: &str) -> String {
    let id = shared::model::ids::EventId::of_message(message_id, 0);
    let id = id.as_str();
    id[id.len() - 16..].to_owned()
}

/// What the endpoints' histories say of the accepted events.
#[derive(Debug, Default)]
struct Ledger {
    /// (kind, state) → how many (venue, event) pairs.
    counts: BTreeMap<(Kind, &'static str), usize>,
    /// (kind, event id) → attempts recorded.
    attempts: HashMap<(Kind, String), usize>,
    /// Accepted events delivered where they must be, per kind.
    delivered: BTreeMap<Kind, BTreeSet<(usize, u64)>>,
    /// Event ids in history that no accepted publish names.
    unknown_events: BTreeSet<String>,
    /// Accepted events with two deliveries at one endpoint.
    twice: Vec<String>,
    /// A history page that could not be read (the last answer).
    unreadable: Option<String>,
    /// Accepted events not delivered (yet) where they must be, with what history says.
    undelivered: Vec<String>,
    /// (kind, event id) → its history entries (id, status, attempts), for a failure's message.
    entries: HashMap<(Kind, String), Vec<String>>,
    /// Accepted events not in an endpoint's history at all (every kind: a held or disabled
    /// endpoint's events are pending there), a few of each endpoint.
    absent: Vec<String>,
}

impl Ledger {
    async fn read(
        api: &Client,
        venues: &[String],
        endpoints: &[Endpoints],
        ids: &HashMap<(usize, String), u64>,
    ) -> Ledger {
        let mut ledger = Ledger::default();
        for (v, venue) in venues.iter().enumerate() {
            let accepted: BTreeSet<u64> = ids
                .iter()
                .filter(|((venue, _), _)| *venue == v)
                .map(|(_, n)| *n)
                .collect();
            for (kind, endpoint, _) in &endpoints[v] {
                let mut seen = BTreeSet::new();
                let mut first_of: HashMap<u64, String> = HashMap::new();
                let mut cursor: Option<String> = None;
                loop {
                    let mut path =
                        format!("/venues/{venue}/endpoints/{endpoint}/deliveries?limit=100");
                    if let Some(c) = &cursor {
                        path.push_str(&format!("&cursor={c}"));
                    }
                    // While AWS is failing the API may answer 503: read again, then give up
                    // (the caller reads the whole ledger again later).
                    let mut answer = api.get(&path).await;
                    for _ in 0..5 {
                        if answer.0 == 200 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        answer = api.get(&path).await;
                    }
                    let (status, page) = answer;
                    if status != 200 {
                        return Ledger {
                            unreadable: Some(format!("{path}: {status} {page}")),
                            ..Ledger::default()
                        };
                    }
                    for d in page["data"].as_array().into_iter().flatten() {
                        let event = d["event_id"].as_str().unwrap().to_owned();
                        let n = ids.get(&(v, event.clone())).or_else(|| {
                            ids.get(&(v, event[event.len().saturating_sub(16)..].to_owned()))
                        });
                        *ledger.attempts.entry((*kind, event.clone())).or_default() +=
                            d["attempt_count"].as_u64().unwrap_or(0) as usize;
                        let Some(n) = n else {
                            ledger.unknown_events.insert(event);
                            continue;
                        };
                        if !seen.insert(*n) {
                            ledger
                                .twice
                                .push(format!("{kind:?} v{v} seq {n}: {} and {d}", first_of[n]));
                        }
                        first_of.entry(*n).or_insert_with(|| d.to_string());
                        let state = match d["status"].as_str().unwrap() {
                            "succeeded" => "delivered",
                            "failed" => "failed",
                            _ => "pending",
                        };
                        *ledger.counts.entry((*kind, state)).or_default() += 1;
                        if state == "delivered" {
                            ledger.delivered.entry(*kind).or_default().insert((v, *n));
                        } else if kind.delivers() {
                            ledger
                                .undelivered
                                .push(format!("{kind:?} v{v} seq {n}: {d}"));
                        }
                    }
                    match page["next_cursor"].as_str() {
                        Some(c) => cursor = Some(c.to_owned()),
                        None => break,
                    }
                }
                // Not in history (not fanned out yet): at every endpoint, whatever its
                // receiver does, each accepted event ends up in history (held ones pending).
                let absent = accepted.difference(&seen).count();
                for n in accepted.difference(&seen).take(5) {
                    let key = ids
                        .iter()
                        .find(|((venue, _), seq)| *venue == v && *seq == n)
                        .map(|((_, key), _)| key.as_str())
                        .unwrap_or("?");
                    let line = format!("{kind:?} v{v} seq {n} ({key}): not in history");
                    if kind.delivers() {
                        ledger.undelivered.push(line.clone());
                    }
                    ledger.absent.push(line);
                }
                if absent > 0 {
                    *ledger.counts.entry((*kind, "not in history")).or_default() += absent;
                }
            }
        }
        ledger
    }

    /// Every accepted event in history at every endpoint, and delivered at each endpoint
    /// that must deliver it (3 venues).
    fn complete(&self, accepted: usize) -> bool {
        accepted > 0
            && self.absent.is_empty()
            && KINDS
                .iter()
                .filter(|k| k.delivers())
                .all(|k| self.delivered.get(k).map_or(0, BTreeSet::len) == accepted)
    }

    fn missing(&self, accepted: usize) -> BTreeMap<Kind, (usize, usize)> {
        KINDS
            .iter()
            .filter(|k| k.delivers())
            .map(|k| {
                (
                    *k,
                    (self.delivered.get(k).map_or(0, BTreeSet::len), accepted),
                )
            })
            .collect()
    }
}
