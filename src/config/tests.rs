//! The config's own tests: parsing, substitution, defaults and validation.

use super::*;

const MINIMAL: &str = "
secrets: { pepper: 0123456789abcdef0123 }
upstreams:
  app: { url: http://127.0.0.1:9000 }
routes:
  - match: { path_prefix: /api }
    upstream: app
    scopes: [read]
";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse("test.yaml", text, |v| match v {
        "PEPPER" => Some("from-the-environment-123".into()),
        _ => None,
    })
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.listen.proxy, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(c.listen.admin, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(c.store.backend, Backend::Embedded);
    assert_eq!(c.cache.ttl, Duration::from_secs(60));
    assert_eq!(c.cache.max_stale, Duration::from_secs(300));
    assert_eq!(c.keys.prefix, "kg");
    assert_eq!(c.forward.identity_headers.key_id, "x-keygate-key-id");
    assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
}

#[test]
fn env_variables_are_substituted_in_values_only() {
    let text = MINIMAL.replace("0123456789abcdef0123", "\"${PEPPER}\"");
    assert_eq!(
        parse(&text).unwrap().secrets.pepper,
        "from-the-environment-123"
    );
    let text = MINIMAL.replace(
        "0123456789abcdef0123",
        "\"${MISSING:-fallback-value-123456}\"",
    );
    assert_eq!(
        parse(&text).unwrap().secrets.pepper,
        "fallback-value-123456"
    );
    let err = parse(&MINIMAL.replace("0123456789abcdef0123", "\"${MISSING}\"")).unwrap_err();
    assert_eq!(err.problems[0].path, "secrets.pepper");
    assert!(err.problems[0].message.contains("MISSING is not set"));
}

#[test]
fn durations_take_units() {
    for (text, want) in [
        ("500ms", Duration::from_millis(500)),
        ("30s", Duration::from_secs(30)),
        ("24h", Duration::from_secs(86400)),
        ("0", Duration::ZERO),
    ] {
        assert_eq!(duration_text::parse(text).unwrap(), want);
    }
    assert!(duration_text::parse("soon").is_err());
    let err = parse(&format!("{MINIMAL}shutdown_timeout: 30\n")).unwrap_err();
    assert_eq!(err.problems[0].path, "shutdown_timeout");
    assert!(err.problems[0].message.contains("needs a unit"));
}

#[test]
fn unknown_fields_are_refused_with_their_path_and_line() {
    let err =
        parse(&MINIMAL.replace("scopes: [read]", "scopes: [read]\n    scope: [x]")).unwrap_err();
    let p = &err.problems[0];
    assert_eq!(p.path, "routes[0].scope");
    assert!(p.message.contains("unknown field `scope`"), "{p}");
    let err = parse("secrets: {pepper: x\n").unwrap_err();
    assert!(err.problems[0].line.is_some());
}

#[test]
fn every_semantic_problem_is_reported_at_once() {
    let text = "
secrets: { pepper: short }
store: { backend: redis }
workspaces: { Bad Name: {} }
upstreams:
  app: { url: ftp://x }
routes:
  - match: { path_prefix: api }
    upstream: missing
  - match: { path: /x }
    upstream: app
    public: true
    scopes: [a b]
";
    let err = parse(text).unwrap_err();
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "secrets.pepper",
        "store.redis",
        "workspaces.Bad Name",
        "upstreams.app.url",
        "routes[0].upstream",
        "routes[0].match.path_prefix",
        "routes[1].public",
        "routes[1].scopes[0]",
    ] {
        assert!(paths.contains(&want), "missing {want} in {paths:?}");
    }
    let upstream = err
        .problems
        .iter()
        .find(|p| p.path == "routes[0].upstream")
        .unwrap();
    assert_eq!(upstream.line, Some(9), "{upstream}");
    assert!(err.to_string().contains("problems"));
}

#[test]
fn limits_and_quotas_are_checked() {
    let c = parse(&format!(
        "{MINIMAL}roles: {{ viewer: [read] }}\n\
             rate_limits: {{ default: {{ requests: 100, period: 1s, burst: 200 }} }}\n\
             quotas: {{ roles: {{ viewer: {{ limit: 10000, refill: monthly, refill_day: 1 }} }} }}\n"
    ))
    .unwrap();
    assert_eq!(c.quotas.roles["viewer"].limit, 10_000);
    let err = parse(&format!(
        "{MINIMAL}roles: {{ viewer: [read] }}\n\
             auth: {{ failure_limit: {{ requests: 2000000, period: 1s }} }}\n\
             quotas:\n  roles:\n    viewer: {{ limit: 1, refill: monthly, refill_day: 29 }}\n    \
             ghost: {{ limit: 1, refill: daily, refill_day: 3 }}\n"
    ))
    .unwrap_err();
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "auth.failure_limit.requests",
        "quotas.roles.viewer.refill_day",
        "quotas.roles.ghost",
        "quotas.roles.ghost.refill_day",
    ] {
        assert!(paths.contains(&want), "missing {want} in {paths:?}");
    }
}

