//! The labels that make a container a session. Docker is the only record of sessions, so
//! everything `list`, `show` and `close` need is here.

use std::collections::HashMap;

use crate::api::{Session, SessionState, SshEndpoint};

pub const SESSION: &str = "io.cubbi.session";
pub const NAME: &str = "io.cubbi.name";
pub const OWNER: &str = "io.cubbi.owner";
pub const IMAGE: &str = "io.cubbi.image";
pub const SSH_PORT: &str = "io.cubbi.ssh-port";
pub const SSH_BIND: &str = "io.cubbi.ssh-bind";
pub const SSH_HOST_KEY: &str = "io.cubbi.ssh-host-key";
pub const WORKSPACE: &str = "io.cubbi.workspace";
pub const CREATED: &str = "io.cubbi.created";
pub const COMMAND: &str = "io.cubbi.command";
/// Marks networks and volumes cubbi made.
pub const MANAGED: &str = "io.cubbi.managed";
/// The project id a per-project config volume belongs to (with [`OWNER`]).
pub const PROJECT: &str = "io.cubbi.project";
/// Seconds without an SSH connection after which the session is stopped (`--idle-stop`).
pub const IDLE_STOP: &str = "io.cubbi.idle-stop";
/// The egress policy a session was created with (JSON, see `egress::EgressPolicy::to_label`).
pub const EGRESS: &str = "io.cubbi.egress";

/// The container of a ready session.
pub fn container_name(session: &str) -> String {
    format!("cubbi-{session}")
}

/// The container of a session whose create has not yet seen sshd accept the key.
pub fn booting_container_name(session: &str) -> String {
    format!("cubbi-{session}.booting")
}

/// The user that SSH logins use inside every cubbi image.
pub const AGENT_USER: &str = "agent";

/// What a session's labels say, independent of the container's state.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionLabels {
    pub name: String,
    pub owner: String,
    pub image: String,
    pub ssh_port: u16,
    pub ssh_bind: String,
    pub host_key: String,
    pub workspace: Option<String>,
    pub created: i64,
    pub command: Vec<String>,
}

impl SessionLabels {
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (SESSION.to_string(), "true".to_string()),
            (NAME.to_string(), self.name.clone()),
            (OWNER.to_string(), self.owner.clone()),
            (IMAGE.to_string(), self.image.clone()),
            (SSH_PORT.to_string(), self.ssh_port.to_string()),
            (SSH_BIND.to_string(), self.ssh_bind.clone()),
            (SSH_HOST_KEY.to_string(), self.host_key.clone()),
            (CREATED.to_string(), self.created.to_string()),
            (
                COMMAND.to_string(),
                serde_json::to_string(&self.command).unwrap_or_else(|_| "[]".into()),
            ),
        ]);
        if let Some(workspace) = &self.workspace {
            labels.insert(WORKSPACE.to_string(), workspace.clone());
        }
        labels
    }

    /// Reads a session's labels back; `None` for containers that are not (whole) sessions.
    pub fn from_map(labels: &HashMap<String, String>) -> Option<Self> {
        if labels.get(SESSION).map(String::as_str) != Some("true") {
            return None;
        }
        Some(Self {
            name: labels.get(NAME)?.clone(),
            owner: labels.get(OWNER)?.clone(),
            image: labels.get(IMAGE)?.clone(),
            ssh_port: labels.get(SSH_PORT)?.parse().ok()?,
            ssh_bind: labels
                .get(SSH_BIND)
                .cloned()
                .unwrap_or_else(|| "127.0.0.1".into()),
            host_key: labels.get(SSH_HOST_KEY)?.clone(),
            // Empty on a session made from a snapshot of one without a workspace.
            workspace: labels.get(WORKSPACE).filter(|w| !w.is_empty()).cloned(),
            created: labels
                .get(CREATED)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            command: labels
                .get(COMMAND)
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default(),
        })
    }

    /// The address to connect to: a wildcard bind is reached over loopback.
    pub fn connect_host(&self) -> String {
        match self.ssh_bind.as_str() {
            "0.0.0.0" | "::" | "" => "127.0.0.1".to_string(),
            other => other.to_string(),
        }
    }

    pub fn into_session(self, id: String, state: SessionState) -> Session {
        let host = self.connect_host();
        Session {
            id,
            ssh: SshEndpoint {
                host,
                port: self.ssh_port,
                user: AGENT_USER.to_string(),
                host_key: self.host_key,
                proxy: false,
            },
            name: self.name,
            image: self.image,
            owner: self.owner,
            state,
            created: self.created,
            workspace: self.workspace,
            command: self.command,
            init_status: None,
            project_status: None,
            resources: None,
            networks: Vec::new(),
            egress: None,
            pool: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        let labels = SessionLabels {
            name: "demo".into(),
            owner: "me".into(),
            image: "cubbi-base".into(),
            ssh_port: 2301,
            ssh_bind: "0.0.0.0".into(),
            host_key: "ssh-ed25519 AAAA".into(),
            workspace: Some("/src/demo".into()),
            created: 1_700_000_000,
            command: vec!["bash".into(), "-l".into()],
        };
        let back = SessionLabels::from_map(&labels.to_map()).unwrap();
        assert_eq!(back, labels);
        assert_eq!(back.connect_host(), "127.0.0.1");
    }

    #[test]
    fn foreign_containers_are_not_sessions() {
        assert!(SessionLabels::from_map(&HashMap::new()).is_none());
        let partial = HashMap::from([(SESSION.to_string(), "true".to_string())]);
        assert!(SessionLabels::from_map(&partial).is_none());
    }
}
