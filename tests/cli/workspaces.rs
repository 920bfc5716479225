//! `keygate workspaces list|set|delete` against the workspaces API: a workspace created and
//! changed from the CLI is what the API shows and what key creation obeys; config workspaces and
//! workspaces holding keys refuse with their codes and exit codes.

use http::Method;

use super::*;

/// `keygate workspaces <args>` against `gw` as the ops token.
async fn workspaces(gw: &TestGateway, args: &[&str]) -> Run {
    let mut argv = vec!["workspaces"];
    argv.extend_from_slice(args);
    keygate(gw, &argv).await
}

/// `GET /v1/workspaces/{ws}` straight from the API.
async fn workspace_from_api(gw: &TestGateway, ws: &str) -> Reply {
    gw.admin(
        Method::GET,
        &format!("/v1/workspaces/{ws}"),
        Some(TOKEN),
        None,
    )
    .await
}

/// The cells of a table line (columns are two or more spaces apart).
fn cells(line: &str) -> Vec<&str> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_creates_and_changes_a_workspace_that_key_creation_obeys() {
    let gw = gateway().await;
    let r = workspaces(&gw, &["set", "globex"]).await.expect(0);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], "Created workspace globex.", "{}", r.stdout);
    assert_eq!(
        cells(lines[1]),
        [
            "NAME",
            "SOURCE",
            "API ACCESS",
            "KEYS",
            "RATE LIMIT",
            "QUOTA"
        ]
    );
    assert_eq!(cells(lines[2]), ["globex", "api", "yes", "0/5", "-", "-"]);

    // Only the flags given are sent; --json prints the API's workspace object.
    let v = workspaces(
        &gw,
        &[
            "set",
            "globex",
            "--api-access",
            "false",
            "--max-active-keys",
            "2",
            "--rate-limit",
            "10/1s:20",
            "--quota",
            "1000/monthly:15",
            "--metadata",
            "plan=pro",
            "--metadata",
            "region=eu",
            "--json",
        ],
    )
    .await
    .expect(0)
    .json();
    let stored = workspace_from_api(&gw, "globex").await.json();
    assert_eq!(v, stored);
    assert_eq!(stored["api_access"], false);
    assert_eq!(stored["max_active_keys"], 2);
    assert_eq!(
        stored["rate_limit"],
        serde_json::json!({"requests": 10, "period": "1s", "burst": 20})
    );
    assert_eq!(
        stored["quota"],
        serde_json::json!({"limit": 1000, "refill": "monthly", "refill_day": 15})
    );
    assert_eq!(
        stored["metadata"],
        serde_json::json!({"plan": "pro", "region": "eu"})
    );
    assert_eq!(stored["source"], "api");

    // The plan is in force for the next create.
    keys(&gw, &["create", "--name", "a", "-w", "globex"])
        .await
        .expect(4)
        .error_code("upgrade_required");
    let r = workspaces(&gw, &["set", "globex", "--api-access", "true"])
        .await
        .expect(0);
    assert!(
        r.stdout.starts_with("Updated workspace globex.\n"),
        "{}",
        r.stdout
    );
    for name in ["a", "b"] {
        keys(&gw, &["create", "--name", name, "-w", "globex"])
            .await
            .expect(0);
    }
    keys(&gw, &["create", "--name", "c", "-w", "globex"])
        .await
        .expect(1)
        .error_code("key_limit_reached");

    // The --no flags clear; what is not given stays.
    workspaces(
        &gw,
        &[
            "set",
            "globex",
            "--no-rate-limit",
            "--no-quota",
            "--no-metadata",
        ],
    )
    .await
    .expect(0);
    let stored = workspace_from_api(&gw, "globex").await.json();
    assert!(stored["rate_limit"].is_null(), "{stored}");
    assert!(stored["quota"].is_null(), "{stored}");
    assert_eq!(stored["metadata"], serde_json::json!({}));
    assert_eq!(stored["max_active_keys"], 2, "kept");
    assert_eq!(stored["active_keys"], 2);

    // What the API refuses keeps its code and exit code.
    workspaces(&gw, &["set", "Not-A-Name"])
        .await
        .expect(1)
        .error_code("invalid_request");
    Invocation {
        token: Some(VIEW_TOKEN),
        ..at(gw.admin)
    }
    .keygate(&["workspaces", "set", "initech"])
    .await
    .expect(4)
    .error_code("forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_config_and_api_workspaces_by_name_over_every_page() {
    let gw = gateway().await;
    workspaces(&gw, &["set", "globex", "--quota", "500/daily"])
        .await
        .expect(0);
    let (_id, _) = create(&gw, "one").await;

    let r = workspaces(&gw, &["list"]).await.expect(0);
    let rows: Vec<Vec<&str>> = r.stdout.lines().map(cells).collect();
    assert_eq!(
        rows[0],
        [
            "NAME",
            "SOURCE",
            "API ACCESS",
            "KEYS",
            "RATE LIMIT",
            "QUOTA"
        ]
    );
    let names: Vec<&str> = rows[1..].iter().map(|r| r[0]).collect();
    assert_eq!(
        names,
        ["acme", "globex", "other", "small", "trial"],
        "{}",
        r.stdout
    );
    assert_eq!(rows[1], ["acme", "config", "yes", "1/1000", "-", "-"]);
    assert_eq!(
        rows[2],
        ["globex", "api", "yes", "0/5", "-", "500, refill daily"]
    );
    assert_eq!(rows[5][..3], ["trial", "config", "no"]);

    // Pages of two are followed to the end and merged.
    let v = workspaces(&gw, &["list", "--limit", "2", "--json"])
        .await
        .expect(0)
        .json();
    let listed: Vec<&str> = v["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, names);
    assert!(v.get("next_cursor").is_none(), "{v}");

    // A viewer of acme alone sees acme alone.
    let v = Invocation {
        token: Some(ACME_VIEW_TOKEN),
        ..at(gw.admin)
    }
    .keygate(&["workspaces", "list", "--json"])
    .await
    .expect(0)
    .json();
    assert_eq!(v["workspaces"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["workspaces"][0]["name"], "acme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_workspaces_and_workspaces_with_keys_refuse_and_delete_confirms() {
    let gw = gateway().await;
    // A workspace of the config file is changed in the file, not here: exit 1 with the code.
    workspaces(&gw, &["set", "acme", "--max-active-keys", "9"])
        .await
        .expect(1)
        .error_code("managed_by_config");
    workspaces(&gw, &["delete", "acme", "--yes"])
        .await
        .expect(1)
        .error_code("managed_by_config");
    assert_eq!(
        workspace_from_api(&gw, "acme").await.json()["max_active_keys"],
        1000
    );

    workspaces(&gw, &["set", "globex"]).await.expect(0);
    let id = keys(&gw, &["create", "--name", "k", "-w", "globex", "--json"])
        .await
        .expect(0)
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    workspaces(&gw, &["delete", "globex", "--yes"])
        .await
        .expect(1)
        .error_code("workspace_not_empty");
    // Without --yes and without a terminal nothing is asked and nothing deleted.
    workspaces(&gw, &["delete", "globex"])
        .await
        .expect(2)
        .error_code("usage");

    keys(&gw, &["delete", &id, "-w", "globex", "--yes"])
        .await
        .expect(0);
    let r = workspaces(&gw, &["delete", "globex", "--yes"])
        .await
        .expect(0);
    assert_eq!(r.stdout, "Deleted workspace globex.\n");
    assert_eq!(
        workspace_from_api(&gw, "globex").await.status,
        StatusCode::NOT_FOUND
    );
    workspaces(&gw, &["delete", "globex", "--yes"])
        .await
        .expect(3)
        .error_code("not_found");
    // --json: the API answers 204, so there is nothing to print.
    workspaces(&gw, &["set", "initech"]).await.expect(0);
    let r = workspaces(&gw, &["delete", "initech", "--yes", "--json"])
        .await
        .expect(0);
    assert_eq!(r.stdout, "");
}
