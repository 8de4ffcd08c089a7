//! The local stand-in for API Gateway: plain HTTP in, the api function's handler, HTTP out.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use api::Api;

/// Serves `api` on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, api: Arc<Api>, mut shutdown: watch::Receiver<bool>) {
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
                    let response = api.handle(http::Request::from_parts(parts, body)).await;
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
