//! What a key was used for (`keys logs`, `keys usage`), the audit log (`keygate audit`), quotas
//! on create and update, and tables with wide characters.

use http::Method;
use unicode_width::UnicodeWidthStr;

use super::*;

/// Runs `args` until `done` accepts its JSON (the usage flusher writes every 50 ms); returns it.
async fn poll_json(gw: &TestGateway, args: &[&str], done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = keys(gw, args).await.expect(0).json();
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{args:?} stayed {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /v1/workspaces/acme/keys/{id}` straight from the API, as the ops token.
async fn key_from_api(gw: &TestGateway, id: &str) -> Value {
    let r = gw
        .admin(
            Method::GET,
            &format!("/v1/workspaces/acme/keys/{id}"),
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_show_forwarded_and_refused_requests_with_their_code() {
    let gw = fast_flushing_gateway().await;
    let v = keys(
        &gw,
        &[
            "create",
            "--name",
            "logged",
            "--scope",
            "sessions:read",
            "--rate-limit",
            "1/1h",
            "--json",
        ],
    )
    .await
    .expect(0)
    .json();
    let id = v["id"].as_str().unwrap().to_owned();
    assert_key_works(&gw, v["secret"].as_str().unwrap()).await;
    let refused = use_key(&gw, v["secret"].as_str().unwrap()).await;
    assert_eq!(refused.error_code(), "rate_limited");

    let logs = poll_json(&gw, &["logs", &id, "--json"], |v| {
        v["entries"].as_array().is_some_and(|e| e.len() >= 2)
    })
    .await;
    let got: Vec<(&str, u64)> = logs["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["code"].as_str().unwrap(), e["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        got,
        [("rate_limited", 429), ("forwarded", 200)],
        "newest first"
    );

    let r = keys(&gw, &["logs", &id]).await.expect(0);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", r.stdout);
    let header: Vec<&str> = lines[0]
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "TIME",
            "METHOD",
            "PATH",
            "STATUS",
            "CODE",
            "CLIENT IP",
            "LATENCY"
        ]
    );
    for (line, status, code) in [
        (lines[1], "429", "rate_limited"),
        (lines[2], "200", "forwarded"),
    ] {
        for cell in ["GET", "/api/v1/sessions", status, code, "127.0.0.1"] {
            assert!(line.contains(&format!(" {cell} ")), "{cell} in {line}");
        }
        assert!(line.ends_with(" ms"), "{line}");
    }

    let one = keys(&gw, &["logs", &id, "--limit", "1", "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(one["entries"].as_array().unwrap().len(), 1);
    assert_eq!(one["entries"][0]["code"], "rate_limited");
    keys(&gw, &["logs", "key_0000000000000000000000"])
        .await
        .expect(3)
        .error_code("not_found");
    keys(&gw, &["logs", &id, "--limit", "0"]).await.expect(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_forwarded_requests_per_day_with_a_total() {
    let gw = fast_flushing_gateway().await;
    let (id, secret) = create(&gw, "counted").await;
    for _ in 0..3 {
        assert_key_works(&gw, &secret).await;
    }
    let total = |v: &Value| -> u64 {
        v["days"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["requests"].as_u64().unwrap())
            .sum()
    };
    let v = poll_json(&gw, &["usage", &id, "--days", "3", "--json"], |v| {
        total(v) == 3
    })
    .await;
    let days = v["days"].as_array().unwrap();
    assert_eq!(days.len(), 3, "{v}");

    let r = keys(&gw, &["usage", &id, "--days", "3"]).await.expect(0);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "header, three days, total: {}", r.stdout);
    assert!(lines[0].starts_with("DATE") && lines[0].ends_with("REQUESTS"));
    for (line, day) in lines[1..4].iter().zip(days) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[0], day["date"].as_str().unwrap(), "oldest first");
        assert_eq!(cells[1], day["requests"].to_string());
    }
    assert_eq!(
        lines[4].split_whitespace().collect::<Vec<_>>(),
        ["Total", "3"]
    );

    // The API's default is 30 days; more than 90 is refused before any request.
    let v = keys(&gw, &["usage", &id, "--json"]).await.expect(0).json();
    assert_eq!(v["days"].as_array().unwrap().len(), 30);
    let r = keys(&gw, &["usage", &id, "--days", "91"]).await.expect(2);
    assert!(r.stderr.starts_with("error: "), "{r:#?}");
    keys(&gw, &["usage", "key_0000000000000000000000"])
        .await
        .expect(3)
        .error_code("not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_shows_who_did_what_and_follows_pages() {
    let gw = gateway().await;
    let (id, _) = create(&gw, "audited").await;
    keys(&gw, &["update", &id, "--name", "renamed"])
        .await
        .expect(0);
    let other = keys(
        &gw,
        &["create", "--name", "elsewhere", "-w", "small", "--json"],
    )
    .await
    .expect(0)
    .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // KEYGATE_WORKSPACE=acme: acme's entries, newest first.
    let v = keygate(&gw, &["audit", "--json"]).await.expect(0).json();
    let entries = v["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 2, "{v}");
    assert_eq!(entries[0]["action"], "key.update");
    assert_eq!(entries[0]["key_id"], id.as_str());
    assert_eq!(entries[0]["actor"], "token:ops");
    assert_eq!(entries[0]["detail"]["changes"]["name"]["new"], "renamed");
    assert_eq!(entries[1]["action"], "key.create");

    let r = keygate(&gw, &["audit"]).await.expect(0);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", r.stdout);
    assert!(lines[0].starts_with("TIME") && lines[0].ends_with("DETAIL"));
    for cell in [
        "token:ops",
        "key.update",
        "acme",
        id.as_str(),
        "ok",
        "renamed",
    ] {
        assert!(lines[1].contains(cell), "{cell} in {}", lines[1]);
    }
    assert!(lines[2].contains("key.create"), "{}", lines[2]);

    // One page at a time, as `keys list` does.
    let r = keygate(&gw, &["audit", "--limit", "1"]).await.expect(0);
    assert_eq!(r.stdout.lines().count(), 2, "{}", r.stdout);
    assert!(
        r.stderr.contains("More entries") && r.stderr.contains("--cursor"),
        "{r:#?}"
    );
    let page = keygate(&gw, &["audit", "--limit", "1", "--json"])
        .await
        .expect(0)
        .json();
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let next = keygate(
        &gw,
        &["audit", "--limit", "1", "--cursor", &cursor, "--json"],
    )
    .await
    .expect(0)
    .json();
    assert_eq!(next["entries"][0]["action"], "key.create");
    let all = keygate(&gw, &["audit", "--limit", "1", "--all", "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(all["entries"].as_array().unwrap(), &entries);

    // Every workspace: an empty -w overrides KEYGATE_WORKSPACE; it needs view on all of them.
    let v = keygate(&gw, &["audit", "-w", "", "--json"])
        .await
        .expect(0)
        .json();
    let ids: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["key_id"].as_str())
        .collect();
    assert!(
        ids.contains(&other.as_str()) && ids.contains(&id.as_str()),
        "{v}"
    );
    let acme_only = Invocation {
        token: Some(ACME_VIEW_TOKEN),
        ..at(gw.admin)
    };
    acme_only
        .keygate(&["audit", "-w", ""])
        .await
        .expect(4)
        .error_code("forbidden");
    // A workspace with no entries (the ops token may name any: it may be created later).
    let r = keygate(&gw, &["audit", "-w", "nowhere"]).await.expect(0);
    assert_eq!(r.stdout, "No audit entries.\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_update_set_and_clear_the_quota() {
    let gw = gateway().await;
    let v = keys(
        &gw,
        &[
            "create",
            "--name",
            "metered",
            "--scope",
            "sessions:read",
            "--quota",
            "10000/monthly:15",
            "--json",
        ],
    )
    .await
    .expect(0)
    .json();
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(
        key_from_api(&gw, &id).await["quota"],
        serde_json::json!({"limit": 10000, "refill": "monthly", "refill_day": 15})
    );

    keys(&gw, &["update", &id, "--quota", "500/daily"])
        .await
        .expect(0);
    assert_eq!(
        key_from_api(&gw, &id).await["quota"],
        serde_json::json!({"limit": 500, "refill": "daily"})
    );
    let shown = keys(&gw, &["show", &id]).await.expect(0).stdout;
    assert!(
        shown.contains("Quota         500, refill daily\n"),
        "{shown}"
    );

    keys(&gw, &["update", &id, "--no-quota"]).await.expect(0);
    assert!(key_from_api(&gw, &id).await["quota"].is_null());

    // The quota holds at the proxy: one request that never refills.
    let v = keys(
        &gw,
        &[
            "create",
            "--name",
            "once",
            "--scope",
            "sessions:read",
            "--quota",
            "1/none",
            "--json",
        ],
    )
    .await
    .expect(0)
    .json();
    let secret = v["secret"].as_str().unwrap();
    assert_key_works(&gw, secret).await;
    assert_eq!(use_key(&gw, secret).await.error_code(), "quota_exceeded");

    let r = keys(&gw, &["create", "--name", "x", "--quota", "10/monthly:29"])
        .await
        .expect(2);
    assert!(r.stderr.contains("the refill day must be 1–28"), "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_keep_columns_aligned_for_names_in_wide_scripts() {
    let gw = gateway().await;
    // Each of these characters takes two terminal columns.
    create(&gw, "本番サーバー").await;
    create(&gw, "ci").await;
    let r = keys(&gw, &["list"]).await.expect(0);
    let starts: Vec<usize> = r
        .stdout
        .lines()
        .map(|l| {
            let at = l.find("kg_live_").or_else(|| l.find("PREFIX")).unwrap();
            l[..at].width()
        })
        .collect();
    assert_eq!(starts.len(), 3, "{}", r.stdout);
    assert!(
        starts.iter().all(|&s| s == starts[0]),
        "{starts:?}\n{}",
        r.stdout
    );
    assert!(r.stdout.contains("本番サーバー"), "{}", r.stdout);
}
