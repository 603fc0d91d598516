//! Choosing the bridge's subnet: never one the host already routes (a LAN, a VPN, another
//! Docker's bridge), so sessions can always reach those networks' neighbours of the host and the
//! host keeps reaching them.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Where cubbi looks for a free /24 by default: 10.214.0.0/16 lies outside Docker's default
/// address pools (172.17-31/16, 192.168/16), so it does not race the host Docker for a subnet.
const CANDIDATE_SPACE: (u8, u8) = (10, 214);

/// That space as a network: the bridge's /24 comes from it, and so do the /24s of the engine's
/// other networks (daemon.json `default-address-pools`).
pub const ENGINE_SPACE: Ipv4Net = Ipv4Net::new_assert(
    Ipv4Addr::new(CANDIDATE_SPACE.0, CANDIDATE_SPACE.1, 0, 0),
    16,
);

#[derive(Debug, thiserror::Error)]
pub enum SubnetError {
    #[error(
        "the subnet {wanted} collides with {route} (already routed on this host via {device}); \
         pick another with --subnet, e.g. --subnet {suggestion}"
    )]
    Collides {
        wanted: Ipv4Net,
        route: Ipv4Net,
        device: String,
        suggestion: String,
    },
    #[error(
        "the engine's address pool {pool} overlaps {route}, which this host routes via {device}: \
         sessions' networks would shadow it; pick a pool outside every host route with --pool \
         (e.g. --pool 10.215.0.0/16), or fix the route"
    )]
    PoolCollides {
        pool: Ipv4Net,
        route: Ipv4Net,
        device: String,
    },
    #[error("the pool {0} is too small: the engine's networks are /24s, so use a /24 or larger")]
    PoolTooSmall(Ipv4Net),
    #[error("no free /24 left in {0}.{1}.0.0/16: name one with --subnet")]
    Exhausted(u8, u8),
    #[error("cannot parse the routing table at line {line}: {reason}")]
    BadRouteTable { line: usize, reason: String },
}

/// One entry of the host's IPv4 routing table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Route {
    pub device: String,
    pub destination: Ipv4Net,
}

/// Parses `/proc/net/route` (main table; destination and mask are little-endian hex).
pub fn parse_proc_net_route(text: &str) -> Result<Vec<Route>, SubnetError> {
    let mut routes = Vec::new();
    for (index, line) in text.lines().enumerate().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let bad = |reason: &str| SubnetError::BadRouteTable {
            line: index + 1,
            reason: reason.to_string(),
        };
        if fields.len() < 8 {
            return Err(bad("fewer than 8 fields"));
        }
        let destination = parse_le_hex(fields[1]).ok_or_else(|| bad("bad destination"))?;
        let mask = parse_le_hex(fields[7]).ok_or_else(|| bad("bad mask"))?;
        let prefix = u32::from(mask).count_ones() as u8;
        let destination = Ipv4Net::new(destination, prefix).map_err(|_| bad("bad mask"))?;
        routes.push(Route {
            device: fields[0].to_string(),
            destination,
        });
    }
    Ok(routes)
}

fn parse_le_hex(field: &str) -> Option<Ipv4Addr> {
    let value = u32::from_str_radix(field, 16).ok()?;
    Some(Ipv4Addr::from(value.swap_bytes()))
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first route that collides with `subnet`. The default route covers everything and says
/// nothing about local networks, and routes through cubbi's own bridge are its own.
fn colliding_route<'a>(
    routes: &'a [Route],
    subnet: &Ipv4Net,
    own_bridge: &str,
) -> Option<&'a Route> {
    routes
        .iter()
        .filter(|route| route.destination.prefix_len() > 0 && route.device != own_bridge)
        .find(|route| overlaps(&route.destination, subnet))
}

/// The bridge subnet to use: `wanted` when it is free, otherwise a refusal naming the route;
/// without `wanted`, the first free /24 of the candidate space.
pub fn choose_subnet(
    routes: &[Route],
    own_bridge: &str,
    wanted: Option<Ipv4Net>,
) -> Result<Ipv4Net, SubnetError> {
    let first_free = || {
        (0..=255u8)
            .filter_map(|third| {
                Ipv4Net::new(
                    Ipv4Addr::new(CANDIDATE_SPACE.0, CANDIDATE_SPACE.1, third, 0),
                    24,
                )
                .ok()
            })
            .find(|candidate| colliding_route(routes, candidate, own_bridge).is_none())
    };
    match wanted {
        Some(subnet) => match colliding_route(routes, &subnet.trunc(), own_bridge) {
            None => Ok(subnet.trunc()),
            Some(route) => Err(SubnetError::Collides {
                wanted: subnet,
                route: route.destination,
                device: route.device.clone(),
                suggestion: first_free()
                    .map(|net| net.to_string())
                    .unwrap_or_else(|| "<a free private /24>".into()),
            }),
        },
        None => first_free().ok_or(SubnetError::Exhausted(CANDIDATE_SPACE.0, CANDIDATE_SPACE.1)),
    }
}

