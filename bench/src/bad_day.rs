//! Workloads of a bad day, for `make bench`'s hottest-key rows: a held backlog (an endpoint
//! whose circuit is open, its deliveries held once while its loop waits) and operational events
//! (deliveries failing for good at many endpoints, each window told to an operational
//! endpoint). What each spends on its busiest DynamoDB partition key, per unit of its work.

use std::sync::atomic::Ordering;
use std::time::Duration;

use local::capacity::KeyUsage;
use serde_json::json;

use crate::{
    admin_get, create_endpoints, queue_events, receiver, receiver_saying, stack_with, unique,
    wait_until, BoxError, ADMIN_KEY,
};

/// What a workload spent, key by key, and how much of its work that was (`per`: looks,
/// deliveries…).
pub struct KeyRun {
    pub keys: Vec<KeyUsage>,
    pub venues: Vec<String>,
    pub per: f64,
}

impl KeyRun {
    /// The key among those `filter` keeps that reaches AWS's per-key budget (3,000 read,
    /// 1,000 write units a second) first: its name (venue ids written `{venue}`), its read
    /// and write units per unit of work, and the work a second at which it reaches it.
    pub fn hottest(&self, filter: impl Fn(&KeyUsage) -> bool) -> Option<(String, f64, f64, f64)> {
        hottest(&self.keys, &self.venues, self.per, filter)
    }
}

/// [`KeyRun::hottest`] of any run's keys.
pub fn hottest(
    keys: &[KeyUsage],
    venues: &[String],
    per: f64,
    filter: impl Fn(&KeyUsage) -> bool,
) -> Option<(String, f64, f64, f64)> {
    let b = local::capacity::Budgets::AWS;
    keys.iter()
        .filter(|k| filter(k))
        .map(|k| {
            let (r, w) = (k.read_units / per.max(1.0), k.write_units / per.max(1.0));
            let rate = (b.key_read / r.max(1e-9)).min(b.key_write / w.max(1e-9));
            let mut key = k.key.clone();
            for venue in venues {
                key = key.replace(venue.as_str(), "{venue}");
            }
            (format!("{} `{key}`", k.resource), r, w, rate)
        })
        .min_by(|x, y| x.3.total_cmp(&y.3))
}

/// `events` deliveries at one endpoint whose receiver answers 500 to everything: its circuit
/// opens after 3 failures and the rest are held (recorded once, off the queue) while the
/// endpoint's backlog loop waits and probes every few seconds (cooldowns and the probe's
/// lease compressed from the template's 30 s–10 min). Measured for `window` once every
/// delivery has been held: per held delivery, what waiting costs.
pub async fn held_backlog(moto: &str, events: usize, window: Duration) -> Result<KeyRun, BoxError> {
    let (_counts, counted, direct) = crate::proxy::clients(moto).await?;
    let stack = stack_with(
        counted,
        "h",
        true,
        &[
            ("RETRY_SCHEDULE_SECONDS", "1"),
            ("BREAKER_THRESHOLD", "3"),
            ("BREAKER_COOLDOWN_MS", "1000"),
            ("BREAKER_MAX_COOLDOWN_MS", "2000"),
            ("BREAKER_MAX_HOLD_MS", "2000"),
            // The probe's lease (which the others wait out) is the request timeout and 5 s.
            ("REQUEST_TIMEOUT_MS", "1000"),
        ],
    )
    .await?;
    let http = reqwest::Client::new();
    let (url, _) = receiver(Duration::ZERO, Some(1)).await?;
    let venue = unique("v");
    create_endpoints(&http, &stack, &venue, &url, 1).await?;
    let sqs = aws_sdk_sqs::Client::new(&direct);
    let before = shared::pipeline::dispatch::held_looks();
    queue_events(
        &sqs,
        stack.queue_url("IngestQueue"),
        std::slice::from_ref(&venue),
        events,
    )
    .await?;
    // Every delivery held (the first few were attempted and failed first).
    let all_held = wait_until(Duration::from_secs(120), || {
        shared::pipeline::dispatch::held_looks() - before >= events.saturating_sub(3) as u64
    })
    .await;
    if !all_held {
        stack.stop().await;
        return Err("the backlog was not held within 2 minutes".into());
    }
    let meter = stack.capacity.as_ref().ok_or("the stack meters capacity")?;
    meter.reset_usage();
    tokio::time::sleep(window).await;
    let keys = meter.usage();
    stack.stop().await;
    Ok(KeyRun {
        keys,
        venues: vec![venue],
        per: events as f64,
    })
}

