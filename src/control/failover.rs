//! Writer failover decisions: pure functions of the cluster state, the
//! leader's view of who is alive, and the clock (injected).
//!
//! A failover runs in committed steps (see [`super::state`]):
//! 1. **Begin**: the primary is dead and its lease has run out (or the
//!    operator asked): the epoch moves on with no primary. Every node stops
//!    following the old epoch and says so in its heartbeats (`fenced_epoch`),
//!    with its per-shard durable positions, which no longer move.
//! 2. **Choose** ([`choose`]): among the candidates that reported (standby
//!    writers, and readers with `cluster.promote_readers`), the one holding
//!    the most: every shard at least as far as any other; ties go to a
//!    writer, then to the lowest id. When no candidate leads on every shard,
//!    the one with the most entries in total is chosen and first copies the
//!    shards where another is ahead (**CatchUp**). A planned hand-over
//!    copies from the old primary, which is alive and fenced.
//! 3. **Promote**: once the chosen candidate holds the goal on every shard,
//!    it becomes primary at a new epoch, its shards continuing one past
//!    what it holds.
//!
//! With `replication.min_acks >= 1`, an acknowledged write is on at least
//! one reader that acknowledged it; the chosen candidate ends up holding
//! the most on every shard, so it holds that write.

use std::collections::BTreeMap;

use tidemark_shards::WalSeq;

use super::state::{CatchUp, ClusterState, NodeId, NodeInfo, NodeState};

use crate::config::Role;

/// `cluster.primary_lease_ms`, `cluster.failover_cooldown_ms`,
/// `cluster.promote_readers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverSettings {
    pub lease_ms: u64,
    pub cooldown_ms: u64,
    pub promote_readers: bool,
}

/// A node that may be promoted (or copied from), with its positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: NodeId,
    pub role: Role,
    /// Durable position per shard.
    pub positions: Vec<WalSeq>,
}

impl Candidate {
    fn total(&self) -> u128 {
        self.positions.iter().map(|p| u128::from(p.0)).sum()
    }

    /// Writers before readers, then the lowest id.
    fn rank(&self) -> (u8, NodeId) {
        (u8::from(self.role != Role::Writer), self.id)
    }

    fn covers(&self, goal: &[WalSeq]) -> bool {
        self.positions.len() == goal.len() && self.positions.iter().zip(goal).all(|(p, g)| p >= g)
    }
}

/// Who is promoted, and what it must copy first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub target: NodeId,
    /// Per shard: the highest position any candidate (or source) holds.
    pub goal: Vec<WalSeq>,
    /// Per shard: where the target copies from when it is behind the goal.
    pub sources: Vec<Option<NodeId>>,
    /// Why this candidate, for the log.
    pub reason: String,
}

/// Chooses the next primary among `candidates`; `sources` may also be
/// copied from but not promoted (the old primary in a planned hand-over).
/// `target`: the operator's choice (must be among the candidates).
pub fn choose(
    candidates: &[Candidate],
    sources: &[Candidate],
    target: Option<NodeId>,
) -> Option<Choice> {
    let shards = candidates.first()?.positions.len();
    let all: Vec<&Candidate> = candidates.iter().chain(sources).collect();
    let goal: Vec<WalSeq> = (0..shards)
        .map(|s| {
            all.iter()
                .filter_map(|c| c.positions.get(s))
                .copied()
                .max()
                .unwrap_or_default()
        })
        .collect();
    let leads = |c: &Candidate| {
        candidates
            .iter()
            .all(|o| (0..shards).all(|s| c.positions.get(s) >= o.positions.get(s)))
    };
    let (chosen, reason) = match target {
        Some(t) => (
            candidates.iter().find(|c| c.id == t)?,
            "the operator's target".to_string(),
        ),
        None => match candidates
            .iter()
            .filter(|c| leads(c))
            .min_by_key(|c| c.rank())
        {
            Some(c) => (
                c,
                "holds at least as much as every other candidate on every shard".to_string(),
            ),
            None => {
                let c = candidates
                    .iter()
                    .min_by_key(|c| (std::cmp::Reverse(c.total()), c.rank()))
                    .expect("not empty");
                (
                    c,
                    "no candidate leads on every shard; this one holds the most in total"
                        .to_string(),
                )
            }
        },
    };
    let sources = (0..shards)
        .map(|s| {
            if chosen.positions.get(s) >= goal.get(s) {
                return None;
            }
            all.iter()
                .filter(|c| c.positions.get(s) == goal.get(s))
                .min_by_key(|c| c.rank())
                .map(|c| c.id)
        })
        .collect();
    Some(Choice {
        target: chosen.id,
        goal,
        sources,
        reason,
    })
}

/// The leader's next failover step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Begin,
    CatchUp(CatchUp),
    Promote {
        id: NodeId,
        start: Vec<WalSeq>,
        choice: Choice,
        candidates: Vec<Candidate>,
    },
}

