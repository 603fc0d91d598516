//! cubbi's firewall against the real iptables, in a network namespace of its own so the host's
//! rules are never touched: what setup installs through the runner (one iptables-restore per
//! family) and what the unit's script installs are the same rules, each recognised as installed,
//! a changed rule is noticed, re-applying changes nothing, and each is removed without a trace.

use std::process::Command;

use cubbi::engine::firewall::{self, FirewallSettings, RuleSet};
use cubbi::engine::runner::{CommandError, CommandOutput, CommandRunner, SystemRunner};
use libtest_mimic::{Failed, Trial};

use crate::trials;

pub fn tests() -> Vec<Trial> {
    trials![
        setup_and_the_unit_script_install_the_same_rules_and_remove_them,
        two_engines_keep_their_own_rules,
        firewall_reapply_is_one_restore_per_family_and_changes_nothing,
        firewall_a_changed_rule_is_noticed_and_put_back,
        firewall_turning_the_guard_off_leaves_what_a_fresh_unguarded_install_leaves,
    ]
}

/// Runs every program inside the namespace, counting the restores.
struct InNamespace(String, std::sync::atomic::AtomicUsize);

impl InNamespace {
    fn new(namespace: &Namespace) -> Self {
        Self(namespace.0.clone(), Default::default())
    }

    fn restores(&self) -> usize {
        self.1.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl CommandRunner for InNamespace {
    fn output(&self, program: &str, args: &[&str]) -> Result<CommandOutput, CommandError> {
        let mut all = vec!["netns", "exec", self.0.as_str(), program];
        all.extend(args);
        SystemRunner.output("ip", &all)
    }

    fn output_with_input(
        &self,
        program: &str,
        args: &[&str],
        input: &str,
    ) -> Result<CommandOutput, CommandError> {
        if program.ends_with("-restore") {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let mut all = vec!["netns", "exec", self.0.as_str(), program];
        all.extend(args);
        SystemRunner.output_with_input("ip", &all, input)
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
    rules_with(bridge, true)
}

fn rules_with(bridge: &str, egress_guard: bool) -> RuleSet {
    firewall::rule_set(&FirewallSettings {
        bridge: bridge.into(),
        subnets: firewall::engine_subnets(
            "10.214.7.0/24".parse().expect("a subnet"),
            "10.214.0.0/16".parse().expect("a pool"),
        ),
        nameservers: firewall::parse_nameservers("nameserver 10.255.255.53\n"),
        egress_guard,
        ipv6: true,
    })
}

fn setup_and_the_unit_script_install_the_same_rules_and_remove_them() -> Result<(), Failed> {
    let namespace = Namespace::new("a")?;
    let runner = InNamespace::new(&namespace);
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
    let runner = InNamespace::new(&namespace);
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

/// Re-applying the set over itself: one iptables-restore per family, and the tables end exactly
/// as they were (no second hook, no reordering). The chains are refilled inside that one
/// restore's commit, so they are never seen empty.
fn firewall_reapply_is_one_restore_per_family_and_changes_nothing() -> Result<(), Failed> {
    let namespace = Namespace::new("c")?;
    let runner = InNamespace::new(&namespace);
    let rules = rules();
    rules.install(&runner)?;
    assert_eq!(runner.restores(), 2, "one restore for IPv4, one for IPv6");
    let installed = dump(&runner);
    assert!(
        installed.contains("-A CUBBI-FWD-cubbi0 -o cubbi0+ -j DROP"),
        "{installed}"
    );
    assert!(
        installed.contains("-d 100.64.0.0/10 -j REJECT"),
        "{installed}"
    );
    assert!(
        installed.contains("-d 168.63.129.16/32 -j REJECT"),
        "{installed}"
    );
    assert!(
        !installed.contains("-d 10.214.0.0/16 -j RETURN"),
        "{installed}"
    );
    rules.install(&runner)?;
    assert_eq!(runner.restores(), 4);
    assert_eq!(dump(&runner), installed);
    assert!(rules.is_installed(&runner));
    // A hook someone added twice is brought back to one.
    runner.output(
        "iptables",
        &["-w", "-I", "FORWARD", "-j", "CUBBI-FWD-cubbi0"],
    )?;
    assert!(
        !rules.is_installed(&runner),
        "a doubled hook is not the model"
    );
    rules.install(&runner)?;
    assert_eq!(dump(&runner), installed);
    rules.uninstall(&runner)?;
    assert!(!dump(&runner).contains("CUBBI"), "{}", dump(&runner));
    Ok(())
}

/// A rule changed by hand (the DROP turned into an ACCEPT) is not "installed"; applying again
/// puts the model back.
fn firewall_a_changed_rule_is_noticed_and_put_back() -> Result<(), Failed> {
    let namespace = Namespace::new("d")?;
    let runner = InNamespace::new(&namespace);
    let rules = rules();
    rules.install(&runner)?;
    let installed = dump(&runner);
    let last = installed
        .lines()
        .filter(|line| line.starts_with("-A CUBBI-FWD-cubbi0"))
        .count()
        .to_string();
    let replaced = runner.output(
        "iptables",
        &[
            "-w",
            "-R",
            "CUBBI-FWD-cubbi0",
            &last,
            "-o",
            "cubbi0+",
            "-j",
            "ACCEPT",
        ],
    )?;
    assert!(replaced.success, "{}", replaced.stderr);
    assert!(!rules.is_installed(&runner), "{}", dump(&runner));
    rules.install(&runner)?;
    assert!(rules.is_installed(&runner));
    assert_eq!(dump(&runner), installed);
    // A chain deleted by hand too.
    rules.uninstall(&runner)?;
    assert!(!rules.is_installed(&runner));
    Ok(())
}

/// `setup --no-egress-guard` over a guarded engine: one restore leaves exactly what a fresh
/// unguarded install leaves, and the script's `up` does the same.
fn firewall_turning_the_guard_off_leaves_what_a_fresh_unguarded_install_leaves()
-> Result<(), Failed> {
    let namespace = Namespace::new("e")?;
    let runner = InNamespace::new(&namespace);
    let guarded = rules_with("cubbi0", true);
    let unguarded = rules_with("cubbi0", false);
    unguarded.install(&runner)?;
    let fresh = dump(&runner);
    assert!(
        !fresh.contains("CUBBI-EGRESS") && !fresh.contains("CUBBI-V6"),
        "{fresh}"
    );
    guarded.uninstall(&runner)?;
    let pristine = dump(&runner);
    assert!(!pristine.contains("CUBBI"), "{pristine}");

    guarded.install(&runner)?;
    unguarded.apply(&guarded, &runner)?;
    assert_eq!(dump(&runner), fresh);
    assert!(unguarded.is_installed(&runner));

    guarded.install(&runner)?;
    let script_dir = tempfile::tempdir()?;
    let script = script_dir.path().join("firewall.sh");
    std::fs::write(&script, unguarded.script("cubbi0", &guarded))?;
    let script_path = script.to_string_lossy().into_owned();
    let up = runner.output("sh", &[&script_path, "up"])?;
    assert!(up.success, "the script failed: {}", up.stderr);
    assert_eq!(
        dump(&runner),
        fresh,
        "the script's `up` differs from setup's"
    );
    let down = runner.output("sh", &[&script_path, "down"])?;
    assert!(down.success, "`down` failed: {}", down.stderr);
    assert_eq!(dump(&runner), pristine);
    Ok(())
}
