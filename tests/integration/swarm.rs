//! A Docker Swarm of three real cubbi engines, each in a network namespace of its own, joined
//! through a bridge in a switch namespace (a bridge in the root namespace would meet the
//! host's FORWARD policy): `cubbi setup --unsafe-runc --swarm-init` on the first,
//! `--swarm-join` with the printed command on the others, every node labelled with its
//! runtime and running its tasks unconfined (a seccomp profile that allows every syscall, a
//! private cgroup namespace), `--uninstall` leaves.
//!
//! [`SwarmCluster`] is that swarm as a fixture: the test process sits on the switch too
//! (10.253.7.2, the nodes are 10.253.7.11-13), loads images into the nodes, restarts a node's
//! engine (`cubbi engine stop`/`start` in its namespace, optionally as another runtime), and
//! takes everything down when dropped, also when a test fails. The Swarm backend's trial runs
//! the service in-process against node 1 and drives it through the remote backend.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cubbi::api::{Backend, ErrorCode, LogOptions, Quiet, Session, SessionSpec, SessionState};
use futures_util::StreamExt;
use libtest_mimic::{Failed, Trial};

use crate::engine::{PrivateEngine, require_root_and_dockerd};
use crate::support::service::{TestService, user};
use crate::support::{Cubbi, docker_test};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        three_engines_in_network_namespaces_form_a_labelled_swarm,
        a_swarm_backend_serves_sessions_across_nodes,
    ]
}

