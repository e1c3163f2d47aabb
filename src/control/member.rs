//! The control loop of a cluster member, on the control thread:
//!
//! * start: open the Raft storage, start openraft, serve the control port;
//!   a new node with no seeds initializes a cluster of itself, a new node
//!   with seeds joins through them (redirected to the leader); a node with
//!   Raft state rejoins from its own log;
//! * every `cluster.heartbeat_ms`: heartbeat the leader with this node's
//!   spec and per-shard positions;
//! * on the leader, every tick: record heartbeats, run [`plan`] and carry
//!   out its actions through Raft;
//! * answer the control port's requests ([`Handler`]) and the API's
//!   writes ([`ApiRequest`]);
//! * publish every change to the [`ClusterView`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};

use super::failover::{self, FailoverSettings, Step};
use super::machine::StateMachine;
use super::net::{CallError, Endpoint, Handler, Network, Peer, Tls};
use super::plan::{self, Action, HealthSettings, Liveness, Membership};
use super::rpc::{LeaderHint, Request, Response};
use super::state::{
    Command, Effect, HeartbeatRecord, NodeId, NodeSpec, NodeState, ShardPosition, WriterEpoch,
};
use super::store::LogStore;
use super::types::{BasicNode, Raft, TypeConfig};
use super::{Admin, ApiError, ApiRequest, ClusterView, ControlParts};
use crate::config::Config;
use crate::context::NodeShared;

/// How long a commit may take before its caller gives up on it.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a commit did not happen.
#[derive(Debug, thiserror::Error)]
enum CommitError {
    #[error("this node is no longer the Raft leader")]
    NotLeader,
    #[error("{0}")]
    Failed(String),
}

/// Wall-clock milliseconds (recorded heartbeat times).
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The cluster member. See the [module docs](self).
pub struct Member {
    id: NodeId,
    spec: NodeSpec,
    raft: Raft,
    ep: Arc<Endpoint>,
    node: Arc<NodeShared>,
    view: Arc<ArcSwap<ClusterView>>,
    health: HealthSettings,
    /// Monotonic origin of the leader's liveness clock.
    epoch: Instant,
    leader: Mutex<LeaderMemory>,
    membership_busy: Arc<AtomicBool>,
    log: LogStore<TypeConfig>,
    failover: FailoverSettings,
    lease: Duration,
    /// openraft's leader lease in ms (`election_timeout_max`).
    raft_lease_ms: u64,
    /// The last Raft leader other than this node that this node knew of.
    last_other_leader: Mutex<Option<NodeId>>,
}

#[derive(Default)]
struct LeaderMemory {
    /// Set while this node leads: its liveness memory.
    liveness: Option<Liveness>,
    /// Heartbeats not yet committed, by node.
    pending: BTreeMap<NodeId, HeartbeatRecord>,
    last_commit: Option<Instant>,
    /// The latest a primary's lease granted by this leader can run, by
    /// node (liveness ms): no one is deposed before.
    lease_until: BTreeMap<NodeId, u64>,
    /// Set while this leader commits a failover step: no lease is granted
    /// meanwhile (the step may depose the primary).
    deposing: bool,
    /// The Raft leader this node replaced (known when it became leader).
    replaced: Option<NodeId>,
}

/// The leader's liveness memory, with lease grants counted as "heard".
struct LeaderAlive<'a> {
    live: &'a Liveness,
    lease_until: &'a BTreeMap<NodeId, u64>,
    replaced: Option<NodeId>,
    now_ms: u64,
    health: HealthSettings,
    lease_ms: u64,
    /// openraft's leader lease (`election_timeout_max`): a voter grants no
    /// vote until it has not heard the old leader for this long.
    raft_lease_ms: u64,
}

impl failover::Alive for LeaderAlive<'_> {
    fn healthy(&self, id: NodeId) -> bool {
        self.health
            .state_after(self.live.silent_ms(id, self.now_ms))
            == NodeState::Healthy
    }

    fn replaced_leader(&self, id: NodeId) -> bool {
        self.replaced == Some(id) && !self.live.heard_since_start(id)
    }

    fn silent_ms(&self, id: NodeId) -> u64 {
        let mut silent = self.live.silent_ms(id, self.now_ms);
        if !self.live.heard_since_start(id) {
            // This leader was elected by a quorum of voters that had not
            // heard the old leader for `raft_lease_ms`; one of them was in
            // the quorum that last confirmed any lease the old leader
            // granted. So that lease was granted at least this long before
            // this leadership began.
            silent += self.raft_lease_ms;
        }
        // A lease granted later than the last heartbeat heard counts as
        // heard then (a lease runs at most `lease_ms` from its grant).
        match self.lease_until.get(&id) {
            Some(until) => silent.min((self.now_ms + self.lease_ms).saturating_sub(*until)),
            None => silent,
        }
    }
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member").field("id", &self.id).finish()
    }
}

