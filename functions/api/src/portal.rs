//! Portal sessions, minted with the admin key: a short-lived link to one venue's Settings →
//! Webhooks page (`…/portal#token=…&venue=…`; the token travels in the fragment, so it never
//! reaches a server log), which acts like a venue key until it expires or is revoked.

use chrono::{Duration, Utc};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use shared::model::api_key;
use shared::storage::store::{PortalSessionRecord, Tenant};

use crate::error::{parse_json_or_default, ApiError};
use crate::{Api, ApiResult, Call};

/// How long a session lives unless asked otherwise.
const DEFAULT_TTL_SECONDS: i64 = 3600;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateSession {
    #[serde(default)]
    ttl_seconds: Option<i64>,
}

/// `POST /venues/{v}/portal-sessions {"ttl_seconds"?}` → 201 `{"url", "expires_at"}`.
pub async fn create(api: &Api, tenant: &Tenant, call: &Call<'_>) -> ApiResult {
    let request: CreateSession = parse_json_or_default(call.body)?;
    let max = api.portal.max_ttl_seconds;
    let ttl = request.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS.min(max));
    if !(1..=max).contains(&ttl) {
        return Err(ApiError::invalid(
            "ttl_seconds",
            format!("must be from 1 to {max} seconds"),
        ));
    }
    let now = Utc::now();
    let expires = now + Duration::seconds(ttl);
    let issued = api_key::issue_portal();
    let record = PortalSessionRecord {
        key_id: issued.id,
        venue_id: tenant.venue().clone(),
        key_sha256: issued.sha256,
        created_at: now,
        expires_at: expires.timestamp(),
    };
    api.store.create_portal_session(&record).await?;
    tracing::info!(venue_id = %tenant.venue(), session = %record.key_id, ttl, "portal session minted");
    let page = match &api.portal.url {
        Some(url) => url.clone(),
        None => format!("{}/portal", origin(call.headers)),
    };
    Ok((
        StatusCode::CREATED,
        json!({
            // The only time the token is ever shown.
            "url": format!("{page}#token={}&venue={}", issued.token.expose(), tenant.venue()),
            "expires_at": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }),
    ))
}

/// The API's origin as the caller reached it: `x-forwarded-proto` (API Gateway sets it) or
/// `http`, and the `host` header.
fn origin(headers: &http::HeaderMap) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let proto = header("x-forwarded-proto").unwrap_or("http");
    let host = header("host").unwrap_or("localhost");
    format!("{proto}://{host}")
}

/// `DELETE /venues/{v}/portal-sessions`: every link of the venue stops working at once.
pub async fn revoke(api: &Api, tenant: &Tenant) -> ApiResult {
    let revoked = api.store.revoke_portal_sessions(tenant).await?;
    tracing::info!(venue_id = %tenant.venue(), revoked, "portal sessions revoked");
    Ok((StatusCode::OK, json!({ "revoked": revoked })))
}
