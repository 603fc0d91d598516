//! A session's state from what Docker reports plus whether sshd answers.

use crate::api::SessionState;

/// Docker's view of a container, as `docker ps` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerState<'a> {
    Created,
    Running { status: &'a str },
    Restarting,
    Exited { status: &'a str },
    Gone,
}

/// `booted`: the session's create saw sshd accept the key (its container was renamed).
pub fn session_state(docker: DockerState<'_>, booted: bool) -> SessionState {
    match docker {
        DockerState::Created => SessionState::Creating,
        DockerState::Running { status } if status.contains("(unhealthy)") => {
            SessionState::InitFailed
        }
        DockerState::Running { .. } if booted => SessionState::Ready,
        DockerState::Running { .. } | DockerState::Restarting => SessionState::Starting,
        DockerState::Exited { status } if status.starts_with("Exited (0)") => SessionState::Stopped,
        DockerState::Exited { .. } | DockerState::Gone => SessionState::Exited,
    }
}

pub fn docker_state<'a>(state: &str, status: &'a str) -> DockerState<'a> {
    match state {
        "created" => DockerState::Created,
        "running" | "paused" => DockerState::Running { status },
        "restarting" => DockerState::Restarting,
        "exited" => DockerState::Exited { status },
        _ => DockerState::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_docker_states() {
        let state = |docker, status, ssh| session_state(docker_state(docker, status), ssh);
        assert_eq!(state("created", "Created", false), SessionState::Creating);
        assert_eq!(
            state("running", "Up 2 seconds", false),
            SessionState::Starting
        );
        assert_eq!(state("running", "Up 2 seconds", true), SessionState::Ready);
        assert_eq!(
            state("running", "Up 1 minute (unhealthy)", true),
            SessionState::InitFailed
        );
        assert_eq!(
            state("exited", "Exited (0) 3 minutes ago", false),
            SessionState::Stopped
        );
        assert_eq!(
            state("exited", "Exited (137) 1 second ago", false),
            SessionState::Exited
        );
        assert_eq!(state("dead", "", false), SessionState::Exited);
    }
}
