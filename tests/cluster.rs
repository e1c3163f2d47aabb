//! The control core with real processes on 127.0.0.x: nodes form a Raft
//! cluster from seeds, agree on its state, survive kill -9 of the leader
//! and of a node in the middle of a membership change, a voter cut off by
//! TCP proxies can change nothing and catches up when healed, a reader
//! configured with only seeds replicates from the primary, and a node with
//! the wrong secret (or a TLS peer without the CA's certificate) is refused.
//!
//! Every node's control port sits behind its own proxy (its advertised
//! address), and its outgoing control connections leave from its own IP
//! (127.0.0.10 + id), so a proxy can cut a node off in both directions.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;

const T0: i64 = 1_700_000_000_000_000_000;

fn lp(from: i64, n: i64) -> String {
    (from..from + n)
        .map(|i| format!("cpu,host=h{} id={i}i,v=1.5 {}\n", i % 7, T0 + i))
        .collect()
}

fn count(node: &Node) -> Option<i64> {
    let r = try_request(
        node.port,
        "POST",
        "/api/v1/query",
        &[("Content-Type", "application/json")],
        br#"{"sql": "SELECT count(*) AS n FROM cpu"}"#,
    )
    .ok()?;
    (r.status == 200).then(|| r.json()["data"][0][0].as_i64())?
}

