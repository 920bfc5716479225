//! The dashboard (SPEC §6 "Dashboard"): static assets compiled into the binary and served on
//! the admin listener, `/` for the page and `/assets/<file>` for the rest, with the headers
//! that confine them. The page is a client of the admin API with the signed-in caller's token;
//! it can do nothing the API would refuse that caller.
//!
//! Each asset is served with a strong `ETag` (BLAKE3 of its bytes) and `Cache-Control:
//! no-cache`, so a browser revalidates on every load (one 304 per file) and never runs the
//! assets of an older keygate after an upgrade.

use std::sync::LazyLock;

use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, HeaderMap, HeaderValue,
    IF_NONE_MATCH, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{Response, StatusCode};
use http_body_util::Full;

/// What the page may load and run: its own scripts, styles and images, calls to its own origin
/// (the admin API), nothing inline, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The assets: path under `/assets/` (the page itself is `index.html`), bytes, content type.
const ASSETS: &[(&str, &[u8], &str)] = &[
    (
        "index.html",
        include_bytes!("dashboard/index.html"),
        "text/html; charset=utf-8",
    ),
    (
        "style.css",
        include_bytes!("dashboard/style.css"),
        "text/css; charset=utf-8",
    ),
    (
        "favicon.svg",
        include_bytes!("dashboard/favicon.svg"),
        "image/svg+xml",
    ),
    (
        "app.js",
        include_bytes!("dashboard/app.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "api.js",
        include_bytes!("dashboard/api.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "dom.js",
        include_bytes!("dashboard/dom.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "dialog.js",
        include_bytes!("dashboard/dialog.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "format.js",
        include_bytes!("dashboard/format.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "pages.js",
        include_bytes!("dashboard/pages.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "fields.js",
        include_bytes!("dashboard/fields.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "chart.js",
        include_bytes!("dashboard/chart.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "signin.js",
        include_bytes!("dashboard/signin.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "key-table.js",
        include_bytes!("dashboard/key-table.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "key-form.js",
        include_bytes!("dashboard/key-form.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "secret-dialog.js",
        include_bytes!("dashboard/secret-dialog.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "key-actions.js",
        include_bytes!("dashboard/key-actions.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "key-details.js",
        include_bytes!("dashboard/key-details.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "audit-log.js",
        include_bytes!("dashboard/audit-log.js"),
        "text/javascript; charset=utf-8",
    ),
];

/// An asset and its entity tag, computed once.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    etag: HeaderValue,
}

static TABLE: LazyLock<Vec<(&'static str, Asset)>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|&(path, body, content_type)| {
            let hash = blake3::hash(body).to_hex();
            let etag = HeaderValue::from_str(&format!("\"{}\"", &hash[..32]))
                .expect("hex digits in quotes are a valid header value");
            (
                path,
                Asset {
                    body,
                    content_type,
                    etag,
                },
            )
        })
        .collect()
});

/// The headers every dashboard response carries (the admin API's JSON answers too: they are
/// read by the page, never rendered by the browser).
pub fn confine(headers: &mut HeaderMap) {
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// The response for asset `path` (`index.html` for the page), `None` if there is none.
/// `request_headers` may hold `If-None-Match`.
pub fn serve(path: &str, request_headers: &HeaderMap) -> Option<Response<Full<Bytes>>> {
    let asset = TABLE.iter().find(|(p, _)| *p == path).map(|(_, a)| a)?;
    let fresh = request_headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == asset.etag || tag.trim() == "*");
    let mut response = if fresh {
        let mut r = Response::new(Full::default());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(asset.body)));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        r
    };
    let headers = response.headers_mut();
    headers.insert(ETAG, asset.etag.clone());
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    confine(headers);
    Some(response)
}

/// Total bytes of the assets (reported in the README; checked by a test).
pub fn total_size() -> usize {
    ASSETS.iter().map(|(_, body, _)| body.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_revalidate_by_etag() {
        let first = serve("index.html", &HeaderMap::new()).expect("the page");
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(IF_NONE_MATCH, etag);
        let second = serve("index.html", &again).expect("the page");
        assert_eq!(second.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(second.headers()[CONTENT_SECURITY_POLICY], CSP);
        assert!(serve("../Cargo.toml", &HeaderMap::new()).is_none());
    }
}
