//! Delivery history: an endpoint's deliveries, and one delivery with its attempts.

use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::Serialize;
use serde_json::json;
use shared::domain::{Attempt, DeliveryStatus};
use shared::ids::{DeliveryId, EndpointId, EventId};
use shared::store::{DeliveryFilter, DeliveryRecord, Tenant};

use crate::endpoints::parse_endpoint_id;
use crate::error::ApiError;
use crate::{page_limit, to_json, Api, ApiResult, Call};

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
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
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
    let endpoint_id = parse_endpoint_id(raw_endpoint)?;
    // History of an endpoint that is not this venue's is a 404, like the endpoint itself.
    if api
        .store
        .get_endpoint(tenant, &endpoint_id)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("endpoint"));
    }
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
        shared::domain::validate_event_type("event_type", t)?;
    }
    let before = call
        .param("cursor")
        .map(|c| {
            DeliveryId::parse(c)
                .map_err(|_| ApiError::invalid("cursor", "not a cursor from a previous page"))
        })
        .transpose()?;
    let filter = DeliveryFilter { status, event_type };
    let page = api
        .store
        .list_deliveries(tenant, &endpoint_id, &filter, limit, before.as_ref())
        .await?;
    let data: Vec<_> = page.items.iter().map(SummaryView::of).collect();
    Ok((
        StatusCode::OK,
        json!({"data": data, "next_cursor": page.next_cursor}),
    ))
}

pub async fn get(api: &Api, tenant: &Tenant, raw_id: &str) -> ApiResult {
    let id = DeliveryId::parse(raw_id).map_err(|_| ApiError::not_found("delivery"))?;
    let delivery = api
        .store
        .get_delivery(tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery"))?;
    Ok((
        StatusCode::OK,
        to_json(&DetailView {
            summary: SummaryView::of(&delivery),
            attempts: &delivery.attempts,
        }),
    ))
}
