//! The venue's Settings → Webhooks page in a real browser: `tests/browser/walk.py` (Playwright
//! driving Debian's Chromium) walks the Guide against the local stack with real receivers, and
//! this test checks what the receivers got with the secret and token copied from the page.
//! Screenshots of the main screens go to `.dev/portal/`; with `PORTAL_SCREENSHOTS=docs/portal`
//! they refresh the ones the README shows (a plain `make test` leaves the tree as it was).

use std::process::Command;
use std::time::Duration;

use integration_tests::*;
use serde_json::{json, Value};

async fn portal_link(admin: &Client, venue: &str, ttl: u64) -> String {
    let (status, minted) = admin
        .post(
            &format!("/venues/{venue}/portal-sessions"),
            json!({"ttl_seconds": ttl}),
        )
        .await;
    assert_eq!(status, 201, "{minted}");
    minted["url"].as_str().unwrap().to_owned()
}

/// The custom header the walk adds to the signed endpoint.
const HEADER_VALUE: &str = "portal-key-0123456789abcdef";

/// Deliveries to the busy endpoint: a page of 20 and a second page of 3.
const BUSY: usize = 23;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guide_walked_in_a_browser_delivers_what_the_page_promised() {
    let stack = start_stack().await;
    let admin = Client::new(&stack);
    let venue = format!("portal-{}", unique_prefix());
    let signed = Receiver::start(200).await;
    let bearer = Receiver::start(200).await;
    // An endpoint whose receiver is down until the walk "fixes" it (writes the heal file).
    let failing = Receiver::start(503).await;
    let (status, _) = admin
        .post(
            &format!("/venues/{venue}/endpoints"),
            json!({"url": failing.url, "event_types": ["registration.created"]}),
        )
        .await;
    assert_eq!(status, 201);
    // A busy endpoint: 23 deliveries, more than one page of history (20).
    let busy = Receiver::start(200).await;
    let (status, created) = admin
        .post(
            &format!("/venues/{venue}/endpoints"),
            json!({"url": busy.url, "event_types": ["order.created"]}),
        )
        .await;
    assert_eq!(status, 201);
    let busy_history = format!(
        "/venues/{venue}/endpoints/{}/deliveries?status=succeeded&limit=50",
        created["id"].as_str().unwrap()
    );
    for i in 0..BUSY {
        let (status, body) = admin
            .post(
                &format!("/venues/{venue}/events"),
                json!({"type": "order.created", "data": {"order_id": format!("o-{i}")}}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    assert_eq!(
        busy.wait_for(BUSY, Duration::from_secs(30)).await.len(),
        BUSY
    );
    let recorded = eventually(Duration::from_secs(10), || async {
        let (_, page) = admin.get(&busy_history).await;
        (page["data"].as_array().map(Vec::len) == Some(BUSY)).then_some(())
    })
    .await;
    assert!(
        recorded.is_some(),
        "the busy endpoint's {BUSY} deliveries are recorded"
    );
    let heal_file = std::env::temp_dir().join(format!("heal-{}", unique_prefix()));
    let healer = {
        let (failing, heal_file) = (failing.clone(), heal_file.clone());
        tokio::spawn(async move {
            // Watching for 5 minutes at most (the walk takes about one).
            for _ in 0..6000 {
                if heal_file.exists() {
                    failing.set_status(200);
                    // Tells the walk the receiver is back (it waits for this before Retry).
                    std::fs::write(heal_file.with_extension("done"), "").unwrap();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // An event published while the walk has the endpoint disabled (it writes the publish
    // file): kept for it, then delivered when the walk enables it.
    let publish_file = std::env::temp_dir().join(format!("publish-{}", unique_prefix()));
    let publisher = {
        let (admin, venue, publish_file) = (admin.clone(), venue.clone(), publish_file.clone());
        tokio::spawn(async move {
            for _ in 0..6000 {
                if publish_file.exists() {
                    let (status, body) = admin
                        .post(
                            &format!("/venues/{venue}/events"),
                            json!({"type": "registration.created", "data": {"kept": true}}),
                        )
                        .await;
                    assert_eq!(status, 202, "{body}");
                    std::fs::write(publish_file.with_extension("done"), "").unwrap();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let url = portal_link(&admin, &venue, 3600).await;
    let expired_url = portal_link(&admin, &venue, 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let root = repo_root();
    let shots =
        root.join(std::env::var("PORTAL_SCREENSHOTS").unwrap_or_else(|_| ".dev/portal".to_owned()));
    std::fs::create_dir_all(&shots).unwrap();
    let input = std::env::temp_dir().join(format!("walk-{}.json", unique_prefix()));
    std::fs::write(
        &input,
        json!({
            "url": url,
            "expired_url": expired_url,
            "signed_receiver": signed.url,
            "bearer_receiver": bearer.url,
            "failing_receiver": failing.url,
            "busy_receiver": busy.url,
            "heal_file": heal_file,
            "publish_file": publish_file,
            "own_token": "venue-own-token-0123456789",
            "header_value": HEADER_VALUE,
            "shots": shots,
        })
        .to_string(),
    )
    .unwrap();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(root.join(".venv/bin/python"))
            .arg(root.join("tests/browser/walk.py"))
            .arg(&input)
            .output()
            .expect("python runs (make test installs Playwright and Chromium)")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the walk failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let walked: Value = serde_json::from_slice(&output.stdout).unwrap();

    assert_eq!(walked["page_errors"], json!([]), "no script errors");
    // axe-core on every main screen: no serious or critical violation.
    let screens = walked["accessibility"].as_object().unwrap();
    assert!(screens.len() >= 8, "{screens:?}");
    for (screen, violations) in screens {
        assert_eq!(violations, &json!([]), "accessibility of {screen}");
    }
    assert_eq!(walked["token_left_the_address_bar"], true);
    // The secret copied from the page verifies the receiver's request (the page's Send test).
    let secret = walked["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"), "{walked}");
    assert_eq!(walked["secret_gone_after_closing"], true);
    // (The event the walk had published while an endpoint was disabled reaches this
    // receiver too, through the endpoint the walk created by keyboard: another secret.)
    let requests: Vec<_> = signed
        .wait_for(2, Duration::from_secs(10))
        .await
        .into_iter()
        .filter(|r| !r.body.contains("\"kept\":true"))
        .collect();
    assert!(requests.len() >= 2);
    // The custom header added on the page: refused when reserved, then sent, shown as a hint.
    assert!(!requests[0].headers.contains_key("x-api-key"));
    assert_eq!(requests[1].headers["x-api-key"], HEADER_VALUE);
    assert!(
        walked["header_error"]
            .as_str()
            .unwrap()
            .contains("`authorization` is reserved"),
        "{walked}"
    );
    assert!(walked["headers_shown"]
        .as_str()
        .unwrap()
        .contains("x-api-key: …cdef"));
    assert_eq!(walked["header_value_on_page"], false);
    let health = walked["health"].as_str().unwrap();
    assert!(
        health.contains("1 delivery, 1 attempt, 100% succeeded") && health.contains("p95"),
        "{health}"
    );
    let verdicts = verify_with_python(secret, &requests);
    assert!(
        verdicts.iter().all(|v| v == "ok"),
        "standardwebhooks verifies with the copied secret: {verdicts:?}"
    );
    assert!(walked["test_outcome"]
        .as_str()
        .unwrap()
        .contains("status 200"));
    assert!(walked["history_rows"].as_u64().unwrap() >= 1);
    // The generated bearer token copied from the page is what the receiver got.
    let token = walked["token"].as_str().unwrap();
    let got = bearer.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(
        got[0].headers.get("authorization").map(String::as_str),
        Some(format!("Bearer {token}").as_str())
    );
    // Rotate token: the new token shown once is what the next request carried.
    let rotated_token = walked["rotated_token"].as_str().unwrap();
    assert_ne!(rotated_token, token);
    let got = bearer.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(
        got[1].headers.get("authorization").map(String::as_str),
        Some(format!("Bearer {rotated_token}").as_str())
    );
    // And a token the venue pasted: shown once like a generated one, and sent as it is.
    assert_eq!(walked["pasted_token"], "venue-own-token-0123456789");
    assert_eq!(
        got[2].headers.get("authorization").map(String::as_str),
        Some("Bearer venue-own-token-0123456789")
    );
    // Paging: 20 newest first, then the other 3; Previous page shows the first page again, and
    // only the pages that have one offer Previous or Next.
    let pages = walked["pages"].as_array().unwrap();
    let rows = |i: usize| pages[i].as_array().unwrap().clone();
    assert_eq!((rows(0).len(), rows(1).len()), (20, BUSY - 20), "{pages:?}");
    assert_eq!(rows(2), rows(0));
    assert!(rows(0).iter().chain(rows(1).iter()).all(|r| r
        .as_str()
        .unwrap()
        .contains("order.created")
        && r.as_str().unwrap().contains("succeeded")));
    assert_eq!(
        (
            walked["previous_on_first_page"].as_u64(),
            walked["next_on_last_page"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert_eq!(walked["keyboard_created"], true);
    // A failure with its hint, in history; Retry once the receiver is back.
    let failure = walked["failure_outcome"].as_str().unwrap();
    assert!(failure.contains("status 503"), "{failure}");
    let attempt = walked["attempt_row"].as_str().unwrap();
    assert!(
        attempt.contains("503") && attempt.contains("http_5xx"),
        "{attempt}"
    );
    assert!(walked["retry_outcome"]
        .as_str()
        .unwrap()
        .contains("status 200"));
    let replay = walked["replay_outcome"].as_str().unwrap();
    assert!(replay.contains("1 of 1 queued"), "{replay}");
    assert_eq!(
        failing.received().len(),
        4,
        "the test send, the replay's attempt, the retry, then the event kept while disabled"
    );
    healer.abort();
    publisher.abort();
    // Rotated: a new secret, shown once.
    let rotated = walked["rotated_secret"].as_str().unwrap();
    assert!(rotated.starts_with("whsec_") && rotated != secret);
    // The preview is the exact body for the catalog example, data only.
    let preview: Value = serde_json::from_str(walked["preview"].as_str().unwrap()).unwrap();
    let example = shared::model::catalog::catalog().get("order.paid").unwrap();
    assert_eq!(preview, example.example);
    assert!(walked["format_shown"].as_str().unwrap().contains("data"));
    assert!(
        walked["template_error"]
            .as_str()
            .unwrap()
            .contains("template"),
        "{walked}"
    );
    let slack: Value = serde_json::from_str(walked["template_preview"].as_str().unwrap()).unwrap();
    assert_eq!(
        slack["text"],
        format!("Paid: {}", example.example["order_id"].as_str().unwrap())
    );
    let disabled = walked["disabled_text"].as_str().unwrap();
    assert!(
        disabled.contains("receives nothing") && disabled.contains("kept for it"),
        "{disabled}"
    );
    // The event sent while it was disabled: held in its history, then delivered once enabled.
    let held = walked["held_row"].as_str().unwrap();
    assert!(
        held.contains("pending") && held.contains("registration.created"),
        "{held}"
    );
    let delivered = walked["kept_delivered"].as_str().unwrap_or_default();
    assert!(
        delivered.contains("succeeded") && delivered.contains("registration.created"),
        "{walked}"
    );
    // A rate limit: 0 refused at its field, 5 shown.
    assert!(
        walked["rate_limit_error"]
            .as_str()
            .unwrap()
            .contains("requests a second"),
        "{walked}"
    );
    assert!(
        walked["format_shown"]
            .as_str()
            .unwrap()
            .contains("5 requests a second"),
        "{walked}"
    );
    assert_eq!(walked["deleted"], true);
    assert!(
        walked["url_error"].as_str().unwrap().contains("url"),
        "{walked}"
    );
    assert!(walked["expired_text"]
        .as_str()
        .unwrap()
        .contains("Open Webhooks from your dashboard again"));
    stack.stop().await;
}
