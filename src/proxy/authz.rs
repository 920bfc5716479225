//! Forward authentication (`listen.authz`, SPEC §9): an ingress that keeps its own proxying (nginx
//! `auth_request`, Envoy `ext_authz`, Traefik `forwardAuth`, Caddy `forward_auth`) asks keygate
//! about each request it received. The request asked about (the *original*) is read from the
//! ingress's headers ([`original_target`]) and decided by [`Gateway::decide`], the proxy's own
//! stages, so limits, quotas, usage and request logs count it exactly as a proxied request.
//! Allowed: 200 with no body, the identity headers (empty on public routes, so that an ingress
//! copying them overwrites whatever the client sent under those names) and the limit headers.
//! Refused: the proxy's documented response. Nothing is forwarded.
//!
//! nginx discards the body of an `auth_request` answer and turns every status but 2xx, 401 and
//! 403 into 500; a request carrying `X-Keygate-Error-Header: on` therefore also gets the JSON
//! error in an `X-Keygate-Error` header, for nginx's `auth_request_set` to pass on
//! (`deploy/nginx/`).

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;

use super::upstream::X_FORWARDED_HOST;
use super::{Answered, ConnInfo, Gateway, Original, ProxyBody, X_REQUEST_ID};
use crate::auth;
use crate::error::Reject;

/// Traefik's and Caddy's convention.
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
/// nginx's (`auth_request` snippets, ingress-nginx).
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");
/// Asks for the JSON error in a header as well as in the body.
pub const X_KEYGATE_ERROR_HEADER: HeaderName = HeaderName::from_static("x-keygate-error-header");
/// The JSON error, for ingresses that drop the body of a refusal.
pub const X_KEYGATE_ERROR: HeaderName = HeaderName::from_static("x-keygate-error");

/// The original request's method, host and target, as the ingress reported them.
#[derive(Debug)]
pub struct Target<'r> {
    /// Its method.
    pub method: Cow<'r, Method>,
    /// Its host (with any port), if known.
    pub host: Option<Cow<'r, str>>,
    /// Its path.
    pub path: Cow<'r, str>,
    /// Its query string.
    pub query: Option<Cow<'r, str>>,
}

/// The original request of an authz request: method from `X-Forwarded-Method` or
/// `X-Original-Method`, target from `X-Forwarded-Uri`, `X-Original-URI` or `X-Original-URL`,
/// host from `X-Forwarded-Host` or `X-Original-URL`, each else from the request itself (Envoy
/// sends the original method and path as its own request line, and `Host`).
///
/// Every convention present must name the same request, and each header must appear once:
/// otherwise a client could add one of these headers to its request, which an ingress passes
/// on, and be decided as a request it is not (a public route's path, say). Refused as
/// `malformed_request`.
pub fn original_target<B>(req: &Request<B>) -> Result<Target<'_>, Reject> {
    let headers = req.headers();
    let url = match single(headers, &X_ORIGINAL_URL)? {
        Some(url) => Some(
            Uri::from_str(url)
                .ok()
                .filter(|u| u.scheme().is_some() && u.authority().is_some())
                .ok_or(Reject::UnclearOriginal(
                    "X-Original-URL is not an absolute URL",
                ))?,
        ),
        None => None,
    };

    let method = agree(
        [
            single(headers, &X_FORWARDED_METHOD)?,
            single(headers, &X_ORIGINAL_METHOD)?,
        ],
        "X-Forwarded-Method and X-Original-Method name different methods",
    )?;
    let method = match method {
        Some(m) => Cow::Owned(
            Method::from_bytes(m.as_bytes())
                .map_err(|_| Reject::UnclearOriginal("the forwarded method is not a method"))?,
        ),
        None => Cow::Borrowed(req.method()),
    };

    let url_target = url
        .as_ref()
        .map(|u| u.path_and_query().map_or("/", |pq| pq.as_str()));
    let target = agree(
        [
            single(headers, &X_FORWARDED_URI)?,
            single(headers, &X_ORIGINAL_URI)?,
            url_target,
        ],
        "X-Forwarded-Uri, X-Original-URI and X-Original-URL name different targets",
    )?;
    let (path, query) = match target {
        Some(t) => {
            let pq = PathAndQuery::from_str(t)
                .ok()
                .filter(|pq| pq.path().starts_with('/'))
                .ok_or(Reject::UnclearOriginal(
                    "the forwarded target is not a path and query",
                ))?;
            (
                Cow::Owned(pq.path().to_owned()),
                pq.query().map(|q| Cow::Owned(q.to_owned())),
            )
        }
        None => (
            Cow::Borrowed(req.uri().path()),
            req.uri().query().map(Cow::Borrowed),
        ),
    };

    let url_host = url.as_ref().and_then(|u| u.authority()).map(|a| a.as_str());
    let forwarded_host = single(headers, &X_FORWARDED_HOST)?;
    if let (Some(a), Some(b)) = (forwarded_host, url_host)
        && !a.eq_ignore_ascii_case(b)
    {
        return Err(Reject::UnclearOriginal(
            "X-Forwarded-Host and X-Original-URL name different hosts",
        ));
    }
    let host = forwarded_host
        .or(url_host)
        .map(|h| Cow::Owned(h.to_owned()))
        .or_else(|| {
            headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().authority().map(|a| a.as_str()))
                .map(Cow::Borrowed)
        });
    Ok(Target {
        method,
        host,
        path,
        query,
    })
}

