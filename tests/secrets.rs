//! No secret, token or API key is stored in the clear or appears in a log line. This binary
//! captures every log line of the functions it runs (a process-wide subscriber), so it is a
//! test binary of its own.

use std::time::Duration;

use integration_tests::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_at_rest_and_never_logged() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_env_filter("info,shared=debug,api=debug,ingest=debug,deliver=debug,local=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let stack = start_stack().await;
    let admin = Client::new(&stack);
    let venue = format!("sec-{}", unique_prefix());
    let rx = Receiver::start(200).await;
    let signed = admin
        .create_endpoint(&venue, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    let own_token = "venue-pasted-token-5f2a9c";
    // A custom header's value is sealed like a secret, too.
    let header_value = "custom-header-value-7c1d0e";
    let bearer = admin
        .create_endpoint(
            &venue,
            json!({"url": rx.url, "event_types": ["*"],
                   "auth": {"mode": "bearer_token", "token": own_token},
                   "headers": {"X-Api-Key": header_value}}),
        )
        .await;
    assert_eq!(bearer["token"], own_token);
    assert_eq!(bearer["headers"], json!({"x-api-key": "…1d0e"}));
    let generated = admin
        .create_endpoint(
            &venue,
            json!({"url": rx.url, "event_types": ["*"],
                                         "auth": {"mode": "bearer_token"}}),
        )
        .await;
    let signed_id = signed["id"].as_str().unwrap();
    let (_, rotated) = admin
        .post(
            &format!("/venues/{venue}/endpoints/{signed_id}/rotate"),
            json!({}),
        )
        .await;
    let (_, key) = admin
        .post(&format!("/venues/{venue}/api-keys"), json!({}))
        .await;
    let api_key = key["key"].as_str().unwrap().to_owned();
    let mut as_venue = Client::new(&stack);
    as_venue.key = Some(api_key.clone());
    let (status, _) = as_venue
        .post(
            &format!("/venues/{venue}/events"),
            json!({"type": "order.created", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(status, 202);
    let (status, _) = as_venue
        .post(
            &format!("/venues/{venue}/endpoints/{signed_id}/test"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let got = rx.wait_for(4, Duration::from_secs(20)).await;
    assert!(
        got.iter()
            .any(|r| r.headers.get("x-api-key").map(String::as_str) == Some(header_value)),
        "the receiver gets the custom header"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let secrets: Vec<String> = vec![
        signed["secret"].as_str().unwrap().to_owned(),
        rotated["secret"].as_str().unwrap().to_owned(),
        own_token.to_owned(),
        header_value.to_owned(),
        generated["token"].as_str().unwrap().to_owned(),
        api_key.clone(),
        ADMIN_KEY.to_owned(),
    ];
    // Both with and without the `whsec_` prefix: the base64 body is the secret.
    let needles: Vec<String> = secrets
        .iter()
        .flat_map(|s| [s.clone(), s.trim_start_matches("whsec_").to_owned()])
        .collect();

    // At rest: every item of every table of this stack.
    let items = all_items(&stack).await;
    let scanned = items.len();
    for (logical, text) in &items {
        for needle in &needles {
            assert!(
                !text.contains(needle.as_str()),
                "{logical} stores a secret in the clear"
            );
        }
    }
    assert!(
        scanned >= 6,
        "the scan saw the endpoints, events, deliveries and key ({scanned})"
    );

    stack.stop().await;
    let text = logs.text();
    assert!(
        text.contains("delivery attempt") && text.contains("api key issued"),
        "logs were captured"
    );
    assert!(text.contains(signed_id), "logs carry the ids");
    for needle in &needles {
        assert!(
            !text.contains(needle.as_str()),
            "a log line carries a secret"
        );
    }
}
