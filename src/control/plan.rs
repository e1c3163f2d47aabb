//! What the Raft leader does next: pure decisions from the cluster state,
//! the Raft membership and what the leader has heard of each node.
//!
//! [`Liveness`] is the leader's volatile memory of heartbeats (monotonic
//! milliseconds, injected). [`plan`] turns state + membership + liveness
//! into [`Action`]s: node state changes (healthy → unhealthy → dead and
//! back), spec updates from restarted nodes, Raft membership changes that
//! make the membership follow the state (learners for new nodes, voters for
//! `voter` nodes, removal of removed nodes), and the first primary writer.
//! The control loop carries the actions out; a failed one is planned again
//! at the next tick.

use std::collections::{BTreeMap, BTreeSet};

use super::state::{ClusterState, NodeId, NodeSpec, NodeState};
use crate::config::Role;

/// Silence thresholds (`cluster.unhealthy_after_ms`, `cluster.dead_after_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSettings {
    pub unhealthy_after_ms: u64,
    pub dead_after_ms: u64,
}

impl HealthSettings {
    /// The state a node silent for `silent_ms` is in.
    pub fn state_after(&self, silent_ms: u64) -> NodeState {
        if silent_ms >= self.dead_after_ms {
            NodeState::Dead
        } else if silent_ms >= self.unhealthy_after_ms {
            NodeState::Unhealthy
        } else {
            NodeState::Healthy
        }
    }
}

/// The leader's memory of heartbeats since it became leader.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    /// When this node became leader: a node not heard since is silent
    /// since then (a new leader gives every node a full grace period).
    since_ms: u64,
    seen: BTreeMap<NodeId, Heard>,
}

#[derive(Debug, Clone)]
struct Heard {
    at_ms: u64,
    spec: NodeSpec,
}

impl Liveness {
    pub fn new(since_ms: u64) -> Liveness {
        Liveness {
            since_ms,
            seen: BTreeMap::new(),
        }
    }

    /// Records a heartbeat of `spec.id` at `now_ms`.
    pub fn heard(&mut self, spec: NodeSpec, now_ms: u64) {
        self.seen.insert(
            spec.id,
            Heard {
                at_ms: now_ms,
                spec,
            },
        );
    }

    /// Whether `id` was heard since leadership began.
    pub fn heard_since_start(&self, id: NodeId) -> bool {
        self.seen.contains_key(&id)
    }

    /// Milliseconds since `id` was last heard (or since leadership began).
    pub fn silent_ms(&self, id: NodeId, now_ms: u64) -> u64 {
        let last = self.seen.get(&id).map_or(self.since_ms, |h| h.at_ms);
        now_ms.saturating_sub(last)
    }
}

/// The Raft membership as the leader sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }
}

/// One step for the control loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The leader itself is not in the state yet (a new cluster).
    AddNode(NodeSpec),
    SetState {
        id: NodeId,
        state: NodeState,
    },
    /// A restarted node reports a different spec (address, version).
    UpdateSpec(NodeSpec),
    AddLearner {
        id: NodeId,
        control_addr: String,
    },
    PromoteVoter {
        id: NodeId,
    },
    /// Out of the Raft membership: the node is no longer in the state.
    RemoveMember {
        id: NodeId,
    },
    AssignPrimary {
        id: NodeId,
    },
    /// The compactor lease to a new holder (its holder is dead or none).
    AssignCompactor {
        id: NodeId,
    },
}

