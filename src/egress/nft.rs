//! The kernel's half of egress by name: one nftables table per engine, applied atomically.
//!
//! The resolver decides which names a session may look up; the kernel decides which packets
//! leave, from the addresses those lookups returned. Nothing of it is inside the session, so
//! root there (a rewritten `/etc/resolv.conf`, raw sockets, an inner dockerd) gains nothing:
//!
//! - `restricted`: the addresses of sessions held to a policy (allow-list or none).
//! - `allowed`: `session . destination` pairs the resolver handed out, each with a timeout of
//!   the answer's TTL plus a grace period, so the kernel forgets them on its own.
//! - `dns` (prerouting, before Docker's and cubbi's NAT): a restricted session's port 53, UDP or
//!   TCP, to ANY address goes to cubbi's resolver instead (the resolver sees the session's own
//!   address as the source, which is how it finds the policy).
//! - `guard` (forward, before the filter chains of iptables): a restricted session's new
//!   connections pass only to an `allowed` destination on an allowed TCP port; everything else
//!   (direct addresses, other resolvers, DNS over TLS or HTTPS to a resolver not allowed, ICMP,
//!   UDP) is rejected and counted per session in `denied`. An accept here only ends this
//!   table's say: the egress guard's iptables rules (private networks) still apply after.
//!
//! Inner containers of a session are NATed by the session's inner dockerd to the session's
//! address, so they are the session as far as these rules can tell.
//!
//! The table is its own (`ip cubbi_egress_<bridge>`), beside the iptables chains of
//! `engine::firewall`, so its sets can change many times a second without rewriting those.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::engine::runner::{CommandError, CommandRunner};

/// The program that changes the table.
pub const NFT: &str = "nft";

/// Seconds an answer's addresses stay allowed past its TTL: a client may connect a moment
/// after the TTL ran out with the address it still holds.
pub const DEFAULT_GRACE_SECS: u32 = 30;
/// The least time an address stays allowed (answers with TTL 0 are common behind CDNs).
pub const MIN_ALLOW_SECS: u32 = 5;
/// The most (a TTL of days would keep a name's old addresses open for days).
pub const MAX_ALLOW_SECS: u32 = 24 * 3600;
/// The port the engine's resolver answers on (the engine bridge's gateway address); the
/// firewall's input chain lets redirected DNS through to it.
pub const RESOLVER_PORT: u16 = 5301;
/// The ports a restricted session may connect to on an allowed address.
pub const DEFAULT_PORTS: &[u16] = &[80, 443];

/// What the table depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftSettings {
    /// The engine's bridge; every bridge of the engine starts with it.
    pub bridge: String,
    /// Where the resolver listens (an address of this host the sessions reach).
    pub resolver: SocketAddrV4,
    pub ports: Vec<u16>,
}

impl NftSettings {
    pub fn table(&self) -> String {
        table_name(&self.bridge)
    }
}

/// The resolver's table for an engine's bridge (family `ip`).
pub fn table_name(bridge: &str) -> String {
    format!("cubbi_egress_{bridge}")
}

