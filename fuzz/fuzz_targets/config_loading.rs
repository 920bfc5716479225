//! Config loading: `Config::parse` (what `Config::load` runs on a file's text) on arbitrary
//! input, with `${VAR}` references resolved from a fixed environment.
//!
//! Invariants, besides "never panics": a refusal renders (`Display`, which is what the binary
//! prints) and names at least one problem; an accepted config has no problems left for
//! `validate`, builds the credential sources and routes the gateway builds from it, and its
//! `Debug` does not depend on the pepper or the admin tokens.
#![no_main]

use keygate::auth::CredentialSources;
use keygate::config::Config;
use keygate::route::Router;
use libfuzzer_sys::fuzz_target;

/// The environment `${VAR}` resolves in: a pepper and a token long enough to be accepted.
fn env(name: &str) -> Option<String> {
    match name {
        "KEYGATE_PEPPER" => Some("env-pepper-0123456789abcdef".into()),
        "ADMIN_TOKEN" => Some("env-admin-token-0123456789".into()),
        "REDIS_URL" => Some("redis://127.0.0.1:6379".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::parse("fuzz.yaml", &text, env) {
        Ok(config) => {
            assert!(config.validate().is_empty(), "accepted with problems");
            let _ = CredentialSources::new(&config);
            let names: Vec<&String> = config.upstreams.keys().collect();
            let router = Router::new(&config.routes, |name| {
                names
                    .iter()
                    .position(|n| n.as_str() == name)
                    .expect("validation checked every route's upstream")
            });
            let _ = router.find(&http::Method::GET, Some("example.com"), "/");
            // The same config with other secret values must print the same.
            let mut other = config.clone();
            other.secrets.pepper = "another pepper".into();
            for token in &mut other.admin.tokens {
                token.token = "another token".into();
            }
            assert_eq!(
                format!("{config:?}"),
                format!("{other:?}"),
                "Debug shows the pepper or an admin token"
            );
        }
        Err(error) => {
            let shown = error.to_string();
            assert!(!shown.is_empty());
            assert!(!error.problems.is_empty(), "a refusal names a problem");
        }
    }
});
