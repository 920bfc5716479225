//! The route table: which configured route (and so which upstream and which scopes) a request
//! falls under. First match in file order wins.

use std::borrow::Cow;

use http::Method;

use crate::config::{RateLimitSpec, Route};

/// A route ready for matching.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    /// Position in the config file, for logs.
    pub index: usize,
    host: Option<String>,
    path: Option<String>,
    path_prefix: Option<String>,
    methods: Vec<Method>,
    /// Index of the upstream in the gateway's upstream list.
    pub upstream: usize,
    /// Skips authentication.
    pub public: bool,
    /// All required.
    pub scopes: Vec<String>,
    /// One suffices.
    pub any_scopes: Vec<String>,
    /// Route-specific limit.
    pub rate_limit: Option<RateLimitSpec>,
}

impl CompiledRoute {
    /// A route that only requires `scopes`, for a key checked outside any request
    /// (`POST /v1/verify`): matches nothing, has no limit of its own, so the key's own rate
    /// limit (key, workspace, role or default) applies, the same bucket its proxied requests
    /// spend on routes without a limit of their own.
    pub fn for_scopes(scopes: Vec<String>) -> CompiledRoute {
        CompiledRoute {
            index: usize::MAX,
            host: None,
            path: None,
            path_prefix: None,
            methods: Vec::new(),
            upstream: usize::MAX,
            public: false,
            scopes,
            any_scopes: Vec::new(),
            rate_limit: None,
        }
    }
}

/// Routes in file order.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<CompiledRoute>,
}

impl Router {
    /// Compiles validated routes; `upstream_index` maps an upstream name to its index.
    pub fn new(routes: &[Route], upstream_index: impl Fn(&str) -> usize) -> Self {
        Router {
            routes: routes
                .iter()
                .enumerate()
                .map(|(index, r)| CompiledRoute {
                    index,
                    host: r.matcher.host.as_ref().map(|h| h.to_ascii_lowercase()),
                    path: r.matcher.path.clone(),
                    path_prefix: r
                        .matcher
                        .path_prefix
                        .as_ref()
                        .map(|p| p.trim_end_matches('/').to_owned()),
                    methods: r.matcher.methods.clone(),
                    upstream: upstream_index(&r.upstream),
                    public: r.public,
                    scopes: r.scopes.clone(),
                    any_scopes: r.any_scopes.clone(),
                    rate_limit: r.rate_limit,
                })
                .collect(),
        }
    }

    /// The first route matching the request. `host` may carry a port. Paths with `.` or `..`
    /// segments (plain or percent-encoded) match nothing: an upstream that normalises them would
    /// otherwise serve a resource other than the one whose route was checked.
    pub fn find(&self, method: &Method, host: Option<&str>, path: &str) -> Option<&CompiledRoute> {
        // `*` (OPTIONS) and authority-form targets are no paths a route can mean.
        if !path.starts_with('/') || has_dot_segment(path) {
            return None;
        }
        // Servlet containers (Tomcat, Jetty) drop `;` path parameters before they route:
        // `/admin;jsessionid=x` is their `/admin`, so it must meet `/admin`'s route here, not
        // fall through to a broader one. Only the matching ignores them; the path goes on as sent.
        let without_params;
        let path = if path.contains(';') {
            without_params = strip_path_params(path);
            without_params.as_str()
        } else {
            path
        };
        let host = host.map(strip_port);
        self.routes.iter().find(|r| {
            (r.methods.is_empty() || r.methods.contains(method))
                && r.host
                    .as_deref()
                    .is_none_or(|want| host.is_some_and(|h| h.eq_ignore_ascii_case(want)))
                && r.path.as_deref().is_none_or(|p| p == path)
                && r.path_prefix
                    .as_deref()
                    .is_none_or(|p| prefix_matches(p, path))
        })
    }
}

