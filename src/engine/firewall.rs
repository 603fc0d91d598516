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
//! - `filter CUBBI-FWD-<bridge>`: traffic within one bridge (sessions of one network) passes,
//!   traffic routed from one of the engine's bridges to another (a session reaching another
//!   owner's network) is rejected, the bridges' other traffic goes through the egress guard and out,
//!   replies come back in, and every other packet forwarded INTO a bridge is dropped (a LAN
//!   neighbour routing the engine's subnets via this host reaches no session, whatever FORWARD's
//!   policy).
//! - the egress guard (on by default): `CUBBI-EGRESS-<bridge>` rejects private networks,
//!   carrier-grade NAT (Tailscale; one cloud's metadata at 100.100.100.200), link-local and the
//!   cloud metadata and host endpoints for forwarded traffic; `CUBBI-INPUT-<bridge>` rejects every
//!   new connection from a session to the machine itself (its gateway, its LAN and VPN
//!   addresses); `ip6tables CUBBI-V6-<bridge>` rejects ALL IPv6 from the bridges, forwarded or to
//!   the host (the engine gives sessions no IPv6, but link-local reaches the host), which covers
//!   fc00::/7 and fe80::/10 and everything else.
//!
//! Rules match interfaces, never source addresses a session could forge: every bridge of the
//! engine is named with the engine bridge's prefix (`cubbi0`, then `cubbi0` plus a hash of the
//! network's name, see `local::naming`), so `-i cubbi0+` covers them all.
//!
//! [`RuleSet`] is the one model. It renders, per family, ONE `iptables-restore --noflush`
//! payload that declares (creating or flushing) and fills every chain, hooks each chain in
//! exactly once and takes away what a smaller set no longer has, committed per table at once:
//! there is no moment without rules. Setup applies it through [`CommandRunner`] (stdin); the
//! script the unit (or `cubbi engine start`) runs before dockerd embeds the same payload text;
//! "is it installed" parses `iptables -S` and compares it with the payload's chains.

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

