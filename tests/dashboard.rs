//! The dashboard (SPEC §6 "Dashboard") in a real headless Chromium against a real gateway: the
//! seeds' workflows end to end, each checking what the user sees and what the admin API and the
//! proxy then do, and the page's safety (text only, the secret gone once copied, the token only
//! in the tab). `screens` holds the layout, keyboard, 10,000-key, asset and in-browser unit
//! tests. Screenshots of the main screens go where the harness keeps them
//! (`KEYGATE_UPDATE_SCREENSHOTS=1` refreshes the README's, in `docs/screenshots/`).

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

#[path = "dashboard/page.rs"]
mod page;
#[path = "dashboard/screens.rs"]
mod screens;
mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use page::{CATALOGUE, Dash, lit};
use serde_json::json;
use support::gateway::{Backend, OPS_TOKEN, VIEWER_TOKEN};

/// The seeds' main workflow: create (an error beside its field first) → copy the secret once →
/// the key works through the proxy → its usage and logs show → revoke behind the warning → the
/// next request is refused `key_revoked` and the key is listed under `Revoked keys`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_copy_use_then_revoke() {
    let d = Dash::signed_in("").await;
    d.heading("No API keys yet").await;

    d.click("Create API key").await;
    d.dialog("Create API key").await;
    let unlabelled = d
        .eval(
            "[...document.querySelectorAll('dialog[open] :is(input, select, textarea)')]\
             .filter(c => c.labels.length === 0).length",
        )
        .await;
    assert_eq!(unlabelled, json!(0), "every field has a label");
    d.fill("Name", "Production server").await;
    d.fill("Description", "Used by the deploy workflow").await;
    d.check("Sessions (Read)").await;
    d.set_date("Expiry date", "2099-12-31").await;
    d.fill("IP allowlist", "127.0.0.1\n\nnot-an-address").await;
    d.eval("document.querySelector('dialog[open] .dialog-content').scrollTop = 0")
        .await;
    d.browser.screenshot("create-dialog").await;
    d.click("Create").await;
    // The API names `ip_allowlist[1]`: the message goes beside the field, with its line.
    let error = d.wait_field_error("IP allowlist").await;
    assert!(
        error.starts_with("Line 3: ") && error.contains("not-an-address"),
        "{error}"
    );
    let listed =
        d.gw.admin(
            Method::GET,
            "/v1/workspaces/acme/keys",
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert_eq!(listed.json()["keys"], json!([]), "nothing was created");
    d.fill("IP allowlist", "127.0.0.1\n10.0.0.0/8").await;
    d.click("Create").await;

    let dialog = d.dialog("Copy your API key").await;
    // Only `I have copied it` closes it: Escape (twice: Chromium's second one forces) does not.
    d.escape().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    d.escape().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    d.dialog("Copy your API key").await;
    let text = dialog.text().await.unwrap();
    let id = text
        .split_whitespace()
        .find(|w| w.starts_with("key_"))
        .expect("the Key ID in the dialog")
        .to_owned();
    assert!(text.contains("Key ID"), "{text}");
    d.click("Copy").await;
    let copied = d
        .el("//dialog[@open]//p[contains(@class,'copy-status')][normalize-space()!='']")
        .await;
    assert!(!copied.text().await.unwrap().is_empty());
    d.browser.screenshot("secret-dialog").await;
    let secret = d.take_secret().await;
    assert!(
        !d.page_holds(&secret).await,
        "the secret stayed in the page"
    );

    // What the API holds.
    let (status, key) = d.api_key("acme", &id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(key["name"], "Production server");
    assert_eq!(key["description"], "Used by the deploy workflow");
    assert_eq!(key["scopes"], json!(["sessions:read"]));
    assert_eq!(key["ip_allowlist"], json!(["127.0.0.1", "10.0.0.0/8"]));
    let expires = key["expires_at"].as_str().unwrap();
    assert!(
        expires.starts_with("2099-12-31") || expires.starts_with("2100-01-01"),
        "the end of the day chosen, in the browser's zone: {expires}"
    );
    // What the table shows.
    let row = d.row_text(&id).await;
    let prefix = format!("{}…", key["prefix"].as_str().unwrap());
    for shown in [
        "Production server",
        &prefix,
        &id,
        "Sessions (Read)",
        "Never",
        "Active",
    ] {
        assert!(row.contains(shown), "`{shown}` not in {row}");
    }
    assert!(
        !secret.starts_with(&format!("{prefix}x")),
        "the prefix is a start"
    );

    // The key works, and its use shows in its details.
    assert_eq!(d.proxied(&secret).await, (StatusCode::OK, None));
    d.wait_usage("acme", &id, 1).await;
    d.wait_log(&id, "forwarded").await;
    d.open_details("Production server").await;
    d.heading("Usage, last 30 days").await;
    let bars = d
        .eval("[...document.querySelectorAll('.chart-bar')].map(b => +b.dataset.requests)")
        .await;
    let bars = bars.as_array().unwrap();
    assert_eq!(bars.len(), 30, "one bar per day");
    assert_eq!(bars.last(), Some(&json!(1)), "today's request");
    let logs = d
        .el("//section[h2[normalize-space()='Request logs']]//tbody/tr")
        .await
        .text()
        .await
        .unwrap();
    for shown in ["GET", "/api/v1/sessions/1", "200", "127.0.0.1", "Forwarded"] {
        assert!(logs.contains(shown), "`{shown}` not in {logs}");
    }
    // Tall enough for the chart and the logs.
    let mut d = d;
    d.browser.resize(1280, 1300).await;
    d.browser.screenshot("key-details").await;
    d.browser.resize(1280, 900).await;

    // Revoke from the table, behind its warning; Cancel first changes nothing.
    d.click("← API keys").await;
    d.row(&id).await;
    d.click_in_row(&id, "Revoke").await;
    let warning = d.dialog("Revoke API key").await.text().await.unwrap();
    assert!(warning.contains("Applications using this key will stop working."));
    assert!(warning.contains("This cannot be undone."));
    d.click("Cancel").await;
    d.gone("//dialog").await;
    assert_eq!(d.api_key("acme", &id).await.1["status"], "active");
    d.click_in_row(&id, "Revoke").await;
    d.dialog("Revoke API key").await;
    d.click("Revoke key").await;
    d.gone("//dialog").await;
    let revoked = d.revoked_row(&id).await.text().await.unwrap();
    let (_, key) = d.api_key("acme", &id).await;
    assert_eq!(key["status"], "revoked");
    let revoked_on = d
        .eval(&format!(
            "new Intl.DateTimeFormat(undefined, {{dateStyle: 'medium'}}).format(new Date({}))",
            lit(key["revoked_at"].as_str().unwrap())
        ))
        .await;
    assert!(
        revoked.contains("Revoked") && revoked.contains(revoked_on.as_str().unwrap()),
        "{revoked}"
    );
    assert!(
        !d.has(&format!(
            "//table[@data-list='keys']//tr[@data-key-id={}]",
            lit(&id)
        ))
        .await,
        "a revoked key leaves the API keys table"
    );
    assert_eq!(
        d.proxied(&secret).await,
        (StatusCode::UNAUTHORIZED, Some("key_revoked".into()))
    );
    // The refusal is in the key's request logs, with its code.
    d.wait_log(&id, "key_revoked").await;
    d.reload().await;
    d.revoked_row(&id).await;
    d.open_details("Production server").await;
    let logs = d
        .el("//section[h2[normalize-space()='Request logs']]//tbody")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        logs.contains("key_revoked") && logs.contains("401"),
        "{logs}"
    );
    d.browser.close().await;
}

