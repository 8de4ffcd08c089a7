//! DynamoDB's capacity per partition key, which moto does not have: a proxy between the
//! functions and moto that meters every DynamoDB request per partition key of each table and
//! index, in read and write units, and answers `ProvisionedThroughputExceededException` (with
//! its throttling reason, as AWS does) when a key has spent its budget.
//!
//! The rules it applies (docs/FAULTS.md, "Capacity per key", says what it approximates):
//! - a write costs one unit per KB of the item, the larger of the item before and after for
//!   PutItem, UpdateItem and DeleteItem (a failed condition still costs the item's size);
//! - a read costs one unit per 4 KB, half for an eventually consistent read; GetItem and
//!   BatchGetItem per item (a missing item costs the minimum), Query over the sum of the items
//!   it read (filtered out or not);
//! - a write that changes what an index holds for the item costs the index a write per KB of
//!   its projection, charged to the index's partition key (a delete under the old key and a
//!   put under the new one when the key changes);
//! - each partition key of a table or index may spend `key_read` read units and `key_write`
//!   write units a second (AWS: 3,000 and 1,000), each table or index `table_read` and
//!   `table_write` (a new on-demand table: 12,000 and 4,000), with one second of burst;
//!   a request to a key (or table) whose second is spent is refused, and for a batch only its
//!   spent keys come back unprocessed.
//!
//! It also refuses, as SQS does, a message body with characters SQS does not allow (moto
//! takes them): `InvalidMessageContents` for a SendMessage, a failed entry of a batch.
//!
//! To know the item before a write and what each index holds, the meter keeps a shadow of
//! every item it saw written: its size and its index entries. After an UpdateItem it reads the
//! item back (a consistent GetItem of its own, not metered) to learn its new size.

mod ledger;
mod sqs;

pub use ledger::{item_size, Budgets, IndexKeys, KeyUsage, Ledger, Projected, TableKeys, Throttle};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

use crate::sigv4::{self, Keys};
use ledger::Plan;
use sqs::{sqs_characters, SqsCheck, SQS_INVALID_CHARACTERS};

/// An attribute value of the SDK as DynamoDB's wire JSON.
fn wire(value: &AttributeValue) -> Value {
    use base64::Engine as _;
    let b64 = |b: &aws_sdk_dynamodb::primitives::Blob| {
        base64::engine::general_purpose::STANDARD.encode(b.as_ref())
    };
    match value {
        AttributeValue::S(s) => json!({ "S": s }),
        AttributeValue::N(n) => json!({ "N": n }),
        AttributeValue::B(b) => json!({ "B": b64(b) }),
        AttributeValue::Bool(b) => json!({ "BOOL": b }),
        AttributeValue::Null(_) => json!({ "NULL": true }),
        AttributeValue::Ss(v) => json!({ "SS": v }),
        AttributeValue::Ns(v) => json!({ "NS": v }),
        AttributeValue::Bs(v) => json!({ "BS": v.iter().map(b64).collect::<Vec<_>>() }),
        AttributeValue::L(v) => json!({ "L": v.iter().map(wire).collect::<Vec<_>>() }),
        AttributeValue::M(m) => {
            json!({ "M": m.iter().map(|(k, v)| (k.clone(), wire(v))).collect::<Map<_, _>>() })
        }
        _ => Value::Null,
    }
}

/// A key in wire JSON as the SDK's attribute values (keys are strings, numbers or binary).
fn from_wire(key: &Map<String, Value>) -> HashMap<String, AttributeValue> {
    use base64::Engine as _;
    key.iter()
        .filter_map(|(name, v)| {
            let (kind, inner) = v.as_object()?.iter().next()?;
            let text = inner.as_str()?.to_owned();
            let value = match kind.as_str() {
                "S" => AttributeValue::S(text),
                "N" => AttributeValue::N(text),
                "B" => AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .ok()?,
                )),
                _ => return None,
            };
            Some((name.clone(), value))
        })
        .collect()
}

/// The meter: its URL is the AWS endpoint to give the functions.
#[derive(Clone)]
pub struct Meter {
    pub url: String,
    ledger: Arc<Mutex<Ledger>>,
}

