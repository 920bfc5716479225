//! Webhooks (SPEC §9) against a real HTTP receiver: every key event of the admin API arrives
//! signed (`Keygate-Signature`, HMAC-SHA256 over `t.body`, checked here with ring) and without
//! the secret; a receiver answering 500 is retried until it answers 200; a receiver down while
//! keygate restarts gets the event after; two instances on one Redis deliver each event once;
//! `key.expiring` and `key.expired` come once per key and expiry; `key.quota_exhausted` when a
//! use spends the last unit; attempts are listed by `GET /v1/webhooks/deliveries` and counted
//! in the metrics.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

#[macro_use]
mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use keygate::config::{QuotaSpec, Refill};
use keygate::control::NewKey;
use serde_json::{Value, json};
use support::gateway::{Backend, OPS_TOKEN, TestGateway, new_key};
use support::receiver::{Received, Receiver};
use time::OffsetDateTime;

on_both_backends!(key_events_arrive_signed_and_without_the_secret);

const SECRET: &str = "whsec-test-0123456789abcdef";

fn overlay(url: &str, events: &str) -> String {
    format!(
        "webhooks:\n  - {{ url: \"{url}\", events: {events}, secret: {SECRET}, first_retry: 100ms, timeout: 2s }}\n"
    )
}

/// A receiver answering 200, and a gateway on `backend` sending it `events`.
async fn with_receiver(backend: Backend, events: &str) -> (Receiver, TestGateway) {
    let receiver = Receiver::start().await;
    let gw = TestGateway::start(backend, &overlay(&receiver.url(), events)).await;
    (receiver, gw)
}

