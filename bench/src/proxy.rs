//! A counting proxy in front of the local AWS endpoint: every request the functions make to
//! DynamoDB, SQS or KMS passes through it and is counted by operation (`x-amz-target`), so the
//! AWS requests per delivery are counted, not estimated. Requests signed by the operator (the
//! bench itself, and the capacity meter's read-backs) are forwarded uncounted.

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
        self.add_n(op, 1);
    }

    fn add_n(&self, op: &str, n: u64) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(op.to_owned()).or_default() += n;
        }
    }
}

/// Key under which the proxy sums the read units of DynamoDB reads, in thousandths.
pub const READ_MILLI_UNITS: &str = "DynamoDB read units (thousandths)";

/// The read units DynamoDB charges for a GetItem, BatchGetItem or Query, from the request
/// (consistency) and the items in the answer: 4 KB per unit, half for eventually
/// consistent reads; per item for Get and BatchGet, over the sum of the items read for a Query.
pub fn read_milli_units(op: &str, request: &[u8], response: &[u8]) -> u64 {
    let (Ok(request), Ok(response)) = (
        serde_json::from_slice::<serde_json::Value>(request),
        serde_json::from_slice::<serde_json::Value>(response),
    ) else {
        return 0;
    };
    let factor = |consistent: &serde_json::Value| if consistent == true { 1000 } else { 500 };
    let units = |bytes: usize| bytes.div_ceil(4096).max(1) as u64;
    match op {
        "DynamoDB_20120810.GetItem" => {
            units(response.get("Item").map_or(0, item_size)) * factor(&request["ConsistentRead"])
        }
        "DynamoDB_20120810.Query" => {
            // A filtered Query is charged for every item it read (`ScannedCount`), returned
            // or not: those filtered out are taken as large as the average one returned (1 KB
            // when none was).
            let items = response["Items"].as_array().cloned().unwrap_or_default();
            let returned: usize = items.iter().map(item_size).sum();
            let scanned = response["ScannedCount"]
                .as_u64()
                .unwrap_or(items.len() as u64) as usize;
            let average = if items.is_empty() {
                1024
            } else {
                returned / items.len()
            };
            let read = returned + scanned.saturating_sub(items.len()) * average;
            units(read) * factor(&request["ConsistentRead"])
        }
        "DynamoDB_20120810.BatchGetItem" => response["Responses"]
            .as_object()
            .map(|tables| {
                tables
                    .iter()
                    .map(|(table, items)| {
                        let f = factor(&request["RequestItems"][table]["ConsistentRead"]);
                        items
                            .as_array()
                            .map(|items| items.iter().map(|i| units(item_size(i)) * f).sum())
                            .unwrap_or(0)
                    })
                    .sum()
            })
            .unwrap_or(0),
        _ => 0,
    }
}

/// The table (and index) a DynamoDB Query or GetItem reads, for the per-table counts
/// (`"{op} of {table}"`, `"read units (thousandths) of {table}"`), which no per-delivery
/// figure sums: they say where reads went.
fn read_place(op: &str, request: &[u8]) -> Option<String> {
    if op != "DynamoDB_20120810.Query" && op != "DynamoDB_20120810.GetItem" {
        return None;
    }
    let request: serde_json::Value = serde_json::from_slice(request).ok()?;
    let table = request["TableName"].as_str()?;
    Some(match request["IndexName"].as_str() {
        Some(index) => format!("{table}/{index}"),
        None => table.to_owned(),
    })
}

/// DynamoDB's size of an item in its wire JSON: names plus values (the capacity meter's rule).
fn item_size(item: &serde_json::Value) -> usize {
    item.as_object().map_or(0, local::capacity::item_size)
}

/// A proxy in front of `moto` with its counters, an AWS configuration whose requests pass it
/// (counted), and one that goes straight to moto (not counted).
pub async fn clients(
    moto: &str,
) -> std::io::Result<(Counts, aws_config::SdkConfig, aws_config::SdkConfig)> {
    let (proxy_url, counts) = start(moto).await?;
    let counted = aws_config::defaults(shared::storage::services::behavior_version())
        .endpoint_url(&proxy_url)
        .load()
        .await;
    let direct = aws_config::load_defaults(shared::storage::services::behavior_version()).await;
    Ok((counts, counted, direct))
}

/// Starts the proxy on a free loopback port; returns its URL and the counters.
pub async fn start(target: &str) -> std::io::Result<(String, Counts)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let counts = Counts::default();
    let target = target.trim_end_matches('/').to_owned();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let operator = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default();
    let state = (counts.clone(), target, client, operator);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (counts, target, client, operator) = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (counts, target, client) = (counts.clone(), target.clone(), client.clone());
                    let counted = local::sigv4::caller_of(req.headers()) != operator;
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
                        if counted {
                            counts.add(&op);
                        }
                        let request_body = body.clone();
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
                        let read = read_milli_units(&op, &request_body, &body);
                        if !counted {
                            return Ok(hyper::Response::from_parts(parts, Full::new(body)));
                        }
                        if read > 0 {
                            counts.add_n(READ_MILLI_UNITS, read);
                        }
                        if let Some(place) = read_place(&op, &request_body) {
                            counts.add(&format!("{op} of {place}"));
                            counts.add_n(&format!("read units (thousandths) of {place}"), read);
                        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_units_follow_dynamodb_rules() {
        let item = r#"{"pk":{"S":"abc"},"n":{"N":"12345"}}"#;
        let get = format!(r#"{{"Item":{item}}}"#);
        // Under 4 KB: half a unit eventually consistent, one unit consistent.
        assert_eq!(
            read_milli_units("DynamoDB_20120810.GetItem", b"{}", get.as_bytes()),
            500
        );
        assert_eq!(
            read_milli_units(
                "DynamoDB_20120810.GetItem",
                br#"{"ConsistentRead":true}"#,
                get.as_bytes()
            ),
            1000
        );
        // BatchGetItem: per item, with each table's consistency.
        let batch = format!(r#"{{"Responses":{{"t":[{item},{item}],"u":[{item}]}}}}"#);
        let request = br#"{"RequestItems":{"t":{"ConsistentRead":true},"u":{}}}"#;
        assert_eq!(
            read_milli_units("DynamoDB_20120810.BatchGetItem", request, batch.as_bytes()),
            2500
        );
        // Query: over the sum of the items read, 4 KB per unit.
        let big = format!(r#"{{"x":{{"S":"{}"}}}}"#, "a".repeat(3000));
        let query = format!(r#"{{"Items":[{big},{big}]}}"#);
        assert_eq!(
            read_milli_units("DynamoDB_20120810.Query", b"{}", query.as_bytes()),
            1000
        );
        assert_eq!(
            read_milli_units("DynamoDB_20120810.PutItem", b"{}", b"{}"),
            0
        );
    }
}
