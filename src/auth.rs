//! Who is calling: credential extraction from headers (and optionally the query string), the
//! client IP behind trusted proxies, and scope checks. Pure functions over request parts; no I/O.

use std::borrow::Cow;
use std::net::IpAddr;

use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderName};
use ipnet::IpNet;

use crate::error::Reject;

/// Where credentials may come from (`auth:` in config).
#[derive(Debug, Clone, Default)]
pub struct CredentialSources {
    /// Headers carrying a bare secret, besides `Authorization`.
    pub extra_headers: Vec<HeaderName>,
    /// Query parameter carrying a secret.
    pub query_param: Option<String>,
}

/// A credential found in a request. Its `Debug` never shows the secret.
pub struct Credential<'a> {
    /// The presented secret (borrowed from the request unless it was percent-decoded).
    pub secret: Cow<'a, str>,
    /// Headers that carried it, to strip before forwarding. `Authorization` is index 0, then
    /// `extra_headers` in order (bit i set = header i carried it).
    pub header_mask: u64,
    /// Whether the query parameter carried it.
    pub in_query: bool,
}

impl std::fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("secret", &"<redacted>")
            .field("header_mask", &self.header_mask)
            .field("in_query", &self.in_query)
            .finish()
    }
}

/// `Authorization`, as a static: [`CredentialSources::headers`] lends it out.
static AUTHORIZATION_HEADER: HeaderName = AUTHORIZATION;

impl CredentialSources {
    /// From `auth:` in a validated config.
    pub fn new(config: &crate::config::Config) -> Self {
        CredentialSources {
            extra_headers: config.auth.extra_headers.clone(),
            query_param: config.auth.query_param.clone(),
        }
    }

    /// Every header a credential may come in, with its bit in [`Credential::header_mask`]:
    /// `Authorization` first, then `extra_headers` in order.
    pub fn headers(&self) -> impl Iterator<Item = (u64, &HeaderName)> {
        std::iter::once(&AUTHORIZATION_HEADER)
            .chain(&self.extra_headers)
            .enumerate()
            .map(|(i, name)| (1 << i, name))
    }

    /// Finds the request's credential. `Ok(None)` when there is none; two different secrets are
    /// [`Reject::ConflictingCredentials`]; an `Authorization` header with another scheme or an
    /// empty secret is [`Reject::InvalidKey`].
    pub fn extract<'a>(
        &self,
        headers: &'a HeaderMap,
        query: Option<&'a str>,
    ) -> Result<Option<Credential<'a>>, Reject> {
        let mut found: Option<Credential<'a>> = None;
        let mut offer = |secret: Cow<'a, str>, bit: u64, in_query: bool| -> Result<(), Reject> {
            match &mut found {
                None => {
                    found = Some(Credential {
                        secret,
                        header_mask: bit,
                        in_query,
                    })
                }
                Some(c) if c.secret == secret => {
                    c.header_mask |= bit;
                    c.in_query |= in_query;
                }
                Some(_) => return Err(Reject::ConflictingCredentials),
            }
            Ok(())
        };
        for (bit, name) in self.headers() {
            for value in headers.get_all(name) {
                let secret = if bit == 1 {
                    let text = value.to_str().map_err(|_| {
                        Reject::InvalidKey("authorization header is not visible ASCII")
                    })?;
                    parse_authorization(text)?
                } else {
                    let text = value
                        .to_str()
                        .map_err(|_| Reject::InvalidKey("key header is not visible ASCII"))?
                        .trim();
                    if text.is_empty() {
                        return Err(Reject::InvalidKey("empty key header"));
                    }
                    text
                };
                offer(Cow::Borrowed(secret), bit, false)?;
            }
        }
        if let (Some(param), Some(query)) = (&self.query_param, query) {
            for (name, value) in query_pairs(query) {
                if name == param.as_str() {
                    if value.is_empty() {
                        return Err(Reject::InvalidKey("empty key parameter"));
                    }
                    offer(value, 0, true)?;
                }
            }
        }
        Ok(found)
    }
}

