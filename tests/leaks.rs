//! Leaked-key reports (SPEC §9) in GitHub's secret scanning partner format, signed with an ECDSA
//! P-256 key pair generated here: a live key reported is revoked (or, with `action: notify`, only
//! reported), audited as `key.leaked` with the report's URL and sent as the `key.leaked` webhook;
//! every token is labelled; a forged, unsigned or altered report changes nothing (401); reports
//! reach the proxy listener at `leaks.public_path` too.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

#[macro_use]
mod support;

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use support::gateway::{Backend, OPS_TOKEN, Reply, TestGateway};
use support::receiver::Receiver;

on_both_backends!(a_live_key_reported_is_revoked_audited_and_announced);

/// A reporter's key pair and its id.
struct Reporter {
    pair: EcdsaKeyPair,
    id: &'static str,
}

impl Reporter {
    fn new(id: &'static str) -> Reporter {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        Reporter {
            pair: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                .unwrap(),
            id,
        }
    }

    /// The public key as `leaks.public_keys` takes it: a PEM SubjectPublicKeyInfo.
    fn pem(&self) -> String {
        let mut der = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        der.extend_from_slice(self.pair.public_key().as_ref());
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    fn sign(&self, body: &[u8]) -> String {
        let sig = self.pair.sign(&SystemRandom::new(), body).unwrap();
        base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
    }
}

fn overlay(reporter: &Reporter, action: &str, hook: &str) -> String {
    let pem = reporter.pem().replace('\n', "\\n");
    format!(
        "leaks:\n  action: {action}\n  public_path: /.well-known/keygate/leaks\n  public_keys:\n    - {{ id: \"{}\", pem: \"{pem}\" }}\n\
         webhooks:\n  - {{ url: \"{hook}\", events: [key.leaked], secret: whsec-test-0123456789abcdef, first_retry: 100ms }}\n",
        reporter.id
    )
}

fn report_body(tokens: &[&str]) -> Vec<u8> {
    let items: Vec<Value> = tokens
        .iter()
        .map(|t| {
            json!({"token": t, "type": "keygate_api_key", "url": "https://github.com/acme/app/blob/main/.env", "source": "content"})
        })
        .collect();
    serde_json::to_vec(&items).unwrap()
}

/// POSTs `body` to `url` with the given signature headers.
async fn post(
    gw: &TestGateway,
    url: String,
    body: Vec<u8>,
    id: Option<&str>,
    sig: Option<String>,
) -> Reply {
    let mut req = Request::post(url).header("content-type", "application/json");
    if let Some(id) = id {
        req = req.header("github-public-key-identifier", id);
    }
    if let Some(sig) = sig {
        req = req.header("github-public-key-signature", sig);
    }
    gw.send(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
}

async fn report(gw: &TestGateway, reporter: &Reporter, tokens: &[&str]) -> Reply {
    let body = report_body(tokens);
    let sig = reporter.sign(&body);
    post(
        gw,
        format!("http://{}/v1/leaks", gw.admin),
        body,
        Some(reporter.id),
        Some(sig),
    )
    .await
}

async fn leaked_audit(gw: &TestGateway) -> Vec<Value> {
    let r = gw
        .admin(Method::GET, "/v1/audit", Some(OPS_TOKEN), None)
        .await;
    r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "key.leaked")
        .cloned()
        .collect()
}

