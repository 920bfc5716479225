//! [`Reject`]: why a request was refused, and the one function that turns a refusal into the
//! documented JSON error response. Nothing else builds error responses.
//!
//! The client gets a fixed message per code; details go to the log through the variant's
//! fields, never into the body, and never contain a secret.
//!
//! Also [`error_chain`], the one rendering of an error with its causes for messages and logs.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;

/// Why a request was refused. One variant per documented error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// No credential in the request.
    #[error("missing_key")]
    MissingKey,
    /// Malformed credential, bad checksum or unknown secret; the detail is for logs.
    #[error("invalid_key: {0}")]
    InvalidKey(&'static str),
    /// The secret matched a revoked key.
    #[error("key_revoked")]
    KeyRevoked,
    /// The secret matched a key past `expires_at`.
    #[error("key_expired")]
    KeyExpired,
    /// Two different secrets in one request.
    #[error("conflicting_credentials")]
    ConflictingCredentials,
    /// The client IP is not in the key's allowlist.
    #[error("ip_not_allowed")]
    IpNotAllowed,
    /// The key lacks a scope the route needs (the scope, or `one of a, b` for `any_scopes`).
    #[error("insufficient_scope: {0}")]
    InsufficientScope(String),
    /// No route matches.
    #[error("no_route")]
    NoRoute,
    /// The request cannot be read as HTTP (malformed chunked framing, a body that breaks off);
    /// the detail is for logs.
    #[error("malformed_request: {0}")]
    MalformedRequest(String),
    /// An authz request whose headers name no one original request (conventions that
    /// disagree, a header repeated, a target that is not a path); the detail is the message.
    #[error("malformed_request: {0}")]
    UnclearOriginal(&'static str),
    /// A method the gateway never forwards (`CONNECT`: it would open a raw tunnel past every
    /// check).
    #[error("method_not_allowed")]
    MethodNotAllowed,
    /// Rate limit reached; retry after this many seconds.
    #[error("rate_limited (retry after {0}s)")]
    RateLimited(u64),
    /// Quota used up until its next refill, due in this many seconds (`None`: never refills).
    #[error("quota_exceeded")]
    QuotaExceeded(Option<u64>),
    /// The upstream refused the connection or failed; the detail is for logs.
    #[error("upstream_unavailable: {0}")]
    UpstreamUnavailable(String),
    /// The upstream was too slow.
    #[error("upstream_timeout")]
    UpstreamTimeout,
    /// The key is not cached and the store cannot be reached.
    #[error("store_unavailable: {0}")]
    StoreUnavailable(String),
}

impl Reject {
    /// The HTTP status of this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Reject::MissingKey
            | Reject::InvalidKey(_)
            | Reject::KeyRevoked
            | Reject::KeyExpired => StatusCode::UNAUTHORIZED,
            Reject::ConflictingCredentials
            | Reject::MalformedRequest(_)
            | Reject::UnclearOriginal(_) => StatusCode::BAD_REQUEST,
            Reject::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Reject::IpNotAllowed | Reject::InsufficientScope(_) => StatusCode::FORBIDDEN,
            Reject::NoRoute => StatusCode::NOT_FOUND,
            Reject::RateLimited(_) | Reject::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            Reject::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            Reject::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Reject::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Reject::MissingKey => "missing_key",
            Reject::InvalidKey(_) => "invalid_key",
            Reject::KeyRevoked => "key_revoked",
            Reject::KeyExpired => "key_expired",
            Reject::ConflictingCredentials => "conflicting_credentials",
            Reject::IpNotAllowed => "ip_not_allowed",
            Reject::InsufficientScope(_) => "insufficient_scope",
            Reject::NoRoute => "no_route",
            Reject::MalformedRequest(_) | Reject::UnclearOriginal(_) => "malformed_request",
            Reject::MethodNotAllowed => "method_not_allowed",
            Reject::RateLimited(_) => "rate_limited",
            Reject::QuotaExceeded(_) => "quota_exceeded",
            Reject::UpstreamUnavailable(_) => "upstream_unavailable",
            Reject::UpstreamTimeout => "upstream_timeout",
            Reject::StoreUnavailable(_) => "store_unavailable",
        }
    }

    /// The message the client sees.
    pub fn message(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Reject::MissingKey => {
                "No API key was sent. Send it as `Authorization: Bearer <key>` or `Authorization: ApiKey <key>`."
            }
            Reject::InvalidKey(_) => {
                "The API key is not valid. Check that it was copied completely, without extra characters."
            }
            Reject::KeyRevoked => "This API key has been revoked.",
            Reject::KeyExpired => "This API key has expired.",
            Reject::ConflictingCredentials => {
                "The request carries two different API keys. Send exactly one."
            }
            Reject::IpNotAllowed => "This API key may not be used from this IP address.",
            Reject::InsufficientScope(scope) => {
                return Cow::Owned(format!(
                    "This API key lacks the scope this route requires: {scope}."
                ));
            }
            Reject::NoRoute => "No route matches this request.",
            Reject::MalformedRequest(_) => {
                "The request is malformed: its body framing is invalid or it ended early."
            }
            Reject::UnclearOriginal(detail) => {
                return Cow::Owned(format!("The forwarded request is ambiguous: {detail}."));
            }
            Reject::MethodNotAllowed => "This method is not forwarded by the gateway.",
            Reject::RateLimited(_) => "Too many requests. Retry after the time in Retry-After.",
            Reject::QuotaExceeded(_) => {
                "This API key's usage quota is used up until its next refill."
            }
            Reject::UpstreamUnavailable(_) => "The upstream service could not be reached.",
            Reject::UpstreamTimeout => "The upstream service did not answer in time.",
            Reject::StoreUnavailable(_) => {
                "The key index is unavailable, so the key cannot be checked. Retry shortly."
            }
        })
    }

    /// The documented JSON error response, with the headers the code calls for.
    pub fn to_response(&self, request_id: &HeaderValue) -> Response<Full<Bytes>> {
        let mut response = error_response(
            self.status(),
            self.code(),
            &self.message(),
            request_id.to_str().unwrap_or(""),
            None,
        );
        let headers = response.headers_mut();
        match self {
            Reject::MissingKey
            | Reject::InvalidKey(_)
            | Reject::KeyRevoked
            | Reject::KeyExpired => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"keygate\""),
                );
            }
            Reject::RateLimited(secs) | Reject::QuotaExceeded(Some(secs)) => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*secs));
            }
            // RFC 9110 §15.5.6: a 405 lists what is allowed.
            Reject::MethodNotAllowed => {
                headers.insert(
                    http::header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                );
            }
            _ => {}
        }
        response
    }
}