/// `Bearer <secret>` or `ApiKey <secret>`: scheme case-insensitive, one space or more.
pub fn parse_authorization(value: &str) -> Result<&str, Reject> {
    let value = value.trim();
    let (scheme, rest) = value
        .split_once([' ', '\t'])
        .ok_or(Reject::InvalidKey("authorization header has no secret"))?;
    if !(scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("apikey")) {
        return Err(Reject::InvalidKey(
            "authorization scheme is neither Bearer nor ApiKey",
        ));
    }
    let secret = rest.trim_start_matches([' ', '\t']);
    if secret.is_empty() {
        return Err(Reject::InvalidKey("authorization header has no secret"));
    }
    Ok(secret)
}

/// `name=value` pairs of a query string, values percent-decoded (allocating only when needed).
pub fn query_pairs(query: &str) -> impl Iterator<Item = (&str, Cow<'_, str>)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (name, percent_decode(value))
    })
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (
                    bytes.get(i + 1).and_then(|&b| hex(b)),
                    bytes.get(i + 2).and_then(|&b| hex(b)),
                ) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy; then the rightmost
/// `X-Forwarded-For` address that is not a trusted proxy. A client cannot spoof its address past
/// an untrusted hop, because an untrusted peer's `X-Forwarded-For` is never read.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    // Later headers were appended by later hops: walk all values right to left.
    let values = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok());
    for value in values.rev() {
        for item in value.rsplit(',') {
            match parse_forwarded_addr(item.trim()) {
                Some(addr) => {
                    client = addr;
                    if !is_trusted(addr, trusted) {
                        return addr;
                    }
                }
                // Garbage in the chain: stop at the last hop we could trust.
                None => return client,
            }
        }
    }
    client
}

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Whether `addr` is one of `trusted_proxies`.
pub fn is_trusted(addr: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&addr))
}

/// Parses `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]`, `1.2.3.4:5678` or `[2001:db8::1]:5678`.
fn parse_forwarded_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        return rest[..end]
            .parse::<IpAddr>()
            .ok()
            .map(|ip| ip.to_canonical());
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// Whether `addr` is allowed by an allowlist (empty = any).
pub fn ip_allowed(addr: IpAddr, allowlist: &[IpNet]) -> bool {
    allowlist.is_empty() || allowlist.iter().any(|net| net.contains(&addr))
}

/// Whether a key holding `key_scopes` plus its role's `role_scopes` has `needed`. `*` grants
/// every scope.
pub fn has_scope(key_scopes: &[String], role_scopes: &[String], needed: &str) -> bool {
    key_scopes
        .iter()
        .chain(role_scopes)
        .any(|s| s == "*" || s == needed)
}

