//! A counting proxy in front of the local AWS endpoint: every request the functions make to
//! DynamoDB, SQS or KMS passes through it and is counted by operation (`x-amz-target`), so the
//! AWS requests per delivery are counted, not estimated.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Requests by operation, e.g. `DynamoDB_20120810.PutItem`, `AmazonSQS.SendMessageBatch`.
/// `AmazonSQS.ReceiveMessage` also counts as `AmazonSQS.ReceiveMessage(with messages)` when
/// the answer carried any.
#[derive(Clone, Default)]
pub struct Counts(Arc<Mutex<BTreeMap<String, u64>>>);

impl Counts {
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn reset(&self) {
        if let Ok(mut m) = self.0.lock() {
            m.clear();
        }
    }

    fn add(&self, op: &str) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(op.to_owned()).or_default() += 1;
        }
    }
}

/// Starts the proxy on a free loopback port; returns its URL and the counters.
pub async fn start(target: &str) -> std::io::Result<(String, Counts)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let counts = Counts::default();
    let target = target.trim_end_matches('/').to_owned();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let state = (counts.clone(), target, client);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (counts, target, client) = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (counts, target, client) = (counts.clone(), target.clone(), client.clone());
                    async move {
                        let op = req
                            .headers()
                            .get("x-amz-target")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("other")
                            .to_owned();
                        let (mut parts, body) = req.into_parts();
                        let body = body.collect().await?.to_bytes();
                        let path = parts
                            .uri
                            .path_and_query()
                            .map(|p| p.as_str())
                            .unwrap_or("/");
                        parts.uri = format!("{target}{path}").parse().unwrap_or(parts.uri);
                        counts.add(&op);
                        let forwarded = hyper::Request::from_parts(parts, Full::new(body));
                        let response = match client.request(forwarded).await {
                            Ok(r) => r,
                            Err(_) => {
                                let mut r = hyper::Response::new(Full::new(Bytes::new()));
                                *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                                return Ok::<_, hyper::Error>(r);
                            }
                        };
                        let (parts, body) = response.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        if op == "AmazonSQS.ReceiveMessage"
                            && body.windows(10).any(|w| w == b"\"Messages\"")
                        {
                            counts.add("AmazonSQS.ReceiveMessage(with messages)");
                        }
                        Ok(hyper::Response::from_parts(parts, Full::new(body)))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((url, counts))
}
