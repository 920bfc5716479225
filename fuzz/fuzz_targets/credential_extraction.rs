//! Credential extraction: `CredentialSources::extract` over header maps and query strings built
//! from the input, with sources from a parsed config (`auth.extra_headers`, `auth.query_param`)
//! or named by the input; plus `client_ip` over the same headers.
//!
//! Invariants, besides "never panics":
//! - A credential found is non-empty and equals what every source it names carries: the
//!   `Authorization` secret, a trimmed extra header, the percent-decoded query parameter.
//! - The sources it names are exactly the configured ones present in the request.
//! - `Ok(None)` only when no configured source is present at all.
//! - A credential's `Debug` does not depend on the secret.
//! - `client_ip` answers the peer itself when the peer is not a trusted proxy.
#![no_main]

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use keygate::auth::{
    Credential, CredentialSources, X_FORWARDED_FOR, client_ip, parse_authorization, query_pairs,
};
use keygate::config::Config;
use libfuzzer_sys::fuzz_target;

/// Sources as operators configure them, through the real config parser (once per process).
fn configured() -> &'static [CredentialSources] {
    static SOURCES: OnceLock<Vec<CredentialSources>> = OnceLock::new();
    SOURCES.get_or_init(|| {
        let auth_sections = [
            "",
            "auth:\n  extra_headers: [x-api-key]\n",
            "auth:\n  extra_headers: [x-api-key, api-key]\n  query_param: api_key\n",
            "auth:\n  query_param: key\n",
        ];
        auth_sections
            .iter()
            .map(|auth| {
                let text = format!(
                    "secrets:\n  pepper: fuzz-pepper-0123456789\n{auth}\
                     upstreams:\n  app:\n    url: http://127.0.0.1:9\n\
                     routes:\n  - upstream: app\n"
                );
                let config = Config::parse("fuzz.yaml", &text, |_| None)
                    .expect("the fuzz target's config is valid");
                CredentialSources::new(&config)
            })
            .collect()
    })
}

/// The sources, from the input's first line: a digit picks one of the configured sets; anything
/// else is `extra-header,extra-header;param` (`;param` optional), keeping to what config
/// validation accepts (valid names, no duplicates, no `Authorization`, a non-empty parameter).
fn sources(line: &[u8]) -> CredentialSources {
    if let [digit @ b'0'..=b'9'] = line {
        let configured = configured();
        return configured[usize::from(digit - b'0') % configured.len()].clone();
    }
    let (headers, param) = match line.iter().position(|&b| b == b';') {
        Some(i) => (&line[..i], Some(&line[i + 1..])),
        None => (line, None),
    };
    let mut extra_headers: Vec<HeaderName> = Vec::new();
    for name in headers.split(|&b| b == b',') {
        if let Ok(name) = HeaderName::from_bytes(name)
            && name != http::header::AUTHORIZATION
            && !extra_headers.contains(&name)
            // Config validation allows 63: the mask is a u64 and bit 0 is Authorization.
            && extra_headers.len() < 63
        {
            extra_headers.push(name);
        }
    }
    let query_param = param
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .filter(|p| !p.is_empty());
    CredentialSources {
        extra_headers,
        query_param,
    }
}

/// The request, from the remaining lines: a line starting with `?` is the query string; the
/// others are `name:value` headers (values as raw bytes; lines hyper would refuse are skipped).
fn request<'a>(lines: impl Iterator<Item = &'a [u8]>) -> (HeaderMap, Option<String>) {
    let mut headers = HeaderMap::new();
    let mut query = None;
    for line in lines {
        if let Some(q) = line.strip_prefix(b"?") {
            query = Some(String::from_utf8_lossy(q).into_owned());
        } else if let Some(i) = line.iter().position(|&b| b == b':')
            && let Ok(name) = HeaderName::from_bytes(&line[..i])
            && let Ok(value) = HeaderValue::from_bytes(&line[i + 1..])
        {
            headers.append(name, value);
        }
    }
    (headers, query)
}

fn check_found(
    sources: &CredentialSources,
    headers: &HeaderMap,
    query: Option<&str>,
    c: &Credential<'_>,
) {
    assert!(!c.secret.is_empty(), "an empty secret is no credential");
    for (bit, name) in sources.headers() {
        let present = headers.contains_key(name);
        assert_eq!(c.header_mask & bit != 0, present, "mask bit of {name}");
        for value in headers.get_all(name) {
            let text = value
                .to_str()
                .expect("extract refused non-visible-ASCII values");
            let carried = if bit == 1 {
                parse_authorization(text).expect("extract refused bad Authorization")
            } else {
                text.trim()
            };
            assert_eq!(carried, c.secret, "{name} carries the credential");
        }
    }
    let bits_in_use = u64::MAX >> (63 - sources.extra_headers.len());
    assert_eq!(
        c.header_mask & !bits_in_use,
        0,
        "no bits beyond the sources"
    );
    let in_query = match (&sources.query_param, query) {
        (Some(param), Some(query)) => {
            let mut any = false;
            for (_, value) in query_pairs(query).filter(|(n, _)| n == param) {
                assert_eq!(
                    value, c.secret,
                    "the query parameter carries the credential"
                );
                any = true;
            }
            any
        }
        _ => false,
    };
    assert_eq!(c.in_query, in_query);
    let same_shape = Credential {
        secret: Cow::Borrowed("<another secret>"),
        header_mask: c.header_mask,
        in_query: c.in_query,
    };
    assert_eq!(
        format!("{c:?}"),
        format!("{same_shape:?}"),
        "Debug hides the secret"
    );
}

fn check(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let sources = sources(lines.next().unwrap_or_default());
    let (headers, query) = request(lines);
    let query = query.as_deref();
    match sources.extract(&headers, query) {
        Ok(Some(c)) => check_found(&sources, &headers, query, &c),
        Ok(None) => {
            for (_, name) in sources.headers() {
                assert!(
                    !headers.contains_key(name),
                    "{name} present but nothing found"
                );
            }
            if let (Some(param), Some(query)) = (&sources.query_param, query) {
                assert!(
                    query_pairs(query).all(|(n, _)| n != param),
                    "parameter present"
                );
            }
        }
        Err(reject) => {
            // The message is what reaches the log; it must render.
            let _ = reject.to_string();
        }
    }

    let trusted = [
        "10.0.0.0/8".parse().expect("a CIDR"),
        "fd00::/8".parse().expect("a CIDR"),
    ];
    for peer in [
        "10.0.0.1",
        "::ffff:10.0.0.1",
        "fd00::1",
        "203.0.113.9",
        "2001:db8::1",
    ] {
        let peer: IpAddr = peer.parse().expect("an address");
        let ip = client_ip(peer, &headers, &trusted);
        let canonical = peer.to_canonical();
        if !keygate::auth::is_trusted(canonical, &trusted) {
            assert_eq!(
                ip, canonical,
                "an untrusted peer's X-Forwarded-For is never read"
            );
        } else if !headers.contains_key(X_FORWARDED_FOR) {
            assert_eq!(ip, canonical);
        }
    }
}

// Line-based input so seeds and findings read as requests: line 1 the sources, then headers and
// an optional `?query` line.
fuzz_target!(|data: &[u8]| check(data));
