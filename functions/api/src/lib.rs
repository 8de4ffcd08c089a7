//! The API function: API Gateway (HTTP API) requests in, JSON out.
//!
//! [`Api::handle`] authenticates, routes, and turns every failure into the one error shape
//! (see [`error`]); the handlers in [`endpoints`], [`events`] and [`deliveries`] receive an
//! already-authorised [`Tenant`].

// Release builds abort on panic (see the workspace's release profile): no panicking shortcuts.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod api_keys;
pub mod auth;
pub mod cursor;
pub mod deliveries;
pub mod endpoints;
pub mod error;
pub mod events;
pub mod page;
pub mod portal;
pub mod publish_limit;
pub mod stats;
pub mod venues;

use std::time::{Duration, Instant};

/// What a request keeps before its deadline to answer (or a tenth of its time, if less).
const ANSWER_RESERVE: Duration = Duration::from_secs(1);

use http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use serde::Serialize;
use shared::delivery::destination::DestinationPolicy;
use shared::delivery::http_client::{BuildError, DeliveryClient};
use shared::pipeline::dispatch::Dispatcher;
use shared::pipeline::ingest::Publisher;
use shared::storage::sealing::Sealer;
use shared::storage::services::Services;
use shared::storage::store::Store;

use crate::auth::Authenticator;

pub use error::ApiError;

pub type ApiResult = Result<(StatusCode, serde_json::Value), ApiError>;

#[derive(Clone)]
pub struct Api {
    store: Store,
    sealer: Sealer,
    dispatcher: Dispatcher,
    publisher: Publisher,
    replayer: shared::pipeline::replay::Replayer,
    remover: shared::pipeline::removal::Remover,
    portal: shared::runtime::config::PortalConfig,
    page: page::Page,
    destinations: DestinationPolicy,
    auth: Authenticator,
    publish_limit: std::sync::Arc<publish_limit::PublishLimit>,
    max_body_bytes: usize,
    max_endpoints_per_venue: usize,
    retention_days: i64,
}

/// The request after routing: method, path segments, query and body.
pub struct Call<'a> {
    pub query: Vec<(String, String)>,
    pub body: &'a [u8],
    /// The request's headers (the API's origin as the caller reached it, for links to it).
    pub headers: &'a http::HeaderMap,
}

