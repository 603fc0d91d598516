//! The dedicated engine's firewall, owned by cubbi rather than dockerd.
//!
//! dockerd runs with `"iptables": false`: a second dockerd with iptables on deletes and re-creates
//! the shared `DOCKER` / `DOCKER-ISOLATION-*` chains at start, dropping the host Docker's port
//! forwards until that daemon restarts. cubbi therefore writes its own rules, in chains of its own
//! that nobody else flushes:
//!
//! - `nat CUBBI-NAT-<bridge>`: masquerade the engine's subnets going anywhere but its bridges
//!   (what dockerd's `ip-masq` would do); published ports go through docker-proxy and need no
//!   DNAT.
//! - `filter CUBBI-FWD-<bridge>`: let the bridges' traffic out and the replies back in, through
//!   the egress guard first.
//! - the egress guard (on by default): `CUBBI-EGRESS-<bridge>` rejects private networks,
//!   link-local and the cloud metadata address for forwarded traffic; `CUBBI-INPUT-<bridge>`
//!   rejects every new connection from a session to the machine itself (its gateway, its LAN
//!   and VPN addresses); `ip6tables CUBBI-V6-<bridge>` rejects IPv6 from the bridges altogether
//!   (the engine gives sessions none, but link-local reaches the host).
//!
//! Rules match interfaces, never source addresses a session could forge: every bridge of the
//! engine is named with the engine bridge's prefix (`cubbi0`, `cubbi0n` for `cubbi-network`), so
//! `-i cubbi0+` covers them all.
//!
//! The same rule set is applied by setup through [`CommandRunner`] and rendered as a shell script
//! that the unit (or `cubbi engine start`) runs before dockerd, so the rules survive a reboot.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::runner::{CommandError, CommandRunner};

/// Chain names are these prefixes plus the engine's bridge, so two engines on one host (a
/// system one and a trial under `--engine-root`) never flush each other's rules. With a bridge
/// of at most 14 characters (`settings::validate_bridge_name`) every name stays within
/// iptables' 28.
pub const NAT_PREFIX: &str = "CUBBI-NAT-";
pub const FORWARD_PREFIX: &str = "CUBBI-FWD-";
pub const EGRESS_PREFIX: &str = "CUBBI-EGRESS-";
pub const INPUT_PREFIX: &str = "CUBBI-INPUT-";
pub const V6_PREFIX: &str = "CUBBI-V6-";

/// Destinations sessions may not reach: RFC 1918, link-local (which holds 169.254.169.254).
pub const BLOCKED: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
];

/// What the rules depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSettings {
    /// The engine's bridge; its name is the prefix of every bridge the engine's networks use.
    pub bridge: String,
    /// The engine's subnets: the bridge's and the pool its other networks come from.
    pub subnets: Vec<Ipv4Net>,
    /// The host's DNS servers: containers are handed them as they are, so a private one (a home
    /// router, a VPC resolver, this machine) must stay reachable on port 53.
    pub nameservers: Vec<Ipv4Addr>,
    pub egress_guard: bool,
    /// Whether ip6tables is there to reject IPv6 from the bridges.
    pub ipv6: bool,
}

/// iptables or ip6tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn program(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

/// A chain of cubbi's: flushed and refilled as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub family: Family,
    pub table: &'static str,
    pub name: String,
    pub rules: Vec<Vec<String>>,
}

/// A jump from a built-in chain into one of cubbi's, inserted first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub family: Family,
    pub table: &'static str,
    pub builtin: &'static str,
    pub rule: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    pub chains: Vec<Chain>,
    pub hooks: Vec<Hook>,
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|word| word.to_string()).collect()
}

fn is_blocked(address: Ipv4Addr) -> bool {
    BLOCKED
        .iter()
        .filter_map(|net| net.parse::<Ipv4Net>().ok())
        .any(|net| net.contains(&address))
}

/// systemd-resolved's list of the real upstream servers, which Docker hands containers when
/// `/etc/resolv.conf` names only the local stub (127.0.0.53).
const RESOLVED_UPSTREAMS: &str = "/run/systemd/resolve/resolv.conf";