/// `{"error": {"code", "message", "request_id"}}` (plus `field` when one is to blame) with the
/// given status. Shared with the admin API, whose codes are its own.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &str,
    field: Option<&str>,
) -> Response<Full<Bytes>> {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        error: Fields<'a>,
    }
    #[derive(serde::Serialize)]
    struct Fields<'a> {
        code: &'a str,
        message: &'a str,
        request_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        field: Option<&'a str>,
    }
    // Written straight from borrowed fields: refusals can come in floods (key guessing).
    let body = serde_json::to_vec(&Body {
        error: Fields {
            code,
            message,
            request_id,
            field,
        },
    })
    .expect("strings always serialize");
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// An error followed by its causes, `: `-separated (hyper and the HTTP clients put the useful
/// part, such as "connection refused", in a source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn refusals_are_the_documented_json() {
        let rid = HeaderValue::from_static("req-1");
        let r: Response<Full<Bytes>> = Reject::MissingKey.to_response(&rid);
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer realm=\"keygate\"");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "missing_key");
        assert_eq!(v["error"]["request_id"], "req-1");
        assert!(v["error"]["message"].as_str().unwrap().contains("Bearer"));

        let r: Response<Full<Bytes>> = Reject::RateLimited(3).to_response(&rid);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[RETRY_AFTER], "3");
        let r: Response<Full<Bytes>> = Reject::QuotaExceeded(Some(3600)).to_response(&rid);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[RETRY_AFTER], "3600");
        let r: Response<Full<Bytes>> = Reject::QuotaExceeded(None).to_response(&rid);
        assert!(
            !r.headers().contains_key(RETRY_AFTER),
            "never refills: no retry"
        );
        let r: Response<Full<Bytes>> =
            Reject::InsufficientScope("sessions:write".into()).to_response(&rid);
        assert_eq!(r.status(), 403);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("sessions:write"));
    }

    #[test]
    fn details_stay_out_of_the_message() {
        let r = Reject::UpstreamUnavailable("connect to 10.1.2.3:80 refused".into());
        assert!(!r.message().contains("10.1.2.3"));
        let r = Reject::StoreUnavailable("redis timeout".into());
        assert!(!r.message().contains("redis"));
    }
}
