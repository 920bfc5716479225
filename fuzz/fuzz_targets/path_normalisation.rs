//! Path normalisation: `keygate::route::normalize_path` on the input as a path, and
//! `Router::find` on both.
//!
//! Invariants, from the README's "How a request is handled" table:
//! - `None` exactly when the path has a malformed `%` encoding.
//! - Percent-encoded unreserved characters are decoded; every other encoding is kept, in upper
//!   case; runs of literal `/` are merged (so no `//` is left); nothing else changes: the output
//!   decodes to the same bytes as the input with its `/` runs merged, and a reserved character is
//!   encoded in the output exactly when it was in the input.
//! - Normalising is idempotent, and borrows exactly when nothing changed.
//! - A route matches the normalised path unless it does not start with `/` or has a `.`/`..`
//!   segment (also with `;` parameters), a `\`, or an encoded `/` or `\`.
#![no_main]

use std::borrow::Cow;
use std::sync::OnceLock;

use http::Method;
use keygate::config::{Route, RouteMatch};
use keygate::route::{Router, normalize_path};
use libfuzzer_sys::fuzz_target;

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// The path as bytes, each with whether it was percent-encoded; `None` for a malformed `%`.
fn decode(path: &str) -> Option<Vec<(u8, bool)>> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            out.push((u8::from_str_radix(hex, 16).ok()?, true));
            i += 3;
        } else {
            out.push((b[i], false));
            i += 1;
        }
    }
    Some(out)
}

/// A router whose last route takes every path, so only the path's own shape can refuse it.
fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let route = |prefix: &str| Route {
            matcher: RouteMatch {
                path_prefix: Some(prefix.into()),
                ..Default::default()
            },
            upstream: "app".into(),
            public: false,
            scopes: vec![],
            any_scopes: vec![],
            rate_limit: None,
        };
        Router::new(&[route("/api/v1"), route("/")], |_| 0)
    })
}

fn routable(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains('\\')
        && !["%2F", "%2f", "%5C", "%5c"]
            .iter()
            .any(|e| path.contains(e))
        && !path
            .split('/')
            .map(|segment| segment.split(';').next().unwrap_or(segment))
            .any(|segment| segment == "." || segment == "..")
}

fn check(path: &str) {
    // The raw path too: `find` must not panic on anything.
    let _ = router().find(&Method::GET, None, path);

    let Some(decoded) = decode(path) else {
        assert!(
            normalize_path(path).is_none(),
            "malformed % must be refused"
        );
        return;
    };
    let out = normalize_path(path).expect("a well-formed path normalises");
    assert_eq!(
        matches!(out, Cow::Borrowed(_)),
        out == path,
        "borrowed exactly when unchanged"
    );
    assert!(!out.contains("//"), "runs of / are merged");
    let ob = out.as_bytes();
    for (i, _) in out.match_indices('%') {
        let hex = &ob[i + 1..i + 3];
        assert!(
            hex.iter()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c)),
            "encodings are upper case"
        );
    }
    let mut expected = decoded;
    expected.dedup_by(|b, a| *a == (b'/', false) && *b == (b'/', false));
    let got = decode(&out).expect("the output is well-formed");
    assert_eq!(got.len(), expected.len(), "same characters");
    for (&(g, g_enc), &(e, e_enc)) in got.iter().zip(&expected) {
        assert_eq!(g, e, "same characters");
        if is_unreserved(g) {
            assert!(!g_enc, "unreserved characters are decoded");
        } else {
            assert_eq!(g_enc, e_enc, "other characters keep their encoding");
        }
    }
    let again = normalize_path(&out).expect("normal paths stay well-formed");
    assert!(matches!(again, Cow::Borrowed(p) if p == out), "idempotent");

    let found = router().find(&Method::GET, None, &out);
    assert_eq!(found.is_some(), routable(&out), "route match of {out:?}");
}

// The whole input is the path, so seeds and findings read as the paths they are.
fuzz_target!(|data: &[u8]| {
    if let Ok(path) = std::str::from_utf8(data) {
        check(path);
    }
});