/// Checks a route's requirements: every scope of `all`, and one of `any` when it is not empty.
pub fn check_scopes(
    key_scopes: &[String],
    role_scopes: &[String],
    all: &[String],
    any: &[String],
) -> Result<(), Reject> {
    if let Some(missing) = all.iter().find(|s| !has_scope(key_scopes, role_scopes, s)) {
        return Err(Reject::InsufficientScope(missing.clone()));
    }
    if !any.is_empty() && !any.iter().any(|s| has_scope(key_scopes, role_scopes, s)) {
        return Err(Reject::InsufficientScope(format!(
            "one of {}",
            any.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn sources() -> CredentialSources {
        CredentialSources {
            extra_headers: vec![HeaderName::from_static("x-api-key")],
            query_param: Some("api_key".into()),
        }
    }

    fn secret(h: &HeaderMap, q: Option<&str>) -> Result<Option<String>, Reject> {
        sources()
            .extract(h, q)
            .map(|c| c.map(|c| c.secret.into_owned()))
    }

    #[test]
    fn bearer_and_apikey_schemes_any_case_any_spacing() {
        for v in [
            "Bearer abc",
            "bearer abc",
            "BEARER   abc",
            "ApiKey abc",
            "apikey\tabc",
        ] {
            assert_eq!(
                secret(&headers(&[("authorization", v)]), None)
                    .unwrap()
                    .as_deref(),
                Some("abc"),
                "{v}"
            );
        }
        assert_eq!(
            secret(&headers(&[("authorization", "Basic abc")]), None),
            Err(Reject::InvalidKey(
                "authorization scheme is neither Bearer nor ApiKey"
            ))
        );
        assert!(matches!(
            secret(&headers(&[("authorization", "Bearer")]), None),
            Err(Reject::InvalidKey(_))
        ));
        assert!(matches!(
            secret(&headers(&[("authorization", "Bearer   ")]), None),
            Err(Reject::InvalidKey(_))
        ));
    }

    #[test]
    fn extra_headers_and_query_parameter() {
        let h = headers(&[("x-api-key", " abc ")]);
        let c = sources().extract(&h, None).unwrap().unwrap();
        assert_eq!(c.secret, "abc");
        assert_eq!(c.header_mask, 0b10);
        let empty = HeaderMap::new();
        let c = sources()
            .extract(&empty, Some("a=1&api_key=ab%2Bc"))
            .unwrap()
            .unwrap();
        assert_eq!(c.secret, "ab+c");
        assert!(c.in_query);
        assert_eq!(secret(&HeaderMap::new(), Some("a=1")), Ok(None));
    }

    #[test]
    fn two_different_secrets_conflict_but_the_same_twice_does_not() {
        let same = headers(&[("authorization", "Bearer abc"), ("x-api-key", "abc")]);
        let c = sources().extract(&same, None).unwrap().unwrap();
        assert_eq!(c.header_mask, 0b11);
        let different = headers(&[("authorization", "Bearer abc"), ("x-api-key", "xyz")]);
        assert_eq!(
            secret(&different, None),
            Err(Reject::ConflictingCredentials)
        );
        let two_auth = headers(&[
            ("authorization", "Bearer abc"),
            ("authorization", "Bearer x"),
        ]);
        assert_eq!(secret(&two_auth, None), Err(Reject::ConflictingCredentials));
        assert_eq!(
            secret(
                &headers(&[("authorization", "Bearer abc")]),
                Some("api_key=zzz")
            ),
            Err(Reject::ConflictingCredentials)
        );
    }

    #[test]
    fn client_ip_believes_only_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer_untrusted: IpAddr = "203.0.113.9".parse().unwrap();
        let peer_trusted: IpAddr = "10.1.1.1".parse().unwrap();
        let spoof = headers(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(client_ip(peer_untrusted, &spoof, &trusted), peer_untrusted);
        // Rightmost untrusted address wins; a client-prepended address is ignored.
        let chain = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7, 10.2.2.2")]);
        assert_eq!(
            client_ip(peer_trusted, &chain, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let split = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "198.51.100.8:443"),
        ]);
        assert_eq!(
            client_ip(peer_trusted, &split, &trusted),
            "198.51.100.8".parse::<IpAddr>().unwrap()
        );
        let v6 = headers(&[("x-forwarded-for", "[2001:db8::7]:1234")]);
        assert_eq!(
            client_ip(peer_trusted, &v6, &trusted),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        let garbage = headers(&[("x-forwarded-for", "1.1.1.1, nonsense, 10.3.3.3")]);
        assert_eq!(
            client_ip(peer_trusted, &garbage, &trusted),
            "10.3.3.3".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer_trusted, &HeaderMap::new(), &trusted),
            peer_trusted
        );
        // IPv4-mapped IPv6 peers are compared as IPv4.
        let mapped: IpAddr = "::ffff:10.1.1.1".parse().unwrap();
        assert_eq!(
            client_ip(mapped, &chain, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn allowlists_and_scopes() {
        let list: Vec<IpNet> = vec![
            "203.0.113.7/32".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        assert!(ip_allowed("203.0.113.7".parse().unwrap(), &list));
        assert!(!ip_allowed("203.0.113.8".parse().unwrap(), &list));
        assert!(ip_allowed("2001:db8::1".parse().unwrap(), &list));
        assert!(ip_allowed("192.0.2.1".parse().unwrap(), &[]));

        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let key = s(&["sessions:read"]);
        let role = s(&["resources:read"]);
        assert!(check_scopes(&key, &role, &s(&["sessions:read", "resources:read"]), &[]).is_ok());
        assert_eq!(
            check_scopes(&key, &role, &s(&["sessions:write"]), &[]),
            Err(Reject::InsufficientScope("sessions:write".into()))
        );
        assert!(check_scopes(&key, &[], &[], &s(&["x", "sessions:read"])).is_ok());
        assert!(matches!(
            check_scopes(&key, &[], &[], &s(&["x", "y"])),
            Err(Reject::InsufficientScope(m)) if m == "one of x, y"
        ));
        assert!(check_scopes(&s(&["*"]), &[], &s(&["anything"]), &[]).is_ok());
        assert!(check_scopes(&[], &s(&["*"]), &s(&["anything"]), &[]).is_ok());
    }
}
