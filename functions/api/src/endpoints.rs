//! Endpoint CRUD.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};
use shared::delivery::envelope::check_template;
use shared::model::catalog::catalog;
use shared::model::domain::{
    validate_event_type_patterns, AuthMode, Endpoint, PayloadFormat, MAX_DESCRIPTION_LEN,
};
use shared::model::headers;
use shared::model::ids::{EndpointId, VenueId};
use shared::model::secret::Secret;
use shared::pipeline::operational::{DisabledBy, OpsEvent};
use shared::storage::store::Tenant;

use crate::error::{parse_json, parse_json_or_default, ApiError};
use crate::{cursor, page_limit, to_json, Api, ApiResult, Call};

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
    template: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
    /// Custom headers sent with every request: name → value.
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    /// Requests a second at most; `null` or absent for none.
    #[serde(default)]
    rate_limit: Option<u64>,
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
    template: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    enabled: Option<Option<bool>>,
    /// A merge patch of the custom headers: a name with a value sets it, with `null` removes
    /// it, one not named is kept; `"headers": null` removes them all.
    #[serde(default, deserialize_with = "present")]
    headers: Option<Option<BTreeMap<String, Option<String>>>>,
    #[serde(default, deserialize_with = "present")]
    rate_limit: Option<Option<u64>>,
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
    /// Custom headers: name → hint of the value (never the value).
    headers: BTreeMap<&'a str, &'a str>,
    payload_format: PayloadFormat,
    template: Option<&'a str>,
    enabled: bool,
    /// Requests a second at most (`null`: no limit).
    rate_limit: Option<u32>,
    /// Why the system disabled it, if it did.
    disabled_reason: Option<&'a str>,
    /// Since when every delivery has failed, if they do.
    failing_since: Option<DateTime<Utc>>,
    /// When it is disabled if they go on failing (`failing_since` plus the stack's
    /// `DisableAfterSeconds`, 5 days); `null` while deliveries succeed or it is disabled.
    disables_at: Option<DateTime<Utc>>,
    /// The circuit breaker: while open, deliveries wait without being attempted.
    circuit: CircuitView,
    /// The endpoint's host (a receiver other endpoints share), while it answers none of
    /// them: its deliveries are held until one probe there gets an answer.
    host_not_answering: Option<HostView>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// The endpoint's circuit breaker as the API shows it.
#[derive(Serialize)]
pub struct CircuitView {
    /// `closed`, `open` (deliveries wait) or `half_open` (one probe may go).
    state: &'static str,
    /// Failed attempts in a row.
    failures_in_row: u32,
    /// When it lets a probe through, while open.
    open_until: Option<DateTime<Utc>>,
}

/// A host that is not answering, as the API shows it.
#[derive(Serialize)]
pub struct HostView {
    /// `host:port`.
    host: String,
    /// When one request there looks again.
    next_look: DateTime<Utc>,
}

impl CircuitView {
    pub fn of(ep: &Endpoint) -> Self {
        let circuit = shared::delivery::breaker::Circuit::of(ep);
        CircuitView {
            state: circuit.state(Utc::now()),
            failures_in_row: circuit.failures_in_row,
            open_until: circuit.open_until,
        }
    }
}

impl<'a> EndpointView<'a> {
    pub fn of(api: &Api, ep: &'a Endpoint) -> Self {
        let hint = Some(ep.auth.hint.clone());
        let signed = ep.auth.mode == AuthMode::SignedSecret;
        EndpointView {
            id: &ep.endpoint_id,
            venue_id: &ep.venue_id,
            url: &ep.url,
            description: ep.description.as_deref(),
            event_types: &ep.event_types,
            auth: AuthView {
                mode: ep.auth.mode.as_str(),
                secret_hint: if signed { hint.clone() } else { None },
                token_hint: if signed { None } else { hint },
            },
            headers: ep
                .headers
                .iter()
                .flat_map(|h| h.hints.iter())
                .map(|(name, hint)| (name.as_str(), hint.as_str()))
                .collect(),
            payload_format: ep.payload_format,
            template: ep.template.as_deref(),
            enabled: ep.enabled,
            rate_limit: ep.rate_limit,
            disabled_reason: ep.disabled_reason.as_deref(),
            failing_since: ep.failing_since,
            disables_at: ep
                .failing_since
                .filter(|_| ep.enabled)
                .and_then(|since| api.dispatcher.disables_at(since)),
            circuit: CircuitView::of(ep),
            host_not_answering: None,
            created_at: ep.created_at,
            updated_at: ep.updated_at,
        }
    }