/// Five nodes (three voters, two non-voting readers) form a cluster from
/// seeds and agree; a reader with only seeds replicates from the primary;
/// kill -9 of the leader elects a new one with the state intact; the old
/// leader rejoins from its log; a removed node leaves everywhere.
#[test]
fn five_nodes_form_a_cluster_survive_the_leaders_death_and_rejoin() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = form(dir.path(), &[(2, true), (3, true), (4, false), (5, false)]);
    let all: Vec<&Member> = members.iter().collect();
    let v = agreed(&all, 5, &[1, 2, 3]);
    assert_eq!(v["primary_writer"], 1, "{v}");
    assert_eq!(v["writer_epoch"], 1, "{v}");
    for n in v["nodes"].as_array().unwrap() {
        let expect = if n["id"].as_u64().unwrap() >= 4 {
            "learner"
        } else {
            "voter"
        };
        assert_eq!(n["raft_member"], expect, "{v}");
    }

    // A reader that knows only the seeds replicates from the primary.
    let r = members[0].node.write_lp("default", &lp(0, 500));
    assert_eq!(r.status, 204, "{}", r.text());
    // A write sent to a reader is forwarded to the primary.
    let r = members[3].node.write_lp("default", &lp(500, 1));
    assert_eq!(r.status, 204, "forwarded to the primary: {}", r.text());
    assert_eq!(
        r.headers.get("x-tidemark-forwarded-by").map(String::as_str),
        Some("1"),
        "{:?}",
        r.headers
    );
    wait_for(
        "reader 5 to hold the primary's rows",
        Duration::from_secs(30),
        || (count(&members[4].node)? == 501).then_some(()),
    );
    // Heartbeats carry positions: the primary's shards show durable entries.
    wait_for(
        "positions in the cluster state",
        Duration::from_secs(10),
        || {
            let v = members[2].view()?;
            let p = v["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["id"] == 1)?
                .clone();
            let total: u64 = p["shards"]
                .as_array()?
                .iter()
                .map(|s| s["durable_seq"].as_u64().unwrap())
                .sum();
            (total > 0).then_some(())
        },
    );

    // kill -9 the leader: a new leader among the other voters, state intact.
    let leader = leader_of(&all).unwrap();
    let li = members.iter().position(|m| m.id == leader).unwrap();
    let killed_at = Instant::now();
    members[li].node.kill9();
    let rest: Vec<&Member> = members.iter().filter(|m| m.id != leader).collect();
    let new_leader = wait_for("a new leader", Duration::from_secs(30), || {
        leader_of(&rest).filter(|l| *l != leader)
    });
    let elected = killed_at.elapsed();
    let dead = wait_for(
        "the old leader marked dead",
        Duration::from_secs(30),
        || {
            let v = rest[0].view()?;
            (node_state(&v, leader)? == "dead").then_some(v)
        },
    );
    let to_dead = killed_at.elapsed();
    eprintln!("leader {leader} killed: new leader {new_leader} after {elected:?}, marked dead after {to_dead:?}");
    assert_eq!(dead["nodes"].as_array().unwrap().len(), 5, "{dead}");
    // The dead primary is deposed; with no other node that can stream
    // (the readers set no replication.listen_addr) the failover waits.
    let deposed = wait_for("the dead primary deposed", Duration::from_secs(30), || {
        let v = rest[0].view()?;
        (v["failover"]["from"] == 1).then_some(v)
    });
    assert!(deposed["primary_writer"].is_null(), "{deposed}");
    assert_eq!(deposed["writer_epoch"], 2, "{deposed}");

    // Restart it: it rejoins from its own log, no new join, and as the only
    // candidate (holding everything) it is the primary again.
    members[li].node.respawn();
    members[li].node.wait_ready();
    let all: Vec<&Member> = members.iter().collect();
    let v = agreed(&all, 5, &[1, 2, 3]);
    let v = if v["primary_writer"] == 1 {
        v
    } else {
        wait_for("node 1 promoted again", Duration::from_secs(30), || {
            let v = all[0].view()?;
            (v["primary_writer"] == 1).then_some(v)
        })
    };
    assert_eq!(v["writer_epoch"], 3, "{v}");
    assert!(
        members[li]
            .node
            .log()
            .contains("rejoining the cluster from this node's Raft log"),
        "{}",
        members[li].node.log()
    );

    // Remove node 5 (asked of a follower, which forwards to the leader).
    let leader = wait_for("one leader", Duration::from_secs(30), || leader_of(&all));
    let follower = members
        .iter()
        .find(|m| m.id != leader && m.id != 5)
        .unwrap();
    let r = follower
        .node
        .req("DELETE", "/api/v1/cluster/nodes/5", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = follower
        .node
        .req("DELETE", "/api/v1/cluster/nodes/77", &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    let four: Vec<&Member> = members.iter().filter(|m| m.id != 5).collect();
    agreed(&four, 4, &[1, 2, 3]);
}

/// kill -9 of the leader while a new voter is being added: the new leader
/// finishes the change (the node ends up a healthy voter).
#[test]
fn a_membership_change_survives_the_leaders_death() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = form(dir.path(), &[(2, true), (3, true)]);
    let all: Vec<&Member> = members.iter().collect();
    agreed(&all, 3, &[1, 2, 3]);
    let leader = leader_of(&all).unwrap();
    let seeds: Vec<String> = members.iter().map(|m| m.proxy.addr()).collect();
    let mut s4 = Spec::new(4, false, true);
    s4.seeds = seeds;
    members.push(start(dir.path(), &s4, false));
    // As soon as node 4 is a learner (added to the Raft membership, not a
    // voter yet: the change is half done), kill the leader.
    wait_for("node 4 a learner", Duration::from_secs(30), || {
        let v = members.iter().find(|m| m.id == leader)?.view()?;
        let n = v["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["id"] == 4)?
            .clone();
        (n["raft_member"] == "learner").then_some(())
    });
    let li = members.iter().position(|m| m.id == leader).unwrap();
    members[li].node.kill9();
    let rest: Vec<&Member> = members.iter().filter(|m| m.id != leader).collect();
    wait_for("node 4 to become a voter", Duration::from_secs(60), || {
        let v = rest.iter().find(|m| m.id != 4)?.view()?;
        let n = v["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["id"] == 4)?
            .clone();
        (n["raft_member"] == "voter").then_some(())
    });
    members[li].node.respawn();
    members[li].node.wait_ready();
    let all: Vec<&Member> = members.iter().collect();
    agreed(&all, 4, &[1, 2, 3, 4]);
}

/// A voter cut off by the proxies (both directions) cannot change the
/// state; the rest of the cluster goes on, marks it dead, and when healed
/// it catches up and is healthy again.
#[test]
fn a_cut_off_voter_changes_nothing_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let members = form(dir.path(), &[(2, true), (3, true), (4, false)]);
    let all: Vec<&Member> = members.iter().collect();
    agreed(&all, 4, &[1, 2, 3]);
    let leader = leader_of(&all).unwrap();
    // Cut off a voter that is not the leader.
    let cut = members
        .iter()
        .find(|m| m.id != leader && m.id <= 3)
        .unwrap()
        .id;
    let ip = node_ip(cut);
    for m in &members {
        if m.id == cut {
            m.proxy.cut();
        } else {
            m.proxy.block(ip);
        }
    }
    let cm = members.iter().find(|m| m.id == cut).unwrap();
    // The cut-off voter cannot remove anyone.
    let r = cm.node.req("DELETE", "/api/v1/cluster/nodes/4", &[], b"");
    assert_eq!(r.status, 503, "{}", r.text());
    // The others mark it dead and can still change the state.
    let others: Vec<&Member> = members.iter().filter(|m| m.id != cut).collect();
    wait_for(
        "the cut-off voter marked dead",
        Duration::from_secs(30),
        || {
            let v = others[0].view()?;
            (node_state(&v, cut)? == "dead").then_some(())
        },
    );
    let r = others[0]
        .node
        .req("DELETE", "/api/v1/cluster/nodes/4", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for(
        "node 4 removed on the majority",
        Duration::from_secs(30),
        || {
            let v = others[0].view()?;
            (v["nodes"].as_array()?.len() == 3).then_some(())
        },
    );
    // Node 4 is still in the cut-off voter's view: it heard nothing.
    let v = cm.view().unwrap();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 4, "{v}");
    for m in &members {
        m.proxy.heal();
        m.proxy.unblock(ip);
    }
    let three: Vec<&Member> = members.iter().filter(|m| m.id != 4).collect();
    agreed(&three, 3, &[1, 2, 3]);
}

/// A node with the wrong secret, or with a shard count that differs from
/// the cluster's, is refused: it says why and exits, and the cluster's
/// state does not change.
#[test]
fn wrong_secret_and_wrong_shard_count_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let n1 = start(dir.path(), &Spec::new(1, true, true), true);
    agreed(&[&n1], 1, &[1]);
    let mut bad = Spec::new(2, false, true);
    bad.seeds = vec![n1.proxy.addr()];
    bad.extra = vec!["cluster.secret=not-the-secret".into()];
    let mut m2 = start(dir.path(), &bad, false);
    let status = m2
        .node
        .wait_exit(Duration::from_secs(30))
        .expect("a node with the wrong secret exits");
    assert!(!status.success());
    let log = m2.node.log();
    assert!(log.contains("wrong cluster secret"), "{log}");
    let mut shards = Spec::new(3, false, true);
    shards.seeds = vec![n1.proxy.addr()];
    shards.flags = vec!["--shard-cores".into(), "3".into()];
    let mut m3 = start(dir.path(), &shards, false);
    let status = m3
        .node
        .wait_exit(Duration::from_secs(30))
        .expect("a node with another shard count exits");
    assert!(!status.success());
    let log = m3.node.log();
    assert!(log.contains("set node.shard_cores = 2"), "{log}");
    // A node that claims an id another address holds is refused too.
    let mut twin = Spec::new(1, false, true);
    twin.seeds = vec![n1.proxy.addr()];
    let dir2 = dir.path().join("twin");
    let mut m4 = start(&dir2, &twin, false);
    let status = m4
        .node
        .wait_exit(Duration::from_secs(30))
        .expect("a node with a taken id exits");
    assert!(!status.success());
    let log = m4.node.log();
    assert!(
        log.contains("node id 1 is already held by the node at"),
        "{log}"
    );
    // Nothing changed: the cluster is still node 1 alone.
    let v = agreed(&[&n1], 1, &[1]);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 1, "{v}");
}