/// The path as routes see it and as the upstream receives it (RFC 3986 §6.2.2): percent-encoded
/// unreserved characters decoded (`/%61dmin` is `/admin`), other percent-encodings kept with
/// upper-case hex, runs of `/` merged (`//admin` is `/admin`, as nginx's `merge_slashes` and many
/// frameworks read it). Without this, a path that an upstream normalises could reach a resource
/// other than the one whose route was checked. Borrowed when already normal (the common case);
/// `None` for a malformed percent-encoding.
pub fn normalize_path(path: &str) -> Option<Cow<'_, str>> {
    let b = path.as_bytes();
    if !b.contains(&b'%') && !path.contains("//") {
        return Some(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                let (hi, lo) = (hex(*b.get(i + 1)?)?, hex(*b.get(i + 2)?)?);
                let c = (hi * 16 + lo) as u8;
                if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                    out.push(c as char);
                } else {
                    out.push('%');
                    out.push(char::from_digit(hi, 16)?.to_ascii_uppercase());
                    out.push(char::from_digit(lo, 16)?.to_ascii_uppercase());
                }
                i += 3;
            }
            b'/' if out.ends_with('/') => i += 1,
            _ => {
                // Copy the run up to the next `%` or `/` at once (valid UTF-8 boundaries: both
                // are ASCII).
                let end = b[i + 1..]
                    .iter()
                    .position(|&c| c == b'%' || c == b'/')
                    .map_or(b.len(), |p| i + 1 + p);
                out.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    // Already normal despite a `%` (`/a%20b`): the request's own path goes on unchanged.
    Some(if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    })
}

/// `path` with each segment's `;` parameters removed (`/a;x=1/b;y` is `/a/b`).
fn strip_path_params(path: &str) -> String {
    path.split('/')
        .map(|segment| segment.split(';').next().unwrap_or(segment))
        .collect::<Vec<_>>()
        .join("/")
}

/// Prefix match on segment boundaries: `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`.
/// The prefix is stored without its trailing slash, so `/` matches everything.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port → v6 in brackets, as configured hosts would write it.
        return rest.find(']').map_or(host, |end| &host[..end + 2]);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

fn has_dot_segment(path: &str) -> bool {
    // A raw `\` is a separator to some servers (IIS, ASP.NET).
    if path.contains('\\') {
        return true;
    }
    if !path.contains(['.', '%']) {
        return false;
    }
    // `..;x` is `..` to servlet containers (Tomcat ignores path parameters).
    path.split('/')
        .any(|segment| is_dot_segment(segment.split(';').next().unwrap_or(segment)))
        || has_encoded_separator(path.as_bytes())
}