/// Plans the leader's next actions. `leader` is this node (always healthy).
/// Membership changes come one at a time (Raft allows one in flight), after
/// the state changes.
pub fn plan(
    state: &ClusterState,
    membership: &Membership,
    liveness: &Liveness,
    leader: NodeId,
    now_ms: u64,
    health: HealthSettings,
) -> Vec<Action> {
    let mut actions = Vec::new();
    if !state.nodes.contains_key(&leader) {
        if let Some(h) = liveness.seen.get(&leader) {
            actions.push(Action::AddNode(h.spec.clone()));
        }
    }
    for (id, n) in &state.nodes {
        let want = if *id == leader {
            NodeState::Healthy
        } else {
            health.state_after(liveness.silent_ms(*id, now_ms))
        };
        if want != n.state {
            actions.push(Action::SetState {
                id: *id,
                state: want,
            });
        }
        if let Some(h) = liveness.seen.get(id) {
            if h.spec != n.spec && h.spec.control_addr == n.spec.control_addr {
                actions.push(Action::UpdateSpec(h.spec.clone()));
            }
        }
    }
    if state.primary.is_none() && state.failover.is_none() && state.writer_epoch.0 == 0 {
        // The cluster's first primary: the first healthy writer. Every
        // later one comes from a failover (see `failover`).
        let healthy = |id: &NodeId| {
            *id == leader
                || health.state_after(liveness.silent_ms(*id, now_ms)) == NodeState::Healthy
        };
        if let Some(w) = state.nodes.values().find(|n| {
            n.spec.role == Role::Writer
                && !n.spec.replication_addr.is_empty()
                && healthy(&n.spec.id)
        }) {
            actions.push(Action::AssignPrimary { id: w.spec.id });
        }
    }
    if let Some(id) = compactor_choice(state, |id| {
        id == leader || health.state_after(liveness.silent_ms(id, now_ms)) == NodeState::Healthy
    }) {
        actions.push(Action::AssignCompactor { id });
    }
    // Membership follows the state, one change at a time.
    let member_change = state
        .nodes
        .values()
        .find(|n| !membership.contains(n.spec.id))
        .map(|n| Action::AddLearner {
            id: n.spec.id,
            control_addr: n.spec.control_addr.clone(),
        })
        .or_else(|| {
            membership
                .voters
                .iter()
                .chain(&membership.learners)
                .find(|id| !state.nodes.contains_key(id) && **id != leader)
                .map(|id| Action::RemoveMember { id: *id })
        })
        .or_else(|| {
            // Only a healthy learner is promoted: a voter that cannot vote
            // would count against the quorum.
            state
                .nodes
                .values()
                .find(|n| {
                    n.spec.voter
                        && membership.learners.contains(&n.spec.id)
                        && n.state == NodeState::Healthy
                        && health.state_after(liveness.silent_ms(n.spec.id, now_ms))
                            == NodeState::Healthy
                })
                .map(|n| Action::PromoteVoter { id: n.spec.id })
        });
    actions.extend(member_change);
    actions
}

