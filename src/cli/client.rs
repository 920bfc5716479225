//! The admin API client: one request at a time over HTTP or HTTPS (verified against the
//! system's roots, or only `--ca`), each bounded by `--timeout`, and
//! the mapping of every answer to a JSON value or a [`Failure`]. Owns the token; nothing it
//! returns or prints contains it.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, USER_AGENT};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::Value;

use super::Failure;

/// The most the client reads of one answer. A page of 100 keys is well under 1 MiB; anything
/// much larger is not the admin API.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// A client of one admin API, authenticated with one token.
pub(super) struct AdminClient {
    /// `http://host:port` plus any path prefix, without a trailing `/`.
    base: String,
    /// `Bearer <token>`, marked sensitive.
    authorization: HeaderValue,
    timeout: Duration,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl AdminClient {
    /// A client for `admin_url` (`http://` or `https://`, optionally with a path prefix for a
    /// proxy that mounts the API below one). An `https://` server is verified against the
    /// certificates of `ca` (a PEM file) if given, else the system's roots.
    pub(super) fn new(
        admin_url: &str,
        token: &str,
        timeout: Duration,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, Failure> {
        let base = base_url(admin_url)?;
        let connector = connector(ca)?;
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                Failure::Usage(
                    "the admin token holds characters that cannot be sent in a header".into(),
                )
            })?;
        // Keeps it out of hyper's debug output and tells HPACK not to index it.
        authorization.set_sensitive(true);
        Ok(AdminClient {
            base,
            authorization,
            timeout,
            http: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Sends one request and maps the answer: 2xx → its JSON body (`None` when empty, as for
    /// 204), an error status → [`Failure::Api`], no answer → unreachable or timeout.
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, Failure> {
        self.send(method, path, body).await.map(|(_, value)| value)
    }

    /// [`AdminClient::call`], also returning the success status (201 created or 200 changed,
    /// for `PUT /v1/workspaces/{ws}`).
    pub(super) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Option<Value>), Failure> {
        let uri: Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|e| Failure::Usage(format!("cannot build a request URL: {e}")))?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(AUTHORIZATION, self.authorization.clone())
            .header(ACCEPT, "application/json")
            .header(
                USER_AGENT,
                concat!("keygate-cli/", env!("CARGO_PKG_VERSION")),
            );
        let body = match body {
            Some(v) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|e| Failure::Usage(format!("cannot build the request: {e}")))?;
        let exchange = async {
            let response = self.http.request(req).await.map_err(|e| {
                Failure::Unreachable(format!(
                    "{}: {}",
                    self.base,
                    keygate::error::error_chain(&e)
                ))
            })?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    Failure::Unreachable(format!("{}: the answer broke off: {e}", self.base))
                })?
                .to_bytes();
            Ok::<_, Failure>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Failure::Timeout(self.timeout))??;
        answer(status, &bytes).map(|value| (status, value))
    }
}

/// The value of a successful answer that must have a body.
pub(super) fn expect_body(answer: Option<Value>) -> Result<Value, Failure> {
    answer.ok_or_else(|| Failure::Unexpected("an empty answer where a JSON body was due".into()))
}

/// Maps a status and body to the value or the failure.
fn answer(status: StatusCode, body: &[u8]) -> Result<Option<Value>, Failure> {
    if status.is_success() {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        return serde_json::from_slice(body).map(Some).map_err(|e| {
            Failure::Unexpected(format!("HTTP {status} with a body that is not JSON: {e}"))
        });
    }
    Err(Failure::Api(ApiError::from_answer(status, body)))
}

/// An error answer of the admin API: `{"error": {"code", "message", "request_id", "field"?}}`.
#[derive(Debug)]
pub(super) struct ApiError {
    /// The HTTP status (decides the exit code).
    pub(super) status: StatusCode,
    /// The documented error code, or `http_<status>` when the body is not a keygate error.
    pub(super) code: String,
    /// The API's message.
    pub(super) message: String,
    /// The offending field, for `invalid_request`.
    pub(super) field: Option<String>,
    /// To find the call in the gateway's logs.
    pub(super) request_id: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorFields,
}

