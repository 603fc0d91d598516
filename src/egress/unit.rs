//! `cubbi-egress.service`: its source lives in `systemd-units/host/` and is embedded; `cubbi
//! egress unit` fills it in for the recorded engine.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;

use ipnet::Ipv4Net;

pub const EGRESS_UNIT_TEMPLATE: &str =
    include_str!("../../systemd-units/host/cubbi-egress.service");

/// Where the resolver listens on an engine: its bridge's gateway (the subnet's first address),
/// which every session reaches, on [`super::nft::RESOLVER_PORT`].
pub fn listen_address(subnet: Ipv4Net) -> Option<SocketAddrV4> {
    subnet
        .hosts()
        .next()
        .map(|gateway| SocketAddrV4::new(gateway, super::nft::RESOLVER_PORT))
}

/// `ADDR` (port 53) or `ADDR:PORT`.
pub fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .or_else(|_| {
            text.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("{text:?} is not an address (ADDR or ADDR:PORT)"))
}

pub fn render(
    cubbi: &Path,
    listen: SocketAddrV4,
    bridge: &str,
    upstreams: &[SocketAddr],
) -> String {
    let upstreams: String = upstreams
        .iter()
        .map(|upstream| format!(" --upstream {upstream}"))
        .collect();
    EGRESS_UNIT_TEMPLATE
        .replace("@CUBBI@", &cubbi.display().to_string())
        .replace("@LISTEN@", &listen.to_string())
        .replace("@BRIDGE@", bridge)
        .replace("@UPSTREAMS@", &upstreams)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_the_resolver_on_the_gateway_with_the_upstreams_given() {
        let listen = listen_address("10.214.0.0/24".parse().unwrap()).unwrap();
        assert_eq!(listen.to_string(), "10.214.0.1:5301");
        let unit = render(
            Path::new("/usr/local/bin/cubbi"),
            listen,
            "cubbi0",
            &["9.9.9.9:53".parse().unwrap()],
        );
        assert!(unit.contains(
            "ExecStart=/usr/local/bin/cubbi egress resolver --listen 10.214.0.1:5301 --bridge \
             cubbi0 --upstream 9.9.9.9:53\n"
        ));
        assert!(!unit.contains('@'), "{unit}");
        let bare = render(Path::new("/c"), listen, "cubbi0", &[]);
        assert!(bare.contains("--bridge cubbi0\n"));
    }
}
