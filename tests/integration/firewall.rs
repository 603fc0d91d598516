//! cubbi's firewall against the real iptables, in a network namespace of its own so the host's
//! rules are never touched: what setup installs through the runner and what the unit's script
//! installs are the same rules, each recognised as installed, and each removed without a trace.

use std::process::Command;

use cubbi::engine::firewall::{self, FirewallSettings, RuleSet};
use cubbi::engine::runner::{CommandError, CommandOutput, CommandRunner, SystemRunner};
use libtest_mimic::{Failed, Trial};

use crate::trials;

pub fn tests() -> Vec<Trial> {
    trials![
        setup_and_the_unit_script_install_the_same_rules_and_remove_them,
        two_engines_keep_their_own_rules,
    ]
}

/// Runs every program inside the namespace.
struct InNamespace(String);

impl CommandRunner for InNamespace {
    fn output(&self, program: &str, args: &[&str]) -> Result<CommandOutput, CommandError> {
        let mut all = vec!["netns", "exec", self.0.as_str(), program];
        all.extend(args);
        SystemRunner.output("ip", &all)
    }
}

/// A namespace that is deleted when dropped, also when the test fails.
struct Namespace(String);

impl Namespace {
    fn new(tag: &str) -> Result<Self, Failed> {
        if !nix::unistd::geteuid().is_root() {
            return Err("this test makes a network namespace and needs root".into());
        }
        let name = format!("cubbi-fw{tag}{}", std::process::id());
        let status = Command::new("ip").args(["netns", "add", &name]).status()?;
        if !status.success() {
            return Err(format!("`ip netns add {name}` failed").into());
        }
        Ok(Self(name))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// Every rule in the namespace, as `iptables -S` and `ip6tables -S` print them per table.
fn dump(runner: &InNamespace) -> String {
    let mut text = String::new();
    for program in ["iptables", "ip6tables"] {
        for table in ["filter", "nat"] {
            if let Ok(out) = runner.output(program, &["-w", "-t", table, "-S"]) {
                text.push_str(&out.stdout);
            }
        }
    }
    text
}

fn rules() -> RuleSet {
    rules_for("cubbi0")
}

fn rules_for(bridge: &str) -> RuleSet {
    firewall::rule_set(&FirewallSettings {
        bridge: bridge.into(),
        subnets: firewall::engine_subnets(
            "10.214.7.0/24".parse().expect("a subnet"),
            "10.214.0.0/16".parse().expect("a pool"),
        ),
        nameservers: firewall::parse_nameservers("nameserver 10.255.255.53\n"),
        egress_guard: true,
        ipv6: true,
    })
}

fn setup_and_the_unit_script_install_the_same_rules_and_remove_them() -> Result<(), Failed> {
    let namespace = Namespace::new("a")?;
    let runner = InNamespace(namespace.0.clone());
    let pristine = dump(&runner);
    assert!(!pristine.contains("CUBBI"), "{pristine}");
    let rules = rules();
    assert!(!rules.is_installed(&runner));

    rules.install(&runner)?;
    assert!(
        rules.is_installed(&runner),
        "installed rules are not recognised:\n{}",
        dump(&runner)
    );
    let installed = dump(&runner);
    // Installing again changes nothing (no second hook).
    rules.install(&runner)?;
    assert_eq!(dump(&runner), installed);
    rules.uninstall(&runner)?;
    assert_eq!(dump(&runner), pristine, "uninstall left rules behind");

    let script_dir = tempfile::tempdir()?;
    let script = script_dir.path().join("firewall.sh");
    std::fs::write(&script, rules.script("cubbi0", &rules))?;
    let script_path = script.to_string_lossy().into_owned();
    for _ in 0..2 {
        let up = runner.output("sh", &[&script_path, "up"])?;
        assert!(up.success, "the script failed: {}", up.stderr);
    }
    assert_eq!(
        dump(&runner),
        installed,
        "the unit's script and setup install different rules"
    );
    assert!(rules.is_installed(&runner));
    let down = runner.output("sh", &[&script_path, "down"])?;
    assert!(down.success, "`down` failed: {}", down.stderr);
    assert_eq!(dump(&runner), pristine, "`down` left rules behind");
    Ok(())
}

/// A system engine and a trial one under `--engine-root` on the same host: installing,
/// re-installing or removing one leaves the other's rules whole.
fn two_engines_keep_their_own_rules() -> Result<(), Failed> {
    let namespace = Namespace::new("b")?;
    let runner = InNamespace(namespace.0.clone());
    let pristine = dump(&runner);
    let system = rules_for("cubbi0");
    let trial = rules_for("cubbitrial");
    system.install(&runner)?;
    trial.install(&runner)?;
    system.install(&runner)?;
    assert!(
        system.is_installed(&runner) && trial.is_installed(&runner),
        "{}",
        dump(&runner)
    );
    trial.uninstall(&runner)?;
    assert!(
        system.is_installed(&runner),
        "removing one engine's rules broke the other's"
    );
    assert!(!trial.is_installed(&runner));
    system.uninstall(&runner)?;
    assert_eq!(dump(&runner), pristine);
    Ok(())
}
