//! `DELETE /venues/{venue_id}` (admin key only): a venue that leaves Popup. Its endpoints, API
//! keys and portal sessions go at once; its events and history within the request's time or
//! soon after ([`shared::pipeline::removal`]). Idempotent: removing it again finds nothing.

use std::time::Duration;

use chrono::Utc;
use http::StatusCode;
use shared::storage::store::Tenant;

use crate::{to_json, Api, ApiResult};

/// How long the request itself deletes events and history before leaving the rest to purge
/// tasks (API Gateway gives a request 30 s).
const PURGE_BUDGET: Duration = Duration::from_secs(10);

pub async fn remove(api: &Api, tenant: &Tenant) -> ApiResult {
    let removal = api.remover.remove(tenant, Utc::now(), PURGE_BUDGET).await?;
    Ok((StatusCode::OK, to_json(&removal)))
}