/// `venues` venues with one endpoint each at a receiver answering 500 to everything (no
/// circuit opens), `per_venue` events each: every delivery fails for good after 2 attempts,
/// and each endpoint's window (2 s here; 5 min in the template) is told to an operational
/// endpoint as one `delivery.exhausted`. Per delivery failed for good.
pub async fn operational_events(
    moto: &str,
    venues: usize,
    per_venue: usize,
) -> Result<KeyRun, BoxError> {
    let (_counts, counted, direct) = crate::proxy::clients(moto).await?;
    let stack = stack_with(
        counted,
        "o",
        true,
        &[
            ("RETRY_SCHEDULE_SECONDS", "1"),
            ("EXHAUSTED_WINDOW_SECONDS", "2"),
            ("BREAKER_THRESHOLD", "1000"),
            ("BREAKER_RATE_MIN_ATTEMPTS", "1000000"),
        ],
    )
    .await?;
    let http = reqwest::Client::new();
    let (ops_url, told) = receiver(Duration::ZERO, None).await?;
    let status = http
        .post(format!("{}/operational-endpoints", stack.api_url))
        .bearer_auth(ADMIN_KEY)
        .body(json!({"url": ops_url, "event_types": ["delivery.exhausted"]}).to_string())
        .send()
        .await?
        .status();
    if status != 201 {
        return Err(format!("registering the operational endpoint answered {status}").into());
    }
    let (url, _) = receiver(Duration::ZERO, Some(1)).await?;
    let venue_ids: Vec<String> = (0..venues).map(|_| unique("v")).collect();
    for venue in &venue_ids {
        create_endpoints(&http, &stack, venue, &url, 1).await?;
    }
    let meter = stack.capacity.as_ref().ok_or("the stack meters capacity")?;
    meter.reset_usage();
    let sqs = aws_sdk_sqs::Client::new(&direct);
    queue_events(
        &sqs,
        stack.queue_url("IngestQueue"),
        &venue_ids,
        venues * per_venue,
    )
    .await?;
    // At least one event per endpoint, then the windows still open close.
    let told_all = wait_until(Duration::from_secs(120), || {
        told.load(Ordering::SeqCst) >= venues as u64
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let keys = meter.usage();
    stack.stop().await;
    if !told_all {
        return Err("not every endpoint's failures were told within 2 minutes".into());
    }
    Ok(KeyRun {
        keys,
        venues: venue_ids,
        per: (venues * per_venue) as f64,
    })
}

/// `deliveries` deliveries at an endpoint answering 500 with 2 KiB to everything, each tried
/// `attempts` times (1 s apart here, no breaker) until it fails for good: what each writes
/// over its life, key by key.
pub async fn failed_for_good(
    moto: &str,
    deliveries: usize,
    attempts: usize,
) -> Result<KeyRun, BoxError> {
    let (_counts, counted, direct) = crate::proxy::clients(moto).await?;
    let schedule = vec!["1"; attempts.saturating_sub(1)].join(",");
    let stack = stack_with(
        counted,
        "x",
        true,
        &[
            ("RETRY_SCHEDULE_SECONDS", schedule.as_str()),
            ("BREAKER_THRESHOLD", "1000000"),
            ("BREAKER_RATE_MIN_ATTEMPTS", "1000000"),
        ],
    )
    .await?;
    let http = reqwest::Client::new();
    let (url, _) = receiver_saying(Duration::ZERO, Some(1), 2048).await?;
    let venue = unique("v");
    create_endpoints(&http, &stack, &venue, &url, 1).await?;
    let meter = stack.capacity.as_ref().ok_or("the stack meters capacity")?;
    meter.reset_usage();
    let sqs = aws_sdk_sqs::Client::new(&direct);
    queue_events(
        &sqs,
        stack.queue_url("IngestQueue"),
        std::slice::from_ref(&venue),
        deliveries,
    )
    .await?;
    let failed_url = format!(
        "{}/venues/{venue}/endpoints/{}/deliveries?status=failed&limit=100",
        stack.api_url,
        endpoint_id(&http, &stack.api_url, &venue).await?
    );
    let mut done = false;
    for _ in 0..240 {
        let page: serde_json::Value = http
            .get(&failed_url)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await?
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b).unwrap_or_default())?;
        if page["data"]
            .as_array()
            .is_some_and(|d| d.len() >= deliveries)
        {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let keys = meter.usage();
    stack.stop().await;
    if !done {
        return Err("the deliveries did not fail for good within 2 minutes".into());
    }
    Ok(KeyRun {
        keys,
        venues: vec![venue],
        per: deliveries as f64,
    })
}

/// The id of the venue's only endpoint.
async fn endpoint_id(http: &reqwest::Client, api: &str, venue: &str) -> Result<String, BoxError> {
    let page = admin_get(http, &format!("{api}/venues/{venue}/endpoints")).await?;
    page["data"][0]["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "no endpoint".into())
}

/// What one phase of [`held_outage`] cost, counted by the proxy (requests, read units) and
/// the stack's meter (write units, as billed).
#[derive(Clone, Copy, Debug, Default)]
pub struct Spent {
    pub write_units: f64,
    pub read_units: f64,
    /// SQS requests, empty polls left out (as in the per-delivery figures).
    pub sqs: f64,
}

impl Spent {
    fn of(counts: &std::collections::BTreeMap<String, u64>, keys: &[KeyUsage]) -> Self {
        let get = |op: &str| *counts.get(op).unwrap_or(&0) as f64;
        Spent {
            write_units: keys.iter().map(|k| k.write_units).sum(),
            read_units: get(crate::proxy::READ_MILLI_UNITS) / 1000.0,
            sqs: counts
                .iter()
                .filter(|(k, _)| k.starts_with("AmazonSQS.") && !k.ends_with("(with messages)"))
                .filter(|(k, _)| !k.starts_with("AmazonSQS.ReceiveMessage"))
                .map(|(_, v)| *v as f64)
                .sum::<f64>()
                + get("AmazonSQS.ReceiveMessage(with messages)"),
        }
    }

    pub fn per(self, n: f64) -> Self {
        Spent {
            write_units: self.write_units / n,
            read_units: self.read_units / n,
            sqs: self.sqs / n,
        }
    }

    pub fn minus(self, other: Spent) -> Self {
        Spent {
            write_units: self.write_units - other.write_units,
            read_units: self.read_units - other.read_units,
            sqs: self.sqs - other.sqs,
        }
    }
}

/// The held backlog's accounts: per delivery of a healthy run, per held delivery of a run
/// through an outage (held, waited, probed, released, delivered), and what the outage's
/// waiting alone cost per second (the loop's steps and probes, whatever the backlog's size).
pub struct Outage {
    pub normal: Spent,
    pub held: Spent,
    pub waiting_per_second: Spent,
    pub probe_cycles: f64,
    /// The requests of the run through the outage, by operation, and its busiest keys.
    pub details: String,
}

/// Queues `events` events: at once, or (`alone`) one at a time, each after the ingest
/// batching window of the one before.
async fn queue_counted(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    venues: &[String],
    events: usize,
    alone: bool,
) -> Result<(), BoxError> {
    if !alone {
        return queue_events(sqs, queue, venues, events).await;
    }
    for _ in 0..events {
        queue_events(sqs, queue, venues, 1).await?;
        tokio::time::sleep(ALONE_PAUSE).await;
    }
    Ok(())
}

/// Between two events that come alone: past the ingest batching window (1 s).
const ALONE_PAUSE: Duration = Duration::from_millis(1_300);

/// Deliveries that open an endpoint's circuit in an outage, before the counted ones are held.
const OPENING: usize = 10;

/// `events` deliveries to one endpoint, counted: once to a healthy receiver, then through an
/// outage: the receiver fails everything (503), [`OPENING`] deliveries open its circuit
/// (3 failures; cooldowns of 1–2 s here, 30 s–10 min in the template), the `events` are held,
/// `outage` passes, the receiver comes back, a probe succeeds and the backlog is released and
/// delivered; then the same outage with none held, whose cost is taken off. `alone`: the
/// counted events (healthy and held) come one at a time, each in an ingest batch of its own
/// (each delivery alone in its group, as when every venue publishes an event a second);
/// otherwise all at once, ten to a batch.
pub async fn held_outage(
    moto: &str,
    events: usize,
    outage: Duration,
    alone: bool,
) -> Result<Outage, BoxError> {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    let (counts, counted, direct) = crate::proxy::clients(moto).await?;
    // Enough retries that no delivery fails for good while the probes fail (a failed probe
    // is an attempt of the delivery it released).
    let schedule = vec!["1"; 60].join(",");
    // Events that come alone arrive over half a minute: a cooldown as long keeps them from
    // each meeting a half-open circuit (as they would not with the template's 30 s–10 min).
    let cooldown = if alone { "30000" } else { "1000" };
    let max_cooldown = if alone { "30000" } else { "2000" };
    let stack = stack_with(
        counted,
        "w",
        true,
        &[
            ("RETRY_SCHEDULE_SECONDS", schedule.as_str()),
            ("BREAKER_THRESHOLD", "3"),
            ("BREAKER_COOLDOWN_MS", cooldown),
            ("BREAKER_MAX_COOLDOWN_MS", max_cooldown),
            ("BREAKER_MAX_HOLD_MS", max_cooldown),
            ("REQUEST_TIMEOUT_MS", "1000"),
        ],
    )
    .await?;
    // A receiver that fails everything while `down`, and counts what it accepted.
    let down = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks", listener.local_addr()?);
    {
        let (down, accepted) = (down.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (down, accepted) = (down.clone(), accepted.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (down, accepted) = (down.clone(), accepted.clone());
                            async move {
                                use http_body_util::BodyExt;
                                let _ = req.into_body().collect().await;
                                let mut response = hyper::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::from_static(b"ok"),
                                ));
                                if down.load(Ordering::SeqCst) {
                                    *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                                } else {
                                    accepted.fetch_add(1, Ordering::SeqCst);
                                }
                                Ok::<_, hyper::Error>(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }
    let http = reqwest::Client::new();
    let venue = unique("v");
    create_endpoints(&http, &stack, &venue, &url, 1).await?;
    let sqs = aws_sdk_sqs::Client::new(&direct);
    let meter = stack.capacity.as_ref().ok_or("the stack meters capacity")?;
    let queue = stack.queue_url("IngestQueue").to_owned();
    let venues = std::slice::from_ref(&venue);
    // Warm, then the healthy run.
    queue_events(&sqs, &queue, venues, 1).await?;
    wait_until(Duration::from_secs(60), || {
        accepted.load(Ordering::SeqCst) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    counts.reset();
    meter.reset_usage();
    queue_counted(&sqs, &queue, venues, events, alone).await?;
    let healthy = (1 + events) as u64;
    if !wait_until(Duration::from_secs(120), || {
        accepted.load(Ordering::SeqCst) >= healthy
    })
    .await
    {
        stack.stop().await;
        return Err("the healthy run was not delivered within 2 minutes".into());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let normal = Spent::of(&counts.snapshot(), &meter.usage());

    // Two outages alike, one with `events` held and one with none: what the first costs
    // beyond the second is what holding them costs (the deliveries that open the circuit,
    // the probes and the waiting are in both).
    let mut delivered = healthy;
    let mut outage_run = |held: usize| {
        let (down, accepted, counts, sqs, queue) = (
            down.clone(),
            accepted.clone(),
            counts.clone(),
            sqs.clone(),
            queue.clone(),
        );
        let venues = venues.to_vec();
        let (http, api, venue) = (http.clone(), stack.api_url.clone(), venue.clone());
        delivered += (OPENING + held) as u64;
        let all = delivered;
        async move {
            down.store(true, Ordering::SeqCst);
            counts.reset();
            meter.reset_usage();
            // The circuit opens on these (their retries are held too, then probe).
            queue_events(&sqs, &queue, &venues, OPENING).await?;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let list = admin_get(&http, &format!("{api}/venues/{venue}/endpoints")).await?;
                if list["data"][0]["circuit"]["state"] == "open" {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err::<_, BoxError>("the circuit did not open within a minute".into());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let before = shared::pipeline::dispatch::held_looks();
            queue_counted(&sqs, &queue, &venues, held, alone).await?;
            if alone && held == 0 {
                // As long an outage as the run whose events came one at a time.
                tokio::time::sleep(ALONE_PAUSE * events as u32).await;
            }
            if !wait_until(Duration::from_secs(120), || {
                shared::pipeline::dispatch::held_looks() - before >= held as u64
            })
            .await
            {
                return Err("the backlog was not held within 2 minutes".into());
            }
            let at_held = Spent::of(&counts.snapshot(), &meter.usage());
            tokio::time::sleep(outage).await;
            let waited = Spent::of(&counts.snapshot(), &meter.usage()).minus(at_held);
            down.store(false, Ordering::SeqCst);
            if !wait_until(Duration::from_secs(180), || {
                accepted.load(Ordering::SeqCst) >= all
            })
            .await
            {
                let ep = endpoint_id(&http, &api, &venue).await?;
                let pending = admin_get(
                    &http,
                    &format!("{api}/venues/{venue}/endpoints/{ep}/deliveries?status=pending"),
                )
                .await?;
                return Err(format!(
                    "the backlog was not delivered within 3 minutes of the way back: {} of {all} accepted; pending: {pending}",
                    accepted.load(Ordering::SeqCst)
                )
                .into());
            }
            // The loop's last passes and its end.
            tokio::time::sleep(Duration::from_secs(12)).await;
            Ok((Spent::of(&counts.snapshot(), &meter.usage()), waited))
        }
    };
    let (through, waited) = match outage_run(events).await {
        Ok(r) => r,
        Err(e) => {
            stack.stop().await;
            return Err(e);
        }
    };
    let details_of_through = counts.snapshot();
    let keys = meter.usage();
    let (baseline, _) = match outage_run(0).await {
        Ok(r) => r,
        Err(e) => {
            stack.stop().await;
            return Err(e);
        }
    };
    // Where the held deliveries' units went: each key's units beyond the outage with none.
    let base_keys = meter.usage();
    let mut beyond: Vec<(String, f64, f64)> = keys
        .iter()
        .map(|k| {
            let base = base_keys
                .iter()
                .find(|b| b.resource == k.resource && b.key == k.key);
            (
                format!(
                    "{} {}",
                    k.resource,
                    k.key.replace(venue.as_str(), "{venue}")
                ),
                (k.read_units - base.map_or(0.0, |b| b.read_units)) / events as f64,
                (k.write_units - base.map_or(0.0, |b| b.write_units)) / events as f64,
            )
        })
        .collect();
    beyond.sort_by(|a, b| (b.1 + b.2).total_cmp(&(a.1 + a.2)));
    let details = format!(
        "requests of the outage with {events} held {:?}; per held delivery beyond the outage with none, by key: {}",
        details_of_through,
        beyond
            .iter()
            .take(6)
            .map(|(k, r, w)| format!("{k}: {r:.2} read, {w:.2} write units"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    stack.stop().await;
    let n = events as f64;
    Ok(Outage {
        normal: normal.per(n),
        held: through.minus(baseline).per(n),
        waiting_per_second: waited.per(outage.as_secs_f64()),
        // Cooldowns of 1–2 s (1.5 s on average): a probe cycle each.
        probe_cycles: outage.as_secs_f64() / 1.5,
        details,
    })
}
