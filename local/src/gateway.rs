//! The local stand-in for API Gateway: plain HTTP in, the api function's handler, HTTP out.
//! As on AWS, a request is given up at the integration's limit (30 s, or the function's
//! `Timeout` when shorter: Lambda stops it there) and answered `503`; a request is matched to
//! the template's routes (the most specific first) and each route keeps its own throttle, a
//! token bucket of its `ThrottlingRateLimit` and `ThrottlingBurstLimit` shared by all callers:
//! past it, `429 {"message":"Too Many Requests"}` without calling the function; a request no
//! route matches is `404 {"message":"Not Found"}`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use api::Api;

use crate::provision::HttpRoute;

/// API Gateway's integration timeout for an HTTP API.
pub const INTEGRATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The routes, each with its bucket.
pub struct Routes(Vec<(HttpRoute, Mutex<Bucket>)>);

pub struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What the gateway does with a request before any function sees it.
#[derive(Debug, PartialEq)]
pub enum Admission {
    Pass,
    Throttled,
    NoRoute,
}

impl Routes {
    /// No routes: every request passes (a template without `HttpApi` events).
    pub fn new(routes: Vec<HttpRoute>) -> Self {
        Self(
            routes
                .into_iter()
                .map(|r| {
                    let tokens = f64::from(r.burst.unwrap_or(u32::MAX));
                    (
                        r,
                        Mutex::new(Bucket {
                            tokens,
                            at: Instant::now(),
                        }),
                    )
                })
                .collect(),
        )
    }

    /// The route API Gateway would choose: a full match before a greedy (`{proxy+}`) one, more
    /// literal segments first, a method before `ANY`.
    fn matching(&self, method: &str, path: &str) -> Option<&(HttpRoute, Mutex<Bucket>)> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        self.0
            .iter()
            .filter(|(r, _)| r.method == "ANY" || r.method == method)
            .filter_map(|entry| {
                let pattern: Vec<&str> = entry.0.path.trim_start_matches('/').split('/').collect();
                let mut literal = 0;
                for (i, part) in pattern.iter().enumerate() {
                    if part.ends_with("+}") {
                        // Greedy: one segment or more.
                        return (segments.len() > i && !segments[i].is_empty())
                            .then_some((entry, false, literal));
                    }
                    let seg = segments.get(i)?;
                    if part.starts_with('{') {
                        if seg.is_empty() {
                            return None;
                        }
                    } else if part != seg {
                        return None;
                    } else {
                        literal += 1;
                    }
                }
                (pattern.len() == segments.len()).then_some((entry, true, literal))
            })
            .max_by_key(|(entry, full, literal)| (*full, *literal, entry.0.method != "ANY"))
            .map(|(entry, _, _)| entry)
    }

    pub fn admit(&self, method: &str, path: &str) -> Admission {
        if self.0.is_empty() {
            return Admission::Pass;
        }
        let Some((route, bucket)) = self.matching(method, path) else {
            return Admission::NoRoute;
        };
        let (Some(rate), Some(burst)) = (route.rate, route.burst) else {
            return Admission::Pass;
        };
        let mut bucket = bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        bucket.tokens =
            (bucket.tokens + rate * (now - bucket.at).as_secs_f64()).min(f64::from(burst));
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Admission::Pass
        } else {
            Admission::Throttled
        }
    }
}

