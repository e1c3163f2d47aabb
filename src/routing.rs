//! Where a request is served: pure decisions from the cluster view, apart
//! from sockets (`forward.rs` carries them out).
//!
//! * Writes go to the primary writer: served here when this node is it,
//!   else forwarded to it; with no primary (a failover in progress) the
//!   answer is 503 with `Retry-After`.
//! * Queries (`routing.queries`): `local` serves them here; `readers` sends
//!   them to a healthy reader (round-robin or least-connections,
//!   `routing.strategy`), falling back to the primary, and serves them here
//!   when this node is the one chosen.
//! * A forwarded request carries the chain of nodes it went through
//!   (`x-tidemark-forwarded-by`, sealed with the cluster secret): a node
//!   already on the chain, or a chain longer than [`MAX_HOPS`], ends it.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::config::Role;
use crate::control::state::{ClusterState, NodeId, NodeState};

/// The longest chain of forwards a request may take.
pub const MAX_HOPS: usize = 2;

/// `routing.queries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryRouting {
    /// Served by the node that received it (every node holds the data).
    #[default]
    Local,
    /// Sent to a healthy reader; the primary when there is none.
    Readers,
}

/// `routing.strategy`: how a reader is picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    #[default]
    RoundRobin,
    /// The reader with the fewest queries this core has in flight to it.
    LeastConnections,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Local,
    Forward {
        to: NodeId,
        http_addr: String,
    },
    /// No node can take it now (no primary): 503 with `Retry-After`.
    Unavailable(String),
    /// The request came round to a node it already went through, or went
    /// through too many: the views disagree for now.
    Loop(String),
}

/// Checks the chain a forwarded request carries against this node.
fn loop_check(me: NodeId, chain: &[NodeId]) -> Option<Route> {
    if chain.contains(&me) {
        return Some(Route::Loop(format!(
            "forwarding loop: the request went through nodes {} and came back to node {me}",
            ids(chain)
        )));
    }
    if chain.len() >= MAX_HOPS {
        return Some(Route::Loop(format!(
            "the request was forwarded {} times already (through nodes {}); the nodes disagree on who serves it",
            chain.len(),
            ids(chain)
        )));
    }
    None
}

fn ids(chain: &[NodeId]) -> String {
    chain
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a write received by `me` goes.
pub fn route_write(state: &ClusterState, me: NodeId, chain: &[NodeId]) -> Route {
    if state.primary == Some(me) {
        return Route::Local;
    }
    let Some(p) = state.primary_node() else {
        let why = if state.failover.is_some() {
            "a failover is in progress: the cluster has no primary writer right now; retry shortly"
        } else {
            "the cluster has no primary writer right now; retry shortly"
        };
        return Route::Unavailable(why.into());
    };
    if let Some(l) = loop_check(me, chain) {
        return l;
    }
    Route::Forward {
        to: p.spec.id,
        http_addr: p.spec.http_addr.clone(),
    }
}

/// A core's memory for picking readers: the round-robin position and the
/// queries in flight to each node.
#[derive(Debug, Clone, Default)]
pub struct Balancer {
    next: usize,
    in_flight: BTreeMap<NodeId, usize>,
}

impl Balancer {
    pub fn started(&mut self, to: NodeId) {
        *self.in_flight.entry(to).or_default() += 1;
    }

    pub fn finished(&mut self, to: NodeId) {
        if let Some(n) = self.in_flight.get_mut(&to) {
            *n = n.saturating_sub(1);
        }
    }

    pub fn in_flight(&self, to: NodeId) -> usize {
        self.in_flight.get(&to).copied().unwrap_or(0)
    }
}

/// Where a query received by `me` goes.
pub fn route_query(
    state: &ClusterState,
    me: NodeId,
    chain: &[NodeId],
    routing: QueryRouting,
    strategy: Strategy,
    balancer: &mut Balancer,
) -> Route {
    // A forwarded query is served where it lands: it was sent here.
    if routing == QueryRouting::Local || !chain.is_empty() {
        return Route::Local;
    }
    let readers: Vec<_> = state
        .nodes
        .values()
        .filter(|n| n.spec.role == Role::Reader && n.state == NodeState::Healthy)
        .collect();
    // A healthy reader serves its own queries.
    if readers.iter().any(|n| n.spec.id == me) {
        return Route::Local;
    }
    let chosen = if readers.is_empty() {
        match state.primary_node() {
            Some(p) => p,
            None => return Route::Local,
        }
    } else {
        match strategy {
            Strategy::RoundRobin => {
                let n = readers[balancer.next % readers.len()];
                balancer.next = balancer.next.wrapping_add(1);
                n
            }
            Strategy::LeastConnections => {
                let start = balancer.next % readers.len();
                balancer.next = balancer.next.wrapping_add(1);
                // Ties go round-robin.
                *readers
                    .iter()
                    .cycle()
                    .skip(start)
                    .take(readers.len())
                    .min_by_key(|n| balancer.in_flight(n.spec.id))
                    .expect("not empty")
            }
        }
    };
    if chosen.spec.id == me {
        return Route::Local;
    }
    Route::Forward {
        to: chosen.spec.id,
        http_addr: chosen.spec.http_addr.clone(),
    }
}

type HmacSha256 = Hmac<Sha256>;

/// The value of `x-tidemark-forward-auth` for a request with `chain`
/// (after this node is added), sent at `unix_secs`: `<secs>.<hex HMAC>`
/// over the method, target and chain, keyed by the cluster secret.
pub fn seal_chain(
    secret: &[u8],
    unix_secs: u64,
    method: &str,
    target: &str,
    chain: &[NodeId],
) -> String {
    let mac = chain_hmac(secret, unix_secs, method, target, chain).finalize();
    format!("{unix_secs}.{}", hex::encode(mac.into_bytes()))
}

fn chain_hmac(
    secret: &[u8],
    unix_secs: u64,
    method: &str,
    target: &str,
    chain: &[NodeId],
) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(b"tidemark-forward-v1");
    m.update(&unix_secs.to_le_bytes());
    m.update(method.as_bytes());
    m.update(b" ");
    m.update(target.as_bytes());
    for id in chain {
        m.update(&id.0.to_le_bytes());
    }
    m
}