/// The DNS servers containers on the engine use, read as Docker reads them.
pub fn host_nameservers() -> Vec<Ipv4Addr> {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    choose_nameservers(&read("/etc/resolv.conf"), || read(RESOLVED_UPSTREAMS))
}

/// `/etc/resolv.conf`'s servers, unless they are all loopback (a local stub resolver that
/// containers cannot reach): then systemd-resolved's upstreams.
fn choose_nameservers(resolv_conf: &str, upstreams: impl FnOnce() -> String) -> Vec<Ipv4Addr> {
    let listed = parse_nameservers(resolv_conf);
    if listed.iter().all(Ipv4Addr::is_loopback) {
        parse_nameservers(&upstreams())
    } else {
        listed
    }
}

/// The nameservers in `/etc/resolv.conf` text.
pub fn parse_nameservers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse().ok())
        .collect()
}

/// The subnets a rule set names: `subnet`, and `pool` unless it already holds it.
pub fn engine_subnets(subnet: Ipv4Net, pool: Ipv4Net) -> Vec<Ipv4Net> {
    if pool.contains(&subnet) {
        vec![pool.trunc()]
    } else {
        vec![subnet.trunc(), pool.trunc()]
    }
}

const ESTABLISHED: &[&str] = &["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"];

fn private_dns_rules(settings: &FirewallSettings) -> Vec<Vec<String>> {
    let mut rules = Vec::new();
    for nameserver in settings.nameservers.iter().filter(|ns| is_blocked(**ns)) {
        let address = format!("{nameserver}/32");
        for protocol in ["udp", "tcp"] {
            // Spelled with `-m PROTO` as `iptables -S` prints it, so the listing compares equal.
            rules.push(words(&[
                "-d", &address, "-p", protocol, "-m", protocol, "--dport", "53", "-j", "RETURN",
            ]));
        }
    }
    rules
}

/// Everything cubbi installs for `settings`.
pub fn rule_set(settings: &FirewallSettings) -> RuleSet {
    let bridges = format!("{}+", settings.bridge);
    let nat_chain = format!("{NAT_PREFIX}{}", settings.bridge);
    let forward_chain = format!("{FORWARD_PREFIX}{}", settings.bridge);
    let egress_chain = format!("{EGRESS_PREFIX}{}", settings.bridge);
    let input_chain = format!("{INPUT_PREFIX}{}", settings.bridge);
    let v6_chain = format!("{V6_PREFIX}{}", settings.bridge);
    let mut chains = Vec::new();
    let mut hooks = Vec::new();

    chains.push(Chain {
        family: Family::V4,
        table: "nat",
        name: nat_chain.clone(),
        rules: settings
            .subnets
            .iter()
            .map(|subnet| {
                words(&[
                    "-s",
                    &subnet.to_string(),
                    "!",
                    "-o",
                    &bridges,
                    "-j",
                    "MASQUERADE",
                ])
            })
            .collect(),
    });
    hooks.push(Hook {
        family: Family::V4,
        table: "nat",
        builtin: "POSTROUTING",
        rule: words(&["-j", &nat_chain]),
    });

    if settings.egress_guard {
        let mut egress = vec![words(&[ESTABLISHED, &["-j", "RETURN"]].concat())];
        // Sessions talk to each other (br_netfilter sends bridged traffic through FORWARD).
        for subnet in &settings.subnets {
            egress.push(words(&["-d", &subnet.to_string(), "-j", "RETURN"]));
        }
        egress.extend(private_dns_rules(settings));
        for blocked in BLOCKED {
            egress.push(words(&[
                "-d",
                blocked,
                "-j",
                "REJECT",
                "--reject-with",
                "icmp-net-prohibited",
            ]));
        }
        egress.push(words(&["-j", "RETURN"]));
        chains.push(Chain {
            family: Family::V4,
            table: "filter",
            name: egress_chain.clone(),
            rules: egress,
        });

        let mut input = vec![words(&[ESTABLISHED, &["-j", "RETURN"]].concat())];
        input.extend(private_dns_rules(settings));
        // A refused connection fails at once instead of timing out.
        input.push(words(&[
            "-p",
            "tcp",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ]));
        input.push(words(&[
            "-j",
            "REJECT",
            "--reject-with",
            "icmp-port-unreachable",
        ]));
        chains.push(Chain {
            family: Family::V4,
            table: "filter",
            name: input_chain.clone(),
            rules: input,
        });
        hooks.push(Hook {
            family: Family::V4,
            table: "filter",
            builtin: "INPUT",
            rule: words(&["-i", &bridges, "-j", &input_chain]),
        });
    }

    let mut forward = Vec::new();
    if settings.egress_guard {
        forward.push(words(&["-i", &bridges, "-j", &egress_chain]));
    }
    forward.push(words(&["-i", &bridges, "-j", "ACCEPT"]));
    forward.push(words(
        &[&["-o", bridges.as_str()], ESTABLISHED, &["-j", "ACCEPT"]].concat(),
    ));
    chains.push(Chain {
        family: Family::V4,
        table: "filter",
        name: forward_chain.clone(),
        rules: forward,
    });
    hooks.push(Hook {
        family: Family::V4,
        table: "filter",
        builtin: "FORWARD",
        rule: words(&["-j", &forward_chain]),
    });

    if settings.egress_guard && settings.ipv6 {
        chains.push(Chain {
            family: Family::V6,
            table: "filter",
            name: v6_chain.clone(),
            rules: vec![
                words(&[ESTABLISHED, &["-j", "RETURN"]].concat()),
                words(&["-j", "REJECT", "--reject-with", "icmp6-adm-prohibited"]),
            ],
        });
        for builtin in ["INPUT", "FORWARD"] {
            hooks.push(Hook {
                family: Family::V6,
                table: "filter",
                builtin,
                rule: words(&["-i", &bridges, "-j", &v6_chain]),
            });
        }
    }
    RuleSet { chains, hooks }
}

