//! Writer failover with real processes (Jepsen-style): three voters (a
//! primary, a standby writer, a reader) and a non-voting reader, all with
//! `replication.min_acks = 1` and a replication port (so each may be
//! promoted), while client threads write rows with unique ids to whoever is
//! primary. Twenty rounds of one fault each: kill -9 the primary; SIGSTOP
//! it past its lease, then SIGCONT; cut its control links through the
//! proxies, then heal; a planned hand-over. After every round every
//! acknowledged row is on the primary exactly once; at the end every node
//! holds the same rows (count and checksum) and no row twice, each writer
//! epoch was acknowledged by one node only, and the failover times (fault
//! to the first 2xx from the new primary) are printed.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use serde_json::Value;

const T0: i64 = 1_700_000_000_000_000_000;
const CLIENTS: u64 = 3;

/// One acknowledged write, as a client saw it.
#[derive(Debug, Clone)]
struct Ack {
    id: i64,
    node: u64,
    epoch: u64,
    at: Instant,
}

#[derive(Default)]
struct Log {
    acks: Vec<Ack>,
    /// Writes answered with anything but 2xx (or no answer): not counted.
    failed: u64,
}

/// HTTP port → node id, shared with the clients (ports survive restarts).
type Ports = Arc<BTreeMap<u16, u64>>;

