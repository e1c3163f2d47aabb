//! Routing with real processes: a writer and two readers (each may be
//! promoted; `min_acks = 1`). Writes in every format and encoding sent to
//! every node land on the primary exactly once and reach every node (a
//! large body passed on as it arrives);
//! queries sent to the writer with `routing.queries = readers` are
//! answered by the readers; a forged forwarding header is refused and a
//! loop ends with 508; a primary killed while writes are forwarded gives
//! 502/503, then success at the new primary, with no row twice.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::*;
use common::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const MS0: i64 = 1_700_000_000_000;

fn lp(ids: std::ops::Range<i64>) -> Vec<u8> {
    ids.map(|i| format!("m,host=h{} id={i}i,v={i}.5 {}\n", i % 3, MS0 + i))
        .collect::<String>()
        .into_bytes()
}

/// What a cluster node would send in `x-tidemark-forward-auth`.
fn seal(method: &str, target: &str, chain: &[u64]) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut m = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    m.update(b"tidemark-forward-v1");
    m.update(&secs.to_le_bytes());
    m.update(method.as_bytes());
    m.update(b" ");
    m.update(target.as_bytes());
    for id in chain {
        m.update(&id.to_le_bytes());
    }
    format!("{secs}.{}", hex::encode(m.finalize().into_bytes()))
}

