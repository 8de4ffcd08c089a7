//! The local stand-in for API Gateway: plain HTTP in, the api function's handler, HTTP out.
//! As on AWS, a request is given up at the integration's limit (30 s, or the function's
//! `Timeout` when shorter: Lambda stops it there) and answered `503`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use api::Api;

/// API Gateway's integration timeout for an HTTP API.
pub const INTEGRATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `api` on `listener` until `shutdown` turns true; each request is stopped after
/// `limit`.
pub async fn serve(
    listener: TcpListener,
    api: Arc<Api>,
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
        let api = api.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let api = api.clone();
                async move {
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
                        api.handle_until(http::Request::from_parts(parts, body), deadline),
                    )
                    .await;
                    let Ok(response) = handled else {
                        tracing::warn!(
                            limit_s = limit.as_secs_f64(),
                            "the api function did not answer in time: 503"
                        );
                        let mut unavailable = hyper::Response::new(Full::new(Bytes::from_static(
                            br#"{"message":"Service Unavailable"}"#,
                        )));
                        *unavailable.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                        unavailable.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        return Ok::<_, hyper::Error>(unavailable);
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