/// The switch's subnet: the test process, then the nodes from `.11`.
const SUBNET_PREFIX: &str = "10.253.7";
/// The test process's own address on the switch.
pub(crate) const HOST_ADDRESS: &str = "10.253.7.2";
/// The image sessions boot, as the run's dockerd has it.
const SESSION_IMAGE: &str = "cubbi-base:latest";
/// The node runtime placement asks for (runc under `--unsafe-runc`, there is no Sysbox here).
const NODE_RUNTIME: &str = "runc";
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
fn say(err: &Failed) -> String {
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

fn three_engines_in_network_namespaces_form_a_labelled_swarm() -> Result<(), Failed> {
    crate::support::sysbox::require_absent()?;
    let _one_at_a_time = require_root_and_dockerd()?;
    let mut cluster = SwarmCluster::form()?;
    // Each leaves with its uninstall, workers first.
    cluster.leave()
}

// ---------------------------------------------------------------------------------------
// The Swarm backend through the service, on the fixture.

/// A session as the Swarm backend runs them here: cubbi-base under runc, explicitly unsafe.
fn swarm_spec(name: &str) -> SessionSpec {
    let mut spec = crate::serve::spec(name);
    spec.runtime = NODE_RUNTIME.into();
    spec.unsafe_runc = true;
    spec
}

/// `future`, or a failure naming `what` after `secs` seconds.
async fn bounded<T>(
    secs: u64,
    what: &str,
    future: impl std::future::Future<Output = Result<T, Failed>>,
) -> Result<T, Failed> {
    tokio::time::timeout(Duration::from_secs(secs), future)
        .await
        .map_err(|_| Failed::from(format!("{what}: no answer within {secs} s")))?
}

async fn create(
    cluster: &SwarmCluster,
    backend: &dyn Backend,
    name: &str,
) -> Result<Session, Failed> {
    bounded(300, &format!("create {name}"), async {
        Ok(backend.create(swarm_spec(name), &Quiet).await?)
    })
    .await
    .map_err(|err| {
        Failed::from(format!(
            "create {name}: {}\nthe swarm's services then:\n{}",
            say(&err),
            cluster.describe_services()
        ))
    })
}

/// `command` in a session through the backend: stdout, stderr, exit code.
async fn exec(
    backend: &dyn Backend,
    name: &str,
    command: &[&str],
) -> Result<(String, String, i32), Failed> {
    bounded(
        60,
        &format!("exec {command:?} in {name}"),
        crate::serve::run(backend, name, command),
    )
    .await
}

/// Real OpenSSH, strict about the pinned host key (a known_hosts holding only it), with a key
/// authorized through `connect`; what `whoami` said.
async fn strict_openssh(backend: &dyn Backend, session: &Session) -> Result<String, Failed> {
    let key = cubbi::ssh::keys::generate("swarm-strict")?;
    let public = cubbi::ssh::keys::public_openssh(key.public_key())?;
    let reached = bounded(60, "connect", async {
        Ok(backend.connect(&session.name, &public).await?)
    })
    .await?;
    assert_eq!(reached.ssh.host_key, session.ssh.host_key, "the pinned key");
    let dir = tempfile::tempdir()?;
    let key_file = dir.path().join("id");
    cubbi::ssh::keys::write_file(
        &key_file,
        cubbi::ssh::keys::private_openssh(&key)?.as_bytes(),
        0o600,
    )?;
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!(
            "[{}]:{} {}\n",
            reached.ssh.host, reached.ssh.port, session.ssh.host_key
        ),
    )?;
    let (host, port, user) = (
        reached.ssh.host.clone(),
        reached.ssh.port.to_string(),
        reached.ssh.user.clone(),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new("ssh")
            .args(["-F", "/dev/null", "-i"])
            .arg(&key_file)
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "ConnectTimeout=10",
                "-o",
            ])
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-p", &port, &format!("{user}@{host}"), "whoami"])
            .output()
    })
    .await??;
    assert!(
        out.status.success(),
        "strict OpenSSH to {}: {}",
        session.name,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A session's port is in the range, its host a node's address, its host key pinned.
fn check_endpoint(cluster: &SwarmCluster, session: &Session) {
    assert_eq!(session.state, SessionState::Ready, "{session:?}");
    assert!(
        cluster.node_at(&session.ssh.host).is_some(),
        "{} is on {}, not a node's address ({:?})",
        session.name,
        session.ssh.host,
        cluster.addresses()
    );
    assert!(
        (2300..=2500).contains(&session.ssh.port),
        "{:?}",
        session.ssh
    );
    assert!(
        session.ssh.host_key.starts_with("ssh-ed25519 "),
        "{:?}",
        session.ssh
    );
}

fn service_of(name: &str) -> String {
    format!("cubbi-{name}")
}

fn a_swarm_backend_serves_sessions_across_nodes() -> Result<(), Failed> {
    crate::support::sysbox::require_absent()?;
    let _one_at_a_time = require_root_and_dockerd()?;
    let forming = Instant::now();
    let cluster = Arc::new(SwarmCluster::form()?);
    eprintln!("swarm fixture: formed in {:?}", forming.elapsed());
    let shared = Arc::clone(&cluster);
    let outcome = docker_test("swarm-backend", move |scope| async move {
        let cluster = shared;
        let loading = Instant::now();
        scope.ensure_base().await?;
        let (loader, from) = (Arc::clone(&cluster), scope.endpoint.clone());
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            loader
                .load_image(&from, SESSION_IMAGE)
                .map_err(|err| say(&err))?;
            loader
                .check_containers_run_unconfined(SESSION_IMAGE)
                .map_err(|err| say(&err))
        })
        .await??;
        eprintln!(
            "swarm fixture: {SESSION_IMAGE} on every node in {:?}",
            loading.elapsed()
        );
        backend_cases(&scope, &cluster).await
    });
    drop(cluster);
    outcome
}

