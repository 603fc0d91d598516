//! How this endpoint's pool is kept: the targets and what every member boots with. Fixed per
//! process (the CLI reads them from the config, the service from service.toml), so a create
//! compares its own runtime and SSH bind with these to know whether a member fits.

use std::net::IpAddr;

use super::PoolTargets;

/// The network every member boots on, and stays on after a claim (Docker 20.10 drops a
/// container's published ports when the network it was created on is disconnected). Made with
/// inter-container traffic off, so members, and the sessions made from them, cannot reach one
/// another over it; each claimed session reaches its owner's sessions on the owner's network.
///
/// Its name sorts before every owner's network (`cubbi-NAME-HASH`, NAME starting with a letter
/// or digit): Docker gives a container's default gateway, and with it the published ports, to
/// the first of its networks by name (no gateway priority before Docker 28). Were the owner's
/// network first, joining it would move the member's SSH port to it mid-claim, re-plumbing the
/// proxy and NAT and dropping the SSH connection the claim opened meanwhile: the bench measured
/// a claim 2x slower for owners named below "pool" than above.
pub const POOL_NETWORK: &str = "cubbi--pool";

/// A network no container ever joins, made to hold its subnet on the engine: a member's inner
/// dockerd puts its bridge at this network's gateway. A member boots (and its inner dockerd
/// picks its bridge) before it knows the owner's network a claim will join; were that network
/// given the same subnet by the engine (Docker's default pool starts at the inner dockerd's own
/// default, 172.17.0.0/16, wherever the engine's bridge is elsewhere), the join would fail
/// with a route conflict. The engine never gives a subnet in use to another network, so no
/// network a claim joins can overlap this one. A cold session joins its networks before its
/// inner dockerd starts, which then picks a free subnet by itself.
pub const POOL_INNER_NETWORK: &str = "cubbi--pool-inner";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_network_sorts_before_every_owners_network() {
        for owner in [
            "a",
            "0",
            "0day",
            "alice",
            "bench-pool-1234",
            "pool",
            "zz",
            "-x",
            "Ünï",
        ] {
            let owners = crate::local::naming::owner_network_name(owner);
            assert!(POOL_NETWORK < owners.as_str(), "{owners} sorts first");
        }
    }
}

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub targets: PoolTargets,
    /// The runtime members boot with: what a create uses by default.
    pub runtime: String,
    /// Where members publish SSH: what a create publishes on by default.
    pub ssh_bind: IpAddr,
    /// Whose data volume members of an image that keeps its config there hold.
    pub owner_data: OwnerData,
}

/// Whose data volume the members of an image that keeps its config there (a tool image) boot
/// with. Docker cannot add a volume to a running container, so such a member serves only the
/// owner whose volume it holds (see "Warm pool" in docs/architecture.md).
#[derive(Debug, Clone)]
pub enum OwnerData {
    /// The filling owner's: the CLI's pool, which has one owner.
    Filler,
    /// Each owner's who created a session of the image lately: a service's pool, whose creates
    /// note the demand and whose fill keeps the target per owner.
    Demanded(std::sync::Arc<super::PoolDemand>),
}

/// When the CLI tops a pool up after a create took one of its members (`defaults.pool_refill`).
/// The service always refills in the background.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolRefill {
    /// A detached `cubbi pool fill --quiet` right after the claim.
    #[default]
    Background,
    /// Never by itself: `cubbi pool fill` (or a service) does it, e.g. to keep a laptop quiet
    /// or to see exactly what a pool of N serves.
    Manual,
}

impl PoolRefill {
    /// The default, which a saved config leaves out.
    pub fn is_background(&self) -> bool {
        *self == Self::Background
    }
}