#[derive(Deserialize)]
struct ErrorFields {
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
}

impl ApiError {
    /// Reads the documented error shape; anything else (say, a proxy's HTML page) keeps only the
    /// status, since its body may be large and is not meant for this client.
    pub(super) fn from_answer(status: StatusCode, body: &[u8]) -> ApiError {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(ErrorBody { error: e }) => ApiError {
                status,
                code: e.code,
                message: e.message,
                field: e.field,
                request_id: e.request_id,
            },
            Err(_) => ApiError {
                status,
                code: format!("http_{}", status.as_u16()),
                message: format!(
                    "HTTP {status} without a keygate error body (is --admin-url the admin listener?)"
                ),
                field: None,
                request_id: None,
            },
        }
    }
}

impl ApiError {
    /// The code, and the message with the field and request id after it; control characters
    /// made visible so an answer cannot drive the terminal.
    pub(super) fn code_and_message(&self) -> (String, String) {
        use super::render::sanitize;
        let mut message = sanitize(&self.message);
        let extra: Vec<String> = [
            self.field
                .as_deref()
                .map(|x| format!("field: {}", sanitize(x))),
            self.request_id
                .as_deref()
                .filter(|x| !x.is_empty())
                .map(|x| format!("request id: {}", sanitize(x))),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !extra.is_empty() {
            message.push_str(&format!(" ({})", extra.join(", ")));
        }
        (sanitize(&self.code), message)
    }
}

/// Checks `--admin-url` and returns the base the paths are appended to.
fn base_url(admin_url: &str) -> Result<String, Failure> {
    let bad = |why: &str| Failure::Usage(format!("--admin-url: {why}"));
    let uri: Uri = admin_url
        .trim()
        .parse()
        .map_err(|_| bad("not a URL like http://127.0.0.1:9901"))?;
    let scheme = match uri.scheme_str() {
        Some(s @ ("http" | "https")) => s,
        _ => return Err(bad("must start with http:// or https://")),
    };
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("credentials do not belong in the URL; use --token"));
    }
    if uri.query().is_some() {
        return Err(bad("must not have a query string"));
    }
    Ok(format!(
        "{scheme}://{authority}{}",
        uri.path().trim_end_matches('/')
    ))
}