fn gateway_answer(status: hyper::StatusCode, body: &'static [u8]) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::from_static(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Serves `api` on `listener` until `shutdown` turns true; each request is stopped after
/// `limit`.
pub async fn serve(
    listener: TcpListener,
    api: Arc<Api>,
    routes: Arc<Routes>,
    limit: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let (api, routes) = (api.clone(), routes.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let (api, routes) = (api.clone(), routes.clone());
                async move {
                    match routes.admit(request.method().as_str(), request.uri().path()) {
                        Admission::Pass => {}
                        Admission::Throttled => {
                            return Ok::<_, hyper::Error>(gateway_answer(
                                hyper::StatusCode::TOO_MANY_REQUESTS,
                                br#"{"message":"Too Many Requests"}"#,
                            ))
                        }
                        Admission::NoRoute => {
                            return Ok(gateway_answer(
                                hyper::StatusCode::NOT_FOUND,
                                br#"{"message":"Not Found"}"#,
                            ))
                        }
                    }
                    let (parts, body) = request.into_parts();
                    let bytes = body.collect().await?.to_bytes();
                    let body = if bytes.is_empty() {
                        lambda_http::Body::Empty
                    } else {
                        match String::from_utf8(bytes.to_vec()) {
                            Ok(text) => lambda_http::Body::Text(text),
                            Err(e) => lambda_http::Body::Binary(e.into_bytes()),
                        }
                    };
                    let deadline = std::time::Instant::now() + limit;
                    let handled = tokio::time::timeout(
                        limit,
                        shared::runtime::logging::with_request_id(
                            crate::esm::request_id(),
                            api.handle_until(http::Request::from_parts(parts, body), deadline),
                        ),
                    )
                    .await;
                    let Ok(response) = handled else {
                        tracing::warn!(
                            limit_s = limit.as_secs_f64(),
                            "the api function did not answer in time: 503"
                        );
                        return Ok::<_, hyper::Error>(gateway_answer(
                            hyper::StatusCode::SERVICE_UNAVAILABLE,
                            br#"{"message":"Service Unavailable"}"#,
                        ));
                    };
                    let (parts, body) = response.into_parts();
                    let bytes = Bytes::copy_from_slice(body.as_ref());
                    Ok::<_, hyper::Error>(hyper::Response::from_parts(parts, Full::new(bytes)))
                }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "connection closed with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: &str, path: &str, rate: f64) -> HttpRoute {
        HttpRoute {
            function: "ApiFunction".into(),
            method: method.into(),
            path: path.into(),
            rate: Some(rate),
            burst: Some(1),
        }
    }

    #[test]
    fn the_most_specific_route_is_chosen_and_each_keeps_its_own_bucket() {
        let routes = Routes::new(vec![
            route("ANY", "/{proxy+}", 0.0),
            route("POST", "/venues/{venue_id}/events", 0.0),
            route("GET", "/portal", 0.0),
            route("GET", "/portal/{proxy+}", 0.0),
        ]);
        let chosen = |method, path| routes.matching(method, path).map(|(r, _)| r.path.clone());
        assert_eq!(
            chosen("POST", "/venues/v1/events").as_deref(),
            Some("/venues/{venue_id}/events")
        );
        assert_eq!(
            chosen("GET", "/venues/v1/events").as_deref(),
            Some("/{proxy+}")
        );
        assert_eq!(
            chosen("POST", "/venues/v1/events/x").as_deref(),
            Some("/{proxy+}")
        );
        assert_eq!(chosen("GET", "/portal").as_deref(), Some("/portal"));
        assert_eq!(
            chosen("GET", "/portal/app.js").as_deref(),
            Some("/portal/{proxy+}")
        );
        assert_eq!(chosen("POST", "/portal").as_deref(), Some("/{proxy+}"));
        assert_eq!(chosen("GET", "/"), None);
        // A burst of one and no refill: each route's second request is throttled, alone.
        assert_eq!(routes.admit("GET", "/venues/v1/endpoints"), Admission::Pass);
        assert_eq!(
            routes.admit("GET", "/venues/v1/endpoints"),
            Admission::Throttled
        );
        assert_eq!(routes.admit("POST", "/venues/v1/events"), Admission::Pass);
        assert_eq!(
            routes.admit("POST", "/venues/v2/events"),
            Admission::Throttled
        );
        assert_eq!(routes.admit("GET", "/portal"), Admission::Pass);
        assert_eq!(routes.admit("GET", "/"), Admission::NoRoute);
    }
}
