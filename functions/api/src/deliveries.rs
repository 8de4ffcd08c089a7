//! Delivery history: an endpoint's deliveries, and one delivery with its attempts.

use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::Serialize;
use serde_json::json;
use shared::delivery::http_client::ErrorClass;
use shared::model::domain::{Attempt, DeliveryStatus};
use shared::model::ids::{DeliveryId, EndpointId, EventId};
use shared::storage::store::{DeliveryFilter, DeliveryRecord, HistoryCursor, ReplayRecord, Tenant};

use crate::endpoints::load;
use crate::error::ApiError;
use crate::{cursor, page_limit, to_json, Api, ApiResult, Call};

#[derive(Serialize)]
pub struct SummaryView<'a> {
    id: &'a DeliveryId,
    endpoint_id: &'a EndpointId,
    event_id: &'a EventId,
    event_type: &'a str,
    status: DeliveryStatus,
    attempt_count: u32,
    last_status_code: Option<u16>,
    last_error: Option<&'a str>,
    next_attempt_at: Option<DateTime<Utc>>,
    /// Pending without an attempt, and why (`null` otherwise).
    held: Option<HeldView>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Why a pending delivery waits without being attempted, and until when.
#[derive(Serialize)]
pub struct HeldView {
    /// `circuit_open` (the receiver kept failing), `host_not_answering` (its server answers
    /// none of the endpoints at it) or `endpoint_disabled`.
    reason: &'static str,
    message: &'static str,
    since: DateTime<Utc>,
    /// When the endpoint is looked at again (a probe); `null` while it is disabled.
    next_look: Option<DateTime<Utc>>,
}

