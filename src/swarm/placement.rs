//! Where a new session goes: a ready, active node whose engine runs the session's runtime,
//! with room for its memory and a free SSH port, the node holding the fewest sessions first
//! (spread). Pure, so every refusal is unit-tested; the caller holds the placement lock from
//! the reading of the nodes to the service's creation.

use crate::config::PortRange;

/// The sum of a node's sessions' memory limits may reach this many times its memory: sessions
/// idle most of the time, and a limit is a ceiling, not a use.
pub const MEMORY_OVERCOMMIT: i64 = 2;

/// One node as placement sees it (from `docker node ls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    pub hostname: String,
    /// The address the node advertises, which clients dial for SSH.
    pub address: String,
    pub ready: bool,
    /// `active` availability (not paused, not drained).
    pub active: bool,
    /// The engine label `io.cubbi.runtime`: the node daemon's default runtime.
    pub runtime: Option<String>,
    pub memory: i64,
}

/// A session already on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLoad {
    pub node: String,
    pub port: u16,
    pub memory: i64,
}

/// What the new session needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want<'a> {
    pub runtime: &'a str,
    pub memory: i64,
    pub ports: PortRange,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub node: String,
    pub address: String,
    pub port: u16,
}

/// Why no node could take the session, one reason per node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no node of the Swarm can take this session: {}", .reasons.join("; "))]
pub struct NoNode {
    pub reasons: Vec<String>,
}

pub fn place(
    nodes: &[NodeView],
    sessions: &[SessionLoad],
    want: Want<'_>,
) -> Result<Placed, NoNode> {
    let mut reasons = Vec::new();
    let mut fits = Vec::new();
    if nodes.is_empty() {
        reasons.push("the Swarm lists no node".to_string());
    }
    for node in nodes {
        let name = format!("{} ({})", node.hostname, node.address);
        if !node.ready {
            reasons.push(format!("{name} is down"));
            continue;
        }
        if !node.active {
            reasons.push(format!("{name} is drained or paused"));
            continue;
        }
        match node.runtime.as_deref() {
            Some(runtime) if runtime == want.runtime => {}
            Some(other) => {
                reasons.push(format!(
                    "{name} runs {other}, not {} (its engine label io.cubbi.runtime)",
                    want.runtime
                ));
                continue;
            }
            None => {
                reasons.push(format!(
                    "{name} has no io.cubbi.runtime label (join it with `cubbi setup --swarm-join`)"
                ));
                continue;
            }
        }
        let here: Vec<&SessionLoad> = sessions.iter().filter(|s| s.node == node.id).collect();
        let used: i64 = here.iter().map(|s| s.memory).sum();
        let budget = node.memory.saturating_mul(MEMORY_OVERCOMMIT);
        if used.saturating_add(want.memory) > budget {
            reasons.push(format!(
                "{name} is full: its sessions' memory limits come to {} MiB of the {} MiB it may \
                 hold, and this session asks for {} MiB",
                used >> 20,
                budget >> 20,
                want.memory >> 20
            ));
            continue;
        }
        let port =
            (want.ports.start..=want.ports.end).find(|port| !here.iter().any(|s| s.port == *port));
        let Some(port) = port else {
            reasons.push(format!(
                "{name} has no free SSH port in {}-{}",
                want.ports.start, want.ports.end
            ));
            continue;
        };
        fits.push((here.len(), budget - used, node, port));
    }
    // Fewest sessions first, then the most room, then a stable order.
    fits.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.id.cmp(&b.2.id)));
    match fits.first() {
        Some((_, _, node, port)) => Ok(Placed {
            node: node.id.clone(),
            address: node.address.clone(),
            port: *port,
        }),
        None => Err(NoNode { reasons }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: i64 = 1 << 30;

    fn node(id: &str, runtime: &str) -> NodeView {
        NodeView {
            id: id.into(),
            hostname: format!("host-{id}"),
            address: format!("10.0.0.{}", id.len()),
            ready: true,
            active: true,
            runtime: Some(runtime.into()),
            memory: 8 * GIB,
        }
    }

    fn want(memory: i64) -> Want<'static> {
        Want {
            runtime: "sysbox-runc",
            memory,
            ports: PortRange {
                start: 2300,
                end: 2302,
            },
        }
    }

    fn load(node: &str, port: u16, memory: i64) -> SessionLoad {
        SessionLoad {
            node: node.into(),
            port,
            memory,
        }
    }

    #[test]
    fn sessions_spread_to_the_node_with_fewest() {
        let nodes = [node("a", "sysbox-runc"), node("b", "sysbox-runc")];
        let sessions = [load("a", 2300, GIB)];
        let placed = place(&nodes, &sessions, want(GIB)).unwrap();
        assert_eq!(placed.node, "b");
        assert_eq!(placed.port, 2300, "ports are per node");
        let sessions = [load("a", 2300, GIB), load("b", 2300, GIB)];
        let placed = place(&nodes, &sessions, want(GIB)).unwrap();
        assert_eq!((placed.node.as_str(), placed.port), ("a", 2301));
    }

    #[test]
    fn a_node_of_another_runtime_down_or_drained_is_never_chosen() {
        let mut down = node("down", "sysbox-runc");
        down.ready = false;
        let mut drained = node("drained", "sysbox-runc");
        drained.active = false;
        let mut unlabelled = node("bare", "sysbox-runc");
        unlabelled.runtime = None;
        let nodes = [node("runc", "runc"), down, drained, unlabelled];
        let refused = place(&nodes, &[], want(GIB)).unwrap_err();
        let text = refused.to_string();
        assert_eq!(refused.reasons.len(), 4, "{text}");
        assert!(text.contains("runs runc, not sysbox-runc"), "{text}");
        assert!(text.contains("is down"), "{text}");
        assert!(text.contains("drained"), "{text}");
        assert!(text.contains("--swarm-join"), "{text}");
        let mut nodes = nodes.to_vec();
        nodes.push(node("ok", "sysbox-runc"));
        assert_eq!(place(&nodes, &[], want(GIB)).unwrap().node, "ok");
    }

    #[test]
    fn a_full_node_and_a_node_without_ports_say_so() {
        let nodes = [node("a", "sysbox-runc")];
        let full = [load("a", 2300, 15 * GIB)];
        let text = place(&nodes, &full, want(2 * GIB)).unwrap_err().to_string();
        assert!(text.contains("is full"), "{text}");
        assert!(text.contains("16384 MiB it may hold"), "{text}");
        let ports = [load("a", 2300, 1), load("a", 2301, 1), load("a", 2302, 1)];
        let text = place(&nodes, &ports, want(GIB)).unwrap_err().to_string();
        assert!(text.contains("no free SSH port in 2300-2302"), "{text}");
        assert!(place(&[], &[], want(GIB)).is_err());
    }
}