/// A client: writes one row at a time (unique ids), to the node it
/// believes is primary, following `x-tidemark-primary` on a 503.
fn client(c: u64, ports: Ports, stop: Arc<AtomicBool>, log: Arc<Mutex<Log>>) {
    let all: Vec<u16> = ports.keys().copied().collect();
    let mut target = all[0];
    let mut i: i64 = 0;
    let mut turn = 0usize;
    while !stop.load(Ordering::Acquire) {
        let id = c as i64 * 1_000_000 + i;
        let body = format!("t,client=c{c} id={id}i {}\n", T0 + id);
        let r = try_request_within(
            target,
            "POST",
            "/api/v1/write/line-protocol?db=jepsen",
            &[],
            body.as_bytes(),
            Duration::from_secs(3),
        );
        match r {
            Ok(r) if r.status == 204 => {
                let epoch = r
                    .headers
                    .get("x-tidemark-writer-epoch")
                    .and_then(|e| e.parse().ok())
                    .expect("a cluster's 204 names the writer epoch");
                // Sent to another node, it was forwarded to the primary.
                let node = r
                    .headers
                    .get("x-tidemark-forwarded-by")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(ports[&target]);
                log.lock().unwrap().acks.push(Ack {
                    id,
                    node,
                    epoch,
                    at: Instant::now(),
                });
                i += 1;
                continue;
            }
            Ok(r) => {
                log.lock().unwrap().failed += 1;
                let hinted = r
                    .headers
                    .get("x-tidemark-primary")
                    .and_then(|a| a.rsplit(':').next()?.parse::<u16>().ok())
                    .filter(|p| ports.contains_key(p));
                match hinted {
                    Some(p) => target = p,
                    None => {
                        turn += 1;
                        target = all[turn % all.len()];
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
            Err(_) => {
                log.lock().unwrap().failed += 1;
                turn += 1;
                target = all[turn % all.len()];
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // A new id after any failure: the old one may or may not be kept.
        i += 1;
    }
}

fn primary(members: &[Member], except: Option<u64>) -> Option<(u64, u64)> {
    for m in members {
        if Some(m.id) == except {
            continue;
        }
        if let Some(v) = m.view() {
            if let (Some(p), Some(e)) = (v["primary_writer"].as_u64(), v["writer_epoch"].as_u64()) {
                if Some(p) != except {
                    return Some((p, e));
                }
            }
        }
    }
    None
}

/// Waits until every member is healthy in every view, and every node's
/// shards hold what the primary held when the wait began (with `exact`,
/// once no one writes: exactly what the primary holds).
fn settled(members: &[Member], exact: bool) -> Value {
    let all: Vec<&Member> = members.iter().collect();
    agreed(&all, members.len(), &[1, 2, 3]);
    let mut floor: Option<(u64, Vec<u64>)> = None;
    wait_for(
        "every node caught up with the primary",
        Duration::from_secs(60),
        || {
            let v = members[0].view()?;
            let p = v["primary_writer"].as_u64()?;
            let nodes = v["nodes"].as_array()?;
            let pos = |id: u64| -> Option<Vec<u64>> {
                let n = nodes.iter().find(|n| n["id"] == id)?;
                Some(
                    n["shards"]
                        .as_array()?
                        .iter()
                        .map(|s| s["durable_seq"].as_u64().unwrap())
                        .collect(),
                )
            };
            let now = pos(p)?;
            if floor.as_ref().is_none_or(|(fp, _)| *fp != p) {
                floor = Some((p, now.clone()));
            }
            let want = if exact {
                now
            } else {
                floor.as_ref()?.1.clone()
            };
            nodes
                .iter()
                .all(|n| {
                    pos(n["id"].as_u64().unwrap()).is_some_and(|have| {
                        have.len() == want.len() && have.iter().zip(&want).all(|(h, w)| h >= w)
                    })
                })
                .then_some(v)
        },
    )
}

/// Keeps the nodes' directories (and logs) when the test fails.
struct KeepOnPanic(Option<tempfile::TempDir>);

impl KeepOnPanic {
    fn path(&self) -> &std::path::Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let kept = self.0.take().unwrap().keep();
            eprintln!("node directories and logs kept in {}", kept.display());
        }
    }
}

#[test]
fn twenty_faults_lose_no_acknowledged_write_and_leave_one_history() {
    let dir = tempfile::tempdir().unwrap();
    let dir = KeepOnPanic(Some(dir));
    let common = |s: &mut Spec| {
        s.extra.extend([
            "replication.min_acks=1".to_string(),
            "replication.ack_timeout_ms=2000".into(),
            format!("replication.listen_addr=127.0.0.1:{}", free_pair()),
            "cluster.failover_cooldown_ms=1000".into(),
        ]);
    };
    let mut s1 = Spec::new(1, true, true);
    common(&mut s1);
    let n1 = start(dir.path(), &s1, true);
    let seed = vec![n1.proxy.addr()];
    let mut members = vec![n1];
    for (id, writer, voter) in [(2, true, true), (3, false, true), (4, false, false)] {
        let mut s = Spec::new(id, writer, voter);
        s.seeds.clone_from(&seed);
        common(&mut s);
        members.push(start(dir.path(), &s, true));
    }
    settled(&members, true);
    let ports: Ports = Arc::new(members.iter().map(|m| (m.node.port, m.id)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Log::default()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (ports, stop, log) = (ports.clone(), stop.clone(), log.clone());
            std::thread::spawn(move || client(c, ports, stop, log))
        })
        .collect();

    let mut times = Vec::new();
    for round in 0..20 {
        let (old, old_epoch) = wait_for("a primary", Duration::from_secs(30), || {
            primary(&members, None)
        });
        // Let the clients write to it first.
        let acked_before = log.lock().unwrap().acks.len();
        wait_for("writes acknowledged", Duration::from_secs(30), || {
            (log.lock().unwrap().acks.len() >= acked_before + 20).then_some(())
        });
        let oi = members.iter().position(|m| m.id == old).unwrap();
        let fault = ["kill -9", "SIGSTOP", "cut off", "hand-over"][round % 4];
        let t = Instant::now();
        match fault {
            "kill -9" => members[oi].node.kill9(),
            "SIGSTOP" => members[oi].node.pause(),
            "cut off" => {
                members[oi].proxy.cut();
                for m in &members {
                    if m.id != old {
                        m.proxy.block(node_ip(old));
                    }
                }
            }
            _ => {
                let other = members.iter().find(|m| m.id != old).unwrap();
                let r = other.node.req("POST", "/api/v1/cluster/failover", &[], b"");
                assert_eq!(r.status, 202, "{}", r.text());
            }
        }
        // The new primary: a 2xx from another node at a newer epoch.
        let first = wait_for(
            &format!("round {round} ({fault} of node {old}): a 2xx from a new primary"),
            Duration::from_secs(60),
            || {
                log.lock()
                    .unwrap()
                    .acks
                    .iter()
                    .find(|a| a.at > t && a.epoch > old_epoch && a.node != old)
                    .cloned()
            },
        );
        let took = first.at - t;
        eprintln!("round {round}: {fault} of primary {old} (epoch {old_epoch}) → node {} took over at epoch {} after {took:?}", first.node, first.epoch);
        times.push((fault, took));
        // Undo the fault; the old primary rejoins as a follower.
        match fault {
            "kill -9" => {
                members[oi].node.respawn();
                members[oi].node.wait_ready();
            }
            "SIGSTOP" => {
                // Held well past its lease before it wakes up.
                std::thread::sleep(Duration::from_millis(500));
                members[oi].node.resume();
            }
            "cut off" => {
                members[oi].proxy.heal();
                for m in &members {
                    m.proxy.unblock(node_ip(old));
                }
            }
            _ => {}
        }
        let v = settled(&members, false);
        let p = v["primary_writer"].as_u64().unwrap();
        let pi = members.iter().position(|m| m.id == p).unwrap();
        // Every row acknowledged so far is on the primary exactly once.
        let acked: Vec<i64> = log.lock().unwrap().acks.iter().map(|a| a.id).collect();
        let on = wait_for(
            "the primary answers a query",
            Duration::from_secs(30),
            || ids_on(&members[pi].node, "jepsen", "t"),
        );
        for id in &acked {
            assert_eq!(
                on.get(id),
                Some(&1),
                "round {round}: acknowledged row {id} is on primary {p} {:?} times",
                on.get(id)
            );
        }
    }
    stop.store(true, Ordering::Release);
    for c in clients {
        c.join().unwrap();
    }
    settled(&members, true);

    let log = log.lock().unwrap();
    // One node acknowledged each epoch.
    let mut by_epoch: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for a in &log.acks {
        by_epoch.entry(a.epoch).or_default().insert(a.node);
    }
    for (e, nodes) in &by_epoch {
        assert_eq!(
            nodes.len(),
            1,
            "epoch {e} was acknowledged by nodes {nodes:?}"
        );
    }
    // Writes an old primary acknowledged after a newer epoch's first ack.
    let mut first_of: BTreeMap<u64, Instant> = BTreeMap::new();
    for a in &log.acks {
        let f = first_of.entry(a.epoch).or_insert(a.at);
        *f = (*f).min(a.at);
    }
    let late: Vec<&Ack> = log
        .acks
        .iter()
        .filter(|a| first_of.iter().any(|(e, t)| *e > a.epoch && *t < a.at))
        .collect();
    eprintln!(
        "{} writes acknowledged, {} not; {} acknowledged by a deposed primary after its successor's first",
        log.acks.len(),
        log.failed,
        late.len()
    );
    assert!(
        late.is_empty(),
        "acknowledged after the primary was deposed: {late:?}"
    );

    // Every node holds the same rows: each acknowledged one exactly once.
    let views: Vec<BTreeMap<i64, i64>> = members
        .iter()
        .map(|m| {
            wait_for("a node answers a query", Duration::from_secs(30), || {
                ids_on(&m.node, "jepsen", "t")
            })
        })
        .collect();
    for (m, rows) in members.iter().zip(&views) {
        assert!(
            rows.values().all(|n| *n == 1),
            "node {} holds a row twice",
            m.id
        );
        for a in &log.acks {
            assert_eq!(
                rows.get(&a.id),
                Some(&1),
                "node {} lacks acknowledged row {}",
                m.id,
                a.id
            );
        }
        let sum: i64 = rows.keys().sum();
        assert_eq!(
            (rows.len(), sum),
            (views[0].len(), views[0].keys().sum::<i64>()),
            "node {} differs from node {}",
            m.id,
            members[0].id
        );
    }
    let mut ms: Vec<u128> = times.iter().map(|(_, d)| d.as_millis()).collect();
    ms.sort_unstable();
    eprintln!(
        "failover time (fault → first 2xx from the new primary) over {} rounds: p50 {} ms, max {} ms; {times:?}",
        ms.len(),
        ms[ms.len() / 2],
        ms[ms.len() - 1]
    );
}
