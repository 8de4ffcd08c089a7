//! Publishing events over HTTP and reading one back with its per-endpoint status.

use std::collections::HashMap;

use chrono::Utc;
use http::StatusCode;
use serde_json::json;
use shared::model::domain::PublishRequest;
use shared::model::ids::EventId;
use shared::runtime::metrics::Counter;
use shared::storage::store::Tenant;

use crate::deliveries::SummaryView;
use crate::error::{parse_json, ApiError};
use crate::{to_json, Api, ApiResult, Call};

/// `202 {"id", "duplicate", "queued"}` once the event is stored: `queued` says its deliveries
/// are on the queue; `false` means they could not be queued yet and will be within minutes
/// (the sweeper), so the event is accepted either way. Publishing an id again
/// with the same type and data is idempotent (202 with the same id, delivered once); with other
/// content it is a 409.
pub async fn publish(api: &Api, tenant: &Tenant, call: &Call<'_>) -> ApiResult {
    let metrics = api.dispatcher.metrics();
    let accepted = async {
        api.publisher.check_size(call.body.len())?;
        let request: PublishRequest = parse_json(call.body)?;
        api.publish_limit.take(&api.store, tenant.venue()).await?;
        Ok::<_, ApiError>(api.publisher.publish(tenant, request, Utc::now()).await?)
    }
    .await
    .inspect_err(|e| {
        if e.status.is_client_error() {
            metrics.count(Counter::EventsRefused, 1);
        }
    })?;
    metrics.count(Counter::EventsAccepted, 1);
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

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewRequest {
    event_type: String,
    #[serde(default)]
    payload_format: shared::model::domain::PayloadFormat,
    #[serde(default)]
    template: Option<String>,
}

/// `POST /venues/{v}/payload-preview {"event_type", "payload_format"?, "template"?}`: the exact
/// body a receiver gets in that format for the catalog's example of that event type (what the
/// page's preview shows); a template that does not apply is a 422 on `template` saying why.
pub async fn preview(call: &Call<'_>) -> ApiResult {
    let request: PreviewRequest = crate::error::parse_json(call.body)?;
    let info = shared::model::catalog::catalog()
        .get(&request.event_type)
        .ok_or_else(|| {
            ApiError::invalid(
                "event_type",
                format!(
                    "`{}` is not in the catalog; see GET /event-types",
                    request.event_type
                ),
            )
        })?;
    if request.template.is_some()
        != (request.payload_format == shared::model::domain::PayloadFormat::Template)
    {
        return Err(ApiError::invalid(
            "template",
            "give a template with payload_format `template`, and only then",
        ));
    }
    if request
        .template
        .as_ref()
        .is_some_and(|t| t.len() > shared::delivery::envelope::MAX_TEMPLATE_LEN)
    {
        return Err(ApiError::invalid(
            "template",
            format!(
                "at most {} characters",
                shared::delivery::envelope::MAX_TEMPLATE_LEN
            ),
        ));
    }
    let event = shared::delivery::envelope::example_event(info)
        .map_err(|e| ApiError::invalid("event_type", e))?;
    let body = shared::delivery::envelope::render(
        &event,
        request.payload_format,
        request.template.as_deref(),
    )
    .await
    .map_err(|e| {
        ApiError::invalid(
            "template",
            format!("on the example `{}` event: {e}", info.event_type),
        )
    })?;
    Ok((
        StatusCode::OK,
        json!({
            "event_type": info.event_type,
            "body": String::from_utf8_lossy(&body),
        }),
    ))
}