#[test]
fn every_node_takes_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let extra = |s: &mut Spec| {
        s.extra.extend([
            "replication.min_acks=1".to_string(),
            format!("replication.listen_addr=127.0.0.1:{}", free_pair()),
            "cluster.failover_cooldown_ms=1000".into(),
        ]);
    };
    let mut s1 = Spec::new(1, true, true);
    extra(&mut s1);
    s1.extra.push("routing.queries=readers".into());
    let n1 = start(dir.path(), &s1, true);
    let seed = vec![n1.proxy.addr()];
    let mut members = vec![n1];
    for id in [2, 3] {
        let mut s = Spec::new(id, false, true);
        s.seeds.clone_from(&seed);
        extra(&mut s);
        members.push(start(dir.path(), &s, true));
    }
    let all: Vec<&Member> = members.iter().collect();
    let v = agreed(&all, 3, &[1, 2, 3]);
    assert_eq!(v["primary_writer"], 1, "{v}");

    // Writes in every format and encoding, to every node.
    let lp_ = |path: &'static str, headers: Vec<(&'static str, &'static str)>, gz: bool| {
        move |ids: std::ops::Range<i64>| {
            let body = if gz { gzip(&lp(ids)) } else { lp(ids) };
            (path, headers.clone(), body)
        }
    };
    type Make = Box<
        dyn Fn(std::ops::Range<i64>) -> (&'static str, Vec<(&'static str, &'static str)>, Vec<u8>),
    >;
    let formats: Vec<Make> = vec![
        Box::new(lp_("/write?db=r&precision=ms", vec![], false)),
        Box::new(lp_("/api/v2/write?bucket=r&precision=ms", vec![], false)),
        Box::new(lp_(
            "/api/v1/write/line-protocol?precision=ms",
            vec![("x-arc-database", "r")],
            false,
        )),
        Box::new(lp_(
            "/write?db=r&precision=ms",
            vec![("Content-Encoding", "gzip")],
            true,
        )),
        Box::new(|ids| {
            (
                "/api/v1/write/msgpack",
                vec![
                    ("x-arc-database", "r"),
                    ("Content-Type", "application/msgpack"),
                ],
                mp_columnar(ids.start, ids.end - ids.start),
            )
        }),
        Box::new(|ids| {
            (
                "/api/v1/write/msgpack",
                vec![
                    ("x-arc-database", "r"),
                    ("Content-Type", "application/msgpack"),
                    ("Content-Encoding", "gzip"),
                ],
                gzip(&mp_columnar(ids.start, ids.end - ids.start)),
            )
        }),
    ];
    let mut next = 0i64;
    for m in &members {
        for f in &formats {
            let (path, headers, body) = f(next..next + 10);
            next += 10;
            let r = m.node.req("POST", path, &headers, &body);
            assert_eq!(r.status, 204, "node {} {path}: {}", m.id, r.text());
            let via = r.headers.get("x-tidemark-forwarded-by").map(String::as_str);
            assert_eq!(via, (m.id != 1).then_some("1"), "node {} {path}", m.id);
        }
    }
    // A large body (over 256 KiB) is passed on as it arrives.
    let big = lp(next..next + 30_000);
    assert!(big.len() > 1 << 20);
    let r = members[2]
        .node
        .req("POST", "/write?db=r&precision=ms", &[], &big);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.headers["x-tidemark-forwarded-by"], "1");
    next += 30_000;
    for m in &members {
        let rows = wait_for("every row on every node", Duration::from_secs(30), || {
            ids_on(&m.node, "r", "m").filter(|r| r.len() == next as usize)
        });
        assert!(rows.values().all(|n| *n == 1), "node {}: a row twice", m.id);
    }

    // Queries sent to the writer are answered by the readers, in turn.
    let mut answered_by = Vec::new();
    for _ in 0..4 {
        let r = members[0].node.req(
            "POST",
            "/api/v1/query",
            &[
                ("Content-Type", "application/json"),
                ("x-arc-database", "r"),
            ],
            br#"{"sql": "SELECT count(*) FROM m"}"#,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["data"][0][0], next);
        answered_by.push(r.headers["x-tidemark-forwarded-by"].clone());
    }
    answered_by.sort();
    answered_by.dedup();
    assert_eq!(answered_by, ["2", "3"]);
    let metrics = members[0].node.req("GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("tidemark_forwarded_requests_total{route=\"query\",upstream=\"2\"}"),
        "{metrics}"
    );
    // A reader answers its own queries.
    let r = members[1].node.req(
        "POST",
        "/api/v1/query",
        &[
            ("Content-Type", "application/json"),
            ("x-arc-database", "r"),
        ],
        br#"{"sql": "SELECT count(*) FROM m"}"#,
    );
    assert!(!r.headers.contains_key("x-tidemark-forwarded-by"));

    // A client cannot fake the forwarding headers; a loop ends with 508.
    let target = "/write?db=r&precision=ms";
    let r = members[1].node.req(
        "POST",
        target,
        &[("x-tidemark-forwarded-by", "3")],
        &lp(next..next + 1),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = members[1].node.req(
        "POST",
        target,
        &[
            ("x-tidemark-forwarded-by", "2"),
            ("x-tidemark-forward-auth", &seal("POST", target, &[2])),
        ],
        &lp(next..next + 1),
    );
    assert_eq!(r.status, 508, "{}", r.text());
    assert!(r.error().contains("loop"), "{}", r.text());

    // The primary dies while writes are forwarded through node 2.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
    let statuses = Arc::new(Mutex::new(BTreeMap::<u16, u64>::new()));
    let port = members[1].node.port;
    let client = {
        let (stop, acked, statuses) = (stop.clone(), acked.clone(), statuses.clone());
        let mut id = 1_000_000i64;
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let r = try_request_within(
                    port,
                    "POST",
                    "/write?db=r&precision=ms",
                    &[],
                    &lp(id..id + 1),
                    Duration::from_secs(5),
                );
                let status = r.as_ref().map_or(0, |r| r.status);
                *statuses.lock().unwrap().entry(status).or_default() += 1;
                if status == 204 {
                    acked.lock().unwrap().push(id);
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
                // A new id every time: a failed write may or may not be kept.
                id += 1;
            }
        })
    };
    wait_for("writes through node 2", Duration::from_secs(30), || {
        (acked.lock().unwrap().len() >= 20).then_some(())
    });
    members[0].node.kill9();
    let before = acked.lock().unwrap().len();
    wait_for(
        "writes again, at a new primary",
        Duration::from_secs(60),
        || (acked.lock().unwrap().len() >= before + 20).then_some(()),
    );
    stop.store(true, Ordering::Release);
    client.join().unwrap();
    let statuses = statuses.lock().unwrap().clone();
    eprintln!("answers while the primary died: {statuses:?}");
    assert!(
        statuses.keys().all(|s| [204, 502, 503].contains(s)),
        "{statuses:?}"
    );
    members[0].node.respawn();
    members[0].node.wait_ready();
    let all: Vec<&Member> = members.iter().collect();
    agreed(&all, 3, &[1, 2, 3]);
    let acked = acked.lock().unwrap().clone();
    for m in &members {
        let rows = wait_for(
            "the acknowledged rows on every node",
            Duration::from_secs(60),
            || ids_on(&m.node, "r", "m").filter(|r| acked.iter().all(|id| r.contains_key(id))),
        );
        assert!(rows.values().all(|n| *n == 1), "node {}: a row twice", m.id);
    }
}
