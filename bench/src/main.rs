//! `popup-bench`: the performance and cost figures of docs/PERFORMANCE.md, measured here.
//!
//! `make bench` runs it in release mode and writes docs/PERFORMANCE.md; `make test` runs
//! `popup-bench --smoke` (the same code on tiny inputs, seconds) so the benches never rot.
//! It needs the local AWS endpoint in `AWS_ENDPOINT_URL` (the Makefile starts moto).

mod bad_day;
mod cost;
mod history;
mod logs;
mod proxy;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use local::{Stack, StackOptions};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use cost::{Capacity, UnitsPerDelivery, PRICES};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const ADMIN_KEY: &str = "bench-admin-key-0123456789abcdef0123";

/// One row of the table in docs/PERFORMANCE.md.
struct Row {
    figure: String,
    value: String,
    goal: String,
    met: Option<bool>,
}

struct Report {
    smoke: bool,
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    fn row(&mut self, figure: &str, value: String, goal: &str, met: Option<bool>) {
        println!("{figure}: {value} (goal {goal})");
        self.rows.push(Row {
            figure: figure.into(),
            value,
            goal: goal.into(),
            met,
        });
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A receiver on loopback that answers 200 after `delay`, counting the successes; with
/// `fail_every` = n, every nth request (counting all) is answered 500 instead.
async fn receiver(
    delay: Duration,
    fail_every: Option<u64>,
) -> Result<(String, Arc<AtomicU64>), BoxError> {
    receiver_saying(delay, fail_every, 2).await
}

/// [`receiver`] whose failures answer a body of `fail_body` bytes (an error page).
async fn receiver_saying(
    delay: Duration,
    fail_every: Option<u64>,
    fail_body: usize,
) -> Result<(String, Arc<AtomicU64>), BoxError> {
    let error_page = Bytes::from(format!(
        "error: {}",
        "x".repeat(fail_body.saturating_sub(7))
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks", listener.local_addr()?);
    let hits = Arc::new(AtomicU64::new(0));
    let all = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (counter, all, error_page) = (counter.clone(), all.clone(), error_page.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (counter, all, error_page) =
                        (counter.clone(), all.clone(), error_page.clone());
                    async move {
                        let _ = req.into_body().collect().await;
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        let n = all.fetch_add(1, Ordering::SeqCst) + 1;
                        let mut response =
                            hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
                        if fail_every.is_some_and(|every| n % every == every / 2) {
                            response = hyper::Response::new(Full::new(error_page));
                            *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                        } else {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok::<_, hyper::Error>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((url, hits))
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("b{tag}{:x}", nanos % 0xffff_ffff_ffff)
}

async fn stack(aws: aws_config::SdkConfig, tag: &str, deliver: bool) -> Result<Stack, BoxError> {
    stack_with(aws, tag, deliver, &[]).await
}

async fn stack_with(
    aws: aws_config::SdkConfig,
    tag: &str,
    deliver: bool,
    env: &[(&str, &str)],
) -> Result<Stack, BoxError> {
    let mut options = StackOptions::local(
        &unique(tag),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        ADMIN_KEY,
    );
    options.run_deliver = deliver;
    // A batch's busy time must be its own: moto serves one call at a time, so batches run
    // side by side here would wait for each other's calls and each count that wait (on
    // AWS they do not). One batch per poller, as the local mapping ran before it learned
    // MaximumConcurrency.
    options.max_concurrency = Some(options.pollers);
    // No sweep of the retries table: no workload here waits past SQS's 15 minutes, and a new
    // stack's first sweep looks back an hour of slots (960 queries, about 1,000 read units),
    // a cost of the stack's first minute that would land in whichever run it fell in.
    options.schedule_every = Some(Duration::from_secs(24 * 3600));
    for (name, value) in env {
        options
            .env_overrides
            .insert((*name).to_owned(), (*value).to_owned());
    }
    Ok(Stack::start(aws, options).await?)
}

async fn create_endpoints(
    http: &reqwest::Client,
    stack: &Stack,
    venue: &str,
    url: &str,
    n: usize,
) -> Result<(), BoxError> {
    for _ in 0..n {
        let status = http
            .post(format!("{}/venues/{venue}/endpoints", stack.api_url))
            .bearer_auth(ADMIN_KEY)
            .body(json!({"url": url, "event_types": ["order.*"]}).to_string())
            .send()
            .await?
            .status();
        if status != 201 {
            return Err(format!("creating an endpoint answered {status}").into());
        }
    }
    Ok(())
}

/// About 1 KiB of event data: a ticket order as a venue's tools receive it, with ids and
/// amounts that differ from event to event (not a run of one repeated character).
fn event_data(i: usize) -> Value {
    let mut state = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let names = [
        "Ada Obi",
        "Bruno Kessler",
        "Chen Wei",
        "Dana Ruiz",
        "Emeka Nwosu",
    ];
    let name = names[(next() % names.len() as u64) as usize];
    let first_name = name.split(' ').next().unwrap_or("x").to_lowercase();
    let discount = if next() % 3 == 0 {
        Value::from(format!("WINTER{}", next() % 100))
    } else {
        Value::Null
    };
    let tickets: Vec<Value> = (0..4)
        .map(|k| {
            let price = 1500 + next() % 6000;
            let tier = ["general", "general", "balcony", "vip"][k];
            let row = ["A", "B", "C", "D"][(next() % 4) as usize];
            json!({
                "ticket_id": format!("tkt_{:016x}", next()),
                "tier": tier,
                "seat": format!("{row}-{}", next() % 40),
                "price_cents": price,
                "barcode": format!("{:020}", next()),
            })
        })
        .collect();
    json!({
        "order_id": format!("ord_{:016x}", next()),
        "status": "paid",
        "venue": {"id": "ven_lantern_hall", "name": "The Lantern Hall, Bristol"},
        "placed_at": format!("2026-11-27T{:02}:{:02}:{:02}Z", next() % 24, next() % 60, next() % 60),
        "performance": {
            "id": format!("perf_{:012x}", next() % 0xffff_ffff_ffff),
            "title": "Late Quartet: Beethoven Op. 131",
            "starts_at": "2026-12-12T19:30:00Z",
        },
        "customer": {
            "id": format!("cus_{:012x}", next() % 0xffff_ffff_ffff),
            "name": name,
            "email": format!("{first_name}.{}@example.org", next() % 10_000),
            "marketing_opt_in": next() % 2 == 0,
        },
        "tickets": tickets,
        "totals": {
            "currency": "GBP",
            "subtotal_cents": 4500 + next() % 9000,
            "fees_cents": 150 + next() % 300,
            "discount_code": discount,
        },
        "payment": {"method": "card", "brand": "visa", "last4": format!("{:04}", next() % 10_000)},
        "channel": "web",
    })
}

/// Queues `events` events (`event_data`) through the ingest queue as event sources send them,
/// in batches of 10, to `venues` in turn.
async fn queue_events(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    venues: &[String],
    events: usize,
) -> Result<(), BoxError> {
    for chunk in (0..events).collect::<Vec<_>>().chunks(10) {
        let entries = chunk
            .iter()
            .map(|i| {
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(
                        json!({"venue_id": venues[i % venues.len()], "type": "order.created", "data": event_data(*i)})
                            .to_string(),
                    )
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        sqs.send_message_batch()
            .queue_url(queue)
            .set_entries(Some(entries))
            .send()
            .await?;
    }
    Ok(())
}

/// A GET of the stack's API with the admin key, its answer as JSON (`null` if it is not).
async fn admin_get(http: &reqwest::Client, url: &str) -> Result<Value, BoxError> {
    let body = http
        .get(url)
        .bearer_auth(ADMIN_KEY)
        .send()
        .await?
        .bytes()
        .await?;
    Ok(serde_json::from_slice(&body).unwrap_or_default())
}

async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

async fn queue_empty(sqs: &aws_sdk_sqs::Client, url: &str) -> bool {
    let Ok(out) = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
    else {
        return false;
    };
    let attrs = out.attributes.unwrap_or_default();
    [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    .iter()
    .all(|name| {
        attrs
            .get(&aws_sdk_sqs::types::QueueAttributeName::from(*name))
            .is_some_and(|v| v == "0")
    })
}

/// What one fan-out run counted.
struct FanoutRun {
    fanout: usize,
    events: usize,
    /// Deliveries that needed more than their first attempt.
    retried: usize,
    counts: BTreeMap<String, u64>,
    units: UnitsPerDelivery,
    event_item_bytes: f64,
    delivery_item_bytes: f64,
    /// What each DynamoDB partition key spent (the stack's capacity meter), busiest first.
    keys: Vec<local::capacity::KeyUsage>,
    venues: Vec<String>,
    /// Log lines (metric lines included) per delivery.
    log_lines: f64,
}

impl FanoutRun {
    fn deliveries(&self) -> f64 {
        (self.fanout * self.events) as f64
    }

    /// The key that would reach its budget on AWS at the lowest rate of deliveries: its name
    /// (venue ids shown as `{venue}`), read and write units per delivery, and that rate.
    fn hottest_key(&self) -> Option<(String, f64, f64, f64)> {
        self.hottest_key_where(|_| true)
    }

    /// [`FanoutRun::hottest_key`] among the keys `filter` keeps.
    fn hottest_key_where(
        &self,
        filter: impl Fn(&local::capacity::KeyUsage) -> bool,
    ) -> Option<(String, f64, f64, f64)> {
        bad_day::hottest(&self.keys, &self.venues, self.deliveries(), filter)
    }

    fn count(&self, prefix: &str) -> u64 {
        self.counts
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    }
}

/// Events through the ingest queue (as event sources send them, in batches of 10), fanned out
/// to `fanout` endpoints, all delivered first try; every AWS request of ingest and deliver
/// counted through the proxy.
async fn fanout_run(
    moto: &str,
    (fanout, venues): (usize, usize),
    events: usize,
    fail_every: Option<u64>,
) -> Result<FanoutRun, BoxError> {
    fanout_run_saying(moto, (fanout, venues), events, (fail_every, 2)).await
}

/// [`fanout_run`] whose receiver's failures answer `fail_body` bytes.
async fn fanout_run_saying(
    moto: &str,
    (fanout, venues): (usize, usize),
    events: usize,
    (fail_every, fail_body): (Option<u64>, usize),
) -> Result<FanoutRun, BoxError> {
    let (counts, counted, direct) = proxy::clients(moto).await?;
    // Failed first attempts are retried after 1 s (instead of 5 s) to keep the run short;
    // the requests a retry makes do not depend on its wait.
    let stack = stack_with(counted, "f", true, &[("RETRY_SCHEDULE_SECONDS", "1,1,1,1")]).await?;
    let http = reqwest::Client::new();
    let (url, hits) = receiver_saying(Duration::ZERO, fail_every, fail_body).await?;
    // Events go to the venues in turn: with as many venues as events in a batch, no two
    // events of a batch share a venue (nothing to group).
    let venue_ids: Vec<String> = (0..venues.max(1)).map(|_| unique("v")).collect();
    for venue in &venue_ids {
        create_endpoints(&http, &stack, venue, &url, fanout).await?;
    }
    let venue = venue_ids[0].clone();
    let sqs = aws_sdk_sqs::Client::new(&direct);
    // Warm: one event, so each function has opened its clients and data key.
    sqs.send_message()
        .queue_url(stack.queue_url("IngestQueue"))
        .message_body(
            json!({"venue_id": venue, "type": "order.created", "data": event_data(0)}).to_string(),
        )
        .send()
        .await?;
    let warm = fanout as u64;
    wait_until(Duration::from_secs(60), || {
        hits.load(Ordering::SeqCst) >= warm
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    counts.reset();
    logs::reset();
    stack.invocations.lock().map(|mut m| m.clear()).ok();
    if let Some(meter) = &stack.capacity {
        meter.reset_usage();
    }

    queue_events(&sqs, stack.queue_url("IngestQueue"), &venue_ids, events).await?;
    let expected = warm + (fanout * events) as u64;
    let delivered = wait_until(Duration::from_secs(300), || {
        hits.load(Ordering::SeqCst) >= expected
    })
    .await;
    if !delivered {
        // What the first venue's endpoints and histories say, to tell why.
        let mut seen = Vec::new();
        let list = admin_get(
            &http,
            &format!("{}/venues/{venue}/endpoints", stack.api_url),
        )
        .await?;
        for ep in list["data"].as_array().cloned().unwrap_or_default() {
            let id = ep["id"].as_str().unwrap_or_default();
            for status in ["pending", "failed"] {
                let page = admin_get(
                    &http,
                    &format!(
                        "{}/venues/{venue}/endpoints/{id}/deliveries?status={status}&limit=5",
                        stack.api_url
                    ),
                )
                .await?;
                seen.push(format!("{id} {status}: {}", page["data"]));
            }
            seen.push(format!("{id} circuit: {}", ep["circuit"]));
        }
        stack.stop().await;
        return Err(format!(
            "only {} of {expected} deliveries arrived; {}",
            hits.load(Ordering::SeqCst),
            seen.join("; ")
        )
        .into());
    }
    for queue in ["IngestQueue", "DeliveryQueue"] {
        let url = stack.queue_url(queue).to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !queue_empty(&sqs, &url).await && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The pollers keep polling; stop them before reading the counters.
    let invocations = stack
        .invocations
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    let snapshot_stack = stack.provisioned.clone();
    let keys = stack
        .capacity
        .as_ref()
        .map(|m| m.usage())
        .unwrap_or_default();
    stack.stop().await;
    let snapshot = counts.snapshot();
    let (log_lines, log_bytes) = logs::taken();

    // Items as stored (direct client, not counted): their sizes give the write units and
    // the storage. A delivery's own item (one that needed more than one attempt) was
    // written once per attempt, counted at its final size (an upper bound).
    let ddb = aws_sdk_dynamodb::Client::new(&direct);
    let scan = |table: String| {
        let ddb = ddb.clone();
        async move {
            let mut items = Vec::new();
            let mut pages = ddb.scan().table_name(table).into_paginator().items().send();
            while let Some(item) = pages.next().await {
                if let Ok(item) = item {
                    items.push(item);
                }
            }
            items
        }
    };
    let events_stored = scan(snapshot_stack.physical["EventsTable"].clone()).await;
    let history = scan(snapshot_stack.physical["DeliveriesTable"].clone()).await;
    let event_sizes: Vec<usize> = events_stored.iter().map(cost::item_size).collect();
    let history_sizes: Vec<usize> = history.iter().map(cost::item_size).collect();
    let mut history_write_units = 0.0;
    let mut retried = 0;
    for (item, size) in history.iter().zip(&history_sizes) {
        if item.contains_key("entries") {
            history_write_units += cost::write_units(*size);
        } else {
            retried += 1;
            let attempts = item
                .get("attempt_count")
                .and_then(|n| n.as_n().ok())
                .and_then(|n| n.parse::<f64>().ok())
                .unwrap_or(1.0)
                .max(1.0);
            // Its `by_status` entry: written when it became pending, removed (or moved to
            // failed) when it finished; an entry is far below 1 KB.
            history_write_units += attempts * cost::write_units(*size) + 2.0;
        }
    }
    let avg = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len().max(1) as f64;
    let event_item_bytes = avg(&event_sizes);
    let delivery_item_bytes = avg(&history_sizes);
    // The warm-up event is stored too: count only the measured events' share.
    let share = events as f64 / events_stored.len().max(events) as f64;
    let per_event_stored = event_sizes.iter().sum::<usize>() as f64 * share;
    let history_stored = history_sizes.iter().sum::<usize>() as f64 * share;
    let deliveries = (fanout * events) as f64;

    let get = |op: &str| *snapshot.get(op).unwrap_or(&0) as f64;
    let event_write_units: f64 = event_sizes
        .iter()
        .map(|size| cost::write_units(*size))
        .sum::<f64>();
    let ddb_write_units = (event_write_units + history_write_units) * share / deliveries;
    let ddb_read_units = get(proxy::READ_MILLI_UNITS) / 1000.0 / deliveries;
    let sqs_requests = snapshot
        .iter()
        .filter(|(k, _)| k.starts_with("AmazonSQS.") && !k.ends_with("(with messages)"))
        .filter(|(k, _)| !k.starts_with("AmazonSQS.ReceiveMessage"))
        .map(|(_, v)| *v as f64)
        .sum::<f64>()
        / deliveries
        + get("AmazonSQS.ReceiveMessage(with messages)") / deliveries;
    let (lambda_requests, lambda_gb_seconds) =
        invocations
            .iter()
            .fold((0.0, 0.0), |(n, gbs), (function, inv)| {
                let memory_gb = memory_mb(function) / 1024.0;
                (
                    n + inv.count as f64,
                    gbs + inv.busy.as_secs_f64() * memory_gb,
                )
            });
    let units = UnitsPerDelivery {
        lambda_requests: lambda_requests / deliveries,
        lambda_gb_seconds: lambda_gb_seconds / deliveries,
        sqs_requests,
        ddb_write_units,
        ddb_read_units,
        stored_bytes: (per_event_stored + history_stored) / deliveries,
        kms_requests: snapshot
            .iter()
            .filter(|(k, _)| k.starts_with("TrentService."))
            .map(|(_, v)| *v as f64)
            .sum::<f64>()
            / deliveries,
        log_bytes: log_bytes as f64 / deliveries,
    };
    Ok(FanoutRun {
        log_lines: log_lines as f64 / deliveries,
        fanout,
        events,
        retried,
        counts: snapshot,
        units,
        event_item_bytes,
        delivery_item_bytes,
        keys,
        venues: venue_ids,
    })
}

/// The busiest DynamoDB partition key of a workload, as a row: its units per delivery and
/// the deliveries a second at which it would reach AWS's per-key budget (3,000 read, 1,000
/// write units a second), from what the stack's capacity meter counted.
fn hottest_key_row(report: &mut Report, workload: &str, run: &FanoutRun) {
    let Some((key, r, w, rate)) = run.hottest_key() else {
        return;
    };
    report.row(
        &format!("hottest DynamoDB key, {workload}"),
        format!(
            "{key}: {r:.3} read + {w:.3} write units per delivery; its budget at {rate:.0} deliveries a second"
        ),
        "report",
        None,
    );
}

/// The memory a function is given in the template (its own `MemorySize`, or the global one).
fn memory_mb(function: &str) -> f64 {
    let template: serde_yaml::Value = std::fs::read_to_string(local::default_template())
        .ok()
        .and_then(|t| serde_yaml::from_str(&t).ok())
        .unwrap_or_default();
    let own = &template["Resources"][function]["Properties"]["MemorySize"];
    let global = &template["Globals"]["Function"]["MemorySize"];
    own.as_f64().or_else(|| global.as_f64()).unwrap_or(128.0)
}

/// A stack with deliver stopped, an endpoint at a receiver answering after `delay`, ten
/// events published to it, and their ten jobs taken off the delivery queue as Lambda would.
async fn ten_jobs(
    aws: &aws_config::SdkConfig,
    delay: Duration,
) -> Result<
    (
        Stack,
        local::provision::QueueTrigger,
        Vec<aws_sdk_sqs::types::Message>,
    ),
    BoxError,
> {
    let stack = stack(aws.clone(), "b", false).await?;
    let http = reqwest::Client::new();
    let (url, _) = receiver(delay, None).await?;
    let venue = unique("v");
    create_endpoints(&http, &stack, &venue, &url, 1).await?;
    for i in 0..10 {
        http.post(format!("{}/venues/{venue}/events", stack.api_url))
            .bearer_auth(ADMIN_KEY)
            .body(json!({"type": "order.created", "data": event_data(i)}).to_string())
            .send()
            .await?;
    }
    let sqs = aws_sdk_sqs::Client::new(aws);
    let trigger = stack
        .provisioned
        .trigger_of(local::DELIVER_FUNCTION)?
        .clone();
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while messages.len() < 10 && Instant::now() < deadline {
        let out = sqs
            .receive_message()
            .queue_url(&trigger.queue_url)
            .max_number_of_messages(10 - messages.len() as i32)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await?;
        messages.extend(out.messages.unwrap_or_default());
    }
    if messages.len() != 10 {
        return Err(format!("{} jobs on the queue, not 10", messages.len()).into());
    }
    Ok((stack, trigger, messages))
}

/// A batch of 10 jobs to receivers that each take 1 s, through the deliver handler.
async fn batch_of_ten(delay: Duration) -> Result<Duration, BoxError> {
    let aws = aws_config::load_defaults(shared::storage::services::behavior_version()).await;
    let (stack, trigger, messages) = ten_jobs(&aws, delay).await?;
    let env = stack.provisioned.env_of(local::DELIVER_FUNCTION)?;
    let services = shared::storage::services::Services::new(
        shared::runtime::config::Config::from_map(env)?,
        &stack.aws_of(local::DELIVER_FUNCTION)?,
    );
    let deliver = deliver::Deliver::from_services(&services)?;
    let event = local::esm::to_event(&trigger, &messages)?;
    let started = Instant::now();
    let response = deliver.handle(event).await;
    let took = started.elapsed();
    stack.stop().await;
    if !response.batch_item_failures.is_empty() {
        return Err("the batch of 10 did not all succeed".into());
    }
    Ok(took)
}

/// [`send_path`] on a runtime of one thread: client and receiver take turns on one core, so
/// the figures do not depend on how the scheduler spreads tasks over the machine's cores.
fn send_path_on_one_thread(
    requests: usize,
    concurrency: usize,
    rounds: usize,
) -> Result<(f64, f64), BoxError> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(send_path(requests, concurrency, rounds))
            .map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "the send-path thread panicked")?
    .map_err(Into::into)
}

/// Requests per second through (a) a bare reqwest POST loop and (b) our send path (render,
/// sign, POST through the delivery client), same receiver, same concurrency.
async fn send_path(
    requests: usize,
    concurrency: usize,
    rounds: usize,
) -> Result<(f64, f64), BoxError> {
    use futures::stream::{self, StreamExt};
    let (url, _) = receiver(Duration::ZERO, None).await?;
    let config = shared::runtime::config::Config::from_lookup(|name| match name {
        "DESTINATION_ALLOW_CIDRS" => Some("127.0.0.0/8".into()),
        "ENDPOINTS_TABLE" | "EVENTS_TABLE" | "DELIVERIES_TABLE" | "API_KEYS_TABLE"
        | "RETRIES_TABLE" | "SECRETS_KMS_KEY_ID" | "DELIVERY_QUEUE_URL" | "DELIVERY_DLQ_URL"
        | "INGEST_DLQ_URL" => Some("unused".into()),
        _ => None,
    })?;
    let ours = shared::delivery::http_client::DeliveryClient::new(&config.client())?;
    let bare = reqwest::Client::builder().no_proxy().build()?;
    let secret = shared::model::secret::Secret::generate_signing();
    let credential = shared::model::domain::Credential::SignedSecret {
        secrets: vec![secret],
    };
    let event = shared::model::domain::Event {
        id: shared::model::ids::EventId::generate(),
        event_type: "order.created".into(),
        timestamp: "2026-11-27T10:15:00Z".into(),
        data: serde_json::value::RawValue::from_string(event_data(1).to_string())?,
    };
    let raw_body = shared::delivery::envelope::render_plain(
        &event,
        shared::model::domain::PayloadFormat::Envelope,
    );
    // The bare loop sends the same request: this body and these headers, made once.
    let raw_headers = shared::pipeline::dispatch::request_headers(
        &credential,
        &event,
        &raw_body,
        chrono::Utc::now(),
    );
    let (mut bare_rates, mut our_rates) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let started = Instant::now();
        stream::iter(0..requests)
            .for_each_concurrent(concurrency, |_| {
                let (bare, url, body, headers) = (
                    bare.clone(),
                    url.clone(),
                    raw_body.clone(),
                    raw_headers.clone(),
                );
                async move {
                    // A POST and its answer, status and body, as any sender reads it.
                    if let Ok(response) = bare.post(&url).headers(headers).body(body).send().await {
                        let _ = (response.status(), response.bytes().await);
                    }
                }
            })
            .await;
        bare_rates.push(requests as f64 / started.elapsed().as_secs_f64());

        let started = Instant::now();
        stream::iter(0..requests)
            .for_each_concurrent(concurrency, |_| {
                let (ours, url, event, credential) =
                    (ours.clone(), url.clone(), &event, &credential);
                async move {
                    let now = chrono::Utc::now();
                    let body = shared::delivery::envelope::render(
                        event,
                        shared::model::domain::PayloadFormat::Envelope,
                        None,
                    )
                    .await
                    .unwrap_or_default();
                    let headers =
                        shared::pipeline::dispatch::request_headers(credential, event, &body, now);
                    let _ = ours.post(&url, headers, body).await;
                }
            })
            .await;
        our_rates.push(requests as f64 / started.elapsed().as_secs_f64());
    }
    Ok((median(bare_rates), median(our_rates)))
}

/// The median time (ns) criterion measured for `group/function/parameter` in the run saved
/// as `baseline`, from its estimates under the target directory.
fn criterion_median_ns(
    group: &str,
    function: &str,
    parameter: &str,
    baseline: &str,
) -> Result<f64, BoxError> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path =
        format!("{target}/criterion/{group}/{function}/{parameter}/{baseline}/estimates.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!("{path}: {e}; run `make bench` (it runs the criterion bench first)")
    })?;
    let estimates: Value = serde_json::from_str(&text)?;
    estimates["median"]["point_estimate"]
        .as_f64()
        .ok_or_else(|| format!("{path}: no median").into())
}

/// What the fake Lambda runtime API saw of one function process.
#[derive(Default)]
struct RuntimeSeen {
    first_next: Option<Instant>,
    responded: Option<Instant>,
    response: Option<String>,
}

/// A stand-in for the Lambda runtime API: hands `event` to the first `next`, records the
/// response, and never answers a second `next` (the process then idles, as between
/// invocations).
async fn fake_runtime(
    event: Option<Value>,
) -> Result<(String, Arc<std::sync::Mutex<RuntimeSeen>>), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let seen = Arc::new(std::sync::Mutex::new(RuntimeSeen::default()));
    let state = (seen.clone(), event);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (seen, event) = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (seen, event) = (seen.clone(), event.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await?.to_bytes();
                        if path.ends_with("/invocation/next") {
                            let first = {
                                let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                                let first = s.first_next.is_none();
                                if first {
                                    s.first_next = Some(Instant::now());
                                }
                                first
                            };
                            match (first, event) {
                                (true, Some(event)) => {
                                    let mut r = hyper::Response::new(Full::new(Bytes::from(
                                        event.to_string(),
                                    )));
                                    let h = r.headers_mut();
                                    h.insert(
                                        "lambda-runtime-aws-request-id",
                                        http::HeaderValue::from_static("bench-1"),
                                    );
                                    h.insert(
                                        "lambda-runtime-deadline-ms",
                                        http::HeaderValue::from(
                                            (chrono::Utc::now().timestamp_millis() + 60_000) as u64,
                                        ),
                                    );
                                    h.insert(
                                        "lambda-runtime-invoked-function-arn",
                                        http::HeaderValue::from_static(
                                            "arn:aws:lambda:us-east-1:123456789012:function:bench",
                                        ),
                                    );
                                    h.insert(
                                        "lambda-runtime-trace-id",
                                        http::HeaderValue::from_static("Root=1-bench"),
                                    );
                                    return Ok::<_, hyper::Error>(r);
                                }
                                _ => {
                                    // Idle: as Lambda does between invocations.
                                    tokio::time::sleep(Duration::from_secs(3600)).await;
                                }
                            }
                        } else if path.contains("/response") || path.contains("/error") {
                            let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                            s.responded = Some(Instant::now());
                            s.response = Some(String::from_utf8_lossy(&body).into_owned());
                        }
                        let mut r = hyper::Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = hyper::StatusCode::ACCEPTED;
                        Ok(r)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, seen))
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs a function binary under the fake runtime: time to its first `next` (init), and,
/// given an event, the peak RSS once it has answered.
async fn run_function(
    binary: &std::path::Path,
    env: &std::collections::HashMap<String, String>,
    event: Option<Value>,
) -> Result<(Duration, Option<u64>, Option<String>), BoxError> {
    let (runtime, seen) = fake_runtime(event.clone()).await?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .envs(env)
        .env("AWS_LAMBDA_RUNTIME_API", &runtime)
        .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "bench")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut init = None;
    loop {
        let (first, responded, response) = {
            let s = seen.lock().unwrap_or_else(|e| e.into_inner());
            (s.first_next, s.responded, s.response.clone())
        };
        if init.is_none() {
            init = first.map(|t| t - started);
        }
        let done = init.is_some() && (event.is_none() || responded.is_some());
        if done {
            let rss = peak_rss_kib(pid);
            let _ = child.kill().await;
            return Ok((init.unwrap_or_default(), rss, response));
        }
        if Instant::now() > deadline {
            let _ = child.kill().await;
            return Err(format!("{} did not get ready or answer", binary.display()).into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Init time, binary size and peak RSS of the three functions, built in `profile`.
async fn function_figures(report: &mut Report, profile: &str, runs: usize) -> Result<(), BoxError> {
    let aws = aws_config::load_defaults(shared::storage::services::behavior_version()).await;
    // A real batch for deliver: 10 jobs to a fast receiver.
    let (stack, trigger, messages) = ten_jobs(&aws, Duration::ZERO).await?;
    let base: std::collections::HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .collect();
    let batch = serde_json::to_value(local::esm::to_event(&trigger, &messages)?)?;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(profile);
    for (name, function) in [
        ("api", local::API_FUNCTION),
        ("ingest", local::INGEST_FUNCTION),
        ("deliver", local::DELIVER_FUNCTION),
    ] {
        let binary = dir.join(name);
        let size = std::fs::metadata(&binary)?.len() as f64 / 1e6;
        let mut env = base.clone();
        env.extend(stack.provisioned.env_of(function)?.clone());
        let mut inits = Vec::new();
        for _ in 0..runs {
            inits.push(run_function(&binary, &env, None).await?.0.as_secs_f64() * 1000.0);
        }
        let init = median(inits);
        report.row(
            &format!("`{name}`: process start to ready ({profile} build, median of {runs})"),
            format!("{init:.1} ms"),
            "≤ 20 ms",
            Some(init <= 20.0),
        );
        report.row(
            &format!(
                "`{name}`: binary size ({profile}, stripped: {})",
                profile == "release"
            ),
            format!("{size:.1} MB"),
            "≤ 8 MB",
            Some(size <= 8.0),
        );
        if name == "deliver" {
            let (_, rss, response) = run_function(&binary, &env, Some(batch.clone())).await?;
            let ok = response
                .as_deref()
                .is_some_and(|r| r.contains("batchItemFailures\":[]"));
            report.row(
                &format!("`deliver`: peak RSS under a batch of 10 ({profile})"),
                format!(
                    "{:.1} MB{}",
                    rss.unwrap_or_default() as f64 / 1024.0,
                    if ok {
                        ""
                    } else {
                        " (the batch did not all succeed)"
                    }
                ),
                "report",
                None,
            );
        }
    }
    stack.stop().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // `--send-path`: only that figure, printed, nothing written (to look at it again).
    if std::env::args().any(|a| a == "--send-path") {
        let (bare, ours) = send_path_on_one_thread(3000, 20, 7)?;
        println!(
            "send path: {:.2}× ({ours:.0}/s vs {bare:.0}/s)",
            ours / bare
        );
        return Ok(());
    }
    // `--held`: only the held backlog's accounts, printed with their details (to diagnose).
    let alone = std::env::args().any(|a| a == "--held-alone");
    if alone || std::env::args().any(|a| a == "--held") {
        let moto = std::env::var("AWS_ENDPOINT_URL")?;
        // The functions' lines on stderr, as RUST_LOG says.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
        let n = if alone { 20 } else { 50 };
        let o = bad_day::held_outage(&moto, n, Duration::from_secs(6), alone).await?;
        let extra = o.held.minus(o.normal);
        println!(
            "a held delivery ({}) beyond a normal one: {:.2} write units, {:.2} read units, {:.2} SQS requests",
            if alone { "each alone in its ingest batch" } else { "ten to an ingest batch" },
            extra.write_units, extra.read_units, extra.sqs
        );
        println!(
            "normal {:?}\nheld {:?}\nwaiting per second {:?}\n{}",
            o.normal, o.held, o.waiting_per_second, o.details
        );
        return Ok(());
    }
    let smoke = std::env::args().any(|a| a == "--smoke");
    // The functions' log lines, counted from here on (before any stack starts).
    logs::install();
    let out = std::env::args()
        .skip_while(|a| a != "--out")
        .nth(1)
        .unwrap_or_else(|| "docs/PERFORMANCE.md".into());
    let moto = std::env::var("AWS_ENDPOINT_URL")
        .map_err(|_| "AWS_ENDPOINT_URL is not set: run `make bench` (it starts moto)")?;
    let mut report = Report {
        smoke,
        rows: Vec::new(),
        notes: Vec::new(),
    };

    // Signing: criterion's figures (`make bench` runs `cargo bench -p bench --bench signing`
    // three times, saving baselines run1..run3; `cargo test` runs each case once, so the smoke
    // run leaves them out). The ratio is the median of the three runs' ratios of medians.
    if !smoke {
        for label in ["1KiB", "64KiB"] {
            let mut runs = Vec::new();
            for baseline in ["run1", "run2", "run3"] {
                let ours = criterion_median_ns("signing", "ours", label, baseline)?;
                let raw = criterion_median_ns("signing", "raw", label, baseline)?;
                runs.push((raw / ours, ours, raw));
            }
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (ratio, ours, raw) = runs[runs.len() / 2];
            let all: Vec<String> = runs.iter().map(|r| format!("{:.2}", r.0)).collect();
            report.row(
                &format!("signing throughput vs raw hmac+sha2, {label} envelope (criterion)"),
                format!(
                    "{ratio:.2}× ({:.0}/s vs {:.0}/s; median {ours:.0} ns vs {raw:.0} ns per signature; the three runs {})",
                    1e9 / ours,
                    1e9 / raw,
                    all.join(", ")
                ),
                "≥ 0.9×",
                Some(ratio >= 0.9),
            );
        }
    }

    // Send path.
    let (bare, ours) = if smoke {
        send_path_on_one_thread(50, 5, 1)?
    } else {
        send_path_on_one_thread(3000, 20, 7)?
    };
    let ratio = ours / bare;
    report.row(
        "send path (render + sign + POST) vs bare reqwest POST loop, concurrency 20, one thread",
        format!("{ratio:.2}× ({ours:.0}/s vs {bare:.0}/s)"),
        "≥ 0.8×",
        Some(ratio >= 0.8),
    );

    // One batch of 10 jobs to receivers that each take 1 s.
    let delay = if smoke {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    };
    let mut runs = Vec::new();
    for _ in 0..if smoke { 1 } else { 3 } {
        runs.push(batch_of_ten(delay).await?.as_secs_f64());
    }
    let took = median(runs);
    report.row(
        &format!(
            "one batch of 10 jobs, receivers taking {} ms each",
            delay.as_millis()
        ),
        format!("{took:.3} s"),
        if smoke {
            "≤ 1.2 × the receiver time"
        } else {
            "≤ 1.2 s"
        },
        Some(took <= 1.2 * delay.as_secs_f64()),
    );

    // Requests per delivery at fan-out 1, 3 and 100, every delivery succeeding first try;
    // then the reference workload for the cost: fan-out 3 with one receiver answer in 20 a
    // 500 (95% first-try success), its retries included in what is counted.
    // Then fan-out 3 with every event of a batch from another venue: the case with nothing to
    // group (a group is one venue's events of one batch at one endpoint).
    let plan: &[(usize, usize, Option<u64>)] = if smoke {
        &[(3, 10, None), (3, 20, Some(20))]
    } else {
        &[
            (1, 200, None),
            (3, 100, None),
            (100, 10, None),
            (3, 200, Some(20)),
        ]
    };
    let mut runs = Vec::new();
    let mut reference = None;
    let scattered = fanout_run(&moto, (3, 10), if smoke { 10 } else { 100 }, None).await?;
    for (fanout, events, fail_every) in plan {
        let run = fanout_run(&moto, (*fanout, 1), *events, *fail_every).await?;
        let d = run.deliveries();
        hottest_key_row(
            &mut report,
            &format!(
                "fan-out {fanout}{}",
                if fail_every.is_some() {
                    " with 5% failed first attempts (the reference workload)"
                } else {
                    ""
                }
            ),
            &run,
        );
        if fail_every.is_some() {
            report.notes.push(format!(
                "reference workload (fan-out {fanout}, {} events, {} of {} deliveries needed a retry): counted requests {:?}; average event item {:.0} B, history item {:.0} B",
                run.events, run.retried, d, run.counts, run.event_item_bytes, run.delivery_item_bytes
            ));
            reference = Some(run);
            continue;
        }
        let writes = run.count("DynamoDB_20120810.PutItem")
            + run.count("DynamoDB_20120810.UpdateItem")
            + run.count("DynamoDB_20120810.DeleteItem")
            + run.count("DynamoDB_20120810.BatchWriteItem");
        let reads = run.count("DynamoDB_20120810.GetItem")
            + run.count("DynamoDB_20120810.Query")
            + run.count("DynamoDB_20120810.BatchGetItem");
        let sqs_data = run.units.sqs_requests;
        report.row(
            &format!("DynamoDB write requests per delivery, fan-out {fanout}"),
            format!(
                "{:.3} ({:.2} per event of {fanout} deliveries)",
                writes as f64 / d,
                writes as f64 / run.events as f64
            ),
            "≤ 1 per delivery + 1 per event",
            Some(writes as f64 <= d + run.events as f64),
        );
        report.row(
            &format!("DynamoDB read requests per delivery, fan-out {fanout}"),
            format!("{:.3}", reads as f64 / d),
            "report",
            None,
        );
        report.row(
            &format!("SQS requests per delivery, fan-out {fanout}"),
            format!(
                "{sqs_data:.3} (sends {:.3}, receives with messages {:.3}, deletes {:.3}, visibility {:.3}; empty polls {} more in all)",
                run.count("AmazonSQS.SendMessage") as f64 / d,
                run.count("AmazonSQS.ReceiveMessage(with messages)") as f64 / d,
                run.count("AmazonSQS.DeleteMessage") as f64 / d,
                run.count("AmazonSQS.ChangeMessageVisibility") as f64 / d,
                run.count("AmazonSQS.ReceiveMessage").saturating_sub(run.count("AmazonSQS.ReceiveMessage(with messages)") * 2)
            ),
            if *fanout >= 3 { "≤ 0.3 at fan-out ≥ 3" } else { "report" },
            (*fanout >= 3).then_some(sqs_data <= 0.3),
        );
        report.row(
            &format!("KMS requests per delivery, fan-out {fanout}"),
            format!("{:.4}", run.units.kms_requests.abs()),
            "report",
            None,
        );
        report.row(
            &format!("log bytes per delivery (CloudWatch Logs ingestion, metric lines and 26 B per line included), fan-out {fanout}"),
            format!(
                "{:.0} B in {:.3} lines",
                run.units.log_bytes, run.log_lines
            ),
            "report",
            None,
        );
        if *fanout == 100 {
            let sends = run.count("AmazonSQS.SendMessageBatch") as f64 / run.events as f64;
            let pages = run.count("DynamoDB_20120810.Query") as f64 / run.events as f64;
            report.row(
                "fan-out of one event to 100 endpoints",
                format!(
                    "{sends:.1} SendMessageBatch calls, {pages:.1} endpoint query pages per event"
                ),
                "≤ 10 calls, ≤ 1 page",
                Some(sends <= 10.0 && pages <= 1.0),
            );
        }
        report.notes.push(format!(
            "fan-out {fanout}, {} events: counted requests {:?}; average event item {:.0} B, history item {:.0} B",
            run.events, run.counts, run.event_item_bytes, run.delivery_item_bytes
        ));
        runs.push(run);
    }

    hottest_key_row(
        &mut report,
        "fan-out 3, every event of a batch from another venue",
        &scattered,
    );
    // A flaky busy endpoint: one receiver failing one request in five (its deliveries' own
    // items rewritten on each retry, all in the endpoint's history partition).
    let flaky = fanout_run(&moto, (1, 1), if smoke { 10 } else { 100 }, Some(5)).await?;
    hottest_key_row(
        &mut report,
        "fan-out 1, a flaky endpoint (one request in five fails)",
        &flaky,
    );

    // Failing with 2 KiB answers: a busy endpoint failing one request in ten (its
    // history key), and deliveries that fail for good (every attempt of their life).
    let busy_flaky = fanout_run_saying(
        &moto,
        (1, 1),
        if smoke { 20 } else { 200 },
        (Some(10), 2048),
    )
    .await?;
    if let Some((key, r, w, rate)) =
        busy_flaky.hottest_key_where(|k| k.resource.starts_with("DeliveriesTable"))
    {
        report.row(
            "hottest history key, a busy endpoint failing one request in ten with 2 KiB answers",
            format!(
                "{key}: {r:.3} read + {w:.3} write units per delivery (retries included); its budget (1,000 write units a second) at {rate:.0} deliveries a second"
            ),
            "report",
            None,
        );
    }
    let attempts = 8;
    let failing = bad_day::failed_for_good(&moto, if smoke { 3 } else { 20 }, attempts).await?;
    let history_writes: f64 = failing
        .keys
        .iter()
        .filter(|k| k.resource.starts_with("DeliveriesTable"))
        .map(|k| k.write_units)
        .sum::<f64>()
        / failing.per;
    report.row(
        &format!("history write units per delivery failed for good ({attempts} attempts, 2 KiB answers), over its life"),
        format!(
            "{history_writes:.1} (its item and index entry; the latest answer kept in full, older attempts without theirs)"
        ),
        "report (93 with every answer kept, same run size)",
        None,
    );

    // A held backlog: deliveries at an endpoint whose circuit is open, held once while its
    // loop waits and probes (what waiting costs, per held delivery).
    let (backlog, window) = if smoke {
        (10, Duration::from_secs(10))
    } else {
        (100, Duration::from_secs(30))
    };
    let held = bad_day::held_backlog(&moto, backlog, window).await?;
    if let Some((key, r, w, _)) = held.hottest(|_| true) {
        report.row(
            &format!("hottest DynamoDB key, a held backlog ({backlog} deliveries at an endpoint whose circuit is open)"),
            format!(
                "{key}: {r:.3} read + {w:.3} write units per held delivery over {} s of waiting (the loop's steps and probes; nothing per delivery)",
                window.as_secs()
            ),
            "report",
            None,
        );
    }
    // A held backlog through an outage and back, against the same deliveries when healthy:
    // what holding costs per held delivery, and what the waiting costs per probe cycle.
    let (held_n, outage) = if smoke {
        (50, Duration::from_secs(6))
    } else {
        (300, Duration::from_secs(30))
    };
    let o = bad_day::held_outage(&moto, held_n, outage, false).await?;
    let extra = o.held.minus(o.normal);
    let cycle = o.waiting_per_second.per(1.0 / 1.5);
    // Ten hours of 10-minute cooldowns (60 probe cycles) over the backlog of an endpoint
    // taking 1,000 deliveries a second: 36 million held.
    let ten_hours = cycle.per(36e6 / 60.0);
    report.row(
        &format!("a held delivery beyond a normal one ({held_n} held through an outage of {} s, {:.0} probe cycles, then released and delivered; less the same outage with none held)", outage.as_secs(), o.probe_cycles),
        format!(
            "{:.2} write units, {:.2} read units, {:.2} SQS requests more (a normal delivery here: {:.2}, {:.2}, {:.2}); the waiting itself: {:.1} write units, {:.1} read units, {:.1} SQS requests per probe cycle, so over a 10-hour outage of an endpoint taking 1,000 deliveries a second {:.6} write units per held delivery",
            extra.write_units, extra.read_units, extra.sqs,
            o.normal.write_units, o.normal.read_units, o.normal.sqs,
            cycle.write_units, cycle.read_units, cycle.sqs,
            ten_hours.write_units
        ),
        "≤ 1 write unit, 1 read unit, 1 SQS request more",
        Some(extra.write_units <= 1.0 && extra.read_units <= 1.0 && extra.sqs <= 1.0),
    );
    report.notes.push(format!(
        "a held backlog through an outage ({held_n} held): {}",
        o.details
    ));

    // Operational events: deliveries failing for good at many endpoints, one
    // `delivery.exhausted` per endpoint and window, published as the system venue's events.
    let (venues, per_venue) = if smoke { (3, 2) } else { (20, 10) };
    let ops = bad_day::operational_events(&moto, venues, per_venue).await?;
    for (label, system_only) in [("", false), (", the system venue's keys only", true)] {
        if let Some((key, r, w, rate)) =
            ops.hottest(|k| !system_only || k.key.starts_with("_operational"))
        {
            report.row(
                &format!("hottest DynamoDB key, operational events ({venues} endpoints, {} deliveries failed for good){label}", venues * per_venue),
                format!(
                    "{key}: {r:.3} read + {w:.3} write units per delivery failed for good; its budget at {rate:.0} a second"
                ),
                "report",
                None,
            );
        }
    }

    // Reading history: a quiet endpoint beside a busy one of the same venue.
    history::history_run(&moto, &mut report, smoke).await?;

    // The function binaries: init, size, memory.
    function_figures(
        &mut report,
        if smoke { "debug" } else { "release" },
        if smoke { 1 } else { 5 },
    )
    .await?;

    // Dollars per million deliveries.
    if let Some(run) = &reference {
        let units = run.units.clone();
        let on_demand = cost::per_million(&PRICES, &units, Capacity::OnDemand, 30.0);
        let provisioned = cost::per_million(
            &PRICES,
            &units,
            Capacity::Provisioned { utilisation: 0.5 },
            30.0,
        );
        report.row(
            "$ per million deliveries, reference workload (fan-out 3, 1 KiB, 95% first try, retries counted), on-demand",
            format!("${:.3} ({})", on_demand.total(), breakdown(&on_demand)),
            "≤ $0.60 (CloudWatch Logs included)",
            Some(on_demand.total() <= 0.60),
        );
        report.row(
            "log bytes per delivery (CloudWatch Logs ingestion), reference workload",
            format!("{:.0} B in {:.3} lines", units.log_bytes, run.log_lines),
            "report",
            None,
        );
        report.row(
            "$ per million deliveries, reference workload, provisioned capacity at 50% use",
            format!("${:.3} ({})", provisioned.total(), breakdown(&provisioned)),
            "report",
            None,
        );
        let b = cost::per_million(&PRICES, &scattered.units, Capacity::OnDemand, 30.0);
        report.row(
            "$ per million deliveries, fan-out 3, every event of a batch from another venue (nothing shares a history item), all first try, on-demand",
            format!(
                "${:.3} ({}); history item {:.0} B",
                b.total(),
                breakdown(&b),
                scattered.delivery_item_bytes
            ),
            "report",
            None,
        );
        if let Some(one) = runs.iter().find(|r| r.fanout == 1) {
            let b = cost::per_million(&PRICES, &one.units, Capacity::OnDemand, 30.0);
            report.row(
                "$ per million deliveries, fan-out 1, all first try, on-demand",
                format!("${:.3} ({})", b.total(), breakdown(&b)),
                "≤ $1.10 (CloudWatch Logs included)",
                Some(b.total() <= 1.10),
            );
        }
        report.notes.push(format!(
            "units per delivery (reference): {units:?}; prices {}",
            PRICES.date
        ));
    }

    write_report(&report, &out)?;
    println!("wrote {out}");
    Ok(())
}

fn breakdown(b: &cost::Breakdown) -> String {
    format!(
        "DynamoDB writes ${:.3}, reads ${:.3}, storage ${:.3}; SQS ${:.3}; Lambda ${:.3}; CloudWatch Logs ${:.3}; KMS ${:.4}",
        b.ddb_writes, b.ddb_reads, b.ddb_storage, b.sqs, b.lambda, b.logs, b.kms
    )
}

fn write_report(report: &Report, out: &str) -> std::io::Result<()> {
    let mut text = String::new();
    text.push_str(if report.smoke {
        "## Measured (smoke run: tiny inputs, debug build; figures not meaningful)\n\n"
    } else {
        "## Measured\n\n"
    });
    text.push_str(&format!(
        "Measured by `make bench` on {} ({} cores, this machine; local moto stands in for AWS, \
         so request counts are exact and latencies are loopback's).\n\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    ));
    text.push_str("| figure | value | goal | met |\n| --- | --- | --- | --- |\n");
    for row in &report.rows {
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        text.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            row.figure, row.value, row.goal, met
        ));
    }
    text.push_str("\nDetails:\n\n");
    for note in &report.notes {
        text.push_str(&format!("- {note}\n"));
    }
    if let Some(dir) = std::path::Path::new(out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    // The measured part goes between the markers; what is written around it by hand (design
    // notes, before/after) stays.
    const START: &str = "<!-- bench:start -->";
    const END: &str = "<!-- bench:end -->";
    let existing = std::fs::read_to_string(out).unwrap_or_default();
    let merged = match (existing.find(START), existing.find(END)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{START}\n{text}{}", &existing[..a], &existing[b..])
        }
        _ => format!("{START}\n{text}{END}\n"),
    };
    std::fs::write(out, merged)
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_data_is_about_a_kibibyte_and_differs_per_event() {
        let a = super::event_data(1).to_string();
        let b = super::event_data(2).to_string();
        assert!((900..=1200).contains(&a.len()), "{} bytes: {a}", a.len());
        assert_ne!(a, b);
    }
}
