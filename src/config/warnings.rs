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