/// `.` or `..`, each dot possibly written `%2e`.
fn is_dot_segment(segment: &str) -> bool {
    let b = segment.as_bytes();
    let (mut i, mut dots) = (0, 0);
    while i < b.len() {
        if b[i] == b'.' {
            i += 1;
        } else if b[i] == b'%'
            && b.get(i + 1) == Some(&b'2')
            && b.get(i + 2).map(|c| c | 0x20) == Some(b'e')
        {
            i += 3;
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// `%2f` or `%5c`: an encoded `/` or `\` would hide a segment boundary from the matcher.
fn has_encoded_separator(b: &[u8]) -> bool {
    b.windows(3).any(|w| {
        w[0] == b'%'
            && ((w[1] == b'2' && (w[2] | 0x20) == b'f') || (w[1] == b'5' && (w[2] | 0x20) == b'c'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteMatch;

    fn route(m: RouteMatch, upstream: &str) -> Route {
        Route {
            matcher: m,
            upstream: upstream.into(),
            public: false,
            scopes: vec![],
            any_scopes: vec![],
            rate_limit: None,
        }
    }

    fn router() -> Router {
        let routes = vec![
            route(
                RouteMatch {
                    host: Some("Admin.Example.com".into()),
                    ..Default::default()
                },
                "admin",
            ),
            route(
                RouteMatch {
                    path: Some("/exact".into()),
                    ..Default::default()
                },
                "exact",
            ),
            route(
                RouteMatch {
                    path_prefix: Some("/api/v1/sessions".into()),
                    methods: vec![Method::GET, Method::HEAD],
                    ..Default::default()
                },
                "read",
            ),
            route(
                RouteMatch {
                    path_prefix: Some("/api/v1/sessions/".into()),
                    ..Default::default()
                },
                "write",
            ),
        ];
        let names = ["admin", "exact", "read", "write"];
        Router::new(&routes, |n| names.iter().position(|x| *x == n).unwrap())
    }

    fn up(r: &Router, m: &Method, host: Option<&str>, path: &str) -> Option<usize> {
        r.find(m, host, path).map(|r| r.upstream)
    }

    #[test]
    fn first_match_in_file_order() {
        let r = router();
        assert_eq!(
            up(
                &r,
                &Method::GET,
                Some("admin.example.com:8080"),
                "/api/v1/sessions"
            ),
            Some(0)
        );
        assert_eq!(up(&r, &Method::GET, None, "/exact"), Some(1));
        assert_eq!(up(&r, &Method::GET, None, "/exact/more"), None);
        assert_eq!(up(&r, &Method::GET, None, "/api/v1/sessions/1"), Some(2));
        assert_eq!(up(&r, &Method::HEAD, None, "/api/v1/sessions"), Some(2));
        assert_eq!(up(&r, &Method::POST, None, "/api/v1/sessions"), Some(3));
        assert_eq!(up(&r, &Method::POST, None, "/api/v1/sessionsX"), None);
        assert_eq!(
            up(&r, &Method::GET, Some("other.example.com"), "/nothing"),
            None
        );
    }

    #[test]
    fn path_parameters_do_not_take_a_path_past_its_route() {
        let r = router();
        // As a servlet container reads them: `/exact;jsessionid=1` is `/exact`.
        assert_eq!(up(&r, &Method::GET, None, "/exact;jsessionid=1"), Some(1));
        assert_eq!(
            up(&r, &Method::POST, None, "/api/v1/sessions;v=2/1;x"),
            Some(3)
        );
        assert_eq!(up(&r, &Method::GET, None, "/exact;a/more"), None);
        assert_eq!(strip_path_params("/a;x=1/b;y/;z"), "/a/b/");
    }

    #[test]
    fn paths_are_normalised_before_matching() {
        let n = |p| normalize_path(p).map(Cow::into_owned);
        assert!(matches!(
            normalize_path("/api/v1/x"),
            Some(Cow::Borrowed(_))
        ));
        assert_eq!(n("/%61dmin").as_deref(), Some("/admin"));
        assert_eq!(n("/api/%7euser/%2d_%2E").as_deref(), Some("/api/~user/-_."));
        assert_eq!(n("//api//v1///x/").as_deref(), Some("/api/v1/x/"));
        // Reserved and non-ASCII encodings stay encoded, in upper case.
        assert_eq!(n("/a%2fb/%c3%a9%20").as_deref(), Some("/a%2Fb/%C3%A9%20"));
        assert_eq!(n("/caf\u{e9}%41").as_deref(), Some("/caf\u{e9}A"));
        for bad in ["/%", "/%4", "/%zz", "/a%g1"] {
            assert_eq!(n(bad), None, "{bad}");
        }
    }

    #[test]
    fn dot_segments_match_no_route() {
        let r = router();
        for p in [
            "/api/v1/sessions/../admin",
            "/api/v1/sessions/./x",
            "/api/v1/sessions/%2e%2e/admin",
            "/api/v1/sessions/%2E./admin",
            "/api/v1/sessions/a%2Fb",
            "/api/v1/sessions/..;/admin",
            "/api/v1/sessions/.;x/admin",
            "/api/v1/sessions/..\\admin",
        ] {
            assert_eq!(up(&r, &Method::GET, None, p), None, "{p}");
        }
    }

    #[test]
    fn root_prefix_matches_everything() {
        let routes = vec![route(
            RouteMatch {
                path_prefix: Some("/".into()),
                ..Default::default()
            },
            "all",
        )];
        let r = Router::new(&routes, |_| 0);
        assert!(r.find(&Method::GET, None, "/anything/at/all").is_some());
        assert!(r.find(&Method::GET, None, "/").is_some());
    }
}
