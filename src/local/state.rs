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

/// `ssh_answers` is only consulted for running containers.
pub fn session_state(docker: DockerState<'_>, ssh_answers: bool) -> SessionState {
    match docker {
        DockerState::Created => SessionState::Creating,
        DockerState::Running { status } if status.contains("(unhealthy)") => {
            SessionState::InitFailed
        }
        DockerState::Running { .. } if ssh_answers => SessionState::Ready,
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

/// A cheap readiness check for listings: does something speak SSH on the port? Before sshd
/// listens, Docker's proxy accepts and at once closes, so the wait is only long on a loaded
/// host, where a short timeout would call ready sessions "starting".
pub async fn ssh_banner(host: &str, port: u16) -> bool {
    use tokio::io::AsyncReadExt;
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let mut banner = [0u8; 4];
        stream.read_exact(&mut banner).await.ok()?;
        Some(&banner == b"SSH-")
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
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

    #[tokio::test]
    async fn banner_probe_sees_ssh_and_nothing_else() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let _ = socket.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await;
            }
        });
        assert!(ssh_banner("127.0.0.1", port).await);
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        assert!(!ssh_banner("127.0.0.1", closed_port).await);
    }
}
