//! The dashboard as a user meets it: a real gateway (`TestGateway`) and a real headless
//! Chromium on its admin listener, with helpers that find things by the words on the screen
//! (SPEC §6 "Dashboard": labels, buttons, headings, dialog titles) rather than by markup.

use std::time::{Duration, Instant};

use fantoccini::Locator;
use fantoccini::elements::Element;
use fantoccini::key::Key;
use http::{Method, StatusCode};
use keygate::keys::Secret;
use serde_json::{Value, json};

use crate::support::browser::{Browser, WAIT};
use crate::support::gateway::{Backend, OPS_TOKEN, TestGateway};

/// Scope labels for the catalogue of SPEC §3, as the seeds show them.
pub(crate) const CATALOGUE: &str = r#"
scopes:
  sessions:read: Sessions (Read)
  sessions:write: Sessions (Write)
  resources:read: Resources (Read)
  resources:write: Resources (Write)
  admin: Administration
"#;

/// An XPath string literal for `text` (which must not hold both kinds of quote).
pub(crate) fn lit(text: &str) -> String {
    if text.contains('\'') {
        assert!(!text.contains('"'), "quote {text} another way");
        format!("\"{text}\"")
    } else {
        format!("'{text}'")
    }
}

/// A gateway, a browser on its dashboard, and helpers.
pub(crate) struct Dash {
    pub(crate) gw: TestGateway,
    pub(crate) browser: Browser,
}

impl Dash {
    /// A gateway on `backend` with the base config plus `overlay`, and a 1280×900 browser on
    /// its dashboard (not signed in).
    pub(crate) async fn start(backend: Backend, overlay: &str) -> Dash {
        Dash::with(TestGateway::start(backend, overlay).await).await
    }

    /// A browser on the dashboard of `gw` (not signed in).
    pub(crate) async fn with(gw: TestGateway) -> Dash {
        let browser = Browser::start(1280, 900).await;
        let dash = Dash { gw, browser };
        dash.browser.open(&dash.url()).await;
        dash
    }

    /// [`Dash::start`] on the embedded store with the scope catalogue, signed in as `ops`.
    pub(crate) async fn signed_in(overlay: &str) -> Dash {
        let dash = Dash::start(Backend::Embedded, &format!("{CATALOGUE}\n{overlay}")).await;
        dash.sign_in(OPS_TOKEN).await;
        dash
    }