#[test]
fn a_scope_catalogue_bounds_roles_and_routes() {
    let c = parse(&format!(
        "{MINIMAL}scopes: {{ read: Read things }}\nroles: {{ r: [read, \"*\", api.key.view] }}\n"
    ))
    .unwrap();
    assert!(c.in_catalogue("read") && c.in_catalogue("*") && !c.in_catalogue("write"));
    let err = parse(&format!(
        "{MINIMAL}scopes: {{ write: Write, \"bad scope\": X, ok: \"\" }}\nroles: {{ r: [read] }}\n"
    ))
    .unwrap_err();
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "roles.r[0]",
        "routes[0].scopes[0]",
        "scopes.bad scope",
        "scopes.ok",
    ] {
        assert!(paths.contains(&want), "missing {want} in {paths:?}");
    }
}

#[test]
fn workspaces_carry_defaults_and_metadata() {
    let c = parse(&format!(
        "{MINIMAL}workspaces:\n  acme: {{ rate_limit: {{ requests: 5, period: 1s }}, \
             quota: {{ limit: 100, refill: daily }}, metadata: {{ plan: pro, seats: 3 }} }}\n"
    ))
    .unwrap();
    let acme = &c.workspaces["acme"];
    assert_eq!((acme.api_access, acme.max_active_keys), (true, 5));
    assert_eq!(acme.rate_limit.map(|l| l.requests.get()), Some(5));
    assert_eq!(acme.quota.map(|q| q.limit), Some(100));
    assert_eq!(acme.metadata["seats"], 3);
    let err = parse(&format!(
        "{MINIMAL}workspaces:\n  acme: {{ rate_limit: {{ requests: 5, period: 0s }}, \
             quota: {{ limit: 1, refill: daily, refill_day: 2 }} }}\n"
    ))
    .unwrap_err();
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "workspaces.acme.rate_limit.period",
        "workspaces.acme.quota.refill_day",
    ] {
        assert!(paths.contains(&want), "missing {want} in {paths:?}");
    }
}

#[test]
fn extra_headers_are_few_and_distinct() {
    let many: Vec<String> = (0..64).map(|i| format!("X-Key-{i}")).collect();
    let text = format!(
        "{MINIMAL}auth: {{ extra_headers: [{}] }}\n",
        many.join(", ")
    );
    let err = parse(&text).unwrap_err();
    assert!(
        err.problems.iter().any(|p| p.path == "auth.extra_headers"),
        "{err}"
    );
    let err = parse(&format!("{MINIMAL}auth: {{ extra_headers: [X-A, x-a] }}\n")).unwrap_err();
    assert!(
        err.problems
            .iter()
            .any(|p| p.path == "auth.extra_headers[1]"),
        "{err}"
    );
}

#[test]
fn secrets_do_not_print() {
    let c = parse(&format!(
        "{MINIMAL}admin:\n  tokens:\n    - {{ name: ops, token: tok-0123456789abcdef }}\n"
    ))
    .unwrap();
    let dump = format!("{c:?}");
    assert!(!dump.contains("0123456789abcdef0123"));
    assert!(!dump.contains("tok-0123456789abcdef"));
}

#[test]
fn a_redis_cluster_is_a_list_of_seed_urls_on_database_0() {
    let with_store = |store: &str| format!("{MINIMAL}store: {store}\n");
    let c = parse(&with_store(
        "{ backend: redis, redis: { cluster: [redis://127.0.0.1:7000, redis://127.0.0.1:7001/0] } }",
    ))
    .unwrap();
    assert_eq!(c.store.redis.cluster.len(), 2);
    assert!(c.store.redis.url.is_none());
    let err = parse(&with_store(
        "{ backend: redis, redis: { cluster: [redis://127.0.0.1:7000, redis://127.0.0.1:7001/2] } }",
    ))
    .unwrap_err();
    let problem = err
        .problems
        .iter()
        .find(|p| p.path == "store.redis.cluster[1]")
        .unwrap();
    assert!(problem.message.contains("database 0"), "{problem}");
    let err = parse(&with_store(
        "{ backend: redis, redis: { url: redis://a:6379, cluster: [redis://b:7000] } }",
    ))
    .unwrap_err();
    assert!(err.problems.iter().any(|p| p.path == "store.redis"));
}

