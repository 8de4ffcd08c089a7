//! Workloads of a bad day, for `make bench`'s hottest-key rows: a held backlog (an endpoint
//! whose circuit is open, its deliveries held once while its loop waits) and operational events
//! (deliveries failing for good at many endpoints, each window told to an operational
//! endpoint). What each spends on its busiest DynamoDB partition key, per unit of its work.

use std::sync::atomic::Ordering;
use std::time::Duration;

use local::capacity::KeyUsage;
use serde_json::json;

use crate::{
    create_endpoints, queue_events, receiver, receiver_saying, stack_with, unique, wait_until,
    BoxError, ADMIN_KEY,
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
        endpoint_id(&http, &stack, &venue).await?
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
async fn endpoint_id(
    http: &reqwest::Client,
    stack: &local::Stack,
    venue: &str,
) -> Result<String, BoxError> {
    let page: serde_json::Value = http
        .get(format!("{}/venues/{venue}/endpoints", stack.api_url))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await?
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap_or_default())?;
    page["data"][0]["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "no endpoint".into())
}
