//! The functions' logs are what the README says: one JSON object per line, with the level, the
//! message, and the venue, endpoint, event and delivery ids as fields of their own. This binary
//! installs the functions' own subscriber (`shared::runtime::logging`) process-wide, writing to a
//! buffer, so it is a test binary of its own.

use std::time::Duration;

use integration_tests::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_is_a_json_object_with_the_ids_as_fields() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    shared::runtime::logging::subscriber(tracing::Level::INFO, move || writer.clone()).init();
    // Metric lines bypass the log (and its level): into the same buffer, as into stdout.
    let metrics = logs.clone();
    shared::runtime::logging::set_metric_sink(move |line| {
        use std::io::Write;
        let _ = writeln!(metrics.clone(), "{line}");
    });

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
    // And one the API refuses (no such field).
    let (status, _) = api
        .post(
            &format!("/venues/{venue}/events"),
            json!({"type": "order.created", "data": {}, "colour": "blue"}),
        )
        .await;
    assert_eq!(status, 422);
    ok.wait_for(1, Duration::from_secs(20)).await;
    failing.wait_for(1, Duration::from_secs(20)).await;
    // The attempt is recorded just after the receiver answered.
    let _recorded = eventually(Duration::from_secs(20), || async {
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
    // Metrics lines (EMF) are checked below; every other line is a log line.
    let (metrics, lines): (Vec<Value>, Vec<Value>) =
        lines.into_iter().partition(|l| l.get("_aws").is_some());
    for line in &lines {
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&line["level"].as_str().unwrap()),
            "{line}"
        );
        assert!(line["message"].is_string(), "{line}");
    }
    // The publish: the API's request line, with Lambda's request id.
    let published = lines
        .iter()
        .find(|l| l["message"] == "api request" && l["status"] == 202)
        .unwrap_or_else(|| panic!("no `api request` line for the publish:\n{text}"));
    assert_eq!(published["level"], "INFO");
    assert!(
        published["requestId"]
            .as_str()
            .is_some_and(|id| id.len() == 36),
        "{published}"
    );
    // A success is not a line of its own (the history holds it, with its delivery id)…
    assert!(
        !lines
            .iter()
            .any(|l| l["message"] == "delivery attempt" && l["endpoint_id"] == ep_id.as_str()),
        "a successful attempt was logged at INFO:\n{text}"
    );
    // …a failed attempt is, with the ids as fields.
    let failed = lines
        .iter()
        .find(|l| l["message"] == "delivery attempt" && l["status_code"] == 500)
        .unwrap_or_else(|| panic!("no failed attempt line:\n{text}"));
    assert_eq!(failed["level"], "INFO");
    assert_eq!(failed["error_class"], "http_5xx");
    assert_eq!(failed["event_id"], event_id.as_str());
    assert_eq!(failed["venue_id"], venue.as_str());
    assert!(
        failed["delivery_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{failed}"
    );
    // Each deliver invocation says what it did in one line: one success, one failure here.
    let summaries: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "deliver batch")
        .collect();
    let total = |field: &str| {
        summaries
            .iter()
            .filter_map(|l| l[field].as_u64())
            .sum::<u64>()
    };
    assert_eq!(
        (total("attempts_succeeded"), total("attempts_failed")),
        (1, 1),
        "{summaries:?}"
    );
    assert!(
        summaries.iter().all(|l| l["requestId"].is_string()),
        "{summaries:?}"
    );

    // The metrics (embedded metric format), against what happened: one event accepted and one
    // refused by the API; at the two endpoints, one attempt each: a success, and a 500 whose
    // delivery waits for a retry.
    for line in &metrics {
        let directive = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "PopupWebhooks", "{line}");
        assert!(line["_aws"]["Timestamp"].is_i64(), "{line}");
        for set in directive["Dimensions"].as_array().unwrap() {
            for key in set.as_array().unwrap() {
                assert!(
                    line[key.as_str().unwrap()].is_string(),
                    "dimension {key}: {line}"
                );
            }
        }
        for metric in directive["Metrics"].as_array().unwrap() {
            let value = &line[metric["Name"].as_str().unwrap()];
            assert!(
                value.is_u64()
                    || value
                        .as_array()
                        .is_some_and(|v| !v.is_empty() && v.len() <= 100),
                "{line}"
            );
        }
        // Series by function, outcome and error class only: never a venue or an endpoint.
        assert!(!line.to_string().contains(&venue), "{line}");
    }
    let sum = |function: &str, name: &str, filter: &dyn Fn(&Value) -> bool| -> u64 {
        metrics
            .iter()
            .filter(|l| l["Function"] == function && filter(l))
            .filter_map(|l| l[name].as_u64())
            .sum()
    };
    let values = |function: &str, name: &str| -> Vec<u64> {
        metrics
            .iter()
            .filter(|l| l["Function"] == function)
            .flat_map(|l| l[name].as_array().cloned().unwrap_or_default())
            .map(|v| v.as_u64().unwrap())
            .collect()
    };
    let attempts = |outcome: &str, class: &str| {
        sum("deliver", "Attempts", &|l| {
            l["Outcome"] == outcome && l["ErrorClass"] == class
        })
    };
    assert_eq!(
        attempts("succeeded", "none"),
        ok.received().len() as u64,
        "{metrics:#?}"
    );
    assert_eq!(
        attempts("failed", "http_5xx"),
        failing.received().len() as u64
    );
    assert_eq!(values("deliver", "AttemptDuration").len(), 2);
    assert_eq!(sum("api", "EventsAccepted", &|_| true), 1);
    assert_eq!(sum("api", "EventsRefused", &|_| true), 1);
    assert_eq!(
        sum("deliver", "RetriesScheduled", &|_| true),
        1,
        "the failed delivery's retry"
    );
    let delays = values("deliver", "PublishToFirstAttempt");
    assert_eq!(delays.len(), 2, "one first attempt per endpoint");
    assert!(delays.iter().all(|&ms| ms < 20_000), "{delays:?}");
}
