//! A fault-injecting proxy in front of the local AWS endpoint (moto): it forwards every request
//! and, while a fault is armed for an operation, answers the way AWS does when it is harsher
//! than moto: BatchGetItem with every key unprocessed, writes throttled, one entry of a
//! SendMessageBatch failed, a stale (empty) answer to an eventually consistent read, a
//! service unavailable, a write done whose answer is lost. Loopback only; every fault ends by itself (a deadline).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use local::sigv4::{self, caller_of, Keys};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// What the proxy does to a matching request instead of (or besides) forwarding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `BatchGetItem`: nothing read, every key returned in `UnprocessedKeys`.
    Unprocessed,
    /// DynamoDB: `400 ProvisionedThroughputExceededException`; SQS: `400 RequestThrottled`.
    Throttled,
    /// `SendMessageBatch`: the first entry is not sent and comes back in `Failed`; the rest
    /// are sent (the request is re-signed with the caller's key).
    FailOneEntry,
    /// A read that is not strongly consistent (`GetItem`, `BatchGetItem`) finds nothing, as
    /// a stale replica would; a consistent read is forwarded.
    StaleRead,
    /// `503` (the service is down for the caller).
    Unavailable,
    /// Forwarded after this long (a slow call: throttled retries inside AWS, a far region).
    Slow(Duration),
    /// Forwarded and done, but answered `500 InternalServerError` (the answer lost on the
    /// way back): the caller retries a write that already landed.
    AnswerLost,
}

#[derive(Clone, Debug)]
struct Rule {
    /// Matched against the end of `x-amz-target` (`PutItem`) or its start (`AmazonSQS.`).
    op: String,
    fault: Fault,
    until: Instant,
    /// Only requests signed with this access key (one function's); `None`: everyone's.
    caller: Option<String>,
    /// Only requests whose body contains this text (a key, a table); `None`: every body.
    needle: Option<String>,
    /// Applied this many more times at most; `None`: until `until`.
    remaining: Option<usize>,
}

impl Rule {
    fn matches(&self, target: &str, caller: &str, body: &[u8]) -> bool {
        (target.ends_with(&format!(".{}", self.op)) || target.starts_with(&self.op))
            && Instant::now() < self.until
            && self.caller.as_deref().is_none_or(|c| c == caller)
            && self.needle.as_deref().is_none_or(|needle| {
                body.windows(needle.len().max(1))
                    .any(|w| w == needle.as_bytes())
            })
    }
}

/// The proxy: its URL is the AWS endpoint to give the functions.
#[derive(Clone)]
pub struct FaultProxy {
    pub url: String,
    rules: Arc<Mutex<Vec<Rule>>>,
    /// Secret keys by access key id, to re-sign a request whose body the proxy changed.
    keys: Keys,
    /// Faults applied so far, by operation and fault.
    applied: Arc<Mutex<HashMap<String, usize>>>,
}

impl FaultProxy {
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy = FaultProxy {
            url: format!("http://{}", listener.local_addr().expect("addr")),
            rules: Arc::default(),
            keys: Keys::of([]),
            applied: Arc::default(),
        };
        let target = target.trim_end_matches('/').to_owned();
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let handle = proxy.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (handle, target, client) = (handle.clone(), target.clone(), client.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (handle, target, client) =
                            (handle.clone(), target.clone(), client.clone());
                        async move { Ok::<_, hyper::Error>(handle.serve(req, &target, &client).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        proxy
    }

    /// Lets the proxy re-sign requests of this key (the functions' identities).
    pub fn trust(&self, access_key_id: &str, secret: &str) {
        self.keys.trust(access_key_id, secret);
    }

    /// Every identity of a stack.
    pub fn trust_stack(&self, stack: &local::Stack) {
        for identity in stack.provisioned.identities.values() {
            self.trust(&identity.access_key_id, &identity.secret_access_key);
        }
    }

    /// Arms `fault` for operation `op` (`BatchGetItem`, `PutItem`, `AmazonSQS.`…) for `time`.
    pub fn inject(&self, op: &str, fault: Fault, time: Duration) {
        self.rules.lock().unwrap().push(Rule {
            op: op.to_owned(),
            fault,
            until: Instant::now() + time,
            caller: None,
            needle: None,
            remaining: None,
        });
    }

    /// As [`FaultProxy::inject`], for the requests whose body contains `needle` only (the
    /// writes of one partition key, say).
    pub fn inject_matching(&self, op: &str, needle: &str, fault: Fault, time: Duration) {
        self.rules.lock().unwrap().push(Rule {
            op: op.to_owned(),
            fault,
            until: Instant::now() + time,
            caller: None,
            needle: Some(needle.to_owned()),
            remaining: None,
        });
    }

    /// As [`FaultProxy::inject_matching`], applied to the next `times` matching requests only
    /// (within a minute).
    pub fn inject_times(&self, op: &str, needle: &str, fault: Fault, times: usize) {
        self.rules.lock().unwrap().push(Rule {
            op: op.to_owned(),
            fault,
            until: Instant::now() + Duration::from_secs(60),
            caller: None,
            needle: Some(needle.to_owned()),
            remaining: Some(times),
        });
    }

    /// As [`FaultProxy::inject`], for the requests of one identity only (a function's).
    pub fn inject_for(
        &self,
        identity: &local::iam::Identity,
        op: &str,
        fault: Fault,
        time: Duration,
    ) {
        self.rules.lock().unwrap().push(Rule {
            op: op.to_owned(),
            fault,
            until: Instant::now() + time,
            caller: Some(identity.access_key_id.clone()),
            needle: None,
            remaining: None,
        });
    }

    /// How often each fault was applied (`"BatchGetItem Unprocessed"` → n).
    pub fn applied(&self) -> HashMap<String, usize> {
        self.applied.lock().unwrap().clone()
    }

    fn armed(&self, target: &str, caller: &str, (raw, body): (&[u8], &Value)) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap();
        let rule = rules.iter_mut().find(|r| {
            r.matches(target, caller, raw)
                && r.remaining != Some(0)
                && (r.fault != Fault::StaleRead || !consistent(target, body))
                && (r.fault != Fault::Unprocessed || target.ends_with(".BatchGetItem"))
                && (r.fault != Fault::FailOneEntry || target.ends_with(".SendMessageBatch"))
        })?;
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
        }
        let fault = rule.fault;
        drop(rules);
        let op = target.rsplit('.').next().unwrap_or(target);
        *self
            .applied
            .lock()
            .unwrap()
            .entry(format!("{op} {fault:?}"))
            .or_default() += 1;
        Some(fault)
    }