async fn backend_cases(
    scope: &crate::support::DockerScope,
    cluster: &Arc<SwarmCluster>,
) -> Result<(), Failed> {
    let endpoint = cluster.manager().endpoint();
    let mut service = TestService::start(scope, |config| {
        config.backend.kind = cubbi::service::config::BackendKind::Swarm;
        config.docker.endpoint = endpoint.clone();
        config.allow_unsafe_runc = true;
        config.ssh.bind = "0.0.0.0".parse().expect("an address");
    })
    .await?;
    let (alice_name, bob_name) = (user(scope, "alice"), user(scope, "bob"));
    let alice = service.client(&service.token(&alice_name, false)?)?;
    let bob = service.client(&service.token(&bob_name, false)?)?;

    let started = Instant::now();
    conformance(cluster, &alice).await?;
    eprintln!("swarm backend: (a) conformance in {:?}", started.elapsed());

    let started = Instant::now();
    let spread = spread_across_nodes(cluster, &alice).await?;
    eprintln!("swarm backend: (b) six sessions in {:?}", started.elapsed());

    let started = Instant::now();
    survives_an_engine_restart(cluster, &alice, &spread).await?;
    eprintln!("swarm backend: (c) node restart in {:?}", started.elapsed());

    let started = Instant::now();
    placement_skips_a_node_of_another_runtime(cluster, &alice, &spread).await?;
    eprintln!("swarm backend: (d) placement in {:?}", started.elapsed());

    let started = Instant::now();
    owners_are_apart_across_nodes(cluster, &alice, &bob, &spread).await?;
    eprintln!("swarm backend: (e) isolation in {:?}", started.elapsed());

    let started = Instant::now();
    close_takes_only_the_service_and_its_secrets(cluster, &alice, &spread[0].name).await?;
    eprintln!("swarm backend: (f) close in {:?}", started.elapsed());

    for session in &spread[1..] {
        bounded(120, "close", async {
            Ok(alice.close(&session.name).await?)
        })
        .await?;
    }
    for session in bounded(60, "list", async { Ok(bob.list().await?) }).await? {
        bounded(120, "close", async { Ok(bob.close(&session.name).await?) }).await?;
    }
    service.stop().await
}

/// (a) create, list, show, exec with exit codes, strict OpenSSH, systemd's boot in the logs,
/// close.
async fn conformance(cluster: &SwarmCluster, alice: &dyn Backend) -> Result<(), Failed> {
    let name = "sw-conf";
    let session = create(cluster, alice, name).await?;
    check_endpoint(cluster, &session);
    assert_eq!(session.name, name);
    let node = cluster
        .node_at(&session.ssh.host)
        .ok_or("no node at the session's address")?;
    // A swarm service of that name, running on the node the session names.
    let service = service_of(name);
    assert_eq!(
        cluster.task_nodes(&service)?,
        BTreeSet::from([node.node_id.clone()]),
        "{service}'s tasks"
    );

    let listed = bounded(60, "list", async { Ok(alice.list().await?) }).await?;
    let mine = listed
        .iter()
        .find(|s| s.name == name)
        .ok_or("create's session is not listed")?;
    assert_eq!(mine.id, session.id);
    assert_eq!(mine.state, SessionState::Ready);
    assert_eq!(
        (mine.ssh.host.as_str(), mine.ssh.port),
        (session.ssh.host.as_str(), session.ssh.port)
    );
    let shown = bounded(60, "get", async { Ok(alice.get(name).await?) }).await?;
    assert_eq!(shown.id, session.id);
    assert_eq!(shown.ssh.host_key, session.ssh.host_key);
    assert_eq!(shown.ssh.host, session.ssh.host);

    let (out, err, code) =
        exec(alice, name, &["sh", "-c", "echo out; echo err >&2; exit 3"]).await?;
    assert_eq!((out.as_str(), err.as_str(), code), ("out\n", "err\n", 3));
    let (out, _, code) = exec(alice, name, &["whoami"]).await?;
    assert_eq!((out.as_str(), code), ("agent\n", 0));
    let (out, _, code) = exec(alice, name, &["cat", "/proc/1/comm"]).await?;
    assert_eq!((out.as_str(), code), ("systemd\n", 0));

    assert_eq!(strict_openssh(alice, &session).await?, "agent\n");

    let logs = bounded(60, "logs", async {
        let mut stream = alice
            .logs(
                name,
                LogOptions {
                    follow: false,
                    tail: None,
                },
            )
            .await?;
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            text += &chunk?.text;
        }
        Ok(text)
    })
    .await?;
    assert!(
        logs.contains("systemd"),
        "systemd's boot is not in the logs: {logs}"
    );

    let closed = bounded(120, "close", async { Ok(alice.close(name).await?) }).await?;
    assert_eq!(closed.id, session.id);
    let err = alice
        .get(name)
        .await
        .err()
        .ok_or("a closed session is still found")?;
    assert_eq!(err.code(), ErrorCode::NotFound);
    assert!(
        !cluster.inventory()?.services.contains(&service),
        "{service} is still a service"
    );
    Ok(())
}