/// PEM files of a CA and of a node certificate it signed (for 127.0.0.1).
fn tls_args(own: &Pki, ca: &Path) -> Vec<String> {
    vec![
        format!("tls.cert={}", own.cert.display()),
        format!("tls.key={}", own.key.display()),
        format!("tls.ca={}", ca.display()),
    ]
}

/// Connects to `addr` with TLS as a client presenting `own` and trusting
/// `ca`; returns the first bytes the server sends after the handshake.
fn tls_probe(addr: &str, own: &Pki, ca: &Path) -> std::io::Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::io::Read;
    use std::sync::Arc;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&own.cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&own.key).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("127.0.0.1").unwrap())
            .unwrap();
    let mut sock = std::net::TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let mut buf = [0u8; 64];
    let n = tls.read(&mut buf)?;
    Ok(buf[..n].to_vec())
}

/// With TLS on, nodes whose certificates the CA signed form a cluster; a
/// client (or a node) whose certificate another CA signed is refused.
#[test]
fn tls_members_join_and_a_peer_without_the_cas_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = pki(&dir.path().join("pki"), "good");
    let other = pki(&dir.path().join("pki"), "other");
    let mut s1 = Spec::new(1, true, true);
    s1.extra = tls_args(&good, &good.ca);
    let n1 = start(dir.path(), &s1, true);
    let mut s2 = Spec::new(2, false, true);
    s2.seeds = vec![n1.proxy.addr()];
    s2.extra = tls_args(&good, &good.ca);
    let n2 = start(dir.path(), &s2, true);
    agreed(&[&n1, &n2], 2, &[1, 2]);
    // Replication runs over TLS too: the reader gets the primary's rows.
    let r = n1.node.write_lp("default", &lp(0, 100));
    assert_eq!(r.status, 204, "{}", r.text());
    wait_for(
        "the reader to hold the rows (over TLS)",
        Duration::from_secs(30),
        || (count(&n2.node)? == 100).then_some(()),
    );
    assert!(
        n2.node.log().contains("streaming from the writer"),
        "{}",
        n2.node.log()
    );

    // A client with a certificate of the right CA gets the Challenge...
    let hello = tls_probe(&n1.proxy.addr(), &good, &good.ca).unwrap();
    assert_eq!(&hello[4..8], b"TMC1", "{hello:?}");
    // ... one whose certificate another CA signed gets nothing.
    let refused = tls_probe(&n1.proxy.addr(), &other, &good.ca);
    match &refused {
        // The server's alert (unknown CA, bad certificate) as a TLS error.
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}"),
        Ok(bytes) => assert!(bytes.is_empty(), "answered: {bytes:?}"),
    }
    // A node with the other CA's certificate cannot join, and says so.
    let mut s3 = Spec::new(3, false, true);
    s3.seeds = vec![n1.proxy.addr()];
    s3.extra = tls_args(&other, &good.ca);
    let mut n3 = start(dir.path(), &s3, false);
    let status = n3
        .node
        .wait_exit(Duration::from_secs(30))
        .expect("a node the cluster's CA did not sign exits");
    assert!(!status.success());
    let log = n3.node.log();
    assert!(
        log.contains("cannot join the cluster") && log.contains("TLS"),
        "{log}"
    );
    let v = agreed(&[&n1, &n2], 2, &[1, 2]);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 2, "{v}");
}

/// A leader that has lost its majority cannot commit; SIGTERM still stops
/// it promptly and cleanly (no commit waits forever).
#[test]
fn a_leader_without_a_majority_still_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = form(dir.path(), &[(2, true), (3, true)]);
    let all: Vec<&Member> = members.iter().collect();
    agreed(&all, 3, &[1, 2, 3]);
    let leader = leader_of(&all).unwrap();
    for m in members.iter_mut().filter(|m| m.id != leader) {
        m.node.kill9();
    }
    let lm = members.iter_mut().find(|m| m.id == leader).unwrap();
    // It notices it cannot commit: an operator change is answered 503.
    let r = lm.node.req(
        "PUT",
        "/api/v1/cluster/compactor",
        &[],
        br#"{"node_id": 1}"#,
    );
    assert_eq!(r.status, 503, "{}", r.text());
    let pid = lm.node.child.as_ref().unwrap().id();
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = lm.node.wait_exit(Duration::from_secs(30));
    let log = lm.node.log();
    let status = status.unwrap_or_else(|| panic!("the leader did not exit after SIGTERM:\n{log}"));
    assert!(status.success(), "{status}\n{log}");
}