/// Rotate with a grace period: the new secret is shown once, both keys work during the grace,
/// and the two records name each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_keeps_the_old_key_through_its_grace_period() {
    let d = Dash::signed_in("").await;
    let old =
        d.gw.admin_create(
            "acme",
            json!({"name": "Mobile app", "scopes": ["sessions:read"]}),
        )
        .await;
    let (old_id, old_secret) = (old["id"].as_str().unwrap(), old["secret"].as_str().unwrap());
    d.reload().await;
    d.open_details("Mobile app").await;
    d.click("Rotate").await;
    d.dialog("Rotate API key").await;
    for choice in ["None", "1 hour", "24 hours", "7 days"] {
        assert!(
            d.has(&format!(
                "//dialog[@open]//fieldset[legend='Grace period']//label[normalize-space()={}]",
                lit(choice)
            ))
            .await,
            "`{choice}` offered"
        );
    }
    d.check("1 hour").await;
    d.click("Rotate key").await;
    let new_secret = d.take_secret().await;
    assert_ne!(new_secret, old_secret);

    let (_, previous) = d.api_key("acme", old_id).await;
    let new_id = previous["replaced_by"]
        .as_str()
        .expect("replaced_by")
        .to_owned();
    let (_, new) = d.api_key("acme", &new_id).await;
    assert_eq!(new["rotated_from"], old_id);
    assert_eq!(new["name"], "Mobile app");
    assert_eq!(new["scopes"], json!(["sessions:read"]));
    let stops = time::OffsetDateTime::parse(
        previous["expires_at"]
            .as_str()
            .expect("the old key now ends"),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let grace = stops - time::OffsetDateTime::now_utc();
    assert!(
        grace > time::Duration::minutes(55) && grace <= time::Duration::hours(1),
        "{grace}"
    );
    // The details now show the new key, and where it came from.
    d.el(&format!(
        "//div[@class='fact'][dt='Rotated from']//button[normalize-space()={}]",
        lit(old_id)
    ))
    .await;
    d.el(&format!("//code[normalize-space()={}]", lit(&new_id)))
        .await;
    assert_eq!(d.proxied(old_secret).await.0, StatusCode::OK);
    assert_eq!(d.proxied(&new_secret).await.0, StatusCode::OK);
    assert!(!d.page_holds(&new_secret).await);
    d.browser.close().await;
}

