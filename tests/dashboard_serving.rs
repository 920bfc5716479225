//! The dashboard's serving (its page and assets, with the headers that confine them) and the
//! scope catalogue it reads, over real HTTP. The page itself is tested in a real browser in
//! `tests/dashboard.rs`.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use http::{Method, StatusCode};
use serde_json::json;
use support::gateway::{Backend, OPS_TOKEN, TestGateway, VIEWER_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_are_served_confined() {
    let gw = TestGateway::start(Backend::Embedded, "").await;
    let page = gw.admin_get("/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "script-src 'self'",
        "frame-ancestors 'none'",
        "default-src 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
    assert_eq!(page.headers["referrer-policy"], "no-referrer");
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains("/assets/app.js"), "{html}");

    let script = gw.admin_get("/assets/app.js").await;
    assert_eq!(script.status, StatusCode::OK);
    assert!(
        script.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    // Revalidated by its entity tag.
    let etag = script.headers["etag"].to_str().unwrap().to_owned();
    let req = http::Request::get(format!("http://{}/assets/app.js", gw.admin))
        .header("if-none-match", etag)
        .body(http_body_util::Full::default())
        .unwrap();
    let again = gw.send(req).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());

    for missing in [
        "/assets/nope.js",
        "/assets/../Cargo.toml",
        "/assets/index.html",
    ] {
        let r = gw.admin_get(missing).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{missing}");
        assert_eq!(r.error_code(), "not_found");
    }
    let post = gw.admin(Method::POST, "/", None, None).await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    // The API's own answers carry the same confinement.
    let api = gw
        .admin(Method::GET, "/v1/workspaces", Some(OPS_TOKEN), None)
        .await;
    assert_eq!(api.headers["content-security-policy"], csp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scope_catalogue_lists_labels_and_roles() {
    let overlay = r#"
scopes:
  sessions:read: Sessions (Read)
  sessions:write: Sessions (Write)
  resources:read: Resources (Read)
  resources:write: Resources (Write)
  admin: Administration
"#;
    let gw = TestGateway::start(Backend::Embedded, overlay).await;
    let r = gw
        .admin(Method::GET, "/v1/scopes", Some(VIEWER_TOKEN), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let body = r.json();
    let scopes = body["scopes"].as_array().unwrap();
    assert!(scopes.contains(&json!({"name": "sessions:read", "label": "Sessions (Read)"})));
    assert!(scopes.contains(&json!({"name": "*", "label": null})));
    assert!(
        !scopes.iter().any(|s| s["name"] == "api.key.view"),
        "admin permissions are not offered"
    );
    assert!(
        body["roles"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "viewer", "scopes": ["sessions:read"]}))
    );
    // Under a catalogue, a key may not name a scope outside it.
    let r = gw
        .admin(
            Method::POST,
            "/v1/workspaces/acme/keys",
            Some(OPS_TOKEN),
            Some(json!({"name": "k", "scopes": ["billing:read"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"]["field"], "scopes[0]");
    let anonymous = gw.admin(Method::GET, "/v1/scopes", None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

/// In a real browser: the page loads its module, and its policy stops inline script, whatever
/// puts it on the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_enforces_the_policy() {
    let gw = TestGateway::start(Backend::Embedded, "").await;
    let browser = support::browser::Browser::start(1280, 900).await;
    browser.open(&format!("http://{}/", gw.admin)).await;
    browser.find("#app").await;
    let ran = browser
        .run(
            "const s = document.createElement('script');\
             s.textContent = 'window.__inline = 1';\
             document.body.appendChild(s);\
             const i = document.createElement('div');\
             i.innerHTML = '<img src=x onerror=\"window.__handler = 1\">';\
             document.body.appendChild(i);\
             return [window.__inline === undefined, typeof document.querySelector];",
            vec![],
        )
        .await;
    assert_eq!(ran, json!([true, "function"]), "inline script ran");
    // An image error handler would fire asynchronously: give it the chance.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let handler = browser
        .run("return window.__handler === undefined;", vec![])
        .await;
    assert_eq!(handler, json!(true), "an inline event handler ran");
    browser.close().await;
}