/// Checks `Keygate-Signature` of `r` as a receiver would: `t=<unix s>,v1=<hex>`, the HMAC-SHA256
/// of `<t>.<body>` keyed with the secret.
fn assert_signed(r: &Received) {
    let header = r.headers["keygate-signature"].to_str().unwrap();
    let (t, v1) = header
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
        .unwrap_or_else(|| panic!("signature header {header}"));
    let t: i64 = t.parse().unwrap();
    assert!(
        (OffsetDateTime::now_utc().unix_timestamp() - t).abs() < 300,
        "{t}"
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(&r.body);
    let tag: Vec<u8> = (0..v1.len() / 2)
        .map(|i| u8::from_str_radix(&v1[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    ring::hmac::verify(&key, &signed, &tag).expect("the signature verifies");
    // A body changed in transit does not.
    let mut forged = signed.clone();
    forged.push(b' ');
    assert!(ring::hmac::verify(&key, &forged, &tag).is_err());
}

async fn key_events_arrive_signed_and_without_the_secret(backend: Backend) {
    let (receiver, gw) = with_receiver(backend, "[\"*\"]").await;
    let created = gw
        .admin_create("acme", json!({"name": "ci", "scopes": ["sessions:read"]}))
        .await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/workspaces/acme/keys/{id}");
    let r = gw
        .admin(
            Method::PATCH,
            &path,
            Some(OPS_TOKEN),
            Some(json!({"name": "ci-2"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = gw
        .admin(
            Method::POST,
            &format!("{path}/rotate"),
            Some(OPS_TOKEN),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let new_id = r.json()["key"]["id"].as_str().unwrap().to_owned();
    let r = gw
        .admin(
            Method::POST,
            &format!("{path}/revoke"),
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = gw.admin(Method::DELETE, &path, Some(OPS_TOKEN), None).await;
    assert!(r.status.is_success(), "{:?}", r.status);

    let want = [
        "key.created",
        "key.updated",
        "key.rotated",
        "key.revoked",
        "key.deleted",
    ];
    let got = receiver
        .wait_for(Duration::from_secs(10), |all| all.len() >= want.len())
        .await;
    let mut events: Vec<String> = got.iter().map(Received::event).collect();
    events.sort();
    let mut sorted = want.to_vec();
    sorted.sort();
    assert_eq!(events, sorted);
    for r in &got {
        assert_signed(r);
        let body = r.json();
        assert!(body["id"].as_str().unwrap().starts_with("evt_"), "{body}");
        assert_eq!(body["workspace"], "acme");
        assert!(body["created_at"].as_str().is_some(), "{body}");
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["keygate-event"], body["type"].as_str().unwrap());
        // The secret is shown once, to its creator: never in an event.
        assert!(!String::from_utf8_lossy(&r.body).contains(&secret));
        let key_id = body["key"]["id"].as_str().unwrap();
        if body["type"] == "key.rotated" {
            assert_eq!(key_id, new_id);
            assert_eq!(body["previous"]["id"], id.as_str());
        } else {
            assert_eq!(key_id, id);
        }
    }

    // The delivery log and the metrics say the same, once the deliverer has recorded the last
    // answer (the receiver sees a delivery before its sender writes it down).
    let entries = deliveries(&gw, 5).await;
    assert_eq!(entries.len(), 5, "{entries:?}");
    assert!(
        entries
            .iter()
            .all(|e| e["result"] == "delivered" && e["status"] == 200),
        "{entries:?}"
    );
    let metrics = String::from_utf8(gw.admin_get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("keygate_webhook_deliveries_total{result=\"delivered\"} 5"),
        "{metrics}"
    );
    // Only callers who may view every workspace read it.
    let r = gw
        .admin(
            Method::GET,
            "/v1/webhooks/deliveries",
            Some(support::gateway::VIEWER_TOKEN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_500_is_retried_until_it_takes_the_event() {
    let receiver = Receiver::start_scripted("127.0.0.1:0".parse().unwrap(), |n| {
        if n < 2 { 500 } else { 200 }
    })
    .await;
    let gw = TestGateway::start(
        Backend::Embedded,
        &overlay(&receiver.url(), "[key.created]"),
    )
    .await;
    gw.admin_create("acme", json!({"name": "retry"})).await;
    let got = receiver
        .wait_for(Duration::from_secs(10), |all| {
            all.iter().any(|r| r.status == 200)
        })
        .await;
    assert_eq!(
        got.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    // The same event each time, signed each time.
    let ids: Vec<Value> = got.iter().map(|r| r.json()["id"].clone()).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    got.iter().for_each(assert_signed);

    let entries = deliveries(&gw, 3).await;
    let results: Vec<&str> = entries
        .iter()
        .map(|e| e["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["delivered", "failed", "failed"], "newest first");
    assert_eq!(entries[1]["status"], 500);
    assert!(
        entries[1]["next_attempt_at"].is_string(),
        "{:?}",
        entries[1]
    );
    assert_eq!(entries[0]["attempt"], 3);
    assert_eq!(gw.app.store().outbox_len().await.unwrap(), 0);
}

/// A key of `acme` created through the admin API, expiring in `secs` seconds: its id and expiry.
async fn create_expiring(gw: &TestGateway, name: &str, secs: i64) -> (String, OffsetDateTime) {
    let expires = OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    let stamp = expires
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let created = gw
        .admin_create("acme", json!({"name": name, "expires_at": stamp}))
        .await;
    (created["id"].as_str().unwrap().to_owned(), expires)
}

/// The delivery log once it has `n` entries (at most 10 s).
async fn deliveries(gw: &TestGateway, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = gw
            .admin(
                Method::GET,
                "/v1/webhooks/deliveries",
                Some(OPS_TOKEN),
                None,
            )
            .await;
        let entries = r.json()["entries"].as_array().unwrap().clone();
        if entries.len() >= n {
            return entries;
        }
        assert!(std::time::Instant::now() < deadline, "{entries:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_for_a_receiver_down_across_a_restart_arrives_after() {
    let addr = support::upstream::closed_port().await;
    let url = format!("http://{addr}/hooks");
    let gw = TestGateway::start(Backend::Embedded, &overlay(&url, "[key.created]")).await;
    let created = gw.admin_create("acme", json!({"name": "patient"})).await;
    // It failed at least once while nothing listened.
    let entries = deliveries(&gw, 1).await;
    assert_eq!(entries[0]["result"], "failed", "{entries:?}");
    let gw = gw.restart().await;
    let receiver = Receiver::start_scripted(addr, |_| 200).await;
    let got = receiver
        .wait_for(Duration::from_secs(15), |all| !all.is_empty())
        .await;
    assert_eq!(got[0].event(), "key.created");
    let id = created["id"].as_str().unwrap();
    assert_eq!(got[0].json()["key"]["id"], id);
    assert_signed(&got[0]);
    assert_eq!(deliveries(&gw, 2).await[0]["result"], "delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_deliver_each_event_once() {
    let receiver = Receiver::start().await;
    let hooks = overlay(&receiver.url(), "[key.created]");
    let a = TestGateway::start(Backend::Redis, &hooks).await;
    let b = a.another_instance(&hooks).await;
    for i in 0..20 {
        let gw = if i % 2 == 0 { &a } else { &b };
        gw.admin_create("acme", json!({"name": format!("k{i}")}))
            .await;
    }
    receiver
        .wait_for(Duration::from_secs(15), |all| all.len() >= 20)
        .await;
    // Both instances poll the outbox every second: give a duplicate time to show.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let got = receiver.all();
    let mut ids: Vec<String> = got
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!((got.len(), ids.len()), (20, 20));
    assert_eq!(a.app.store().outbox_len().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_and_expired_come_once_per_key_and_expiry() {
    let (receiver, gw) = with_receiver(Backend::Embedded, "[key.expiring, key.expired]").await;
    let (id, expires) = create_expiring(&gw, "short", 2).await;
    // Inside the 7-day window from its creation: key.expiring at once.
    receiver
        .wait_for(Duration::from_secs(5), |all| {
            all.iter().any(|r| r.event() == "key.expiring")
        })
        .await;
    // The minute's scan (run here rather than waited for) finds it ahead of its expiry; run twice,
    // it announces nothing twice.
    gw.app.webhooks().scan_expiries().await.unwrap();
    gw.app.webhooks().scan_expiries().await.unwrap();
    let got = receiver
        .wait_for(Duration::from_secs(10), |all| {
            all.iter().any(|r| r.event() == "key.expired")
        })
        .await;
    let expired = got.iter().find(|r| r.event() == "key.expired").unwrap();
    assert_eq!(expired.json()["key"]["id"], id.as_str());
    assert!(
        OffsetDateTime::now_utc() >= expires,
        "sent at the expiry, not before"
    );
    gw.app.webhooks().scan_expiries().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events: Vec<String> = receiver.all().iter().map(Received::event).collect();
    assert_eq!(events, ["key.expiring", "key.expired"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_that_changed_is_not_announced() {
    let (receiver, gw) = with_receiver(Backend::Embedded, "[key.expired]").await;
    let (id, _) = create_expiring(&gw, "extended", 2).await;
    gw.app.webhooks().scan_expiries().await.unwrap();
    // Extended before it expires: the queued key.expired no longer applies.
    let r = gw
        .admin(
            Method::PATCH,
            &format!("/v1/workspaces/acme/keys/{id}"),
            Some(OPS_TOKEN),
            Some(json!({"expires_at": null})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let entries = deliveries(&gw, 1).await;
    assert_eq!(entries[0]["result"], "dropped", "{entries:?}");
    assert!(receiver.all().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_use_that_spends_the_last_unit_of_a_quota_is_announced_once() {
    let (receiver, gw) = with_receiver(Backend::Embedded, "[key.quota_exhausted]").await;
    let (record, secret) = gw
        .create(NewKey {
            scopes: vec!["sessions:read".into()],
            quota: Some(QuotaSpec {
                limit: 2,
                refill: Refill::None,
                refill_day: None,
            }),
            ..new_key("acme")
        })
        .await;
    for want in [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        assert_eq!(gw.get("/api/v1/sessions", Some(&secret)).await.status, want);
    }
    let got = receiver
        .wait_for(Duration::from_secs(10), |all| !all.is_empty())
        .await;
    assert_eq!(got[0].event(), "key.quota_exhausted");
    assert_eq!(got[0].json()["key"]["id"], record.id.to_string());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.all().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_delivery_survives_a_redis_outage() {
    let addr = support::upstream::closed_port().await;
    let url = format!("http://{addr}/hooks");
    let mut gw = TestGateway::start_owning_redis(
        support::redis::RedisServer::start_persistent(),
        &overlay(&url, "[key.created]"),
    )
    .await;
    let created = gw.admin_create("acme", json!({"name": "outage"})).await;
    assert_eq!(deliveries(&gw, 1).await[0]["result"], "failed");
    // Redis goes away (its append-only file synced) while the delivery waits for its retry.
    gw.redis.as_mut().unwrap().stop_gracefully();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let receiver = Receiver::start_scripted(addr, |_| 200).await;
    gw.redis.as_mut().unwrap().start_again();
    let got = receiver
        .wait_for(Duration::from_secs(15), |all| !all.is_empty())
        .await;
    assert_eq!(got[0].json()["key"]["id"], created["id"]);
    assert_signed(&got[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiry_scan_lease_is_held_by_one_instance_at_a_time() {
    let a = TestGateway::start(Backend::Redis, "").await;
    let b = a.another_instance("").await;
    let (sa, sb) = (a.app.store(), b.app.store());
    assert!(sa.try_lease("expiry-scan", "a", 600).await.unwrap());
    assert!(!sb.try_lease("expiry-scan", "b", 600).await.unwrap());
    // The holder renews; the other takes it once it lapses.
    assert!(sa.try_lease("expiry-scan", "a", 600).await.unwrap());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(sb.try_lease("expiry-scan", "b", 600).await.unwrap());
    assert!(!sa.try_lease("expiry-scan", "a", 600).await.unwrap());
}

/// Keys sharing one expiry, more than a page of the scan: every one is announced, once, and
/// the scan ends.
async fn a_scan_pages_through_keys_sharing_an_expiry(backend: Backend) {
    let receiver = Receiver::start().await;
    let gw = TestGateway::start(backend, &overlay(&receiver.url(), "[key.expiring]")).await;
    let expires = OffsetDateTime::now_utc() + time::Duration::days(3);
    let n = 520;
    for _ in 0..n {
        gw.create(NewKey {
            expires_at: Some(expires),
            ..new_key("acme")
        })
        .await;
    }
    // Created through the library, these produced no event: the scan finds them.
    tokio::time::timeout(Duration::from_secs(60), gw.app.webhooks().scan_expiries())
        .await
        .expect("the scan ends")
        .unwrap();
    let got = receiver
        .wait_for(Duration::from_secs(60), |all| all.len() >= n)
        .await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|r| r.json()["key"]["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n);
    gw.app.webhooks().scan_expiries().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.all().len(), n, "announced once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_pages_through_keys_sharing_an_expiry_embedded() {
    a_scan_pages_through_keys_sharing_an_expiry(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_pages_through_keys_sharing_an_expiry_redis() {
    a_scan_pages_through_keys_sharing_an_expiry(Backend::Redis).await;
}

/// An attempt that outlived its lease settles nothing: the claim that holds the item now does.
async fn a_late_settle_cannot_undo_a_later_claim(backend: Backend) {
    use keygate::store::outbox::OutboxItem;
    let gw = TestGateway::start(backend, "").await;
    let store = gw.app.store();
    let mut item = OutboxItem {
        id: "whd_test_1".into(),
        url: "http://127.0.0.1:9/".into(),
        event: "key.created".into(),
        event_id: "evt_test_1".into(),
        workspace: "acme".into(),
        key_id: keygate::keys::KeyId::generate(),
        expires_ms: None,
        body: "{}".into(),
        created_ms: 1_000,
        attempts: 0,
        due_ms: 1_000,
    };
    assert!(
        store
            .outbox_add(std::slice::from_ref(&item), None)
            .await
            .unwrap()
    );
    // Claimed at 2,000 for 100 ms; its lease lapses; claimed again at 3,000.
    assert_eq!(store.outbox_claim(2_000, 100, 10).await.unwrap().len(), 1);
    assert!(
        store.outbox_claim(2_050, 100, 10).await.unwrap().is_empty(),
        "leased"
    );
    assert_eq!(store.outbox_claim(3_000, 100, 10).await.unwrap().len(), 1);
    // The first attempt fails late and would put it back for a retry: nothing changes.
    item.attempts = 1;
    item.due_ms = 5_000;
    assert!(
        !store
            .outbox_settle(&item.id, 2_100, Some(&item))
            .await
            .unwrap()
    );
    // The second claim delivered it: gone.
    assert!(store.outbox_settle(&item.id, 3_100, None).await.unwrap());
    assert_eq!(store.outbox_len().await.unwrap(), 0);
    assert!(store.outbox_claim(9_000, 100, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_settle_cannot_undo_a_later_claim_embedded() {
    a_late_settle_cannot_undo_a_later_claim(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_settle_cannot_undo_a_later_claim_redis() {
    a_late_settle_cannot_undo_a_later_claim(Backend::Redis).await;
}