    /// The dashboard's address.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/", self.gw.admin)
    }

    /// Types `token` into `Admin token`, presses `Sign in` and waits for the `API keys` heading.
    pub(crate) async fn sign_in(&self, token: &str) {
        self.fill("Admin token", token).await;
        self.click("Sign in").await;
        self.heading("API keys").await;
    }

    /// Waits for the element at `xpath`.
    pub(crate) async fn el(&self, xpath: &str) -> Element {
        match self
            .browser
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::XPath(xpath))
            .await
        {
            Ok(el) => el,
            Err(e) => panic!(
                "no {xpath} on the page ({e}); it reads:\n{}",
                self.browser.text().await
            ),
        }
    }

    /// Whether an element at `xpath` is on the page now.
    pub(crate) async fn has(&self, xpath: &str) -> bool {
        self.browser
            .client
            .find(Locator::XPath(xpath))
            .await
            .is_ok()
    }

    /// Waits until no element is at `xpath`.
    pub(crate) async fn gone(&self, xpath: &str) {
        let deadline = Instant::now() + WAIT;
        while self.has(xpath).await {
            assert!(Instant::now() < deadline, "{xpath} stayed on the page");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for a heading (any level) reading `text`.
    pub(crate) async fn heading(&self, text: &str) -> Element {
        self.el(&format!(
            "//*[self::h1 or self::h2][normalize-space()={}]",
            lit(text)
        ))
        .await
    }

    /// The button reading `text`: in the open dialog if there is one, else on the page.
    pub(crate) async fn button(&self, text: &str) -> Element {
        let scope = if self.has("//dialog[@open]").await {
            "//dialog[@open]"
        } else {
            ""
        };
        self.el(&format!("{scope}//button[normalize-space()={}]", lit(text)))
            .await
    }

    /// Clicks the button reading `text` once it is enabled.
    pub(crate) async fn click(&self, text: &str) {
        let button = self.button(text).await;
        let deadline = Instant::now() + WAIT;
        while !button.is_enabled().await.expect("enabled?") {
            assert!(Instant::now() < deadline, "`{text}` stayed disabled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        button.click().await.expect("click");
    }

    /// Waits for the open dialog titled `title`.
    pub(crate) async fn dialog(&self, title: &str) -> Element {
        self.el(&format!(
            "//dialog[@open][.//h2[normalize-space()={}]]",
            lit(title)
        ))
        .await
    }

    /// The control labelled `label` (a `<label for>`), in the open dialog if there is one.
    pub(crate) async fn field(&self, label: &str) -> Element {
        let scope = if self.has("//dialog[@open]").await {
            "//dialog[@open]"
        } else {
            ""
        };
        self.el(&format!(
            "{scope}//*[@id={scope}//label[normalize-space()={}]/@for]",
            lit(label)
        ))
        .await
    }

    /// Replaces the text of the field labelled `label`.
    pub(crate) async fn fill(&self, label: &str, text: &str) {
        let field = self.field(label).await;
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    /// Sets a date field as a date picker would (typing dates depends on the locale).
    pub(crate) async fn set_date(&self, label: &str, day: &str) {
        let field = self.field(label).await;
        let arg = serde_json::to_value(&field).expect("element as argument");
        self.browser
            .run(
                "arguments[0].value = arguments[1];\
                 arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
                vec![arg, json!(day)],
            )
            .await;
    }

    /// The message shown beside the field labelled `label` (empty if none).
    pub(crate) async fn field_error(&self, label: &str) -> String {
        let field = self.field(label).await;
        let arg = serde_json::to_value(&field).expect("element as argument");
        let v = self
            .browser
            .run(
                "const f = arguments[0].closest('.field');\
                 const e = f && f.querySelector('.field-error');\
                 return e && !e.hidden ? e.textContent : '';",
                vec![arg],
            )
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the field labelled `label` shows an error, and returns it.
    pub(crate) async fn wait_field_error(&self, label: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let e = self.field_error(label).await;
            if !e.is_empty() {
                return e;
            }
            assert!(Instant::now() < deadline, "no error beside `{label}`");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the checkbox or radio button whose label reads `text` (in the open dialog).
    pub(crate) async fn check(&self, text: &str) {
        self.el(&format!(
            "//dialog[@open]//label[.//span[normalize-space(text())={}]]//input",
            lit(text)
        ))
        .await
        .click()
        .await
        .expect("check");
    }

    /// Presses Escape in the focused element.
    pub(crate) async fn escape(&self) {
        let focused = self
            .browser
            .client
            .active_element()
            .await
            .expect("a focused element");
        focused
            .send_keys(&String::from(char::from(Key::Escape)))
            .await
            .expect("Escape");
    }

    /// The table row of key `id`.
    pub(crate) async fn row(&self, id: &str) -> Element {
        self.el(&format!("//tr[@data-key-id={}]", lit(id))).await
    }

    /// The row of key `id` under the `Revoked keys` heading.
    pub(crate) async fn revoked_row(&self, id: &str) -> Element {
        self.el(&format!(
            "//section[h2[normalize-space()='Revoked keys']]//tr[@data-key-id={}]",
            lit(id)
        ))
        .await
    }

    /// The text of key `id`'s row, cells separated by ` | `.
    pub(crate) async fn row_text(&self, id: &str) -> String {
        let row = self.row(id).await;
        let arg = serde_json::to_value(&row).expect("element as argument");
        let v = self
            .browser
            .run(
                "return [...arguments[0].cells].map(c => c.textContent.trim()).join(' | ');",
                vec![arg],
            )
            .await;
        v.as_str().expect("row text").to_owned()
    }

    /// Clicks the button reading `text` inside key `id`'s row.
    pub(crate) async fn click_in_row(&self, id: &str, text: &str) {
        self.el(&format!(
            "//tr[@data-key-id={}]//button[normalize-space()={}]",
            lit(id),
            lit(text)
        ))
        .await
        .click()
        .await
        .expect("click");
    }

    /// Reads the secret from `Copy your API key` (a read-only field), then closes the dialog
    /// with `I have copied it`.
    pub(crate) async fn take_secret(&self) -> String {
        let dialog = self.dialog("Copy your API key").await;
        let field = self.field("API key").await;
        assert_eq!(
            field.attr("readonly").await.expect("attr").as_deref(),
            Some("true")
        );
        let secret = field.prop("value").await.expect("value").expect("a value");
        assert!(secret.starts_with("kg_live_"), "a keygate secret");
        let text = dialog.text().await.expect("dialog text");
        assert!(
            text.contains("You will not be able to see this key again."),
            "{text}"
        );
        self.click("I have copied it").await;
        self.gone("//dialog").await;
        secret
    }

    /// Whether `secret` is anywhere the page keeps things: its markup, an input's value, or
    /// the tab's storage.
    pub(crate) async fn page_holds(&self, secret: &str) -> bool {
        let source = self.browser.client.source().await.expect("page source");
        let elsewhere = self
            .browser
            .run(
                "const s = arguments[0];\
                 const values = [...document.querySelectorAll('input, textarea')].map(i => i.value);\
                 const stored = [sessionStorage, localStorage].flatMap(st =>\
                   Object.keys(st).map(k => st.getItem(k)));\
                 return values.concat(stored, [document.cookie, location.href])\
                   .some(v => v && v.includes(s));",
                vec![json!(secret)],
            )
            .await;
        source.contains(secret) || elsewhere == json!(true)
    }

    /// Switches the `Workspace` selector to `name`.
    pub(crate) async fn choose_workspace(&self, name: &str) {
        self.field("Workspace")
            .await
            .select_by_value(name)
            .await
            .expect("select workspace");
        self.heading("API keys").await;
    }

    /// The key `id` as the admin API has it now (as `ops`).
    pub(crate) async fn api_key(&self, ws: &str, id: &str) -> (StatusCode, Value) {
        let r = self
            .gw
            .admin(
                Method::GET,
                &format!("/v1/workspaces/{ws}/keys/{id}"),
                Some(OPS_TOKEN),
                None,
            )
            .await;
        let body = if r.body.is_empty() {
            Value::Null
        } else {
            r.json()
        };
        (r.status, body)
    }

    /// Waits until the store has counted `n` uses of key `id` (usage is written in batches).
    pub(crate) async fn wait_usage(&self, ws: &str, id: &str, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, key) = self.api_key(ws, id).await;
            if key["usage_count"].as_u64().unwrap_or(0) >= n {
                return;
            }
            assert!(Instant::now() < deadline, "usage never reached {n}: {key}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Evaluates `expr` in the page.
    pub(crate) async fn eval(&self, expr: &str) -> Value {
        self.browser.run(&format!("return {expr};"), vec![]).await
    }

    /// What the proxy answers `secret` on a route granted by `sessions:read`: the status and,
    /// for a refusal, the error code.
    pub(crate) async fn proxied(&self, secret: &str) -> (StatusCode, Option<String>) {
        let r = self
            .gw
            .get("/api/v1/sessions/1", Some(&Secret::new(secret.to_owned())))
            .await;
        let code = (!r.status.is_success()).then(|| r.error_code());
        (r.status, code)
    }

    /// Waits until key `id` (in `acme`) has a request-log entry with `code` (logs are written
    /// in batches).
    pub(crate) async fn wait_log(&self, id: &str, code: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self
                .gw
                .admin(
                    Method::GET,
                    &format!("/v1/workspaces/acme/keys/{id}/logs"),
                    Some(OPS_TOKEN),
                    None,
                )
                .await;
            if r.json()["entries"]
                .as_array()
                .is_some_and(|e| e.iter().any(|x| x["code"] == code))
            {
                return;
            }
            assert!(Instant::now() < deadline, "no `{code}` logged for {id}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reloads the page (the tab stays signed in) and waits for the key table's heading.
    pub(crate) async fn reload(&self) {
        self.browser.client.refresh().await.expect("reload");
        self.heading("API keys").await;
    }

    /// Opens the details of the key named `name` from the table.
    pub(crate) async fn open_details(&self, name: &str) {
        self.el(&format!("//tbody//button[normalize-space()={}]", lit(name)))
            .await
            .click()
            .await
            .expect("click");
        self.heading("Request logs").await;
    }
}