/// One iptables call and whether its failure matters.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Call {
    program: &'static str,
    args: Vec<String>,
    /// `-N` of an existing chain, `-X` of a missing one: fine.
    may_fail: bool,
}

fn call(family: Family, table: &str, args: &[&str], may_fail: bool) -> Call {
    let mut all = words(&["-w", "-t", table]);
    all.extend(words(args));
    Call {
        program: family.program(),
        args: all,
        may_fail,
    }
}

fn hook_call(hook: &Hook, verb: &str) -> Call {
    let mut args = vec![verb, hook.builtin];
    args.extend(hook.rule.iter().map(String::as_str));
    call(hook.family, hook.table, &args, false)
}

impl RuleSet {
    /// Chains first (a rule may jump to a chain defined after it), then their rules.
    fn fill_calls(&self) -> Vec<Call> {
        let mut calls = Vec::new();
        for chain in &self.chains {
            calls.push(call(chain.family, chain.table, &["-N", &chain.name], true));
            calls.push(call(chain.family, chain.table, &["-F", &chain.name], false));
        }
        for chain in &self.chains {
            for rule in &chain.rules {
                let mut args = vec!["-A", chain.name.as_str()];
                args.extend(rule.iter().map(String::as_str));
                calls.push(call(chain.family, chain.table, &args, false));
            }
        }
        calls
    }

    fn drop_calls(&self) -> Vec<Call> {
        let flush = self
            .chains
            .iter()
            .map(|chain| call(chain.family, chain.table, &["-F", &chain.name], true));
        let delete = self
            .chains
            .iter()
            .map(|chain| call(chain.family, chain.table, &["-X", &chain.name], true));
        flush.chain(delete).collect()
    }

    /// Builds every chain and hooks it in, leaving hooks already there alone.
    pub fn install(&self, runner: &dyn CommandRunner) -> Result<(), CommandError> {
        run_all(runner, &self.fill_calls())?;
        for hook in &self.hooks {
            if !hook_present(runner, hook) {
                let insert = hook_call(hook, "-I");
                let args: Vec<&str> = insert.args.iter().map(String::as_str).collect();
                runner.run(insert.program, &args)?;
            }
        }
        Ok(())
    }

