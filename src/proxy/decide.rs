//! The decision on one request: method, route, credential, then the key's stages (failed
//! authentication limit, lookup, revoked, expired, IP allowlist, scopes, rate limit, quota), in
//! the order of `proxy.rs`'s module doc. [`Original`] is the request a decision is about, so
//! that one implementation of the stages serves the proxy and whatever else decides on a
//! request it did not receive itself; [`Gateway::admit_key`] is the key's part alone.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::HOST;
use http::{HeaderMap, Method, Request};
use ipnet::IpNet;
use sha2::{Digest, Sha256};

use super::{Gateway, Policy};
use crate::auth;
use crate::error::Reject;
use crate::keys::{SecretHash, Shape};
use crate::limits::LimitHeaders;
use crate::route::CompiledRoute;
use crate::store::cache::Lookup;
use crate::store::cached::CachedKey;
use crate::store::stats::StoreOp;
use crate::store::{KeyStore, StoreError};

/// The request a decision is about: its method, host, path and query, the headers that may
/// carry its credential, and the client's address.
#[derive(Debug, Clone, Copy)]
pub struct Original<'r> {
    /// The request's method.
    pub method: &'r Method,
    /// `Host`, else the URI's authority.
    pub host: Option<&'r str>,
    /// The path as received (normalised by the decision).
    pub path: &'r str,
    /// The query string, which may carry the credential.
    pub query: Option<&'r str>,
    /// The headers, which may carry the credential.
    pub headers: &'r HeaderMap,
    /// The client's address, as [`auth::client_ip`] determines it.
    pub client_ip: IpAddr,
}

impl<'r> Original<'r> {
    /// The request `req` received from `peer`, behind `trusted` proxies.
    pub fn of<B>(req: &'r Request<B>, peer: IpAddr, trusted: &[IpNet]) -> Self {
        let headers = req.headers();
        Original {
            method: req.method(),
            host: headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().authority().map(|a| a.as_str())),
            path: req.uri().path(),
            query: req.uri().query(),
            headers,
            client_ip: auth::client_ip(peer, headers, trusted),
        }
    }
}

/// The outcome of authentication and authorization for a request that may be forwarded.
#[derive(Debug)]
pub struct Decision<'a> {
    /// The matched route.
    pub route: &'a CompiledRoute,
    /// The key, unless the route is public.
    pub key: Option<Arc<CachedKey>>,
    /// The client's address as determined from the peer and trusted proxies.
    pub client_ip: IpAddr,
    /// Which headers carried the credential (bit 0 = `Authorization`).
    pub credential_headers: u64,
    /// Whether the query string carried the credential.
    pub credential_in_query: bool,
    /// The request path after normalisation, when it differs from the one received: routes
    /// were matched on it, so the upstream gets it too.
    pub normalized_path: Option<String>,
    /// Rate-limit and quota headers for the response (empty for public routes).
    pub limits: LimitHeaders,
}

/// A refused request: why, and the limit headers its response carries (set when the key was
/// authenticated before the refusal).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// Why.
    pub reject: Reject,
    /// `RateLimit-*` and `X-Keygate-Quota-Remaining`.
    pub limits: LimitHeaders,
    /// The key, when the secret was recognised before the refusal (revoked, expired, IP,
    /// scope, limits): the refusal goes to its request log and its access-log line.
    pub key: Option<Arc<CachedKey>>,
}

impl From<Reject> for Refusal {
    fn from(reject: Reject) -> Self {
        Refusal {
            reject,
            limits: LimitHeaders::default(),
            key: None,
        }
    }
}

impl Refusal {
    /// A refusal of a recognised key.
    fn of(key: &Arc<CachedKey>, reject: Reject, limits: LimitHeaders) -> Refusal {
        Refusal {
            reject,
            limits,
            key: Some(key.clone()),
        }
    }
}

