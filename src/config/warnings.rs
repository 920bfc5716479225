//! What is valid but probably wrong: a route no request can reach, and secrets that are the
//! example's or too short. `config check` prints these as warnings (exit 0); `serve` logs them
//! at start and on every reload.

use super::{Config, Problem, RouteMatch};

/// Secrets shorter than this are warned about (32 random bytes is the recommendation).
pub const STRONG_SECRET_BYTES: usize = 32;

/// The example config's placeholder secrets: fine for a first try on loopback, never beyond.
const EXAMPLE_SECRETS: [&str; 2] = [
    "example-pepper-change-me-in-production",
    "dev-admin-token-change-me",
];

impl Config {
    /// Every warning, in file order of the sections.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut warn = |path: String, message: String| {
            out.push(Problem {
                path,
                line: None,
                message,
            })
        };
        let weak = |secret: &str| -> Option<String> {
            if EXAMPLE_SECRETS.contains(&secret) {
                Some("is the example config's placeholder: set a random secret of your own".into())
            } else if secret.len() < STRONG_SECRET_BYTES {
                Some(format!(
                    "is {} bytes; {STRONG_SECRET_BYTES} random bytes or more are recommended",
                    secret.len()
                ))
            } else {
                None
            }
        };
        if let Some(m) = weak(&self.secrets.pepper) {
            warn("secrets.pepper".into(), m);
        }
        for (i, t) in self.admin.tokens.iter().enumerate() {
            if let Some(m) = weak(&t.token) {
                warn(format!("admin.tokens[{i}].token"), m);
            }
        }
        if self.listen.authz.is_some() && self.trusted_proxies.is_empty() {
            warn(
                "trusted_proxies".into(),
                "is empty while listen.authz is set: every request asked about will have the \
                 ingress's address as its client IP (the failed-authentication limit and IP \
                 allowlists see the ingress, not the client); list the ingress's addresses"
                    .into(),
            );
        }
        for (i, later) in self.routes.iter().enumerate() {
            if let Some(j) = self.routes[..i]
                .iter()
                .position(|earlier| covers(&earlier.matcher, &later.matcher))
            {
                warn(
                    format!("routes[{i}]"),
                    format!(
                        "never matches: routes[{j}] comes first and matches every request it would"
                    ),
                );
            }
        }
        out
    }
}

/// Whether every request `later` matches is matched by `earlier` (first match wins).
fn covers(earlier: &RouteMatch, later: &RouteMatch) -> bool {
    let host = match (&earlier.host, &later.host) {
        (None, _) => true,
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        (Some(_), None) => false,
    };
    let methods = earlier.methods.is_empty()
        || (!later.methods.is_empty() && later.methods.iter().all(|m| earlier.methods.contains(m)));
    let under = |prefix: &str, path: &str| {
        let prefix = prefix.trim_end_matches('/');
        prefix.is_empty() || path == prefix || path.starts_with(&format!("{prefix}/"))
    };
    let path = match (
        (&earlier.path_prefix, &earlier.path),
        (&later.path_prefix, &later.path),
    ) {
        ((None, None), _) => true,
        ((Some(p), None), (Some(q), _) | (None, Some(q))) => under(p, q),
        ((None, Some(a)), (None, Some(b))) => a == b,
        _ => false,
    };
    host && methods && path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(
        host: Option<&str>,
        prefix: Option<&str>,
        path: Option<&str>,
        methods: &[&str],
    ) -> RouteMatch {
        RouteMatch {
            host: host.map(str::to_owned),
            path_prefix: prefix.map(str::to_owned),
            path: path.map(str::to_owned),
            methods: methods
                .iter()
                .map(|m| m.parse().expect("a method"))
                .collect(),
        }
    }

    #[test]
    fn only_complete_shadowing_is_reported() {
        let any = route(None, None, None, &[]);
        let api = route(None, Some("/api"), None, &[]);
        let api_get = route(None, Some("/api"), None, &["GET"]);
        let v2 = route(None, Some("/api/v2"), None, &["GET"]);
        let exact = route(None, None, Some("/api/v2/x"), &[]);
        let apix = route(None, Some("/apix"), None, &[]);
        let hosted = route(Some("a.example"), Some("/api/v2"), None, &[]);
        assert!(covers(&any, &api));
        assert!(covers(&api, &v2) && covers(&api, &exact) && covers(&api, &hosted));
        assert!(covers(&api_get, &v2), "GET ⊇ GET");
        assert!(
            !covers(&api_get, &exact),
            "GET only does not cover every method"
        );
        assert!(!covers(&api, &apix), "prefixes end at a segment");
        assert!(
            !covers(&hosted, &v2),
            "a host-bound route leaves other hosts"
        );
        assert!(!covers(&exact, &v2) && !covers(&v2, &api));
        assert!(covers(&route(None, Some("/"), None, &[]), &api));
    }
}
