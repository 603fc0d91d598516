//! Which Docker endpoint cubbi talks to, and connecting to it with bollard.

use bollard::Docker;

use crate::config::Config;

/// The dedicated endpoint `cubbi setup` installs.
pub const DEFAULT_ENDPOINT: &str = "unix:///var/run/cubbi-docker.sock";

/// How long one Docker API call may take before it is abandoned.
const REQUEST_TIMEOUT_SECS: u64 = 120;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("unsupported Docker endpoint `{0}`: use unix:///path/to/socket")]
    UnsupportedEndpoint(String),
    #[error(
        "refusing the network Docker endpoint `{0}`: cubbi sends each session's SSH host key and \
         secrets to Docker in the clear over it, and then connects to sessions on 127.0.0.1, \
         which is not where that Docker runs. Use the local socket (unix:///path/to/socket), or \
         run cubbi on the Docker host itself"
    )]
    NetworkEndpoint(String),
    #[error(
        "cannot reach Docker at {endpoint}: {reason}\n  is the cubbi engine running? Point --endpoint \
         (or CUBBI_DOCKER_HOST) at a running dockerd"
    )]
    Unavailable { endpoint: String, reason: String },
}

/// The endpoint in effect: `--endpoint` or `CUBBI_DOCKER_HOST` (clap merges both), then
/// `docker.endpoint` from the config, then the dedicated endpoint.
pub fn resolve_endpoint(from_command_line: Option<&str>, config: &Config) -> String {
    from_command_line
        .map(str::to_string)
        .or_else(|| config.docker.endpoint.clone())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

/// Connects and agrees on an API version, so older daemons (Debian's docker.io) work too.
pub async fn connect(endpoint: &str) -> Result<Docker, DockerError> {
    let unavailable = |err: bollard::errors::Error| DockerError::Unavailable {
        endpoint: endpoint.to_string(),
        reason: err.to_string(),
    };
    let client = if let Some(path) = endpoint.strip_prefix("unix://") {
        if !std::path::Path::new(path).exists() {
            return Err(DockerError::Unavailable {
                endpoint: endpoint.to_string(),
                reason: format!("{path} does not exist"),
            });
        }
        Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
    } else if ["tcp://", "http://", "https://", "ssh://"]
        .iter()
        .any(|scheme| endpoint.starts_with(scheme))
    {
        return Err(DockerError::NetworkEndpoint(endpoint.to_string()));
    } else {
        return Err(DockerError::UnsupportedEndpoint(endpoint.to_string()));
    }
    .map_err(unavailable)?;
    client.negotiate_version().await.map_err(unavailable)
}

/// Docker's log frames (a container's or a service's) as the session API's chunks.
pub fn log_chunks(
    frames: impl futures_util::Stream<
        Item = Result<bollard::container::LogOutput, bollard::errors::Error>,
    > + Send
    + 'static,
) -> futures_util::stream::BoxStream<'static, Result<crate::api::LogChunk, crate::api::ApiError>> {
    use futures_util::TryStreamExt;
    Box::pin(
        frames
            .map_ok(|chunk| crate::api::LogChunk {
                text: chunk.to_string(),
            })
            .map_err(|err| crate::api::ApiError::unavailable(format!("reading logs: {err}"))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_wins_over_config_over_default() {
        let mut config = Config::default();
        assert_eq!(resolve_endpoint(None, &config), DEFAULT_ENDPOINT);
        config.docker.endpoint = Some("unix:///tmp/x.sock".into());
        assert_eq!(resolve_endpoint(None, &config), "unix:///tmp/x.sock");
        assert_eq!(
            resolve_endpoint(Some("tcp://127.0.0.1:1"), &config),
            "tcp://127.0.0.1:1"
        );
    }

    #[tokio::test]
    async fn refuses_unknown_schemes_and_missing_sockets() {
        let err = connect("ftp://x").await.unwrap_err();
        assert!(matches!(err, DockerError::UnsupportedEndpoint(_)));
        let err = connect("unix:///nonexistent/cubbi.sock").await.unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    /// Over TCP the session archive (host key, env file) would travel in the clear, and SSH
    /// would then dial 127.0.0.1 rather than the Docker host: refused before any connection.
    #[tokio::test]
    async fn refuses_network_endpoints() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        for endpoint in [
            format!("tcp://127.0.0.1:{port}"),
            format!("http://127.0.0.1:{port}"),
            format!("https://127.0.0.1:{port}"),
            "ssh://user@host".to_string(),
        ] {
            let err = connect(&endpoint).await.unwrap_err();
            assert!(
                matches!(err, DockerError::NetworkEndpoint(_)),
                "{endpoint}: {err}"
            );
            assert!(err.to_string().contains("unix://"), "{err}");
        }
        listener.set_nonblocking(true).unwrap();
        assert!(
            listener.accept().is_err(),
            "nothing may even connect to a refused endpoint"
        );
    }
}