/// The one value of `name`, if present; a header that appears twice (or is not text) names no
/// one request.
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, Reject> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Reject::UnclearOriginal(
            "a forwarded-request header appears more than once",
        ));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| Reject::UnclearOriginal("a forwarded-request header is not text"))
}

/// The value the present conventions agree on, if any is present.
fn agree<'h, const N: usize>(
    values: [Option<&'h str>; N],
    disagree: &'static str,
) -> Result<Option<&'h str>, Reject> {
    let mut present = values.into_iter().flatten();
    let Some(first) = present.next() else {
        return Ok(None);
    };
    if present.any(|other| other != first) {
        return Err(Reject::UnclearOriginal(disagree));
    }
    Ok(Some(first))
}

impl Gateway {
    /// Answers one request on `listen.authz`: whether the original request it reports may go
    /// to the upstream, decided and recorded as the proxy would.
    pub async fn authz(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let started = Instant::now();
        let request_id = self.ids.for_request(req.headers());
        let policy = self.policy.load_full();
        let error_header = req
            .headers()
            .get(X_KEYGATE_ERROR_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"on"));
        let client_ip = auth::client_ip(conn.peer.ip(), req.headers(), &policy.trusted);
        let target = original_target(&req);
        let decided = match &target {
            Ok(t) => {
                let original = Original {
                    method: &t.method,
                    host: t.host.as_deref(),
                    path: &t.path,
                    query: t.query.as_deref(),
                    headers: req.headers(),
                    client_ip,
                };
                self.decide(&policy, &original).await
            }
            Err(reject) => Err(reject.clone().into()),
        };
        let (mut response, key, refused) = match decided {
            Ok(decision) => {
                self.metrics.request_allowed();
                let mut response = Response::new(Either::Left(Full::new(Bytes::new())));
                let headers = response.headers_mut();
                let [key_id, workspace, scopes] = policy.forwarding.identity_headers();
                let key = decision.key;
                match &key {
                    Some(k) => {
                        headers.insert(key_id.clone(), crate::header_values::text(k.id().as_str()));
                        headers
                            .insert(workspace.clone(), crate::header_values::text(k.workspace()));
                        headers.insert(scopes.clone(), policy.scopes_header(k));
                    }
                    None => {
                        for name in [key_id, workspace, scopes] {
                            headers.insert(name.clone(), HeaderValue::from_static(""));
                        }
                    }
                }
                decision.limits.apply(headers);
                (response, key, None)
            }
            Err(refusal) => {
                self.metrics.request_refused(&refusal.reject);
                let response = refusal.reject.to_response(&request_id);
                let (mut parts, body) = response.into_parts();
                refusal.limits.apply(&mut parts.headers);
                if error_header {
                    // The body is one small buffer already: collecting it copies nothing.
                    let bytes = body
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    if let Ok(value) = HeaderValue::from_maybe_shared(bytes.clone()) {
                        parts.headers.insert(X_KEYGATE_ERROR, value);
                    }
                    let response = Response::from_parts(parts, Either::Left(Full::new(bytes)));
                    (response, refusal.key, Some(refusal.reject.code()))
                } else {
                    let response = Response::from_parts(parts, Either::Left(body));
                    (response, refusal.key, Some(refusal.reject.code()))
                }
            }
        };
        response
            .headers_mut()
            .insert(X_REQUEST_ID, request_id.clone());
        // A request whose original could not be read is logged as the request received.
        let (method, path) = match &target {
            Ok(t) => (t.method.as_ref(), t.path.as_ref()),
            Err(_) => (req.method(), req.uri().path()),
        };
        self.settle(
            &policy,
            Answered {
                status: response.status(),
                request_id: &request_id,
                method,
                path,
                key,
                refused,
                client_ip,
                started,
                upstream: None,
            },
        );
        debug_assert!(response.status() == StatusCode::OK || refused.is_some());
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Method, host, path and query.
    type Named = (String, Option<String>, String, Option<String>);

