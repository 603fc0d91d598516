//! The egress guard: iptables rules in a chain of cubbi's own, jumped to for traffic entering from
//! the cubbi bridge only, that keep sessions off the host's private networks, link-local addresses
//! and the cloud metadata service while the internet stays reachable. The host's own Docker
//! bridges are never matched.
//!
//! Two hooks: Docker's `DOCKER-USER` (in FORWARD) for traffic to other machines, and `INPUT` for
//! traffic to the machine's own addresses (a service bound to the host's LAN or VPN address is
//! reached through INPUT, never FORWARD). The bridge's own gateway address stays reachable, since
//! it is inside the session subnet.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::runner::{CommandError, CommandRunner};

/// cubbi's chain; everything it holds is cubbi's, so it is flushed and rebuilt as a whole.
pub const CHAIN: &str = "CUBBI-EGRESS";
/// Docker's hook for user rules in FORWARD; dockerd creates it and leaves its contents alone.
pub const DOCKER_USER: &str = "DOCKER-USER";
/// Packets to the machine's own addresses.
pub const INPUT: &str = "INPUT";
/// The chains that jump to [`CHAIN`] for traffic from the bridge.
pub const HOOKS: &[&str] = &[DOCKER_USER, INPUT];

/// Destinations sessions may not reach: RFC 1918, link-local (which holds 169.254.169.254).
pub const BLOCKED: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
];

/// What the rules depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardSettings {
    pub bridge: String,
    pub subnet: Ipv4Net,
    /// The host's DNS servers: the default bridge hands them to containers as they are, so a
    /// private one (a home router, a VPC resolver) must stay reachable on port 53.
    pub nameservers: Vec<Ipv4Addr>,
}

/// The nameservers in `/etc/resolv.conf` text.
pub fn parse_nameservers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse().ok())
        .collect()
}

fn is_blocked(address: Ipv4Addr) -> bool {
    BLOCKED
        .iter()
        .filter_map(|net| net.parse::<Ipv4Net>().ok())
        .any(|net| net.contains(&address))
}

/// The chain's rules in order, each as `iptables -A CUBBI-EGRESS` arguments.
pub fn chain_rules(settings: &GuardSettings) -> Vec<Vec<String>> {
    let mut rules: Vec<Vec<String>> = Vec::new();
    let mut rule = |words: &[&str]| rules.push(words.iter().map(|w| w.to_string()).collect());
    // Replies to connections made from outside (published ports) are not egress.
    rule(&[
        "-m",
        "conntrack",
        "--ctstate",
        "RELATED,ESTABLISHED",
        "-j",
        "RETURN",
    ]);
    // Sessions on the same bridge talk to each other (br_netfilter sends that through FORWARD).
    let own_subnet = settings.subnet.trunc().to_string();
    rule(&["-d", &own_subnet, "-j", "RETURN"]);
    for nameserver in settings.nameservers.iter().filter(|ns| is_blocked(**ns)) {
        let address = format!("{nameserver}/32");
        for protocol in ["udp", "tcp"] {
            // Spelled with `-m PROTO` as `iptables -S` prints it, so the listing compares equal.
            rule(&[
                "-d", &address, "-p", protocol, "-m", protocol, "--dport", "53", "-j", "RETURN",
            ]);
        }
    }
    for blocked in BLOCKED {
        rule(&[
            "-d",
            blocked,
            "-j",
            "REJECT",
            "--reject-with",
            "icmp-net-prohibited",
        ]);
    }
    rule(&["-j", "RETURN"]);
    rules
}

/// The jump from each hook, as arguments after `-I`/`-C`/`-D HOOK`.
pub fn jump_rule(settings: &GuardSettings) -> Vec<String> {
    ["-i", &settings.bridge, "-j", CHAIN]
        .iter()
        .map(|word| word.to_string())
        .collect()
}

/// The chain as `iptables -S CUBBI-EGRESS` prints it, to compare with what is installed.
pub fn expected_listing(settings: &GuardSettings) -> Vec<String> {
    std::iter::once(format!("-N {CHAIN}"))
        .chain(
            chain_rules(settings)
                .iter()
                .map(|rule| format!("-A {CHAIN} {}", rule.join(" "))),
        )
        .collect()
}