    /// As [`EndpointView::of`], with whether its host is answering now.
    pub async fn now(api: &Api, ep: &'a Endpoint) -> Self {
        let host_not_answering = api
            .dispatcher
            .host_not_answering(&ep.url)
            .await
            .map(|(host, next_look)| HostView { host, next_look });
        EndpointView {
            host_not_answering,
            ..Self::of(api, ep)
        }
    }
}

/// The most `rate_limit` may say (more than one endpoint's history takes anyway).
const MAX_RATE_LIMIT: u64 = 10_000;

/// `rate_limit`: requests a second, 1 to 10,000, or none.
fn check_rate_limit(limit: Option<u64>) -> Result<Option<u32>, ApiError> {
    match limit {
        None => Ok(None),
        Some(n) if (1..=MAX_RATE_LIMIT).contains(&n) => Ok(Some(n as u32)),
        Some(n) => Err(ApiError::invalid(
            "rate_limit",
            format!("{n} is not a rate limit: requests a second, from 1 to {MAX_RATE_LIMIT}, or null for none"),
        )),
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

/// `template` goes with `payload_format: template`, and only with it; it must work on the
/// catalog's example of what the endpoint subscribes to.
fn check_format(
    format: PayloadFormat,
    template: Option<&str>,
    event_types: &[String],
) -> Result<(), ApiError> {
    match (format, template) {
        (PayloadFormat::Template, Some(expression)) => {
            Ok(check_template(expression, event_types)?)
        }
        (PayloadFormat::Template, None) => Err(ApiError::invalid(
            "template",
            "payload_format `template` needs a `template` (a JMESPath expression over the envelope)",
        )),
        (_, Some(_)) => Err(ApiError::invalid(
            "template",
            "set payload_format to `template` to use a template",
        )),
        (_, None) => Ok(()),
    }
}

/// Whether `tenant` is the platform's operational endpoints' venue.
fn is_operational(tenant: &Tenant) -> bool {
    tenant.venue().as_str() == shared::pipeline::operational::OPS_VENUE
}

pub fn parse_endpoint_id(raw: &str) -> Result<EndpointId, ApiError> {
    EndpointId::parse(raw).map_err(|_| ApiError::not_found("endpoint"))
}

pub async fn create(api: &Api, tenant: &Tenant, call: &Call<'_>) -> ApiResult {
    let req: CreateEndpoint = parse_json(call.body)?;
    let url = api.destinations.check_url(&req.url).await?;
    validate_event_type_patterns(&req.event_types)?;
    catalog().check_patterns(&req.event_types, is_operational(tenant))?;
    let payload_format = req.payload_format.unwrap_or_default();
    check_format(payload_format, req.template.as_deref(), &req.event_types)?;
    check_description(&req.description)?;
    let custom = headers::parse(&req.headers.unwrap_or_default())?;
    // A bounded fan-out: at most this many endpoints per venue (a concurrent create may pass
    // it by one; the bound is for scale, not for billing).
    let limit = api.max_endpoints_per_venue;
    let existing = api.store.endpoint_ids(tenant, limit).await?;
    if existing.len() >= limit {
        return Err(ApiError::invalid(
            "venue_id",
            format!("a venue has at most {limit} endpoints; delete one before adding another"),
        ));
    }
    let (mode, secret) = match req.auth.unwrap_or(AuthRequest::SignedSecret) {
        AuthRequest::SignedSecret => (AuthMode::SignedSecret, Secret::generate_signing()),
        AuthRequest::BearerToken { token } => (
            AuthMode::BearerToken,
            match token {
                Some(raw) => Secret::bearer_token(raw)?,
                None => Secret::generate_token(),
            },
        ),
    };
    let now = Utc::now();
    // Its tag names its history partition: never one of the venue's other endpoints'.
    let mut endpoint_id = EndpointId::generate();
    while existing.iter().any(|e| e.tag() == endpoint_id.tag()) {
        endpoint_id = EndpointId::generate();
    }
    let auth = api
        .sealer
        .seal_auth(
            tenant.venue(),
            &endpoint_id,
            mode,
            &[(secret.clone(), None)],
        )
        .await?;
    let headers = api
        .sealer
        .seal_headers(tenant.venue(), &endpoint_id, &custom)
        .await?;
    let endpoint = Endpoint {
        venue_id: tenant.venue().clone(),
        endpoint_id,
        url: url.to_string(),
        description: req.description,
        event_types: req.event_types,
        auth,
        headers,
        payload_format,
        template: req.template,
        enabled: req.enabled.unwrap_or(true),
        disabled_reason: None,
        failing_since: None,
        failures_in_row: 0,
        circuit_open_until: None,
        circuit_opens: 0,
        probe_until: None,
        slow_until: None,
        failure_window_since: None,
        failure_window_attempts: 0,
        failure_window_failures: 0,
        rate_limit: check_rate_limit(req.rate_limit)?,
        created_at: now,
        updated_at: now,
    };
    api.store.create_endpoint(&endpoint).await?;
    tracing::info!(venue_id = %tenant.venue(), endpoint_id = %endpoint.endpoint_id, auth = mode.as_str(), "endpoint created");
    Ok((StatusCode::CREATED, with_secret(api, &endpoint, &secret)))
}

/// The endpoint view plus the secret or token: the only responses that ever carry it are
/// the ones that created it (create and rotate).
fn with_secret(api: &Api, endpoint: &Endpoint, secret: &Secret) -> serde_json::Value {
    let mut body = to_json(&EndpointView::of(api, endpoint));
    let field = match endpoint.auth.mode {
        AuthMode::SignedSecret => "secret",
        AuthMode::BearerToken => "token",
    };
    body[field] = secret.expose().into();
    body
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    #[serde(default)]
    grace_period_seconds: Option<i64>,
    /// Bearer endpoints only: the venue's own new token (else one is generated).
    #[serde(default)]
    token: Option<String>,
}

pub const DEFAULT_GRACE_SECONDS: i64 = 86_400;
pub const MAX_GRACE_SECONDS: i64 = 604_800;
/// Old signing secrets kept signing during their grace periods, at most.
pub const MAX_OLD_SECRETS: usize = 10;

/// `POST .../rotate`: a new secret (shown once). For signed endpoints the old secrets keep
/// signing for the grace period, newest first; a bearer token is replaced at once.
pub async fn rotate(api: &Api, tenant: &Tenant, raw_id: &str, call: &Call<'_>) -> ApiResult {
    let req: RotateRequest = parse_json_or_default(call.body)?;
    let grace = req.grace_period_seconds.unwrap_or(DEFAULT_GRACE_SECONDS);
    if !(0..=MAX_GRACE_SECONDS).contains(&grace) {
        return Err(ApiError::invalid(
            "grace_period_seconds",
            format!("must be from 0 to {MAX_GRACE_SECONDS} (7 days)"),
        ));
    }
    let mut endpoint = load(api, tenant, raw_id).await?;
    let previous = endpoint.updated_at;
    let now = Utc::now();
    let secret =
        match (endpoint.auth.mode, req.token) {
            (AuthMode::SignedSecret, Some(_)) => return Err(ApiError::invalid(
                "token",
                "a signed-secret endpoint gets a generated secret; `token` is for bearer endpoints",
            )),
            (AuthMode::SignedSecret, None) => Secret::generate_signing(),
            (AuthMode::BearerToken, Some(raw)) => Secret::bearer_token(raw)?,
            (AuthMode::BearerToken, None) => Secret::generate_token(),
        };
    let mut fresh = api
        .sealer
        .seal_auth(
            tenant.venue(),
            &endpoint.endpoint_id,
            endpoint.auth.mode,
            &[(secret.clone(), None)],
        )
        .await?;
    if endpoint.auth.mode == AuthMode::SignedSecret && grace > 0 {
        // The sealed old secrets are kept as they are; only their end changes.
        let until = now + chrono::Duration::seconds(grace);
        let old = endpoint
            .auth
            .secrets
            .drain(..)
            .filter(|s| s.expires_at.is_none_or(|at| at > now))
            .map(|mut s| {
                s.expires_at = Some(s.expires_at.map_or(until, |at| at.min(until)));
                s
            })
            .take(MAX_OLD_SECRETS);
        fresh.secrets.extend(old);
    }
    endpoint.auth = fresh;
    endpoint.updated_at = now.max(previous + chrono::Duration::microseconds(1));
    api.store.replace_endpoint(&endpoint, previous).await?;
    tracing::info!(venue_id = %tenant.venue(), endpoint_id = %endpoint.endpoint_id, grace, "secret rotated");
    Ok((StatusCode::OK, with_secret(api, &endpoint, &secret)))
}

pub async fn list(api: &Api, tenant: &Tenant, call: &Call<'_>) -> ApiResult {
    let limit = page_limit(call)?;
    let after = call
        .param("cursor")
        .map(|c| {
            cursor::decode(c).and_then(|id| EndpointId::parse(&id).map_err(|_| cursor::invalid()))
        })
        .transpose()?;
    let page = api
        .store
        .list_endpoints(tenant, limit as i32, after.as_ref())
        .await?;
    let mut data = Vec::with_capacity(page.items.len());
    for ep in &page.items {
        data.push(EndpointView::now(api, ep).await);
    }
    Ok((
        StatusCode::OK,
        serde_json::json!({"data": data, "next_cursor": page.next_cursor.as_deref().map(cursor::encode)}),
    ))
}

/// The venue's endpoint of this id, or a 404.
pub(crate) async fn load(api: &Api, tenant: &Tenant, raw_id: &str) -> Result<Endpoint, ApiError> {
    let id = parse_endpoint_id(raw_id)?;
    api.store
        .get_endpoint(tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))
}

pub async fn get(api: &Api, tenant: &Tenant, raw_id: &str) -> ApiResult {
    let endpoint = load(api, tenant, raw_id).await?;
    Ok((
        StatusCode::OK,
        to_json(&EndpointView::now(api, &endpoint).await),
    ))
}

pub async fn update(api: &Api, tenant: &Tenant, raw_id: &str, call: &Call<'_>) -> ApiResult {
    let req: UpdateEndpoint = parse_json(call.body)?;
    let mut endpoint = load(api, tenant, raw_id).await?;
    let previous = endpoint.updated_at;
    let was_enabled = endpoint.enabled;
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
        catalog().check_patterns(&types, is_operational(tenant))?;
        endpoint.event_types = types;
    }
    if let Some(format) = req.payload_format {
        endpoint.payload_format = required("payload_format", format)?;
    }
    let template_sent = req.template.is_some();
    if let Some(template) = req.template {
        endpoint.template = template;
    }
    if endpoint.payload_format != PayloadFormat::Template && !template_sent {
        // Leaving the template format drops its template.
        endpoint.template = None;
    }
    check_format(
        endpoint.payload_format,
        endpoint.template.as_deref(),
        &endpoint.event_types,
    )?;
    if let Some(patch) = req.headers {
        endpoint.headers = patched_headers(api, &endpoint, patch).await?;
    }
    if let Some(limit) = req.rate_limit {
        endpoint.rate_limit = check_rate_limit(limit)?;
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
    // Whatever changed (the URL, the receiver's fix), deliveries are tried again at once.
    endpoint.reset_circuit();
    endpoint.updated_at = Utc::now().max(previous + chrono::Duration::microseconds(1));
    api.store.replace_endpoint(&endpoint, previous).await?;
    tracing::info!(venue_id = %tenant.venue(), endpoint_id = %endpoint.endpoint_id, enabled = endpoint.enabled, "endpoint updated");
    if endpoint.enabled {
        // What it kept while disabled, or held at its open circuit, goes now, oldest first
        // (a loop that was waiting for the circuit gives way to this one). If this fails the
        // answer says so, and the same PATCH again releases it.
        api.dispatcher
            .backlog()
            .start(tenant, &endpoint.endpoint_id, Utc::now(), true)
            .await?;
    }
    // Said to the platform's operational endpoints (once: the write above was conditional on
    // the item as read).
    let at = endpoint.updated_at;
    match (was_enabled, endpoint.enabled) {
        (true, false) => {
            api.dispatcher
                .ops()
                .send(OpsEvent::EndpointDisabled {
                    endpoint: &endpoint,
                    by: DisabledBy::Hand,
                    reason: "disabled by hand (the API or Settings → Webhooks)",
                    at,
                })
                .await
        }
        (false, true) => {
            api.dispatcher
                .ops()
                .send(OpsEvent::EndpointEnabled {
                    endpoint: &endpoint,
                    at,
                })
                .await
        }
        _ => {}
    }
    Ok((
        StatusCode::OK,
        to_json(&EndpointView::now(api, &endpoint).await),
    ))
}

/// The endpoint's custom headers after a merge patch, validated as a whole and sealed anew.
async fn patched_headers(
    api: &Api,
    endpoint: &Endpoint,
    patch: Option<BTreeMap<String, Option<String>>>,
) -> Result<Option<headers::SealedHeaders>, ApiError> {
    let Some(patch) = patch else {
        return Ok(None);
    };
    let mut current = api.sealer.open_headers(endpoint).await?;
    for (raw, value) in patch {
        let name = headers::normalize_name(&raw)?;
        match value {
            Some(value) => current.insert(name, value),
            None => current.remove(&name),
        };
    }
    headers::validate(&current)?;
    Ok(api
        .sealer
        .seal_headers(&endpoint.venue_id, &endpoint.endpoint_id, &current)
        .await?)
}

pub async fn delete(api: &Api, tenant: &Tenant, raw_id: &str) -> ApiResult {
    let id = parse_endpoint_id(raw_id)?;
    api.store.delete_endpoint(tenant, &id).await?;
    tracing::info!(venue_id = %tenant.venue(), endpoint_id = %id, "endpoint deleted");
    Ok((StatusCode::NO_CONTENT, serde_json::Value::Null))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TestRequest {
    #[serde(default)]
    event_type: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

/// `POST .../test`: a sample event sent now; answers with the attempt's outcome.
pub async fn send_test(api: &Api, tenant: &Tenant, raw_id: &str, call: &Call<'_>) -> ApiResult {
    let req: TestRequest = parse_json_or_default(call.body)?;
    let event_type = req.event_type.unwrap_or_else(|| "webhook.test".to_owned());
    let info = catalog().get(&event_type).ok_or_else(|| {
        ApiError::invalid(
            "event_type",
            format!("`{event_type}` is not in the catalog; see GET /event-types"),
        )
    })?;
    let data = req.data.unwrap_or_else(|| info.example.clone());
    if !data.is_object() {
        return Err(ApiError::invalid("data", "must be a JSON object"));
    }
    let data = serde_json::value::RawValue::from_string(data.to_string())
        .map_err(|e| ApiError::invalid("data", e))?;
    let endpoint = load(api, tenant, raw_id).await?;
    let (delivery_id, event, attempt) = api
        .dispatcher
        .send_test(tenant, &endpoint, event_type, data)
        .await?;
    let mut body = to_json(&attempt);
    body["succeeded"] = attempt.succeeded().into();
    body["delivery_id"] = to_json(&delivery_id);
    body["event_id"] = to_json(&event.id);
    Ok((StatusCode::OK, body))
}