/// Parses `x-tidemark-forwarded-by` (comma-separated node ids).
pub fn parse_chain(header: &str) -> Option<Vec<NodeId>> {
    header
        .split(',')
        .map(|s| s.trim().parse::<u64>().ok().map(NodeId))
        .collect()
}

/// Whether `auth` seals `chain` for this request, sent within `skew`
/// seconds of `now`.
pub fn check_chain(
    secret: &[u8],
    auth: &str,
    method: &str,
    target: &str,
    chain: &[NodeId],
    now: u64,
    skew: u64,
) -> bool {
    let Some((secs, mac)) = auth.split_once('.') else {
        return false;
    };
    let (Ok(secs), Ok(mac)) = (secs.parse::<u64>(), hex::decode(mac)) else {
        return false;
    };
    secs.abs_diff(now) <= skew
        && chain_hmac(secret, secs, method, target, chain)
            .verify_slice(&mac)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::state::{test_spec, Command};

    fn cluster() -> ClusterState {
        let mut s = ClusterState::default();
        s.apply(&Command::AddNode(test_spec(1, Role::Writer, true)))
            .unwrap();
        s.apply(&Command::AddNode(test_spec(2, Role::Reader, true)))
            .unwrap();
        s.apply(&Command::AddNode(test_spec(3, Role::Reader, true)))
            .unwrap();
        s.apply(&Command::AssignPrimary {
            id: Some(NodeId(1)),
        })
        .unwrap();
        s
    }

    #[test]
    fn writes_go_to_the_primary() {
        let s = cluster();
        assert_eq!(route_write(&s, NodeId(1), &[]), Route::Local);
        assert_eq!(
            route_write(&s, NodeId(2), &[]),
            Route::Forward {
                to: NodeId(1),
                http_addr: "127.0.0.1:8001".into()
            }
        );
        // Forwarded once already (by node 3, whose view was stale): one
        // more hop is allowed; coming back, or a longer chain, is a loop.
        assert!(matches!(
            route_write(&s, NodeId(2), &[NodeId(3)]),
            Route::Forward { .. }
        ));
        assert!(matches!(
            route_write(&s, NodeId(2), &[NodeId(2)]),
            Route::Loop(_)
        ));
        assert!(matches!(
            route_write(&s, NodeId(2), &[NodeId(3), NodeId(4)]),
            Route::Loop(_)
        ));
        let mut f = s.clone();
        f.apply(&Command::BeginFailover {
            target: None,
            planned: false,
            at_ms: 1,
        })
        .unwrap();
        assert!(
            matches!(route_write(&f, NodeId(2), &[]), Route::Unavailable(m) if m.contains("failover"))
        );
    }

    #[test]
    fn queries_stay_local_unless_sent_to_readers() {
        let s = cluster();
        let mut b = Balancer::default();
        let q = |me: u64, chain: &[NodeId], b: &mut Balancer, st: Strategy| {
            route_query(&s, NodeId(me), chain, QueryRouting::Readers, st, b)
        };
        assert_eq!(
            route_query(
                &s,
                NodeId(1),
                &[],
                QueryRouting::Local,
                Strategy::RoundRobin,
                &mut b
            ),
            Route::Local
        );
        // Round-robin over the two readers; the one chosen serves locally.
        let picks: Vec<Route> = (0..4)
            .map(|_| q(1, &[], &mut b, Strategy::RoundRobin))
            .collect();
        assert!(matches!(&picks[0], Route::Forward { to: NodeId(2), .. }));
        assert!(matches!(&picks[1], Route::Forward { to: NodeId(3), .. }));
        assert_eq!(picks[0], picks[2]);
        assert_eq!(q(2, &[], &mut b, Strategy::RoundRobin), Route::Local);
        // A forwarded query is served where it lands.
        assert_eq!(
            q(1, &[NodeId(3)], &mut b, Strategy::RoundRobin),
            Route::Local
        );
    }

    #[test]
    fn least_connections_picks_the_idlest_reader_and_falls_back_to_the_primary() {
        let mut s = cluster();
        let mut b = Balancer::default();
        b.started(NodeId(2));
        b.started(NodeId(2));
        b.started(NodeId(3));
        for _ in 0..3 {
            assert!(matches!(
                route_query(
                    &s,
                    NodeId(1),
                    &[],
                    QueryRouting::Readers,
                    Strategy::LeastConnections,
                    &mut b
                ),
                Route::Forward { to: NodeId(3), .. }
            ));
        }
        b.finished(NodeId(2));
        b.finished(NodeId(2));
        assert!(matches!(
            route_query(
                &s,
                NodeId(1),
                &[],
                QueryRouting::Readers,
                Strategy::LeastConnections,
                &mut b
            ),
            Route::Forward { to: NodeId(2), .. }
        ));
        // No healthy reader: the primary.
        for id in [2, 3] {
            s.apply(&Command::SetNodeState {
                id: NodeId(id),
                state: NodeState::Dead,
            })
            .unwrap();
        }
        assert_eq!(
            route_query(
                &s,
                NodeId(1),
                &[],
                QueryRouting::Readers,
                Strategy::RoundRobin,
                &mut b
            ),
            Route::Local
        );
        assert!(matches!(
            route_query(
                &s,
                NodeId(2),
                &[],
                QueryRouting::Readers,
                Strategy::RoundRobin,
                &mut b
            ),
            Route::Forward { to: NodeId(1), .. }
        ));
    }

    #[test]
    fn a_sealed_chain_verifies_and_a_forged_one_does_not() {
        let chain = [NodeId(2), NodeId(3)];
        let a = seal_chain(b"s", 1000, "POST", "/write?db=x", &chain);
        assert!(check_chain(
            b"s",
            &a,
            "POST",
            "/write?db=x",
            &chain,
            1001,
            30
        ));
        assert!(!check_chain(
            b"other",
            &a,
            "POST",
            "/write?db=x",
            &chain,
            1001,
            30
        ));
        assert!(!check_chain(
            b"s",
            &a,
            "POST",
            "/write?db=y",
            &chain,
            1001,
            30
        ));
        assert!(!check_chain(
            b"s",
            &a,
            "POST",
            "/write?db=x",
            &chain[..1],
            1001,
            30
        ));
        assert!(!check_chain(
            b"s",
            &a,
            "POST",
            "/write?db=x",
            &chain,
            2000,
            30
        ));
        assert!(!check_chain(
            b"s",
            "garbage",
            "POST",
            "/write?db=x",
            &chain,
            1001,
            30
        ));
        assert_eq!(parse_chain("2, 3"), Some(chain.to_vec()));
        assert_eq!(parse_chain("2,x"), None);
    }
}