/// Refuses a pool that overlaps a host route (a LAN, a VPN, another Docker's bridge). Not
/// counted: the default route, routes through the engine's own bridges (`<bridge>*`), and the
/// routes dockerd adds for the engine's other networks (`br-…` devices, and a Swarm node's
/// `docker_gwbridge`, inside the pool: dockerd takes their subnets from it).
pub fn check_pool(routes: &[Route], own_bridge: &str, pool: Ipv4Net) -> Result<(), SubnetError> {
    let pool = pool.trunc();
    if pool.prefix_len() > 24 {
        return Err(SubnetError::PoolTooSmall(pool));
    }
    let ours = |route: &Route| {
        route.device.starts_with(own_bridge)
            || ((route.device.starts_with("br-") || route.device == "docker_gwbridge")
                && pool.contains(&route.destination)
                && route.destination.prefix_len() >= 24)
    };
    match routes
        .iter()
        .filter(|route| route.destination.prefix_len() > 0 && !ours(route))
        .find(|route| overlaps(&route.destination, &pool))
    {
        Some(route) => Err(SubnetError::PoolCollides {
            pool,
            route: route.destination,
            device: route.device.clone(),
        }),
        None => Ok(()),
    }
}

/// The bridge's own address: the first host of the subnet, with its prefix (`10.214.0.1/24`).
pub fn gateway(subnet: &Ipv4Net) -> Option<Ipv4Net> {
    let first = subnet.hosts().next()?;
    Ipv4Net::new(first, subnet.prefix_len()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's table while the dev dockerd runs: a default route, the dev bridge, the LAN.
    const PROC_NET_ROUTE: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
cubbidev0\t00001DAC\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    #[test]
    fn parses_the_kernel_routing_table() {
        let routes = parse_proc_net_route(PROC_NET_ROUTE).unwrap();
        let destinations: Vec<String> = routes.iter().map(|r| r.destination.to_string()).collect();
        assert_eq!(destinations, ["0.0.0.0/0", "172.29.0.0/24", "192.0.2.0/24"]);
        assert_eq!(routes[1].device, "cubbidev0");
    }

    #[test]
    fn refuses_a_garbled_table_with_its_line() {
        let err = parse_proc_net_route("Iface\nX\tzz\t0\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn default_choice_skips_routed_subnets_but_not_the_default_route() {
        let mut routes = parse_proc_net_route(PROC_NET_ROUTE).unwrap();
        assert_eq!(
            choose_subnet(&routes, "cubbi0", None).unwrap(),
            net("10.214.0.0/24")
        );
        routes.push(Route {
            device: "wg0".into(),
            destination: net("10.214.0.0/23"),
        });
        assert_eq!(
            choose_subnet(&routes, "cubbi0", None).unwrap(),
            net("10.214.2.0/24")
        );
    }

    #[test]
    fn a_route_covering_a_whole_range_pushes_the_choice_out() {
        let routes = vec![Route {
            device: "vpn0".into(),
            destination: net("10.0.0.0/8"),
        }];
        let err = choose_subnet(&routes, "cubbi0", None).unwrap_err();
        assert!(matches!(err, SubnetError::Exhausted(10, 214)), "{err}");
    }

    #[test]
    fn a_wanted_subnet_that_collides_is_refused_with_the_route_and_a_suggestion() {
        let routes = parse_proc_net_route(PROC_NET_ROUTE).unwrap();
        let err = choose_subnet(&routes, "cubbi0", Some(net("172.29.0.128/25"))).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("172.29.0.0/24"), "{text}");
        assert!(text.contains("cubbidev0"), "{text}");
        assert!(text.contains("--subnet 10.214.0.0/24"), "{text}");
    }

    #[test]
    fn a_pool_overlapping_a_host_route_is_refused_with_the_route() {
        let pool = net("10.214.0.0/16");
        let vpn = |destination: &str, device: &str| Route {
            device: device.into(),
            destination: net(destination),
        };
        let routes = parse_proc_net_route(PROC_NET_ROUTE).unwrap();
        assert!(check_pool(&routes, "cubbi0", pool).is_ok());
        for (route, device) in [("10.214.5.0/24", "eth1"), ("10.0.0.0/8", "tailscale0")] {
            let err = check_pool(&[vpn(route, device)], "cubbi0", pool).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(route) && text.contains(device), "{text}");
            assert!(text.contains("--pool"), "{text}");
        }
        // The engine's own bridges and networks are not collisions on a re-run.
        let own = [
            vpn("10.214.0.0/24", "cubbi0"),
            vpn("10.214.1.0/24", "cubbi0n"),
            vpn("10.214.2.0/24", "br-0123456789ab"),
            // A Swarm node's: dockerd made it from the pool, and `engine start` after a
            // restart must not refuse it.
            vpn("10.214.3.0/24", "docker_gwbridge"),
        ];
        assert!(check_pool(&own, "cubbi0", pool).is_ok());
        // Another Docker's gateway bridge, outside the pool's /24s, still collides.
        assert!(check_pool(&[vpn("10.214.0.0/20", "docker_gwbridge")], "cubbi0", pool).is_err());
        // A host Docker network covering more than a /24 of the pool is not one of ours.
        assert!(check_pool(&[vpn("10.214.0.0/20", "br-0123456789ab")], "cubbi0", pool).is_err());
        assert!(matches!(
            check_pool(&[], "cubbi0", net("10.214.0.0/25")),
            Err(SubnetError::PoolTooSmall(_))
        ));
    }

    #[test]
    fn our_own_bridge_route_is_not_a_collision_on_rerun() {
        let routes = vec![Route {
            device: "cubbi0".into(),
            destination: net("10.214.7.0/24"),
        }];
        let chosen = choose_subnet(&routes, "cubbi0", Some(net("10.214.7.0/24"))).unwrap();
        assert_eq!(chosen, net("10.214.7.0/24"));
        assert_eq!(gateway(&chosen).unwrap(), net("10.214.7.1/24"));
    }
}
