//! Crash tests of compaction and retention with the real binary: the node
//! aborts (`TIDEMARK_CRASH_AT`, as abrupt as kill -9) at each step of a
//! compaction and of a retention drop. The manifest on disk must then list
//! either the old files or the new ones (never both, never neither), every
//! listed file must be there with its SHA-256, and after a restart the
//! answers are unchanged, orphans are gone, and the job completes.
//!
//! Needs the `failpoints` feature.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

const SEC: i64 = 1_000_000_000;
const HOUR: i64 = 3600 * SEC;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn answer(node: &Node) -> serde_json::Value {
    let body = serde_json::to_vec(&serde_json::json!({
        "sql": "SELECT count(*), sum(v), count(DISTINCT host) FROM m"
    }))
    .unwrap();
    let r = node.req("POST", "/api/v1/query", &[("x-arc-database", "c")], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["data"].clone()
}

/// Asserts every listed file is stored with its SHA-256; returns the rows
/// listed per hour (hours since the epoch).
fn check_listed(dir: &std::path::Path) -> BTreeMap<i64, u64> {
    let listed = manifest_files(dir);
    let stored = stored_files(dir);
    let mut rows = BTreeMap::new();
    for (path, l) in &listed {
        assert_eq!(
            stored.get(path),
            Some(&l.sha256),
            "{path} listed but not stored as listed"
        );
        *rows.entry(l.hour).or_insert(0) += l.rows;
    }
    rows
}

/// `hours` hour partitions of `files` flushes each, 30 distinct points per flush.
fn write(node: &Node, hours: &[i64], files: i64) {
    for &hour in hours {
        for f in 0..files {
            let body: Vec<String> = (0..30)
                .map(|i| {
                    format!(
                        "m,host=h{i} v={} {}",
                        f * 100 + i,
                        hour + (f * 30 + i) * SEC
                    )
                })
                .collect();
            assert_eq!(node.write_lp("c", &body.join("\n")).status, 204);
            node.flush();
        }
    }
}

fn crash_at(point: &str, retention: bool) {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ns();
    let this_hour = now - now.rem_euclid(HOUR);
    let old = this_hour - 5 * 24 * HOUR;
    let (hours, files) = ([old, this_hour - 2 * HOUR], 6);
    let mut node = Node::start_with_env(
        dir.path(),
        &["--shard-cores", "1", "--set", "compaction.enabled=false"],
        &[("TIDEMARK_CRASH_AT", point)],
    );
    write(&node, &hours, files);
    let before = answer(&node);
    let rows_before = check_listed(dir.path());
    assert_eq!(rows_before.values().sum::<u64>(), 2 * 6 * 30);
    if retention {
        let r = node.put_retention("c", r#"{"duration": "2d"}"#);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // The node aborts inside the job: the request gets no answer.
    let r = try_request_within(
        node.port,
        "POST",
        "/api/v1/compact",
        &[],
        b"",
        Duration::from_secs(30),
    );
    assert!(
        r.is_err(),
        "{point}: the node answered {:?}",
        r.map(|r| r.text())
    );
    assert!(
        node.wait_exit(Duration::from_secs(30)).is_some(),
        "{point}: the node did not abort"
    );
    assert!(
        node.log().contains(&format!("crash point {point}")),
        "{}",
        node.log()
    );

    // On disk: each hour holds all its rows or (retention) none.
    let rows = check_listed(dir.path());
    for (hour, n) in &rows {
        assert_eq!(
            Some(n),
            rows_before.get(hour),
            "{point}: hour {hour} half there: {rows:?}"
        );
    }
    if !retention {
        assert_eq!(rows, rows_before, "{point}");
    }

    // Restarted, without the crash point.
    node.env.clear();
    node.respawn();
    node.wait_ready();
    let listed = manifest_files(dir.path());
    let stored = stored_files(dir.path());
    assert_eq!(
        listed
            .iter()
            .map(|(p, l)| (p.clone(), l.sha256.clone()))
            .collect::<BTreeMap<_, _>>(),
        stored,
        "{point}: orphans left, or listed files missing"
    );
    let after = answer(&node);
    if retention {
        let kept = rows
            .get(&((this_hour - 2 * HOUR) / HOUR))
            .copied()
            .unwrap_or(0);
        assert_eq!(kept, 180, "{point}");
        assert!(after[0][0] == 180 || after[0][0] == 360, "{point}: {after}");
    } else {
        assert_eq!(after, before, "{point}");
    }
    // The job runs to its end now.
    let r = node.req("POST", "/api/v1/compact", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let rows = check_listed(dir.path());
    if retention {
        assert_eq!(
            rows.keys().copied().collect::<Vec<_>>(),
            [(this_hour - 2 * HOUR) / HOUR],
            "{point}"
        );
        assert_eq!(answer(&node)[0][0], 180, "{point}");
    } else {
        assert_eq!(rows, rows_before, "{point}");
        assert_eq!(
            manifest_files(dir.path()).len(),
            2,
            "{point}: one file per hour"
        );
        assert_eq!(answer(&node), before, "{point}");
    }
}

#[test]
fn a_crash_at_any_step_of_a_compaction_loses_and_doubles_nothing() {
    for point in [
        "compact.read",
        "compact.before_put",
        "compact.before_manifest",
        "compact.after_manifest",
    ] {
        crash_at(point, false);
    }
}

#[test]
fn a_crash_at_any_step_of_a_retention_drop_drops_whole_hours_or_none() {
    for point in ["retention.before_manifest", "retention.after_manifest"] {
        crash_at(point, true);
    }
}