/// The whole table: declared, deleted and declared again in one `nft -f` transaction, so
/// there is no moment without it and no rule of an older version survives.
pub fn render_table(settings: &NftSettings, restricted: &[Ipv4Addr]) -> String {
    let table = settings.table();
    let bridge = &settings.bridge;
    let ports: Vec<String> = settings.ports.iter().map(u16::to_string).collect();
    let mut text = String::new();
    let _ = writeln!(text, "table ip {table}");
    let _ = writeln!(text, "delete table ip {table}");
    let _ = writeln!(text, "table ip {table} {{");
    let _ = write!(text, "  set restricted {{ type ipv4_addr;");
    if !restricted.is_empty() {
        let list: Vec<String> = restricted.iter().map(Ipv4Addr::to_string).collect();
        let _ = write!(text, " elements = {{ {} }}", list.join(", "));
    }
    let _ = writeln!(text, " }}");
    let _ = writeln!(
        text,
        "  set allowed {{ type ipv4_addr . ipv4_addr; flags timeout; }}"
    );
    if ports.is_empty() {
        let _ = writeln!(text, "  set ports {{ type inet_service; }}");
    } else {
        let _ = writeln!(
            text,
            "  set ports {{ type inet_service; elements = {{ {} }} }}",
            ports.join(", ")
        );
    }
    let _ = writeln!(
        text,
        "  set denied {{ type ipv4_addr; size 65536; flags dynamic, timeout; timeout 1d; counter; }}"
    );
    let _ = writeln!(text, "  chain dns {{");
    let _ = writeln!(
        text,
        "    type nat hook prerouting priority dstnat - 1; policy accept;"
    );
    let _ = writeln!(
        text,
        "    iifname \"{bridge}*\" ip saddr @restricted meta l4proto {{ tcp, udp }} th dport 53 dnat to {}",
        settings.resolver
    );
    let _ = writeln!(text, "  }}");
    let _ = writeln!(text, "  chain guard {{");
    let _ = writeln!(
        text,
        "    type filter hook forward priority filter - 1; policy accept;"
    );
    let _ = writeln!(text, "    iifname != \"{bridge}*\" return");
    let _ = writeln!(text, "    ip saddr != @restricted return");
    let _ = writeln!(text, "    ct state established,related accept");
    let _ = writeln!(
        text,
        "    ip saddr . ip daddr @allowed tcp dport @ports accept"
    );
    let _ = writeln!(
        text,
        "    update @denied {{ ip saddr }} log prefix \"cubbi-egress denied \" level info"
    );
    let _ = writeln!(text, "    reject with icmp type admin-prohibited");
    let _ = writeln!(text, "  }}");
    let _ = writeln!(text, "}}");
    text
}

/// How long an answer's address stays allowed.
pub fn allow_secs(ttl: u32, grace: u32) -> u32 {
    ttl.saturating_add(grace)
        .clamp(MIN_ALLOW_SECS, MAX_ALLOW_SECS)
}

