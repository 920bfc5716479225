//! The key lifecycle through `keygate keys`: create, list, show, update, rotate, revoke,
//! delete, and the exit codes of the API's refusals.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_shows_the_secret_once_and_the_key_works_at_the_proxy() {
    let gw = gateway().await;
    let r = keys(
        &gw,
        &[
            "create",
            "--name",
            "Production server",
            "--description",
            "deploys",
            "--scope",
            "sessions:read",
            "--expires-in",
            "90d",
            "--ip",
            "127.0.0.1",
            "--ip",
            "::1/128",
            "--owner",
            "cust_42",
            "--metadata",
            r#"{"team":"payments"}"#,
            "--rate-limit",
            "100/1s:200",
        ],
    )
    .await
    .expect(0);
    let header = r.stdout.lines().next().unwrap();
    for column in [
        "ID",
        "NAME",
        "PREFIX",
        "SCOPES/ROLE",
        "STATUS",
        "CREATED",
        "LAST USED",
        "USES",
        "EXPIRES",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = r.stdout.lines().nth(1).unwrap();
    assert!(row.starts_with("key_"), "{row}");
    assert!(
        row.contains("Production server") && row.contains("active"),
        "{row}"
    );
    assert!(row.contains("never"), "never used: {row}");
    let secret = r.secret();
    assert!(secret.starts_with("kg_live_"), "{secret}");
    assert_eq!(r.stdout.matches(&secret).count(), 1, "shown once");
    assert!(!r.stderr.contains(&secret));
    assert_key_works(&gw, &secret).await;

    // --json prints the 201 body: the record with every field sent, plus the secret.
    let r = keys(
        &gw,
        &[
            "--json",
            "create",
            "--name",
            "ci",
            "--role",
            "viewer",
            "--owner",
            "cust_42",
            "--rate-limit",
            "5/1s",
        ],
    )
    .await
    .expect(0);
    let v = r.json();
    assert_eq!(v["name"], "ci");
    assert_eq!(v["role"], "viewer");
    assert_eq!(v["owner"], "cust_42");
    assert_eq!(v["rate_limit"]["requests"], 5);
    assert_eq!(v["status"], "active");
    assert_eq!(v["workspace"], "acme");
    assert_key_works(&gw, v["secret"].as_str().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_prints_a_table_and_merges_all_pages_as_json() {
    let gw = gateway().await;
    let mut ids = Vec::new();
    for name in ["first", "second", "third"] {
        ids.push(create(&gw, name).await.0);
    }

    let r = keys(&gw, &["list"]).await.expect(0);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "header and three rows: {}", r.stdout);
    assert!(
        lines[0].starts_with("ID") && lines[0].ends_with("EXPIRES"),
        "{}",
        lines[0]
    );
    for id in &ids {
        assert!(r.stdout.contains(id.as_str()), "{id}: {}", r.stdout);
    }

    // One page of one, with a cursor to the next.
    let r = keys(&gw, &["list", "--limit", "1", "--json"])
        .await
        .expect(0);
    let page = r.json();
    assert_eq!(page["keys"].as_array().unwrap().len(), 1);
    assert!(page["next_cursor"].is_string(), "{page}");
    let r = keys(&gw, &["list", "--limit", "1"]).await.expect(0);
    assert!(r.stderr.contains("--all"), "says there is more: {r:#?}");

    // --all follows the cursors: every key once, newest first.
    let r = keys(&gw, &["list", "--limit", "1", "--all", "--json"])
        .await
        .expect(0);
    let listed: Vec<String> = r.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    assert!(r.json().get("secret").is_none() && !r.stdout.contains("\"secret\""));

    let r = keys(&gw, &["list", "--status", "revoked"]).await.expect(0);
    assert_eq!(r.stdout, "No keys.\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_prints_every_field_and_an_unknown_key_exits_3() {
    let gw = gateway().await;
    let (id, secret) = create(&gw, "shown").await;
    let r = keys(&gw, &["show", &id]).await.expect(0);
    for line in [
        format!("ID            {id}"),
        "Workspace     acme".into(),
        "Name          shown".into(),
        "Status        active".into(),
        "Scopes        sessions:read".into(),
        "IP allowlist  any address".into(),
        "Expires       never".into(),
        "Last used     never".into(),
        "Uses          0".into(),
    ] {
        assert!(
            r.stdout.contains(&line),
            "missing {line:?} in\n{}",
            r.stdout
        );
    }
    assert!(!r.stdout.contains(&secret));
    let r = keys(&gw, &["show", &id, "--json"]).await.expect(0);
    assert_eq!(r.json()["id"], id.as_str());

    keys(&gw, &["show", "key_0000000000000000000000"])
        .await
        .expect(3)
        .error_code("not_found");
    // An unknown workspace is not found either.
    keys(&gw, &["list", "-w", "nowhere"])
        .await
        .expect(3)
        .error_code("not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_sends_only_the_given_fields_and_the_no_flags_clear() {
    let gw = gateway().await;
    let r = keys(
        &gw,
        &[
            "create",
            "--name",
            "before",
            "--description",
            "kept",
            "--scope",
            "sessions:read",
            "--owner",
            "cust_1",
            "--expires-in",
            "30d",
            "--json",
        ],
    )
    .await
    .expect(0);
    let id = r.json()["id"].as_str().unwrap().to_owned();

    let v = keys(&gw, &["update", &id, "--name", "after", "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(v["name"], "after");
    assert_eq!(v["description"], "kept", "untouched fields stay");
    assert_eq!(v["scopes"], serde_json::json!(["sessions:read"]));
    assert!(v["expires_at"].is_string());

    let v = keys(
        &gw,
        &[
            "update",
            &id,
            "--no-description",
            "--clear-scopes",
            "--role",
            "viewer",
            "--no-expiry",
            "--no-owner",
            "--ip",
            "10.0.0.0/8",
            "--json",
        ],
    )
    .await
    .expect(0)
    .json();
    assert!(v["description"].is_null(), "{v}");
    assert!(v["expires_at"].is_null(), "{v}");
    assert!(v["owner"].is_null(), "{v}");
    assert_eq!(v["scopes"], serde_json::json!([]), "{v}");
    assert_eq!(v["role"], "viewer");
    assert_eq!(v["ip_allowlist"], serde_json::json!(["10.0.0.0/8"]));

    // Human mode prints the updated row.
    let r = keys(
        &gw,
        &["update", &id, "--no-role", "--scope", "sessions:read"],
    )
    .await
    .expect(0);
    assert!(
        r.stdout.lines().nth(1).unwrap().contains("sessions:read"),
        "{}",
        r.stdout
    );

    keys(&gw, &["update", &id])
        .await
        .expect(2)
        .error_code("usage");
    keys(&gw, &["update", &id, "--scope", "no:such:scope"])
        .await
        .expect(1)
        .error_code("invalid_request");
    keys(
        &gw,
        &["update", "key_0000000000000000000000", "--name", "x"],
    )
    .await
    .expect(3)
    .error_code("not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_shows_the_new_secret_and_the_old_keys_expiry() {
    let gw = gateway().await;
    let (old_id, old_secret) = create(&gw, "rotating").await;

    let r = keys(&gw, &["rotate", &old_id, "--grace", "1h"])
        .await
        .expect(0);
    let new_secret = r.secret();
    assert_ne!(new_secret, old_secret);
    let previous = r
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("Previous key {old_id}")))
        .unwrap_or_else(|| panic!("no previous-key line: {}", r.stdout));
    assert!(
        previous.ends_with(" UTC"),
        "the old key now expires: {previous}"
    );
    assert_key_works(&gw, &new_secret).await;
    assert_key_works(&gw, &old_secret).await;

    // Without --grace the old secret stops at once; --json prints the 201 body.
    let new_id = r
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    let v = keys(&gw, &["rotate", &new_id, "--json"])
        .await
        .expect(0)
        .json();
    assert!(v["key"]["secret"].is_string(), "{v}");
    assert_eq!(v["previous"]["id"], new_id.as_str());
    // The lineage, both ways, in the API and in `keys show`.
    let newest = v["key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(v["key"]["rotated_from"], new_id.as_str());
    assert_eq!(v["previous"]["replaced_by"], newest.as_str());
    let shown = keys(&gw, &["show", &new_id]).await.expect(0).stdout;
    assert!(
        shown.contains(&format!("Rotated from  {old_id}\n")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("Replaced by   {newest}\n")),
        "{shown}"
    );
    assert!(v["previous"]["expires_at"].is_string(), "{v}");
    assert_eq!(
        use_key(&gw, &new_secret).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_key_works(&gw, v["key"]["secret"].as_str().unwrap()).await;

    keys(&gw, &["rotate", "key_0000000000000000000000"])
        .await
        .expect(3)
        .error_code("not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_refuses_without_yes_off_a_terminal_and_revokes_with_it() {
    let gw = gateway().await;
    let (id, secret) = create(&gw, "doomed").await;

    let r = keys(&gw, &["revoke", &id]).await.expect(2);
    r.error_code("usage");
    assert!(r.stderr.contains("--yes"), "{r:#?}");
    let v = keys(&gw, &["show", &id, "--json"]).await.expect(0).json();
    assert_eq!(v["status"], "active", "nothing was revoked");
    assert_key_works(&gw, &secret).await;

    let r = keys(&gw, &["revoke", &id, "--yes"]).await.expect(0);
    assert!(
        r.stdout.lines().nth(1).unwrap().contains("revoked"),
        "{}",
        r.stdout
    );
    let refused = use_key(&gw, &secret).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.error_code(), "key_revoked");

    let v = keys(&gw, &["list", "--status", "revoked", "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(v["keys"][0]["id"], id.as_str());
    let first_revoked_at = v["keys"][0]["revoked_at"].clone();
    assert!(first_revoked_at.is_string(), "{v}");
    // Revoking again changes nothing; updating a revoked key is refused.
    let again = keys(&gw, &["revoke", &id, "-y", "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(again["revoked_at"], first_revoked_at, "{again}");
    keys(&gw, &["update", &id, "--name", "back"])
        .await
        .expect(1)
        .error_code("key_revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_refuses_without_yes_and_removes_the_key_with_it() {
    let gw = gateway().await;
    let (id, secret) = create(&gw, "deleted").await;

    keys(&gw, &["delete", &id])
        .await
        .expect(2)
        .error_code("usage");
    keys(&gw, &["show", &id]).await.expect(0);

    let r = keys(&gw, &["delete", &id, "--yes"]).await.expect(0);
    assert!(r.stdout.contains(&format!("Deleted {id}")), "{}", r.stdout);
    keys(&gw, &["show", &id])
        .await
        .expect(3)
        .error_code("not_found");
    assert_eq!(use_key(&gw, &secret).await.status, StatusCode::UNAUTHORIZED);
    keys(&gw, &["delete", &id, "--yes"])
        .await
        .expect(3)
        .error_code("not_found");
    // --json: the API answers 204, so there is nothing to print.
    let (id, _) = create(&gw, "quiet").await;
    let r = keys(&gw, &["delete", &id, "--yes", "--json"])
        .await
        .expect(0);
    assert_eq!(r.stdout, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_the_api_map_to_exit_codes() {
    let gw = gateway().await;
    // 400: a scope the config does not know.
    let r = keys(&gw, &["create", "--name", "x", "--scope", "no:such:scope"])
        .await
        .expect(1);
    r.error_code("invalid_request");
    assert!(r.stderr.contains("field: scopes"), "{r:#?}");
    // 403 upgrade_required: a workspace without API access.
    keys(&gw, &["create", "--name", "x", "-w", "trial"])
        .await
        .expect(4)
        .error_code("upgrade_required");
    // 401: a token the gateway does not know, given as an argument this time.
    let wrong = "wrong-token-0123456789abcdef";
    let r = Invocation {
        token: None,
        ..at(gw.admin)
    }
    .run(&["list", "--token", wrong])
    .await
    .expect(4);
    r.error_code("unauthorized");
    assert!(!r.stdout.contains(wrong) && !r.stderr.contains(wrong));
    // 403 forbidden: a token that may only view.
    let viewer = Invocation {
        token: Some(VIEW_TOKEN),
        ..at(gw.admin)
    };
    viewer
        .run(&["create", "--name", "x"])
        .await
        .expect(4)
        .error_code("forbidden");
    Invocation {
        token: Some(VIEW_TOKEN),
        ..at(gw.admin)
    }
    .run(&["list"])
    .await
    .expect(0);
    // 409 key_limit_reached: the second key of a workspace that allows one.
    keys(&gw, &["create", "--name", "one", "-w", "small"])
        .await
        .expect(0);
    keys(&gw, &["create", "--name", "two", "-w", "small"])
        .await
        .expect(1)
        .error_code("key_limit_reached");
}
