//! Which Docker endpoint cubbi talks to, and connecting to it with bollard.

use bollard::Docker;

use crate::config::Config;

/// The dedicated endpoint `cubbi setup` installs.
pub const DEFAULT_ENDPOINT: &str = "unix:///var/run/cubbi-docker.sock";

/// How long one Docker API call may take before it is abandoned.
const REQUEST_TIMEOUT_SECS: u64 = 120;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("unsupported Docker endpoint `{0}`: use unix:///path/to/socket or tcp://host:port")]
    UnsupportedEndpoint(String),
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
    } else if let Some(address) = endpoint
        .strip_prefix("tcp://")
        .or_else(|| endpoint.strip_prefix("http://"))
    {
        Docker::connect_with_http(
            &format!("http://{address}"),
            REQUEST_TIMEOUT_SECS,
            bollard::API_DEFAULT_VERSION,
        )
    } else {
        return Err(DockerError::UnsupportedEndpoint(endpoint.to_string()));
    }
    .map_err(unavailable)?;
    client.negotiate_version().await.map_err(unavailable)
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
}