impl Call<'_> {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Api {
    /// `admin_key_sha256`: the lowercase hex SHA-256 of the admin key.
    pub fn new(services: &Services, admin_key_sha256: String) -> Result<Self, BuildError> {
        let config = &services.config;
        let http = DeliveryClient::new(&config.client())?;
        Ok(Self {
            store: services.store.clone(),
            sealer: services.sealer.clone(),
            dispatcher: Dispatcher::new(services, http),
            publisher: Publisher::new(services),
            replayer: shared::pipeline::replay::Replayer::new(services),
            remover: shared::pipeline::removal::Remover::new(services),
            portal: config.portal.clone(),
            page: page::Page::new(&config.portal.frame_ancestors),
            destinations: config.destinations.clone(),
            auth: Authenticator::new(admin_key_sha256, services.store.clone()),
            publish_limit: std::sync::Arc::new(publish_limit::PublishLimit::new(
                config.limits.venue_publish_rate_limit,
            )),
            // Room for the JSON around the largest accepted event.
            max_body_bytes: config.limits.max_payload_bytes + 16 * 1024,
            max_endpoints_per_venue: config.limits.max_endpoints_per_venue,
            retention_days: config.limits.retention_days,
        })
    }

    pub async fn handle(&self, request: Request) -> Response<Body> {
        self.handle_until(request, Instant::now() + Duration::from_secs(30))
            .await
    }

    /// As [`Api::handle`], answered by `deadline` (API Gateway answers 503 at 30 s and
    /// Lambda stops the function at its timeout): a request not done a moment before it is
    /// answered 503 `timeout`, with `Retry-After`, by the function itself.
    pub async fn handle_until(&self, request: Request, deadline: Instant) -> Response<Body> {
        let left = deadline.saturating_duration_since(Instant::now());
        let answer_by = deadline
            .checked_sub(ANSWER_RESERVE.min(left / 10))
            .unwrap_or_else(Instant::now);
        match tokio::time::timeout_at(answer_by.into(), self.answer(request)).await {
            Ok(response) => response,
            Err(_) => {
                tracing::error!(
                    limit_ms = left.as_millis() as u64,
                    "api request not done before the deadline: 503"
                );
                self.dispatcher.metrics().flush("api");
                let error = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    "the request did not finish in time (storage is slow); it may have been partly done: repeat it (publishing with the same id is one event)",
                );
                let mut response = json_response(error.status, &error.body());
                response.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("1"),
                );
                response
            }
        }
    }

    async fn answer(&self, request: Request) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        // The venue's page: no key needed to load it (its calls carry the session's token).
        if method == Method::GET && path.starts_with("/portal") {
            if let Some(response) = self.page.serve(&path, request.uri().query()) {
                tracing::info!(method = %method, path, status = 200, "portal page");
                return response;
            }
        }
        let (status, body, retry_after) = match self.dispatch(&request).await {
            Ok((status, body)) => (status, body, None),
            Err(e) => (e.status, e.body(), e.retry_after),
        };
        tracing::info!(
            method = %method,
            path,
            status = status.as_u16(),
            duration_ms = started.elapsed().as_millis() as u64,
            "api request"
        );
        self.dispatcher.metrics().flush("api");
        let mut response = json_response(status, &body);
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
        }
        response
    }

    async fn dispatch(&self, request: &Request) -> ApiResult {
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let caller = self.auth.authenticate(authorization).await?;
        let body = request.body().as_ref();
        if body.len() > self.max_body_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the request body is {} bytes; the limit is {} bytes",
                    body.len(),
                    self.max_body_bytes
                ),
            ));
        }
        let call = Call {
            query: request
                .uri()
                .query()
                .map(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .into_owned()
                        .collect()
                })
                .unwrap_or_default(),
            body,
            headers: request.headers(),
        };
        let (op, params) = route(request.method(), request.uri().path())?;
        if op == Op::EventTypes {
            return Ok((StatusCode::OK, to_json(shared::model::catalog::catalog())));
        }
        if op.admin_only() {
            caller.require_admin()?;
        }
        // The platform's operational endpoints: endpoints of the system's own venue, for the
        // admin key only. Every other route starts with /venues/{venue_id}.
        let (tenant, params) = if request.uri().path().starts_with(OPERATIONAL_PREFIX) {
            caller.require_admin()?;
            (shared::pipeline::operational::ops_tenant(), &params[..])
        } else {
            let venue = params.first().copied().unwrap_or_default();
            (caller.tenant(venue)?, params.get(1..).unwrap_or_default())
        };
        let id = params.first().copied().unwrap_or_default();
        let (t, c) = (&tenant, &call);
        match op {
            Op::EventTypes => Err(no_route()),
            Op::CreateEndpoint => endpoints::create(self, t, c).await,
            Op::ListEndpoints => endpoints::list(self, t, c).await,
            Op::GetEndpoint => endpoints::get(self, t, id).await,
            Op::UpdateEndpoint => endpoints::update(self, t, id, c).await,
            Op::DeleteEndpoint => endpoints::delete(self, t, id).await,
            Op::RotateSecret => endpoints::rotate(self, t, id, c).await,
            Op::SendTest => endpoints::send_test(self, t, id, c).await,
            Op::ListDeliveries => deliveries::list(self, t, id, c).await,
            Op::Replay => deliveries::replay(self, t, id, c).await,
            Op::GetReplay => {
                let replay = params.get(1).copied().unwrap_or_default();
                deliveries::get_replay(self, t, id, replay).await
            }
            Op::GetDelivery => deliveries::get(self, t, id).await,
            Op::RetryDelivery => deliveries::retry(self, t, id).await,
            Op::PublishEvent => events::publish(self, t, c).await,
            Op::GetEvent => events::get(self, t, id).await,
            Op::PayloadPreview => events::preview(c).await,
            Op::CreateApiKey => api_keys::create(self, t, c).await,
            Op::ListApiKeys => api_keys::list(self, t).await,
            Op::RevokeApiKey => api_keys::revoke(self, t, id).await,
            Op::CreatePortalSession => portal::create(self, t, c).await,
            Op::RevokePortalSessions => portal::revoke(self, t).await,
            Op::RemoveVenue => venues::remove(self, t).await,
            Op::EndpointStats => stats::get(self, t, id, c).await,
        }
    }
}