/// Destinations sessions may not reach: RFC 1918, carrier-grade NAT (Tailscale and other VPNs,
/// one cloud's metadata at 100.100.100.200), link-local (which holds 169.254.169.254) and
/// another cloud's host endpoint.
pub const BLOCKED: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "168.63.129.16/32",
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

    pub fn restore_program(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    /// The tables cubbi's chains live in.
    fn tables(self) -> &'static [&'static str] {
        match self {
            Family::V4 => TABLES,
            Family::V6 => &["filter"],
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

/// cubbi's egress resolver (`crate::egress`) answers restricted sessions on this port of the
/// host; their DNS reaches it only redirected by the egress table (conntrack state DNAT), so a
/// session cannot knock on it directly.
fn egress_resolver_rules() -> Vec<Vec<String>> {
    let port = crate::egress::nft::RESOLVER_PORT.to_string();
    ["udp", "tcp"]
        .iter()
        .map(|protocol| {
            words(&[
                "-p",
                protocol,
                "-m",
                "conntrack",
                "--ctstate",
                "DNAT",
                "-m",
                protocol,
                "--dport",
                &port,
                "-j",
                "RETURN",
            ])
        })
        .collect()
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
        input.extend(egress_resolver_rules());
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

    // Sessions on one network talk to each other: switched within its bridge (br_netfilter
    // sends that through FORWARD, marked as bridged). Anything routed from one of the engine's
    // bridges to another crosses networks, i.e. owners: refused, whatever the addresses.
    let mut forward = vec![
        words(&[
            "-i",
            &bridges,
            "-o",
            &bridges,
            "-m",
            "physdev",
            "--physdev-is-bridged",
            "-j",
            "ACCEPT",
        ]),
        words(&[
            "-i",
            &bridges,
            "-o",
            &bridges,
            "-j",
            "REJECT",
            "--reject-with",
            "icmp-net-prohibited",
        ]),
    ];
    if settings.egress_guard {
        forward.push(words(&["-i", &bridges, "-j", &egress_chain]));
    }
    forward.push(words(&["-i", &bridges, "-j", "ACCEPT"]));
    forward.push(words(
        &[&["-o", bridges.as_str()], ESTABLISHED, &["-j", "ACCEPT"]].concat(),
    ));
    // Nothing else goes into the bridges: with dockerd's iptables off, FORWARD's policy (often
    // ACCEPT) would otherwise let a neighbour routing the engine's subnets reach every session.
    forward.push(words(&["-o", &bridges, "-j", "DROP"]));
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
        // No exceptions (no RETURN for a ULA fc00::/7 or link-local fe80::/10 DNS server):
        // sessions have no IPv6, so everything but replies is refused.
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

/// One part of a restore payload: fixed text, or a hook whose lines depend on how often the
/// jump is already in its built-in chain (read just before the payload is applied).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece<'a> {
    Text(String),
    /// Exactly one copy of the jump: inserted when missing, extra copies deleted.
    Ensure(&'a Hook),
    /// No copy of the jump left.
    Remove(&'a Hook),
}

/// Tables in the order a payload names them.
const TABLES: &[&str] = &["nat", "filter"];

impl Hook {
    fn rule_text(&self) -> String {
        self.rule.join(" ")
    }

    /// What [`Piece::Ensure`] / [`Piece::Remove`] become when the jump is there `count` times.
    fn lines(&self, ensure: bool, count: usize) -> Vec<String> {
        let delete = format!("-D {} {}", self.builtin, self.rule_text());
        if ensure {
            if count == 0 {
                vec![format!("-I {} {}", self.builtin, self.rule_text())]
            } else {
                vec![delete; count - 1]
            }
        } else {
            vec![delete; count]
        }
    }
}

impl RuleSet {
    /// The families this set (or the stale part of `teardown`) touches.
    fn families(&self, teardown: &RuleSet) -> Vec<Family> {
        [Family::V4, Family::V6]
            .into_iter()
            .filter(|family| {
                self.chains
                    .iter()
                    .chain(&teardown.chains)
                    .any(|c| c.family == *family)
                    || self
                        .hooks
                        .iter()
                        .chain(&teardown.hooks)
                        .any(|h| h.family == *family)
            })
            .collect()
    }

    fn has_chain(&self, chain: &Chain) -> bool {
        self.chains.iter().any(|own| {
            own.family == chain.family && own.table == chain.table && own.name == chain.name
        })
    }

    /// The restore payload for `family` that leaves exactly this set in place: every chain
    /// declared (which creates it, or flushes it when it exists) and filled, every hook there
    /// once, and whatever `teardown` has beyond this set (the guard, when it is turned off)
    /// unhooked and deleted. One `COMMIT` per table: nothing is ever half-applied.
    fn pieces<'a>(&'a self, family: Family, teardown: &'a RuleSet) -> Vec<Piece<'a>> {
        let stale_chains: Vec<&Chain> = teardown
            .chains
            .iter()
            .filter(|chain| chain.family == family && !self.has_chain(chain))
            .collect();
        let mut pieces = Vec::new();
        for table in TABLES {
            let own: Vec<&Chain> = self
                .chains
                .iter()
                .filter(|c| c.family == family && c.table == *table)
                .collect();
            let stale: Vec<&Chain> = stale_chains
                .iter()
                .copied()
                .filter(|c| c.table == *table)
                .collect();
            let own_hooks: Vec<&Hook> = self
                .hooks
                .iter()
                .filter(|h| h.family == family && h.table == *table)
                .collect();
            let stale_hooks: Vec<&Hook> = teardown
                .hooks
                .iter()
                .filter(|h| h.family == family && h.table == *table && !self.hooks.contains(h))
                .collect();
            if own.is_empty() && stale.is_empty() && own_hooks.is_empty() && stale_hooks.is_empty()
            {
                continue;
            }
            let mut text = format!("*{table}\n");
            for chain in own.iter().chain(&stale) {
                text.push_str(&format!(":{} - [0:0]\n", chain.name));
            }
            for chain in &own {
                for rule in &chain.rules {
                    text.push_str(&format!("-A {} {}\n", chain.name, rule.join(" ")));
                }
            }
            pieces.push(Piece::Text(text));
            pieces.extend(stale_hooks.into_iter().map(Piece::Remove));
            pieces.extend(own_hooks.into_iter().map(Piece::Ensure));
            let mut tail = String::new();
            for chain in &stale {
                tail.push_str(&format!("-X {}\n", chain.name));
            }
            tail.push_str("COMMIT\n");
            pieces.push(Piece::Text(tail));
        }
        pieces
    }

    /// The payload taking this whole set away: hooks deleted, chains flushed and deleted.
    fn removal_pieces(&self, family: Family) -> Vec<Piece<'_>> {
        NOTHING.pieces(family, self)
    }

    /// The chains' part of the payload (`:CHAIN` and `-A` lines), which is what `iptables -S`
    /// must list for the set to count as installed.
    fn model_listing(&self, family: Family, table: &str) -> Listing {
        let text: String = self
            .pieces(family, self)
            .iter()
            .filter_map(|piece| match piece {
                Piece::Text(text) if text.starts_with(&format!("*{table}\n")) => Some(text.clone()),
                _ => None,
            })
            .collect();
        Listing::parse(&text)
    }

    /// Renders pieces with the hooks resolved against the live tables.
    fn render(pieces: &[Piece<'_>], live: &LiveTables) -> String {
        let mut payload = String::new();
        for piece in pieces {
            let (hook, ensure) = match piece {
                Piece::Text(text) => {
                    payload.push_str(text);
                    continue;
                }
                Piece::Ensure(hook) => (hook, true),
                Piece::Remove(hook) => (hook, false),
            };
            let count = live.count(hook);
            for line in hook.lines(ensure, count) {
                payload.push_str(&line);
                payload.push('\n');
            }
        }
        payload
    }

    /// The `iptables-restore --noflush` payload for `family` given the live tables (exposed for
    /// tests and `--dry-run`-style inspection).
    pub fn payload(&self, family: Family, teardown: &RuleSet, live: &LiveTables) -> String {
        Self::render(&self.pieces(family, teardown), live)
    }

    /// Puts exactly this set in place and takes away what `teardown` has beyond it: per family,
    /// the live tables are read once and ONE `iptables-restore --noflush` applies everything.
    pub fn apply(
        &self,
        teardown: &RuleSet,
        runner: &dyn CommandRunner,
    ) -> Result<(), CommandError> {
        for family in self.families(teardown) {
            let live = LiveTables::read(runner, family)?;
            restore(runner, family, &self.payload(family, teardown, &live))?;
        }
        Ok(())
    }

    /// [`apply`](Self::apply) with nothing extra to take away.
    pub fn install(&self, runner: &dyn CommandRunner) -> Result<(), CommandError> {
        self.apply(self, runner)
    }

    /// Removes the hooks and the chains (absent pieces are fine), one restore per family.
    pub fn uninstall(&self, runner: &dyn CommandRunner) -> Result<(), CommandError> {
        for family in NOTHING.families(self) {
            let live = LiveTables::read(runner, family)?;
            let payload = Self::render(&self.removal_pieces(family), &live);
            restore(runner, family, &payload)?;
        }
        Ok(())
    }

    /// Whether every chain lists exactly the payload's rules and every hook is there once,
    /// compared against the live `iptables -S` of each table.
    pub fn is_installed(&self, runner: &dyn CommandRunner) -> bool {
        self.families(self).into_iter().all(|family| {
            let Ok(live) = LiveTables::read(runner, family) else {
                return false;
            };
            self.differences(family, &live).is_empty()
        })
    }

    /// What differs between the live tables and this set, one line each (empty: installed).
    pub fn differences(&self, family: Family, live: &LiveTables) -> Vec<String> {
        let mut differences = Vec::new();
        for table in TABLES {
            let model = self.model_listing(family, table);
            let actual = live.table(table);
            for (name, rules) in &model.chains {
                match actual.and_then(|listing| listing.chains.get(name)) {
                    None => differences.push(format!("chain {name} is missing")),
                    Some(found) if found != rules => {
                        differences.push(format!("chain {name} holds other rules"))
                    }
                    Some(_) => {}
                }
            }
        }
        for hook in self.hooks.iter().filter(|h| h.family == family) {
            let count = live.count(hook);
            if count != 1 {
                differences.push(format!(
                    "{} {} has `{}` {count} times",
                    hook.table,
                    hook.builtin,
                    hook.rule_text()
                ));
            }
        }
        differences
    }

    /// A shell script with `up` and `down` applying the same payloads as
    /// [`apply`](Self::apply) and [`uninstall`](Self::uninstall), for the unit and the supervised
    /// engine to run before dockerd. The payload text is embedded as is; only the hook lines are
    /// decided when it runs, from `iptables -S` of the built-in chain. `down` takes away
    /// everything `teardown` names (the guarded set), so it also clears a guard that was turned
    /// off.
    pub fn script(&self, bridge: &str, teardown: &RuleSet) -> String {
        let up = shell_restores(
            self.families(teardown)
                .into_iter()
                .map(|family| (family, self.pieces(family, teardown)))
                .collect(),
        );
        let down = shell_restores(
            NOTHING
                .families(teardown)
                .into_iter()
                .map(|family| (family, teardown.removal_pieces(family)))
                .collect(),
        );
        format!(
            "#!/bin/sh\n\
             # cubbi's firewall for the dedicated Docker engine (bridges {bridge}+), whose dockerd\n\
             # runs with \"iptables\": false. Written by `cubbi setup`; the unit (or `cubbi engine\n\
             # start`) runs `up` before dockerd and the engine does not start when it fails;\n\
             # `cubbi setup --uninstall` runs `down`. Each family's rules go in with ONE\n\
             # iptables-restore --noflush, so there is no moment without them. Edits are\n\
             # overwritten by setup.\n\
             set -e\n\
             # How often `-A CHAIN RULE` is in a built-in chain.\n\
             hooked() {{\n    \
                 program=$1 table=$2 chain=$3\n    \
                 shift 3\n    \
                 \"$program\" -w -t \"$table\" -S \"$chain\" | grep -cxF -e \"-A $chain $*\" || true\n\
             }}\n\
             # Payload lines leaving the jump there exactly once.\n\
             ensure() {{\n    \
                 count=$(hooked \"$@\")\n    \
                 chain=$3\n    \
                 shift 3\n    \
                 if [ \"$count\" -eq 0 ]; then echo \"-I $chain $*\"; fi\n    \
                 while [ \"$count\" -gt 1 ]; do echo \"-D $chain $*\"; count=$((count - 1)); done\n\
             }}\n\
             # Payload lines taking every copy of the jump away.\n\
             remove() {{\n    \
                 count=$(hooked \"$@\")\n    \
                 chain=$3\n    \
                 shift 3\n    \
                 while [ \"$count\" -gt 0 ]; do echo \"-D $chain $*\"; count=$((count - 1)); done\n\
             }}\n\
             need() {{\n    \
                 command -v \"$1\" >/dev/null 2>&1 || {{\n        \
                     echo \"cubbi firewall: $1 is not installed (apt-get install iptables); the engine does not start without its firewall\" >&2\n        \
                     exit 1\n    \
                 }}\n\
             }}\n\
             up() {{\n{}{}}}\n\
             down() {{\n{}{}}}\n\
             case \"$1\" in\n    up) up ;;\n    down) down ;;\n    \
             *) echo \"usage: $0 up|down\" >&2; exit 2 ;;\nesac\n",
            needs(&self.families(teardown)),
            up,
            needs(&NOTHING.families(teardown)),
            down,
        )
    }
}

/// The script written when iptables is missing and the guard was explicitly turned off: the
/// unit requires a script, and this one says what is missing.
pub fn without_iptables_script(bridge: &str) -> String {
    format!(
        "#!/bin/sh\n\
         # cubbi's firewall for the dedicated Docker engine (bridges {bridge}+). iptables was not\n\
         # installed at setup and the egress guard was turned off (--no-egress-guard), so there\n\
         # are no rules: sessions get no NAT. Install iptables and run `cubbi setup` again.\n\
         case \"$1\" in\n    \
         up) echo \"cubbi firewall: no iptables and the egress guard is off: sessions get no NAT\" >&2 ;;\n    \
         down) ;;\n    \
         *) echo \"usage: $0 up|down\" >&2; exit 2 ;;\nesac\n"
    )
}

/// A set with nothing in it: applying it with a teardown takes the teardown away.
static NOTHING: RuleSet = RuleSet {
    chains: Vec::new(),
    hooks: Vec::new(),
};

/// Each family's pieces as a block piped to its restore program: the text as heredocs, the
/// hooks as calls of the script's `ensure`/`remove`.
fn shell_restores(per_family: Vec<(Family, Vec<Piece<'_>>)>) -> String {
    let mut body = String::new();
    for (family, pieces) in per_family {
        body.push_str("    {\n");
        for piece in pieces {
            let (verb, hook) = match piece {
                Piece::Text(text) => {
                    body.push_str("        cat <<'CUBBI_RULES'\n");
                    body.push_str(&text);
                    body.push_str("CUBBI_RULES\n");
                    continue;
                }
                Piece::Ensure(hook) => ("ensure", hook),
                Piece::Remove(hook) => ("remove", hook),
            };
            let mut line = format!(
                "        {verb} {} {} {}",
                hook.family.program(),
                hook.table,
                hook.builtin
            );
            for word in &hook.rule {
                line.push(' ');
                line.push_str(&shell_quote(word));
            }
            body.push_str(&line);
            body.push('\n');
        }
        body.push_str(&format!(
            "    }} | {} -w --noflush\n",
            family.restore_program()
        ));
    }
    body
}

fn needs(families: &[Family]) -> String {
    families
        .iter()
        .map(|family| format!("    need {}\n", family.restore_program()))
        .collect()
}

fn restore(runner: &dyn CommandRunner, family: Family, payload: &str) -> Result<(), CommandError> {
    let program = family.restore_program();
    let args = ["-w", "--noflush"];
    let output = runner.output_with_input(program, &args, payload)?;
    super::runner::check(program, &args, output).map(|_| ())
}

/// A table's rules by chain, as `iptables -S` lists them or a payload declares them: words
/// normalised (iptables prints `/32` and spacing differently across versions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub chains: std::collections::BTreeMap<String, Vec<Vec<String>>>,
}

impl Listing {
    /// Reads `-N`/`-P`/`:CHAIN` (a chain) and `-A CHAIN RULE…` (its rules, in order).
    pub fn parse(text: &str) -> Self {
        let mut listing = Self::default();
        for line in text.lines() {
            let words: Vec<String> = line
                .split_whitespace()
                .map(|word| word.trim_end_matches("/32").to_string())
                .collect();
            match words.first().map(String::as_str) {
                Some("-N" | "-P") if words.len() >= 2 => {
                    listing.chains.entry(words[1].clone()).or_default();
                }
                Some(first) if first.starts_with(':') && first.len() > 1 => {
                    listing.chains.entry(first[1..].to_string()).or_default();
                }
                Some("-A") if words.len() >= 2 => {
                    listing
                        .chains
                        .entry(words[1].clone())
                        .or_default()
                        .push(words[2..].to_vec());
                }
                _ => {}
            }
        }
        listing
    }
}

/// The live `iptables -S` of every table a payload may touch, for one family.
#[derive(Debug, Clone, Default)]
pub struct LiveTables {
    tables: Vec<(&'static str, Listing)>,
}

impl LiveTables {
    pub fn read(runner: &dyn CommandRunner, family: Family) -> Result<Self, CommandError> {
        let mut tables = Vec::new();
        for table in family.tables() {
            let out = runner.run(family.program(), &["-w", "-t", table, "-S"])?;
            tables.push((*table, Listing::parse(&out.stdout)));
        }
        Ok(Self { tables })
    }

    /// From listings already read (tests).
    pub fn from_listings(tables: Vec<(&'static str, &str)>) -> Self {
        Self {
            tables: tables
                .into_iter()
                .map(|(table, text)| (table, Listing::parse(text)))
                .collect(),
        }
    }

    fn table(&self, table: &str) -> Option<&Listing> {
        self.tables
            .iter()
            .find(|(name, _)| *name == table)
            .map(|(_, listing)| listing)
    }

    /// How often the hook's jump is in its built-in chain.
    fn count(&self, hook: &Hook) -> usize {
        let wanted: Vec<String> = Listing::parse(&format!("-A X {}", hook.rule_text()))
            .chains
            .remove("X")
            .and_then(|mut rules| rules.pop())
            .unwrap_or_default();
        self.table(hook.table)
            .and_then(|listing| listing.chains.get(hook.builtin))
            .map_or(0, |rules| {
                rules.iter().filter(|rule| **rule == wanted).count()
            })
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::runner::fake::RecordingRunner;

    /// A chain as `iptables -S CHAIN` prints it.
    fn expected_listing(chain: &Chain) -> String {
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
             -A CUBBI-FWD-cubbi0 -i cubbi0+ -o cubbi0+ -m physdev --physdev-is-bridged -j ACCEPT\n\
             -A CUBBI-FWD-cubbi0 -i cubbi0+ -o cubbi0+ -j REJECT --reject-with icmp-net-prohibited\n\
             -A CUBBI-FWD-cubbi0 -i cubbi0+ -j ACCEPT\n\
             -A CUBBI-FWD-cubbi0 -o cubbi0+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             -A CUBBI-FWD-cubbi0 -o cubbi0+ -j DROP"
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
    fn new_connections_into_the_bridges_are_dropped_last_with_or_without_the_guard() {
        for guard in [false, true] {
            let rules = rule_set(&settings(guard));
            let forward = &rules
                .chains
                .iter()
                .find(|c| c.name == "CUBBI-FWD-cubbi0")
                .unwrap()
                .rules;
            assert_eq!(
                forward.last().unwrap().join(" "),
                "-o cubbi0+ -j DROP",
                "guard {guard}"
            );
            // Only replies get in before the DROP.
            let before_drop: Vec<String> = forward.iter().map(|r| r.join(" ")).collect();
            assert!(
                before_drop
                    .iter()
                    .filter(|r| r.contains("-o cubbi0+") && r.ends_with("ACCEPT"))
                    .all(
                        |r| r.contains("RELATED,ESTABLISHED") || r.contains("--physdev-is-bridged")
                    ),
                "{before_drop:?}"
            );
        }
    }

    #[test]
    fn bridges_are_isolated_from_each_other_guard_or_not() {
        for guard in [false, true] {
            let forward = listing(&rule_set(&settings(guard)), "CUBBI-FWD-cubbi0");
            let mut lines = forward.lines().skip(1);
            assert_eq!(
                lines.next(),
                Some(
                    "-A CUBBI-FWD-cubbi0 -i cubbi0+ -o cubbi0+ -m physdev --physdev-is-bridged -j ACCEPT"
                ),
                "guard {guard}: within one bridge first"
            );
            assert_eq!(
                lines.next(),
                Some(
                    "-A CUBBI-FWD-cubbi0 -i cubbi0+ -o cubbi0+ -j REJECT --reject-with icmp-net-prohibited"
                ),
                "guard {guard}: then nothing routed between bridges"
            );
        }
    }

    #[test]
    fn the_guard_blocks_private_ranges_the_host_itself_and_ipv6() {
        let rules = rule_set(&settings(true));
        assert_eq!(
            listing(&rules, "CUBBI-EGRESS-cubbi0"),
            "-N CUBBI-EGRESS-cubbi0\n\
             -A CUBBI-EGRESS-cubbi0 -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n\
             -A CUBBI-EGRESS-cubbi0 -d 192.168.1.1/32 -p udp -m udp --dport 53 -j RETURN\n\
             -A CUBBI-EGRESS-cubbi0 -d 192.168.1.1/32 -p tcp -m tcp --dport 53 -j RETURN\n\
             -A CUBBI-EGRESS-cubbi0 -d 10.0.0.0/8 -j REJECT --reject-with icmp-net-prohibited\n\
             -A CUBBI-EGRESS-cubbi0 -d 172.16.0.0/12 -j REJECT --reject-with icmp-net-prohibited\n\
             -A CUBBI-EGRESS-cubbi0 -d 192.168.0.0/16 -j REJECT --reject-with icmp-net-prohibited\n\
             -A CUBBI-EGRESS-cubbi0 -d 100.64.0.0/10 -j REJECT --reject-with icmp-net-prohibited\n\
             -A CUBBI-EGRESS-cubbi0 -d 169.254.0.0/16 -j REJECT --reject-with icmp-net-prohibited\n\
             -A CUBBI-EGRESS-cubbi0 -d 168.63.129.16/32 -j REJECT --reject-with icmp-net-prohibited\n\
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
        // IPv6: every destination (fc00::/7, fe80::/10 and all else) refused, to the host and
        // forwarded; only replies pass.
        assert_eq!(
            listing(&rules, "CUBBI-V6-cubbi0"),
            "-N CUBBI-V6-cubbi0\n\
             -A CUBBI-V6-cubbi0 -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n\
             -A CUBBI-V6-cubbi0 -j REJECT --reject-with icmp6-adm-prohibited"
        );
        let v6: Vec<String> = rules
            .hooks
            .iter()
            .filter(|h| h.family == Family::V6)
            .map(|h| format!("{} {}", h.builtin, h.rule.join(" ")))
            .collect();
        assert_eq!(
            v6,
            [
                "INPUT -i cubbi0+ -j CUBBI-V6-cubbi0",
                "FORWARD -i cubbi0+ -j CUBBI-V6-cubbi0"
            ]
        );
        for blocked in [
            "169.254.169.254",
            "100.100.100.200",
            "168.63.129.16",
            "10.214.9.9",
        ] {
            assert!(is_blocked(blocked.parse().unwrap()), "{blocked}");
        }
        assert!(!is_blocked("1.1.1.1".parse().unwrap()));
        assert!(!is_blocked("168.63.129.17".parse().unwrap()));
        let without_v6 = rule_set(&FirewallSettings {
            ipv6: false,
            ..settings(true)
        });
        assert!(without_v6.hooks.iter().all(|h| h.family == Family::V4));
    }

    #[test]
    fn the_pool_is_never_an_exception_of_the_guard() {
        let rules = rule_set(&settings(true));
        let egress = listing(&rules, "CUBBI-EGRESS-cubbi0");
        assert!(!egress.contains("10.214."), "{egress}");
        // A Tailscale resolver stays reachable on port 53 only.
        let tailscale = rule_set(&FirewallSettings {
            nameservers: vec![Ipv4Addr::new(100, 100, 100, 100)],
            ..settings(true)
        });
        assert!(
            listing(&tailscale, "CUBBI-EGRESS-cubbi0")
                .contains("-d 100.100.100.100/32 -p udp -m udp --dport 53 -j RETURN")
        );
    }

    const EMPTY_V4: &[(&str, &str)] = &[
        ("nat", "-P PREROUTING ACCEPT\n-P POSTROUTING ACCEPT\n"),
        (
            "filter",
            "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n",
        ),
    ];

    fn live(tables: &[(&'static str, &str)]) -> LiveTables {
        LiveTables::from_listings(tables.to_vec())
    }

    #[test]
    fn one_payload_declares_fills_and_hooks_every_chain() {
        let rules = rule_set(&settings(true));
        let payload = rules.payload(Family::V4, &rules, &live(EMPTY_V4));
        assert!(
            payload.starts_with("*nat\n:CUBBI-NAT-cubbi0 - [0:0]\n"),
            "{payload}"
        );
        assert_eq!(payload.matches("COMMIT\n").count(), 2, "{payload}");
        // Chains are declared (created, or flushed when they exist) before any rule or hook.
        let filter = &payload[payload.find("*filter").unwrap()..];
        let last_declaration = filter.rfind("\n:").unwrap();
        let first_rule = filter.find("\n-A ").unwrap();
        assert!(last_declaration < first_rule, "{filter}");
        let first_hook = filter.find("\n-I ").unwrap();
        assert!(filter.rfind("\n-A ").unwrap() < first_hook, "{filter}");
        for line in [
            "-I POSTROUTING -j CUBBI-NAT-cubbi0\nCOMMIT\n",
            "-I FORWARD -j CUBBI-FWD-cubbi0\n",
            "-I INPUT -i cubbi0+ -j CUBBI-INPUT-cubbi0\n",
        ] {
            assert!(payload.contains(line), "{line}: {payload}");
        }
        assert!(!payload.contains("docker0") && !payload.contains("DOCKER"));
        let v6 = rules.payload(Family::V6, &rules, &LiveTables::default());
        assert_eq!(
            v6,
            "*filter\n:CUBBI-V6-cubbi0 - [0:0]\n\
             -A CUBBI-V6-cubbi0 -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n\
             -A CUBBI-V6-cubbi0 -j REJECT --reject-with icmp6-adm-prohibited\n\
             -I INPUT -i cubbi0+ -j CUBBI-V6-cubbi0\n\
             -I FORWARD -i cubbi0+ -j CUBBI-V6-cubbi0\nCOMMIT\n"
        );
    }

    #[test]
    fn hooks_already_there_stay_once_and_extra_copies_go() {
        let rules = rule_set(&settings(false));
        let hooked = [
            (
                "nat",
                "-P POSTROUTING ACCEPT\n-A POSTROUTING -j CUBBI-NAT-cubbi0\n",
            ),
            (
                "filter",
                "-P FORWARD ACCEPT\n-A FORWARD -j CUBBI-FWD-cubbi0\n-A FORWARD -j CUBBI-FWD-cubbi0\n",
            ),
        ];
        let payload = rules.payload(Family::V4, &rules, &live(&hooked));
        assert!(!payload.contains("-I "), "{payload}");
        assert_eq!(
            payload.matches("-D FORWARD -j CUBBI-FWD-cubbi0\n").count(),
            1,
            "{payload}"
        );
    }

    #[test]
    fn turning_the_guard_off_takes_it_away_in_the_same_payload() {
        let guarded = rule_set(&settings(true));
        let unguarded = rule_set(&settings(false));
        let live_guarded = [
            ("nat", "-A POSTROUTING -j CUBBI-NAT-cubbi0\n"),
            (
                "filter",
                "-A INPUT -i cubbi0+ -j CUBBI-INPUT-cubbi0\n-A FORWARD -j CUBBI-FWD-cubbi0\n",
            ),
        ];
        let payload = unguarded.payload(Family::V4, &guarded, &live(&live_guarded));
        let filter = &payload[payload.find("*filter").unwrap()..];
        for line in [
            ":CUBBI-EGRESS-cubbi0 - [0:0]\n",
            ":CUBBI-INPUT-cubbi0 - [0:0]\n",
            "-D INPUT -i cubbi0+ -j CUBBI-INPUT-cubbi0\n",
            "-X CUBBI-EGRESS-cubbi0\n",
            "-X CUBBI-INPUT-cubbi0\nCOMMIT\n",
        ] {
            assert!(filter.contains(line), "{line}: {filter}");
        }
        // The FWD chain is refilled (without its jump to the guard) before the guard is deleted.
        assert!(
            filter.find(":CUBBI-FWD-cubbi0").unwrap() < filter.find("-X CUBBI-EGRESS").unwrap()
        );
        assert!(!payload.contains("CUBBI-FWD-cubbi0 -i cubbi0+ -j CUBBI-EGRESS"));
        assert!(!payload.contains("-X CUBBI-FWD") && !payload.contains("-X CUBBI-NAT"));
        let v6 = unguarded.payload(Family::V6, &guarded, &LiveTables::default());
        assert_eq!(
            v6,
            "*filter\n:CUBBI-V6-cubbi0 - [0:0]\n-X CUBBI-V6-cubbi0\nCOMMIT\n"
        );
    }

    #[test]
    fn apply_reads_each_family_once_and_restores_once() {
        let runner = RecordingRunner::default();
        let rules = rule_set(&settings(true));
        rules.install(&runner).unwrap();
        let restores: Vec<String> = runner
            .commands()
            .into_iter()
            .filter(|c| c.contains("-restore"))
            .collect();
        assert_eq!(
            restores,
            [
                "iptables-restore -w --noflush",
                "ip6tables-restore -w --noflush"
            ]
        );
        assert!(
            runner
                .commands()
                .iter()
                .all(|c| c.contains("-restore") || c.ends_with(" -S")),
            "nothing but reads and one restore per family: {:#?}",
            runner.commands()
        );
        let inputs = runner.inputs();
        assert_eq!(
            inputs[0].1,
            rules.payload(Family::V4, &rules, &LiveTables::default())
        );
    }

    #[test]
    fn a_failed_restore_is_an_error_with_its_message() {
        let runner =
            RecordingRunner::default().answering("iptables-restore", false, "line 3 failed");
        let err = rule_set(&settings(false)).install(&runner).unwrap_err();
        assert!(err.to_string().contains("iptables-restore"), "{err}");
    }

    fn installed_listing(rules: &RuleSet, table: &str) -> String {
        let mut text = String::new();
        for chain in rules
            .chains
            .iter()
            .filter(|c| c.table == table && c.family == Family::V4)
        {
            text.push_str(&expected_listing(chain).replace("/32", ""));
            text.push('\n');
        }
        for hook in rules
            .hooks
            .iter()
            .filter(|h| h.table == table && h.family == Family::V4)
        {
            text.push_str(&format!("-A {} {}\n", hook.builtin, hook.rule.join(" ")));
        }
        text
    }

    #[test]
    fn installed_only_when_every_listing_and_hook_match() {
        let rules = rule_set(&settings(false));
        let nat = installed_listing(&rules, "nat");
        let filter = installed_listing(&rules, "filter");
        let runner = RecordingRunner::default()
            .answering("iptables -w -t nat -S", true, &nat)
            .answering("iptables -w -t filter -S", true, &filter);
        assert!(rules.is_installed(&runner));
        let unhooked = RecordingRunner::default()
            .answering(
                "iptables -w -t nat -S",
                true,
                &nat.replace("-A POSTROUTING -j CUBBI-NAT-cubbi0\n", ""),
            )
            .answering("iptables -w -t filter -S", true, &filter);
        assert!(!rules.is_installed(&unhooked));
        let modified = RecordingRunner::default()
            .answering("iptables -w -t nat -S", true, &nat)
            .answering(
                "iptables -w -t filter -S",
                true,
                &filter.replace("-o cubbi0+ -j DROP", "-o cubbi0+ -j ACCEPT"),
            );
        assert!(!rules.is_installed(&modified));
        let live = LiveTables::from_listings(vec![
            ("nat", nat.as_str()),
            (
                "filter",
                filter
                    .replace("-o cubbi0+ -j DROP", "-o cubbi0+ -j ACCEPT")
                    .as_str(),
            ),
        ]);
        assert_eq!(
            rules.differences(Family::V4, &live),
            ["chain CUBBI-FWD-cubbi0 holds other rules"]
        );
    }

    #[test]
    fn uninstall_unhooks_every_copy_and_drops_every_chain_in_one_payload() {
        let rules = rule_set(&settings(true));
        let live = live(&[
            ("nat", "-A POSTROUTING -j CUBBI-NAT-cubbi0\n"),
            (
                "filter",
                "-A INPUT -i cubbi0+ -j CUBBI-INPUT-cubbi0\n-A INPUT -i cubbi0+ -j CUBBI-INPUT-cubbi0\n",
            ),
        ]);
        let payload = RuleSet::render(&rules.removal_pieces(Family::V4), &live);
        assert_eq!(
            payload
                .matches("-D INPUT -i cubbi0+ -j CUBBI-INPUT-cubbi0\n")
                .count(),
            2
        );
        assert!(
            !payload.contains("-D FORWARD"),
            "absent hooks are left alone"
        );
        for chain in [
            "CUBBI-NAT-cubbi0",
            "CUBBI-FWD-cubbi0",
            "CUBBI-EGRESS-cubbi0",
        ] {
            assert!(payload.contains(&format!("-X {chain}\n")), "{payload}");
        }
        assert!(!payload.contains("-A "), "{payload}");
    }

    #[test]
    fn the_script_embeds_the_same_payload() {
        let rules = rule_set(&settings(true));
        let script = rules.script("cubbi0", &rules);
        assert!(script.starts_with("#!/bin/sh\n"));
        // Every fixed line of the payload is in the script as is.
        let payload = rules.payload(Family::V4, &rules, &LiveTables::default());
        for line in payload.lines().filter(|l| !l.starts_with("-I ")) {
            assert!(script.contains(&format!("\n{line}\n")), "{line}");
        }
        assert!(
            script.contains(
                "        ensure iptables filter INPUT -i cubbi0+ -j CUBBI-INPUT-cubbi0\n"
            )
        );
        assert!(script.contains("    } | iptables-restore -w --noflush\n"));
        assert!(script.contains("    } | ip6tables-restore -w --noflush\n"));
        assert!(script.contains("        remove iptables nat POSTROUTING -j CUBBI-NAT-cubbi0\n"));
        assert!(script.contains("need iptables-restore"));
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("!"), "'!'");
    }
}
