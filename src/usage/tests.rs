//! The flusher's aggregation, drops and write of a batch.

use super::*;
use crate::keys::{HashScheme, KeyRecord, SecretHash};

fn key(name: &str) -> Arc<CachedKey> {
    let now = OffsetDateTime::now_utc();
    Arc::new(crate::store::cached::Grants::new().compact(KeyRecord {
        id: KeyId::generate(),
        workspace: "acme".into(),
        name: name.into(),
        description: None,
        prefix: "kg_live_abcd".into(),
        hash: SecretHash([0; 32]),
        hash_scheme: HashScheme::KeyedBlake3,
        scopes: vec![],
        role: None,
        ip_allowlist: vec![],
        expires_at: None,
        rate_limit: None,
        quota: None,
        owner: None,
        metadata: None,
        created_at: now,
        created_by: "tests".into(),
        updated_at: now,
        revoked_at: None,
        last_used_at: None,
        usage_count: 0,
        sha256_tag: None,
        rotated_from: None,
        replaced_by: None,
    }))
}

fn use_of(key: &Arc<CachedKey>, path: &str, at: OffsetDateTime) -> Use {
    Use {
        key: key.clone(),
        at,
        log: Some(LogFields {
            method: Method::GET,
            path: path.into(),
            status: 200,
            client_ip: "127.0.0.1".parse().expect("ip"),
            latency: Duration::from_millis(1),
        }),
        refused: None,
    }
}

fn paths(k: &KeyUsage) -> Vec<&str> {
    k.logs.iter().map(|e| e.path.as_str()).collect()
}

#[test]
fn a_full_or_closed_queue_drops_and_counts_apart() {
    let metrics = UsageMetrics::default();
    let (tx, rx) = mpsc::channel(2);
    let recorder = Recorder {
        tx: Some(tx),
        keep_logs: false,
        metrics: metrics.clone(),
    };
    let k = key("a");
    let record = || {
        recorder.record(
            k.clone(),
            &Method::GET,
            "/x",
            StatusCode::OK,
            "127.0.0.1".parse().expect("ip"),
            Duration::ZERO,
            None,
        );
    };
    for _ in 0..5 {
        record();
    }
    assert_eq!(metrics.dropped_count(UsageDrop::QueueFull), 3);
    drop(rx);
    record();
    assert_eq!(metrics.dropped_count(UsageDrop::QueueClosed), 1);
    assert_eq!(metrics.dropped_count(UsageDrop::QueueFull), 3);
}

#[test]
fn uses_aggregate_per_key_with_the_newest_logs() {
    let mut p = Pending::new(10, 2, UsageMetrics::default());
    let (a, b) = (key("a"), key("b"));
    let t0 = OffsetDateTime::now_utc();
    for (i, path) in ["/1", "/2", "/3"].iter().enumerate() {
        p.add(use_of(&a, path, t0 + time::Duration::seconds(i as i64)));
    }
    p.add(use_of(&b, "/b", t0));
    let ka = &p.keys[a.id()];
    assert_eq!(ka.count, 3);
    assert_eq!(ka.last_used, Some(t0 + time::Duration::seconds(2)));
    assert_eq!(paths(ka), ["/2", "/3"]);
    assert_eq!(p.log_entries, 3);
}

#[test]
fn a_failed_write_is_merged_back_before_newer_uses() {
    let mut p = Pending::new(10, 3, UsageMetrics::default());
    let a = key("a");
    let t0 = OffsetDateTime::now_utc();
    p.add(use_of(&a, "/old1", t0));
    p.add(use_of(&a, "/old2", t0));
    let failed = p.take();
    assert!(p.is_empty());
    p.add(use_of(&a, "/new1", t0 + time::Duration::seconds(1)));
    p.add(use_of(&a, "/new2", t0 + time::Duration::seconds(1)));
    p.restore(failed);
    let ka = &p.keys[a.id()];
    assert_eq!(ka.count, 4);
    assert_eq!(ka.last_used, Some(t0 + time::Duration::seconds(1)));
    assert_eq!(paths(ka), ["/old2", "/new1", "/new2"]);
    assert_eq!(p.log_entries, 3);
}

#[test]
fn uses_are_split_by_their_utc_day_across_midnight() {
    let mut p = Pending::new(10, 0, UsageMetrics::default());
    let a = key("a");
    let before = time::macros::datetime!(2026-11-30 23:59:59.5 UTC);
    let after = time::macros::datetime!(2026-12-01 00:00:00.2 UTC);
    p.add(use_of(&a, "/", before));
    p.add(use_of(&a, "/", after));
    // A use stamped in another offset still counts on its UTC day.
    p.add(use_of(&a, "/", after.to_offset(time::macros::offset!(-5))));
    let mut refused = use_of(&a, "/", after);
    refused.refused = Some("rate_limited");
    p.add(refused);
    let failed = p.take();
    p.add(use_of(&a, "/", after));
    p.restore(failed);
    let d = deltas(&p.take());
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].count, 4);
    assert_eq!(
        d[0].days,
        [
            (time::macros::date!(2026 - 11 - 30), 1),
            (time::macros::date!(2026 - 12 - 01), 3)
        ]
    );
}

#[test]
fn distinct_keys_are_capped_counting_keys_in_flight() {
    let metrics = UsageMetrics::default();
    let mut p = Pending::new(2, 0, metrics.clone());
    let t0 = OffsetDateTime::now_utc();
    let (a, b, c) = (key("a"), key("b"), key("c"));
    p.add(use_of(&a, "/", t0));
    p.add(use_of(&b, "/", t0));
    let in_flight = p.take();
    p.add(use_of(&c, "/", t0));
    assert_eq!(metrics.dropped_count(UsageDrop::TooManyKeys), 1);
    // A key already buffered keeps counting.
    p.restore(in_flight);
    p.add(use_of(&a, "/", t0));
    assert_eq!(p.keys[a.id()].count, 2);
    assert_eq!(p.requests(), 3);
    assert!(p.keys[a.id()].logs.is_empty(), "max_per_key 0 keeps no log");
}

#[test]
fn log_entries_are_capped_across_keys() {
    let metrics = UsageMetrics::default();
    let mut logs = VecDeque::new();
    let entry = |path: &str| RequestLogEntry {
        time: OffsetDateTime::now_utc(),
        method: "GET".into(),
        path: path.into(),
        status: 200,
        client_ip: "127.0.0.1".parse().expect("ip"),
        latency_ms: 1.0,
        code: None,
    };
    assert_eq!(
        push_log(
            &mut logs,
            entry("/1"),
            10,
            MAX_BUFFERED_LOG_ENTRIES,
            &metrics
        ),
        0
    );
    assert!(logs.is_empty(), "a key without entries drops the new one");
    assert_eq!(push_log(&mut logs, entry("/1"), 10, 0, &metrics), 1);
    assert_eq!(
        push_log(
            &mut logs,
            entry("/2"),
            10,
            MAX_BUFFERED_LOG_ENTRIES,
            &metrics
        ),
        0
    );
    let kept: Vec<&str> = logs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        kept,
        ["/2"],
        "a full buffer replaces the key's own oldest entry"
    );
    assert_eq!(metrics.log_entries_dropped.get(), 2);
}