/// Who should hold the compactor lease, if not its holder: nobody new
/// while the holder is in the state and not dead (a dead node was silent
/// longer than any lease it had: `cluster.dead_after_ms` is more than
/// `cluster.primary_lease_ms`); else the first healthy `compactor` node,
/// else the primary writer if healthy.
pub fn compactor_choice(state: &ClusterState, healthy: impl Fn(NodeId) -> bool) -> Option<NodeId> {
    let holder_alive = state
        .compactor
        .and_then(|c| state.nodes.get(&c))
        .is_some_and(|n| n.state != NodeState::Dead);
    if holder_alive {
        return None;
    }
    let want = state
        .nodes
        .values()
        .find(|n| n.spec.role == Role::Compactor && healthy(n.spec.id))
        .map(|n| n.spec.id)
        .or(state
            .primary
            .filter(|p| state.failover.is_none() && healthy(*p)))?;
    (state.compactor != Some(want)).then_some(want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::state::{test_spec as spec, Command};

    const H: HealthSettings = HealthSettings {
        unhealthy_after_ms: 1500,
        dead_after_ms: 2500,
    };

    /// A state of `nodes`; its primary, if any, holds the compactor lease.
    fn state(nodes: &[NodeSpec]) -> ClusterState {
        let mut s = ClusterState::default();
        for n in nodes {
            s.apply(&Command::AddNode(n.clone())).unwrap();
        }
        if s.primary.is_some() {
            s.apply(&Command::AssignCompactor { id: s.primary })
                .unwrap();
        }
        s
    }

    fn members(voters: &[u64], learners: &[u64]) -> Membership {
        Membership {
            voters: voters.iter().map(|i| NodeId(*i)).collect(),
            learners: learners.iter().map(|i| NodeId(*i)).collect(),
        }
    }

    #[test]
    fn health_thresholds() {
        assert_eq!(H.state_after(0), NodeState::Healthy);
        assert_eq!(H.state_after(1499), NodeState::Healthy);
        assert_eq!(H.state_after(1500), NodeState::Unhealthy);
        assert_eq!(H.state_after(2499), NodeState::Unhealthy);
        assert_eq!(H.state_after(2500), NodeState::Dead);
    }

    #[test]
    fn silent_nodes_go_unhealthy_then_dead_and_come_back() {
        let (a, b) = (spec(1, Role::Writer, true), spec(2, Role::Reader, true));
        let mut s = state(&[a.clone(), b.clone()]);
        s.primary = Some(NodeId(1));
        s.compactor = s.primary;
        let m = members(&[1, 2], &[]);
        let mut l = Liveness::new(1000);
        l.heard(b.clone(), 1000);
        assert_eq!(plan(&s, &m, &l, NodeId(1), 2000, H), vec![]);
        assert_eq!(
            plan(&s, &m, &l, NodeId(1), 2500, H),
            vec![Action::SetState {
                id: NodeId(2),
                state: NodeState::Unhealthy
            }]
        );
        assert_eq!(
            plan(&s, &m, &l, NodeId(1), 3500, H),
            vec![Action::SetState {
                id: NodeId(2),
                state: NodeState::Dead
            }]
        );
        s.nodes.get_mut(&NodeId(2)).unwrap().state = NodeState::Dead;
        l.heard(b, 4000);
        assert_eq!(
            plan(&s, &m, &l, NodeId(1), 4001, H),
            vec![Action::SetState {
                id: NodeId(2),
                state: NodeState::Healthy
            }]
        );
    }

    #[test]
    fn a_new_leader_gives_every_node_a_grace_period() {
        let s = state(&[spec(1, Role::Writer, true), spec(2, Role::Reader, true)]);
        let l = Liveness::new(10_000);
        let m = members(&[1, 2], &[]);
        let acts = plan(&s, &m, &l, NodeId(2), 10_100, H);
        assert!(
            !acts.iter().any(|a| matches!(a, Action::SetState { .. })),
            "{acts:?}"
        );
    }

    #[test]
    fn a_new_clusters_leader_adds_itself() {
        let s = ClusterState::default();
        let mut l = Liveness::new(0);
        l.heard(spec(1, Role::Writer, true), 0);
        assert_eq!(
            plan(&s, &members(&[1], &[]), &l, NodeId(1), 1, H),
            vec![Action::AddNode(spec(1, Role::Writer, true))]
        );
    }

    #[test]
    fn the_leader_is_healthy_by_definition() {
        let mut s = state(&[spec(1, Role::Writer, true)]);
        s.nodes.get_mut(&NodeId(1)).unwrap().state = NodeState::Dead;
        let acts = plan(
            &s,
            &members(&[1], &[]),
            &Liveness::new(0),
            NodeId(1),
            99_999,
            H,
        );
        assert_eq!(
            acts[0],
            Action::SetState {
                id: NodeId(1),
                state: NodeState::Healthy
            }
        );
    }

    #[test]
    fn first_healthy_writer_becomes_primary() {
        let s = state(&[
            spec(1, Role::Reader, true),
            spec(2, Role::Writer, true),
            spec(3, Role::Writer, true),
        ]);
        let m = members(&[1, 2, 3], &[]);
        let mut l = Liveness::new(0);
        // Node 2 silent too long, node 3 heard: 3 is chosen.
        l.heard(spec(3, Role::Writer, true), 5000);
        let acts = plan(&s, &m, &l, NodeId(1), 5000, H);
        assert!(
            acts.contains(&Action::AssignPrimary { id: NodeId(3) }),
            "{acts:?}"
        );
        // With a primary set, nothing is assigned.
        let mut s2 = s.clone();
        s2.primary = Some(NodeId(2));
        let acts = plan(&s2, &m, &l, NodeId(1), 5000, H);
        assert!(!acts
            .iter()
            .any(|a| matches!(a, Action::AssignPrimary { .. })));
        // No writer at all: no primary.
        let s3 = state(&[spec(1, Role::Reader, true)]);
        assert_eq!(
            plan(&s3, &members(&[1], &[]), &l, NodeId(1), 5000, H),
            vec![]
        );
    }

    #[test]
    fn the_compactor_lease_goes_to_a_compactor_node_else_the_primary() {
        let mut s = state(&[
            spec(1, Role::Writer, true),
            spec(2, Role::Reader, true),
            spec(3, Role::Compactor, false),
        ]);
        s.primary = Some(NodeId(1));
        s.compactor = s.primary;
        s.compactor = None;
        let all = |_: NodeId| true;
        // A healthy compactor node first; then it keeps the lease.
        assert_eq!(compactor_choice(&s, all), Some(NodeId(3)));
        let e = s.compactor_epoch;
        s.apply(&Command::AssignCompactor {
            id: Some(NodeId(3)),
        })
        .unwrap();
        assert_eq!(s.compactor_epoch, e + 1);
        assert_eq!(compactor_choice(&s, all), None);
        // Unhealthy: it keeps it (its lease may still run); dead: it goes
        // to the primary (no other compactor node), under a new epoch.
        s.apply(&Command::SetNodeState {
            id: NodeId(3),
            state: NodeState::Unhealthy,
        })
        .unwrap();
        assert_eq!(compactor_choice(&s, |id| id != NodeId(3)), None);
        s.apply(&Command::SetNodeState {
            id: NodeId(3),
            state: NodeState::Dead,
        })
        .unwrap();
        assert_eq!(compactor_choice(&s, |id| id != NodeId(3)), Some(NodeId(1)));
        s.apply(&Command::AssignCompactor {
            id: Some(NodeId(1)),
        })
        .unwrap();
        assert_eq!(s.compactor_epoch, e + 2);
        // No holder and no healthy candidate: nobody; during a failover the
        // primary is none.
        s.apply(&Command::RemoveNode { id: NodeId(1) }).unwrap();
        assert_eq!((s.compactor, s.compactor_epoch), (None, e + 3));
        assert_eq!(compactor_choice(&s, |id| id != NodeId(3)), None);
        // The plan carries it out.
        let mut s = state(&[spec(1, Role::Writer, true)]);
        s.primary = Some(NodeId(1));
        s.compactor = s.primary;
        s.compactor = None;
        let acts = plan(&s, &members(&[1], &[]), &Liveness::new(0), NodeId(1), 10, H);
        assert!(
            acts.contains(&Action::AssignCompactor { id: NodeId(1) }),
            "{acts:?}"
        );
    }

    #[test]
    fn membership_follows_the_state_one_change_at_a_time() {
        let s = state(&[
            spec(1, Role::Writer, true),
            spec(2, Role::Reader, true),
            spec(3, Role::Reader, false),
        ]);
        let mut s = s;
        s.primary = Some(NodeId(1));
        s.compactor = s.primary;
        let mut l = Liveness::new(0);
        l.heard(spec(2, Role::Reader, true), 10);
        l.heard(spec(3, Role::Reader, false), 10);
        // Nodes 2 and 3 not members yet: learners first, one at a time.
        let acts = plan(&s, &members(&[1], &[]), &l, NodeId(1), 20, H);
        assert_eq!(
            acts,
            vec![Action::AddLearner {
                id: NodeId(2),
                control_addr: "127.0.0.1:9002".into()
            }]
        );
        let acts = plan(&s, &members(&[1], &[2, 3]), &l, NodeId(1), 20, H);
        assert_eq!(acts, vec![Action::PromoteVoter { id: NodeId(2) }]);
        // Node 3 is not a voter: it stays a learner.
        assert_eq!(
            plan(&s, &members(&[1, 2], &[3]), &l, NodeId(1), 20, H),
            vec![]
        );
        // A removed node leaves the membership.
        let mut s2 = s.clone();
        s2.apply(&Command::RemoveNode { id: NodeId(2) }).unwrap();
        assert_eq!(
            plan(&s2, &members(&[1, 2], &[3]), &l, NodeId(1), 20, H),
            vec![Action::RemoveMember { id: NodeId(2) }]
        );
        // An unhealthy learner is not promoted.
        let acts = plan(&s, &members(&[1], &[2, 3]), &l, NodeId(1), 2000, H);
        assert!(
            !acts
                .iter()
                .any(|a| matches!(a, Action::PromoteVoter { .. })),
            "{acts:?}"
        );
    }

    #[test]
    fn a_restarted_node_with_new_addresses_is_updated() {
        let s = state(&[spec(1, Role::Writer, true), spec(2, Role::Reader, true)]);
        let mut l = Liveness::new(0);
        let mut moved = spec(2, Role::Reader, true);
        moved.http_addr = "127.0.0.1:1234".into();
        moved.version = "0.2.0".into();
        l.heard(moved.clone(), 10);
        let mut s = s;
        s.primary = Some(NodeId(1));
        s.compactor = s.primary;
        let acts = plan(&s, &members(&[1, 2], &[]), &l, NodeId(1), 20, H);
        assert_eq!(acts, vec![Action::UpdateSpec(moved)]);
    }
}
