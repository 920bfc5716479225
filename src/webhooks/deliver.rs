//! Delivering the outbox: the loop every instance runs ([`Webhooks::run`]), one attempt
//! ([`Webhooks::attempt`]), the signature ([`signature`]) and the retry schedule ([`backoff`]).

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use time::OffsetDateTime;

use super::{RETRY_FOR, SCAN_INTERVAL, Webhooks, ms};
use crate::store::KeyStore;
use crate::store::outbox::{DeliveryAttempt, DeliveryResult, OutboxItem};

/// The HTTP client of webhook deliveries: HTTP/1.1, `https://` with the system's roots.
pub(super) type Client =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Deliveries claimed at once by one instance.
const CLAIM_BATCH: usize = 32;
/// How often the outbox is looked at when nothing wakes the loop earlier.
const POLL: Duration = Duration::from_secs(1);
/// Longest retry wait.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Whether a delivery's event still applies when it is due.
enum Applies {
    Yes,
    /// No longer true: dropped.
    No(String),
    /// Cannot be told now (the store did not answer): retried.
    Unknown(String),
}

/// `Keygate-Signature`.
pub const KEYGATE_SIGNATURE: &str = "keygate-signature";

pub(super) fn client() -> Client {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable entries of the system store are skipped, as browsers do.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector)
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with secret>`.
pub fn signature(secret: &str, t: i64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body.as_bytes());
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// The wait after failed attempt number `attempts` (1 for the first): `first` doubled per
/// earlier failure, at most an hour, less up to a tenth at random so that deliveries failing
/// together do not all come back together.
pub fn backoff(first: Duration, attempts: u32) -> Duration {
    let doubled = first.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    let wait = doubled.min(MAX_BACKOFF);
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    wait - wait.mul_f64(f64::from(byte[0]) / 2550.0)
}

impl Webhooks {
    /// Delivers until `stop`: claims due deliveries (and scans for expiries every minute, where
    /// it holds the lease) every second or as soon as an event was added here.
    pub async fn run(self: std::sync::Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut next_scan = tokio::time::Instant::now();
        loop {
            self.flush_pending().await;
            if tokio::time::Instant::now() >= next_scan {
                next_scan = tokio::time::Instant::now() + SCAN_INTERVAL;
                if let Err(e) = self.scan_expiries().await {
                    tracing::warn!(error = %e, "webhook expiry scan failed; retrying in a minute");
                }
            }
            let mut claimed = self.claim_and_deliver().await;
            // A full batch: more may be due at once.
            while claimed == CLAIM_BATCH && !*stop.borrow() {
                claimed = self.claim_and_deliver().await;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = self.wake.notified() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        // Held events get one more chance at the store before the process ends.
        self.flush_pending().await;
    }

    /// One claim and its deliveries, concurrently; how many were claimed.
    async fn claim_and_deliver(&self) -> usize {
        // Without endpoints nothing is sent; what waits for a removed one is dropped (and
        // logged) once any endpoint is configured again.
        if self.endpoints().is_empty() {
            return 0;
        }
        let now = ms(OffsetDateTime::now_utc());
        let longest = self
            .endpoints()
            .iter()
            .map(|h| h.timeout)
            .max()
            .unwrap_or(Duration::from_secs(10));
        // Held long enough for the slowest attempt and its settling.
        let lease = super::ms_of(longest) + 30_000;
        match self.store.outbox_claim(now, lease, CLAIM_BATCH).await {
            Ok(items) => {
                let n = items.len();
                let claimed_until = now.saturating_add(lease);
                futures_util::future::join_all(
                    items.into_iter().map(|i| self.attempt(i, claimed_until)),
                )
                .await;
                n
            }
            Err(e) => {
                tracing::debug!(error = %e, "webhook outbox not reachable; retrying");
                0
            }
        }
    }

    /// One attempt at `item` (claimed until `claimed_until`), settled in the outbox and logged.
    async fn attempt(&self, mut item: OutboxItem, claimed_until: i64) {
        let endpoints = self.endpoints();
        let hook = endpoints.iter().find(|h| h.url == item.url);
        let (result, status, error) = match hook {
            None => (
                DeliveryResult::Dropped,
                None,
                Some("the endpoint is no longer in webhooks:".to_owned()),
            ),
            Some(hook) => match self.still_applies(&item).await {
                Applies::No(why) => (DeliveryResult::Dropped, None, Some(why)),
                // Retried like a failed send: the event may well still apply.
                Applies::Unknown(why) => (DeliveryResult::Failed, None, Some(why)),
                Applies::Yes => {
                    item.attempts += 1;
                    match self.send(hook, &item).await {
                        Ok(status) if (200..300).contains(&status) => {
                            (DeliveryResult::Delivered, Some(status), None)
                        }
                        Ok(status) => (
                            DeliveryResult::Failed,
                            Some(status),
                            Some(format!("answered {status}")),
                        ),
                        Err(e) => (DeliveryResult::Failed, None, Some(e)),
                    }
                }
            },
        };
        let now = OffsetDateTime::now_utc();
        let give_up = ms(now) >= item.created_ms.saturating_add(super::ms_of(RETRY_FOR));
        let (result, retry) = match (result, hook) {
            (DeliveryResult::Failed, _) if give_up => (DeliveryResult::Abandoned, None),
            (DeliveryResult::Failed, Some(hook)) => {
                let wait = backoff(hook.first_retry, item.attempts);
                // One last attempt at the 24-hour mark rather than none after it.
                let last = item.created_ms.saturating_add(super::ms_of(RETRY_FOR));
                item.due_ms = (ms(now) + super::ms_of(wait)).min(last);
                (DeliveryResult::Failed, Some(item.clone()))
            }
            (other, _) => (other, None),
        };
        match self
            .store
            .outbox_settle(&item.id, claimed_until, retry.as_ref())
            .await
        {
            Ok(true) => {}
            // The attempt outlived its lease and another claim holds the item: that one settles.
            Ok(false) => {
                tracing::warn!(delivery = %item.id, "webhook attempt outlived its lease; left to the claim that holds it now");
            }
            // Claimed still: after its lease it is claimed (and, if it was delivered, sent)
            // again. At least once.
            Err(e) => {
                tracing::warn!(delivery = %item.id, error = %e, "webhook delivery not settled; it will be attempted again");
            }
        }
        let attempt = DeliveryAttempt {
            delivery_id: item.id.clone(),
            event_id: item.event_id.clone(),
            event: item.event.clone(),
            url: item.url.clone(),
            workspace: item.workspace.clone(),
            key_id: item.key_id.clone(),
            time: now,
            attempt: item.attempts,
            result,
            status,
            error,
            next_attempt_at: retry.as_ref().and_then(|r| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(r.due_ms) * 1_000_000).ok()
            }),
        };
        self.metrics.webhook_delivery(result);
        match result {
            DeliveryResult::Delivered | DeliveryResult::Dropped => {}
            _ => tracing::warn!(
                delivery = %item.id,
                event = %item.event,
                url = %item.url,
                attempt = item.attempts,
                error = attempt.error.as_deref().unwrap_or(""),
                result = ?result,
                "webhook delivery failed"
            ),
        }
        if let Err(e) = self.store.push_delivery(&attempt).await {
            tracing::warn!(delivery = %item.id, error = %e, "webhook attempt not logged");
        }
    }

    /// Whether an expiry event still says something true: the key is there, unrevoked, with the
    /// expiry announced.
    async fn still_applies(&self, item: &OutboxItem) -> Applies {
        let Some(announced) = item.expires_ms else {
            return Applies::Yes;
        };
        match self.store.get(&item.workspace, &item.key_id).await {
            Ok(Some(record))
                if record.revoked_at.is_none() && record.expires_at.map(ms) == Some(announced) =>
            {
                Applies::Yes
            }
            Ok(Some(_)) => Applies::No("the key's expiry changed, or it was revoked".into()),
            Ok(None) => Applies::No("the key was deleted".into()),
            Err(e) => Applies::Unknown(format!("the key could not be read: {e}")),
        }
    }

    /// POSTs the item's body, signed; the status, or why there is none.
    async fn send(
        &self,
        hook: &crate::config::webhooks::Webhook,
        item: &OutboxItem,
    ) -> Result<u16, String> {
        let t = OffsetDateTime::now_utc().unix_timestamp();
        let request = Request::post(&hook.url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(
                USER_AGENT,
                HeaderValue::from_static(concat!("keygate/", env!("CARGO_PKG_VERSION"))),
            )
            .header(KEYGATE_SIGNATURE, signature(&hook.secret, t, &item.body))
            .header("keygate-event", item.event.as_str())
            .header("keygate-delivery", item.id.as_str())
            .body(Full::new(Bytes::from(item.body.clone())))
            .map_err(|e| format!("request: {e}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| crate::error::error_chain(&e))?;
            let status = response.status().as_u16();
            // Read (a little of) the answer, so the connection can be kept.
            let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await;
            Ok(status)
        };
        match tokio::time::timeout(hook.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", hook.timeout)),
        }
    }
}
