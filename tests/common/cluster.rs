//! Cluster test harness: members on 127.0.0.(10 + id), each control port
//! behind its own proxy (its advertised address), outgoing control
//! connections from the member's own IP, so a proxy can cut a node off in
//! both directions.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::proxy::Proxy;
use super::*;

pub const SECRET: &str = "cluster-test-secret";

pub fn node_ip(id: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + id as u8))
}

pub fn free_port_on(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two consecutive free ports (replication: shard i listens on port + i).
pub fn free_pair() -> u16 {
    loop {
        let p = free_port();
        if p < 65000 && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

/// Polls `f` until it returns `Some`, failing after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct Member {
    pub id: u64,
    pub node: Node,
    pub proxy: Proxy,
}

impl Member {
    pub fn view(&self) -> Option<Value> {
        let r = try_request(self.node.port, "GET", "/api/v1/cluster", &[], b"").ok()?;
        (r.status == 200).then(|| r.json())
    }
}

#[derive(Clone)]
pub struct Spec {
    pub id: u64,
    pub writer: bool,
    pub voter: bool,
    pub seeds: Vec<String>,
    /// More `--set` values.
    pub extra: Vec<String>,
    /// Raw flags.
    pub flags: Vec<String>,
    /// Environment variables of the process.
    pub env: Vec<(String, String)>,
}

impl Spec {
    pub fn new(id: u64, writer: bool, voter: bool) -> Spec {
        Spec {
            id,
            writer,
            voter,
            seeds: Vec::new(),
            extra: Vec::new(),
            flags: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// Starts a member behind a new proxy; waits for /ready unless `wait` is false.
pub fn start(root: &Path, s: &Spec, wait: bool) -> Member {
    let ip = node_ip(s.id);
    let ctrl = SocketAddr::new(ip, free_port_on(ip));
    let proxy = Proxy::start(ctrl);
    let dir: PathBuf = root.join(format!("n{}", s.id));
    std::fs::create_dir_all(&dir).unwrap();
    let mut args: Vec<String> = vec![
        format!(
            "cluster.role={}",
            if s.writer { "writer" } else { "reader" }
        ),
        format!("cluster.secret={SECRET}"),
        format!("cluster.node_id={}", s.id),
        format!("cluster.control_addr={ctrl}"),
        format!("cluster.advertise_addr={}", proxy.addr()),
        format!("cluster.voter={}", s.voter),
        "replication.heartbeat_ms=200".into(),
        // Tests run in parallel on two cores: a longer election timeout
        // than the default keeps a starved leader from being deposed.
        "cluster.election_timeout_ms=1000".into(),
    ];
    if s.writer {
        args.push(format!("replication.listen_addr=127.0.0.1:{}", free_pair()));
    }
    if !s.seeds.is_empty() {
        args.push(format!("cluster.seeds={}", s.seeds.join(",")));
    }
    args.extend(s.extra.iter().cloned());
    let mut flags: Vec<String> = args
        .iter()
        .flat_map(|a| ["--set".into(), a.clone()])
        .collect();
    flags.extend(s.flags.iter().cloned());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = s
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let node = if wait {
        Node::start_with_env(&dir, &flags, &env)
    } else {
        Node::launch(&dir, &flags, &env)
    };
    Member {
        id: s.id,
        node,
        proxy,
    }
}

/// Node 1 (a writer, voter) starts the cluster; the others (readers,
/// `(id, voter)`) join through it. Waits until every node is ready.
pub fn form(root: &Path, readers: &[(u64, bool)]) -> Vec<Member> {
    let n1 = start(root, &Spec::new(1, true, true), true);
    let seed = vec![n1.proxy.addr()];
    let mut members = vec![n1];
    for &(id, voter) in readers {
        let mut s = Spec::new(id, false, voter);
        s.seeds.clone_from(&seed);
        members.push(start(root, &s, true));
    }
    members
}

/// Every listed member's view, once they all show `n` nodes, all healthy,
/// the same leader and the same voters: the agreed view.
pub fn agreed(members: &[&Member], n: usize, voters: &[u64]) -> Value {
    wait_for(
        &format!(
            "{} members to agree on {n} healthy nodes, voters {voters:?}",
            members.len()
        ),
        Duration::from_secs(60),
        || {
            let views: Vec<Value> = members.iter().map(|m| m.view()).collect::<Option<_>>()?;
            let first = &views[0];
            let leader = first["leader_id"].as_u64()?;
            for v in &views {
                let nodes = v["nodes"].as_array()?;
                if nodes.len() != n || v["leader_id"].as_u64() != Some(leader) {
                    return None;
                }
                if nodes.iter().any(|x| x["state"] != "healthy") {
                    return None;
                }
                let vs: Vec<u64> = nodes
                    .iter()
                    .filter(|x| x["raft_member"] == "voter")
                    .map(|x| x["id"].as_u64().unwrap())
                    .collect();
                if vs != voters {
                    return None;
                }
                if v["primary_writer"] != first["primary_writer"]
                    || v["writer_epoch"] != first["writer_epoch"]
                {
                    return None;
                }
            }
            Some(first.clone())
        },
    )
}

pub fn node_state(v: &Value, id: u64) -> Option<String> {
    v["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"] == id)
        .map(|n| n["state"].as_str().unwrap().to_string())
}

pub fn leader_of(members: &[&Member]) -> Option<u64> {
    let mut leader = None;
    for m in members {
        let l = m.view()?["leader_id"].as_u64()?;
        if leader.is_some_and(|x| x != l) {
            return None;
        }
        leader = Some(l);
    }
    leader
}

/// Every value of column `id` in `db.table` on `node`, with how many rows
/// hold it; `None` while the node does not answer.
pub fn ids_on(node: &Node, db: &str, table: &str) -> Option<std::collections::BTreeMap<i64, i64>> {
    let sql = format!(r#"{{"sql": "SELECT id, count(*) AS n FROM {table} GROUP BY id"}}"#);
    let r = try_request_within(
        node.port,
        "POST",
        "/api/v1/query",
        &[("Content-Type", "application/json"), ("x-arc-database", db)],
        sql.as_bytes(),
        Duration::from_secs(30),
    )
    .ok()?;
    (r.status == 200).then(|| {
        r.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| (row[0].as_i64().unwrap(), row[1].as_i64().unwrap()))
            .collect()
    })
}

/// A writer (node 1, `routing.queries = readers`, plus `writer_extra`
/// settings) and a reader (node 2), with 500 rows of `r.m` (`host`, `id`
/// 0..500) written to the writer and replicated to the reader: for tests of
/// queries the writer sends to the reader.
pub fn writer_routing_to_a_reader(root: &Path, writer_extra: &[String]) -> (Member, Member) {
    let mut s1 = Spec::new(1, true, true);
    s1.extra.push("routing.queries=readers".to_string());
    s1.extra.extend(writer_extra.iter().cloned());
    let n1 = start(root, &s1, true);
    let mut s2 = Spec::new(2, false, true);
    s2.seeds = vec![n1.proxy.addr()];
    let n2 = start(root, &s2, true);
    let v = agreed(&[&n1, &n2], 2, &[1, 2]);
    assert_eq!(v["primary_writer"], 1, "{v}");
    let body: String = (0..500i64)
        .map(|i| {
            format!(
                "m,host=h{} id={i}i {}\n",
                i % 4,
                1_700_000_000_000_000_000 + i * 1_000_000_000
            )
        })
        .collect();
    assert_eq!(n1.node.write_lp("r", &body).status, 204);
    wait_for("the reader's rows", Duration::from_secs(60), || {
        // The table appears on the reader with the first replicated rows.
        let body = br#"{"sql": "SELECT count(*) FROM m"}"#;
        let r = n2
            .node
            .req("POST", "/api/v1/query", &[("x-arc-database", "r")], body);
        (r.status == 200 && r.json()["data"][0][0] == 500).then_some(())
    });
    (n1, n2)
}
