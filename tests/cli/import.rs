//! `keygate keys import`: one secret from stdin or its SHA-256, and bulk import from a
//! JSON-lines file.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_takes_the_secret_from_stdin_or_its_sha256() {
    let gw = gateway().await;
    let r = Invocation {
        stdin: Some(format!("{LEGACY_SECRET}\n").into_bytes()),
        ..at(gw.admin)
    }
    .run(&[
        "import",
        "--name",
        "legacy",
        "--scope",
        "sessions:read",
        "--secret-stdin",
    ])
    .await
    .expect(0);
    assert!(!r.stdout.contains(LEGACY_SECRET) && !r.stderr.contains(LEGACY_SECRET));
    assert!(
        r.stdout.lines().nth(1).unwrap().contains("legacy"),
        "{}",
        r.stdout
    );
    assert_key_works(&gw, LEGACY_SECRET).await;

    let v = keys(
        &gw,
        &[
            "import",
            "--name",
            "hashed",
            "--scope",
            "sessions:read",
            "--sha256",
            &HASHED_SECRET_SHA256.to_uppercase(),
            "--prefix",
            "edsk_live_Sha2",
            "--json",
        ],
    )
    .await
    .expect(0)
    .json();
    assert_eq!(v["prefix"], "edsk_live_Sha2");
    assert!(v.get("secret").is_none_or(Value::is_null), "{v}");
    assert_key_works(&gw, HASHED_SECRET).await;

    // The same secret twice is refused, and the secret is not in the error.
    let r = Invocation {
        stdin: Some(LEGACY_SECRET.as_bytes().to_vec()),
        ..at(gw.admin)
    }
    .run(&["import", "--name", "again", "--secret-stdin"])
    .await
    .expect(1);
    r.error_code("key_exists");
    assert!(!r.stderr.contains(LEGACY_SECRET));
    // Nothing on stdin is a usage error, before any request.
    Invocation {
        stdin: Some(b"\n".to_vec()),
        ..at(gw.admin)
    }
    .run(&["import", "--name", "empty", "--secret-stdin"])
    .await
    .expect(2)
    .error_code("usage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_import_reports_every_line_and_exits_5_when_one_failed() {
    let gw = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.jsonl");
    let lines = [
        "# exported from the old system".to_owned(),
        String::new(),
        format!(r#"{{"name":"plain","secret":"{BULK_SECRET}","scopes":["sessions:read"]}}"#),
        format!(
            r#"{{"name":"hashed","sha256":"{BULK_HASHED_SHA256}","prefix":"edsk_live_Bulk","scopes":["sessions:read"],"owner":"cust_7"}}"#
        ),
        format!(r#"{{"name":"broken","secret":"{BULK_SECRET}""#),
        format!(r#"{{"name":"duplicate","secret":"{BULK_SECRET}"}}"#),
        r#"["not", "an", "object"]"#.to_owned(),
        r#"{"name":"no secret"}"#.to_owned(),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let path = file.to_str().unwrap();

    let r = keys(&gw, &["import", "--file", path]).await.expect(5);
    let out: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        out.len(),
        7,
        "six reported lines and a summary: {}",
        r.stdout
    );
    assert!(out[0].starts_with("line 3: ok key_"), "{}", out[0]);
    assert!(out[1].starts_with("line 4: ok key_"), "{}", out[1]);
    assert!(
        out[2].starts_with("line 5: invalid_line: not JSON"),
        "{}",
        out[2]
    );
    assert!(out[3].starts_with("line 6: key_exists: "), "{}", out[3]);
    assert!(
        out[4].starts_with("line 7: invalid_line: not a JSON object"),
        "{}",
        out[4]
    );
    assert!(
        out[5].starts_with("line 8: invalid_request: "),
        "{}",
        out[5]
    );
    assert_eq!(out[6], "2 imported, 4 failed.");
    r.error_code("import_incomplete");
    for secret in [BULK_SECRET, BULK_HASHED_SECRET] {
        assert!(!r.stdout.contains(secret) && !r.stderr.contains(secret));
    }
    assert_key_works(&gw, BULK_SECRET).await;
    assert_key_works(&gw, BULK_HASHED_SECRET).await;

    // --json: one result object per line; the file again, so now every key exists.
    let r = keys(&gw, &["import", "--file", path, "--json"])
        .await
        .expect(5);
    let results: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 6, "{}", r.stdout);
    assert_eq!(results[0]["line"], 3);
    assert_eq!(results[0]["ok"], false);
    assert_eq!(results[0]["error"]["code"], "key_exists");
    // The `sha256` line too, although its key was upgraded by its use above.
    assert_eq!(results[1]["ok"], false, "{}", r.stdout);
    assert_eq!(results[1]["error"]["code"], "key_exists");
    assert_eq!(results[2]["error"]["code"], "invalid_line");

    // A clean file exits 0; stdin works as `-`.
    let r = Invocation {
        stdin: Some(
            format!(
                "{{\"name\":\"from stdin\",\"secret\":\"{LEGACY_SECRET}\",\"scopes\":[\"sessions:read\"]}}\n"
            )
            .into_bytes(),
        ),
        ..at(gw.admin)
    }
    .run(&["import", "--file", "-", "--json"])
    .await
    .expect(0);
    let result: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(result["ok"], true);
    assert_eq!(result["key"]["name"], "from stdin");
    assert_key_works(&gw, LEGACY_SECRET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_import_stops_at_once_when_every_line_would_fail() {
    let gw = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.jsonl");
    std::fs::write(
        &file,
        format!(
            "{{\"name\":\"a\",\"secret\":\"{BULK_SECRET}\"}}\n{{\"name\":\"b\",\"secret\":\"{LEGACY_SECRET}\"}}\n"
        ),
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let r = keys(&gw, &["import", "--file", path, "-w", "trial"])
        .await
        .expect(4);
    r.error_code("upgrade_required");
    assert_eq!(
        r.stdout.lines().count(),
        1,
        "only the first line was sent: {r:#?}"
    );
    assert!(
        r.stdout.starts_with("line 1: upgrade_required: "),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("stopped at line 1"), "{r:#?}");
}