/// (b) six sessions, three created at a time, land on at least two nodes. Each gets a file in
/// its home for (c).
async fn spread_across_nodes(
    cluster: &SwarmCluster,
    alice: &dyn Backend,
) -> Result<Vec<Session>, Failed> {
    let names: Vec<String> = (1..=6).map(|i| format!("sw-b{i}")).collect();
    let mut sessions = Vec::new();
    for chunk in names.chunks(3) {
        let created =
            futures_util::future::join_all(chunk.iter().map(|name| create(cluster, alice, name)))
                .await;
        for session in created {
            sessions.push(session?);
        }
    }
    let mut hosts = BTreeSet::new();
    for session in &sessions {
        check_endpoint(cluster, session);
        hosts.insert(session.ssh.host.clone());
        let (_, err, code) = exec(
            alice,
            &session.name,
            &[
                "sh",
                "-c",
                &format!("echo kept-{} > /home/agent/kept && sync", session.name),
            ],
        )
        .await?;
        assert_eq!(code, 0, "{err}");
    }
    assert!(
        hosts.len() >= 2,
        "six sessions all on {hosts:?}: {:?}",
        sessions
            .iter()
            .map(|s| (&s.name, &s.ssh.host))
            .collect::<Vec<_>>()
    );
    // Two sessions of one node never share a port.
    let mut ports = BTreeSet::new();
    for session in &sessions {
        assert!(
            ports.insert((session.ssh.host.clone(), session.ssh.port)),
            "{:?} twice",
            session.ssh
        );
    }
    Ok(sessions)
}

/// (c) a node's engine restarts: its sessions come back Ready on the same node and port with
/// the same pinned host key, strict OpenSSH works again, and /home/agent kept its file.
async fn survives_an_engine_restart(
    cluster: &Arc<SwarmCluster>,
    alice: &dyn Backend,
    sessions: &[Session],
) -> Result<(), Failed> {
    // A worker with sessions when there is one (the manager's restart takes the API away).
    let on = |node: &SwarmNode| {
        sessions
            .iter()
            .filter(|s| s.ssh.host == node.address)
            .count()
    };
    let node = cluster
        .nodes
        .iter()
        .filter(|node| node.index != 1 && on(node) > 0)
        .max_by_key(|node| on(node))
        .or_else(|| cluster.nodes.iter().find(|node| on(node) > 0))
        .ok_or("no node has a session")?;
    let index = node.index;
    let restarted: Vec<&Session> = sessions
        .iter()
        .filter(|s| s.ssh.host == node.address)
        .collect();
    let restarting = Arc::clone(cluster);
    tokio::task::spawn_blocking(move || {
        let node = &restarting.nodes[usize::from(index - 1)];
        restarting.restart_engine(node).map_err(|err| say(&err))
    })
    .await??;
    let restarted_at = Instant::now();
    for before in restarted {
        let name = before.name.clone();
        crate::support::eventually(Duration::from_secs(300), || {
            let name = name.clone();
            async move {
                let now = alice.get(&name).await.map_err(|err| err.to_string())?;
                if now.state == SessionState::Ready {
                    Ok(())
                } else {
                    Err(format!("{name} is {:?}", now.state))
                }
            }
        })
        .await?;
        let ready_after = restarted_at.elapsed();
        let after = alice.get(&name).await?;
        assert_eq!(after.ssh.host, before.ssh.host, "{name} moved");
        assert_eq!(after.ssh.port, before.ssh.port, "{name} changed its port");
        assert_eq!(after.ssh.host_key, before.ssh.host_key, "{name}'s host key");
        // Ready means usable: what follows gets no second chance.
        let usable = async {
            assert_eq!(strict_openssh(alice, &after).await?, "agent\n");
            let (out, _, code) = exec(alice, &name, &["cat", "/home/agent/kept"]).await?;
            assert_eq!((out.trim(), code), (format!("kept-{name}").as_str(), 0));
            Ok::<(), Failed>(())
        };
        usable.await.map_err(|err| {
            format!(
                "{name} on node {index} was Ready through get {ready_after:?} after its engine \
                 came back, then: {}",
                say(&err)
            )
        })?;
    }
    Ok(())
}

