//! A Docker Swarm of three real cubbi engines as a test fixture, each engine in a network
//! namespace of its own, joined through a bridge in a switch namespace (a bridge in the root
//! namespace would meet the host's FORWARD policy): `cubbi setup --unsafe-runc --swarm-init`
//! on the first, `--swarm-join` with the printed command on the others, every node labelled
//! with its runtime and running its tasks unconfined (a seccomp profile that allows every
//! syscall, a private cgroup namespace).
//!
//! [`SwarmCluster`]: the test process sits on the switch too (10.253.7.2, the nodes are
//! 10.253.7.11-13), loads images into the nodes, restarts a node's engine (`cubbi engine
//! stop`/`start` in its namespace, optionally as another runtime), and takes everything down
//! when dropped, also when a test fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;

use super::Cubbi;
use crate::engine::PrivateEngine;

/// The switch's subnet: the test process, then the nodes from `.11`.
const SUBNET_PREFIX: &str = "10.253.7";
/// The test process's own address on the switch.
pub(crate) const HOST_ADDRESS: &str = "10.253.7.2";
/// The image sessions boot, as the run's dockerd has it.
pub const SESSION_IMAGE: &str = "cubbi-base:latest";
/// The node runtime placement asks for (runc under `--unsafe-runc`, there is no Sysbox here).
pub const NODE_RUNTIME: &str = "runc";
/// Netns names start with these, followed by the owning test process's pid.
const SWITCH_PREFIX: &str = "cbsw";
const NODE_PREFIX: &str = "cbnode";

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