async fn a_live_key_reported_is_revoked_audited_and_announced(backend: Backend) {
    let reporter = Reporter::new("gh-key-1");
    let receiver = Receiver::start().await;
    let gw = TestGateway::start(backend, &overlay(&reporter, "revoke", &receiver.url())).await;
    let (record, secret) = gw.create_key(&["sessions:read"]).await;
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.status,
        StatusCode::OK
    );

    let unknown = "kg_live_notakeyofthisgateway000000000000";
    let r = report(&gw, &reporter, &[secret.expose(), unknown]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        r.json(),
        json!([
            {"token_raw": secret.expose(), "token_type": "keygate_api_key", "label": "true_positive"},
            {"token_raw": unknown, "token_type": "keygate_api_key", "label": "false_positive"},
        ])
    );
    let r = gw.get("/api/v1/sessions", Some(&secret)).await;
    assert_eq!(r.error_code(), "key_revoked");

    let audit = leaked_audit(&gw).await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["key_id"], record.id.to_string());
    assert_eq!(audit[0]["actor"], "github-secret-scanning");
    assert_eq!(
        audit[0]["detail"]["url"],
        "https://github.com/acme/app/blob/main/.env"
    );
    assert_eq!(audit[0]["detail"]["action"], "revoked");

    let got = receiver
        .wait_for(Duration::from_secs(10), |all| !all.is_empty())
        .await;
    let event = got[0].json();
    assert_eq!(event["type"], "key.leaked");
    assert_eq!(event["key"]["id"], record.id.to_string());
    assert_eq!(event["key"]["status"], "revoked");
    assert_eq!(
        event["leak"]["url"],
        "https://github.com/acme/app/blob/main/.env"
    );

    // Reported again: still a true positive, but nothing more happens to a revoked key.
    let r = report(&gw, &reporter, &[secret.expose()]).await;
    assert_eq!(r.json()[0]["label"], "true_positive");
    assert_eq!(leaked_audit(&gw).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_unsigned_or_altered_report_changes_nothing() {
    let reporter = Reporter::new("gh-key-1");
    let forger = Reporter::new("gh-key-1");
    let receiver = Receiver::start().await;
    let gw = TestGateway::start(
        Backend::Embedded,
        &overlay(&reporter, "revoke", &receiver.url()),
    )
    .await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    let body = report_body(&[secret.expose()]);
    let url = || format!("http://{}/v1/leaks", gw.admin);
    let altered = {
        let other = report_body(&[secret.expose(), "kg_live_x"]);
        (other, reporter.sign(&body))
    };
    let attempts: Vec<(Vec<u8>, Option<&str>, Option<String>)> = vec![
        (body.clone(), Some("gh-key-1"), Some(forger.sign(&body))),
        (body.clone(), None, None),
        (body.clone(), Some("gh-key-1"), None),
        (body.clone(), Some("another-id"), Some(reporter.sign(&body))),
        (
            body.clone(),
            Some("gh-key-1"),
            Some("bm90IGEgc2lnbmF0dXJl".into()),
        ),
        (altered.0, Some("gh-key-1"), Some(altered.1)),
    ];
    for (i, (body, id, sig)) in attempts.into_iter().enumerate() {
        let r = post(&gw, url(), body, id, sig).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "attempt {i}");
        assert_eq!(r.json()["error"]["code"], "unauthorized", "attempt {i}");
    }
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.status,
        StatusCode::OK
    );
    assert!(leaked_audit(&gw).await.is_empty());

    // Signed but not a report.
    let body = b"{\"token\": \"x\"}".to_vec();
    let sig = reporter.sign(&body);
    let r = post(&gw, url(), body, Some("gh-key-1"), Some(sig)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.all().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_notify_the_key_is_reported_and_keeps_working_and_the_proxy_takes_reports() {
    let reporter = Reporter::new("gh-key-2");
    let receiver = Receiver::start().await;
    let gw = TestGateway::start(
        Backend::Embedded,
        &overlay(&reporter, "notify", &receiver.url()),
    )
    .await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    // GitHub reaches the proxy listener, at leaks.public_path.
    let body = report_body(&[secret.expose()]);
    let sig = reporter.sign(&body);
    let r = post(
        &gw,
        gw.url("/.well-known/keygate/leaks"),
        body,
        Some("gh-key-2"),
        Some(sig),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()[0]["label"], "true_positive");
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.status,
        StatusCode::OK
    );
    let audit = leaked_audit(&gw).await;
    assert_eq!(audit[0]["detail"]["action"], "notified");
    let got = receiver
        .wait_for(Duration::from_secs(10), |all| !all.is_empty())
        .await;
    assert_eq!(got[0].json()["key"]["status"], "active");
    // Nothing else on that path is forwarded or accepted.
    let r = gw.get("/.well-known/keygate/leaks", None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}
