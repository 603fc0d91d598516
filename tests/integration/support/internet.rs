//! The "internet" of the egress tests: a network namespace behind a veth with Debian's
//! dnsmasq as its resolver (`allowed.test`, `sub.allowed.test`, `other.test`) and a Python
//! HTTP server, on addresses of the benchmark range 198.18.0.0/15 (the egress guard does not
//! block it); and `cubbi egress resolver` started as the engine's unit would run it. Everything
//! is removed on drop, the engine's nft table included.

use std::process::{Child, Command, Stdio};

use libtest_mimic::Failed;

use super::{DockerScope, TestHome};

/// The egress tests share the namespace's addresses and the engine's table: one at a time.
pub static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The "internet": 198.18.94.0/24 behind a veth, in a namespace of its own.
pub const HOST_SIDE: &str = "198.18.94.1";
pub const RESOLVER: &str = "198.18.94.2";
pub const ALLOWED: &str = "198.18.94.10";
pub const SUB_ALLOWED: &str = "198.18.94.11";
pub const OTHER: &str = "198.18.94.12";
/// Where cubbi's resolver answers (the host's side of the veth, which sessions reach).
pub const LISTEN: &str = "198.18.94.1:5353";

fn ip(args: &[&str]) -> Result<(), Failed> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

pub struct Internet {
    namespace: String,
    veth: String,
    table: String,
    children: Vec<Child>,
    _web: tempfile::TempDir,
}

impl Internet {
    pub fn start(table: &str) -> Result<Self, Failed> {
        for tool in ["dnsmasq", "nft", "python3"] {
            if Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()?
                .success()
                .then_some(())
                .is_none()
            {
                return Err(format!("{tool} is missing (install/test.sh installs it)").into());
            }
        }
        let suffix = std::process::id() % 100_000;
        let namespace = format!("cbeg{suffix}");
        let veth = format!("cbeg{suffix}h");
        let peer = format!("cbeg{suffix}n");
        let web = tempfile::tempdir()?;
        std::fs::write(web.path().join("hello.txt"), "hello from the internet\n")?;
        let mut internet = Self {
            namespace: namespace.clone(),
            veth: veth.clone(),
            table: table.to_string(),
            children: Vec::new(),
            _web: web,
        };
        ip(&["netns", "add", &namespace])?;
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", &namespace])?;
        ip(&["addr", "add", &format!("{HOST_SIDE}/24"), "dev", &veth])?;
        ip(&["link", "set", &veth, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", namespace.as_str(), "ip"];
            all.extend(args);
            ip(&all)
        };
        for address in [RESOLVER, ALLOWED, SUB_ALLOWED, OTHER] {
            inside(&["addr", "add", &format!("{address}/24"), "dev", &peer])?;
        }
        inside(&["link", "set", &peer, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        inside(&["route", "add", "default", "via", HOST_SIDE])?;
        let dnsmasq = Command::new("ip")
            .args([
                "netns",
                "exec",
                &namespace,
                "dnsmasq",
                "--no-daemon",
                "--no-resolv",
            ])
            .args(["--no-hosts", "--bind-interfaces", "--user=root"])
            .arg(format!("--listen-address={RESOLVER}"))
            .arg(format!("--address=/allowed.test/{ALLOWED}"))
            .arg(format!("--address=/sub.allowed.test/{SUB_ALLOWED}"))
            .arg(format!("--address=/other.test/{OTHER}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        internet.children.push(dnsmasq);
        let web = Command::new("ip")
            .args([
                "netns",
                "exec",
                &namespace,
                "python3",
                "-m",
                "http.server",
                "80",
            ])
            .arg("--directory")
            .arg(internet._web.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        internet.children.push(web);
        Ok(internet)
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .status();
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.table])
            .status();
    }
}

/// The engine bridge of the harness's dockerd: its networks' bridges start with it.
pub async fn engine_bridge(scope: &DockerScope) -> Result<String, Failed> {
    let bridge = scope
        .docker
        .inspect_network(
            "bridge",
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await?
        .options
        .and_then(|options| options.get("com.docker.network.bridge.name").cloned())
        .ok_or("the default network names no bridge")?;
    if bridge == "docker0" {
        return Err("the harness's dockerd uses docker0; give it a bridge of its own".into());
    }
    Ok(bridge)
}

/// The resolver as the engine's unit runs it, on the harness's dockerd.
pub fn start_resolver(
    scope: &DockerScope,
    home: &TestHome,
    state: &std::path::Path,
    bridge: &str,
) -> ResolverProcess {
    ResolverProcess(
        scope
            .cubbi(home)
            .env("CUBBI_EGRESS_DIR", state)
            .args(["egress", "resolver", "--listen", LISTEN, "--bridge", bridge])
            .args(["--upstream", RESOLVER])
            .spawn(),
    )
}

/// The resolver's process, killed however the test ends (a failed assertion included), so it
/// never outlives the test holding the fixture's address and port.
pub struct ResolverProcess(Child);

impl Drop for ResolverProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