/// Whether the guard is fully in place: the chain holds exactly our rules and every hook jumps
/// to it.
pub fn is_installed(runner: &dyn CommandRunner, settings: &GuardSettings) -> bool {
    let listing = runner.output("iptables", &["-w", "-S", CHAIN]);
    let chain_matches = listing.is_ok_and(|out| {
        out.success && normalize(&out.stdout) == normalize(&expected_listing(settings).join("\n"))
    });
    chain_matches
        && HOOKS
            .iter()
            .all(|hook| jump_present(runner, settings, hook))
}

fn jump_present(runner: &dyn CommandRunner, settings: &GuardSettings, hook: &str) -> bool {
    let jump = jump_rule(settings);
    let mut args = vec!["-w", "-C", hook];
    args.extend(jump.iter().map(String::as_str));
    runner
        .output("iptables", &args)
        .is_ok_and(|out| out.success)
}

/// iptables prints `-m conntrack --ctstate RELATED,ESTABLISHED` and `/32` slightly differently
/// across versions; compare on whitespace-separated words, ignoring a trailing `/32`.
fn normalize(listing: &str) -> Vec<String> {
    listing
        .split_whitespace()
        .map(|word| word.trim_end_matches("/32").to_string())
        .collect()
}

/// Creates or rebuilds the chain and hooks it first into DOCKER-USER (which dockerd has made by
/// then) and INPUT.
pub fn install(runner: &dyn CommandRunner, settings: &GuardSettings) -> Result<(), CommandError> {
    // -N fails when the chain exists; that is fine, it is flushed next.
    let _ = runner.output("iptables", &["-w", "-N", CHAIN])?;
    runner.run("iptables", &["-w", "-F", CHAIN])?;
    for rule in chain_rules(settings) {
        let mut args = vec!["-w", "-A", CHAIN];
        args.extend(rule.iter().map(String::as_str));
        runner.run("iptables", &args)?;
    }
    for hook in HOOKS {
        if jump_present(runner, settings, hook) {
            continue;
        }
        if *hook == DOCKER_USER {
            let _ = runner.output("iptables", &["-w", "-N", DOCKER_USER])?;
        }
        let jump = jump_rule(settings);
        let mut args = vec!["-w", "-I", hook];
        args.extend(jump.iter().map(String::as_str));
        runner.run("iptables", &args)?;
    }
    Ok(())
}