#[test]
fn integrations_are_checked_field_by_field() {
    let c = parse(&format!(
        "{MINIMAL}listen: {{ authz: 127.0.0.1:8081 }}\n\
         webhooks:\n  - {{ url: https://hooks.example.com/k, events: [key.created], secret: 0123456789abcdef0123 }}\n\
         leaks: {{ action: notify }}\n"
    ))
    .unwrap();
    assert_eq!(c.listen.authz, Some("127.0.0.1:8081".parse().unwrap()));
    assert_eq!(c.webhooks[0].expiring_days, 7);
    assert!(c.webhooks[0].wants("key.created") && !c.webhooks[0].wants("key.deleted"));
    assert_eq!(c.leaks.action, leaks::LeakAction::Notify);
    // Without trusted proxies every client would share the ingress's address.
    let warned: Vec<String> = c.warnings().iter().map(|p| p.path.clone()).collect();
    assert!(warned.contains(&"trusted_proxies".to_owned()), "{warned:?}");

    let err = parse(&format!(
        "{MINIMAL}listen: {{ proxy: 127.0.0.1:8080, authz: 127.0.0.1:8080 }}\n\
         webhooks:\n  - {{ url: ftp://x, events: [key.exploded], secret: short, expiring_days: 0, first_retry: 2h }}\n\
         leaks:\n  public_path: no-slash\n  public_keys:\n    - {{ id: \"\", pem: not-a-key }}\n"
    ))
    .unwrap_err();
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "listen.authz",
        "webhooks[0].url",
        "webhooks[0].events",
        "webhooks[0].secret",
        "webhooks[0].expiring_days",
        "webhooks[0].first_retry",
        "leaks.public_path",
        "leaks.public_keys[0].id",
        "leaks.public_keys[0].pem",
    ] {
        assert!(paths.contains(&want), "missing {want} in {paths:?}");
    }
}

#[test]
fn upstream_targets_protocols_and_tls_files_are_checked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").expect("write");
    let text = format!(
        "
secrets: {{ pepper: 0123456789abcdef0123 }}
upstreams:
  both: {{ url: http://a:1, targets: [http://b:1] }}
  neither: {{ timeout: 1s }}
  mixed: {{ targets: [http://a:1, https://b:1, http://a:1] }}
  plain_tls: {{ url: http://a:1, ca: /x.pem, protocol: auto }}
  bad_ca: {{ url: https://a:1, ca: {junk} }}
  missing_ca: {{ url: https://a:1, ca: {missing} }}
  half_mtls: {{ url: https://a:1, client_cert: {junk} }}
  bad_sni: {{ url: https://a:1, sni: 'not a name' }}
  checks: {{ url: http://a:1, health_check: {{ path: health, interval: 0s }}, passive_health: {{ ejection: 0s }} }}
  far: {{ url: http://a:1, timeout: 1000000h, health_check: {{ path: /h, timeout: 1h }} }}
routes:
  - match: {{ path_prefix: /api }}
    upstream: both
",
        junk = junk.display(),
        missing = dir.path().join("missing.pem").display(),
    );
    let err = parse(&text).unwrap_err();
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "upstreams.both.targets",
        "upstreams.neither.url",
        "upstreams.mixed.targets[1]",
        "upstreams.mixed.targets[2]",
        "upstreams.plain_tls.ca",
        "upstreams.plain_tls.protocol",
        "upstreams.bad_ca.ca",
        "upstreams.missing_ca.ca",
        "upstreams.half_mtls.client_key",
        "upstreams.bad_sni.sni",
        "upstreams.checks.health_check.path",
        "upstreams.checks.health_check.interval",
        "upstreams.checks.passive_health.ejection",
        "upstreams.far.timeout",
        "upstreams.far.health_check.timeout",
    ] {
        assert!(paths.contains(&want), "missing {want} in {paths:?}");
    }
    // `failures: 0` is refused by its type, before the rest is checked.
    let zero = parse(&MINIMAL.replace(
        "{ url: http://127.0.0.1:9000 }",
        "{ url: http://127.0.0.1:9000, passive_health: { failures: 0 } }",
    ))
    .unwrap_err();
    assert!(zero.to_string().contains("failures"), "{zero}");

    let ok = parse(&MINIMAL.replace(
        "{ url: http://127.0.0.1:9000 }",
        "{ targets: [https://10.0.0.1:8443, https://10.0.0.2:8443], sni: api.internal }",
    ))
    .unwrap();
    let up = &ok.upstreams["app"];
    assert_eq!(up.protocol(), Protocol::Auto, "https defaults to ALPN");
    assert_eq!(up.target_urls().len(), 2);
    assert_eq!(up.passive_health.failures.get(), 3);
    assert!(up.client_tls().unwrap().is_some(), "system roots");
    let plain = parse(MINIMAL).unwrap();
    assert_eq!(plain.upstreams["app"].protocol(), Protocol::Http1);
}