/// The connector: plain HTTP as is; HTTPS verified against `ca` (a PEM file of CA
/// certificates) or, without one, the system's roots. There is no switch to skip verification.
fn connector(ca: Option<&std::path::Path>) -> Result<HttpsConnector<HttpConnector>, Failure> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::Unexpected(format!("tls: {e}")))?;
    let config = match ca {
        Some(path) => {
            let bad = |why: String| Failure::Usage(format!("--ca {}: {why}", path.display()));
            let mut roots = rustls::RootCertStore::empty();
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no certificate in the file".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => {
            let mut roots = rustls::RootCertStore::empty();
            // Unreadable entries of the system store are skipped, as browsers do.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build())
}

/// Percent-encodes a path segment or query value: everything but RFC 3986 unreserved characters.
pub(super) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string from the pairs that have a value (`""` when none has), values encoded.
pub(super) fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let query: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(v))))
        .collect();
    if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls_are_http_or_https_with_an_optional_prefix() {
        assert_eq!(
            base_url("http://127.0.0.1:9901").unwrap(),
            "http://127.0.0.1:9901"
        );
        assert_eq!(
            base_url("http://admin.internal/keygate/").unwrap(),
            "http://admin.internal/keygate"
        );
        assert_eq!(base_url("http://[::1]:9901/").unwrap(), "http://[::1]:9901");
        assert_eq!(
            base_url("https://admin.example.com/").unwrap(),
            "https://admin.example.com"
        );
        for bad in [
            "127.0.0.1:9901",
            "ftp://x",
            "http://u:p@host",
            "http://host/?a=1",
            "not a url",
        ] {
            let e = base_url(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn tokens_that_cannot_be_headers_are_usage_errors_that_do_not_show_them() {
        let e = AdminClient::new(
            "http://127.0.0.1:1",
            "tok\nen-secret",
            Duration::from_secs(1),
            None,
        )
        .err()
        .unwrap();
        assert_eq!(e.exit_code(), 2);
        assert!(!e.to_string().contains("en-secret"), "{e}");
    }

    #[test]
    fn encoding_keeps_unreserved_characters_only() {
        assert_eq!(encode("key_AZaz09-.~"), "key_AZaz09-.~");
        assert_eq!(encode("a/b c?d#é"), "a%2Fb%20c%3Fd%23%C3%A9");
    }

    #[test]
    fn queries_hold_only_the_values_given() {
        assert_eq!(query(&[("a", None)]), "");
        assert_eq!(
            query(&[
                ("workspace", Some("a b")),
                ("limit", None),
                ("cursor", Some("c/1"))
            ]),
            "?workspace=a%20b&cursor=c%2F1"
        );
    }

    #[test]
    fn success_answers_are_json_or_empty() {
        assert_eq!(answer(StatusCode::NO_CONTENT, b"").unwrap(), None);
        assert_eq!(
            answer(StatusCode::OK, br#"{"a":1}"#).unwrap(),
            Some(serde_json::json!({"a": 1}))
        );
        let e = answer(StatusCode::OK, b"<html>").unwrap_err();
        assert_eq!(e.exit_code(), 6);
        assert!(e.to_string().starts_with("unexpected_response: "), "{e}");
    }

    #[test]
    fn error_answers_keep_code_message_field_and_request_id() {
        let body = br#"{"error":{"code":"invalid_request","message":"name is too long","field":"name","request_id":"r-1"}}"#;
        let e = answer(StatusCode::BAD_REQUEST, body).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert_eq!(
            e.to_string(),
            "invalid_request: name is too long (field: name, request id: r-1)"
        );
        let body = br#"{"error":{"code":"upgrade_required","message":"no API access","request_id":"r-2"}}"#;
        let e = answer(StatusCode::FORBIDDEN, body).unwrap_err();
        assert_eq!(e.exit_code(), 4);
        assert_eq!(
            e.to_string(),
            "upgrade_required: no API access (request id: r-2)"
        );
        let e = answer(
            StatusCode::NOT_FOUND,
            br#"{"error":{"code":"not_found","message":"no such key","request_id":""}}"#,
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert_eq!(e.to_string(), "not_found: no such key");
        let e = answer(
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"error":{"code":"store_unavailable","message":"down"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 6);
    }

    #[test]
    fn error_answers_that_are_not_keygate_errors_keep_the_status() {
        let e = answer(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>").unwrap_err();
        assert_eq!(e.exit_code(), 6);
        assert!(
            e.to_string().starts_with("http_502: HTTP 502 Bad Gateway"),
            "{e}"
        );
        assert!(!e.to_string().contains("<html>"));
        let e = answer(StatusCode::NOT_FOUND, b"nope").unwrap_err();
        assert_eq!(e.exit_code(), 3);
    }

    #[test]
    fn error_messages_cannot_drive_the_terminal() {
        let body = br#"{"error":{"code":"x","message":"a\u001b[31mred\u0007"}}"#;
        let e = answer(StatusCode::CONFLICT, body).unwrap_err().to_string();
        assert!(!e.contains('\u{1b}') && !e.contains('\u{7}'), "{e:?}");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_and_a_silent_one_times_out() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let c =
            AdminClient::new(&format!("http://{addr}"), "t", Duration::from_secs(5), None).unwrap();
        let e = c.call(Method::GET, "/v1/x", None).await.unwrap_err();
        assert!(matches!(e, Failure::Unreachable(_)), "{e}");
        assert_eq!(e.exit_code(), 6);

        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (_conn, _) = silent.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let c = AdminClient::new(
            &format!("http://{addr}"),
            "t",
            Duration::from_millis(100),
            None,
        )
        .unwrap();
        let e = c.call(Method::GET, "/v1/x", None).await.unwrap_err();
        assert!(matches!(e, Failure::Timeout(_)), "{e}");
        assert_eq!(
            e.to_string(),
            "timeout: the admin API did not answer within 100ms"
        );
        hold.abort();
    }
}
