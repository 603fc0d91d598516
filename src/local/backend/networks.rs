//! The networks sessions join: the owner's own (made on first use under the host lock) and the
//! Linux bridge each gets on cubbi's engine.

use super::*;

impl LocalBackend {
    /// The network sessions join unless told otherwise: the configured one, or the owner's own,
    /// which other owners' sessions cannot reach.
    pub(super) fn default_network(&self) -> String {
        self.options
            .default_network
            .clone()
            .unwrap_or_else(|| naming::owner_network_name(&self.options.owner))
    }

    /// Creates the default network when missing. Docker accepts duplicate network names, so
    /// concurrent creates would each make one; the host lock makes it happen once.
    pub(super) async fn ensure_network(
        &self,
        name: &str,
        progress: &dyn Progress,
    ) -> Result<(), ApiError> {
        if self.docker.inspect_network(name).await.is_ok() {
            return Ok(());
        }
        let _lock = self.lock().await?;
        if self.docker.inspect_network(name).await.is_ok() {
            return Ok(());
        }
        let mut labels = self.options.extra_labels.clone();
        labels.insert(labels::MANAGED.into(), "true".into());
        if self.options.default_network.is_none() {
            labels.insert(labels::OWNER.into(), self.options.owner.clone());
        }
        let options = self
            .network_bridge(name)
            .await?
            .map(|bridge| HashMap::from([(naming::BRIDGE_NAME_OPTION.to_string(), bridge)]));
        if self.options.default_network.is_none()
            && self
                .docker
                .inspect_network(LEGACY_SHARED_NETWORK)
                .await
                .is_ok()
        {
            progress.notice(&format!(
                "Your sessions now join {name}, a network of your own that other users' sessions \
                 cannot reach. Sessions still on the shared {LEGACY_SHARED_NETWORK} keep it until \
                 they are closed."
            ));
        }
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            labels: Some(labels),
            options,
            ..Default::default()
        };
        self.create_network_retrying(request).await
    }

    /// The pool's network (see [`POOL_NETWORK`]), created when missing, with traffic between
    /// its containers off.
    pub(super) async fn ensure_pool_network(&self) -> Result<(), ApiError> {
        let options = HashMap::from([(
            "com.docker.network.bridge.enable_icc".to_string(),
            "false".to_string(),
        )]);
        self.ensure_endpoint_network(POOL_NETWORK, false, options)
            .await
    }

    /// The address of every pool member's inner dockerd bridge (`--bip`): the gateway of
    /// [`POOL_INNER_NETWORK`] with its prefix, e.g. `172.19.0.1/16`; the network is made when
    /// missing (see there why).
    pub(super) async fn inner_docker_bridge(&self) -> Result<String, ApiError> {
        if let Some(bridge) = self.reserved_inner_bridge().await {
            return Ok(bridge);
        }
        self.ensure_endpoint_network(POOL_INNER_NETWORK, true, HashMap::new())
            .await?;
        self.reserved_inner_bridge().await.ok_or_else(|| {
            ApiError::unavailable(format!(
                "the network {POOL_INNER_NETWORK} has no IPv4 subnet and gateway"
            ))
        })
    }

    /// A bridge network of the whole endpoint, made under the lock when missing. Shared by
    /// every member and claimed session, so it carries no caller's extra labels (a test's
    /// cleanup removes what carries its label).
    async fn ensure_endpoint_network(
        &self,
        name: &str,
        internal: bool,
        mut options: HashMap<String, String>,
    ) -> Result<(), ApiError> {
        if self.docker.inspect_network(name).await.is_ok() {
            return Ok(());
        }
        let _lock = self.lock().await?;
        if self.docker.inspect_network(name).await.is_ok() {
            return Ok(());
        }
        let labels = HashMap::from([(labels::MANAGED.to_string(), "true".to_string())]);
        if let Some(bridge) = self.network_bridge(name).await? {
            options.insert(naming::BRIDGE_NAME_OPTION.to_string(), bridge);
        }
        self.create_network_retrying(NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            internal: internal.then_some(true),
            labels: Some(labels),
            options: Some(options),
            ..Default::default()
        })
        .await
    }

    async fn reserved_inner_bridge(&self) -> Option<String> {
        let network = self.docker.inspect_network(POOL_INNER_NETWORK).await.ok()?;
        bridge_address(&network)
    }

    /// Creates a network, again when Docker was rebuilding its shared iptables chains.
    async fn create_network_retrying(&self, request: NetworkCreateRequest) -> Result<(), ApiError> {
        let name = request.name.clone();
        let mut attempt = 1;
        loop {
            match self.docker.create_network(request.clone()).await {
                Ok(()) => return Ok(()),
                // An earlier attempt that failed late may have made it after all.
                Err(err) if attempt > 1 && is_conflict(&err) => return Ok(()),
                Err(err) if attempt < NETWORK_CREATE_ATTEMPTS && shared_chains_rebuilt(&err) => {
                    tracing::debug!(%err, attempt, "network create met Docker's iptables chains being rebuilt; trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(300 * attempt as u64))
                        .await;
                    attempt += 1;
                }
                Err(err) => {
                    return Err(ApiError::unavailable(format!(
                        "cannot create network {name}: {err}"
                    )));
                }
            }
        }
    }

    /// The Linux bridge a new network gets on cubbi's engine: the engine bridge's name plus a
    /// hash of the network's, so the firewall covers it and isolates it from the other networks.
    /// `None` on an engine cubbi does not own (the host Docker's `docker0`), where Docker names
    /// it. Two networks never share a bridge: a clash of hashes is refused.
    pub(super) async fn network_bridge(&self, network: &str) -> Result<Option<String>, ApiError> {
        let engine_bridge = self
            .docker
            .inspect_network("bridge")
            .await
            .ok()
            .and_then(|found| found.options)
            .and_then(|options| options.get(naming::BRIDGE_NAME_OPTION).cloned());
        let Some(engine_bridge) = engine_bridge.filter(|bridge| bridge != "docker0") else {
            return Ok(None);
        };
        let Some(bridge) = naming::network_bridge_name(&engine_bridge, network) else {
            return Err(ApiError::unavailable(format!(
                "the engine's bridge `{engine_bridge}` is longer than {} characters, which leaves \
                 no room to name network bridges its firewall covers; re-run `sudo cubbi setup \
                 --bridge cubbi0`",
                naming::MAX_ENGINE_BRIDGE
            )));
        };
        let existing = self
            .docker
            .list_networks()
            .await
            .map_err(Self::docker_error("cannot list the networks"))?;
        if let Some(holder) = existing.iter().find(|other| {
            other
                .options
                .as_ref()
                .and_then(|options| options.get(naming::BRIDGE_NAME_OPTION))
                == Some(&bridge)
        }) {
            return Err(ApiError::Conflict(format!(
                "network {network} would use the bridge {bridge}, which network {} has already",
                holder.name.as_deref().unwrap_or("?")
            )));
        }
        Ok(Some(bridge))
    }
}