/// What a route does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    EventTypes,
    CreateEndpoint,
    ListEndpoints,
    GetEndpoint,
    UpdateEndpoint,
    DeleteEndpoint,
    RotateSecret,
    SendTest,
    ListDeliveries,
    Replay,
    GetReplay,
    GetDelivery,
    RetryDelivery,
    PublishEvent,
    GetEvent,
    PayloadPreview,
    CreateApiKey,
    ListApiKeys,
    RevokeApiKey,
    CreatePortalSession,
    RevokePortalSessions,
    RemoveVenue,
    EndpointStats,
}

impl Op {
    fn admin_only(self) -> bool {
        matches!(
            self,
            Op::CreateApiKey
                | Op::ListApiKeys
                | Op::RevokeApiKey
                | Op::CreatePortalSession
                | Op::RevokePortalSessions
                | Op::RemoveVenue
        )
    }
}

/// Every route the API serves. `docs/openapi.yaml` documents exactly these (a test checks it).
pub const ROUTES: &[(&str, &str, Op)] = &[
    ("GET", "/event-types", Op::EventTypes),
    ("POST", "/venues/{venue_id}/endpoints", Op::CreateEndpoint),
    ("GET", "/venues/{venue_id}/endpoints", Op::ListEndpoints),
    (
        "GET",
        "/venues/{venue_id}/endpoints/{endpoint_id}",
        Op::GetEndpoint,
    ),
    (
        "PATCH",
        "/venues/{venue_id}/endpoints/{endpoint_id}",
        Op::UpdateEndpoint,
    ),
    (
        "DELETE",
        "/venues/{venue_id}/endpoints/{endpoint_id}",
        Op::DeleteEndpoint,
    ),
    (
        "POST",
        "/venues/{venue_id}/endpoints/{endpoint_id}/rotate",
        Op::RotateSecret,
    ),
    (
        "POST",
        "/venues/{venue_id}/endpoints/{endpoint_id}/test",
        Op::SendTest,
    ),
    (
        "GET",
        "/venues/{venue_id}/endpoints/{endpoint_id}/deliveries",
        Op::ListDeliveries,
    ),
    (
        "POST",
        "/venues/{venue_id}/endpoints/{endpoint_id}/replay",
        Op::Replay,
    ),
    (
        "GET",
        "/venues/{venue_id}/endpoints/{endpoint_id}/replays/{replay_id}",
        Op::GetReplay,
    ),
    (
        "GET",
        "/venues/{venue_id}/endpoints/{endpoint_id}/stats",
        Op::EndpointStats,
    ),
    (
        "GET",
        "/venues/{venue_id}/deliveries/{delivery_id}",
        Op::GetDelivery,
    ),
    (
        "POST",
        "/venues/{venue_id}/deliveries/{delivery_id}/retry",
        Op::RetryDelivery,
    ),
    ("POST", "/venues/{venue_id}/events", Op::PublishEvent),
    ("GET", "/venues/{venue_id}/events/{event_id}", Op::GetEvent),
    (
        "POST",
        "/venues/{venue_id}/payload-preview",
        Op::PayloadPreview,
    ),
    ("POST", "/venues/{venue_id}/api-keys", Op::CreateApiKey),
    ("GET", "/venues/{venue_id}/api-keys", Op::ListApiKeys),
    (
        "DELETE",
        "/venues/{venue_id}/api-keys/{key_id}",
        Op::RevokeApiKey,
    ),
    (
        "POST",
        "/venues/{venue_id}/portal-sessions",
        Op::CreatePortalSession,
    ),
    (
        "DELETE",
        "/venues/{venue_id}/portal-sessions",
        Op::RevokePortalSessions,
    ),
    ("DELETE", "/venues/{venue_id}", Op::RemoveVenue),
    // The platform's operational endpoints (admin key): the same model as a venue's.
    ("POST", "/operational-endpoints", Op::CreateEndpoint),
    ("GET", "/operational-endpoints", Op::ListEndpoints),
    (
        "GET",
        "/operational-endpoints/{endpoint_id}",
        Op::GetEndpoint,
    ),
    (
        "PATCH",
        "/operational-endpoints/{endpoint_id}",
        Op::UpdateEndpoint,
    ),
    (
        "DELETE",
        "/operational-endpoints/{endpoint_id}",
        Op::DeleteEndpoint,
    ),
    (
        "POST",
        "/operational-endpoints/{endpoint_id}/rotate",
        Op::RotateSecret,
    ),
    (
        "POST",
        "/operational-endpoints/{endpoint_id}/test",
        Op::SendTest,
    ),
    (
        "GET",
        "/operational-endpoints/{endpoint_id}/deliveries",
        Op::ListDeliveries,
    ),
];

