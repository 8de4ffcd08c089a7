//! Publishing events over HTTP and reading one back with its per-endpoint status.

use std::collections::HashMap;

use chrono::Utc;
use http::StatusCode;
use serde_json::json;
use shared::domain::PublishRequest;
use shared::ids::EventId;
use shared::store::Tenant;

use crate::deliveries::SummaryView;
use crate::error::{parse_json, ApiError};
use crate::{to_json, Api, ApiResult, Call};

/// `202 {"id", "duplicate", "queued"}` once the event is stored: `queued` says its deliveries
/// are on the queue; `false` means they could not be queued yet and will be within minutes
/// (the sweeper), so the event is accepted either way. Publishing an id again
/// with the same type and data is idempotent (202 with the same id, delivered once); with other
/// content it is a 409.
pub async fn publish(api: &Api, tenant: &Tenant, call: &Call<'_>) -> ApiResult {
    api.publisher.check_size(call.body.len())?;
    let request: PublishRequest = parse_json(call.body)?;
    let accepted = api.publisher.publish(tenant, request, Utc::now()).await?;
    Ok((
        StatusCode::ACCEPTED,
        json!({"id": accepted.record.event_id, "duplicate": accepted.duplicate, "queued": accepted.queued}),
    ))
}

pub async fn get(api: &Api, tenant: &Tenant, raw_id: &str) -> ApiResult {
    let id = EventId::parse(raw_id).map_err(|_| ApiError::not_found("event"))?;
    let record = api
        .store
        .get_event(tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("event"))?;
    let keys: Vec<_> = record
        .targets
        .iter()
        .map(|t| t.delivery_id.clone())
        .collect();
    let mut found: HashMap<_, _> = api
        .store
        .get_deliveries(tenant, &keys)
        .await?
        .into_iter()
        .map(|d| (d.delivery_id.clone(), d))
        .collect();
    // A target without a delivery item has not been attempted yet.
    let deliveries: Vec<serde_json::Value> = record
        .targets
        .iter()
        .map(|t| match found.remove(&t.delivery_id) {
            Some(d) => to_json(&SummaryView::of(&d)),
            None => json!({
                "id": t.delivery_id,
                "endpoint_id": t.endpoint_id,
                "event_id": record.event_id,
                "event_type": record.event_type,
                "status": "pending",
                "attempt_count": 0,
            }),
        })
        .collect();
    let data: serde_json::Value =
        serde_json::from_str(&record.data).unwrap_or(serde_json::Value::Null);
    Ok((
        StatusCode::OK,
        json!({
            "id": record.event_id,
            "type": record.event_type,
            "timestamp": record.timestamp,
            "data": data,
            "accepted_at": record.accepted_at,
            "deliveries": deliveries,
        }),
    ))
}
