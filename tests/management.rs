//! Settings → Webhooks: venue keys and isolation, rotation with grace, send test.

use std::time::Duration;

use integration_tests::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

fn venue(tag: &str) -> String {
    format!("{tag}-{}", unique_prefix())
}

async fn issue_key(admin: &Client, venue: &str) -> String {
    let (status, created) = admin
        .post(
            &format!("/venues/{venue}/api-keys"),
            json!({"description": "CRM sync"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    created["key"].as_str().expect("key shown once").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_venue_key_reaches_only_its_own_venue() {
    let stack = start_stack().await;
    let admin = Client::new(&stack);
    let (a, b) = (venue("a"), venue("b"));
    let rx = Receiver::start(200).await;

    // Venue A: an endpoint, an event, a delivery.
    let ep = admin
        .create_endpoint(&a, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    let ep_id = ep["id"].as_str().unwrap().to_owned();
    let (_, event) = admin
        .post(
            &format!("/venues/{a}/events"),
            json!({"type": "order.created", "data": {}}),
        )
        .await;
    let event_id = event["id"].as_str().unwrap().to_owned();
    let delivery_id = eventually(WAIT, || async {
        let (_, page) = admin
            .get(&format!("/venues/{a}/endpoints/{ep_id}/deliveries"))
            .await;
        page["data"][0]["id"].as_str().map(str::to_owned)
    })
    .await
    .expect("a delivery");

    // Venue B's key, used on every venue route of A: 404, never A's data.
    let key_b = issue_key(&admin, &b).await;
    let mut as_b = Client::new(&stack);
    as_b.key = Some(key_b.clone());
    let routes: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", format!("/venues/{a}/endpoints"), None),
        (
            "POST",
            format!("/venues/{a}/endpoints"),
            Some(json!({"url": rx.url, "event_types": ["*"]})),
        ),
        ("GET", format!("/venues/{a}/endpoints/{ep_id}"), None),
        (
            "PATCH",
            format!("/venues/{a}/endpoints/{ep_id}"),
            Some(json!({"enabled": false})),
        ),
        ("DELETE", format!("/venues/{a}/endpoints/{ep_id}"), None),
        (
            "POST",
            format!("/venues/{a}/endpoints/{ep_id}/rotate"),
            Some(json!({})),
        ),
        (
            "POST",
            format!("/venues/{a}/endpoints/{ep_id}/test"),
            Some(json!({})),
        ),
        (
            "GET",
            format!("/venues/{a}/endpoints/{ep_id}/deliveries"),
            None,
        ),
        (
            "POST",
            format!("/venues/{a}/endpoints/{ep_id}/replay"),
            Some(json!({"since": "2026-11-01T00:00:00Z"})),
        ),
        ("GET", format!("/venues/{a}/deliveries/{delivery_id}"), None),
        (
            "POST",
            format!("/venues/{a}/deliveries/{delivery_id}/retry"),
            Some(json!({})),
        ),
        (
            "POST",
            format!("/venues/{a}/events"),
            Some(json!({"type": "order.created", "data": {}})),
        ),
        ("GET", format!("/venues/{a}/events/{event_id}"), None),
        // A's ids through B's own venue.
        ("GET", format!("/venues/{b}/endpoints/{ep_id}"), None),
        (
            "GET",
            format!("/venues/{b}/endpoints/{ep_id}/deliveries"),
            None,
        ),
        ("GET", format!("/venues/{b}/deliveries/{delivery_id}"), None),
        (
            "POST",
            format!("/venues/{b}/deliveries/{delivery_id}/retry"),
            Some(json!({})),
        ),
        ("GET", format!("/venues/{b}/events/{event_id}"), None),
        (
            "PATCH",
            format!("/venues/{b}/endpoints/{ep_id}"),
            Some(json!({"enabled": false})),
        ),
        ("DELETE", format!("/venues/{b}/endpoints/{ep_id}"), None),
    ];
    for (method, path, body) in &routes {
        let body = body.as_ref().map(|b| b.to_string().into_bytes());
        let (status, answer) = as_b.send_raw(method, path, body).await;
        assert_eq!(
            status, 404,
            "{method} {path} with another venue's key: {answer}"
        );
        assert!(
            !answer.to_string().contains(&ep_id) || path.contains(&ep_id),
            "{answer}"
        );
        assert_eq!(answer["error"]["code"], "not_found");
    }
    // Nothing of A changed, and A's receiver got only A's one event.
    let (_, still) = admin.get(&format!("/venues/{a}/endpoints/{ep_id}")).await;
    assert_eq!(still["enabled"], true);
    assert_eq!(still["auth"]["secret_hint"], ep["auth"]["secret_hint"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rx.received().len(), 1);

    // B's key works on B, and its lists hold nothing of A.
    let (status, own) = as_b.get(&format!("/venues/{b}/endpoints")).await;
    assert_eq!((status, own["data"].clone()), (200, json!([])));
    let created = as_b
        .create_endpoint(&b, json!({"url": rx.url, "event_types": ["order.*"]}))
        .await;
    assert_eq!(created["venue_id"], b.as_str());

    // Key management is the admin's: a venue key gets 403, even on its own venue.
    for (method, path) in [
        ("GET", format!("/venues/{b}/api-keys")),
        ("POST", format!("/venues/{b}/api-keys")),
        (
            "DELETE",
            format!("/venues/{b}/api-keys/key_01KB0000000000000000000000"),
        ),
    ] {
        let (status, _) = as_b.send_raw(method, &path, None).await;
        assert_eq!(status, 403, "{method} {path}");
    }

    // The admin sees B's key as a hint with its last use; revoking it is immediate.
    let (status, keys) = admin.get(&format!("/venues/{b}/api-keys")).await;
    assert_eq!(status, 200);
    let listed = &keys["data"][0];
    assert!(listed["hint"].as_str().unwrap().starts_with('…'));
    assert!(listed["last_used_at"].is_string(), "{listed}");
    assert!(!keys.to_string().contains(&key_b));
    let key_id = listed["id"].as_str().unwrap();
    let (status, _) = admin
        .delete(&format!("/venues/{b}/api-keys/{key_id}"))
        .await;
    assert_eq!(status, 204);
    let (status, answer) = as_b.get(&format!("/venues/{b}/endpoints")).await;
    assert_eq!(status, 401, "{answer}");
    // Revoking through another venue's path does nothing.
    let key_c = issue_key(&admin, &b).await;
    let (_, keys) = admin.get(&format!("/venues/{b}/api-keys")).await;
    let c_id = keys["data"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        admin
            .delete(&format!("/venues/{a}/api-keys/{c_id}"))
            .await
            .0,
        404
    );
    as_b.key = Some(key_c);
    assert_eq!(as_b.get(&format!("/venues/{b}/endpoints")).await.0, 200);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_signs_with_old_and_new_secrets_during_the_grace_only() {
    let stack = start_stack().await;
    let api = Client::new(&stack);
    let v = venue("rot");
    let rx = Receiver::start(200).await;
    let ep = api
        .create_endpoint(&v, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    let id = ep["id"].as_str().unwrap();
    let old = ep["secret"].as_str().unwrap().to_owned();
    let path = format!("/venues/{v}/endpoints/{id}/rotate");

    let (status, bad) = api
        .post(&path, json!({"grace_period_seconds": 604801}))
        .await;
    assert_eq!(status, 422, "{bad}");
    let (status, rotated) = api.post(&path, json!({"grace_period_seconds": 3})).await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(
        rotated["auth"]["secret_hint"],
        format!("whsec_…{}", &new[new.len() - 4..])
    );
    let (_, read) = api.get(&format!("/venues/{v}/endpoints/{id}")).await;
    assert!(read.get("secret").is_none());

    let publish = || async {
        let (status, _) = api
            .post(
                &format!("/venues/{v}/events"),
                json!({"type": "order.created", "data": {}}),
            )
            .await;
        assert_eq!(status, 202);
    };
    publish().await;
    let during = rx.wait_for(1, WAIT).await;
    assert_eq!(
        during[0].headers["webhook-signature"].split(' ').count(),
        2,
        "new and old, newest first"
    );
    assert_eq!(verify_with_python(&new, &during), vec!["ok"]);
    assert_eq!(
        verify_with_python(&old, &during),
        vec!["ok"],
        "the old secret verifies during the grace"
    );
    assert_eq!(verify_with_node(&old, &during), vec!["ok"]);

    tokio::time::sleep(Duration::from_secs(4)).await;
    publish().await;
    let after = rx.wait_for(2, WAIT).await;
    let last = &after[1..];
    assert_eq!(last[0].headers["webhook-signature"].split(' ').count(), 1);
    assert_eq!(verify_with_python(&new, last), vec!["ok"]);
    assert!(
        verify_with_python(&old, last)[0].starts_with("fail"),
        "the old secret fails after the grace"
    );
    assert!(verify_with_node(&old, last)[0].starts_with("fail"));

    // A bearer endpoint's token is replaced at once, and may be the venue's own.
    let bearer_rx = Receiver::start(200).await;
    let bearer = api
        .create_endpoint(
            &v,
            json!({"url": bearer_rx.url, "event_types": ["lead.*"],
                                    "auth": {"mode": "bearer_token"}}),
        )
        .await;
    let bid = bearer["id"].as_str().unwrap();
    let own = "a-brand-new-token-of-the-venue";
    let (status, rotated) = api
        .post(
            &format!("/venues/{v}/endpoints/{bid}/rotate"),
            json!({"token": own}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["token"], own);
    api.post(
        &format!("/venues/{v}/events"),
        json!({"type": "lead.created", "data": {}}),
    )
    .await;
    let got = bearer_rx.wait_for(1, WAIT).await;
    assert_eq!(got[0].headers["authorization"], format!("Bearer {own}"));

    // Rotating a deleted endpoint is a 404.
    assert_eq!(
        api.delete(&format!("/venues/{v}/endpoints/{bid}")).await.0,
        204
    );
    let (status, _) = api
        .post(&format!("/venues/{v}/endpoints/{bid}/rotate"), json!({}))
        .await;
    assert_eq!(status, 404);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_test_reports_the_outcome_and_shows_in_history() {
    let stack = start_stack().await;
    let api = Client::new(&stack);
    let v = venue("test");

    let (status, catalog) = api.get("/event-types").await;
    assert_eq!(status, 200);
    assert!(catalog["version"].is_string());
    let types = catalog["event_types"].as_array().unwrap();
    let order = types
        .iter()
        .find(|t| t["type"] == "order.created")
        .expect("order.created");
    assert!(order["description"].is_string() && order["example"].is_object());

    // Subscriptions must name the catalog.
    let rx = Receiver::start(200).await;
    for bad in [json!(["order.exploded"]), json!(["nothing.*"])] {
        let (status, answer) = api
            .post(
                &format!("/venues/{v}/endpoints"),
                json!({"url": rx.url, "event_types": bad}),
            )
            .await;
        assert_eq!(status, 422, "{answer}");
        assert!(answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("catalog"));
    }

    let ep = api
        .create_endpoint(&v, json!({"url": rx.url, "event_types": ["order.*"]}))
        .await;
    let id = ep["id"].as_str().unwrap();
    let secret = ep["secret"].as_str().unwrap();
    let (status, outcome) = api
        .post(&format!("/venues/{v}/endpoints/{id}/test"), json!({}))
        .await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["succeeded"], true);
    assert_eq!(outcome["status_code"], 200);
    assert_eq!(outcome["trigger"], "test");
    assert_eq!(outcome["response_body"], "receiver answered 200");
    let got = rx.received();
    assert_eq!(got.len(), 1, "sent now, not queued");
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["type"], "webhook.test");
    assert_eq!(body["data"]["test"], true);
    assert_eq!(verify_with_python(secret, &got), vec!["ok"]);

    let (_, outcome) = api
        .post(
            &format!("/venues/{v}/endpoints/{id}/test"),
            json!({"event_type": "order.created"}),
        )
        .await;
    assert_eq!(outcome["succeeded"], true);
    let body: Value = serde_json::from_str(&rx.received()[1].body).unwrap();
    assert_eq!(
        body["data"], order["example"],
        "the catalog's example payload"
    );

    // A receiver that refuses: the outcome says so, with a hint that points at the fix.
    rx.set_status(401);
    let (status, outcome) = api
        .post(&format!("/venues/{v}/endpoints/{id}/test"), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(outcome["succeeded"], false);
    assert_eq!(outcome["error_class"], "http_4xx");
    assert!(
        outcome["hint"].as_str().unwrap().contains("secret"),
        "{outcome}"
    );
    let (status, _) = api
        .post(
            &format!("/venues/{v}/endpoints/{id}/test"),
            json!({"event_type": "order.exploded"}),
        )
        .await;
    assert_eq!(status, 422);

    // All three in history, trigger `test`; the failed one is `failed`.
    let (_, page) = api
        .get(&format!("/venues/{v}/endpoints/{id}/deliveries"))
        .await;
    let list = page["data"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["status"], "failed");
    let (_, detail) = api
        .get(&format!(
            "/venues/{v}/deliveries/{}",
            list[0]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(detail["attempts"][0]["trigger"], "test");
    assert_eq!(detail["attempts"][0]["status_code"], 401);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_filters_by_status_type_and_time_with_opaque_cursors() {
    let stack = start_stack().await;
    let api = Client::new(&stack);
    let v = venue("hist");
    let rx = Receiver::start(200).await;
    let ep = api
        .create_endpoint(&v, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    let id = ep["id"].as_str().unwrap();
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    for t in ["order.created", "order.paid", "order.created"] {
        api.post(
            &format!("/venues/{v}/events"),
            json!({"type": t, "data": {}}),
        )
        .await;
    }
    rx.wait_for(3, WAIT).await;
    let history = format!("/venues/{v}/endpoints/{id}/deliveries");
    let all = eventually(WAIT, || async {
        let (_, page) = api.get(&format!("{history}?status=succeeded")).await;
        (page["data"].as_array().map_or(0, Vec::len) == 3).then_some(page)
    })
    .await
    .expect("three succeeded");
    let ids: Vec<&str> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();

    let (_, first) = api.get(&format!("{history}?limit=2")).await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    assert!(!cursor.starts_with("dlv_"), "cursors are opaque");
    let (_, second) = api.get(&format!("{history}?limit=2&cursor={cursor}")).await;
    let paged: Vec<&str> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["data"].as_array().unwrap())
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(paged, ids, "newest first, no gap, no repeat");

    let (_, paid) = api.get(&format!("{history}?event_type=order.paid")).await;
    assert_eq!(paid["data"].as_array().unwrap().len(), 1);
    let (_, pending) = api.get(&format!("{history}?status=pending")).await;
    assert_eq!(pending["data"], json!([]));
    let since = (chrono::Utc::now() + chrono::Duration::seconds(5)).to_rfc3339();
    let (_, future) = api
        .get(&format!("{history}?since={}", since.replace('+', "%2B")))
        .await;
    assert_eq!(future["data"], json!([]));
    let until = before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (_, past) = api.get(&format!("{history}?until={until}")).await;
    assert_eq!(past["data"], json!([]));
    let from = before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (_, window) = api.get(&format!("{history}?since={from}")).await;
    assert_eq!(window["data"].as_array().unwrap().len(), 3);
    for bad in ["status=done", "since=yesterday", "cursor=%%%", "limit=101"] {
        let (status, answer) = api.get(&format!("{history}?{bad}")).await;
        assert_eq!(status, 422, "{bad}: {answer}");
    }
    stack.stop().await;
}

/// A portal session acts for its venue like a venue key, until it expires or is revoked; then
/// it gets the "link has expired" answer. Only the admin key mints or revokes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_sessions_act_for_their_venue_until_they_expire_or_are_revoked() {
    let stack = start_stack().await;
    let admin = Client::new(&stack);
    let v = venue("portal");
    let other = venue("portal-other");
    let sessions = format!("/venues/{v}/portal-sessions");
    let (status, minted) = admin.post(&sessions, json!({})).await;
    assert_eq!(status, 201, "{minted}");
    let url = minted["url"].as_str().unwrap();
    let (page, fragment) = url
        .split_once("#token=")
        .expect("the token is in the fragment");
    assert_eq!(page, format!("{}/portal", stack.api_url));
    let (token, for_venue) = fragment.split_once("&venue=").unwrap();
    assert!(token.starts_with("pps_"), "{token}");
    assert_eq!(for_venue, v);
    let expires = chrono::DateTime::parse_from_rfc3339(minted["expires_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let hour = (expires - chrono::Utc::now()).num_seconds();
    assert!(
        (3590..=3600).contains(&hour),
        "one hour by default: {hour} s"
    );

    let mut portal = Client::new(&stack);
    portal.key = Some(token.to_owned());
    let rx = Receiver::start(200).await;
    let (status, created) = portal
        .post(
            &format!("/venues/{v}/endpoints"),
            json!({"url": rx.url, "event_types": ["*"]}),
        )
        .await;
    assert_eq!(status, 201, "it acts for its venue: {created}");
    let (status, _) = portal.get(&format!("/venues/{other}/endpoints")).await;
    assert_eq!(status, 404, "and for no other");
    for (method, path) in [
        ("POST", format!("/venues/{v}/api-keys")),
        ("GET", format!("/venues/{v}/api-keys")),
        ("POST", sessions.clone()),
        ("DELETE", sessions.clone()),
    ] {
        let (status, answer) = portal.send_raw(method, &path, Some(b"{}".to_vec())).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
    }
    let key = issue_key(&admin, &v).await;
    let mut venue_key = Client::new(&stack);
    venue_key.key = Some(key);
    let (status, _) = venue_key.post(&sessions, json!({})).await;
    assert_eq!(status, 403, "a venue key mints no sessions");
    let (_, keys) = admin.get(&format!("/venues/{v}/api-keys")).await;
    assert_eq!(
        keys["data"].as_array().map(Vec::len),
        Some(1),
        "sessions are not keys: {keys}"
    );

    for bad in [
        json!({"ttl_seconds": 0}),
        json!({"ttl_seconds": 86_401}),
        json!({"ttl": 5}),
    ] {
        let (status, answer) = admin.post(&sessions, bad.clone()).await;
        assert_eq!(status, 422, "{bad}: {answer}");
    }
    let (_, answer) = admin.post(&sessions, json!({"ttl_seconds": 0})).await;
    assert_eq!(
        answer["error"]["field"], "ttl_seconds",
        "the field it is about: {answer}"
    );

    // The page the link opens: served without a key, strict about what it loads.
    let page = reqwest::get(page).await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors"),
        "{csp}"
    );
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    let script = html
        .split("src=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let script = reqwest::get(format!("{}{script}", stack.api_url))
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    assert!(script.text().await.unwrap().contains("sessionStorage"));

    // A short one expires.
    let (_, short) = admin.post(&sessions, json!({"ttl_seconds": 1})).await;
    let short_token = short["url"]
        .as_str()
        .unwrap()
        .split_once("#token=")
        .unwrap()
        .1
        .split_once('&')
        .unwrap()
        .0;
    let mut expiring = Client::new(&stack);
    expiring.key = Some(short_token.to_owned());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, answer) = expiring.get(&format!("/venues/{v}/endpoints")).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error"]["code"], "session_expired");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("open Webhooks from your dashboard again"),
        "{answer}"
    );

    // Revoking ends the rest at once; the venue key goes on working.
    let (status, revoked) = admin.send_raw("DELETE", &sessions, None).await;
    assert_eq!(
        (status, revoked["revoked"].as_u64()),
        (200, Some(2)),
        "{revoked}"
    );
    let (status, answer) = portal.get(&format!("/venues/{v}/endpoints")).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (401, &json!("session_expired"))
    );
    let (status, _) = venue_key.get(&format!("/venues/{v}/endpoints")).await;
    assert_eq!(status, 200);
    stack.stop().await;
}

/// Ten events accepted together are one group at the endpoint: nine first-try successes in
/// one item, the failure in an item of its own. Pages that stop inside the group's item go on
/// where they stopped; the status filters find each kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_through_a_group_and_filters_its_failure() {
    let stack = start_stack().await;
    let api = Client::new(&stack);
    let v = venue("grp");
    let rx = Receiver::start(200).await;
    rx.answer(r#""n":4}"#, 500);
    let ep = api
        .create_endpoint(&v, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    let id = ep["id"].as_str().unwrap();
    let events: Vec<Value> = (0..10)
        .map(|n| json!({"type": if n % 2 == 0 { "order.created" } else { "order.paid" }, "data": {"n": n}}))
        .collect();
    publish_together(&stack, &v, &events).await;
    rx.wait_for(10, WAIT).await;
    let history = format!("/venues/{v}/endpoints/{id}/deliveries");
    let all = eventually(WAIT, || async {
        let (_, page) = api.get(&format!("{history}?limit=100")).await;
        let data = page["data"].as_array()?.clone();
        (data.len() == 10 && data.iter().any(|d| d["status"] == "pending")).then_some(data)
    })
    .await
    .expect("ten deliveries, one pending");
    let ids: Vec<&str> = all.iter().map(|d| d["id"].as_str().unwrap()).collect();
    // Newest first; the deliveries of one group were created together (their ids differ in
    // their place only), so among them any order is newest first.
    let groups: Vec<String> = ids
        .iter()
        .map(|id| {
            let id = shared::model::ids::DeliveryId::parse(id).unwrap();
            id.group().map_or(id, |(g, _)| g).to_string()
        })
        .collect();
    assert!(groups.windows(2).all(|w| w[0] >= w[1]), "{ids:?}");

    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("{history}?limit=3&cursor={c}"),
            None => format!("{history}?limit=3"),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, 200, "{page}");
        paged.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_owned()),
        );
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(paged, ids, "pages of three: no gap, no repeat");

    let (_, pending) = api.get(&format!("{history}?status=pending")).await;
    let pending = pending["data"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let failing = pending[0]["id"].as_str().unwrap();
    let (_, one) = api.get(&format!("/venues/{v}/deliveries/{failing}")).await;
    assert_eq!(one["attempts"][0]["status_code"], 500, "{one}");
    let (_, succeeded) = api
        .get(&format!(
            "{history}?status=succeeded&event_type=order.created"
        ))
        .await;
    assert_eq!(
        succeeded["data"].as_array().unwrap().len(),
        4,
        "five order.created, one of them pending: {succeeded}"
    );
    let (_, failed) = api.get(&format!("{history}?status=failed")).await;
    assert_eq!(failed["data"], json!([]));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_formats_data_and_a_slack_template_are_signed_as_sent() {
    let stack = start_stack().await;
    let api = Client::new(&stack);
    let v = venue("fmt");
    let data_rx = Receiver::start(200).await;
    let slack_rx = Receiver::start(200).await;
    let slack = "{text: join('', ['New order ', data.order_id, ': ', to_string(data.total_cents), ' cents'])}";
    let data_ep = api
        .create_endpoint(
            &v,
            json!({"url": data_rx.url, "event_types": ["order.created"],
                                    "payload_format": "data"}),
        )
        .await;
    let slack_ep = api
        .create_endpoint(
            &v,
            json!({"url": slack_rx.url, "event_types": ["order.*"],
                                    "payload_format": "template", "template": slack}),
        )
        .await;
    assert_eq!(slack_ep["template"], slack);

    // Bad templates are refused on save, with what to fix.
    for (body, needle) in [
        (
            json!({"url": slack_rx.url, "event_types": ["*"], "payload_format": "template"}),
            "needs a `template`",
        ),
        (
            json!({"url": slack_rx.url, "event_types": ["*"], "payload_format": "template", "template": "{text: "}),
            "JMESPath",
        ),
        (
            json!({"url": slack_rx.url, "event_types": ["*"], "payload_format": "template", "template": "data.order_id"}),
            "JSON object",
        ),
        (
            json!({"url": slack_rx.url, "event_types": ["*"], "template": "{a: id}"}),
            "set payload_format",
        ),
    ] {
        let (status, answer) = api.post(&format!("/venues/{v}/endpoints"), body).await;
        assert_eq!(status, 422, "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{answer}"
        );
    }

    api.post(
        &format!("/venues/{v}/events"),
        json!({"type": "order.created", "data": {"order_id": "ord_9", "total_cents": 4500}}),
    )
    .await;
    let got = data_rx.wait_for(1, WAIT).await;
    assert_eq!(got[0].body, r#"{"order_id":"ord_9","total_cents":4500}"#);
    assert_eq!(
        verify_with_python(data_ep["secret"].as_str().unwrap(), &got),
        vec!["ok"]
    );
    let got = slack_rx.wait_for(1, WAIT).await;
    assert_eq!(got[0].body, r#"{"text":"New order ord_9: 4500 cents"}"#);
    assert_eq!(
        verify_with_python(slack_ep["secret"].as_str().unwrap(), &got),
        vec!["ok"]
    );

    // An event the template cannot render: failed at once, nothing sent, a hint to fix it.
    api.post(
        &format!("/venues/{v}/events"),
        json!({"type": "order.paid", "data": {"order_id": 7}}),
    )
    .await;
    let slack_id = slack_ep["id"].as_str().unwrap();
    let failed = eventually(WAIT, || async {
        let (_, page) = api
            .get(&format!(
                "/venues/{v}/endpoints/{slack_id}/deliveries?status=failed"
            ))
            .await;
        page["data"].as_array().and_then(|d| d.first().cloned())
    })
    .await
    .expect("a failed delivery");
    let (_, detail) = api
        .get(&format!(
            "/venues/{v}/deliveries/{}",
            failed["id"].as_str().unwrap()
        ))
        .await;
    let attempts = detail["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "no retries for a template error");
    assert_eq!(attempts[0]["error_class"], "template");
    assert!(attempts[0]["hint"].as_str().unwrap().contains("template"));
    assert_eq!(slack_rx.received().len(), 1);

    // PATCH back to the envelope drops the template.
    let (status, patched) = api
        .patch(
            &format!("/venues/{v}/endpoints/{slack_id}"),
            json!({"payload_format": "envelope"}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["template"], Value::Null);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_api_process_opens_secrets_sealed_by_another() {
    // A new Lambda instance has no data key cached: it asks KMS to decrypt the endpoint's
    // sealed data key (under the api function's own identity, as on AWS).
    let mut options = local_options();
    options.run_ingest = false;
    options.run_deliver = false;
    let prefix = options.prefix.clone();
    let first = start_with(options).await;
    let rx = Receiver::start(200).await;
    let v = venue("cold");
    let ep = Client::new(&first)
        .create_endpoint(&v, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    let secret = ep["secret"].as_str().unwrap().to_owned();
    first.stop().await;

    let mut options = local_options();
    options.prefix = prefix;
    options.run_ingest = false;
    options.run_deliver = false;
    let second = start_with(options).await;
    let (status, tested) = Client::new(&second)
        .post(
            &format!("/venues/{v}/endpoints/{}/test", ep["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{tested}");
    assert_eq!(tested["status_code"], 200, "{tested}");
    let got = rx.wait_for(1, WAIT).await;
    assert_eq!(verify_with_python(&secret, &got), vec!["ok"]);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_venue_has_a_bounded_number_of_endpoints() {
    let mut options = local_options_with(&[("MAX_ENDPOINTS_PER_VENUE", "2")]);
    options.run_ingest = false;
    options.run_deliver = false;
    let stack = start_with(options).await;
    let api = Client::new(&stack);
    let (v, other) = (venue("full"), venue("other"));
    let body = json!({"url": "http://127.0.0.1:9/hooks", "event_types": ["*"]});
    let first = api.create_endpoint(&v, body.clone()).await;
    api.create_endpoint(&v, body.clone()).await;
    let (status, refused) = api
        .post(&format!("/venues/{v}/endpoints"), body.clone())
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused.to_string().contains("at most 2 endpoints"),
        "{refused}"
    );
    // Nothing was created, another venue is not affected, and room comes back.
    let (_, page) = api.get(&format!("/venues/{v}/endpoints")).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    api.create_endpoint(&other, body.clone()).await;
    let (status, _) = api
        .delete(&format!(
            "/venues/{v}/endpoints/{}",
            first["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 204);
    api.create_endpoint(&v, body).await;
    stack.stop().await;
}

/// Every item of the stack's tables that names `venue` (the removal record aside).
async fn items_of_venue(stack: &local::Stack, venue: &str) -> Vec<String> {
    all_items(stack)
        .await
        .into_iter()
        .filter(|(_, text)| text.contains(venue) && !text.contains(&format!("rmv_{venue}")))
        .map(|(logical, text)| format!("{logical}: {text}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_venue_leaves_nothing_readable_or_delivered() {
    // Small purge pages, and the request runs two of them: the rest is left to purge tasks
    // on the delivery queue (run by deliver), as for a venue with a long history.
    let stack = start_with(local_options_with(&[
        ("PURGE_PAGE_SIZE", "2"),
        ("PURGE_INLINE_STEPS", "2"),
        // The failing endpoint's retries fall due after the purge has ended.
        ("RETRY_SCHEDULE_SECONDS", "6,6,6"),
    ]))
    .await;
    let admin = Client::new(&stack);
    let v = venue("leaving");
    let neighbour = venue("staying");
    let key = issue_key(&admin, &v).await;
    let mut as_venue = Client::new(&stack);
    as_venue.key = Some(key);
    let (status, session) = admin
        .post(&format!("/venues/{v}/portal-sessions"), json!({}))
        .await;
    assert_eq!(status, 201);
    let token = session["url"]
        .as_str()
        .unwrap()
        .split("#token=")
        .nth(1)
        .unwrap();
    let mut portal = Client::new(&stack);
    portal.key = Some(token.split('&').next().unwrap().to_owned());

    let ok = Receiver::start(200).await;
    let failing = Receiver::start(503).await;
    let gone = Receiver::start(200).await;
    as_venue
        .create_endpoint(&v, json!({"url": ok.url, "event_types": ["*"]}))
        .await;
    let failing_endpoint = as_venue
        .create_endpoint(&v, json!({"url": failing.url, "event_types": ["*"]}))
        .await;
    let failing_id = failing_endpoint["id"].as_str().unwrap();
    // An endpoint deleted before the venue leaves: its history goes too (the events name it).
    let earlier = as_venue
        .create_endpoint(&v, json!({"url": gone.url, "event_types": ["*"]}))
        .await;
    let mut events = Vec::new();
    for i in 0..5 {
        let (status, accepted) = as_venue
            .post(
                &format!("/venues/{v}/events"),
                json!({"type": "order.created", "data": {"n": i}}),
            )
            .await;
        assert_eq!(status, 202, "{accepted}");
        events.push(accepted["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ok.wait_for(5, WAIT).await.len(), 5);
    assert_eq!(gone.wait_for(5, WAIT).await.len(), 5);
    failing.wait_for(5, WAIT).await;
    let (status, _) = as_venue
        .delete(&format!(
            "/venues/{v}/endpoints/{}",
            earlier["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 204);
    let (_, event) = admin
        .get(&format!("/venues/{v}/events/{}", events[0]))
        .await;
    let deliveries: Vec<String> = event["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(deliveries.len(), 3, "{event}");
    // The neighbour, which stays.
    let theirs = Receiver::start(200).await;
    let kept = admin
        .create_endpoint(&neighbour, json!({"url": theirs.url, "event_types": ["*"]}))
        .await;
    let (_, their_event) = admin
        .post(
            &format!("/venues/{neighbour}/events"),
            json!({"type": "order.created", "data": {}}),
        )
        .await;
    theirs.wait_for(1, WAIT).await;

    // Only the admin key removes a venue.
    let (status, _) = as_venue.delete(&format!("/venues/{v}")).await;
    assert_eq!(status, 403);
    let (status, removed) = admin.delete(&format!("/venues/{v}")).await;
    assert_eq!(status, 200, "{removed}");
    assert_eq!(removed["venue_id"], v.as_str());
    assert_eq!(removed["endpoints_deleted"], 2);
    assert_eq!(removed["api_keys_revoked"], 1);
    assert_eq!(removed["portal_sessions_revoked"], 1);
    assert_eq!(
        removed["purged"], false,
        "5 events in pages of 2: the rest is queued"
    );

    // Its keys and sessions are refused at once; its endpoints are gone.
    assert_eq!(as_venue.get(&format!("/venues/{v}/endpoints")).await.0, 401);
    assert_eq!(portal.get(&format!("/venues/{v}/endpoints")).await.0, 401);
    let (_, list) = admin.get(&format!("/venues/{v}/endpoints")).await;
    assert_eq!(list["data"], json!([]));
    let (_, keys) = admin.get(&format!("/venues/{v}/api-keys")).await;
    assert_eq!(keys["data"], json!([]));

    // Within seconds nothing of it is stored (the purge tasks ran), readable, or delivered:
    // the failing endpoint's retries, due 6 s after its first attempts, find the venue
    // removed and end without a request or a record.
    let left = eventually(Duration::from_secs(30), || async {
        let found = items_of_venue(&stack, &v).await;
        found.is_empty().then_some(())
    })
    .await;
    assert!(left.is_some(), "{:#?}", items_of_venue(&stack, &v).await);
    for id in &events {
        assert_eq!(admin.get(&format!("/venues/{v}/events/{id}")).await.0, 404);
    }
    for id in &deliveries {
        assert_eq!(
            admin.get(&format!("/venues/{v}/deliveries/{id}")).await.0,
            404
        );
    }
    let attempts = failing.received().len();
    // And, whatever the timing, jobs of it that arrive now: a fresh job (its event inline) and
    // a retry of a delivery whose event is gone.
    let endpoint = shared::model::ids::EndpointId::parse(failing_id).unwrap();
    let fresh = shared::model::ids::DeliveryId::batch_base()
        .group_at(&endpoint)
        .member(0);
    let late = [
        json!({"venue_id": v, "endpoint_id": failing_id, "first": true,
               "deliveries": [{"delivery_id": fresh.as_str(), "event_id": "evt_late",
                               "event_type": "order.created",
                               "event": {"id": "evt_late", "type": "order.created",
                                         "timestamp": "2026-11-27T10:00:00Z", "data": {}}}]}),
        json!({"venue_id": v, "endpoint_id": failing_id,
               "deliveries": [{"delivery_id": deliveries[1], "event_id": events[0],
                               "event_type": "order.created"}]}),
    ];
    let sqs = aws_sdk_sqs::Client::new(&stack.aws);
    for job in &late {
        sqs.send_message()
            .queue_url(stack.queue_url("DeliveryQueue"))
            .message_body(job.to_string())
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(failing.received().len(), attempts, "no retry went out");
    assert!(
        items_of_venue(&stack, &v).await.is_empty(),
        "and none was recorded"
    );

    // The neighbour has everything it had.
    let (status, _) = admin
        .get(&format!(
            "/venues/{neighbour}/endpoints/{}",
            kept["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200);
    let (status, _) = admin
        .get(&format!(
            "/venues/{neighbour}/events/{}",
            their_event["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200);

    // Idempotent: again, nothing is found and nothing is left.
    let (status, again) = admin.delete(&format!("/venues/{v}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            &again["endpoints_deleted"],
            &again["api_keys_revoked"],
            &again["purged"]
        ),
        (&json!(0), &json!(0), &json!(true))
    );
    stack.stop().await;
}

/// Nearest-rank percentile of sorted `values`.
fn nearest_rank(values: &[u64], p: f64) -> u64 {
    values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_stats_add_up_to_what_its_history_shows() {
    // Retries a second apart (a 503 waits at least OVERLOAD_WAIT_MS).
    let stack = start_with(local_options_with(&[
        ("RETRY_SCHEDULE_SECONDS", "1,1"),
        ("OVERLOAD_WAIT_MS", "1000"),
    ]))
    .await;
    let admin = Client::new(&stack);
    let v = venue("stats");
    let rx = Receiver::start(200).await;
    rx.answer("fail-me", 503);
    let ep = admin
        .create_endpoint(&v, json!({"url": rx.url, "event_types": ["order.*"]}))
        .await;
    let id = ep["id"].as_str().unwrap();
    // Another endpoint of the venue, busier: none of it counts for the first.
    let other_rx = Receiver::start(200).await;
    admin
        .create_endpoint(
            &v,
            json!({"url": other_rx.url, "event_types": ["registration.*"]}),
        )
        .await;
    let publish = |kind: &'static str, data: Value| {
        let admin = &admin;
        let v = &v;
        async move {
            let (status, _) = admin
                .post(
                    &format!("/venues/{v}/events"),
                    json!({"type": kind, "data": data}),
                )
                .await;
            assert_eq!(status, 202);
        }
    };
    for i in 0..7 {
        publish("order.created", json!({"n": i})).await;
    }
    for _ in 0..2 {
        publish("order.paid", json!({"note": "fail-me"})).await;
    }
    for i in 0..12 {
        publish("registration.created", json!({"n": i})).await;
    }
    let (status, _) = admin
        .post(&format!("/venues/{v}/endpoints/{id}/test"), json!({}))
        .await;
    assert_eq!(status, 200);
    other_rx.wait_for(12, WAIT).await;
    let history = format!("/venues/{v}/endpoints/{id}/deliveries?limit=50");
    let settled = eventually(Duration::from_secs(30), || async {
        let (_, page) = admin.get(&history).await;
        let rows = page["data"].as_array()?.clone();
        (rows.len() == 10 && rows.iter().all(|d| d["status"] != "pending")).then_some(rows)
    })
    .await;
    let Some(settled) = settled else {
        let (_, page) = admin.get(&history).await;
        panic!("7 delivered, 2 failed for good, 1 test; the history: {page:#}");
    };

    // What the history shows, delivery by delivery (each read on its own).
    let mut durations = Vec::new();
    let (mut attempts, mut succeeded, mut failed_5xx) = (0, 0, 0);
    for row in &settled {
        let (_, d) = admin
            .get(&format!(
                "/venues/{v}/deliveries/{}",
                row["id"].as_str().unwrap()
            ))
            .await;
        for a in d["attempts"].as_array().unwrap() {
            attempts += 1;
            durations.push(a["duration_ms"].as_u64().unwrap());
            if a["error_class"].is_null() {
                succeeded += 1;
            } else {
                assert_eq!(a["error_class"], "http_5xx");
                failed_5xx += 1;
            }
        }
    }
    durations.sort_unstable();
    assert_eq!(succeeded, 8);
    assert!(failed_5xx >= 4, "two deliveries retried: {failed_5xx}");

    let (status, stats) = admin
        .get(&format!("/venues/{v}/endpoints/{id}/stats"))
        .await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["window"], "24h");
    assert_eq!(stats["complete"], true);
    assert_eq!(
        stats["deliveries"],
        json!({"total": 10, "succeeded": 8, "failed": 2, "pending": 0})
    );
    assert_eq!(
        stats["attempts"],
        json!({"total": attempts, "succeeded": 8, "failed": failed_5xx,
               "by_outcome": {"succeeded": 8, "http_5xx": failed_5xx}})
    );
    let rate = stats["success_rate"].as_f64().unwrap();
    assert!((rate - 8.0 / attempts as f64).abs() < 1e-9, "{rate}");
    assert_eq!(
        stats["duration_ms"],
        json!({"p50": nearest_rank(&durations, 0.5), "p95": nearest_rank(&durations, 0.95)})
    );
    // A window is checked: minutes to the retention; 422 on `window` otherwise.
    let (status, short) = admin
        .get(&format!("/venues/{v}/endpoints/{id}/stats?window=90m"))
        .await;
    assert_eq!((status, &short["deliveries"]["total"]), (200, &json!(10)));
    for bad in ["31d", "soon", "30s"] {
        let (status, answer) = admin
            .get(&format!("/venues/{v}/endpoints/{id}/stats?window={bad}"))
            .await;
        assert_eq!(status, 422, "{bad}: {answer}");
        assert_eq!(answer["error"]["field"], "window");
    }
    stack.stop().await;
}

/// One publish request with the response's status, `Retry-After` and body.
async fn publish_raw(
    http: &reqwest::Client,
    api_url: &str,
    venue: &str,
    id: &str,
) -> (u16, Option<String>, Value) {
    let response = http
        .post(format!("{api_url}/venues/{venue}/events"))
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .json(&json!({"type": "order.created", "id": id, "data": {"n": id}}))
        .send()
        .await
        .expect("API answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (
        status,
        retry_after,
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_venue_publishing_past_its_limit_fails_no_other_venues_calls() {
    let mut options = local_options();
    options
        .parameters
        .insert("VenuePublishRateLimit".into(), "20".into());
    let stack = start_with(options).await;
    let api = Client::new(&stack);
    let (loud, quiet) = (venue("loud"), venue("quiet"));
    let rx = Receiver::start(200).await;
    api.create_endpoint(&quiet, json!({"url": rx.url, "event_types": ["*"]}))
        .await;
    let http = reqwest::Client::new();

    // The loud venue: 200 events a second for 3 s, ten times its limit of 20.
    let flood = {
        let (http, api_url, loud) = (http.clone(), stack.api_url.clone(), loud.clone());
        tokio::spawn(async move {
            let mut sent = tokio::task::JoinSet::new();
            let mut ticks = tokio::time::interval(Duration::from_millis(5));
            for i in 0..600 {
                ticks.tick().await;
                let id = format!("loud-{i}");
                let (http, api_url, loud) = (http.clone(), api_url.clone(), loud.clone());
                sent.spawn(async move {
                    let answer = publish_raw(&http, &api_url, &loud, &id).await;
                    (id, answer)
                });
            }
            sent.join_all().await
        })
    };
    // The quiet venue, in the same seconds: publishing, its endpoints, its event.
    let mut calm = Vec::new();
    for i in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let id = format!("quiet-{i}");
        let (status, _, body) = publish_raw(&http, &stack.api_url, &quiet, &id).await;
        calm.push(("publish", status, body));
        let (status, body) = api.get(&format!("/venues/{quiet}/endpoints")).await;
        calm.push(("list endpoints", status, body));
        let (status, body) = api.get(&format!("/venues/{quiet}/events/{id}")).await;
        calm.push(("get event", status, body));
    }
    let flooded = flood.await.expect("the flood ran");

    for (what, status, body) in &calm {
        assert!(
            (200..300).contains(status),
            "the quiet venue's {what} failed during the loud venue's flood: {status} {body}"
        );
    }
    let (accepted, refused): (Vec<_>, Vec<_>) = flooded
        .iter()
        .partition(|(_, (status, _, _))| *status == 202);
    for (id, (status, retry_after, body)) in &refused {
        assert_eq!(*status, 429, "{id}: {body}");
        assert_eq!(retry_after.as_deref(), Some("1"), "{id}: Retry-After");
        assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    }
    // 3 s of sending span at most 5 calendar seconds (with the answers' time): 20 in each.
    assert!(
        (20..=100).contains(&accepted.len()),
        "{} of 600 accepted at a limit of 20 a second",
        accepted.len()
    );
    // What was refused was not stored; what was accepted was.
    for (id, _) in refused.iter().take(5) {
        let (status, body) = api.get(&format!("/venues/{loud}/events/{id}")).await;
        assert_eq!(status, 404, "a refused event was stored: {body}");
    }
    for (id, _) in accepted.iter().take(5) {
        let (status, body) = api.get(&format!("/venues/{loud}/events/{id}")).await;
        assert_eq!(status, 200, "{body}");
    }
    // The quiet venue's 30 events reach its endpoint.
    assert_eq!(rx.wait_for(30, WAIT).await.len(), 30);
    eprintln!(
        "loud venue: {} of 600 accepted (limit 20 a second), {} answered 429; quiet venue: {} calls, all 2xx",
        accepted.len(),
        refused.len(),
        calm.len()
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_route_has_its_own_throttle() {
    let mut options = local_options();
    options.run_ingest = false;
    options.run_deliver = false;
    options
        .parameters
        .insert("ApiThrottlingRateLimit".into(), "2".into());
    options
        .parameters
        .insert("ApiThrottlingBurstLimit".into(), "4".into());
    let stack = start_with(options).await;
    let api = Client::new(&stack);
    let v = venue("throttled");
    // Management calls past the management routes' throttle: 429 from the gateway.
    let mut listed = Vec::new();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (api, path) = (api.clone(), format!("/venues/{v}/endpoints"));
        calls.spawn(async move { api.get(&path).await });
    }
    while let Some(answer) = calls.join_next().await {
        listed.push(answer.unwrap());
    }
    let throttled: Vec<_> = listed.iter().filter(|(s, _)| *s == 429).collect();
    assert!(throttled.len() >= 10, "{} of 20 throttled", throttled.len());
    assert_eq!(throttled[0].1, json!({"message": "Too Many Requests"}));
    // Publishing and the page have throttles of their own: not touched.
    for i in 0..5 {
        let (status, body) = api
            .post(
                &format!("/venues/{v}/events"),
                json!({"type": "order.created", "data": {"i": i}}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let page = reqwest::get(format!("{}/portal", stack.api_url))
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    // No route: the gateway's own 404.
    let (status, body) = api.get("/").await;
    assert_eq!((status, body), (404, json!({"message": "Not Found"})));
    stack.stop().await;
}
