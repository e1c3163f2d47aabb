//! `GET /api/v1/cluster` (the published view as JSON) and
//! `DELETE /api/v1/cluster/nodes/{id}` (through the control core).

use serde_json::{json, Value};

use super::state::NodeId;
use super::{Admin, ClusterView, ControlHandle, Mode};
use crate::http::Response;

fn role_name(r: crate::config::Role) -> &'static str {
    match r {
        crate::config::Role::Standalone => "standalone",
        crate::config::Role::Writer => "writer",
        crate::config::Role::Reader => "reader",
        crate::config::Role::Compactor => "compactor",
    }
}

/// The view as `/api/v1/cluster` shows it.
pub fn cluster_json(v: &ClusterView) -> Value {
    match v.mode {
        Mode::Standalone => return json!({"mode": "standalone"}),
        Mode::Static => return json!({"mode": "static", "role": role_name(v.role)}),
        Mode::Cluster => {}
    }
    let id = |n: Option<NodeId>| n.map(|n| n.0);
    let nodes: Vec<Value> = v
        .state
        .nodes
        .values()
        .map(|n| {
            let raft = if v.voters.contains(&n.spec.id) {
                "voter"
            } else if v.learners.contains(&n.spec.id) {
                "learner"
            } else {
                "none"
            };
            json!({
                "id": n.spec.id.0,
                "role": role_name(n.spec.role),
                "state": n.state.as_str(),
                "voter": n.spec.voter,
                "raft_member": raft,
                "http_addr": n.spec.http_addr,
                "control_addr": n.spec.control_addr,
                "replication_addr": n.spec.replication_addr,
                "version": n.spec.version,
                "last_heartbeat_ms": n.last_heartbeat_ms,
                "fenced_epoch": n.fenced_epoch.0,
                "shards": n.shards.iter().enumerate().map(|(i, s)| json!({
                    "shard": i,
                    "durable_seq": s.durable_seq.0,
                    "applied_seq": s.applied_seq.0,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "mode": "cluster",
        "node_id": id(v.node_id),
        "role": role_name(v.role),
        "leader_id": id(v.leader_id),
        "term": v.term,
        "commit_index": v.commit_index,
        "applied_index": v.applied_index,
        "primary_writer": id(v.state.primary),
        "writer_epoch": v.state.writer_epoch.0,
        "primary_start": v.state.primary_start.iter().map(|s| s.0).collect::<Vec<_>>(),
        "failover": v.state.failover.as_ref().map(|f| json!({
            "epoch": f.epoch.0,
            "from": id(f.from),
            "target": id(f.target),
            "planned": f.planned,
            "started_ms": f.started_ms,
            "catch_up": f.catch_up.as_ref().map(|c| json!({
                "target": c.target.0,
                "sources": c.sources.iter().map(|s| id(*s)).collect::<Vec<_>>(),
                "goal": c.goal.iter().map(|g| g.0).collect::<Vec<_>>(),
            })),
        })),
        "last_failover_ms": v.state.last_failover_ms,
        "compactor": id(v.state.compactor),
        "compactor_epoch": v.state.compactor_epoch,
        "nodes": nodes,
    })
}

/// `GET /api/v1/cluster`.
pub fn get(control: &ControlHandle) -> Response {
    Response::json(200, &cluster_json(&control.view()))
}

/// `DELETE /api/v1/cluster/nodes/{id}`.
pub async fn delete_node(control: &ControlHandle, id: &str) -> Response {
    if control.view().mode != Mode::Cluster {
        return Response::error(404, "this node is not in a cluster");
    }
    let Ok(id) = id.parse::<u64>() else {
        return Response::error(400, format!("node id {id:?} is not a number"));
    };
    match control.admin(Admin::RemoveNode(NodeId(id))).await {
        Ok(()) => Response::json(200, &json!({"removed": id})),
        Err(e) => Response::error(e.status(), e.to_string()),
    }
}

/// `PUT /api/v1/cluster/compactor` with `{"node_id": n}` (or `null`):
/// hands the compactor lease to node `n` (or to nobody).
pub async fn put_compactor(control: &ControlHandle, body: &[u8]) -> Response {
    if control.view().mode != Mode::Cluster {
        return Response::error(404, "this node is not in a cluster");
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        node_id: Option<u64>,
    }
    let b: Body = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            return Response::error(400, format!("expected {{\"node_id\": <id or null>}}: {e}"))
        }
    };
    match control
        .admin(Admin::AssignCompactor(b.node_id.map(NodeId)))
        .await
    {
        Ok(()) => Response::json(200, &json!({"compactor": b.node_id})),
        Err(e) => Response::error(e.status(), e.to_string()),
    }
}

/// `POST /api/v1/cluster/failover`, optionally with `{"target": id}`: a
/// planned hand-over of the primary role.
pub async fn post_failover(control: &ControlHandle, body: &[u8]) -> Response {
    if control.view().mode != Mode::Cluster {
        return Response::error(404, "this node is not in a cluster");
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        target: Option<u64>,
    }
    let b = if body.iter().all(u8::is_ascii_whitespace) {
        Body { target: None }
    } else {
        match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => {
                return Response::error(
                    400,
                    format!("expected an empty body or {{\"target\": <node id>}}: {e}"),
                )
            }
        }
    };
    let before = control.view().state.writer_epoch.0;
    match control
        .admin(Admin::Failover {
            target: b.target.map(NodeId),
        })
        .await
    {
        Ok(()) => Response::json(
            202,
            &json!({"failover": "started", "from_epoch": before, "target": b.target}),
        ),
        Err(e) => Response::error(e.status(), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;
    use crate::control::state::{ClusterState, Command, NodeSpec};
    use std::sync::Arc;

    #[test]
    fn standalone_and_cluster_shapes() {
        let mut v = ClusterView {
            mode: Mode::Standalone,
            node_id: None,
            role: Role::Standalone,
            leader_id: None,
            term: 0,
            commit_index: 0,
            applied_index: 0,
            voters: vec![],
            learners: vec![],
            state: Arc::new(ClusterState::default()),
        };
        assert_eq!(cluster_json(&v), json!({"mode": "standalone"}));
        let mut s = ClusterState::default();
        s.apply(&Command::AddNode(NodeSpec {
            id: NodeId(1),
            role: Role::Writer,
            voter: true,
            http_addr: "127.0.0.1:8001".into(),
            control_addr: "127.0.0.1:9001".into(),
            replication_addr: "127.0.0.1:9101".into(),
            shard_count: 1,
            version: "0.1.0".into(),
        }))
        .unwrap();
        s.apply(&Command::AssignPrimary {
            id: Some(NodeId(1)),
        })
        .unwrap();
        v.mode = Mode::Cluster;
        v.node_id = Some(NodeId(1));
        v.role = Role::Writer;
        v.leader_id = Some(NodeId(1));
        v.term = 2;
        v.voters = vec![NodeId(1)];
        v.state = Arc::new(s);
        let j = cluster_json(&v);
        assert_eq!(j["mode"], "cluster");
        assert_eq!(j["leader_id"], 1);
        assert_eq!(j["primary_writer"], 1);
        assert_eq!(j["writer_epoch"], 1);
        assert_eq!(j["compactor"], Value::Null);
        assert_eq!(j["nodes"][0]["state"], "healthy");
        assert_eq!(j["nodes"][0]["raft_member"], "voter");
        assert_eq!(j["nodes"][0]["shards"], json!([]));
    }
}
