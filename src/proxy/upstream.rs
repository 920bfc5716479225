//! Forwarding to an upstream: the request and response header
//! rules (hop-by-hop removal, `X-Forwarded-*`, identity headers, credential removal), and
//! `Upgrade` tunnels. Bodies (and trailers) stream through untouched in both directions; which
//! target, protocol and connection carry them is `balance.rs`'s and `target.rs`'s.

use http::header::{
    CONNECTION, HOST, HeaderName, HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE,
    TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::balance::Upstream;
use super::pool::PooledBody;
use super::target::Exchange;
use super::{ConnInfo, Decision, X_REQUEST_ID};
use crate::auth::{self, CredentialSources, X_FORWARDED_FOR};
use crate::config::Config;
use crate::error::Reject;
use crate::header_values;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(super) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
/// Client-address headers other than `X-Forwarded-*`: removed unless a trusted proxy set them,
/// so an upstream that reads them cannot be told a spoofed address.
const OTHER_FORWARDING: [HeaderName; 4] = [
    http::header::FORWARDED,
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
];

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the legacy ones still seen in the wild). Headers
/// named in `Connection` are removed too.
const HOP_BY_HOP: [HeaderName; 10] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
    TRAILER,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    HTTP2_SETTINGS,
];
/// `TE`'s place in [`HOP_BY_HOP`].
const TE_INDEX: usize = 3;

/// The header rules of `forward:` and `trusted_proxies`.
pub struct Forwarding {
    keep_credentials: bool,
    key_id: HeaderName,
    workspace: HeaderName,
    scopes: HeaderName,
    sources: CredentialSources,
    trusted: Vec<ipnet::IpNet>,
}

impl Forwarding {
    /// Rules from a validated config.
    pub fn new(config: &Config) -> Self {
        let ih = &config.forward.identity_headers;
        Forwarding {
            keep_credentials: config.forward.keep_credentials,
            key_id: ih.key_id.clone(),
            workspace: ih.workspace.clone(),
            scopes: ih.scopes.clone(),
            sources: CredentialSources::new(config),
            trusted: config.trusted_proxies.clone(),
        }
    }

    /// The identity headers' names: key id, workspace, scopes.
    pub fn identity_headers(&self) -> [&HeaderName; 3] {
        [&self.key_id, &self.workspace, &self.scopes]
    }

    /// Rewrites the request for the upstream, sends it, and prepares the response for the
    /// client. `Upgrade` requests (WebSocket and others) become a tunnel once the upstream
    /// answers 101. `scopes` is the key's effective scope list, as the identity header's value
    /// (`None` on public routes).
    pub async fn forward(
        &self,
        mut req: Request<Incoming>,
        decision: &Decision<'_>,
        scopes: Option<HeaderValue>,
        upstream: &Upstream,
        conn: ConnInfo,
        request_id: &HeaderValue,
    ) -> Result<Response<PooledBody>, Reject> {
        let upgrade = upgrade_protocol(req.headers(), req.version())
            .map(|protocol| (protocol, hyper::upgrade::on(&mut req)));
        let original_host = req.headers().get(HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });

        let rewritten = self.rewrite(
            req.uri(),
            decision.normalized_path.as_deref(),
            decision.credential_in_query,
        );
        let tail = tail(req.uri(), rewritten)?;

