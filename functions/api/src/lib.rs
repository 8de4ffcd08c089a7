//! The API function: API Gateway (HTTP API) requests in, JSON out.
//!
//! [`Api::handle`] authenticates, routes, and turns every failure into the one error shape
//! (see [`error`]); the handlers in [`endpoints`], [`events`] and [`deliveries`] receive an
//! already-authorised [`Tenant`].

pub mod api_keys;
pub mod cursor;
pub mod auth;
pub mod deliveries;
pub mod endpoints;
pub mod error;
pub mod events;

use std::time::Instant;

use http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use serde::Serialize;
use shared::config::DestinationPolicy;
use shared::dispatch::Dispatcher;
use shared::http_client::{BuildError, DeliveryClient};
use shared::ingest::Publisher;
use shared::queue::Queues;
use shared::sealing::Sealer;
use shared::services::Services;
use shared::store::{Store, Tenant};

use crate::auth::Authenticator;

pub use error::ApiError;

pub type ApiResult = Result<(StatusCode, serde_json::Value), ApiError>;

#[derive(Clone)]
pub struct Api {
    store: Store,
    sealer: Sealer,
    queues: Queues,
    dispatcher: Dispatcher,
    publisher: Publisher,
    destinations: DestinationPolicy,
    auth: Authenticator,
    max_body_bytes: usize,
}

/// The request after routing: method, path segments, query and body.
pub struct Call<'a> {
    pub query: Vec<(String, String)>,
    pub body: &'a [u8],
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
        let http = DeliveryClient::new(config)?;
        Ok(Self {
            store: services.store.clone(),
            sealer: services.sealer.clone(),
            queues: services.queues.clone(),
            dispatcher: Dispatcher::new(services, http),
            publisher: Publisher::new(
                services.store.clone(),
                services.queues.clone(),
                config.limits.max_payload_bytes,
            ),
            destinations: config.destinations.clone(),
            auth: Authenticator::new(admin_key_sha256, services.store.clone()),
            // Room for the JSON around the largest accepted event.
            max_body_bytes: config.limits.max_payload_bytes + 16 * 1024,
        })
    }

    pub async fn handle(&self, request: Request) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let (status, body) = match self.dispatch(&request).await {
            Ok(ok) => ok,
            Err(e) => (e.status, e.body()),
        };
        tracing::info!(
            method = %method,
            path,
            status = status.as_u16(),
            duration_ms = started.elapsed().as_millis() as u64,
            "api request"
        );
        json_response(status, &body)
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
        };
        let segments: Vec<&str> = request.uri().path().trim_matches('/').split('/').collect();
        let method = request.method();
        match segments.as_slice() {
            ["event-types"] if method == Method::GET => {
                Ok((StatusCode::OK, to_json(shared::catalog::catalog())))
            }
            ["event-types"] => Err(method_not_allowed(method)),
            ["venues", venue, "api-keys", rest @ ..] => {
                caller.require_admin()?;
                let tenant = caller.tenant(venue)?;
                match (rest, method) {
                    ([], &Method::POST) => api_keys::create(self, &tenant, &call).await,
                    ([], &Method::GET) => api_keys::list(self, &tenant).await,
                    ([id], &Method::DELETE) => api_keys::revoke(self, &tenant, id).await,
                    ([] | [_], _) => Err(method_not_allowed(method)),
                    _ => Err(no_route()),
                }
            }
            ["venues", venue, rest @ ..] => {
                let tenant = caller.tenant(venue)?;
                self.venue_route(method, rest, &tenant, &call).await
            }
            _ => Err(no_route()),
        }
    }

    async fn venue_route(
        &self,
        method: &Method,
        rest: &[&str],
        tenant: &Tenant,
        call: &Call<'_>,
    ) -> ApiResult {
        match (rest, method) {
            (["endpoints"], &Method::POST) => endpoints::create(self, tenant, call).await,
            (["endpoints"], &Method::GET) => endpoints::list(self, tenant, call).await,
            (["endpoints", id], &Method::GET) => endpoints::get(self, tenant, id).await,
            (["endpoints", id], &Method::PATCH) => endpoints::update(self, tenant, id, call).await,
            (["endpoints", id], &Method::DELETE) => endpoints::delete(self, tenant, id).await,
            (["endpoints", id, "test"], &Method::POST) => {
                endpoints::send_test(self, tenant, id, call).await
            }
            (["endpoints", id, "rotate"], &Method::POST) => {
                endpoints::rotate(self, tenant, id, call).await
            }
            (["endpoints", id, "deliveries"], &Method::GET) => {
                deliveries::list(self, tenant, id, call).await
            }
            (["endpoints", id, "replay"], &Method::POST) => {
                deliveries::replay(self, tenant, id, call).await
            }
            (["deliveries", id], &Method::GET) => deliveries::get(self, tenant, id).await,
            (["deliveries", id, "retry"], &Method::POST) => {
                deliveries::retry(self, tenant, id).await
            }
            (["events"], &Method::POST) => events::publish(self, tenant, call).await,
            (["events", id], &Method::GET) => events::get(self, tenant, id).await,
            (
                ["endpoints"]
                | ["endpoints", _]
                | ["endpoints", _, "deliveries"]
                | ["endpoints", _, "replay"]
                | ["endpoints", _, "rotate"]
                | ["endpoints", _, "test"]
                | ["deliveries", _]
                | ["deliveries", _, "retry"]
                | ["events"]
                | ["events", _],
                _,
            ) => Err(method_not_allowed(method)),
            _ => Err(no_route()),
        }
    }
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