/// How often a network create is tried while Docker's iptables chains are being rebuilt.
const NETWORK_CREATE_ATTEMPTS: u32 = 4;

/// Every dockerd on a host shares the `DOCKER` chains of the host's iptables, and each one
/// removes and re-creates them when it starts. A network created in that moment (cubbi's engine
/// beside a host Docker that restarts) fails with a 500 naming a missing chain; it is worth
/// another try, any other failure is not.
fn shared_chains_rebuilt(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError { status_code: 500, message }
            if message.contains("iptables") && message.contains("No chain/target/match")
    )
}

fn is_conflict(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}

/// A network's IPv4 gateway with its subnet's prefix (`172.19.0.1/16`), as `dockerd --bip`
/// takes it.
fn bridge_address(network: &bollard::models::NetworkInspect) -> Option<String> {
    network
        .ipam
        .as_ref()?
        .config
        .as_ref()?
        .iter()
        .find_map(|config| {
            let subnet: ipnet::Ipv4Net = config.subnet.as_deref()?.parse().ok()?;
            let gateway: std::net::Ipv4Addr = config.gateway.as_deref()?.parse().ok()?;
            subnet
                .contains(&gateway)
                .then(|| format!("{gateway}/{}", subnet.prefix_len()))
        })
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    fn server_error(status_code: u16, message: &str) -> bollard::errors::Error {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message: message.into(),
        }
    }

    #[test]
    fn only_a_missing_shared_chain_is_worth_another_try() {
        assert!(shared_chains_rebuilt(&server_error(
            500,
            "Failed to Setup IP tables: Unable to enable SKIP DNAT rule:  (iptables failed: \
             iptables --wait -t nat -I DOCKER -i cbt1 -j RETURN: iptables: No chain/target/match \
             by that name.\n (exit status 1))"
        )));
        assert!(!shared_chains_rebuilt(&server_error(
            500,
            "no space left on device"
        )));
        assert!(!shared_chains_rebuilt(&server_error(
            400,
            "iptables: No chain/target/match by that name."
        )));
        assert!(is_conflict(&server_error(
            409,
            "network with name x already exists"
        )));
        assert!(!is_conflict(&server_error(500, "x")));
    }
}

#[cfg(test)]
mod bridge_tests {
    use bollard::models::{Ipam, IpamConfig, NetworkInspect};

    use super::bridge_address;

    fn network(configs: &[(&str, &str)]) -> NetworkInspect {
        NetworkInspect {
            ipam: Some(Ipam {
                config: Some(
                    configs
                        .iter()
                        .map(|(subnet, gateway)| IpamConfig {
                            subnet: Some(subnet.to_string()),
                            gateway: Some(gateway.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_inner_bridge_is_the_ipv4_gateway_with_its_prefix() {
        let found = bridge_address(&network(&[
            ("fd00::/64", "fd00::1"),
            ("172.19.0.0/16", "172.19.0.1"),
        ]));
        assert_eq!(found.as_deref(), Some("172.19.0.1/16"));
        assert_eq!(
            bridge_address(&network(&[("172.19.0.0/16", "10.0.0.1")])),
            None
        );
        assert_eq!(bridge_address(&network(&[])), None);
    }
}