/// A command's stdout when it succeeded, else its stderr as the failure.
fn checked(what: &str, out: std::io::Result<Output>) -> Result<String, Failed> {
    let out = out.map_err(|err| format!("{what}: {err}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into())
    }
}

/// A failure's message, to carry it through a `String` error.
pub fn say(err: &Failed) -> String {
    err.message()
        .map_or_else(|| format!("{err:?}"), str::to_string)
}

/// A cubbi run that must have succeeded, as a failure (not a panic) when it did not.
fn succeeded(ran: crate::support::cli::Ran) -> Result<String, Failed> {
    if ran.output.status.success() {
        Ok(ran.stdout())
    } else {
        Err(format!(
            "cubbi exited with {:?}\nstdout:\n{}\nstderr:\n{}",
            ran.code(),
            ran.stdout(),
            ran.stderr()
        )
        .into())
    }
}

/// One engine of the swarm.
pub(crate) struct SwarmNode {
    /// 1, 2 or 3 (node 1 is the manager).
    pub(crate) index: u8,
    /// Its address on the switch (10.253.7.1x), which it advertises to the swarm.
    pub(crate) address: String,
    /// Its network namespace, `/run/netns/...`.
    pub(crate) netns: PathBuf,
    /// The swarm's id of this node.
    pub(crate) node_id: String,
    pub(crate) engine: PrivateEngine,
}

impl SwarmNode {
    /// The node's Docker endpoint, `unix://.../docker.sock` (a socket: reachable from any
    /// network namespace).
    pub(crate) fn endpoint(&self) -> String {
        format!("unix://{}/docker.sock", self.engine.root_arg())
    }

    /// `docker -H <this node> ARGS`.
    pub(crate) fn docker(&self, args: &[&str]) -> Result<String, Failed> {
        let endpoint = self.endpoint();
        checked(
            &format!("docker -H node{} {}", self.index, args.join(" ")),
            Command::new("docker")
                .args(["-H", &endpoint])
                .args(args)
                .output(),
        )
    }

    /// The cubbi binary in this node's network namespace, as `cubbi setup` must run there.
    fn cubbi(&self) -> Cubbi {
        Cubbi::in_network_namespace(&self.engine.home, &self.netns)
    }

    /// `cubbi setup` of this engine as the fixture sets it up, plus `extra`.
    fn setup(&self, extra: &[&str]) -> Cubbi {
        let root = self.engine.root_arg();
        self.cubbi()
            .args([
                "setup",
                "--engine-root",
                &root,
                "--bridge",
                &self.engine.bridge,
            ])
            .args(self.engine.address_args())
            .args(["--skip-sysbox", "--no-docker-context", "--unsafe-runc"])
            .args(extra)
    }

    fn engine_json(&self) -> PathBuf {
        PathBuf::from(self.engine.root_arg()).join("engine.json")
    }
}

/// Three engines in a swarm, the test process on their switch. Dropping it removes every
/// service and secret, makes every node leave (`setup --uninstall`), stops the engines and
/// deletes the namespaces and the host's veth.
pub(crate) struct SwarmCluster {
    pub(crate) nodes: Vec<SwarmNode>,
    /// The switch and node namespaces, deleted last.
    namespaces: Vec<String>,
    /// The root namespace's end of the veth into the switch.
    host_veth: Option<String>,
    /// Saved images on their way into the nodes.
    scratch: tempfile::TempDir,
    /// `leave` ran (with its assertions): the drop has nothing left to leave.
    left: bool,
}

impl SwarmCluster {
    /// Forms the swarm: the switch, three engines with `setup --unsafe-runc` in their
    /// namespaces (init on node 1, two joins with its printed token), the host's veth, and
    /// checks that every node is Ready, labelled runc, unconfined, and reachable.
    pub(crate) fn form() -> Result<Self, Failed> {
        reap_stale_clusters();
        let tag = std::process::id();
        let taken = Command::new("ip")
            .args([
                "-4",
                "-o",
                "addr",
                "show",
                "to",
                &format!("{SUBNET_PREFIX}.0/24"),
            ])
            .output()?;
        let taken = String::from_utf8_lossy(&taken.stdout).into_owned();
        if !taken.trim().is_empty() {
            return Err(format!(
                "{SUBNET_PREFIX}.0/24 is already on an interface of this host (another swarm \
                 fixture?): {taken}"
            )
            .into());
        }
        let mut cluster = Self {
            nodes: Vec::new(),
            namespaces: Vec::new(),
            host_veth: None,
            scratch: tempfile::Builder::new()
                .prefix("cubbi-swarm-")
                .tempdir_in("/var/tmp")?,
            left: false,
        };
        let switch = format!("{SWITCH_PREFIX}{tag}");
        ip(&["netns", "add", &switch])?;
        cluster.namespaces.push(switch.clone());
        ip(&["-n", &switch, "link", "add", "sw0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "sw0", "up"])?;
        for index in 1..=3u8 {
            let netns = format!("{NODE_PREFIX}{index}-{tag}");
            ip(&["netns", "add", &netns])?;
            cluster.namespaces.push(netns.clone());
            let (outer, inner) = (format!("cbs{index}-{tag}"), format!("cbi{index}-{tag}"));
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            ip(&["link", "set", &outer, "netns", &switch])?;
            ip(&["link", "set", &inner, "netns", &netns])?;
            ip(&["-n", &switch, "link", "set", &outer, "master", "sw0", "up"])?;
            let address = format!("{SUBNET_PREFIX}.{}", 10 + index);
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
            cluster.nodes.push(SwarmNode {
                index,
                address,
                netns: PathBuf::from(format!("/run/netns/{netns}")),
                node_id: String::new(),
                engine: PrivateEngine::new(&format!("n{index}"))?,
            });
        }
        // The test process on the switch: a veth from the root namespace into its bridge.
        let (host_end, switch_end) = (format!("cbhost{tag}"), format!("cbhsw{tag}"));
        ip(&[
            "link",
            "add",
            &host_end,
            "type",
            "veth",
            "peer",
            "name",
            &switch_end,
        ])?;
        cluster.host_veth = Some(host_end.clone());
        ip(&["link", "set", &switch_end, "netns", &switch])?;
        ip(&[
            "-n",
            &switch,
            "link",
            "set",
            &switch_end,
            "master",
            "sw0",
            "up",
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{HOST_ADDRESS}/24"),
            "dev",
            &host_end,
        ])?;
        ip(&["link", "set", &host_end, "up"])?;

        cluster.init_and_join()?;
        cluster.check_nodes()?;
        Ok(cluster)
    }

    /// `setup --swarm-init` on node 1, `--swarm-join` with its printed token on the others.
    fn init_and_join(&mut self) -> Result<(), Failed> {
        let manager = &self.nodes[0];
        let first = manager
            .setup(&["--swarm-init", "--swarm-addr", &manager.address])
            .run()
            .success()
            .stdout_contains("WITHOUT seccomp filtering")
            .stdout();
        let token = first
            .split_whitespace()
            .find(|word| word.starts_with("SWMTKN-1-"))
            .ok_or(format!("no join token in: {first}"))?
            .to_string();
        assert!(
            first.contains(&format!("--swarm-join {}:2377", manager.address)),
            "{first}"
        );
        let join = format!("{}:2377", manager.address);
        for node in &self.nodes[1..] {
            node.setup(&["--swarm-join", &join, "--swarm-addr", &node.address])
                .env("CUBBI_SWARM_TOKEN", &token)
                .run()
                .success()
                .stdout_contains("[changed] swarm")
                .stdout_contains("WITHOUT seccomp filtering");
        }
        for node in &mut self.nodes {
            node.node_id = node
                .docker(&["info", "--format", "{{.Swarm.NodeID}}"])?
                .trim()
                .to_string();
            if node.node_id.is_empty() {
                return Err(format!("node {} has no swarm node id", node.index).into());
            }
        }
        Ok(())
    }

    /// Three Ready nodes, each with the runtime label and its address; every engine runs its
    /// containers with an allow-everything seccomp profile in private cgroup namespaces; the
    /// test process reaches the manager's port 2377 over the switch.
    fn check_nodes(&self) -> Result<(), Failed> {
        let listed = self
            .manager()
            .docker(&["node", "ls", "--format", "{{.ID}} {{.Status}}"])?;
        let ready: BTreeSet<&str> = listed
            .lines()
            .filter(|line| line.ends_with(" Ready"))
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        assert_eq!(ready.len(), 3, "{listed}");
        for node in &self.nodes {
            assert!(ready.contains(node.node_id.as_str()), "{listed}");
            let text = self.manager().docker(&[
                "node",
                "inspect",
                &node.node_id,
                "--format",
                "{{json .Description.Engine.Labels}} {{.Status.Addr}}",
            ])?;
            assert!(text.contains(r#""io.cubbi.runtime":"runc""#), "{text}");
            assert!(text.contains(&node.address), "{text}");
            // Part of `setup --unsafe-runc --swarm-*`: the daemon's own settings.
            let profile = PathBuf::from(node.engine.root_arg()).join("seccomp-allow-all.json");
            let security = node.docker(&["info", "--format", "{{json .SecurityOptions}}"])?;
            assert!(
                security.contains(&format!("name=seccomp,profile={}", profile.display())),
                "node {}: {security}",
                node.index
            );
            assert!(
                security.contains("name=cgroupns"),
                "node {}: {security}",
                node.index
            );
            assert_eq!(
                std::fs::read_to_string(&profile)?,
                r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#
            );
            let daemon: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
                PathBuf::from(node.engine.root_arg()).join("daemon.json"),
            )?)?;
            assert_eq!(daemon["default-cgroupns-mode"], "private", "{daemon}");
            // The test process reaches the node directly over the switch.
            let manager_port = std::net::SocketAddr::new(node.address.parse()?, 2377);
            if node.index == 1 {
                std::net::TcpStream::connect_timeout(&manager_port, Duration::from_secs(5))
                    .map_err(|err| format!("cannot reach {manager_port} from the host: {err}"))?;
            }
        }
        Ok(())
    }

    pub(crate) fn manager(&self) -> &SwarmNode {
        &self.nodes[0]
    }

    /// The node whose address is `address` (a session's `ssh.host`).
    pub(crate) fn node_at(&self, address: &str) -> Option<&SwarmNode> {
        self.nodes.iter().find(|node| node.address == address)
    }

    pub(crate) fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.address.clone()).collect()
    }

    /// Copies `image` from the Docker at `from` (the run's dockerd) into every node: one
    /// `docker save`, three `docker load`s side by side; each node then has the same image id.
    pub(crate) fn load_image(&self, from: &str, image: &str) -> Result<(), Failed> {
        let archive = self.scratch.path().join("image.tar");
        let archive_arg = archive.display().to_string();
        checked(
            &format!("docker save {image}"),
            Command::new("docker")
                .args(["-H", from, "save", "-o", &archive_arg, image])
                .output(),
        )?;
        let id = checked(
            "docker image inspect",
            Command::new("docker")
                .args(["-H", from, "image", "inspect", "--format", "{{.Id}}", image])
                .output(),
        )?;
        let loaded: Vec<Result<String, String>> = std::thread::scope(|scope| {
            let loads: Vec<_> = self
                .nodes
                .iter()
                .map(|node| {
                    let archive_arg = &archive_arg;
                    scope.spawn(move || {
                        node.docker(&["load", "-q", "-i", archive_arg])
                            .and_then(|_| {
                                node.docker(&["image", "inspect", "--format", "{{.Id}}", image])
                            })
                            .map_err(|err| say(&err))
                    })
                })
                .collect();
            loads
                .into_iter()
                .map(|load| {
                    load.join()
                        .unwrap_or_else(|_| Err("a load panicked".into()))
                })
                .collect()
        });
        let _ = std::fs::remove_file(&archive);
        for (node, got) in self.nodes.iter().zip(loaded) {
            let got = got?;
            assert_eq!(
                got.trim(),
                id.trim(),
                "node {} has another {image}",
                node.index
            );
        }
        Ok(())
    }

    /// A container of `image` on every node is unconfined as the swarm's tasks are (the
    /// engine's defaults): `unshare`, which Docker's default seccomp profile refuses without
    /// CAP_SYS_ADMIN, works, and the container has a cgroup namespace of its own.
    pub(crate) fn check_containers_run_unconfined(&self, image: &str) -> Result<(), Failed> {
        let host_cgroupns = std::fs::read_link("/proc/self/ns/cgroup")?;
        for node in &self.nodes {
            let out = node.docker(&[
                "run",
                "--rm",
                "--network",
                "none",
                "--entrypoint",
                "sh",
                image,
                "-c",
                "unshare --user --map-root-user true && echo unshared; \
                 readlink /proc/self/ns/cgroup",
            ])?;
            let mut lines = out.lines();
            assert_eq!(lines.next(), Some("unshared"), "node {}: {out}", node.index);
            let cgroupns = lines.next().unwrap_or_default();
            assert!(
                cgroupns.starts_with("cgroup:["),
                "node {}: {out}",
                node.index
            );
            assert_ne!(
                cgroupns,
                host_cgroupns.display().to_string(),
                "node {}: the host's cgroup namespace",
                node.index
            );
        }
        Ok(())
    }

    /// Stops a node's engine as `cubbi engine stop` does (SIGTERM: its containers stop) and
    /// starts it again with `cubbi engine start` in its namespace, from what its engine.json
    /// records; waits (bounded) until the manager saw a worker go down, and until the node is
    /// Ready again with the recorded runtime as its engine label.
    pub(crate) fn restart_engine(&self, node: &SwarmNode) -> Result<(), Failed> {
        let root = node.engine.root_arg();
        succeeded(
            node.cubbi()
                .args(["engine", "stop", "--timeout", "60", "--engine-root", &root])
                .run(),
        )?;
        if node.index != 1 {
            self.wait_for_node(node, Duration::from_secs(90), |state, _| {
                (state == "down")
                    .then_some(())
                    .ok_or(format!("still {state}"))
            })?;
        }
        succeeded(
            node.cubbi()
                .args(["engine", "start", "--engine-root", &root, "--bridge"])
                .arg(&node.engine.bridge)
                .args(node.engine.address_args())
                .run(),
        )?;
        let recorded: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(node.engine_json())?)?;
        let runtime = recorded["default_runtime"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.wait_for_node(node, Duration::from_secs(120), |state, label| {
            if state != "ready" {
                return Err(format!("still {state}"));
            }
            if label != runtime {
                return Err(format!("labelled {label}, not yet {runtime}"));
            }
            Ok(())
        })?;
        // The node's own view: in the swarm, no error.
        let local = node.docker(&[
            "info",
            "--format",
            "{{.Swarm.LocalNodeState}} {{.Swarm.Error}}",
        ])?;
        assert_eq!(local.trim(), "active", "node {}", node.index);
        Ok(())
    }

    /// Restarts a node's engine with `runtime` as its default runtime (so its engine label
    /// `io.cubbi.runtime` says so): engine.json is what `cubbi engine start` derives
    /// daemon.json from. `runc` puts the node back as the fixture made it.
    pub(crate) fn restart_engine_as(&self, node: &SwarmNode, runtime: &str) -> Result<(), Failed> {
        let path = node.engine_json();
        let mut recorded: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        recorded["default_runtime"] = runtime.into();
        recorded["swarm_unsafe_runc"] = (runtime == NODE_RUNTIME).into();
        std::fs::write(&path, serde_json::to_string_pretty(&recorded)?)?;
        self.restart_engine(node)
    }

    /// Polls the manager's view of `node` (state, engine label `io.cubbi.runtime`) until
    /// `check` passes or `within` is over.
    fn wait_for_node(
        &self,
        node: &SwarmNode,
        within: Duration,
        check: impl Fn(&str, &str) -> Result<(), String>,
    ) -> Result<(), Failed> {
        let deadline = Instant::now() + within;
        loop {
            let seen = self
                .manager()
                .docker(&[
                    "node",
                    "inspect",
                    &node.node_id,
                    "--format",
                    r#"{{.Status.State}} {{index .Description.Engine.Labels "io.cubbi.runtime"}}"#,
                ])
                .map_err(|err| say(&err))
                .and_then(|text| {
                    let mut words = text.split_whitespace();
                    let state = words.next().unwrap_or_default().to_string();
                    let label = words.next().unwrap_or_default().to_string();
                    check(&state, &label)
                });
            match seen {
                Ok(()) => return Ok(()),
                Err(complaint) if Instant::now() >= deadline => {
                    return Err(format!("node {} after {within:?}: {complaint}", node.index).into());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// The swarm's services, secrets (cluster-wide, from the manager) and every node's
    /// volumes.
    pub(crate) fn inventory(&self) -> Result<Inventory, Failed> {
        let names = |text: String| -> BTreeSet<String> {
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(str::to_string)
                .collect()
        };
        let manager = self.manager();
        let mut volumes = BTreeMap::new();
        for node in &self.nodes {
            volumes.insert(
                node.index,
                names(node.docker(&["volume", "ls", "--format", "{{.Name}}"])?),
            );
        }
        Ok(Inventory {
            services: names(manager.docker(&["service", "ls", "--format", "{{.Name}}"])?),
            secrets: names(manager.docker(&["secret", "ls", "--format", "{{.Name}}"])?),
            volumes,
        })
    }

    /// Every service with its placement constraints, published ports and tasks (node index,
    /// state, error), for a failure's message.
    pub(crate) fn describe_services(&self) -> String {
        let manager = self.manager();
        let Ok(services) = manager.docker(&["service", "ls", "--format", "{{.Name}}"]) else {
            return "(the manager does not answer)".into();
        };
        let node_of = |id: &str| {
            self.nodes
                .iter()
                .find(|node| node.node_id == id)
                .map_or_else(|| id.to_string(), |node| format!("node {}", node.index))
        };
        let mut text = String::new();
        for service in services.split_whitespace() {
            let spec = manager
                .docker(&[
                    "service",
                    "inspect",
                    "--format",
                    "{{json .Spec.TaskTemplate.Placement.Constraints}} {{json .Endpoint.Ports}}",
                    service,
                ])
                .unwrap_or_else(|err| say(&err));
            text += &format!("  {service}: {}\n", spec.trim());
            let tasks = manager
                .docker(&["service", "ps", "-q", "--no-trunc", service])
                .unwrap_or_default();
            for task in tasks.split_whitespace() {
                let seen = manager
                    .docker(&[
                        "inspect",
                        "--format",
                        "{{.NodeID}}|{{.Status.State}}|{{.DesiredState}}|{{.Status.Err}}",
                        task,
                    ])
                    .unwrap_or_default();
                let mut parts = seen.trim().splitn(2, '|');
                let node = parts.next().unwrap_or_default();
                text += &format!(
                    "    task on {}: {}\n",
                    node_of(node),
                    parts.next().unwrap_or_default()
                );
            }
        }
        text
    }

    /// The nodes the tasks of `service` were ever given (the task history included).
    pub(crate) fn task_nodes(&self, service: &str) -> Result<BTreeSet<String>, Failed> {
        let tasks = self
            .manager()
            .docker(&["service", "ps", "-q", "--no-trunc", service])?;
        let mut nodes = BTreeSet::new();
        for task in tasks.split_whitespace() {
            let node = self
                .manager()
                .docker(&["inspect", "--format", "{{.NodeID}}", task])?;
            nodes.insert(node.trim().to_string());
        }
        Ok(nodes)
    }

    /// A task's addresses on its overlay networks (ingress excluded), by network name.
    pub(crate) fn overlay_addresses(
        &self,
        service: &str,
    ) -> Result<BTreeMap<String, Vec<String>>, Failed> {
        let tasks = self.manager().docker(&[
            "service",
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            "desired-state=running",
            service,
        ])?;
        let task = tasks
            .split_whitespace()
            .next()
            .ok_or(format!("{service} has no running task"))?;
        let text = self.manager().docker(&[
            "inspect",
            "--format",
            "{{range .NetworksAttachments}}{{.Network.Spec.Name}}{{range .Addresses}} {{.}}{{end}}\n{{end}}",
            task,
        ])?;
        let mut networks = BTreeMap::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let Some(network) = words.next() else {
                continue;
            };
            if network == "ingress" {
                continue;
            }
            let addresses = words
                .map(|cidr| cidr.split('/').next().unwrap_or_default().to_string())
                .collect();
            networks.insert(network.to_string(), addresses);
        }
        Ok(networks)
    }

    /// Makes every node leave the swarm with `setup --uninstall`, workers first, asserting
    /// each says so (after removing the swarm's services and secrets).
    pub(crate) fn leave(&mut self) -> Result<(), Failed> {
        self.remove_services_and_secrets();
        self.left = true;
        for node in self.nodes.iter().rev() {
            node.setup(&["--uninstall"])
                .run()
                .success()
                .stdout_contains("[changed] swarm");
            assert!(
                !PathBuf::from(node.engine.root_arg())
                    .join("seccomp-allow-all.json")
                    .exists(),
                "uninstall removes the seccomp profile"
            );
        }
        Ok(())
    }

    /// Every service and secret of the swarm goes, and (bounded) every node's task
    /// containers with them.
    fn remove_services_and_secrets(&self) {
        let manager = self.manager();
        if let Ok(services) = manager.docker(&["service", "ls", "-q"]) {
            let ids: Vec<&str> = services.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["service", "rm"];
                args.extend(ids);
                let _ = manager.docker(&args);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        for node in &self.nodes {
            while Instant::now() < deadline {
                match node.docker(&["ps", "-aq"]) {
                    Ok(listed) if !listed.trim().is_empty() => {
                        std::thread::sleep(Duration::from_millis(500))
                    }
                    _ => break,
                }
            }
        }
        if let Ok(secrets) = manager.docker(&["secret", "ls", "-q"]) {
            let ids: Vec<&str> = secrets.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["secret", "rm"];
                args.extend(ids);
                let _ = manager.docker(&args);
            }
        }
    }
}

impl Drop for SwarmCluster {
    fn drop(&mut self) {
        if !self.left && !self.nodes.is_empty() {
            self.remove_services_and_secrets();
            for node in self.nodes.iter().rev() {
                let _ = node.setup(&["--uninstall"]).run();
            }
        }
        // Each engine's own drop stops what is left of it and removes its folder.
        self.nodes.clear();
        if let Some(veth) = self.host_veth.take() {
            let _ = Command::new("ip").args(["link", "delete", &veth]).output();
        }
        for name in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "delete", name]).output();
        }
    }
}

/// Services, secrets and volumes at one moment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Inventory {
    pub(crate) services: BTreeSet<String>,
    pub(crate) secrets: BTreeSet<String>,
    /// Per node index.
    pub(crate) volumes: BTreeMap<u8, BTreeSet<String>>,
}

/// The namespaces (and what runs in them: detached dockerds) of a fixture whose test process
/// was killed before its drop ran. The root veth goes with the switch namespace.
fn reap_stale_clusters() {
    let Ok(listed) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    for name in listed
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        let owner = if let Some(pid) = name.strip_prefix(SWITCH_PREFIX) {
            pid
        } else if let Some(rest) = name.strip_prefix(NODE_PREFIX) {
            rest.split_once('-').map_or("", |(_, pid)| pid)
        } else {
            continue;
        };
        let Ok(owner) = owner.parse::<u32>() else {
            continue;
        };
        if owner == std::process::id() || std::path::Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let pids = Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default();
        let pids: Vec<i32> = pids
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect();
        for pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while pids
            .iter()
            .any(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = Command::new("ip").args(["netns", "delete", name]).output();
    }
}