    fn target(headers: &[(&str, &str)], line: &str) -> Result<Named, Reject> {
        let mut req = Request::builder().method("GET").uri(line);
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let req = req.body(()).unwrap();
        original_target(&req).map(|t| {
            (
                t.method.to_string(),
                t.host.map(Cow::into_owned),
                t.path.into_owned(),
                t.query.map(Cow::into_owned),
            )
        })
    }

    #[test]
    fn each_convention_names_the_original() {
        let traefik = target(
            &[
                ("x-forwarded-method", "POST"),
                ("x-forwarded-uri", "/api/v1/sessions?a=1"),
                ("x-forwarded-host", "api.example.com"),
                ("host", "keygate:8081"),
            ],
            "/",
        );
        assert_eq!(
            traefik.unwrap(),
            (
                "POST".into(),
                Some("api.example.com".into()),
                "/api/v1/sessions".into(),
                Some("a=1".into())
            )
        );
        let nginx = target(
            &[
                ("x-original-method", "DELETE"),
                ("x-original-uri", "/x/y"),
                ("host", "h"),
            ],
            "/authz",
        );
        assert_eq!(
            nginx.unwrap(),
            ("DELETE".into(), Some("h".into()), "/x/y".into(), None)
        );
        let url = target(
            &[("x-original-url", "https://a.example:8443/p?q")],
            "/authz",
        );
        assert_eq!(
            url.unwrap(),
            (
                "GET".into(),
                Some("a.example:8443".into()),
                "/p".into(),
                Some("q".into())
            )
        );
        let envoy = target(&[("host", "api.example.com")], "/api/v1/sessions?x=2");
        assert_eq!(
            envoy.unwrap(),
            (
                "GET".into(),
                Some("api.example.com".into()),
                "/api/v1/sessions".into(),
                Some("x=2".into())
            )
        );
    }

    #[test]
    fn conventions_that_disagree_or_repeat_name_no_request() {
        let unclear =
            |h: &[(&str, &str)]| matches!(target(h, "/"), Err(Reject::UnclearOriginal(_)));
        // A client's own X-Forwarded-Uri beside the one nginx sets.
        assert!(unclear(&[
            ("x-original-uri", "/api/v1/sessions"),
            ("x-forwarded-uri", "/health")
        ]));
        assert!(unclear(&[
            ("x-original-method", "POST"),
            ("x-forwarded-method", "GET")
        ]));
        assert!(unclear(&[
            ("x-original-url", "http://a/x"),
            ("x-original-uri", "/y")
        ]));
        assert!(unclear(&[
            ("x-original-url", "http://a/x"),
            ("x-forwarded-host", "b")
        ]));
        assert!(unclear(&[
            ("x-forwarded-uri", "/a"),
            ("x-forwarded-uri", "/a")
        ]));
        assert!(unclear(&[("x-forwarded-uri", "api/v1")]));
        assert!(unclear(&[("x-forwarded-uri", "*")]));
        assert!(unclear(&[("x-original-url", "/relative")]));
        assert!(unclear(&[("x-forwarded-method", "GE T")]));
        // Agreeing conventions are one request.
        assert!(
            target(
                &[
                    ("x-original-uri", "/a?b"),
                    ("x-forwarded-uri", "/a?b"),
                    ("x-original-url", "http://h/a?b")
                ],
                "/"
            )
            .is_ok()
        );
    }
}