    async fn serve(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
        target: &str,
        client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    ) -> hyper::Response<Full<Bytes>> {
        let op = req
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let (mut parts, body) = req.into_parts();
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            return answer(502, Value::Null);
        };
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let dynamodb = op.starts_with("DynamoDB");
        let mut body = body;
        let mut failed_entry = None;
        let mut lost = false;
        match self.armed(&op, &caller_of(&parts.headers), (&body, &json)) {
            None => {}
            Some(Fault::Unprocessed) => {
                let items = json["RequestItems"].clone();
                let empty: serde_json::Map<String, Value> = items
                    .as_object()
                    .map(|m| m.keys().map(|k| (k.clone(), json!([]))).collect())
                    .unwrap_or_default();
                return answer(200, json!({"Responses": empty, "UnprocessedKeys": items}));
            }
            Some(Fault::Throttled) if dynamodb => {
                return answer(
                    400,
                    json!({"__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                           "message": "The level of configured provisioned throughput for the table was exceeded."}),
                );
            }
            Some(Fault::Throttled) => {
                return answer(
                    400,
                    json!({"__type": "com.amazonaws.sqs#RequestThrottled", "message": "Request is throttled."}),
                );
            }
            Some(Fault::Unavailable) => {
                return answer(
                    503,
                    json!({"__type": "ServiceUnavailable", "message": "Service is unavailable."}),
                );
            }
            Some(Fault::Slow(delay)) => tokio::time::sleep(delay).await,
            Some(Fault::AnswerLost) => lost = true,
            Some(Fault::StaleRead) if op.ends_with(".GetItem") => return answer(200, json!({})),
            Some(Fault::StaleRead) => {
                let empty: serde_json::Map<String, Value> = json["RequestItems"]
                    .as_object()
                    .map(|m| m.keys().map(|k| (k.clone(), json!([]))).collect())
                    .unwrap_or_default();
                return answer(200, json!({"Responses": empty, "UnprocessedKeys": {}}));
            }
            Some(Fault::FailOneEntry) => {
                let mut rest = json.clone();
                let entries = rest["Entries"].as_array_mut().map(std::mem::take);
                let mut entries = entries.unwrap_or_default();
                if entries.is_empty() {
                    return answer(
                        400,
                        json!({"__type": "EmptyBatchRequest", "message": "empty"}),
                    );
                }
                let first = entries.remove(0);
                failed_entry = Some(json!({"Id": first["Id"], "SenderFault": false,
                    "Code": "InternalError", "Message": "injected: this entry was not sent"}));
                if entries.is_empty() {
                    return answer(200, json!({"Successful": [], "Failed": [failed_entry]}));
                }
                rest["Entries"] = Value::Array(entries);
                body = Bytes::from(rest.to_string());
                if let Err(e) = sigv4::resign(&self.keys, &mut parts, &body) {
                    return answer(500, json!({"__type": "ProxyError", "message": e}));
                }
            }
        }
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        parts.uri = format!("{target}{path}").parse().unwrap_or(parts.uri);
        let forwarded = hyper::Request::from_parts(parts, Full::new(body));
        let Ok(response) = client.request(forwarded).await else {
            return answer(502, Value::Null);
        };
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if lost {
            return answer(
                500,
                json!({"__type": "com.amazonaws.dynamodb.v20120810#InternalServerError",
                       "message": "Internal server error"}),
            );
        }
        let Some(failed) = failed_entry else {
            return hyper::Response::from_parts(parts, Full::new(body));
        };
        local::capacity::with_failed_entries(parts, &body, vec![failed])
    }
}

/// A strongly consistent read (or not a read at all).
fn consistent(target: &str, body: &Value) -> bool {
    if target.ends_with(".GetItem") {
        return body["ConsistentRead"] == true;
    }
    if target.ends_with(".BatchGetItem") {
        return body["RequestItems"]
            .as_object()
            .is_some_and(|m| m.values().all(|t| t["ConsistentRead"] == true));
    }
    true
}

fn answer(status: u16, body: Value) -> hyper::Response<Full<Bytes>> {
    local::capacity::answer(status, &body)
}
