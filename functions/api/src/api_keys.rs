//! Venue API keys, managed with the admin key: issue (shown once), list (hints), revoke.

use chrono::Utc;
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use shared::model::api_key;
use shared::model::ids::ApiKeyId;
use shared::storage::store::{ApiKeyRecord, Tenant};

use crate::error::{parse_json_or_default, ApiError};
use crate::{Api, ApiResult, Call};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    #[serde(default)]
    description: Option<String>,
}

fn view(record: &ApiKeyRecord) -> serde_json::Value {
    json!({
        "id": record.key_id,
        "venue_id": record.venue_id,
        "hint": record.hint,
        "description": record.description,
        "created_at": record.created_at,
        "last_used_at": record.last_used_at,
    })
}

pub async fn create(api: &Api, tenant: &Tenant, call: &Call<'_>) -> ApiResult {
    let request: CreateKey = parse_json_or_default(call.body)?;
    if request
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 256)
    {
        return Err(ApiError::invalid("description", "at most 256 characters"));
    }
    let issued = api_key::issue();
    let record = ApiKeyRecord {
        key_id: issued.id,
        venue_id: tenant.venue().clone(),
        key_sha256: issued.sha256,
        hint: issued.key.hint(),
        description: request.description,
        created_at: Utc::now(),
        last_used_at: None,
    };
    api.store.create_api_key(&record).await?;
    tracing::info!(venue_id = %tenant.venue(), key_id = %record.key_id, "api key issued");
    let mut body = view(&record);
    // The only time the key is ever shown.
    body["key"] = json!(issued.key.expose());
    Ok((StatusCode::CREATED, body))
}

pub async fn list(api: &Api, tenant: &Tenant) -> ApiResult {
    let keys = api.store.list_api_keys(tenant).await?;
    let data: Vec<_> = keys.iter().map(view).collect();
    Ok((StatusCode::OK, json!({"data": data, "next_cursor": null})))
}

pub async fn revoke(api: &Api, tenant: &Tenant, raw_id: &str) -> ApiResult {
    let id = ApiKeyId::parse(raw_id).map_err(|_| ApiError::not_found("api key"))?;
    api.store.delete_api_key(tenant, &id).await?;
    tracing::info!(venue_id = %tenant.venue(), key_id = %id, "api key revoked");
    Ok((StatusCode::NO_CONTENT, serde_json::Value::Null))
}