impl<'a> SummaryView<'a> {
    pub fn of(d: &'a DeliveryRecord) -> Self {
        SummaryView {
            id: &d.delivery_id,
            endpoint_id: &d.endpoint_id,
            event_id: &d.event_id,
            event_type: &d.event_type,
            status: d.status,
            attempt_count: d.attempt_count,
            last_status_code: d.last_status_code,
            last_error: d.last_error.as_deref(),
            next_attempt_at: d.next_attempt_at,
            held: d.held.as_ref().map(|h| HeldView {
                reason: h.reason.as_str(),
                message: h.reason.message(),
                since: h.since,
                next_look: h.next_look,
            }),
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

#[derive(Serialize)]
struct DetailView<'a> {
    #[serde(flatten)]
    summary: SummaryView<'a>,
    attempts: &'a [Attempt],
}

pub async fn list(api: &Api, tenant: &Tenant, raw_endpoint: &str, call: &Call<'_>) -> ApiResult {
    // History of an endpoint that is not this venue's is a 404, like the endpoint itself.
    let endpoint = load(api, tenant, raw_endpoint).await?;
    let endpoint_id = endpoint.endpoint_id.clone();
    let limit = page_limit(call)?;
    let status = call
        .param("status")
        .map(|raw| {
            DeliveryStatus::parse(raw).ok_or_else(|| {
                ApiError::invalid(
                    "status",
                    format!("`{raw}` is not one of succeeded, failed, pending"),
                )
            })
        })
        .transpose()?;
    let event_type = call.param("event_type").map(str::to_owned);
    if let Some(t) = &event_type {
        shared::model::domain::validate_event_type("event_type", t)?;
    }
    let after = call
        .param("cursor")
        .map(|c| {
            cursor::decode(c)
                .and_then(|raw| HistoryCursor::decode(&raw).ok_or_else(cursor::invalid))
        })
        .transpose()?;
    let time = |name: &str| {
        call.param(name)
            .map(|raw| {
                DateTime::parse_from_rfc3339(raw)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| {
                        ApiError::invalid(name, format!("`{raw}` is not an RFC 3339 time"))
                    })
            })
            .transpose()
    };
    let filter = DeliveryFilter {
        status,
        event_type,
        since: time("since")?,
        until: time("until")?,
    };
    let page = api
        .store
        .list_deliveries(tenant, &endpoint_id, &filter, limit, after.as_ref())
        .await?;
    let data: Vec<_> = page.items.iter().map(SummaryView::of).collect();
    Ok((
        StatusCode::OK,
        json!({
            "data": data,
            "next_cursor": page.next_cursor.as_deref().map(cursor::encode),
            // Why deliveries may be waiting unattempted.
            "circuit": crate::endpoints::CircuitView::of(&endpoint),
        }),
    ))
}

/// The venue's delivery of this id, or a 404.
async fn load_delivery(
    api: &Api,
    tenant: &Tenant,
    raw_id: &str,
) -> Result<DeliveryRecord, ApiError> {
    let id = DeliveryId::parse(raw_id).map_err(|_| ApiError::not_found("delivery"))?;
    api.store
        .get_delivery(tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery"))
}

pub async fn get(api: &Api, tenant: &Tenant, raw_id: &str) -> ApiResult {
    let delivery = load_delivery(api, tenant, raw_id).await?;
    // Older attempts are stored without their hint: it follows from the error class.
    let attempts: Vec<Attempt> = delivery
        .attempts
        .iter()
        .cloned()
        .map(|mut attempt| {
            if attempt.hint.is_none() {
                attempt.hint = attempt
                    .error_class
                    .as_deref()
                    .and_then(ErrorClass::parse)
                    .map(|class| class.hint(attempt.status_code).to_owned());
            }
            attempt
        })
        .collect();
    Ok((
        StatusCode::OK,
        to_json(&DetailView {
            summary: SummaryView::of(&delivery),
            attempts: &attempts,
        }),
    ))
}

/// `POST .../deliveries/{id}/retry`: one attempt now, answered with its outcome.
pub async fn retry(api: &Api, tenant: &Tenant, raw_id: &str) -> ApiResult {
    let delivery = load_delivery(api, tenant, raw_id).await?;
    let attempt = api.dispatcher.retry_now(tenant, &delivery).await?;
    Ok((StatusCode::OK, to_json(&attempt)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    since: DateTime<Utc>,
    #[serde(default)]
    until: Option<DateTime<Utc>>,
}

/// How far back a replay may reach.
pub const REPLAY_MAX_WINDOW_DAYS: i64 = 14;

/// A replay as the API shows it.
fn replay_view(r: &ReplayRecord) -> serde_json::Value {
    json!({
        "replay_id": r.replay_id,
        "endpoint_id": r.endpoint_id,
        "state": r.state,
        "replaying": r.found,
        "queued": r.queued,
        "since": r.since,
        "until": r.until_at,
        "started_at": r.started_at,
        "updated_at": r.updated_at,
    })
}

/// `POST .../endpoints/{id}/replay {since, until?}`: one manual attempt for every failed
/// delivery created in the window, queued in the background. 202 at once with the replay's
/// id and how many it found; the same request while it runs answers the same replay.
pub async fn replay(api: &Api, tenant: &Tenant, raw_endpoint: &str, call: &Call<'_>) -> ApiResult {
    let request: ReplayRequest = crate::error::parse_json(call.body)?;
    let endpoint = load(api, tenant, raw_endpoint).await?;
    let now = Utc::now();
    let until = request.until.unwrap_or(now).min(now);
    if request.since >= until {
        return Err(ApiError::invalid(
            "since",
            "must be before `until` (and before now)",
        ));
    }
    if now - request.since > chrono::Duration::days(REPLAY_MAX_WINDOW_DAYS) {
        return Err(ApiError::invalid(
            "since",
            format!("a replay reaches back at most {REPLAY_MAX_WINDOW_DAYS} days"),
        ));
    }
    let record = api
        .replayer
        .start(
            tenant,
            &endpoint.endpoint_id,
            (request.since, request.until),
            now,
        )
        .await?;
    Ok((StatusCode::ACCEPTED, replay_view(&record)))
}

/// `GET .../endpoints/{id}/replays/{replay_id}`: how far a replay is.
pub async fn get_replay(
    api: &Api,
    tenant: &Tenant,
    raw_endpoint: &str,
    replay_id: &str,
) -> ApiResult {
    let endpoint = load(api, tenant, raw_endpoint).await?;
    if !ReplayRecord::is_id(replay_id) {
        return Err(ApiError::not_found("replay"));
    }
    let record = api
        .store
        .get_replay(tenant, &endpoint.endpoint_id, replay_id)
        .await?
        .ok_or_else(|| ApiError::not_found("replay"))?;
    Ok((StatusCode::OK, replay_view(&record)))
}