/// Edit: the dialog starts from the key, a refused scope is shown beside `Scopes`, and `Save
/// changes` sends what changed; the audit log tab then shows the update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_changes_the_key_and_the_audit_log_shows_it() {
    let d = Dash::signed_in("").await;
    let key =
        d.gw.admin_create(
            "acme",
            json!({"name": "CI pipeline", "description": "GitHub Actions",
                   "scopes": ["sessions:read"], "ip_allowlist": ["10.0.0.0/8"]}),
        )
        .await;
    let id = key["id"].as_str().unwrap();
    d.reload().await;
    d.open_details("CI pipeline").await;
    d.click("Edit").await;
    d.dialog("Edit API key").await;
    let name = d.field("Name").await;
    assert_eq!(
        name.prop("value").await.unwrap().as_deref(),
        Some("CI pipeline")
    );
    let read = d
        .el("//dialog[@open]//label[.//span[normalize-space(text())='Sessions (Read)']]//input")
        .await;
    assert_eq!(read.prop("checked").await.unwrap().as_deref(), Some("true"));

    d.fill("Other scopes", "billing:read").await;
    d.click("Save changes").await;
    let refused = d
        .el("//dialog[@open]//fieldset[legend='Scopes']/p[contains(@class,'field-error')][normalize-space()!='']")
        .await
        .text()
        .await
        .unwrap();
    assert!(refused.contains("billing:read"), "{refused}");

    d.fill("Other scopes", "").await;
    d.fill("Name", "CI pipeline v2").await;
    d.check("Sessions (Write)").await;
    d.fill("IP allowlist", "").await;
    d.field("Role")
        .await
        .select_by_value("viewer")
        .await
        .unwrap();
    d.click("Save changes").await;
    d.gone("//dialog").await;
    d.heading("Request logs").await;
    d.el("//h1[span='CI pipeline v2']").await;

    let (_, after) = d.api_key("acme", id).await;
    assert_eq!(after["name"], "CI pipeline v2");
    assert_eq!(after["description"], "GitHub Actions", "unchanged");
    assert_eq!(after["scopes"], json!(["sessions:read", "sessions:write"]));
    assert_eq!(after["role"], "viewer");
    assert_eq!(after["ip_allowlist"], json!([]));

    d.click("Audit log").await;
    d.heading("Audit log").await;
    let first = d
        .el("//table[caption='Audit log']//tbody/tr[1]")
        .await
        .text()
        .await
        .unwrap();
    for shown in ["token:ops", "key.update", id, "Changed"] {
        assert!(first.contains(shown), "`{shown}` not in {first}");
    }
    let headings = d
        .eval("[...document.querySelectorAll('table thead th')].map(t => t.textContent)")
        .await;
    for column in ["Time", "Actor", "Action", "Key"] {
        assert!(
            headings.as_array().unwrap().contains(&json!(column)),
            "{headings}"
        );
    }
    d.browser.close().await;
}

/// Delete, behind its warning: the key and its request logs are gone, and its secret is unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_key_and_its_logs() {
    let d = Dash::signed_in("").await;
    let key =
        d.gw.admin_create(
            "acme",
            json!({"name": "Old integration", "scopes": ["sessions:read"]}),
        )
        .await;
    let (id, secret) = (key["id"].as_str().unwrap(), key["secret"].as_str().unwrap());
    assert_eq!(d.proxied(secret).await.0, StatusCode::OK);
    d.wait_log(id, "forwarded").await;
    d.reload().await;
    d.open_details("Old integration").await;
    d.click("Delete").await;
    let warning = d.dialog("Delete API key").await.text().await.unwrap();
    assert!(warning.contains("This permanently deletes the key and its request logs."));
    d.click("Delete key").await;
    d.gone("//dialog").await;
    d.heading("No API keys yet").await;
    assert_eq!(d.api_key("acme", id).await.0, StatusCode::NOT_FOUND);
    let logs =
        d.gw.admin(
            Method::GET,
            &format!("/v1/workspaces/acme/keys/{id}/logs"),
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert_eq!(logs.status, StatusCode::NOT_FOUND);
    assert_eq!(
        d.proxied(secret).await,
        (StatusCode::UNAUTHORIZED, Some("invalid_key".into()))
    );
    d.browser.close().await;
}