impl Gateway {
    /// Authentication, authorization and limits under `policy` for a request received by the
    /// proxy from `peer`, in the documented order; first failure wins.
    pub async fn authorize<'p, B>(
        &self,
        policy: &'p Policy,
        req: &Request<B>,
        peer: IpAddr,
    ) -> Result<Decision<'p>, Refusal> {
        self.decide(policy, &Original::of(req, peer, &policy.trusted))
            .await
    }

    /// The decision on `req`, wherever it was received: method, route, credential, then the
    /// key's stages ([`Gateway::admit_key`]).
    pub async fn decide<'p>(
        &self,
        policy: &'p Policy,
        req: &Original<'_>,
    ) -> Result<Decision<'p>, Refusal> {
        // CONNECT would turn the connection into a raw tunnel that no route, scope or limit sees.
        if req.method == http::Method::CONNECT {
            return Err(Reject::MethodNotAllowed.into());
        }
        let path = crate::route::normalize_path(req.path).ok_or(Reject::NoRoute)?;
        let route = policy
            .router
            .find(req.method, req.host, &path)
            .ok_or(Reject::NoRoute)?;
        let normalized_path = match path {
            std::borrow::Cow::Owned(p) => Some(p),
            std::borrow::Cow::Borrowed(_) => None,
        };
        let (headers, client_ip) = (req.headers, req.client_ip);
        if route.public {
            // No key is checked, but a credential the client sent anyway is still removed
            // before forwarding (unless `keep_credentials`). When the sources cannot be read as
            // one credential (two different secrets, an empty one beside a real one), every
            // source goes: none of them may reach the upstream.
            let (credential_headers, credential_in_query) =
                match policy.sources.extract(headers, req.query) {
                    Ok(sent) => (
                        sent.as_ref().map_or(0, |c| c.header_mask),
                        sent.is_some_and(|c| c.in_query),
                    ),
                    Err(_) => (u64::MAX, true),
                };
            return Ok(Decision {
                route,
                key: None,
                client_ip,
                credential_headers,
                credential_in_query,
                normalized_path,
                limits: LimitHeaders::default(),
            });
        }

        let credential = policy
            .sources
            .extract(headers, req.query)?
            .ok_or(Reject::MissingKey)?;
        let (key, limits) = self
            .admit_key(policy, route, &credential.secret, Some(client_ip), |_| true)
            .await?;
        Ok(Decision {
            route,
            key: Some(key),
            client_ip,
            credential_headers: credential.header_mask,
            credential_in_query: credential.in_query,
            normalized_path,
            limits,
        })
    }

    /// The stages of a presented secret on `route`, in the documented order: failed-authentication
    /// limit, shape and checksum, lookup, revoked, expired, IP allowlist, scopes, rate limit and
    /// quota. Returns the key and its limit headers.
    ///
    /// `client_ip` is `None` when the client's address is not known (a verification that gave
    /// none): the failed-authentication limit is then not applied, and a key with an IP
    /// allowlist is refused. A key that `visible` rejects is answered as unknown before any of
    /// its own stages, so its status is not revealed and nothing of its limits is spent.
    pub async fn admit_key(
        &self,
        policy: &Policy,
        route: &CompiledRoute,
        secret: &str,
        client_ip: Option<IpAddr>,
        visible: impl Fn(&CachedKey) -> bool,
    ) -> Result<(Arc<CachedKey>, LimitHeaders), Refusal> {
        // A client over its failed-authentication limit gets no further: no hash, no lookup.
        let limits = &policy.limits;
        if let Some(ip) = client_ip {
            limits.check_failures(ip)?;
        }
        let failed = |reject| match client_ip {
            Some(ip) => limits.record_failure(ip, reject),
            None => reject,
        };
        if self.format.shape(secret) == Shape::Malformed {
            return Err(failed(Reject::InvalidKey("malformed secret or bad checksum")).into());
        }
        let key = self
            .lookup(secret)
            .await
            .map_err(|e| Reject::StoreUnavailable(e.to_string()))?
            .filter(|key| visible(key))
            .ok_or_else(|| failed(Reject::InvalidKey("unknown secret")))?;

        let refused = |reject| Refusal::of(&key, failed(reject), LimitHeaders::default());
        if key.is_revoked() {
            return Err(refused(Reject::KeyRevoked));
        }
        if key.is_expired() {
            return Err(refused(Reject::KeyExpired));
        }
        // Authenticated: from here every response carries the limit headers.
        let ip_allowed = match client_ip {
            Some(ip) => auth::ip_allowed(ip, key.ip_allowlist()),
            None => key.ip_allowlist().is_empty(),
        };
        let authorized = if ip_allowed {
            auth::check_scopes(
                key.scopes(),
                policy.role_scopes(&key),
                &route.scopes,
                &route.any_scopes,
            )
        } else {
            Err(Reject::IpNotAllowed)
        };
        if let Err(reject) = authorized {
            let headers = limits.peek(&key, route).await;
            return Err(Refusal::of(&key, reject, headers));
        }
        let limits = limits
            .admit(&key, route)
            .await
            .map_err(|(reject, limits)| Refusal::of(&key, reject, limits))?;
        // This use spent the last unit: the one use per period that does.
        if limits.quota_remaining == Some(0)
            && let Some(webhooks) = self.webhooks.get().and_then(std::sync::Weak::upgrade)
        {
            let (workspace, id) = (key.workspace().to_owned(), key.id().clone());
            tokio::spawn(async move {
                webhooks
                    .key_event_by_id("key.quota_exhausted", &workspace, &id)
                    .await;
            });
        }
        Ok((key, limits))
    }

    /// The key of a presented secret: the hot cache, then the store. A secret in a foreign
    /// format may belong to a key imported by its SHA-256 alone: such a key is found by that
    /// digest and re-hashed with the pepper on this, its first successful use.
    pub async fn lookup(&self, secret: &str) -> Result<Option<Arc<CachedKey>>, StoreError> {
        let hash = self.hasher.hash(secret);
        match self.keys.lookup(&hash).await? {
            Lookup::Found(key) => return Ok(Some(key)),
            // Known to be unknown (the SHA-256 index was asked when this entry was made).
            Lookup::Unknown { cached: true } => return Ok(None),
            Lookup::Unknown { cached: false } => {}
        }
        if self.format.shape(secret) != Shape::Foreign {
            return Ok(None);
        }
        let store = self.keys.store();
        let digest = SecretHash(Sha256::digest(secret.as_bytes()).into());
        let timed = self.metrics.store();
        let Some(legacy) = timed
            .time(StoreOp::GetBySha256, store.get_by_sha256(&digest))
            .await?
        else {
            return Ok(None);
        };
        let upgraded = timed
            .time(
                StoreOp::UpgradeHash,
                store.upgrade_hash(&legacy.workspace, &legacy.id, &hash),
            )
            .await?;
        // The miss above cached this hash as unknown, here and maybe on other instances.
        crate::store::invalidation::invalidate_everywhere(&self.keys, &upgraded).await;
        Ok(Some(self.keys.compact(upgraded)))
    }
}
