//! Endpoint CRUD.

use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};
use shared::domain::{
    validate_event_type_patterns, Credential, Endpoint, PayloadFormat, SigningSecret,
    MAX_DESCRIPTION_LEN,
};
use shared::ids::{EndpointId, VenueId};
use shared::secret::Secret;
use shared::store::Tenant;

use crate::error::{parse_json, ApiError};
use crate::{page_limit, to_json, Api, ApiResult, Call};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateEndpoint {
    url: String,
    #[serde(default)]
    description: Option<String>,
    event_types: Vec<String>,
    #[serde(default)]
    auth: Option<AuthRequest>,
    #[serde(default)]
    payload_format: Option<PayloadFormat>,
    #[serde(default)]
    enabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
enum AuthRequest {
    SignedSecret,
    BearerToken {
        #[serde(default)]
        token: Option<String>,
    },
}

/// PATCH: an absent field is unchanged; `null` clears an optional one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateEndpoint {
    #[serde(default, deserialize_with = "present")]
    url: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    event_types: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    payload_format: Option<Option<PayloadFormat>>,
    #[serde(default, deserialize_with = "present")]
    enabled: Option<Option<bool>>,
}

/// Tells a field sent as `null` (`Some(None)`) from one not sent (`None`, via `default`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

fn required<T>(field: &str, value: Option<T>) -> Result<T, ApiError> {
    value.ok_or_else(|| ApiError::invalid(field, "cannot be null"))
}

#[derive(Serialize)]
pub struct AuthView {
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_hint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_hint: Option<String>,
}

/// An endpoint as the API shows it: never the secret or token, only a hint.
#[derive(Serialize)]
pub struct EndpointView<'a> {
    id: &'a EndpointId,
    venue_id: &'a VenueId,
    url: &'a str,
    description: Option<&'a str>,
    event_types: &'a [String],
    auth: AuthView,
    payload_format: PayloadFormat,
    enabled: bool,
    /// Why the system disabled it, if it did.
    disabled_reason: Option<&'a str>,
    /// Since when every delivery has failed, if they do.
    failing_since: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl<'a> EndpointView<'a> {
    pub fn of(ep: &'a Endpoint) -> Self {
        let hint = ep.credential.current().map(Secret::hint);
        let signed = matches!(ep.credential, Credential::SignedSecret { .. });
        EndpointView {
            id: &ep.endpoint_id,
            venue_id: &ep.venue_id,
            url: &ep.url,
            description: ep.description.as_deref(),
            event_types: &ep.event_types,
            auth: AuthView {
                mode: ep.credential.mode(),
                secret_hint: if signed { hint.clone() } else { None },
                token_hint: if signed { None } else { hint },
            },
            payload_format: ep.payload_format,
            enabled: ep.enabled,
            disabled_reason: ep.disabled_reason.as_deref(),
            failing_since: ep.failing_since,
            created_at: ep.created_at,
            updated_at: ep.updated_at,
        }
    }
}

fn check_description(description: &Option<String>) -> Result<(), ApiError> {
    match description {
        Some(d) if d.chars().count() > MAX_DESCRIPTION_LEN => Err(ApiError::invalid(
            "description",
            format!("at most {MAX_DESCRIPTION_LEN} characters"),
        )),
        _ => Ok(()),
    }
}

pub fn parse_endpoint_id(raw: &str) -> Result<EndpointId, ApiError> {
    EndpointId::parse(raw).map_err(|_| ApiError::not_found("endpoint"))
}