struct Upstream {
    target: String,
    client: Client<HttpConnector, Full<Bytes>>,
    keys: Keys,
    /// Reads an item back after an UpdateItem (the operator's identity, not metered).
    direct: aws_sdk_dynamodb::Client,
}

impl Meter {
    /// Starts the meter on a free loopback port in front of `direct`'s endpoint. `keys` lets
    /// it sign again the batches it forwards in part.
    pub async fn start(
        direct: &aws_config::SdkConfig,
        tables: Vec<TableKeys>,
        budgets: Budgets,
        keys: Keys,
    ) -> std::io::Result<Self> {
        let target = direct
            .endpoint_url()
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let meter = Self {
            url: format!("http://{}", listener.local_addr()?),
            ledger: Arc::new(Mutex::new(Ledger::new(budgets, tables))),
        };
        let upstream = Arc::new(Upstream {
            target,
            client: Client::builder(TokioExecutor::new()).build_http(),
            keys,
            direct: aws_sdk_dynamodb::Client::new(direct),
        });
        let ledger = meter.ledger.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (ledger, upstream) = (ledger.clone(), upstream.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (ledger, upstream) = (ledger.clone(), upstream.clone());
                        async move { Ok::<_, hyper::Error>(serve(&ledger, &upstream, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(meter)
    }

    pub fn budgets(&self) -> Budgets {
        self.ledger
            .lock()
            .map(|l| l.budgets())
            .unwrap_or(Budgets::AWS)
    }

    /// Every partition key that spent anything, the busiest first.
    pub fn usage(&self) -> Vec<KeyUsage> {
        self.ledger.lock().map(|l| l.usage()).unwrap_or_default()
    }

    /// Requests (or batch entries) refused so far, over all keys.
    pub fn throttled(&self) -> u64 {
        self.usage().iter().map(|u| u.throttled).sum()
    }

    pub fn reset_usage(&self) {
        if let Ok(mut l) = self.ledger.lock() {
            l.reset_usage();
        }
    }
}

async fn serve(
    ledger: &Mutex<Ledger>,
    upstream: &Upstream,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let (mut parts, body) = req.into_parts();
    let Ok(mut body) = body.collect().await.map(|b| b.to_bytes()) else {
        return answer(502, &Value::Null);
    };
    let mut refused_entries = Vec::new();
    if target.starts_with("AmazonSQS.SendMessage") {
        match sqs_characters(&target, &body) {
            SqsCheck::Fine => {}
            SqsCheck::Refuse => {
                return answer(
                    400,
                    &json!({"__type": "com.amazonaws.sqs#InvalidMessageContents",
                            "message": SQS_INVALID_CHARACTERS}),
                )
            }
            SqsCheck::Entries { rest, failed } => {
                if rest["Entries"].as_array().is_none_or(Vec::is_empty) {
                    return answer(200, &json!({"Successful": [], "Failed": failed}));
                }
                body = Bytes::from(rest.to_string());
                if let Err(e) = sigv4::resign(&upstream.keys, &mut parts, &body) {
                    return answer(500, &json!({"__type": "MeterError", "message": e}));
                }
                refused_entries = failed;
            }
        }
    }
    let op = target
        .strip_prefix("DynamoDB_20120810.")
        .unwrap_or_default()
        .to_owned();
    let mut request: Value = if op.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    let plan = match ledger.lock() {
        Ok(mut l) if !op.is_empty() => l.plan(&op, &request, Instant::now()),
        _ => Plan::Forward,
    };
    let mut unprocessed = None;
    match plan {
        Plan::Forward => {}
        Plan::Refuse(throttle) => return refusal(&throttle),
        Plan::Partial {
            body: rest,
            unprocessed: refused,
        } => {
            body = Bytes::from(rest.to_string());
            request = rest;
            if let Err(e) = sigv4::resign(&upstream.keys, &mut parts, &body) {
                return answer(500, &json!({"__type": "MeterError", "message": e}));
            }
            unprocessed = Some(refused);
        }
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    parts.uri = format!("{}{path}", upstream.target)
        .parse()
        .unwrap_or(parts.uri);
    let Ok(response) = upstream
        .client
        .request(hyper::Request::from_parts(parts, Full::new(body)))
        .await
    else {
        return answer(502, &Value::Null);
    };
    let (mut parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if !refused_entries.is_empty() {
        return with_failed_entries(parts, &body, refused_entries);
    }
    if op.is_empty() {
        return hyper::Response::from_parts(parts, Full::new(body));
    }
    let status = parts.status.as_u16();
    let mut out: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let after = if op == "UpdateItem" && status == 200 {
        read_back(upstream, &request).await
    } else {
        None
    };
    if let Ok(mut l) = ledger.lock() {
        l.settle(&op, &request, status, &out, after.as_ref(), Instant::now());
    }
    let Some(refused) = unprocessed else {
        return hyper::Response::from_parts(parts, Full::new(body));
    };
    // The refused entries join what the service left unprocessed.
    let field = if op == "BatchGetItem" {
        "UnprocessedKeys"
    } else {
        "UnprocessedItems"
    };
    if !out[field].is_object() {
        out[field] = json!({});
    }
    for (table, entries) in refused.as_object().into_iter().flatten() {
        match (op.as_str(), out[field].get_mut(table)) {
            ("BatchGetItem", Some(existing)) => {
                let keys = entries["Keys"].as_array().cloned().unwrap_or_default();
                if let Some(list) = existing["Keys"].as_array_mut() {
                    list.extend(keys);
                }
            }
            (_, Some(existing)) => {
                if let (Some(list), Some(more)) = (existing.as_array_mut(), entries.as_array()) {
                    list.extend(more.iter().cloned());
                }
            }
            (_, None) => {
                out[field][table] = entries.clone();
            }
        }
    }
    let body = Bytes::from(out.to_string());
    parts.headers.remove("x-amz-crc32");
    parts.headers.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(body.len()),
    );
    hyper::Response::from_parts(parts, Full::new(body))
}

/// The item of an UpdateItem as it is now.
async fn read_back(upstream: &Upstream, request: &Value) -> Option<Map<String, Value>> {
    let table = request["TableName"].as_str()?;
    let key = from_wire(request["Key"].as_object()?);
    let item = upstream
        .direct
        .get_item()
        .table_name(table)
        .set_key(Some(key))
        .consistent_read(true)
        .send()
        .await
        .ok()?
        .item?;
    Some(item.iter().map(|(k, v)| (k.clone(), wire(v))).collect())
}

/// DynamoDB's answer to a request over its key's (or table's) budget.
fn refusal(throttle: &Throttle) -> hyper::Response<Full<Bytes>> {
    answer(
        400,
        &json!({
            "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
            "message": "The level of configured provisioned throughput for the table was exceeded. Consider increasing your provisioning level with the UpdateTable API.",
            "ThrottlingReasons": [{"reason": throttle.reason, "resource": throttle.resource_arn}],
        }),
    )
}

/// A SendMessageBatch answer with `failed` added to its `Failed` entries (the entries a
/// stand-in refused before forwarding the rest).
pub fn with_failed_entries(
    mut parts: http::response::Parts,
    body: &[u8],
    failed: Vec<Value>,
) -> hyper::Response<Full<Bytes>> {
    let mut out: Value = serde_json::from_slice(body).unwrap_or(json!({}));
    if !out["Failed"].is_array() {
        out["Failed"] = json!([]);
    }
    if let Some(list) = out["Failed"].as_array_mut() {
        list.extend(failed);
    }
    let body = Bytes::from(out.to_string());
    parts.headers.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(body.len()),
    );
    hyper::Response::from_parts(parts, Full::new(body))
}

/// An answer in AWS's JSON protocol (`application/x-amz-json-1.0`), as the local stand-ins
/// give it in AWS's place.
pub fn answer(status: u16, body: &Value) -> hyper::Response<Full<Bytes>> {
    let text = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let mut response = hyper::Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    response
}