/// (d) a node whose engine label `io.cubbi.runtime` is another runtime is never given a task.
async fn placement_skips_a_node_of_another_runtime(
    cluster: &Arc<SwarmCluster>,
    alice: &dyn Backend,
    sessions: &[Session],
) -> Result<(), Failed> {
    let relabel = |runtime: &'static str| {
        let cluster = Arc::clone(cluster);
        tokio::task::spawn_blocking(move || {
            cluster
                .restart_engine_as(&cluster.nodes[2], runtime)
                .map_err(|err| say(&err))
        })
    };
    relabel("sysbox-runc").await??;
    let outcome = async {
        let names = ["sw-d1", "sw-d2", "sw-d3"];
        let created =
            futures_util::future::join_all(names.iter().map(|name| create(cluster, alice, name)))
                .await;
        let third = &cluster.nodes[2];
        for session in created {
            let session = session?;
            check_endpoint(cluster, &session);
            assert_ne!(
                session.ssh.host, third.address,
                "{} landed on the sysbox-runc node",
                session.name
            );
            let tasks = cluster.task_nodes(&service_of(&session.name))?;
            assert!(
                !tasks.contains(&third.node_id),
                "a task of {} was given the sysbox-runc node",
                session.name
            );
        }
        for name in names {
            bounded(120, "close", async { Ok(alice.close(name).await?) }).await?;
        }
        Ok::<(), Failed>(())
    }
    .await;
    // Put the node back either way: the later cases use all three, and its sessions (which
    // no node could run meanwhile) again.
    relabel(NODE_RUNTIME).await??;
    outcome?;
    let third = cluster.nodes[2].address.clone();
    in_use_again(
        alice,
        sessions.iter().filter(|session| session.ssh.host == third),
    )
    .await
}

/// Waits (bounded) until each session is Ready through `get` and runs a command.
async fn in_use_again(
    backend: &dyn Backend,
    sessions: impl Iterator<Item = &Session>,
) -> Result<(), Failed> {
    for session in sessions {
        let name = session.name.clone();
        crate::support::eventually(Duration::from_secs(300), || {
            let name = name.clone();
            async move {
                let now = backend.get(&name).await.map_err(|err| err.to_string())?;
                if now.state != SessionState::Ready {
                    return Err(format!("{name} is {:?}", now.state));
                }
                match exec(backend, &name, &["true"]).await {
                    Ok((_, _, 0)) => Ok(()),
                    Ok((_, err, code)) => Err(format!("{name}: `true` exited {code}: {err}")),
                    Err(err) => Err(format!("{name}: {}", say(&err))),
                }
            }
        })
        .await?;
    }
    Ok(())
}