/// Where the operational endpoints' routes start.
const OPERATIONAL_PREFIX: &str = "/operational-endpoints";

/// Matches a request against [`ROUTES`]: the operation and the path's `{…}` values, in order.
/// A path served for other methods is a 405.
pub fn route<'p>(method: &Method, path: &'p str) -> Result<(Op, Vec<&'p str>), ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut path_known = false;
    for (route_method, pattern, op) in ROUTES {
        let parts: Vec<&str> = pattern.trim_matches('/').split('/').collect();
        if parts.len() != segments.len() {
            continue;
        }
        let mut params = Vec::new();
        let matched = parts.iter().zip(&segments).all(|(part, seg)| {
            if part.starts_with('{') {
                params.push(*seg);
                !seg.is_empty()
            } else {
                part == seg
            }
        });
        if !matched {
            continue;
        }
        if method.as_str() == *route_method {
            return Ok((*op, params));
        }
        path_known = true;
    }
    Err(if path_known {
        method_not_allowed(method)
    } else {
        no_route()
    })
}

fn method_not_allowed(method: &Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not supported on this path"),
    )
}

fn no_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        "no such route; see the API reference in the README",
    )
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let body = if status == StatusCode::NO_CONTENT {
        Body::Empty
    } else {
        Body::Text(body.to_string())
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Serialises a response view; views are plain data, so this cannot fail in practice.
pub fn to_json(value: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}

/// `?limit=` of list routes: 1 to 100, default 20.
pub fn page_limit(call: &Call<'_>) -> Result<usize, ApiError> {
    match call.param("limit") {
        None => Ok(20),
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                "limit",
                format!("`{raw}` is not a whole number from 1 to 100"),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_openapi_document_lists_exactly_the_routes_served() {
        let text = include_str!("../../../docs/openapi.yaml");
        let doc: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
        assert_eq!(doc["openapi"].as_str(), Some("3.1.0"));
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_mapping().unwrap() {
            for (method, _) in item.as_mapping().unwrap() {
                let method = method.as_str().unwrap();
                if ["get", "post", "patch", "put", "delete"].contains(&method) {
                    documented.insert((method.to_uppercase(), path.as_str().unwrap().to_owned()));
                }
            }
        }
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(documented, served);
    }

    #[test]
    fn every_route_resolves_to_its_operation() {
        for (method, pattern, op) in ROUTES {
            let path = pattern
                .replace("{venue_id}", "v1")
                .replace("{endpoint_id}", "ep_x")
                .replace("{delivery_id}", "dlv_x")
                .replace("{event_id}", "evt_x")
                .replace("{key_id}", "key_x");
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let (found, params) = route(&method, &path).unwrap();
            assert_eq!(found, *op, "{method} {path}");
            assert_eq!(params.len(), pattern.matches('{').count());
        }
        assert_eq!(
            route(&Method::GET, "/nowhere").unwrap_err().code,
            "route_not_found"
        );
        assert_eq!(
            route(&Method::PUT, "/venues/v1/endpoints")
                .unwrap_err()
                .code,
            "method_not_allowed"
        );
        assert_eq!(
            route(&Method::GET, "/venues//endpoints").unwrap_err().code,
            "route_not_found"
        );
    }
}
