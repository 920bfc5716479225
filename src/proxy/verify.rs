//! Key verification for services that check keys themselves (`POST /v1/verify`, SPEC §9): the
//! proxy's own stages ([`Gateway::admit_key`]) on a secret, with the scopes the caller asks for
//! in place of a route's, and the verification recorded as a proxied request would be (a use
//! when valid, a request-log entry with its code when a recognised key is refused).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, StatusCode};

use super::{Gateway, Refusal};
use crate::error::Reject;
use crate::limits::LimitHeaders;
use crate::route::CompiledRoute;
use crate::store::cached::CachedKey;

/// The request-log path of a verification.
const VERIFY_PATH: &str = "/v1/verify";

/// A key that passed every stage.
#[derive(Debug)]
pub struct Verified {
    /// The key.
    pub key: Arc<CachedKey>,
    /// Its effective scopes: its own and its role's.
    pub scopes: Vec<String>,
    /// Its rate-limit and quota state after this use.
    pub limits: LimitHeaders,
}

impl Gateway {
    /// Verifies `secret` for `scopes` (all required) from a client at `ip` (`None`: unknown),
    /// asked by a caller at `caller_ip`. Keys that `visible` rejects are unknown to this caller.
    pub async fn verify(
        &self,
        secret: &str,
        scopes: Vec<String>,
        ip: Option<IpAddr>,
        caller_ip: IpAddr,
        visible: impl Fn(&CachedKey) -> bool,
    ) -> Result<Verified, Refusal> {
        let started = Instant::now();
        let policy = self.policy.load_full();
        let route = CompiledRoute::for_scopes(scopes);
        let outcome = if secret.is_empty() {
            Err(Reject::MissingKey.into())
        } else {
            self.admit_key(&policy, &route, secret, ip, visible).await
        };
        let logged_ip = ip.unwrap_or(caller_ip);
        let record = |key: &Arc<CachedKey>, status: StatusCode, code: Option<&'static str>| {
            let latency = started.elapsed();
            self.usage.record(
                key.clone(),
                &Method::POST,
                VERIFY_PATH,
                status,
                logged_ip,
                latency,
                code,
            );
        };
        match outcome {
            Ok((key, limits)) => {
                record(&key, StatusCode::OK, None);
                let scopes = policy
                    .effective_scopes(&key)
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                Ok(Verified {
                    key,
                    scopes,
                    limits,
                })
            }
            Err(refusal) => {
                if let Some(key) = &refusal.key {
                    record(key, refusal.reject.status(), Some(refusal.reject.code()));
                }
                Err(refusal)
            }
        }
    }
}