/// Removes the jumps and the chain; absent pieces are fine.
pub fn uninstall(runner: &dyn CommandRunner, settings: &GuardSettings) -> Result<(), CommandError> {
    for hook in HOOKS {
        // Bounded: a jump added twice by hand is removed too, but a broken iptables cannot loop us.
        for _ in 0..8 {
            if !jump_present(runner, settings, hook) {
                break;
            }
            let jump = jump_rule(settings);
            let mut args = vec!["-w", "-D", hook];
            args.extend(jump.iter().map(String::as_str));
            runner.run("iptables", &args)?;
        }
    }
    let _ = runner.output("iptables", &["-w", "-F", CHAIN])?;
    let _ = runner.output("iptables", &["-w", "-X", CHAIN])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::runner::fake::RecordingRunner;

    fn settings() -> GuardSettings {
        GuardSettings {
            bridge: "cubbi0".into(),
            subnet: "10.214.0.0/24".parse().unwrap(),
            nameservers: parse_nameservers(
                "# generated\nnameserver 192.168.1.1\nnameserver 1.1.1.1\nsearch lan\n",
            ),
        }
    }

    #[test]
    fn nameservers_come_from_resolv_conf() {
        assert_eq!(
            settings().nameservers,
            [Ipv4Addr::new(192, 168, 1, 1), Ipv4Addr::new(1, 1, 1, 1)]
        );
        assert!(parse_nameservers("nameserver ::1\n").is_empty());
    }

    #[test]
    fn the_rule_set_blocks_private_ranges_but_keeps_own_subnet_replies_and_private_dns() {
        let listing = expected_listing(&settings()).join("\n");
        let expected = "\
-N CUBBI-EGRESS
-A CUBBI-EGRESS -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
-A CUBBI-EGRESS -d 10.214.0.0/24 -j RETURN
-A CUBBI-EGRESS -d 192.168.1.1/32 -p udp -m udp --dport 53 -j RETURN
-A CUBBI-EGRESS -d 192.168.1.1/32 -p tcp -m tcp --dport 53 -j RETURN
-A CUBBI-EGRESS -d 10.0.0.0/8 -j REJECT --reject-with icmp-net-prohibited
-A CUBBI-EGRESS -d 172.16.0.0/12 -j REJECT --reject-with icmp-net-prohibited
-A CUBBI-EGRESS -d 192.168.0.0/16 -j REJECT --reject-with icmp-net-prohibited
-A CUBBI-EGRESS -d 169.254.0.0/16 -j REJECT --reject-with icmp-net-prohibited
-A CUBBI-EGRESS -j RETURN";
        assert_eq!(listing, expected);
        assert!(
            is_blocked("169.254.169.254".parse().unwrap()),
            "cloud metadata"
        );
        assert!(!is_blocked("1.1.1.1".parse().unwrap()));
        assert_eq!(
            jump_rule(&settings()).join(" "),
            "-i cubbi0 -j CUBBI-EGRESS"
        );
    }

    #[test]
    fn install_builds_the_chain_and_hooks_it_once() {
        let runner = RecordingRunner::default().answering("iptables -w -C", false, "");
        install(&runner, &settings()).unwrap();
        let commands = runner.commands();
        assert_eq!(commands[0], "iptables -w -N CUBBI-EGRESS");
        assert_eq!(commands[1], "iptables -w -F CUBBI-EGRESS");
        assert_eq!(
            commands
                .iter()
                .filter(|c| c.contains("-A CUBBI-EGRESS"))
                .count(),
            9
        );
        let hooks: Vec<&str> = commands
            .iter()
            .filter(|c| c.starts_with("iptables -w -I "))
            .map(String::as_str)
            .collect();
        assert_eq!(
            hooks,
            [
                "iptables -w -I DOCKER-USER -i cubbi0 -j CUBBI-EGRESS",
                "iptables -w -I INPUT -i cubbi0 -j CUBBI-EGRESS"
            ]
        );
        assert!(commands.iter().all(|c| !c.contains("docker0")));
    }

    #[test]
    fn installed_only_when_listing_and_jump_match() {
        let listing = expected_listing(&settings()).join("\n").replace("/32", "");
        let runner = RecordingRunner::default().answering("iptables -w -S", true, &listing);
        assert!(is_installed(&runner, &settings()));
        let drifted =
            RecordingRunner::default().answering("iptables -w -S", true, "-N CUBBI-EGRESS\n");
        assert!(!is_installed(&drifted, &settings()));
        // A guard from before the INPUT hook existed is not complete.
        let forward_only = RecordingRunner::default()
            .answering("iptables -w -S", true, &listing)
            .answering("iptables -w -C INPUT", false, "");
        assert!(!is_installed(&forward_only, &settings()));
    }

    #[test]
    fn uninstall_unhooks_both_chains_then_drops_ours() {
        // No jump in DOCKER-USER; one in INPUT that never goes away (the fake does not change),
        // so its removal stops at the bound instead of looping.
        let runner = RecordingRunner::default()
            .answering("iptables -w -C DOCKER-USER", false, "")
            .answering("iptables -w -C INPUT", true, "");
        uninstall(&runner, &settings()).unwrap();
        let commands = runner.commands();
        assert!(
            commands
                .iter()
                .all(|c| !c.starts_with("iptables -w -D DOCKER-USER"))
        );
        assert_eq!(
            commands
                .iter()
                .filter(|c| *c == "iptables -w -D INPUT -i cubbi0 -j CUBBI-EGRESS")
                .count(),
            8
        );
        assert_eq!(
            &commands[commands.len() - 2..],
            ["iptables -w -F CUBBI-EGRESS", "iptables -w -X CUBBI-EGRESS"]
        );
    }
}