    /// Installs this set and removes what `superset` has beyond it (the guard's chains and hooks
    /// when the guard is turned off), with no moment without rules in between.
    pub fn replace(
        &self,
        superset: &RuleSet,
        runner: &dyn CommandRunner,
    ) -> Result<(), CommandError> {
        self.install(runner)?;
        let stale = RuleSet {
            chains: superset
                .chains
                .iter()
                .filter(|chain| {
                    !self
                        .chains
                        .iter()
                        .any(|own| own.family == chain.family && own.name == chain.name)
                })
                .cloned()
                .collect(),
            hooks: superset
                .hooks
                .iter()
                .filter(|hook| !self.hooks.contains(hook))
                .cloned()
                .collect(),
        };
        stale.uninstall(runner)
    }

    /// Removes the hooks and the chains; absent pieces are fine.
    pub fn uninstall(&self, runner: &dyn CommandRunner) -> Result<(), CommandError> {
        for hook in &self.hooks {
            // Bounded: a jump added twice by hand goes too, but a broken iptables cannot loop us.
            for _ in 0..8 {
                if !hook_present(runner, hook) {
                    break;
                }
                let delete = hook_call(hook, "-D");
                let args: Vec<&str> = delete.args.iter().map(String::as_str).collect();
                runner.run(delete.program, &args)?;
            }
        }
        run_all(runner, &self.drop_calls())
    }

    /// Whether every chain holds exactly its rules and every hook is in place.
    pub fn is_installed(&self, runner: &dyn CommandRunner) -> bool {
        self.chains.iter().all(|chain| {
            let program = chain.family.program();
            runner
                .output(program, &["-w", "-t", chain.table, "-S", &chain.name])
                .is_ok_and(|out| {
                    out.success && normalize(&out.stdout) == normalize(&expected_listing(chain))
                })
        }) && self.hooks.iter().all(|hook| hook_present(runner, hook))
    }

    /// A shell script with `up` and `down` doing what [`install`](Self::install) and
    /// [`uninstall`](Self::uninstall) do, for the unit and the supervised engine to run at start.
    /// `down` takes away everything `teardown` names (the guarded set), so it also clears a guard
    /// that was turned off.
    pub fn script(&self, bridge: &str, teardown: &RuleSet) -> String {
        let line = |call: &Call| {
            let mut text = call.program.to_string();
            for arg in &call.args {
                text.push(' ');
                text.push_str(&shell_quote(arg));
            }
            if call.may_fail {
                text.push_str(" 2>/dev/null || true");
            }
            text
        };
        let mut up = Vec::new();
        for fill in self.fill_calls() {
            up.push(line(&fill));
        }
        for hook in &self.hooks {
            let check = line(&hook_call(hook, "-C"));
            let insert = line(&hook_call(hook, "-I"));
            up.push(format!("{check} 2>/dev/null || {insert}"));
        }
        let mut down = Vec::new();
        for hook in &teardown.hooks {
            down.push(format!(
                "while {} 2>/dev/null; do :; done",
                line(&hook_call(hook, "-D"))
            ));
        }
        for drop in teardown.drop_calls() {
            down.push(line(&drop));
        }
        let indent = |lines: Vec<String>| {
            lines
                .iter()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        };
        format!(
            "#!/bin/sh\n\
             # cubbi's firewall for the dedicated Docker engine (bridges {bridge}+), whose dockerd\n\
             # runs with \"iptables\": false. Written by `cubbi setup`, run before dockerd starts;\n\
             # `cubbi setup --uninstall` runs `down`. Edits are overwritten by setup.\n\
             set -e\n\
             up() {{\n{}}}\n\
             down() {{\n{}}}\n\
             case \"$1\" in\n    up) up ;;\n    down) down ;;\n    \
             *) echo \"usage: $0 up|down\" >&2; exit 2 ;;\nesac\n",
            indent(up),
            indent(down),
        )
    }
}