        let headers = req.headers_mut();
        // Room for the headers added below at once, rather than the map growing twice.
        headers.reserve(8);
        // `TE: trailers` goes on to HTTP/2 targets (`target.rs`), as gRPC servers want it.
        let trailers = remove_hop_by_hop(headers);
        if let Some((protocol, _)) = &upgrade {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, protocol.clone());
        }
        self.remove_identity_headers(headers);
        if !self.keep_credentials {
            for (bit, name) in self.sources.headers() {
                if decision.credential_headers & bit != 0 {
                    headers.remove(name);
                }
            }
        }
        self.set_forwarded(headers, &conn, original_host);
        headers.insert(X_REQUEST_ID, request_id.clone());
        if let Some(key) = &decision.key {
            headers.insert(self.key_id.clone(), header_values::text(key.id().as_str()));
            headers.insert(self.workspace.clone(), header_values::text(key.workspace()));
            headers.insert(
                self.scopes.clone(),
                scopes.unwrap_or_else(|| HeaderValue::from_static("")),
            );
        }

        let exchange = Exchange {
            upgrade: upgrade.is_some(),
            trailers,
        };
        let mut response = upstream.send(req, tail, exchange).await?;
        match upgrade {
            Some((_, client_side)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let upstream_side = hyper::upgrade::on(&mut response);
                // The tunnel keeps the client connection's slot: it holds its descriptors.
                let slot = conn.slot().cloned();
                tokio::spawn(async move {
                    tunnel(client_side, upstream_side).await;
                    drop(slot);
                });
            }
            _ => {
                remove_hop_by_hop(response.headers_mut());
            }
        }
        // The response goes out in the client connection's protocol, never the upstream's. An
        // `HTTP/1.0` response would be written as such to an HTTP/1.1 client, the connection
        // closed after it and a body of unknown length delimited by that close rather than
        // chunked. Given HTTP/1.1, hyper does what the client's own protocol says: chunked or
        // `Content-Length` for HTTP/1.1, frames for h2, and for an HTTP/1.0 client an HTTP/1.0
        // response, kept alive only if the client asked so and the length is known.
        *response.version_mut() = Version::HTTP_11;
        Ok(response)
    }

    /// Removes client-sent identity headers, including `_` spellings (`X_Keygate_Key_Id`), which
    /// CGI-style upstreams read as the same header.
    fn remove_identity_headers(&self, headers: &mut HeaderMap) {
        let ids = self.identity_headers();
        let spoofed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| {
                ids.iter().any(|id| {
                    name.as_str().len() == id.as_str().len()
                        && name
                            .as_str()
                            .bytes()
                            .zip(id.as_str().bytes())
                            .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
                })
            })
            .cloned()
            .collect();
        for name in spoofed {
            headers.remove(name);
        }
    }

    /// The path and query to forward when they differ from the request's own: the normalised
    /// path the route was matched on (`path`), and the query without the credential parameter
    /// when it carried one that must not be forwarded. `None` when the request's own path and
    /// query can go as they are.
    fn rewrite(&self, uri: &Uri, path: Option<&str>, strip_credential: bool) -> Option<String> {
        let param = self
            .sources
            .query_param
            .as_ref()
            .filter(|_| strip_credential && !self.keep_credentials);
        if path.is_none() && param.is_none() {
            return None;
        }
        let path = path.unwrap_or(uri.path());
        let Some(query) = uri.query() else {
            return Some(path.to_owned());
        };
        let Some(param) = param else {
            return Some(format!("{path}?{query}"));
        };
        // Filter the raw segments themselves: pairing them with the decoded pairs would misalign
        // on empty segments (`a=1&&api_key=…`) and forward the secret.
        let kept: Vec<&str> = query
            .split('&')
            .filter(|raw| !raw.is_empty() && raw.split_once('=').map_or(*raw, |(n, _)| n) != param)
            .collect();
        Some(if kept.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{}", kept.join("&"))
        })
    }

    /// `X-Forwarded-For/-Proto/-Host`. A trusted proxy's values are extended or kept; anyone
    /// else's are replaced, so the upstream never sees a client-chosen address.
    fn set_forwarded(&self, headers: &mut HeaderMap, conn: &ConnInfo, host: Option<HeaderValue>) {
        let peer = conn.peer.ip().to_canonical();
        let trusted = auth::is_trusted(peer, &self.trusted);
        let previous: Vec<&str> = if trusted {
            headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        } else {
            Vec::new()
        };
        let chain = if previous.is_empty() {
            conn.peer_ip_header().clone()
        } else {
            header_values::text(&format!("{}, {peer}", previous.join(", ")))
        };
        headers.insert(X_FORWARDED_FOR, chain);
        if !trusted {
            let found = present(headers, &OTHER_FORWARDING);
            remove_each(headers, &OTHER_FORWARDING, found);
        }
        if !(trusted && headers.contains_key(X_FORWARDED_PROTO)) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(conn.scheme));
        }
        if !(trusted && headers.contains_key(X_FORWARDED_HOST)) {
            match host {
                Some(h) => headers.insert(X_FORWARDED_HOST, h),
                None => headers.remove(X_FORWARDED_HOST),
            };
        }
    }
}

