//! A Docker Swarm of three real cubbi engines, each in a network namespace of its own, joined
//! through a bridge in a switch namespace (a bridge in the root namespace would meet the
//! host's FORWARD policy): `cubbi setup --swarm-init` on the first, `--swarm-join` with the
//! printed command on the others, every node labelled with its runtime, `--uninstall` leaves.

use std::path::PathBuf;
use std::process::Command;

use libtest_mimic::{Failed, Trial};

use crate::engine::{PrivateEngine, require_root_and_dockerd};
use crate::support::Cubbi;

pub fn tests() -> Vec<Trial> {
    crate::trials![three_engines_in_network_namespaces_form_a_labelled_swarm]
}

fn ip(args: &[&str]) -> Result<(), Failed> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )
        .into())
    }
}

/// The switch and node namespaces; dropping them removes every link they hold.
struct Namespaces {
    names: Vec<String>,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "delete", name]).output();
        }
    }
}

fn three_engines_in_network_namespaces_form_a_labelled_swarm() -> Result<(), Failed> {
    crate::support::sysbox::require_absent()?;
    let _one_at_a_time = require_root_and_dockerd()?;
    let tag = std::process::id() % 100_000;
    let switch = format!("cbsw{tag}");
    let mut namespaces = Namespaces {
        names: vec![switch.clone()],
    };
    ip(&["netns", "add", &switch])?;
    ip(&["-n", &switch, "link", "add", "sw0", "type", "bridge"])?;
    ip(&["-n", &switch, "link", "set", "sw0", "up"])?;
    let mut nodes = Vec::new();
    for index in 1..=3u8 {
        let netns = format!("cbnode{index}-{tag}");
        ip(&["netns", "add", &netns])?;
        namespaces.names.push(netns.clone());
        let (outer, inner) = (format!("cbs{index}-{tag}"), format!("cbi{index}-{tag}"));
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ])?;
        ip(&["link", "set", &outer, "netns", &switch])?;
        ip(&["link", "set", &inner, "netns", &netns])?;
        ip(&["-n", &switch, "link", "set", &outer, "master", "sw0", "up"])?;
        let address = format!("10.253.7.{}", 10 + index);
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            &inner,
        ])?;
        ip(&["-n", &netns, "link", "set", &inner, "up"])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        let engine = PrivateEngine::new(&format!("n{index}"))?;
        nodes.push((
            PathBuf::from(format!("/run/netns/{netns}")),
            address,
            engine,
        ));
    }
    let result = (|| -> Result<(), Failed> {
        let cubbi = |node: &(PathBuf, String, PrivateEngine)| -> Cubbi {
            Cubbi::in_network_namespace(&node.2.home, &node.0)
        };
        let setup = |node: &(PathBuf, String, PrivateEngine), extra: &[&str]| {
            let root = node.2.root_arg();
            cubbi(node)
                .args(["setup", "--engine-root", &root, "--bridge", &node.2.bridge])
                .args(node.2.address_args())
                .args(["--skip-sysbox", "--no-docker-context", "--unsafe-runc"])
                .args(extra)
                .run()
        };
        let first = setup(&nodes[0], &["--swarm-init", "--swarm-addr", &nodes[0].1])
            .success()
            .stdout();
        let token = first
            .split_whitespace()
            .find(|word| word.starts_with("SWMTKN-1-"))
            .ok_or(format!("no join token in: {first}"))?
            .to_string();
        assert!(
            first.contains(&format!("--swarm-join {}:2377", nodes[0].1)),
            "{first}"
        );
        for node in &nodes[1..] {
            let root = node.2.root_arg();
            cubbi(node)
                .env("CUBBI_SWARM_TOKEN", &token)
                .args(["setup", "--engine-root", &root, "--bridge", &node.2.bridge])
                .args(node.2.address_args())
                .args(["--skip-sysbox", "--no-docker-context", "--unsafe-runc"])
                .args(["--swarm-join", &format!("{}:2377", nodes[0].1)])
                .args(["--swarm-addr", &node.1])
                .run()
                .success()
                .stdout_contains("[changed] swarm");
        }
        // The first node's manager sees three ready nodes, each labelled runc.
        let endpoint = format!("unix://{}/docker.sock", nodes[0].2.root_arg());
        let listed = Command::new("docker")
            .args([
                "-H",
                &endpoint,
                "node",
                "ls",
                "--format",
                "{{.ID}} {{.Status}}",
            ])
            .output()?;
        let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
        let ids: Vec<&str> = listed
            .lines()
            .filter(|line| line.ends_with(" Ready"))
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        assert_eq!(ids.len(), 3, "{listed}");
        for id in ids {
            let labels = Command::new("docker")
                .args(["-H", &endpoint, "node", "inspect", id, "--format"])
                .arg("{{json .Description.Engine.Labels}} {{.Status.Addr}}")
                .output()?;
            let text = String::from_utf8_lossy(&labels.stdout).into_owned();
            assert!(text.contains(r#""io.cubbi.runtime":"runc""#), "{text}");
            assert!(text.contains("10.253.7."), "{text}");
        }
        // Each leaves with its uninstall, workers first.
        for node in nodes.iter().rev() {
            setup(node, &["--uninstall"])
                .success()
                .stdout_contains("[changed] swarm");
        }
        Ok(())
    })();
    drop(nodes);
    drop(namespaces);
    result
}
