//! What the CLI does without a server to answer: usage errors, an unreachable or silent admin
//! API, confirmations refused off a terminal, help.

use super::*;

#[tokio::test]
async fn a_missing_token_or_workspace_is_a_usage_error() {
    let r = Invocation {
        token: None,
        ..at(closed_port())
    }
    .run(&["list"])
    .await
    .expect(2);
    r.error_code("usage");
    assert!(r.stderr.contains("KEYGATE_ADMIN_TOKEN"), "{r:#?}");
    at(closed_port())
        .run(&["list", "-w", ""])
        .await
        .expect(2)
        .error_code("usage");
    for args in [&["workspaces", "list"][..], &["audit"]] {
        let r = Invocation {
            token: None,
            ..at(closed_port())
        }
        .keygate(args)
        .await
        .expect(2);
        r.error_code("usage");
        assert!(r.stderr.contains("KEYGATE_ADMIN_TOKEN"), "{r:#?}");
    }
}

#[tokio::test]
async fn an_unreachable_admin_api_exits_6() {
    for args in [
        &["keys", "list"][..],
        &["keys", "logs", "key_0000000000000000000000"],
        &["keys", "usage", "key_0000000000000000000000"],
        &["audit"],
        &["workspaces", "list"],
        &["workspaces", "set", "acme", "--api-access", "true"],
    ] {
        let r = at(closed_port()).keygate(args).await;
        assert_eq!(r.code, 6, "{args:?}: {r:#?}");
        r.error_code("unreachable");
    }
}

#[tokio::test]
async fn a_silent_admin_api_times_out_with_exit_6() {
    // Bound but never accepted: the kernel completes the handshake, nobody answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    at(silent.local_addr().unwrap())
        .run(&["show", "key_0000000000000000000000", "--timeout", "300ms"])
        .await
        .expect(6)
        .error_code("timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn revoke_and_delete_without_yes_off_a_terminal_refuse_before_any_request() {
    let r = at(closed_port())
        .keygate(&["workspaces", "delete", "acme"])
        .await
        .expect(2);
    r.error_code("usage");
    assert!(r.stderr.contains("--yes"), "{r:#?}");
    // Exit 2, not 6: the refusal comes before the (unreachable) API is asked anything.
    for command in ["revoke", "delete"] {
        let r = at(closed_port())
            .run(&[command, "key_0000000000000000000000"])
            .await
            .expect(2);
        r.error_code("usage");
        assert!(r.stderr.contains("--yes"), "{r:#?}");
    }
}

#[tokio::test]
async fn usage_errors_exit_2() {
    for args in [
        // A plaintext secret is never an argument.
        &["import", "--name", "n", "--secret", LEGACY_SECRET][..],
        &["create"],
        &[
            "create",
            "--name",
            "n",
            "--expires-in",
            "1d",
            "--expires-at",
            "2030-01-01T00:00:00Z",
        ],
        &["create", "--name", "n", "--rate-limit", "fast"],
        &["update", "key_x", "--role", "viewer", "--no-role"],
        &["list", "--limit", "1000"],
        &["list", "--admin-url", "ftp://admin.example.com"],
        &["create", "--name", "n", "--quota", "10000/weekly"],
        &["update", "key_x", "--quota", "1/none", "--no-quota"],
        &["logs", "key_x", "--limit", "101"],
        &["usage", "key_x", "--days", "0"],
    ] {
        let r = at(closed_port()).run(args).await;
        assert_eq!(r.code, 2, "{args:?}: {r:#?}");
        assert!(r.stderr.starts_with("error: "), "{args:?}: {r:#?}");
        assert!(!r.stderr.contains(LEGACY_SECRET), "{r:#?}");
    }
    for args in [
        &["audit", "--limit", "0"][..],
        &["workspaces", "set"],
        &["workspaces", "set", "acme", "--api-access", "maybe"],
        &[
            "workspaces",
            "set",
            "acme",
            "--quota",
            "1/none",
            "--no-quota",
        ],
        &[
            "workspaces",
            "set",
            "acme",
            "--metadata",
            "a=1",
            "--metadata",
            "a=2",
        ],
        &["workspaces", "delete", "-w", "acme", "--yes"],
    ] {
        let r = at(closed_port()).keygate(args).await;
        assert_eq!(r.code, 2, "{args:?}: {r:#?}");
        assert!(r.stderr.starts_with("error: "), "{args:?}: {r:#?}");
    }
}

#[tokio::test]
async fn every_commands_help_documents_the_exit_codes() {
    for command in ["keys", "workspaces", "audit"] {
        let r = at(closed_port())
            .keygate(&[command, "--help"])
            .await
            .expect(0);
        for line in [
            "Exit codes:",
            "1  the admin API refused the request",
            "2  usage error",
            "3  not found",
            "4  not authorized",
            "5  bulk import",
            "6  admin API unreachable",
        ] {
            assert!(r.stdout.contains(line), "missing {line:?} in {}", r.stdout);
        }
    }
}
