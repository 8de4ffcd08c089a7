//! History that scales: what reading an endpoint's history costs when another endpoint of the
//! same venue is busy. A venue with a busy endpoint (thousands of deliveries, some failed) and
//! a quiet one (five); each page is read through the API with every DynamoDB request passing
//! the counting proxy, so the read units are counted per page.
//!
//! The history is written straight through the store, with the deliver function's own calls
//! (`put_group` for the first-try successes of ten events, `record_attempt` for a failure), not
//! by delivering thousands of events: what is measured is the reading.

use chrono::{Duration as Span, Utc};
use serde_json::{json, Value};
use shared::model::domain::{Attempt, DeliveryStatus, Trigger};
use shared::model::ids::{DeliveryId, EndpointId, EventId, VenueId, GROUP_SIZE};
use shared::storage::store::{AttemptRecord, GroupEntry, GroupRecord, Store, Tenant};

use crate::{proxy, stack_with, unique, BoxError, Report, ADMIN_KEY};

/// What one history page cost.
struct PageCost {
    shown: usize,
    complete: bool,
    read_units: f64,
    requests: u64,
}

fn attempt(status: u16, at: chrono::DateTime<Utc>) -> Attempt {
    Attempt {
        attempt: 1,
        at,
        trigger: Trigger::Scheduled,
        status_code: Some(status),
        duration_ms: 42,
        error: (status >= 300).then(|| format!("the receiver answered {status}")),
        error_class: (status >= 500).then(|| "http_5xx".to_owned()),
        hint: None,
        response_body: Some(if status < 300 { "ok" } else { "unavailable" }.to_owned()),
    }
}

/// `groups` groups of ten first-try successes, then `failed` failed deliveries, at `endpoint`.
async fn write_history(
    store: &Store,
    tenant: &Tenant,
    endpoint: &EndpointId,
    (groups, failed): (usize, usize),
) -> Result<(), BoxError> {
    let at = Utc::now() - Span::minutes(5);
    for g in 0..groups {
        let group = DeliveryId::batch_base().group_at(endpoint);
        let entries = (0..GROUP_SIZE)
            .map(|i| {
                let event =
                    EventId::parse(&format!("evt_{g}_{i}")).unwrap_or_else(|_| EventId::generate());
                GroupEntry::success(i, (&event, "order.created"), attempt(200, at))
            })
            .collect();
        store
            .put_group(&GroupRecord {
                venue_id: tenant.venue().clone(),
                endpoint_id: endpoint.clone(),
                delivery_id: group,
                created_at: at,
                expires_at: store.expiry(Utc::now()),
                entries,
                moved: Vec::new(),
                held_members: Vec::new(),
                held: None,
                version: 0,
            })
            .await?;
    }
    for f in 0..failed {
        let delivery_id = DeliveryId::batch_base().group_at(endpoint).member(0);
        let event_id = EventId::parse(&format!("evt_failed_{f}"))?;
        store
            .record_attempt(AttemptRecord {
                delivery_id: &delivery_id,
                tenant,
                endpoint_id: endpoint,
                event_id: &event_id,
                event_type: "order.created",
                attempt: attempt(503, at),
                status: DeliveryStatus::Failed,
                next_attempt_at: None,
                scheduled: Some(1),
                previous: None,
            })
            .await?;
    }
    Ok(())
}