/// A name that is markup shows as its characters, and nothing of it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_named_like_markup_shows_as_text() {
    let name = "<img src=x onerror=alert(1)>";
    let d = Dash::signed_in("").await;
    d.click("Create API key").await;
    d.dialog("Create API key").await;
    d.fill("Name", name).await;
    d.fill("Description", "<script>window.__ran = 1</script>")
        .await;
    d.click("Create").await;
    d.take_secret().await;
    let shown = d
        .el("//tbody//button[contains(@class,'key-link')]")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(shown, name);
    d.open_details(name).await;
    d.el(&format!("//h1[span={}]", lit(name))).await;
    d.click("Revoke").await;
    let dialog = d.dialog("Revoke API key").await.text().await.unwrap();
    assert!(dialog.contains(name), "{dialog}");
    d.click("Cancel").await;
    let (images, ran) = (
        d.eval("document.querySelectorAll('img').length").await,
        d.eval("window.__ran === undefined").await,
    );
    assert_eq!((images, ran), (json!(0), json!(true)));
    assert!(
        d.browser.client.get_alert_text().await.is_err(),
        "an alert opened"
    );
    d.browser.close().await;
}

/// A workspace without API access says `Upgrade required` and offers no create; a caller with
/// one workspace gets no selector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_without_api_access_says_upgrade_required() {
    let d = Dash::signed_in("").await;
    d.choose_workspace("trial").await;
    let notice = d
        .el("//div[contains(@class,'notice')][strong='Upgrade required']")
        .await
        .text()
        .await
        .unwrap();
    assert!(notice.contains("plan with API access"), "{notice}");
    assert!(!d.button("Create API key").await.is_enabled().await.unwrap());
    let r =
        d.gw.admin(
            Method::POST,
            "/v1/workspaces/trial/keys",
            Some(OPS_TOKEN),
            Some(json!({"name": "k"})),
        )
        .await;
    assert_eq!(r.error_code(), "upgrade_required", "as the API says");

    d.click("Sign out").await;
    d.sign_in(VIEWER_TOKEN).await;
    assert!(!d.has("//select[@id='workspace']").await, "one workspace");
    d.el("//span[@class='workspace-name'][.='acme']").await;
    d.browser.close().await;
}

/// At `max_active_keys` the page says so and offers no create, until a key is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_key_limit_disables_create_until_a_revoke() {
    let d = Dash::signed_in("workspaces: { small: { max_active_keys: 2 } }").await;
    let mut ids = Vec::new();
    for name in ["First", "Second"] {
        let k = d.gw.admin_create("small", json!({"name": name})).await;
        ids.push(k["id"].as_str().unwrap().to_owned());
    }
    d.choose_workspace("small").await;
    let limit = "//div[contains(@class,'notice')][strong='You can have up to 2 active API keys.']";
    d.el(limit).await;
    assert!(!d.button("Create API key").await.is_enabled().await.unwrap());
    d.click_in_row(&ids[0], "Revoke").await;
    d.dialog("Revoke API key").await;
    d.click("Revoke key").await;
    d.gone(limit).await;
    assert!(d.button("Create API key").await.is_enabled().await.unwrap());
    let ws =
        d.gw.admin(Method::GET, "/v1/workspaces/small", Some(OPS_TOKEN), None)
            .await
            .json();
    assert_eq!(ws["active_keys"], 1);
    d.browser.close().await;
}

/// A wrong token shows the API's message; the token lives in the tab's sessionStorage only,
/// survives a reload, and `Sign out` forgets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_keeps_the_token_in_the_tab_and_sign_out_forgets_it() {
    let d = Dash::start(Backend::Embedded, CATALOGUE).await;
    d.fill("Admin token", "not-a-token").await;
    d.click("Sign in").await;
    let shown = d.wait_field_error("Admin token").await;
    let api =
        d.gw.admin(Method::GET, "/v1/workspaces", Some("not-a-token"), None)
            .await;
    assert_eq!(shown, api.json()["error"]["message"].as_str().unwrap());

    d.sign_in(OPS_TOKEN).await;
    let kept = d
        .eval("[sessionStorage.getItem('keygate.token'), localStorage.length, document.cookie, location.href]")
        .await;
    assert_eq!(kept, json!([OPS_TOKEN, 0, "", d.url()]));
    assert!(d.browser.client.get_all_cookies().await.unwrap().is_empty());
    d.reload().await;

    d.click("Sign out").await;
    d.field("Admin token").await;
    assert_eq!(d.eval("sessionStorage.length").await, json!(0));
    assert!(!d.page_holds(OPS_TOKEN).await);
    d.browser.client.refresh().await.unwrap();
    d.field("Admin token").await;
    d.browser.close().await;
}