/// `addr` as peers can reach it: a listen address on all interfaces
/// (`0.0.0.0`, `::`) takes the IP of the advertised control address.
fn reachable(addr: &str, config: &Config) -> String {
    let (Ok(mut a), Ok(ctrl)) = (
        addr.parse::<std::net::SocketAddr>(),
        config
            .advertised_control_addr()
            .parse::<std::net::SocketAddr>(),
    ) else {
        return addr.to_string();
    };
    if a.ip().is_unspecified() {
        a.set_ip(ctrl.ip());
    }
    a.to_string()
}

/// This node's spec, from its configuration.
pub fn own_spec(config: &Config, shard_count: usize) -> NodeSpec {
    NodeSpec {
        id: NodeId(config.raft_id()),
        role: config.cluster.role,
        voter: config.cluster.voter,
        http_addr: reachable(&config.http.addr, config),
        control_addr: config.advertised_control_addr().to_string(),
        replication_addr: if config.serves_replication() {
            reachable(config.replication_listen_addr(), config)
        } else {
            String::new()
        },
        shard_count: shard_count as u32,
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// openraft's configuration from ours.
fn raft_config(config: &Config) -> anyhow::Result<openraft::Config> {
    let et = config.cluster.election_timeout_ms;
    let c = openraft::Config {
        cluster_name: "tidemark".into(),
        heartbeat_interval: (et / 5).max(10),
        election_timeout_min: et,
        election_timeout_max: et * 2,
        install_snapshot_timeout: 5_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(1_000),
        max_in_snapshot_log_to_keep: 100,
        ..Default::default()
    };
    Ok(c.validate()?)
}

/// Runs the member until the node shuts down. Errors are fatal to the node.
pub async fn run(config: Config, parts: ControlParts, node: Arc<NodeShared>) -> anyhow::Result<()> {
    let ControlParts {
        view,
        changed,
        mut requests,
        listener,
    } = parts;
    let id = NodeId(config.raft_id());
    let spec = own_spec(&config, node.shard_count);
    let dir = config.node.data_dir.join("raft");
    let tls = node.tls.as_ref().map(Tls::new);
    let source_ip = config
        .cluster
        .control_addr
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified());
    let ep = Arc::new(Endpoint {
        node_id: id,
        source_ip,
        secret: config.cluster.secret.as_bytes().to_vec(),
        tls,
    });
    let metrics = node.metrics.clone();
    let publish_view = view.clone();
    let publish_node = node.clone();
    let publish: super::machine::Publish = Arc::new(move |state, effects: &[Effect]| {
        for e in effects {
            tracing::info!(effect = ?e, "cluster state changed");
        }
        publish_view.rcu(|v| {
            let mut v = ClusterView::clone(v);
            v.state = state.clone();
            v
        });
        changed.notify(usize::MAX);
        if !effects.is_empty() {
            publish_node.report.notify(usize::MAX);
        }
    });
    let log = LogStore::<TypeConfig>::open(&dir.join("log"))?;
    let log_handle = log.clone();
    let sm = StateMachine::open(&dir, publish)?;
    let observe_metrics = metrics.clone();
    let network = Network {
        ep: ep.clone(),
        observe: Arc::new(move |rpc, d, ok| observe_metrics.control.observe_rpc(rpc, d, ok)),
    };
    let raft = Raft::new(id, Arc::new(raft_config(&config)?), network, log, sm).await?;
    let member = Arc::new(Member {
        id,
        spec,
        raft: raft.clone(),
        ep: ep.clone(),
        node: node.clone(),
        view,
        health: HealthSettings {
            unhealthy_after_ms: config.cluster.unhealthy_after_ms,
            dead_after_ms: config.cluster.dead_after_ms,
        },
        epoch: Instant::now(),
        leader: Mutex::new(LeaderMemory::default()),
        membership_busy: Arc::new(AtomicBool::new(false)),
        log: log_handle,
        failover: FailoverSettings {
            lease_ms: config.cluster.primary_lease_ms,
            cooldown_ms: config.cluster.failover_cooldown_ms,
            promote_readers: config.cluster.promote_readers,
        },
        lease: Duration::from_millis(config.cluster.primary_lease_ms),
        raft_lease_ms: config.cluster.election_timeout_ms * 2,
        last_other_leader: Mutex::new(None),
    });
    let listener = tokio::net::TcpListener::from_std(listener.expect("bound in a cluster"))?;
    tracing::info!(node_id = %id, addr = %config.cluster.control_addr, tls = ep.tls.is_some(), "control port listening");
    let server = tokio::spawn(super::net::serve(listener, ep.clone(), member.clone()));

    if !raft.is_initialized().await? {
        if config.cluster.seeds.is_empty() {
            tracing::info!(node_id = %id, "no Raft state and no seeds: starting a new cluster");
            let mut nodes = BTreeMap::new();
            nodes.insert(
                id,
                BasicNode {
                    addr: config.advertised_control_addr().to_string(),
                },
            );
            raft.initialize(nodes).await?;
        } else if let Err(e) = member.join(&config.cluster.seeds).await {
            server.abort();
            raft.shutdown().await.ok();
            return Err(e);
        }
    } else {
        tracing::info!(node_id = %id, "rejoining the cluster from this node's Raft log");
    }

    let heartbeats = tokio::spawn(member.clone().heartbeat_loop(
        Duration::from_millis(config.cluster.heartbeat_ms),
        config.cluster.seeds.clone(),
    ));
    // Operator changes, each in its own task (a commit may take a while).
    let api = {
        let member = member.clone();
        tokio::spawn(async move {
            while let Some(ApiRequest { admin, reply }) = requests.recv().await {
                let m = member.clone();
                tokio::spawn(async move {
                    let _ = reply.send(m.admin_anywhere(admin).await);
                });
            }
        })
    };
    // Raft status reaches the view as it changes; leader duties every tick.
    let tick = Duration::from_millis(100);
    let beat_every = Duration::from_millis(config.cluster.heartbeat_ms);
    let mut status = raft.metrics();
    let mut next_tick = tokio::time::Instant::now();
    let mut fatal_error = None;
    while !node.is_shutting_down() {
        tokio::select! {
            _ = tokio::time::sleep_until(next_tick) => {
                next_tick = tokio::time::Instant::now() + tick;
                member.publish_raft_status();
                if let Err(e) = member.leader_tick(beat_every).await {
                    tracing::warn!(error = %e, "leader duties failed this tick");
                }
            }
            changed = status.changed() => {
                if changed.is_err() {
                    break;
                }
                member.publish_raft_status();
            }
        }
        if let Err(fatal) = &raft.metrics().borrow().running_state {
            fatal_error = Some(format!("Raft stopped: {fatal}"));
            break;
        }
    }
    api.abort();
    heartbeats.abort();
    server.abort();
    raft.shutdown().await.ok();
    // Everything the log store has queued reaches the disk before exit.
    member.log.clone().close().await?;
    match fatal_error {
        Some(e) => Err(anyhow::anyhow!(e)),
        None if !node.is_shutting_down() => Err(anyhow::anyhow!("Raft stopped unexpectedly")),
        None => Ok(()),
    }
}

impl Member {
    fn leader_hint(&self) -> LeaderHint {
        let rx = self.raft.metrics();
        let m = rx.borrow();
        let addr = m.current_leader.and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| n.addr.clone())
        });
        LeaderHint {
            id: m.current_leader,
            addr,
        }
    }

    fn is_leader(&self) -> bool {
        let rx = self.raft.metrics();
        let m = rx.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Copies Raft's metrics into the view and the metric families.
    fn publish_raft_status(&self) {
        let m = self.raft.metrics().borrow().clone();
        if let Some(l) = m.current_leader.filter(|l| *l != self.id) {
            *self.last_other_leader.lock().expect("leader lock") = Some(l);
        }
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        let committed = self.log.committed_index();
        let applied = m.last_applied.map_or(0, |l| l.index);
        let cur = self.view.load();
        let voters: Vec<NodeId> = voters.into_iter().collect();
        if cur.leader_id != m.current_leader
            || cur.term != m.current_term
            || cur.commit_index != committed
            || cur.applied_index != applied
            || cur.voters != voters
            || cur.learners != learners
        {
            self.view.rcu(|v| {
                let mut v = ClusterView::clone(v);
                v.leader_id = m.current_leader;
                v.term = m.current_term;
                v.commit_index = committed;
                v.applied_index = applied;
                v.voters.clone_from(&voters);
                v.learners.clone_from(&learners);
                v
            });
        }
        let view = self.view.load();
        self.node.metrics.control.set_status(
            m.current_term,
            m.current_leader.map_or(0, |l| l.0),
            committed,
            applied,
            m.state == ServerState::Leader,
            &view.state,
        );
    }

    /// Commits `cmd` on this node (the leader).
    /// Commits `cmd` through Raft (on the leader), waiting at most
    /// [`COMMIT_TIMEOUT`]: a leader that lost its majority cannot commit,
    /// and must not hang its caller (or the node's shutdown).
    async fn commit(&self, cmd: Command) -> Result<super::state::Applied, CommitError> {
        let write = tokio::time::timeout(COMMIT_TIMEOUT, self.raft.client_write(cmd));
        let stopping = async {
            while !self.node.is_shutting_down() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let res = tokio::select! {
            r = write => r,
            _ = stopping => return Err(CommitError::Failed("the node is shutting down".into())),
        };
        match res {
            Ok(Ok(r)) => Ok(r.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(CommitError::NotLeader)
            }
            Ok(Err(e)) => Err(CommitError::Failed(e.to_string())),
            Err(_) => Err(CommitError::Failed(format!(
                "not committed within {} ms (no Raft majority?)",
                COMMIT_TIMEOUT.as_millis()
            ))),
        }
    }

    async fn leader_tick(&self, beat_every: Duration) -> Result<(), String> {
        if !self.is_leader() {
            self.leader.lock().expect("leader lock").liveness = None;
            return Ok(());
        }
        let now = self.now_ms();
        let beats = {
            let mut l = self.leader.lock().expect("leader lock");
            if l.liveness.is_none() {
                l.liveness = Some(Liveness::new(now));
                l.replaced = *self.last_other_leader.lock().expect("leader lock");
                tracing::info!(replaced = ?l.replaced.map(|r| r.0), "leading the cluster");
            }
            let live = l.liveness.as_mut().expect("set above");
            live.heard(self.spec.clone(), now);
            // During a failover, reports are committed at every tick.
            let due = l.last_commit.is_none_or(|t| t.elapsed() >= beat_every)
                || self.view.load().state.failover.is_some();
            let own = HeartbeatRecord {
                id: self.id,
                at_ms: wall_ms(),
                shards: self.positions(),
                fenced_epoch: self.node.fenced_epoch(),
            };
            l.pending.insert(self.id, own);
            if due {
                l.last_commit = Some(Instant::now());
                std::mem::take(&mut l.pending)
            } else {
                BTreeMap::new()
            }
        };
        if !beats.is_empty() {
            self.commit(Command::Heartbeats(beats.into_values().collect()))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        let actions = {
            let view = self.view.load();
            let l = self.leader.lock().expect("leader lock");
            let live = l.liveness.as_ref().expect("set above");
            let membership = Membership {
                voters: view.voters.iter().copied().collect(),
                learners: view.learners.iter().copied().collect(),
            };
            plan::plan(&view.state, &membership, live, self.id, now, self.health)
        };
        for a in actions {
            if self.node.is_shutting_down() {
                break;
            }
            self.act(a).await?;
        }
        self.renew_own_lease().await;
        self.failover_tick(now).await
    }

    /// Whether a quorum still follows this leader (one heartbeat round),
    /// within half a lease.
    async fn confirm_leadership(&self) -> bool {
        matches!(
            tokio::time::timeout(self.lease / 2, self.raft.ensure_linearizable()).await,
            Ok(Ok(_))
        )
    }

    /// The leader that is also the primary renews its own lease, once a
    /// quorum confirms it still leads.
    async fn renew_own_lease(&self) {
        let view = self.view.load_full();
        let sent = Instant::now();
        let mut confirmed = false;
        if view.is_primary() && view.state.failover.is_none() {
            let epoch = view.state.writer_epoch;
            confirmed = self.confirm_lease(self.id, epoch).await;
            if confirmed {
                self.node.lease.grant(epoch, sent, self.lease);
            }
        }
        let epoch = view.state.compactor_epoch;
        if view.state.compactor == Some(self.id)
            && self.confirm_compactor(self.id, epoch, confirmed).await
        {
            self.node
                .compactor_lease
                .grant(WriterEpoch(epoch), sent, self.lease);
        }
    }

    /// Whether node `id` may hold the compactor lease of `epoch` now: a
    /// quorum still follows this leader (confirmed just now already when
    /// `confirmed`), and `id` still holds the lease of `epoch`.
    async fn confirm_compactor(&self, id: NodeId, epoch: u64, confirmed: bool) -> bool {
        if !confirmed && !self.confirm_leadership().await {
            return false;
        }
        let v = self.view.load();
        v.state.compactor == Some(id) && v.state.compactor_epoch == epoch
    }

    /// Whether node `id` may hold the primary's lease of `epoch` now: no
    /// failover step is being committed, a quorum still follows this
    /// leader, and `id` is still the primary of `epoch`. The lease's end is
    /// counted before leadership is confirmed, so no failover step begins
    /// until it has run out.
    async fn confirm_lease(&self, id: NodeId, epoch: WriterEpoch) -> bool {
        {
            let mut l = self.leader.lock().expect("leader lock");
            if l.deposing {
                return false;
            }
            let until = self.now_ms() + self.failover.lease_ms;
            let e = l.lease_until.entry(id).or_default();
            *e = (*e).max(until);
        }
        if !self.confirm_leadership().await {
            return false;
        }
        let v = self.view.load();
        v.state.primary == Some(id) && v.state.failover.is_none() && v.state.writer_epoch == epoch
    }

    /// Plans and commits the next failover step, if any.
    async fn failover_tick(&self, now: u64) -> Result<(), String> {
        let view = self.view.load_full();
        let step = {
            let l = self.leader.lock().expect("leader lock");
            let Some(live) = l.liveness.as_ref() else {
                return Ok(());
            };
            let alive = LeaderAlive {
                live,
                lease_until: &l.lease_until,
                replaced: l.replaced,
                raft_lease_ms: self.raft_lease_ms,
                now_ms: now,
                health: self.health,
                lease_ms: self.failover.lease_ms,
            };
            failover::next_step(&view.state, &alive, wall_ms(), &self.failover)
        };
        let Some(step) = step else {
            return Ok(());
        };
        let m = &self.node.metrics.control;
        let cmd = match &step {
            Step::Begin => {
                let from = view.state.primary;
                tracing::warn!(primary = ?from.map(|p| p.0), epoch = %view.state.writer_epoch, "the primary writer is dead and its lease is over: failover begins");
                m.failovers_started.inc();
                Command::BeginFailover {
                    target: None,
                    planned: false,
                    at_ms: wall_ms(),
                }
            }
            Step::CatchUp(plan) => {
                let f = view
                    .state
                    .failover
                    .as_ref()
                    .expect("a step needs a failover");
                tracing::info!(target = %plan.target, sources = ?plan.sources, goal = ?plan.goal, epoch = %f.epoch, "failover: the chosen node first copies the entries others hold beyond it");
                Command::CatchUp {
                    epoch: f.epoch,
                    plan: plan.clone(),
                }
            }
            Step::Promote {
                id,
                start,
                choice,
                candidates,
            } => {
                let f = view
                    .state
                    .failover
                    .as_ref()
                    .expect("a step needs a failover");
                let positions: Vec<String> = candidates
                    .iter()
                    .map(|c| {
                        format!(
                            "{}:{:?}",
                            c.id,
                            c.positions.iter().map(|p| p.0).collect::<Vec<_>>()
                        )
                    })
                    .collect();
                let took_ms = wall_ms().saturating_sub(f.started_ms);
                tracing::warn!(
                    node_id = %id,
                    from = ?f.from.map(|p| p.0),
                    epoch = %f.epoch.next(),
                    start = ?start.iter().map(|s| s.0).collect::<Vec<_>>(),
                    candidates = %positions.join(" "),
                    why = %choice.reason,
                    planned = f.planned,
                    took_ms,
                    "failover: promoting the candidate holding the most"
                );
                Command::Promote {
                    epoch: f.epoch,
                    id: *id,
                    start: start.clone(),
                    at_ms: wall_ms(),
                }
            }
        };
        self.leader.lock().expect("leader lock").deposing = matches!(step, Step::Begin);
        let res = self.commit(cmd).await;
        self.leader.lock().expect("leader lock").deposing = false;
        match res.map_err(|e| e.to_string())? {
            Ok(_) => {
                if let (Step::Promote { .. }, Some(f)) = (&step, &view.state.failover) {
                    m.failovers_completed.inc();
                    m.failover_seconds
                        .observe(wall_ms().saturating_sub(f.started_ms) as f64 / 1000.0);
                }
                Ok(())
            }
            Err(rejected) => {
                m.failovers_aborted.inc();
                Err(format!("failover step refused: {rejected}"))
            }
        }
    }

    async fn act(&self, a: Action) -> Result<(), String> {
        let cmd = match a {
            Action::AddNode(spec) => Command::AddNode(spec),
            Action::SetState { id, state } => {
                tracing::info!(node_id = %id, state = state.as_str(), "node state");
                Command::SetNodeState { id, state }
            }
            Action::UpdateSpec(spec) => Command::UpdateNode(spec),
            Action::AssignPrimary { id } => {
                tracing::info!(node_id = %id, "assigning the primary writer");
                Command::AssignPrimary { id: Some(id) }
            }
            Action::AssignCompactor { id } => {
                tracing::info!(node_id = %id, "handing the compactor lease over");
                Command::AssignCompactor { id: Some(id) }
            }
            Action::AddLearner { .. }
            | Action::PromoteVoter { .. }
            | Action::RemoveMember { .. } => {
                self.change_membership(a);
                return Ok(());
            }
        };
        match self.commit(cmd).await.map_err(|e| e.to_string())? {
            Ok(_) => Ok(()),
            Err(rejected) => Err(rejected.to_string()),
        }
    }

    /// Starts one membership change in the background, unless one runs.
    fn change_membership(&self, a: Action) {
        if self.membership_busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let raft = self.raft.clone();
        let busy = self.membership_busy.clone();
        tokio::spawn(async move {
            let res = match &a {
                Action::AddLearner { id, control_addr } => raft
                    .add_learner(
                        *id,
                        BasicNode {
                            addr: control_addr.clone(),
                        },
                        false,
                    )
                    .await
                    .map(|_| ()),
                Action::PromoteVoter { id } => raft
                    .change_membership(ChangeMembers::AddVoterIds([*id].into()), false)
                    .await
                    .map(|_| ()),
                Action::RemoveMember { id } => {
                    // A voter leaves with RemoveVoters (retain = false drops
                    // it entirely); a learner with RemoveNodes.
                    let is_voter = raft
                        .metrics()
                        .borrow()
                        .membership_config
                        .membership()
                        .voter_ids()
                        .any(|v| v == *id);
                    let change = if is_voter {
                        ChangeMembers::RemoveVoters([*id].into())
                    } else {
                        ChangeMembers::RemoveNodes([*id].into())
                    };
                    raft.change_membership(change, false).await.map(|_| ())
                }
                _ => Ok(()),
            };
            match res {
                Ok(()) => tracing::info!(action = ?a, "membership changed"),
                Err(e) => {
                    tracing::warn!(action = ?a, error = %e, "membership change failed; will retry")
                }
            }
            busy.store(false, Ordering::Release);
        });
    }

    fn positions(&self) -> Vec<ShardPosition> {
        self.node.shard_positions()
    }

    /// Asks the seeds (and the leaders they name) to add this node, until
    /// one accepts. A refusal (wrong secret, id taken, shard count) is fatal.
    async fn join(&self, seeds: &[String]) -> anyhow::Result<()> {
        let ttl = Duration::from_secs(5);
        let mut backoff = Duration::from_millis(200);
        loop {
            let mut queue: Vec<String> = seeds.to_vec();
            let mut tried = BTreeSet::new();
            // Handshake refusals (secret, TLS) by address: fatal only when
            // every address asked refused this node.
            let mut refused: Vec<String> = Vec::new();
            while let Some(addr) = queue.pop() {
                if !tried.insert(addr.clone()) || self.node.is_shutting_down() {
                    continue;
                }
                let mut peer = Peer::new(addr.clone(), self.ep.clone());
                match peer.call(&Request::Join(self.spec.clone()), ttl).await {
                    Ok(Response::Joined { leader }) => {
                        tracing::info!(node_id = %self.id, %leader, via = %addr, "joined the cluster");
                        return Ok(());
                    }
                    Ok(Response::NotLeader(LeaderHint {
                        addr: Some(leader), ..
                    })) => queue.push(leader),
                    // The leader's state machine said no: final.
                    Ok(Response::Refused(reason)) => {
                        anyhow::bail!("the cluster refused this node (asked {addr}): {reason}")
                    }
                    Err(e @ CallError::Refused { .. }) => {
                        tracing::warn!(seed = %addr, error = %e, "refused");
                        refused.push(e.to_string());
                    }
                    Ok(other) => {
                        tracing::info!(seed = %addr, answer = ?other, "join not accepted yet; retrying")
                    }
                    Err(e) => tracing::info!(seed = %addr, error = %e, "seed not reachable"),
                }
            }
            if !refused.is_empty() && refused.len() == tried.len() {
                anyhow::bail!("cannot join the cluster: {}", refused.join("; "));
            }
            if self.node.is_shutting_down() {
                anyhow::bail!("shut down before joining the cluster");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Heartbeats the leader every `every` (the leader records its own).
    async fn heartbeat_loop(self: Arc<Self>, every: Duration, seeds: Vec<String>) {
        let mut peer: Option<Peer> = None;
        let mut warned_removed = false;
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Every `every`, and at once when this node's fencing or role
            // changes (a failover waits for the reports).
            let report = self.node.report.listen();
            tokio::select! {
                _ = ticker.tick() => {}
                _ = report => tokio::time::sleep(Duration::from_millis(5)).await,
            }
            if self.is_leader() {
                continue;
            }
            let hint = self.leader_hint();
            let Some(addr) = hint.addr.or_else(|| seeds.first().cloned()) else {
                continue;
            };
            if peer.as_ref().is_none_or(|p| p.addr != addr) {
                peer = Some(Peer::new(addr, self.ep.clone()));
            }
            let p = peer.as_mut().expect("set above");
            let sent = Instant::now();
            let req = Request::Heartbeat {
                spec: self.spec.clone(),
                shards: self.positions(),
                fenced_epoch: self.node.fenced_epoch(),
            };
            match p.call(&req, every * 2).await {
                Ok(Response::HeartbeatOk) => warned_removed = false,
                Ok(Response::HeartbeatLease { epoch }) => {
                    warned_removed = false;
                    self.node.lease.grant(epoch, sent, self.lease);
                }
                Ok(Response::HeartbeatLeases { writer, compactor }) => {
                    warned_removed = false;
                    if let Some(epoch) = writer {
                        self.node.lease.grant(epoch, sent, self.lease);
                    }
                    self.node
                        .compactor_lease
                        .grant(WriterEpoch(compactor), sent, self.lease);
                }
                Ok(Response::NotAMember) => {
                    if !warned_removed {
                        tracing::warn!(node_id = %self.id, "the leader says this node is not a member of the cluster (removed?)");
                        warned_removed = true;
                    }
                }
                Ok(Response::NotLeader(_)) => {}
                Ok(other) => {
                    self.node.metrics.control.heartbeat_failures.inc();
                    tracing::debug!(answer = ?other, "unexpected heartbeat answer");
                }
                Err(e) => {
                    self.node.metrics.control.heartbeat_failures.inc();
                    tracing::debug!(error = %e, "heartbeat failed");
                }
            }
        }
    }

    async fn handle_join(&self, spec: NodeSpec) -> Response {
        if !self.is_leader() {
            return Response::NotLeader(self.leader_hint());
        }
        if spec.id == self.id && spec.control_addr != self.spec.control_addr {
            return Response::Refused(format!(
                "node id {} is already held by the node at {}",
                spec.id, self.spec.control_addr
            ));
        }
        match self.commit(Command::AddNode(spec.clone())).await {
            Ok(Ok(_)) => {
                let now = self.now_ms();
                if let Some(l) = self.leader.lock().expect("leader lock").liveness.as_mut() {
                    l.heard(spec, now);
                }
                Response::Joined { leader: self.id }
            }
            Ok(Err(rejected)) => Response::Refused(rejected.to_string()),
            Err(CommitError::NotLeader) => Response::NotLeader(self.leader_hint()),
            Err(e) => Response::Failed(e.to_string()),
        }
    }

    async fn handle_heartbeat(
        &self,
        spec: NodeSpec,
        shards: Vec<ShardPosition>,
        fenced_epoch: WriterEpoch,
    ) -> Response {
        if !self.is_leader() {
            return Response::NotLeader(self.leader_hint());
        }
        let view = self.view.load_full();
        let member = view.state.nodes.get(&spec.id);
        if member.is_none() && !view.voters.contains(&spec.id) && !view.learners.contains(&spec.id)
        {
            return Response::NotAMember;
        }
        if member.is_some_and(|n| n.spec.control_addr != spec.control_addr) {
            return Response::NotAMember;
        }
        let now = self.now_ms();
        let is_primary = view.state.primary == Some(spec.id) && view.state.failover.is_none();
        {
            let mut l = self.leader.lock().expect("leader lock");
            if let Some(live) = l.liveness.as_mut() {
                live.heard(spec.clone(), now);
            }
            l.pending.insert(
                spec.id,
                HeartbeatRecord {
                    id: spec.id,
                    at_ms: wall_ms(),
                    shards,
                    fenced_epoch,
                },
            );
        }
        let epoch = view.state.writer_epoch;
        let writer = (is_primary && self.confirm_lease(spec.id, epoch).await).then_some(epoch);
        let compactor = view.state.compactor == Some(spec.id)
            && self
                .confirm_compactor(spec.id, view.state.compactor_epoch, writer.is_some())
                .await;
        match (writer, compactor) {
            (None, false) => Response::HeartbeatOk,
            (Some(epoch), false) => Response::HeartbeatLease { epoch },
            (writer, true) => Response::HeartbeatLeases {
                writer,
                compactor: view.state.compactor_epoch,
            },
        }
    }

    /// Carries out an operator's change on the leader.
    async fn admin_here(&self, admin: Admin) -> Response {
        if !self.is_leader() {
            return Response::NotLeader(self.leader_hint());
        }
        let cmd = match admin {
            Admin::RemoveNode(id) if id == self.id => {
                return Response::Refused(format!(
                    "node {id} is the Raft leader: stop it, and remove it once another node leads"
                ))
            }
            Admin::RemoveNode(id) => Command::RemoveNode { id },
            Admin::AssignCompactor(id) => Command::AssignCompactor { id },
            Admin::SetRetention { database, seconds } => {
                Command::SetRetention { database, seconds }
            }
            Admin::Failover { target } => {
                let state = &self.view.load().state;
                if let Some(t) = target.filter(|t| Some(*t) == state.primary) {
                    return Response::Refused(format!("node {t} is the primary writer already"));
                }
                tracing::warn!(target = ?target.map(|t| t.0), primary = ?state.primary.map(|p| p.0), "an operator asked for a hand-over of the primary writer");
                self.node.metrics.control.failovers_started.inc();
                Command::BeginFailover {
                    target,
                    planned: true,
                    at_ms: wall_ms(),
                }
            }
        };
        match self.commit(cmd).await {
            Ok(Ok(_)) => Response::Done,
            Ok(Err(rejected)) => Response::Refused(rejected.to_string()),
            Err(CommitError::NotLeader) => Response::NotLeader(self.leader_hint()),
            Err(e) => Response::Failed(e.to_string()),
        }
    }

    /// Carries out an operator's change, here or through the leader.
    async fn admin_anywhere(&self, admin: Admin) -> Result<(), ApiError> {
        let resp = if self.is_leader() {
            self.admin_here(admin).await
        } else {
            let Some(addr) = self.leader_hint().addr else {
                return Err(ApiError::Unavailable(
                    "no Raft leader is known now; retry".into(),
                ));
            };
            let mut peer = Peer::new(addr, self.ep.clone());
            match peer.call(&Request::Admin(admin), super::API_TIMEOUT).await {
                Ok(r) => r,
                Err(e) => return Err(ApiError::Unavailable(e.to_string())),
            }
        };
        match resp {
            Response::Done => Ok(()),
            Response::Refused(r) if r.starts_with("no node") => Err(ApiError::NotFound(r)),
            Response::Refused(r) => Err(ApiError::Conflict(r)),
            Response::NotLeader(_) => Err(ApiError::Unavailable(
                "the Raft leader changed; retry".into(),
            )),
            Response::Failed(r) => Err(ApiError::Unavailable(r)),
            other => Err(ApiError::Unavailable(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }
}

impl Handler for Member {
    async fn handle(&self, peer: NodeId, req: Request) -> Response {
        // A node speaks for itself only: the id it proved in the handshake.
        if let Request::Join(spec) | Request::Heartbeat { spec, .. } = &req {
            if spec.id != peer {
                tracing::warn!(%peer, claimed = %spec.id, "a peer spoke for another node id");
                return Response::Refused(format!(
                    "this connection authenticated as node {peer}, not node {}",
                    spec.id
                ));
            }
        }
        match req {
            Request::Append(rpc) => Response::Append(self.raft.append_entries(rpc).await),
            Request::Vote(rpc) => Response::Vote(self.raft.vote(rpc).await),
            Request::Snapshot(rpc) => Response::Snapshot(self.raft.install_snapshot(rpc).await),
            Request::Join(spec) => self.handle_join(spec).await,
            Request::Heartbeat {
                spec,
                shards,
                fenced_epoch,
            } => self.handle_heartbeat(spec, shards, fenced_epoch).await,
            Request::Admin(admin) => self.admin_here(admin).await,
        }
    }
}
