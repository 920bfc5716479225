//! The CLI against an admin listener with `admin_tls`: `https://` URLs, verified against `--ca`
//! (never skipped), and the listener refusing plain HTTP.

use super::*;

/// A gateway whose admin listener serves TLS with a certificate for 127.0.0.1, and the PEM file
/// of that certificate (its own CA, self-signed).
async fn tls_admin() -> (TestGateway, std::path::PathBuf, tempfile::TempDir) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("admin.crt"), dir.path().join("admin.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let overlay = format!(
        "{ADMIN}\nadmin_tls: {{ cert: \"{}\", key: \"{}\" }}\n",
        cert.display(),
        key.display()
    );
    (
        TestGateway::start(Backend::Embedded, &overlay).await,
        cert,
        dir,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_admin_urls_are_verified_against_the_ca() {
    let (gw, ca, _dir) = tls_admin().await;
    let url = format!("https://{}", gw.admin);
    let ca = ca.display().to_string();
    let with = |args: &[&str]| {
        let mut argv: Vec<&str> = args.to_vec();
        argv.extend(["--admin-url", &url]);
        argv.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let args = with(&["workspaces", "list", "--ca", &ca]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = at(gw.admin).keygate(&argv).await;
    assert_eq!(r.code, 0, "{r:#?}");
    assert!(r.stdout.contains("acme"), "{r:#?}");

    // Not trusted without the CA: refused, never downgraded or skipped.
    let args = with(&["workspaces", "list"]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = at(gw.admin).keygate(&argv).await;
    assert_eq!(r.code, 6, "{r:#?}");
    assert!(r.stderr.to_lowercase().contains("certificate"), "{r:#?}");

    // Plain HTTP to a TLS listener gets no API answer.
    let r = at(gw.admin).keygate(&["workspaces", "list"]).await;
    assert_eq!(r.code, 6, "{r:#?}");
}