/// One transaction adding `session . address` pairs (an existing pair gets the new timeout).
pub fn render_allow(table: &str, session: Ipv4Addr, addresses: &[(Ipv4Addr, u32)]) -> String {
    let elements: Vec<String> = addresses
        .iter()
        .map(|(address, secs)| format!("{session} . {address} timeout {secs}s"))
        .collect();
    // `add` keeps an existing element's old timeout; delete-then-add in one transaction
    // refreshes it (a `destroy` would be quieter but is newer than Debian 12's nft).
    let mut text = format!(
        "add element ip {table} allowed {{ {} }}\n",
        elements.join(", ")
    );
    text += &format!(
        "delete element ip {table} allowed {{ {} }}\n",
        addresses
            .iter()
            .map(|(address, _)| format!("{session} . {address}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    text += &format!(
        "add element ip {table} allowed {{ {} }}\n",
        elements.join(", ")
    );
    text
}

/// Replaces the `restricted` set (sessions come and go) in one transaction.
pub fn render_restricted(table: &str, restricted: &[Ipv4Addr]) -> String {
    let mut text = format!("flush set ip {table} restricted\n");
    if !restricted.is_empty() {
        let list: Vec<String> = restricted.iter().map(Ipv4Addr::to_string).collect();
        text += &format!(
            "add element ip {table} restricted {{ {} }}\n",
            list.join(", ")
        );
    }
    text
}

/// Takes away everything a session was handed (a `--deny`, or the session went away); the
/// next lookup it may still make adds back what stays allowed.
pub fn render_forget(table: &str, session: Ipv4Addr, held: &[Ipv4Addr]) -> Option<String> {
    if held.is_empty() {
        return None;
    }
    let list: Vec<String> = held.iter().map(|a| format!("{session} . {a}")).collect();
    Some(format!(
        "delete element ip {table} allowed {{ {} }}\n",
        list.join(", ")
    ))
}

/// The table's removal (`cubbi setup --remove`, a test's cleanup).
pub fn render_remove(table: &str) -> String {
    format!("table ip {table}\ndelete table ip {table}\n")
}

/// The refused-connection counts per session, from `nft -j list set ip TABLE denied`.
pub fn parse_denied_counts(json: &str) -> std::collections::HashMap<Ipv4Addr, u64> {
    let mut counts = std::collections::HashMap::new();
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
        return counts;
    };
    let items = value["nftables"].as_array().cloned().unwrap_or_default();
    for item in items {
        for element in item["set"]["elem"].as_array().cloned().unwrap_or_default() {
            let element = &element["elem"];
            if let (Some(address), Some(packets)) = (
                element["val"].as_str().and_then(|text| text.parse().ok()),
                element["counter"]["packets"].as_u64(),
            ) {
                counts.insert(address, packets);
            }
        }
    }
    counts
}

/// Runs one `nft -f -` transaction.
pub fn apply(runner: &dyn CommandRunner, script: &str) -> Result<(), CommandError> {
    let output = runner.output_with_input(NFT, &["-f", "-"], script)?;
    crate::engine::runner::check(NFT, &["-f", "-"], output).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> NftSettings {
        NftSettings {
            bridge: "cubbi0".into(),
            resolver: "10.20.0.1:5353".parse().unwrap(),
            ports: DEFAULT_PORTS.to_vec(),
        }
    }

    #[test]
    fn the_table_redirects_dns_and_guards_restricted_sessions_only() {
        let text = render_table(&settings(), &["10.20.0.2".parse().unwrap()]);
        assert!(
            text.starts_with("table ip cubbi_egress_cubbi0\ndelete table ip cubbi_egress_cubbi0\n")
        );
        assert!(text.contains("elements = { 10.20.0.2 }"));
        assert!(text.contains(
            "iifname \"cubbi0*\" ip saddr @restricted meta l4proto { tcp, udp } th dport 53 dnat to 10.20.0.1:5353"
        ));
        assert!(text.contains("ip saddr != @restricted return"));
        assert!(text.contains("ip saddr . ip daddr @allowed tcp dport @ports accept"));
        assert!(text.contains("elements = { 80, 443 }"));
        // The last word of the guard is a refusal, counted per session before it.
        let guard = text.split("chain guard").nth(1).unwrap();
        let update = guard.find("update @denied").unwrap();
        let reject = guard.find("reject").unwrap();
        assert!(update < reject);
        let empty = render_table(&settings(), &[]);
        assert!(empty.contains("set restricted { type ipv4_addr; }"));
    }

    #[test]
    fn answers_are_allowed_for_their_ttl_plus_grace_within_bounds() {
        assert_eq!(allow_secs(60, 30), 90);
        assert_eq!(allow_secs(0, 0), MIN_ALLOW_SECS);
        assert_eq!(allow_secs(u32::MAX, 30), MAX_ALLOW_SECS);
        let text = render_allow(
            "t",
            "10.0.0.2".parse().unwrap(),
            &[("198.18.0.5".parse().unwrap(), 90)],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "add element ip t allowed { 10.0.0.2 . 198.18.0.5 timeout 90s }",
                "delete element ip t allowed { 10.0.0.2 . 198.18.0.5 }",
                "add element ip t allowed { 10.0.0.2 . 198.18.0.5 timeout 90s }",
            ]
        );
    }

    #[test]
    fn refused_connections_are_read_per_session() {
        let listed = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "ip", "name": "denied", "table": "t", "type": "ipv4_addr", "elem": [{"elem": {"val": "10.1.0.2", "expires": 86399, "counter": {"packets": 3, "bytes": 180}}}]}}]}"#;
        let counts = parse_denied_counts(listed);
        assert_eq!(counts.get(&"10.1.0.2".parse().unwrap()), Some(&3));
        assert!(parse_denied_counts("not json").is_empty());
        assert!(
            parse_denied_counts(r#"{"nftables": [{"set": {"elem": [{"elem": {"val": "x"}}]}}]}"#)
                .is_empty()
        );
    }

    #[test]
    fn sessions_come_and_go_in_one_transaction() {
        let text = render_restricted(
            "t",
            &["10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap()],
        );
        assert_eq!(
            text,
            "flush set ip t restricted\nadd element ip t restricted { 10.0.0.2, 10.0.0.3 }\n"
        );
        assert_eq!(render_restricted("t", &[]), "flush set ip t restricted\n");
        assert_eq!(render_forget("t", "10.0.0.2".parse().unwrap(), &[]), None);
        assert_eq!(
            render_forget(
                "t",
                "10.0.0.2".parse().unwrap(),
                &["1.2.3.4".parse().unwrap()]
            ),
            Some("delete element ip t allowed { 10.0.0.2 . 1.2.3.4 }\n".into())
        );
    }
}