pub async fn create(api: &Api, tenant: &Tenant, call: &Call<'_>) -> ApiResult {
    let req: CreateEndpoint = parse_json(call.body)?;
    let url = api.destinations.check_url(&req.url).await?;
    validate_event_type_patterns(&req.event_types)?;
    check_description(&req.description)?;
    let credential = match req.auth.unwrap_or(AuthRequest::SignedSecret) {
        AuthRequest::SignedSecret => Credential::SignedSecret {
            secrets: vec![SigningSecret {
                secret: Secret::generate_signing(),
                expires_at: None,
            }],
        },
        AuthRequest::BearerToken { token } => Credential::BearerToken {
            token: match token {
                Some(raw) => Secret::bearer_token(raw)?,
                None => Secret::generate_token(),
            },
        },
    };
    let now = Utc::now();
    let endpoint = Endpoint {
        venue_id: tenant.venue().clone(),
        endpoint_id: EndpointId::generate(),
        url: url.to_string(),
        description: req.description,
        event_types: req.event_types,
        credential,
        payload_format: req.payload_format.unwrap_or_default(),
        enabled: req.enabled.unwrap_or(true),
        disabled_reason: None,
        failing_since: None,
        created_at: now,
        updated_at: now,
    };
    api.store.create_endpoint(&endpoint).await?;
    tracing::info!(venue_id = %tenant.venue(), endpoint_id = %endpoint.endpoint_id, auth = endpoint.credential.mode(), "endpoint created");
    let mut body = to_json(&EndpointView::of(&endpoint));
    // The only response that ever carries the secret or token.
    if let (Some(secret), Some(map)) = (endpoint.credential.current(), body.as_object_mut()) {
        let field = match endpoint.credential {
            Credential::SignedSecret { .. } => "secret",
            Credential::BearerToken { .. } => "token",
        };
        map.insert(field.into(), secret.expose().into());
    }
    Ok((StatusCode::CREATED, body))
}

pub async fn list(api: &Api, tenant: &Tenant, call: &Call<'_>) -> ApiResult {
    let limit = page_limit(call)?;
    let after = call
        .param("cursor")
        .map(|c| {
            EndpointId::parse(c)
                .map_err(|_| ApiError::invalid("cursor", "not a cursor from a previous page"))
        })
        .transpose()?;
    let page = api
        .store
        .list_endpoints(tenant, limit as i32, after.as_ref())
        .await?;
    let data: Vec<_> = page.items.iter().map(EndpointView::of).collect();
    Ok((
        StatusCode::OK,
        serde_json::json!({"data": data, "next_cursor": page.next_cursor}),
    ))
}

async fn load(api: &Api, tenant: &Tenant, raw_id: &str) -> Result<Endpoint, ApiError> {
    let id = parse_endpoint_id(raw_id)?;
    api.store
        .get_endpoint(tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))
}

pub async fn get(api: &Api, tenant: &Tenant, raw_id: &str) -> ApiResult {
    let endpoint = load(api, tenant, raw_id).await?;
    Ok((StatusCode::OK, to_json(&EndpointView::of(&endpoint))))
}

pub async fn update(api: &Api, tenant: &Tenant, raw_id: &str, call: &Call<'_>) -> ApiResult {
    let req: UpdateEndpoint = parse_json(call.body)?;
    let mut endpoint = load(api, tenant, raw_id).await?;
    let previous = endpoint.updated_at;
    if let Some(url) = req.url {
        let url = api.destinations.check_url(&required("url", url)?).await?;
        endpoint.url = url.to_string();
    }
    if let Some(description) = req.description {
        check_description(&description)?;
        endpoint.description = description;
    }
    if let Some(types) = req.event_types {
        let types = required("event_types", types)?;
        validate_event_type_patterns(&types)?;
        endpoint.event_types = types;
    }
    if let Some(format) = req.payload_format {
        endpoint.payload_format = required("payload_format", format)?;
    }
    if let Some(enabled) = req.enabled {
        let enabled = required("enabled", enabled)?;
        if enabled && !endpoint.enabled {
            // Re-enabled by the venue: a fresh start for the failure clock.
            endpoint.disabled_reason = None;
            endpoint.failing_since = None;
        }
        endpoint.enabled = enabled;
    }
    endpoint.updated_at = Utc::now().max(previous + chrono::Duration::microseconds(1));
    api.store.replace_endpoint(&endpoint, previous).await?;
    tracing::info!(venue_id = %tenant.venue(), endpoint_id = %endpoint.endpoint_id, enabled = endpoint.enabled, "endpoint updated");
    Ok((StatusCode::OK, to_json(&EndpointView::of(&endpoint))))
}

pub async fn delete(api: &Api, tenant: &Tenant, raw_id: &str) -> ApiResult {
    let id = parse_endpoint_id(raw_id)?;
    api.store.delete_endpoint(tenant, &id).await?;
    tracing::info!(venue_id = %tenant.venue(), endpoint_id = %id, "endpoint deleted");
    Ok((StatusCode::NO_CONTENT, serde_json::Value::Null))
}
