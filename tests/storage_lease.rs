//! The compactor lease with real processes: a cluster of a primary writer,
//! a reader and a `compactor` node (all voters). The compactor holds the
//! lease and compacts its own files under it; paused (SIGSTOP) between
//! writing a compaction's files and committing them, long enough for the
//! leader to hand the lease on, it cannot commit: the job ends with
//! `lease_lost`, its files are deleted and the manifest is unchanged.
//!
//! Needs the `failpoints` feature (a pause point before the commit).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;

const T: Duration = Duration::from_secs(60);

fn files_of(node: &Node) -> Option<u64> {
    let r = try_request(node.port, "GET", "/api/v1/measurements?db=l", &[], b"").ok()?;
    let v = r.json();
    v["measurements"]
        .as_array()?
        .iter()
        .find(|m| m["measurement"] == "m")?["files"]
        .as_u64()
}

fn metric(node: &Node, line: &str) -> Option<f64> {
    let text = try_request(node.port, "GET", "/metrics", &[], b"")
        .ok()?
        .text();
    text.lines()
        .find(|l| l.starts_with(line))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Writes rows `first..first + n` through the primary, waits until the
/// compactor has them, and flushes its buffer: one more file there.
fn write_and_flush_on(primary: &Node, compactor: &Node, first: i64, n: i64) {
    let t0 = 1_700_000_000_000_000_000i64;
    let body: Vec<String> = (first..first + n)
        .map(|i| format!("m,host=h{} id={i}i {}", i % 5, t0 + i * 1_000_000_000))
        .collect();
    let r = primary.write_lp("l", &body.join("\n"));
    assert_eq!(r.status, 204, "{}", r.text());
    wait_for("the compactor to have the rows", T, || {
        let ids = ids_on(compactor, "l", "m")?;
        (ids.len() as i64 == first + n).then_some(())
    });
    compactor.flush();
}

#[test]
fn a_compactor_paused_past_its_lease_cannot_commit() {
    let root = tempfile::tempdir().unwrap();
    // One shard core each: one partition per hour, so one file after a job.
    let one_core = vec!["--shard-cores".to_string(), "1".to_string()];
    let mut s1 = Spec::new(1, true, true);
    s1.flags.clone_from(&one_core);
    let n1 = start(root.path(), &s1, true);
    let seed = vec![n1.proxy.addr()];
    let mut s2 = Spec::new(2, false, true);
    s2.seeds.clone_from(&seed);
    s2.flags.clone_from(&one_core);
    let n2 = start(root.path(), &s2, true);
    let mut s3 = Spec::new(3, false, true);
    s3.seeds = seed;
    s3.flags = one_core;
    s3.extra = vec![
        "cluster.role=compactor".into(),
        "compaction.enabled=false".into(),
    ];
    s3.env = vec![
        ("TIDEMARK_PAUSE_AT".into(), "compact.before_manifest".into()),
        ("TIDEMARK_PAUSE_MS".into(), "1500".into()),
    ];
    let n3 = start(root.path(), &s3, true);
    let v = agreed(&[&n1, &n2, &n3], 3, &[1, 2, 3]);
    assert_eq!(v["primary_writer"], 1, "{v}");
    let v = wait_for("the compactor node to hold the lease", T, || {
        let v = n1.view()?;
        (v["compactor"] == 3).then_some(v)
    });
    let epoch = v["compactor_epoch"].as_u64().unwrap();

    // Under its lease the compactor commits (paused 1.5 s, within it).
    for round in 0..3 {
        write_and_flush_on(&n1.node, &n3.node, round * 10, 10);
    }
    assert_eq!(files_of(&n3.node), Some(3));
    let r = n3.node.req("POST", "/api/v1/compact", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["files_after"], 1, "{}", r.text());
    assert_eq!(files_of(&n3.node), Some(1));

    // More files, then a compaction that stops before its commit.
    for round in 3..6 {
        write_and_flush_on(&n1.node, &n3.node, round * 10, 10);
    }
    assert_eq!(files_of(&n3.node), Some(4));
    let port = n3.node.port;
    let job = std::thread::spawn(move || {
        try_request_within(port, "POST", "/api/v1/compact", &[], b"", T).map(|r| r.json())
    });
    wait_for("the job to reach its pause point", T, || {
        n3.node
            .log()
            .matches("pause point compact.before_manifest")
            .nth(1)
            .map(|_| ())
    });
    // Frozen: the leader marks it dead and hands the lease to the primary.
    n3.node.pause();
    wait_for("the lease to move to the primary", T, || {
        let v = n1.view()?;
        (v["compactor"] == 1 && v["compactor_epoch"].as_u64()? > epoch).then_some(())
    });
    n3.node.resume();
    let report = job.join().unwrap().expect("an answer");
    assert_eq!(report["jobs"], serde_json::json!([]), "{report}");
    let errors = report["errors"].to_string();
    assert!(errors.contains("lease"), "{report}");
    // Nothing changed on the node: its four files, all its rows.
    assert_eq!(files_of(&n3.node), Some(4));
    let ids = ids_on(&n3.node, "l", "m").unwrap();
    assert_eq!(ids.len(), 60);
    assert!(ids.values().all(|&n| n == 1));
    assert_eq!(
        metric(
            &n3.node,
            "tidemark_compaction_jobs_total{result=\"lease_lost\"}"
        ),
        Some(1.0)
    );
    // The written files of the lost job are gone: only listed files remain.
    let listed = manifest_files(&n3.node.dir);
    let stored = stored_files(&n3.node.dir);
    assert_eq!(listed.len(), 4);
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        listed.keys().collect::<Vec<_>>()
    );

    // A database's retention set on one node holds on every node.
    let r = n2.node.req(
        "PUT",
        "/api/v1/databases/l/retention",
        &[],
        br#"{"duration": "90d"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for m in [&n1, &n2, &n3] {
        wait_for("every node to show the retention", T, || {
            let r = try_request(
                m.node.port,
                "GET",
                "/api/v1/databases/l/retention",
                &[],
                b"",
            )
            .ok()?;
            (r.json()["seconds"] == 90 * 86_400).then_some(())
        });
    }
}
