//! The semantic checks of a parsed config ([`Config::validate`]): references between sections,
//! value ranges, names; and the checks the admin API shares (rate limits, quotas, scopes,
//! workspace names).

use super::*;

/// Longest `shutdown_delay`.
pub const MAX_SHUTDOWN_DELAY: Duration = Duration::from_secs(300);

impl Config {
    /// Every semantic problem: references between sections, value ranges, syntax of paths.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |path: String, message: String| {
            out.push(Problem {
                path,
                line: None,
                message,
            })
        };

        if self.shutdown_delay > MAX_SHUTDOWN_DELAY {
            problem(
                "shutdown_delay".into(),
                format!(
                    "at most {}s: an orchestrator kills a process that takes longer",
                    MAX_SHUTDOWN_DELAY.as_secs()
                ),
            );
        }
        if let Some(authz) = self.listen.authz {
            // Port 0 (tests, supervisors) picks a free port each time, so it clashes with nothing.
            for (other, addr) in [("proxy", self.listen.proxy), ("admin", self.listen.admin)] {
                if authz.port() != 0 && authz == addr {
                    problem(
                        "listen.authz".into(),
                        format!("is listen.{other}'s address: give it one of its own"),
                    );
                }
            }
        }
        for (field, message) in self.leaks.problems() {
            problem(format!("leaks.{field}"), message);
        }
        for (i, hook) in self.webhooks.iter().enumerate() {
            for (field, message) in hook.problems() {
                problem(format!("webhooks[{i}].{field}"), message);
            }
            // Deliveries find their endpoint (and its secret) by URL.
            if self.webhooks[..i].iter().any(|h| h.url == hook.url) {
                problem(
                    format!("webhooks[{i}].url"),
                    "is listed twice: give each endpoint one entry (its events in one list)".into(),
                );
            }
        }
        if self.secrets.pepper.len() < 16 {
            problem(
                "secrets.pepper".into(),
                "must be at least 16 characters (32 random bytes recommended)".into(),
            );
        }
        for (field, value) in [
            ("keys.prefix", &self.keys.prefix),
            ("keys.environment", &self.keys.environment),
        ] {
            if value.is_empty()
                || value.len() > 16
                || !value.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                problem(field.into(), "must be 1–16 ASCII letters or digits".into());
            }
        }
        match self.store.backend {
            Backend::Redis => {
                let r = &self.store.redis;
                match (&r.url, r.cluster.is_empty()) {
                    (None, true) => problem(
                        "store.redis".into(),
                        "backend is redis: set `url` or `cluster`".into(),
                    ),
                    (Some(_), false) => problem(
                        "store.redis".into(),
                        "set either `url` or `cluster`, not both".into(),
                    ),
                    _ => {}
                }
                for (i, url) in r.url.iter().chain(&r.cluster).enumerate() {
                    let field = if r.url.is_some() {
                        "store.redis.url".to_owned()
                    } else {
                        format!("store.redis.cluster[{i}]")
                    };
                    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                        problem(field, "must be a redis:// or rediss:// URL".into());
                    } else if r.url.is_none() && !matches!(url_database(url), "" | "0") {
                        problem(field, "a Redis Cluster has only database 0".into());
                    }
                }
                if r.timeout.is_zero() {
                    problem("store.redis.timeout".into(), "must be above 0".into());
                }
            }
            Backend::Embedded => {
                if self.store.embedded.path.as_os_str().is_empty() {
                    problem("store.embedded.path".into(), "must not be empty".into());
                }
            }
        }
        if self.rate_limits.mode == RateLimitMode::Redis && self.store.backend != Backend::Redis {
            problem(
                "rate_limits.mode".into(),
                "`redis` needs `store.backend: redis`".into(),
            );
        }
        if self.cache.capacity == 0 {
            problem("cache.capacity".into(), "must be above 0".into());
        }
        for (path, message) in self.limits.problems() {
            problem(path, message);
        }
        if self.cache.ttl.is_zero() {
            problem("cache.ttl".into(), "must be above 0".into());
        }
        if let Some(q) = &self.auth.query_param
            && q.is_empty()
        {
            problem("auth.query_param".into(), "must not be empty".into());
        }
        // Credential headers are tracked as bits of a u64 (bit 0 is Authorization).
        if self.auth.extra_headers.len() > 63 {
            problem("auth.extra_headers".into(), "at most 63 headers".into());
        }
        for (i, h) in self.auth.extra_headers.iter().enumerate() {
            if self.auth.extra_headers[..i].contains(h) {
                problem(
                    format!("auth.extra_headers[{i}]"),
                    format!("`{h}` is listed twice"),
                );
            }
            if h == http::header::AUTHORIZATION {
                problem(
                    format!("auth.extra_headers[{i}]"),
                    "Authorization is always read; list only other headers".into(),
                );
            }
        }
        let mut check_limit = |path: String, spec: &RateLimitSpec| {
            if let Err((field, message)) = check_rate_limit(spec) {
                problem(format!("{path}.{field}"), message.into());
            }
        };
        if let Some(l) = &self.auth.failure_limit {
            check_limit("auth.failure_limit".into(), l);
        }
        if let Some(l) = &self.rate_limits.default {
            check_limit("rate_limits.default".into(), l);
        }
        for (name, l) in &self.rate_limits.roles {
            check_limit(format!("rate_limits.roles.{name}"), l);
        }
        for (i, r) in self.routes.iter().enumerate() {
            if let Some(l) = &r.rate_limit {
                check_limit(format!("routes[{i}].rate_limit"), l);
            }
        }
        for (name, w) in &self.workspaces {
            if let Some(l) = &w.rate_limit {
                check_limit(format!("workspaces.{name}.rate_limit"), l);
            }
        }
        let mut problem = |path: String, message: String| {
            out.push(Problem {
                path,
                line: None,
                message,
            })
        };
        for name in self.rate_limits.roles.keys() {
            if !self.roles.contains_key(name) {
                problem(
                    format!("rate_limits.roles.{name}"),
                    format!("no role `{name}` in `roles`"),
                );
            }
        }
        for (name, q) in &self.quotas.roles {
            let path = format!("quotas.roles.{name}");
            if !self.roles.contains_key(name) {
                problem(path.clone(), format!("no role `{name}` in `roles`"));
            }
            if let Err(m) = check_quota(q) {
                problem(format!("{path}.refill_day"), m.into());
            }
        }
        for (name, scopes) in &self.roles {
            for (i, s) in scopes.iter().enumerate() {
                if let Err(m) = check_scope(s) {
                    problem(format!("roles.{name}[{i}]"), m.into());
                } else if !self.in_catalogue(s) {
                    problem(format!("roles.{name}[{i}]"), not_in_catalogue(s));
                }
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            for (list, scopes) in [("scopes", &r.scopes), ("any_scopes", &r.any_scopes)] {
                for (j, s) in scopes.iter().enumerate() {
                    if !self.in_catalogue(s) {
                        problem(format!("routes[{i}].{list}[{j}]"), not_in_catalogue(s));
                    }
                }
            }
        }
        for (s, label) in &self.scopes {
            if let Err(m) = check_scope(s) {
                problem(format!("scopes.{s}"), m.into());
            } else if label.trim().is_empty() || label.chars().count() > 100 {
                problem(format!("scopes.{s}"), "a label is 1–100 characters".into());
            }
        }
        for (name, w) in &self.workspaces {
            if !is_workspace_name(name) {
                problem(format!("workspaces.{name}"), WORKSPACE_NAME_RULE.into());
            }
            if let Some(q) = &w.quota
                && let Err(m) = check_quota(q)
            {
                problem(format!("workspaces.{name}.quota.refill_day"), m.into());
            }
        }
        for (name, u) in &self.upstreams {
            for (field, message) in u.problems() {
                problem(format!("upstreams.{name}.{field}"), message);
            }
        }
        if self.routes.is_empty() {
            problem("routes".into(), "at least one route is needed".into());
        }
        for (i, r) in self.routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            if !self.upstreams.contains_key(&r.upstream) {
                problem(
                    format!("{path}.upstream"),
                    format!("no upstream `{}` in `upstreams`", r.upstream),
                );
            }
            let m = &r.matcher;
            if m.path.is_some() && m.path_prefix.is_some() {
                problem(
                    format!("{path}.match"),
                    "set `path` or `path_prefix`, not both".into(),
                );
            }
            for (field, p) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
                if let Some(p) = p
                    && !p.starts_with('/')
                {
                    problem(
                        format!("{path}.match.{field}"),
                        "must start with `/`".into(),
                    );
                }
            }
            if let Some(h) = &m.host
                && (h.is_empty() || h.contains('/'))
            {
                problem(format!("{path}.match.host"), "must be a host name".into());
            }
            if r.public && (!r.scopes.is_empty() || !r.any_scopes.is_empty()) {
                problem(
                    format!("{path}.public"),
                    "a public route cannot require scopes".into(),
                );
            }
            for (field, list) in [("scopes", &r.scopes), ("any_scopes", &r.any_scopes)] {
                for (j, s) in list.iter().enumerate() {
                    if let Err(m) = check_scope(s) {
                        problem(format!("{path}.{field}[{j}]"), m.into());
                    }
                }
            }
        }
        let ih = &self.forward.identity_headers;
        let mut seen = HashSet::new();
        for (field, h) in [
            ("key_id", &ih.key_id),
            ("workspace", &ih.workspace),
            ("scopes", &ih.scopes),
        ] {
            if !seen.insert(h.clone()) {
                problem(
                    format!("forward.identity_headers.{field}"),
                    "identity headers must have distinct names".into(),
                );
            }
            if h == http::header::AUTHORIZATION || h == http::header::HOST {
                problem(
                    format!("forward.identity_headers.{field}"),
                    format!("cannot be `{h}`"),
                );
            }
        }
        if self.usage.flush_interval.is_zero() {
            problem("usage.flush_interval".into(), "must be above 0".into());
        }
        let mut names = HashSet::new();
        for (i, t) in self.admin.tokens.iter().enumerate() {
            let path = format!("admin.tokens[{i}]");
            if t.name.is_empty() || !names.insert(t.name.as_str()) {
                problem(
                    format!("{path}.name"),
                    "must be non-empty and unique".into(),
                );
            }
            if t.token.len() < 16 {
                problem(
                    format!("{path}.token"),
                    "must be at least 16 characters".into(),
                );
            }
            for (j, p) in t.permissions.iter().enumerate() {
                if !PERMISSIONS.contains(&p.as_str()) {
                    problem(
                        format!("{path}.permissions[{j}]"),
                        format!(
                            "unknown permission `{p}`; known: {}",
                            PERMISSIONS.join(", ")
                        ),
                    );
                }
            }
            // A token may name a workspace the config does not declare: workspaces are also
            // created through the admin API, possibly after the token is configured.
            for (j, w) in t.workspaces.iter().enumerate() {
                if w != "*" && !is_workspace_name(w) {
                    problem(
                        format!("{path}.workspaces[{j}]"),
                        WORKSPACE_NAME_RULE.into(),
                    );
                }
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problem("log.level".into(), format!("invalid filter: {e}"));
        }
        out
    }

    /// Whether `scope` may be named under the scope catalogue: always without one; with one, if
    /// it is listed, `*`, or an admin permission.
    pub fn in_catalogue(&self, scope: &str) -> bool {
        self.scopes.is_empty()
            || scope == "*"
            || self.scopes.contains_key(scope)
            || PERMISSIONS.contains(&scope)
    }

    /// The scopes a role grants, if the role exists.
    pub fn role_scopes(&self, role: &str) -> Option<&[String]> {
        self.roles.get(role).map(Vec::as_slice)
    }
}

