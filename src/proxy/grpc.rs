//! Refusals as gRPC answers. A gRPC client reads the outcome of a call from `grpc-status`, not
//! from the HTTP status or a JSON body (which it would report as a protocol error), so a refused
//! gRPC request (`content-type: application/grpc…`) is answered as Envoy answers one: HTTP 200,
//! no body, `grpc-status` from the refusal's HTTP status and `grpc-message` carrying keygate's
//! error code and message. The HTTP status still goes to metrics, logs and usage.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// The content type of a request that speaks gRPC (`application/grpc`, `…+proto`, gRPC-Web…),
/// which its answer repeats (a gRPC-Web client expects its own).
pub(super) fn content_type(headers: &HeaderMap) -> Option<HeaderValue> {
    headers
        .get(CONTENT_TYPE)
        .filter(|v| v.as_bytes().starts_with(b"application/grpc"))
        .cloned()
}

/// `refusal` (the documented JSON error response) as a gRPC "trailers-only" answer: the same
/// headers (`WWW-Authenticate`, `Retry-After`…), status 200, `grpc-status`, `grpc-message`.
pub(super) fn answer(
    refusal: Response<Full<Bytes>>,
    content_type: HeaderValue,
    code: &str,
    message: &str,
) -> Response<Full<Bytes>> {
    let (mut parts, _) = refusal.into_parts();
    let status = grpc_status(parts.status);
    parts.status = StatusCode::OK;
    let headers = &mut parts.headers;
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(GRPC_STATUS, HeaderValue::from(status));
    headers.insert(
        GRPC_MESSAGE,
        HeaderValue::from_str(&percent_encode(&format!("{code}: {message}")))
            .expect("percent-encoding leaves only visible ASCII"),
    );
    Response::from_parts(parts, Full::new(Bytes::new()))
}

/// The gRPC status code for an HTTP status: the mapping of gRPC's HTTP-to-gRPC status table,
/// with 429 as RESOURCE_EXHAUSTED (a limit, not an outage) and 400 as INVALID_ARGUMENT.
fn grpc_status(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 3,        // INVALID_ARGUMENT
        401 => 16,       // UNAUTHENTICATED
        403 => 7,        // PERMISSION_DENIED
        404 | 405 => 12, // UNIMPLEMENTED
        408 => 4,        // DEADLINE_EXCEEDED
        413 | 429 => 8,  // RESOURCE_EXHAUSTED
        502..=504 => 14, // UNAVAILABLE
        500 => 13,       // INTERNAL
        _ => 2,          // UNKNOWN
    }
}

/// gRPC's percent-encoding of `grpc-message`: bytes outside visible ASCII, and `%`, as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Reject;

    #[test]
    fn a_refusal_becomes_a_trailers_only_grpc_answer() {
        let reject = Reject::KeyRevoked;
        let json = reject.to_response(&HeaderValue::from_static("rid"));
        let grpc = HeaderValue::from_static("application/grpc");
        let answer = answer(json, grpc, reject.code(), &reject.message());
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(answer.headers()[GRPC_STATUS], "16");
        assert_eq!(
            answer.headers()[GRPC_MESSAGE],
            "key_revoked: This API key has been revoked."
        );
        assert!(
            answer
                .headers()
                .contains_key(http::header::WWW_AUTHENTICATE)
        );
        for (http, grpc) in [
            (403, 7),
            (429, 8),
            (502, 14),
            (503, 14),
            (504, 14),
            (404, 12),
        ] {
            assert_eq!(grpc_status(StatusCode::from_u16(http).unwrap()), grpc);
        }
        assert_eq!(percent_encode("a%b é\n"), "a%25b %C3%A9%0A");
    }
}