fn run_all(runner: &dyn CommandRunner, calls: &[Call]) -> Result<(), CommandError> {
    for call in calls {
        let args: Vec<&str> = call.args.iter().map(String::as_str).collect();
        if call.may_fail {
            let _ = runner.output(call.program, &args)?;
        } else {
            runner.run(call.program, &args)?;
        }
    }
    Ok(())
}

fn hook_present(runner: &dyn CommandRunner, hook: &Hook) -> bool {
    let check = hook_call(hook, "-C");
    let args: Vec<&str> = check.args.iter().map(String::as_str).collect();
    runner
        .output(check.program, &args)
        .is_ok_and(|out| out.success)
}

fn shell_quote(word: &str) -> String {
    let plain = word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./+,:=".contains(c));
    if plain && !word.is_empty() {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A chain as `iptables -S CHAIN` prints it.
pub fn expected_listing(chain: &Chain) -> String {
    std::iter::once(format!("-N {}", chain.name))
        .chain(
            chain
                .rules
                .iter()
                .map(|rule| format!("-A {} {}", chain.name, rule.join(" "))),
        )
        .collect::<Vec<_>>()
        .join("\n")
}

/// iptables prints `/32` and spacing slightly differently across versions; compare words,
/// ignoring a trailing `/32`.
fn normalize(listing: &str) -> Vec<String> {
    listing
        .split_whitespace()
        .map(|word| word.trim_end_matches("/32").to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::runner::fake::RecordingRunner;

    fn settings(egress_guard: bool) -> FirewallSettings {
        FirewallSettings {
            bridge: "cubbi0".into(),
            subnets: engine_subnets(
                "10.214.3.0/24".parse().unwrap(),
                "10.214.0.0/16".parse().unwrap(),
            ),
            nameservers: parse_nameservers(
                "# generated\nnameserver 192.168.1.1\nnameserver 1.1.1.1\nsearch lan\n",
            ),
            egress_guard,
            ipv6: true,
        }
    }

    fn listing(rules: &RuleSet, name: &str) -> String {
        let chain = rules.chains.iter().find(|c| c.name == name).unwrap();
        expected_listing(chain)
    }

    #[test]
    fn nameservers_come_from_resolv_conf() {
        assert_eq!(
            settings(true).nameservers,
            [Ipv4Addr::new(192, 168, 1, 1), Ipv4Addr::new(1, 1, 1, 1)]
        );
        assert!(parse_nameservers("nameserver ::1\n").is_empty());
    }

    #[test]
    fn a_local_stub_resolver_gives_way_to_its_upstreams() {
        let stub = "nameserver 127.0.0.53\noptions edns0\n";
        let upstreams = || "nameserver 192.168.1.1\n".to_string();
        assert_eq!(
            choose_nameservers(stub, upstreams),
            [Ipv4Addr::new(192, 168, 1, 1)]
        );
        let lan = "nameserver 10.0.0.2\n";
        assert_eq!(
            choose_nameservers(lan, || panic!("not read")),
            [Ipv4Addr::new(10, 0, 0, 2)]
        );
    }

    #[test]
    fn subnets_outside_the_pool_are_named_too() {
        let pool: Ipv4Net = "10.214.0.0/16".parse().unwrap();
        assert_eq!(
            engine_subnets("10.214.9.0/24".parse().unwrap(), pool),
            [pool]
        );
        assert_eq!(
            engine_subnets("192.168.77.0/24".parse().unwrap(), pool).len(),
            2
        );
    }

    #[test]
    fn nat_and_forwarding_match_the_bridges_by_interface() {
        let rules = rule_set(&settings(false));
        assert_eq!(
            listing(&rules, "CUBBI-NAT-cubbi0"),
            "-N CUBBI-NAT-cubbi0\n\
             -A CUBBI-NAT-cubbi0 -s 10.214.0.0/16 ! -o cubbi0+ -j MASQUERADE"
        );
        assert_eq!(
            listing(&rules, "CUBBI-FWD-cubbi0"),
            "-N CUBBI-FWD-cubbi0\n\
             -A CUBBI-FWD-cubbi0 -i cubbi0+ -j ACCEPT\n\
             -A CUBBI-FWD-cubbi0 -o cubbi0+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        );
        assert_eq!(rules.chains.len(), 2, "no guard chains without the guard");
        let hooks: Vec<String> = rules
            .hooks
            .iter()
            .map(|h| format!("{} {} {}", h.table, h.builtin, h.rule.join(" ")))
            .collect();
        assert_eq!(
            hooks,
            [
                "nat POSTROUTING -j CUBBI-NAT-cubbi0",
                "filter FORWARD -j CUBBI-FWD-cubbi0"
            ]
        );
    }

    #[test]
    fn the_guard_blocks_private_ranges_the_host_itself_and_ipv6() {
        let rules = rule_set(&settings(true));
        assert_eq!(
            listing(&rules, "CUBBI-EGRESS-cubbi0"),
            "-N CUBBI-EGRESS-cubbi0\n\
             -A CUBBI-EGRESS-cubbi0 -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n\
             -A CUBBI-EGRESS-cubbi0 -d 10.214.0.0/16 -j RETURN\n\
             -A CUBBI-EGRESS-cubbi0 -d 192.168.1.1/32 -p udp -m udp --dport 53 -j RETURN\n\
             -A CUBBI-EGRESS-cubbi0 -d 192.168.1.1/32 -p tcp -m tcp --dport 53 -j RETURN\n\
             -A CUBBI-EGRESS-cubbi0 -d 10.0.0.0/8 -j REJECT --reject-with icmp-net-prohibited\n\
             -A CUBBI-EGRESS-cubbi0 -d 172.16.0.0/12 -j REJECT --reject-with icmp-net-prohibited\n\
             -A CUBBI-EGRESS-cubbi0 -d 192.168.0.0/16 -j REJECT --reject-with icmp-net-prohibited\n\
             -A CUBBI-EGRESS-cubbi0 -d 169.254.0.0/16 -j REJECT --reject-with icmp-net-prohibited\n\
             -A CUBBI-EGRESS-cubbi0 -j RETURN"
        );
        let input = listing(&rules, "CUBBI-INPUT-cubbi0");
        assert!(input.ends_with(
            "-A CUBBI-INPUT-cubbi0 -p tcp -j REJECT --reject-with tcp-reset\n\
             -A CUBBI-INPUT-cubbi0 -j REJECT --reject-with icmp-port-unreachable"
        ));
        assert!(input.contains("-d 192.168.1.1/32 -p udp -m udp --dport 53 -j RETURN"));
        assert!(listing(&rules, "CUBBI-FWD-cubbi0").contains(
            "-A CUBBI-FWD-cubbi0 -i cubbi0+ -j CUBBI-EGRESS-cubbi0\n-A CUBBI-FWD-cubbi0 -i cubbi0+ -j ACCEPT"
        ));
        let v6: Vec<&Hook> = rules
            .hooks
            .iter()
            .filter(|h| h.family == Family::V6)
            .collect();
        assert_eq!(v6.len(), 2);
        assert!(is_blocked("169.254.169.254".parse().unwrap()));
        assert!(!is_blocked("1.1.1.1".parse().unwrap()));
        let without_v6 = rule_set(&FirewallSettings {
            ipv6: false,
            ..settings(true)
        });
        assert!(without_v6.hooks.iter().all(|h| h.family == Family::V4));
    }

    #[test]
    fn install_fills_chains_before_hooking_them_once() {
        let runner = RecordingRunner::default().answering("iptables -w -t filter -C", false, "");
        let rules = rule_set(&settings(true));
        rules.install(&runner).unwrap();
        let commands = runner.commands();
        assert_eq!(commands[0], "iptables -w -t nat -N CUBBI-NAT-cubbi0");
        let first_insert = commands.iter().position(|c| c.contains(" -I ")).unwrap();
        let last_append = commands.iter().rposition(|c| c.contains(" -A ")).unwrap();
        assert!(last_append < first_insert, "{commands:#?}");
        assert!(
            commands.contains(
                &"iptables -w -t filter -I INPUT -i cubbi0+ -j CUBBI-INPUT-cubbi0".into()
            )
        );
        assert!(
            commands
                .iter()
                .all(|c| !c.contains("docker0") && !c.contains("DOCKER"))
        );
    }

    #[test]
    fn installed_only_when_every_listing_and_hook_match() {
        let rules = rule_set(&settings(false));
        let mut runner = RecordingRunner::default();
        for chain in &rules.chains {
            runner = runner.answering(
                &format!("iptables -w -t {} -S {}", chain.table, chain.name),
                true,
                &expected_listing(chain).replace("/32", ""),
            );
        }
        assert!(rules.is_installed(&runner));
        let unhooked = runner.answering("iptables -w -t nat -C POSTROUTING", false, "");
        assert!(!rules.is_installed(&unhooked));
        let drifted = RecordingRunner::default().answering(
            "iptables -w -t nat -S",
            true,
            "-N CUBBI-NAT-cubbi0\n",
        );
        assert!(!rules.is_installed(&drifted));
    }

    #[test]
    fn uninstall_unhooks_then_drops_every_chain() {
        let rules = rule_set(&settings(true));
        let runner = RecordingRunner::default()
            .answering("iptables -w -t filter -C FORWARD", false, "")
            .answering("iptables -w -t filter -C INPUT", true, "");
        rules.uninstall(&runner).unwrap();
        let commands = runner.commands();
        assert!(
            commands
                .iter()
                .all(|c| !c.starts_with("iptables -w -t filter -D FORWARD"))
        );
        assert_eq!(
            commands
                .iter()
                .filter(|c| *c == "iptables -w -t filter -D INPUT -i cubbi0+ -j CUBBI-INPUT-cubbi0")
                .count(),
            8,
            "bounded removal of a hook that never goes away"
        );
        assert_eq!(
            commands.last().map(String::as_str),
            Some("ip6tables -w -t filter -X CUBBI-V6-cubbi0")
        );
    }

    #[test]
    fn turning_the_guard_off_removes_only_the_guard() {
        let runner = RecordingRunner::default();
        rule_set(&settings(false))
            .replace(&rule_set(&settings(true)), &runner)
            .unwrap();
        let commands = runner.commands();
        for gone in [
            "iptables -w -t filter -D INPUT -i cubbi0+ -j CUBBI-INPUT-cubbi0",
            "iptables -w -t filter -X CUBBI-INPUT-cubbi0",
            "iptables -w -t filter -X CUBBI-EGRESS-cubbi0",
            "ip6tables -w -t filter -X CUBBI-V6-cubbi0",
        ] {
            assert!(commands.iter().any(|c| c == gone), "{gone}: {commands:#?}");
        }
        for kept in [
            "-X CUBBI-FWD-cubbi0",
            "-X CUBBI-NAT-cubbi0",
            "-D FORWARD -j",
            "-D POSTROUTING",
        ] {
            assert!(commands.iter().all(|c| !c.contains(kept)), "{kept}");
        }
    }

    #[test]
    fn the_script_does_the_same_and_quotes_nothing_it_need_not() {
        let rules = rule_set(&settings(true));
        let script = rules.script("cubbi0", &rules);
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains(
            "    iptables -w -t filter -C INPUT -i cubbi0+ -j CUBBI-INPUT-cubbi0 2>/dev/null || \
             iptables -w -t filter -I INPUT -i cubbi0+ -j CUBBI-INPUT-cubbi0\n"
        ));
        assert!(script.contains("iptables -w -t nat -N CUBBI-NAT-cubbi0 2>/dev/null || true"));
        assert!(script.contains(
            "while iptables -w -t nat -D POSTROUTING -j CUBBI-NAT-cubbi0 2>/dev/null; do :; done"
        ));
        assert!(script.contains("'!'"), "anything but plain words is quoted");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
