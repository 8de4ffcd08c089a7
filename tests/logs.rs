//! The functions' logs are what the README says: one JSON object per line, with the level, the
//! message, and the venue, endpoint, event and delivery ids as fields of their own. This binary
//! installs the functions' own subscriber (`shared::logging`) process-wide, writing to a
//! buffer, so it is a test binary of its own.

use std::time::Duration;

use integration_tests::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_is_a_json_object_with_the_ids_as_fields() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    shared::logging::subscriber(tracing::Level::INFO, move || writer.clone()).init();

    let stack = start_stack().await;
    let api = Client::new(&stack);
    let venue = format!("logs-{}", unique_prefix());
    let ok = Receiver::start(200).await;
    let failing = Receiver::start(500).await;
    let ep = api
        .create_endpoint(&venue, json!({"url": ok.url, "event_types": ["*"]}))
        .await;
    let ep_id = ep["id"].as_str().unwrap().to_owned();
    api.create_endpoint(&venue, json!({"url": failing.url, "event_types": ["*"]}))
        .await;
    let (status, published) = api
        .post(
            &format!("/venues/{venue}/events"),
            json!({"type": "order.created", "data": {"order_id": "o-1"}}),
        )
        .await;
    assert_eq!(status, 202, "{published}");
    let event_id = published["id"].as_str().unwrap().to_owned();
    ok.wait_for(1, Duration::from_secs(20)).await;
    failing.wait_for(1, Duration::from_secs(20)).await;
    // The attempt is recorded just after the receiver answered.
    let delivery_id = eventually(Duration::from_secs(20), || async {
        let (_, history) = api
            .get(&format!("/venues/{venue}/endpoints/{ep_id}/deliveries"))
            .await;
        history["data"][0]["id"].as_str().map(str::to_owned)
    })
    .await
    .expect("the delivery is recorded");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.stop().await;

    let text = logs.text();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "{text}");
    for line in &lines {
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&line["level"].as_str().unwrap()),
            "{line}"
        );
        assert!(line["message"].is_string(), "{line}");
    }
    let accepted = lines
        .iter()
        .find(|l| l["message"] == "event accepted" && l["event_id"] == event_id.as_str())
        .unwrap_or_else(|| panic!("no `event accepted` line for {event_id}:\n{text}"));
    assert_eq!(accepted["venue_id"], venue.as_str());
    assert_eq!(accepted["level"], "INFO");
    let attempt = lines
        .iter()
        .find(|l| l["message"] == "delivery attempt" && l["endpoint_id"] == ep_id.as_str())
        .unwrap_or_else(|| panic!("no `delivery attempt` line for {ep_id}:\n{text}"));
    assert_eq!(attempt["venue_id"], venue.as_str());
    assert_eq!(attempt["event_id"], event_id.as_str());
    assert_eq!(attempt["delivery_id"], delivery_id.as_str());
    assert_eq!(attempt["status_code"], 200);
    let failed = lines
        .iter()
        .find(|l| l["message"] == "delivery attempt" && l["status_code"] == 500)
        .unwrap_or_else(|| panic!("no failed attempt line:\n{text}"));
    assert_eq!(failed["error_class"], "http_5xx");
    assert_eq!(failed["event_id"], event_id.as_str());
}