/// What the leader knows of liveness: whether a node is healthy now; how
/// long any lease it may hold has been unrenewed (ms); and whether it is
/// the Raft leader this leader replaced, unheard since (a quorum stopped
/// hearing it: Raft's own failure detection).
pub trait Alive {
    fn healthy(&self, id: NodeId) -> bool;
    fn silent_ms(&self, id: NodeId) -> u64;
    fn replaced_leader(&self, id: NodeId) -> bool;
}

/// Decides the next failover step, if any. `now_ms` is the leader's wall
/// clock (the unit of `started_ms` and `last_failover_ms`).
pub fn next_step(
    state: &ClusterState,
    alive: &impl Alive,
    now_ms: u64,
    s: &FailoverSettings,
) -> Option<Step> {
    let Some(f) = &state.failover else {
        return match state.primary {
            Some(p) => {
                let n = state.nodes.get(&p)?;
                let cooled = state.last_failover_ms == 0
                    || now_ms.saturating_sub(state.last_failover_ms) >= s.cooldown_ms;
                // Its lease is over once it has been silent that long: it
                // renews only through a heartbeat a leader answered. It has
                // failed when it is dead, or when it was the Raft leader
                // and lost that role (and has not been heard since).
                let failed = n.state == NodeState::Dead || alive.replaced_leader(p);
                (failed && alive.silent_ms(p) >= s.lease_ms && cooled).then_some(Step::Begin)
            }
            // A cluster that had a primary and lost it (removed).
            None if state.writer_epoch.0 > 0 => Some(Step::Begin),
            None => None,
        };
    };
    // Nodes that can stream their WAL: candidates, and sources that are
    // not promoted but hold entries (a reader with promote_readers off;
    // the old primary in a planned hand-over, alive and fenced).
    let serves = |n: &NodeInfo| !n.spec.replication_addr.is_empty() && alive.healthy(n.spec.id);
    let promotable = |n: &NodeInfo| {
        (n.spec.role == Role::Writer || (n.spec.role == Role::Reader && s.promote_readers))
            && !(f.planned && Some(n.spec.id) == f.from)
    };
    let shard_count = state.nodes.values().next()?.spec.shard_count as usize;
    let reported = |n: &NodeInfo| {
        n.fenced_epoch >= f.epoch
            && n.last_heartbeat_ms >= f.started_ms
            && n.shards.len() == shard_count
    };
    let as_candidate = |n: &NodeInfo| Candidate {
        id: n.spec.id,
        role: n.spec.role,
        positions: n.shards.iter().map(|p| p.durable_seq).collect(),
    };
    let serving: BTreeMap<NodeId, &NodeInfo> = state
        .nodes
        .values()
        .filter(|n| serves(n))
        .map(|n| (n.spec.id, n))
        .collect();
    // Every healthy node that may hold acknowledged entries is waited for
    // (a node that stops heartbeating turns unhealthy and is not): with
    // min_acks >= 1 the one that acknowledged a write may be any of them.
    if !serving.values().all(|n| reported(n)) {
        return None;
    }
    let (ready, sources): (Vec<&NodeInfo>, Vec<&NodeInfo>) = serving
        .values()
        .filter(|n| reported(n))
        .partition(|n| promotable(n));
    let ready: Vec<Candidate> = ready.into_iter().map(as_candidate).collect();
    let sources: Vec<Candidate> = sources.into_iter().map(as_candidate).collect();
    if ready.is_empty() {
        return None;
    }
    let target = f.target.filter(|t| ready.iter().any(|c| c.id == *t));
    let choice = choose(&ready, &sources, target)?;
    let chosen = ready.iter().find(|c| c.id == choice.target)?;
    if chosen.covers(&choice.goal) {
        return Some(Step::Promote {
            id: choice.target,
            start: chosen.positions.iter().map(|p| p.next()).collect(),
            candidates: ready.clone(),
            choice,
        });
    }
    let plan = CatchUp {
        target: choice.target,
        sources: choice.sources,
        goal: choice.goal,
    };
    (f.catch_up.as_ref() != Some(&plan)).then_some(Step::CatchUp(plan))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::state::{test_spec, Command, HeartbeatRecord, ShardPosition, WriterEpoch};

    fn cand(id: u64, role: Role, pos: &[u64]) -> Candidate {
        Candidate {
            id: NodeId(id),
            role,
            positions: pos.iter().map(|&p| WalSeq(p)).collect(),
        }
    }

    #[test]
    fn the_candidate_holding_the_most_on_every_shard_wins() {
        let c = [
            cand(2, Role::Writer, &[10, 20]),
            cand(3, Role::Reader, &[12, 25]),
            cand(4, Role::Reader, &[11, 25]),
        ];
        let ch = choose(&c, &[], None).unwrap();
        assert_eq!(ch.target, NodeId(3));
        assert_eq!(ch.goal, vec![WalSeq(12), WalSeq(25)]);
        assert_eq!(ch.sources, vec![None, None]);
    }

    #[test]
    fn ties_go_to_a_writer_then_to_the_lowest_id() {
        let c = [
            cand(5, Role::Reader, &[10, 10]),
            cand(4, Role::Writer, &[10, 10]),
            cand(3, Role::Reader, &[10, 10]),
        ];
        assert_eq!(choose(&c, &[], None).unwrap().target, NodeId(4));
        let r = [cand(5, Role::Reader, &[7]), cand(3, Role::Reader, &[7])];
        assert_eq!(choose(&r, &[], None).unwrap().target, NodeId(3));
    }

    #[test]
    fn a_candidate_behind_on_one_shard_only_copies_that_shard_first() {
        // Node 2 is ahead on shard 0, node 3 on shard 1; node 3 holds more
        // in total: it is chosen and copies shard 0 from node 2.
        let c = [
            cand(2, Role::Writer, &[50, 10]),
            cand(3, Role::Reader, &[40, 30]),
        ];
        let ch = choose(&c, &[], None).unwrap();
        assert_eq!(ch.target, NodeId(3));
        assert_eq!(ch.goal, vec![WalSeq(50), WalSeq(30)]);
        assert_eq!(ch.sources, vec![Some(NodeId(2)), None]);
    }

    #[test]
    fn a_planned_target_copies_from_the_old_primary() {
        let c = [
            cand(2, Role::Writer, &[9, 9]),
            cand(3, Role::Reader, &[10, 8]),
        ];
        let old = [cand(1, Role::Writer, &[12, 12])];
        let ch = choose(&c, &old, Some(NodeId(2))).unwrap();
        assert_eq!(ch.target, NodeId(2));
        assert_eq!(ch.goal, vec![WalSeq(12), WalSeq(12)]);
        assert_eq!(ch.sources, vec![Some(NodeId(1)), Some(NodeId(1))]);
        assert!(choose(&c, &old, Some(NodeId(7))).is_none());
        assert!(choose(&[], &old, None).is_none());
    }

    struct Live(Vec<u64>, u64);
    impl Alive for Live {
        fn replaced_leader(&self, _: NodeId) -> bool {
            false
        }
        fn healthy(&self, id: NodeId) -> bool {
            self.0.contains(&id.0)
        }
        fn silent_ms(&self, id: NodeId) -> u64 {
            if self.0.contains(&id.0) {
                0
            } else {
                self.1
            }
        }
    }

    const S: FailoverSettings = FailoverSettings {
        lease_ms: 2000,
        cooldown_ms: 5000,
        promote_readers: true,
    };

    fn cluster() -> ClusterState {
        let mut s = ClusterState::default();
        s.apply(&Command::AddNode(test_spec(1, Role::Writer, true)))
            .unwrap();
        s.apply(&Command::AddNode(test_spec(2, Role::Writer, true)))
            .unwrap();
        let mut r = test_spec(3, Role::Reader, true);
        r.replication_addr = "127.0.0.1:10030".into();
        s.apply(&Command::AddNode(r)).unwrap();
        s.apply(&Command::AssignPrimary {
            id: Some(NodeId(1)),
        })
        .unwrap();
        s
    }

    /// Begins a failover at 10,000 ms; returns its epoch.
    fn begin(s: &mut ClusterState, target: Option<u64>, planned: bool) -> u64 {
        s.apply(&Command::BeginFailover {
            target: target.map(NodeId),
            planned,
            at_ms: 10_000,
        })
        .unwrap();
        s.writer_epoch.0
    }

    fn beat(s: &mut ClusterState, id: u64, at: u64, fenced: u64, pos: [u64; 2]) {
        s.apply(&Command::Heartbeats(vec![HeartbeatRecord {
            id: NodeId(id),
            at_ms: at,
            shards: pos
                .iter()
                .map(|&p| ShardPosition {
                    durable_seq: WalSeq(p),
                    applied_seq: WalSeq(p),
                })
                .collect(),
            fenced_epoch: WriterEpoch(fenced),
        }]))
        .unwrap();
    }

    #[test]
    fn a_dead_primary_is_deposed_only_after_its_lease() {
        let mut s = cluster();
        let live = Live(vec![2, 3], 1500);
        assert_eq!(next_step(&s, &live, 10_000, &S), None, "not dead yet");
        s.apply(&Command::SetNodeState {
            id: NodeId(1),
            state: NodeState::Dead,
        })
        .unwrap();
        assert_eq!(next_step(&s, &live, 10_000, &S), None, "lease not over");
        let live = Live(vec![2, 3], 2600);
        assert_eq!(next_step(&s, &live, 10_000, &S), Some(Step::Begin));
        // Within the cooldown of the last failover: wait.
        s.last_failover_ms = 8_000;
        assert_eq!(next_step(&s, &live, 10_000, &S), None);
        assert_eq!(next_step(&s, &live, 13_000, &S), Some(Step::Begin));
    }

    #[test]
    fn a_primary_that_lost_the_raft_leadership_is_deposed_after_its_lease() {
        struct Replaced(u64);
        impl Alive for Replaced {
            fn healthy(&self, id: NodeId) -> bool {
                id != NodeId(1)
            }
            fn silent_ms(&self, id: NodeId) -> u64 {
                if id == NodeId(1) {
                    self.0
                } else {
                    0
                }
            }
            fn replaced_leader(&self, id: NodeId) -> bool {
                id == NodeId(1)
            }
        }
        // Still `healthy` in the state (the new leader's grace period).
        let s = cluster();
        assert_eq!(next_step(&s, &Replaced(1500), 10_000, &S), None, "lease");
        assert_eq!(
            next_step(&s, &Replaced(2000), 10_000, &S),
            Some(Step::Begin)
        );
    }

    #[test]
    fn the_leader_waits_for_reports_then_promotes_the_best() {
        let mut s = cluster();
        let e = begin(&mut s, None, false);
        let live = Live(vec![2, 3], 5000);
        // Positions from before the failover do not count.
        beat(&mut s, 2, 9_900, e - 1, [5, 5]);
        assert_eq!(next_step(&s, &live, 10_100, &S), None);
        beat(&mut s, 2, 10_200, e, [5, 7]);
        assert_eq!(
            next_step(&s, &live, 10_300, &S),
            None,
            "node 3 not heard yet"
        );
        beat(&mut s, 3, 10_300, e, [5, 7]);
        match next_step(&s, &live, 10_400, &S) {
            Some(Step::Promote { id, start, .. }) => {
                assert_eq!(id, NodeId(2), "a writer wins the tie");
                assert_eq!(start, vec![WalSeq(6), WalSeq(8)]);
            }
            other => panic!("{other:?}"),
        }
        // Node 3 ahead on shard 1: it is chosen, no catch-up needed.
        beat(&mut s, 3, 10_500, e, [5, 9]);
        assert!(matches!(
            next_step(&s, &live, 10_600, &S),
            Some(Step::Promote { id: NodeId(3), .. })
        ));
        // Readers not promotable: node 2 must copy shard 1 from node 3.
        let no_readers = FailoverSettings {
            promote_readers: false,
            ..S
        };
        match next_step(&s, &live, 10_600, &no_readers) {
            Some(Step::CatchUp(p)) => {
                assert_eq!(p.target, NodeId(2));
                assert_eq!(p.sources, vec![None, Some(NodeId(3))]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_healthy_candidate_is_waited_for_until_it_reports_or_turns_unhealthy() {
        let mut s = cluster();
        let e = begin(&mut s, None, false);
        // Node 3 is healthy but has not reported (its stream still ending).
        let live = Live(vec![2, 3], 5000);
        beat(&mut s, 2, 10_100, e, [4, 4]);
        assert_eq!(next_step(&s, &live, 10_500, &S), None);
        assert_eq!(next_step(&s, &live, 60_000, &S), None, "no timeout");
        // Node 3 went silent: no longer healthy, no longer waited for.
        let live = Live(vec![2], 5000);
        assert!(matches!(
            next_step(&s, &live, 60_000, &S),
            Some(Step::Promote { id: NodeId(2), .. })
        ));
    }

    #[test]
    fn a_planned_hand_over_catches_up_with_the_old_primary_first() {
        let mut s = cluster();
        let e = begin(&mut s, Some(3), true);
        let live = Live(vec![1, 2, 3], 0);
        beat(&mut s, 2, 10_100, e, [8, 8]);
        beat(&mut s, 3, 10_100, e, [8, 7]);
        assert_eq!(
            next_step(&s, &live, 10_200, &S),
            None,
            "old primary not fenced yet"
        );
        beat(&mut s, 1, 10_150, e, [9, 9]);
        let plan = match next_step(&s, &live, 10_200, &S) {
            Some(Step::CatchUp(p)) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(plan.target, NodeId(3));
        assert_eq!(plan.sources, vec![Some(NodeId(1)), Some(NodeId(1))]);
        s.apply(&Command::CatchUp {
            epoch: WriterEpoch(e),
            plan,
        })
        .unwrap();
        assert_eq!(next_step(&s, &live, 10_300, &S), None, "copying");
        beat(&mut s, 3, 10_400, e, [9, 9]);
        assert!(matches!(
            next_step(&s, &live, 10_500, &S),
            Some(Step::Promote { id: NodeId(3), .. })
        ));
    }
}