/// Checks a rate limit: a period above 0, and at most one request per microsecond of it
/// (`mode: redis` keeps time in microseconds). On failure, the field to blame and why.
pub fn check_rate_limit(spec: &RateLimitSpec) -> Result<(), (&'static str, &'static str)> {
    if spec.period.is_zero() {
        Err(("period", "must be above 0"))
    } else if spec.period.as_nanos() / u128::from(spec.requests.get()) < 1_000 {
        Err((
            "requests",
            "at most one request per microsecond of `period`",
        ))
    } else {
        Ok(())
    }
}

/// Checks a quota's `refill_day`: 1–28, and only for `refill: monthly` (every month has a
/// 28th, so a refill day never falls in a month without it).
pub fn check_quota(q: &QuotaSpec) -> Result<(), &'static str> {
    match (q.refill, q.refill_day) {
        (Refill::Monthly, Some(d)) if !(1..=28).contains(&d) => Err("must be 1–28"),
        (Refill::None | Refill::Daily, Some(_)) => Err("only for `refill: monthly`"),
        _ => Ok(()),
    }
}

fn not_in_catalogue(scope: &str) -> String {
    format!("scope `{scope}` is not in the `scopes` catalogue")
}

/// What [`is_workspace_name`] accepts, for error messages.
pub const WORKSPACE_NAME_RULE: &str =
    "workspace names are 1–64 characters of a-z, 0-9, `-` and `_`";

/// Whether `name` may name a workspace (it appears in paths and store keys).
pub fn is_workspace_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Checks a scope string: `*` or 1–100 printable characters without spaces or commas (scopes are
/// joined with commas in `X-Keygate-Scopes`).
pub fn check_scope(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 100 {
        return Err("a scope is 1–100 characters");
    }
    if !s.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
        return Err("a scope has no spaces, commas or non-ASCII characters");
    }
    Ok(())
}

/// The database a `redis://host:port/N` URL selects (`N`), or `""` when it names none.
fn url_database(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = rest.split_once('/').map_or("", |(_, path)| path);
    path.split(['?', '#']).next().unwrap_or("")
}