/// (e) another owner's session is unreachable from a session, while the owner's own session
/// on another node is reachable over the owner's overlay network.
async fn owners_are_apart_across_nodes(
    cluster: &SwarmCluster,
    alice: &dyn Backend,
    bob: &dyn Backend,
    mine: &[Session],
) -> Result<(), Failed> {
    let theirs = create(cluster, bob, "sw-e-bob").await?;
    check_endpoint(cluster, &theirs);
    // Alice's first session on another node than Bob's where there is one, her second on
    // another node than her first.
    let first = mine
        .iter()
        .find(|s| s.ssh.host != theirs.ssh.host)
        .unwrap_or(&mine[0]);
    let second = mine
        .iter()
        .find(|s| s.ssh.host != first.ssh.host)
        .ok_or("alice has no two sessions on different nodes")?;

    let overlay_of = |name: &str| cluster.overlay_addresses(&service_of(name));
    let (first_nets, second_nets, bob_nets) = (
        overlay_of(&first.name)?,
        overlay_of(&second.name)?,
        overlay_of(&theirs.name)?,
    );
    // Bob's overlay addresses, as his session itself has them.
    let (said, _, code) = exec(bob, &theirs.name, &["hostname", "-I"]).await?;
    assert_eq!(code, 0);
    let bob_has: BTreeSet<&str> = said.split_whitespace().collect();
    let bob_addresses: Vec<String> = bob_nets
        .values()
        .flatten()
        .filter(|address| bob_has.contains(address.as_str()))
        .cloned()
        .collect();
    assert!(
        !bob_addresses.is_empty(),
        "no overlay address of bob's session ({bob_nets:?}) among `hostname -I`: {said}"
    );
    assert!(
        first_nets.keys().all(|net| !bob_nets.contains_key(net)),
        "alice and bob share a network: {first_nets:?} {bob_nets:?}"
    );
    let probe = |address: &str| format!("timeout 3 bash -c '</dev/tcp/{address}/22'");
    for address in &bob_addresses {
        let (_, _, code) = exec(alice, &first.name, &["sh", "-c", &probe(address)]).await?;
        assert_ne!(
            code, 0,
            "alice's {} reached bob's session at {address}:22",
            first.name
        );
    }
    // Alice's second session, on a network both of hers are on, answers.
    let shared: Vec<String> = second_nets
        .iter()
        .filter(|(net, _)| first_nets.contains_key(*net))
        .flat_map(|(_, addresses)| addresses.clone())
        .collect();
    assert!(
        !shared.is_empty(),
        "alice's sessions share no network: {first_nets:?} {second_nets:?}"
    );
    let target = shared[0].clone();
    crate::support::eventually(Duration::from_secs(60), || {
        let (name, command) = (first.name.clone(), probe(&target));
        async move {
            match exec(alice, &name, &["sh", "-c", &command]).await {
                Ok((_, _, 0)) => Ok(()),
                Ok((_, err, code)) => Err(format!("exit {code}: {err}")),
                Err(err) => Err(say(&err)),
            }
        }
    })
    .await
    .map_err(|err| {
        format!(
            "alice's {} on {} cannot reach her {} on {} at {target}:22: {}",
            first.name,
            first.ssh.host,
            second.name,
            second.ssh.host,
            say(&err)
        )
    })?;
    Ok(())
}

/// (f) close removes the session's service and its secrets and nothing else: other services
/// and secrets stay, and every volume stays (home and the inner Docker's storage).
async fn close_takes_only_the_service_and_its_secrets(
    cluster: &SwarmCluster,
    alice: &dyn Backend,
    name: &str,
) -> Result<(), Failed> {
    let service = service_of(name);
    let its_secrets: BTreeSet<String> = cluster
        .manager()
        .docker(&[
            "service",
            "inspect",
            "--format",
            "{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.SecretName}}\n{{end}}",
            &service,
        ])?
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(str::to_string)
        .collect();
    assert!(!its_secrets.is_empty(), "{service} has no secret");
    let before = cluster.inventory()?;
    bounded(120, "close", async { Ok(alice.close(name).await?) }).await?;
    let after = cluster.inventory()?;
    let gone_services: BTreeSet<&String> = before.services.difference(&after.services).collect();
    assert_eq!(gone_services, BTreeSet::from([&service]), "services");
    assert!(after.services.is_subset(&before.services), "services");
    let gone_secrets: BTreeSet<String> =
        before.secrets.difference(&after.secrets).cloned().collect();
    assert_eq!(gone_secrets, its_secrets, "secrets");
    assert!(after.secrets.is_subset(&before.secrets), "secrets");
    assert_eq!(after.volumes, before.volumes, "volumes stay");
    Ok(())
}