/// Measures the reading of history pages; adds rows to `report`.
pub async fn history_run(moto: &str, report: &mut Report, smoke: bool) -> Result<(), BoxError> {
    let (counts, counted, direct) = proxy::clients(moto).await?;
    let stack = stack_with(counted, "h", false, &[]).await?;
    let http = reqwest::Client::new();
    let venue = unique("v");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let created: Value = serde_json::from_slice(
            &http
                .post(format!("{}/venues/{venue}/endpoints", stack.api_url))
                .bearer_auth(ADMIN_KEY)
                .body(json!({"url": "http://127.0.0.1:9/hooks", "event_types": ["*"]}).to_string())
                .send()
                .await?
                .bytes()
                .await?,
        )?;
        let id = created["id"].as_str().ok_or("no endpoint id")?;
        ids.push(EndpointId::parse(id)?);
    }
    let (busy, quiet) = (&ids[0], &ids[1]);
    let env = stack.provisioned.env_of(local::API_FUNCTION)?;
    let services = shared::storage::services::Services::new(
        shared::runtime::config::Config::from_map(env)?,
        &direct,
    );
    let tenant = Tenant::authorized(VenueId::parse(&venue)?);
    let (busy_groups, busy_failed) = if smoke { (20, 10) } else { (500, 100) };
    write_history(&services.store, &tenant, busy, (busy_groups, busy_failed)).await?;
    // The quiet endpoint: four first-try successes (one group) and one failure, written
    // before the busy endpoint's last deliveries, so that they are not the venue's newest.
    write_history(&services.store, &tenant, quiet, (0, 1)).await?;
    let quiet_group = DeliveryId::batch_base().group_at(quiet);
    services
        .store
        .put_group(&GroupRecord {
            venue_id: tenant.venue().clone(),
            endpoint_id: quiet.clone(),
            delivery_id: quiet_group,
            created_at: Utc::now() - Span::minutes(5),
            expires_at: services.store.expiry(Utc::now()),
            entries: (0..4)
                .map(|i| {
                    let at = Utc::now() - Span::minutes(5);
                    GroupEntry::success(i, (&EventId::generate(), "order.paid"), attempt(200, at))
                })
                .collect(),
            moved: Vec::new(),
            held_members: Vec::new(),
            held: None,
            version: 0,
        })
        .await?;
    write_history(&services.store, &tenant, busy, (busy_groups / 10, 0)).await?;
    let busy_total = (busy_groups + busy_groups / 10) * GROUP_SIZE + busy_failed;

    // One GET of the API with the admin key: its answer, and the DynamoDB read units and
    // requests the proxy counted for it.
    let counted_get = |path: String| {
        let url = format!("{}{path}", stack.api_url);
        let (http, counts) = (http.clone(), counts.clone());
        async move {
            counts.reset();
            let answer: Value = serde_json::from_slice(
                &http
                    .get(url)
                    .bearer_auth(ADMIN_KEY)
                    .send()
                    .await?
                    .bytes()
                    .await?,
            )?;
            let snapshot = counts.snapshot();
            let requests: u64 = snapshot
                .iter()
                .filter(|(k, _)| k.starts_with("DynamoDB_"))
                .map(|(_, v)| v)
                .sum();
            let read_units =
                snapshot.get(proxy::READ_MILLI_UNITS).copied().unwrap_or(0) as f64 / 1000.0;
            Ok::<_, BoxError>((answer, read_units, requests))
        }
    };
    let page = |endpoint: &EndpointId, query: &str| {
        let get = counted_get(format!(
            "/venues/{venue}/endpoints/{endpoint}/deliveries?{query}"
        ));
        async move {
            let (answer, read_units, requests) = get.await?;
            Ok::<_, BoxError>(PageCost {
                shown: answer["data"].as_array().map_or(0, Vec::len),
                complete: answer["next_cursor"].is_null(),
                read_units,
                requests,
            })
        }
    };
    // The stats route: what one look at an endpoint's health reads.
    let stats = |endpoint: &EndpointId| {
        let get = counted_get(format!(
            "/venues/{venue}/endpoints/{endpoint}/stats?window=24h"
        ));
        async move {
            let (answer, read_units, _) = get.await?;
            Ok::<_, BoxError>((answer, read_units))
        }
    };
    let (quiet_stats, quiet_stats_units) = stats(quiet).await?;
    let (busy_stats, busy_stats_units) = stats(busy).await?;
    let quiet_all = page(quiet, "limit=20").await?;
    let quiet_failed = page(quiet, "limit=20&status=failed").await?;
    let busy_first = page(busy, "limit=20").await?;
    let busy_failed_page = page(busy, "limit=20&status=failed").await?;
    stack.stop().await;

    let few = 5.0;
    report.row(
        &format!("history: the quiet endpoint's page (5 deliveries) beside a busy endpoint of {busy_total} in the same venue"),
        format!(
            "{} of 5 shown, {}; {:.1} read units in {} DynamoDB requests (the endpoint's own read included)",
            quiet_all.shown,
            if quiet_all.complete { "complete (no cursor)" } else { "with a cursor" },
            quiet_all.read_units,
            quiet_all.requests
        ),
        &format!("complete, ≤ {few} read units"),
        Some(quiet_all.shown == 5 && quiet_all.complete && quiet_all.read_units <= few),
    );
    report.row(
        "history: the quiet endpoint's failed deliveries (`status=failed`)",
        format!(
            "{} of 1 shown, {}; {:.1} read units in {} requests",
            quiet_failed.shown,
            if quiet_failed.complete {
                "complete"
            } else {
                "with a cursor"
            },
            quiet_failed.read_units,
            quiet_failed.requests
        ),
        &format!("complete, ≤ {few} read units"),
        Some(quiet_failed.shown == 1 && quiet_failed.complete && quiet_failed.read_units <= few),
    );
    let counted = |s: &Value| s["deliveries"]["total"].as_u64().unwrap_or(0) as usize;
    report.row(
        &format!("stats (24 h): the quiet endpoint (5 deliveries) beside the busy one; the busy one ({busy_total})"),
        format!(
            "quiet: {} counted, {:.1} read units; busy: {} counted, {:.1} read units (${:.2} per million looks, on-demand); nothing written per delivery",
            counted(&quiet_stats),
            quiet_stats_units,
            counted(&busy_stats),
            busy_stats_units,
            busy_stats_units * 0.125
        ),
        "every delivery counted; the quiet one ≤ 5 read units (its partition only)",
        Some(
            counted(&quiet_stats) == 5
                && counted(&busy_stats) == busy_total
                && quiet_stats_units <= few
                && busy_stats["complete"] == true,
        ),
    );
    report.row(
        &format!("history: the busy endpoint's first page of 20, and of its {busy_failed} failed among {busy_total}"),
        format!(
            "{} shown, {:.1} read units in {} requests; failed: {} shown, {:.1} read units in {} requests",
            busy_first.shown,
            busy_first.read_units,
            busy_first.requests,
            busy_failed_page.shown,
            busy_failed_page.read_units,
            busy_failed_page.requests
        ),
        "in proportion to the page (≤ 20 read units)",
        Some(
            busy_first.shown == 20
                && busy_failed_page.shown == busy_failed.min(20)
                && busy_first.read_units <= 20.0
                && busy_failed_page.read_units <= 20.0,
        ),
    );
    Ok(())
}