/// The path and query to send, under the target's base path: the request's own (shared, not
/// copied) unless it had to be rewritten.
fn tail(original: &Uri, rewritten: Option<String>) -> Result<PathAndQuery, Reject> {
    match (rewritten, original.path_and_query()) {
        (None, Some(pq)) => Ok(pq.clone()),
        (None, None) => Ok(PathAndQuery::from_static("/")),
        (Some(rewritten), _) => PathAndQuery::try_from(rewritten).map_err(|_| Reject::NoRoute),
    }
}

/// The protocol of an HTTP/1.1 `Upgrade` request (`Connection: upgrade` + `Upgrade: x`).
fn upgrade_protocol(headers: &HeaderMap, version: Version) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let asks = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    // Only WebSocket: any other protocol (h2c above all) would turn the connection into a tunnel
    // whose later requests no route, scope or limit ever sees.
    asks.then(|| headers.get(UPGRADE).cloned())
        .flatten()
        .filter(|p| p.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Removes hop-by-hop headers, including those named by `Connection`; says whether one of
/// them was `TE: trailers`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) -> bool {
    let present = present(headers, &HOP_BY_HOP);
    if !present.contains(&true) {
        return false;
    }
    // Looked up only when the scan saw a TE field.
    let trailers = present[TE_INDEX]
        && headers
            .get(TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    // Read before `Connection` goes. Most of its values are options (`keep-alive`, `close`) or
    // name headers removed below anyway: only other names that are present are collected, so
    // the usual message neither looks anything up nor allocates here.
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case("close")
                && !HOP_BY_HOP
                    .iter()
                    .any(|h| t.eq_ignore_ascii_case(h.as_str()))
                && headers.contains_key(*t)
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    remove_each(headers, &HOP_BY_HOP, present);
    for name in &named {
        headers.remove(name);
    }
    trailers
}

/// Which of `names` `headers` holds, found in one pass over the few names present rather than
/// one hashed lookup per name.
fn present<const N: usize>(headers: &HeaderMap, names: &[HeaderName; N]) -> [bool; N] {
    let mut present = [false; N];
    for name in headers.keys() {
        if let Some(i) = names.iter().position(|n| n == name) {
            present[i] = true;
        }
    }
    present
}

/// Removes the `names` that [`present`] found.
fn remove_each<const N: usize>(headers: &mut HeaderMap, names: &[HeaderName; N], found: [bool; N]) {
    for (name, _) in names.iter().zip(found).filter(|(_, p)| *p) {
        headers.remove(name);
    }
}

async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_go() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert(PROXY_AUTHORIZATION, HeaderValue::from_static("Basic x"));
        h.insert("x-warehouse-id", HeaderValue::from_static("7"));
        assert!(remove_hop_by_hop(&mut h), "TE: trailers was there");
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-warehouse-id"], "7");
        assert_eq!(HOP_BY_HOP[TE_INDEX], TE);
    }

    #[test]
    fn the_tail_is_the_request_own_path_unless_rewritten() {
        let original: Uri = "http://gw.example/api/v1/x?a=1".parse().unwrap();
        assert_eq!(tail(&original, None).unwrap(), "/api/v1/x?a=1");
        assert_eq!(
            tail(&original, Some("/api/v1/x".into())).unwrap(),
            "/api/v1/x"
        );
    }

    #[test]
    fn a_typical_response_loses_only_its_connection_header() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        h.insert(http::header::SERVER, HeaderValue::from_static("nginx"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        assert!(!h.contains_key(CONNECTION));

        let mut h = HeaderMap::new();
        h.insert("x-real-ip", HeaderValue::from_static("10.0.0.1"));
        h.insert(
            http::header::FORWARDED,
            HeaderValue::from_static("for=10.0.0.1"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        let found = present(&h, &OTHER_FORWARDING);
        assert_eq!(found, [true, true, false, false]);
        remove_each(&mut h, &OTHER_FORWARDING, found);
        assert_eq!(h.len(), 1);
        assert_eq!(present(&h, &OTHER_FORWARDING), [false; 4]);
        assert_eq!(h["x-kept"], "1");
    }

    #[test]
    fn upgrade_needs_connection_upgrade_on_http11() {
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(upgrade_protocol(&h, Version::HTTP_11), None);
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert_eq!(
            upgrade_protocol(&h, Version::HTTP_11),
            Some(HeaderValue::from_static("websocket"))
        );
        assert_eq!(upgrade_protocol(&h, Version::HTTP_2), None);
    }
}
