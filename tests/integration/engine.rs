//! The dedicated endpoint for real: `cubbi engine start` on a private engine root brings up a
//! dockerd, `cubbi doctor --json` sees it answer and Sysbox missing, `cubbi engine stop` takes
//! it down; `cubbi setup` on a private root is idempotent and uninstalls; bad input is refused
//! before anything changes. The host Docker's files are hashed before and after every test.

use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::{Failed, Trial};

use crate::support::sysbox::SessionRuntime;
use crate::support::{Cubbi, TestHome};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        engine_start_doctor_stop_without_sysbox,
        setup_on_a_private_root_is_idempotent_and_uninstalls_without_sysbox,
        setup_refuses_bad_input_and_changes_nothing,
        a_session_on_the_setup_engine_is_kept_off_the_host,
        setup_makes_the_engine_a_labelled_swarm_node_and_uninstall_leaves,
    ]
}

/// The host Docker's files cubbi must never touch.
const HOST_DOCKER_FILES: &[&str] = &["/etc/docker/daemon.json", "/var/run/docker.sock"];

/// Content hash of regular files, identity (inode, mode, mtime) of sockets, or "absent".
fn host_docker_fingerprint() -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    HOST_DOCKER_FILES
        .iter()
        .map(|path| match std::fs::metadata(path) {
            Err(_) => format!("{path}: absent"),
            Ok(meta) if meta.is_file() => format!(
                "{path}: sha256 {}",
                cubbi::engine::sysbox::sha256_file(Path::new(path)).unwrap_or_default()
            ),
            Ok(meta) => format!(
                "{path}: inode {} mode {:o} mtime {}",
                meta.ino(),
                meta.mode(),
                meta.mtime()
            ),
        })
        .collect()
}

/// dockerd creates its iptables chains at start-up and fails when another dockerd creates the
/// same chain at the same moment, so engines start one at a time, after the shared test dockerd.
static ENGINE_START: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Root and dockerd are needed; without them the test fails (it never passes silently). Holds
/// the start lock for the whole test.
pub(crate) fn require_root_and_dockerd() -> Result<std::sync::MutexGuard<'static, ()>, Failed> {
    if !nix::unistd::geteuid().is_root() {
        return Err("this test starts a dockerd and needs root".into());
    }
    if crate::support::dockerd::which("dockerd").is_none() {
        return Err(
            "dockerd is not installed: run install/test.sh, which installs docker.io".into(),
        );
    }
    crate::support::docker_endpoint()?;
    Ok(ENGINE_START
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// A short private engine root (socket paths are limited to 107 bytes) and a unique bridge;
/// dropping it stops the engine and removes what is left, also when the test fails.
pub(crate) struct PrivateEngine {
    root: PathBuf,
    pub(crate) bridge: String,
    /// The engine's address pool, a /16 no host route touches (a cubbi engine already on the
    /// host routes 10.214.0.0/24, the default's first /24), and the bridge's /24 in it.
    pool: String,
    subnet: String,
    pub(crate) home: TestHome,
}

/// A 10.X.0.0/16 that nothing on this host routes (any table), for a private engine's pool.
fn unrouted_pool() -> Result<u8, Failed> {
    let routes = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()?;
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    // Every destination named in the table, as a network (a bare address is a /32).
    let destinations: Vec<ipnet::Ipv4Net> = routes
        .split_whitespace()
        .filter_map(|word| {
            word.parse::<ipnet::Ipv4Net>().ok().or_else(|| {
                word.parse::<std::net::Ipv4Addr>()
                    .ok()
                    .map(ipnet::Ipv4Net::from)
            })
        })
        .collect();
    let routed = |second: u32| {
        let pool = ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(10, second as u8, 0, 0), 16)
            .expect("a /16");
        destinations
            .iter()
            .any(|route| route.prefix_len() > 0 && (pool.contains(route) || route.contains(&pool)))
    };
    let start = std::process::id() % 80;
    (0..80)
        .map(|offset| (start + offset) % 80 + 150)
        .find(|second| !routed(*second))
        .and_then(|second| u8::try_from(second).ok())
        .ok_or_else(|| "no unrouted 10.X.0.0/16 (X in 150-229) for a private engine".into())
}

impl PrivateEngine {
    pub(crate) fn new(tag: &str) -> Result<Self, Failed> {
        let root = tempfile::Builder::new()
            .prefix(&format!("cubbi-{tag}-"))
            .tempdir_in("/tmp")?
            .keep();
        let second = unrouted_pool()?;
        Ok(Self {
            root,
            bridge: format!("cb{tag}{}", std::process::id() % 100_000),
            pool: format!("10.{second}.0.0/16"),
            subnet: format!("10.{second}.0.0/24"),
            home: TestHome::new(),
        })
    }

    pub(crate) fn root_arg(&self) -> String {
        self.root.display().to_string()
    }

    /// `--subnet` and `--pool` for `setup` and `engine start`: addresses nothing here uses.
    pub(crate) fn address_args(&self) -> [&str; 4] {
        ["--subnet", &self.subnet, "--pool", &self.pool]
    }

    fn cubbi(&self) -> Cubbi {
        Cubbi::new(&self.home)
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        let _ = self
            .cubbi()
            .args(["engine", "stop", "--timeout", "30", "--engine-root"])
            .args([self.root_arg()])
            .run();
        let mut bridges = engine_bridges(&self.bridge);
        bridges.push(self.bridge.clone());
        for bridge in bridges {
            let _ = Command::new("ip")
                .args(["link", "delete", &bridge])
                .output();
        }
        // `engine start` put cubbi's firewall for this bridge into the host's iptables.
        let firewall = self.root.join("firewall.sh");
        if firewall.exists() {
            let _ = Command::new("sh").arg(&firewall).arg("down").output();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn engine_start_doctor_stop_without_sysbox() -> Result<(), Failed> {
    crate::support::sysbox::require_absent()?;
    let _one_at_a_time = require_root_and_dockerd()?;
    let before = host_docker_fingerprint();
    let engine = PrivateEngine::new("e")?;
    let root = engine.root_arg();

    engine
        .cubbi()
        .args([
            "engine",
            "start",
            "--engine-root",
            &root,
            "--bridge",
            &engine.bridge,
        ])
        .args(engine.address_args())
        .run()
        .success()
        .stdout_contains("started the engine");
    engine
        .cubbi()
        .args(["engine", "status", "--engine-root", &root])
        .run()
        .success()
        .stdout_contains("running");
    // A second start sees the running engine and changes nothing.
    engine
        .cubbi()
        .args([
            "engine",
            "start",
            "--engine-root",
            &root,
            "--bridge",
            &engine.bridge,
        ])
        .args(engine.address_args())
        .run()
        .success()
        .stdout_contains("already runs");

    // Sysbox is missing here, so doctor fails (exit 1) and says how to fix it.
    let ran = engine
        .cubbi()
        .args(["--json", "doctor", "--engine-root", &root])
        .run()
        .failure();
    let report: serde_json::Value = serde_json::from_str(&ran.stdout())?;
    let check = |id: &str| {
        report["checks"]
            .as_array()
            .and_then(|checks| checks.iter().find(|c| c["id"] == id).cloned())
            .unwrap_or_default()
    };
    assert_eq!(report["endpoint"], format!("unix://{root}/docker.sock"));
    for id in [
        "endpoint-socket",
        "endpoint-answers",
        "endpoint-access",
        "daemon-json",
        "sysbox-default-runtime",
        "not-host-docker",
        "firewall",
    ] {
        assert_eq!(check(id)["status"], "ok", "{id}: {}", ran.stdout());
    }
    let sysbox = check("sysbox-runc");
    assert_eq!(sysbox["status"], "fail", "{}", ran.stdout());
    assert!(
        sysbox["remedy"]
            .as_str()
            .is_some_and(|r| r.contains("cubbi setup")),
        "{sysbox}"
    );

    // Builds run under the default runtime, sysbox-runc, which is missing: the failure says
    // what to do instead of only Docker's OCI error.
    let image_dir = tempfile::tempdir()?;
    std::fs::write(
        image_dir.path().join("Dockerfile"),
        "FROM scratch\nRUN true\n",
    )?;
    std::fs::write(
        image_dir.path().join("cubbi-image.toml"),
        "name = \"scratchy\"\ndescription = \"x\"\nversion = \"1\"\ncommand = [\"true\"]\nversion_command = [\"true\"]\n",
    )?;
    let endpoint = format!("unix://{root}/docker.sock");
    engine
        .cubbi()
        .args([
            "--endpoint",
            &endpoint,
            "image",
            "build",
            "--no-host-ca",
            "--base",
            "scratch",
            "--from",
        ])
        .args([image_dir.path().display().to_string()])
        .run()
        .failure()
        .stderr_contains("sysbox-runc, which is not installed")
        .stderr_contains("--unsafe-runc");

    engine
        .cubbi()
        .args(["engine", "stop", "--engine-root", &root])
        .run()
        .success()
        .stdout_contains("stopped the engine");
    engine
        .cubbi()
        .args(["engine", "status", "--engine-root", &root])
        .run()
        .stdout_contains("stopped");
    let bridge_left = Command::new("ip")
        .args(["link", "show", "dev", &engine.bridge])
        .output()?
        .status
        .success();
    assert!(!bridge_left, "the bridge {} is left behind", engine.bridge);
    assert_eq!(
        host_docker_fingerprint(),
        before,
        "the host Docker's files changed"
    );
    Ok(())
}

fn setup_on_a_private_root_is_idempotent_and_uninstalls_without_sysbox() -> Result<(), Failed> {
    crate::support::sysbox::require_absent()?;
    let _one_at_a_time = require_root_and_dockerd()?;
    let before = host_docker_fingerprint();
    let engine = PrivateEngine::new("s")?;
    let root = engine.root_arg();
    let setup = |extra: &[&str]| {
        engine
            .cubbi()
            .args(["setup", "--engine-root", &root, "--bridge", &engine.bridge])
            .args(engine.address_args())
            .args(["--skip-sysbox", "--no-docker-context"])
            .args(extra)
            .run()
    };
    setup(&["--dry-run"])
        .success()
        .stdout_contains("nothing changes")
        .stdout_contains("[to do  ] daemon-json");
    assert!(
        !Path::new(&root).join("daemon.json").exists(),
        "--dry-run wrote daemon.json"
    );

    setup(&[])
        .success()
        .stdout_contains("engine mode: supervised")
        .stdout_contains("[changed] engine");
    setup(&[]).success().stdout_contains("nothing changed");

    // Without Sysbox, --unsafe-runc makes runc the default runtime (so images build), restarts
    // the engine for it, and verify says sessions are not isolated.
    setup(&["--unsafe-runc"])
        .success()
        .stdout_contains("default runtime runc")
        .stdout_contains("[changed] engine")
        .stdout_contains("NOT isolated");
    let default_runtime = Command::new("docker")
        .args([
            "-H",
            &format!("unix://{root}/docker.sock"),
            "info",
            "--format",
        ])
        .arg("{{.DefaultRuntime}}")
        .output()?;
    assert_eq!(
        String::from_utf8_lossy(&default_runtime.stdout).trim(),
        "runc",
        "{}",
        String::from_utf8_lossy(&default_runtime.stderr)
    );
    setup(&["--unsafe-runc"])
        .success()
        .stdout_contains("nothing changed");

    // A key added by hand survives a re-run that has something to change.
    let daemon_json = Path::new(&root).join("daemon.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&daemon_json)?)?;
    config["log-level"] = "warn".into();
    std::fs::write(&daemon_json, serde_json::to_string_pretty(&config)?)?;
    setup(&[]).success();
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&daemon_json)?)?;
    assert_eq!(config["log-level"], "warn");

    setup(&["--uninstall", "--purge"])
        .success()
        .stdout_contains("[changed] engine");
    assert!(!daemon_json.exists(), "uninstall left daemon.json");
    assert!(
        !Path::new(&root).join("data").exists(),
        "--purge left the data-root"
    );
    assert_eq!(
        host_docker_fingerprint(),
        before,
        "the host Docker's files changed"
    );
    Ok(())
}

fn setup_refuses_bad_input_and_changes_nothing() -> Result<(), Failed> {
    let _one_at_a_time = require_root_and_dockerd()?;
    let before = host_docker_fingerprint();
    let engine = PrivateEngine::new("r")?;
    let root = engine.root_arg();
    let setup = |extra: &[&str]| {
        engine
            .cubbi()
            .args([
                "setup",
                "--engine-root",
                &root,
                "--bridge",
                &engine.bridge,
                "--skip-sysbox",
                "--no-docker-context",
                "--pool",
                &engine.pool,
            ])
            .args(extra)
            .run()
    };

    // Not root: refused plainly, before anything.
    let as_nobody = Command::new("runuser")
        .args([
            "-u",
            "nobody",
            "--",
            env!("CARGO_BIN_EXE_cubbi"),
            "setup",
            "--engine-root",
            &root,
        ])
        .output()?;
    assert!(!as_nobody.status.success());
    assert!(
        String::from_utf8_lossy(&as_nobody.stderr).contains("needs root"),
        "{as_nobody:?}"
    );

    // A corrupt daemon.json: refused with its location, left as it was.
    let daemon_json = Path::new(&root).join("daemon.json");
    std::fs::write(&daemon_json, "{\n  \"log-level\": \"warn\",\n  oops\n}\n")?;
    setup(&[])
        .failure()
        .stderr_contains("line 3")
        .stderr_contains("--force");
    assert_eq!(
        std::fs::read_to_string(&daemon_json)?,
        "{\n  \"log-level\": \"warn\",\n  oops\n}\n"
    );
    std::fs::remove_file(&daemon_json)?;

    // A subnet the host already routes: an extra bridge with an address makes one.
    let dummy = format!("cbd{}", std::process::id() % 100_000);
    let made = Command::new("ip")
        .args(["link", "add", &dummy, "type", "bridge"])
        .status()?
        .success();
    assert!(made, "cannot make a test bridge");
    let collided = (|| {
        Command::new("ip")
            .args(["address", "add", "10.214.250.1/24", "dev", &dummy])
            .status()?;
        Command::new("ip")
            .args(["link", "set", &dummy, "up"])
            .status()?;
        let ran = setup(&["--subnet", "10.214.250.0/24"]).failure();
        Ok::<_, std::io::Error>(ran.stderr())
    })();
    let _ = Command::new("ip").args(["link", "delete", &dummy]).status();
    let stderr = collided?;
    assert!(
        stderr.contains("collides") && stderr.contains(&dummy),
        "{stderr}"
    );

    // --sysbox-deb that is not a Debian package, then one that fails its checksum.
    let not_deb = Path::new(&root).join("sysbox.deb");
    std::fs::write(&not_deb, "#!/bin/sh\necho not a package\n")?;
    let not_deb_arg = not_deb.display().to_string();
    engine
        .cubbi()
        .args([
            "setup",
            "--engine-root",
            &root,
            "--sysbox-deb",
            &not_deb_arg,
        ])
        .run()
        .failure()
        .stderr_contains("not a Debian package");
    std::fs::write(
        &not_deb,
        b"!<arch>\ndebian-binary   0           0     0     100644  4         `\n2.0\n",
    )?;
    engine
        .cubbi()
        .args([
            "setup",
            "--engine-root",
            &root,
            "--sysbox-deb",
            &not_deb_arg,
        ])
        .run()
        .failure()
        .stderr_contains("SHA-256");

    assert!(!daemon_json.exists(), "a refused setup wrote daemon.json");
    assert!(
        !Path::new(&root).join("docker.sock").exists(),
        "a refused setup started dockerd"
    );
    assert_eq!(
        host_docker_fingerprint(),
        before,
        "the host Docker's files changed"
    );
    Ok(())
}

/// The bridges of an engine's networks on this host: its bridge's name plus more.
fn engine_bridges(engine_bridge: &str) -> Vec<String> {
    let listed = Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    listed
        .lines()
        .filter_map(|line| line.split(':').nth(1))
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with(engine_bridge) && name != engine_bridge)
        .collect()
}

/// A session's IPv4 address on its (first) network.
fn session_address(home_cubbi: impl Fn() -> Cubbi, name: &str) -> Result<String, Failed> {
    let shown = home_cubbi()
        // eth0: the inner dockerd's docker0 has an address of its own.
        .args([
            "session", "exec", name, "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0",
        ])
        .run()
        .success()
        .stdout();
    shown
        .split_whitespace()
        .skip_while(|word| *word != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_string)
        .ok_or_else(|| format!("no address in {name}: {shown}").into())
}

/// The networks `session show --json` lists for `name`.
fn session_networks(home_cubbi: impl Fn() -> Cubbi, name: &str) -> Result<Vec<String>, Failed> {
    let shown = home_cubbi()
        .args(["--json", "session", "show", name])
        .run()
        .success()
        .stdout();
    let json: serde_json::Value = serde_json::from_str(&shown)?;
    Ok(json["session"]["networks"]
        .as_array()
        .or_else(|| json["networks"].as_array())
        .ok_or_else(|| format!("no networks in {shown}"))?
        .iter()
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect())
}

/// From inside `name`, a TCP connection to `address:port`: "open" or "refused".
fn session_connects(
    home_cubbi: impl Fn() -> Cubbi,
    name: &str,
    address: &str,
    port: u16,
) -> String {
    let probe = format!(
        "timeout 10 bash -c 'exec 3<>/dev/tcp/{address}/{port}' 2>/dev/null && echo open || echo refused"
    );
    home_cubbi()
        .args(["session", "exec", name, "--", "bash", "-c", &probe])
        .run()
        .success()
        .stdout()
        .trim()
        .to_string()
}

/// A real session on an engine `cubbi setup` made: its network gets the engine bridge's prefix,
/// so the firewall covers it. A listener on every address of this machine is out of the
/// session's reach with the egress guard (its gateway and the machine's own address), and in
/// reach once setup drops the guard, live, without restarting the engine.
fn a_session_on_the_setup_engine_is_kept_off_the_host() -> Result<(), Failed> {
    let _one_at_a_time = require_root_and_dockerd()?;
    crate::support::docker_test("engine-session", |scope| async move {
        scope.ensure_base().await?;
        let mut engine = PrivateEngine::new("g")?;
        engine.bridge = format!("cg{}", std::process::id() % 1_000_000);
        let root = engine.root_arg();
        let private = format!("unix://{root}/docker.sock");
        // Without Sysbox the engine's default runtime is runc (setup --unsafe-runc), and its
        // sessions run under `--runtime runc --unsafe-runc` like every session of this run.
        let runtime_flags: &[&str] = match SessionRuntime::of_this_run() {
            SessionRuntime::Sysbox => &[],
            SessionRuntime::UnsafeRunc => &["--skip-sysbox", "--unsafe-runc"],
        };
        let setup = |extra: &[&str]| {
            engine
                .cubbi()
                .args(["setup", "--engine-root", &root, "--bridge", &engine.bridge])
                .args(engine.address_args())
                .args(["--no-docker-context"])
                .args(runtime_flags)
                .args(extra)
                .run()
        };
        let first = setup(&[]).success().stdout_contains("egress guard on");
        match SessionRuntime::of_this_run() {
            // With Sysbox, setup's verify runs its smoke container under it.
            SessionRuntime::Sysbox => first.stdout_contains("container root is host uid"),
            SessionRuntime::UnsafeRunc => first.stdout_contains("NOT isolated"),
        };
        let copied = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker -H {} save cubbi-base | docker -H {private} load",
                scope.endpoint
            ))
            .output()?;
        assert!(
            copied.status.success(),
            "copying cubbi-base: {}",
            String::from_utf8_lossy(&copied.stderr)
        );
        let cubbi = || {
            engine
                .cubbi()
                .env("CUBBI_DOCKER_HOST", &private)
                .env("CUBBI_OWNER", &scope.id)
        };
        // The shared network of releases before owners had their own, as they made it.
        let legacy = Command::new("docker")
            .args(["-H", &private, "network", "create", "-o"])
            .arg(format!("com.docker.network.bridge.name={}n", engine.bridge))
            .arg("cubbi-network")
            .output()?;
        assert!(legacy.status.success(), "{legacy:?}");
        cubbi()
            .args(crate::support::create_args("guarded", &[]))
            .run()
            .success()
            .stderr_contains("a network of your own");
        let network_bridges = engine_bridges(&engine.bridge);
        assert!(
            network_bridges
                .iter()
                .any(|bridge| bridge.len() == 15 && *bridge != format!("{}n", engine.bridge)),
            "the owner's network has no bridge named with the engine's prefix: {network_bridges:?}"
        );

        let listener = std::net::TcpListener::bind("0.0.0.0:0")?;
        let port = listener.local_addr()?.port();
        let route = cubbi()
            .args([
                "session", "exec", "guarded", "--", "ip", "-4", "route", "show", "default",
            ])
            .run()
            .success()
            .stdout();
        let gateway = route
            .split_whitespace()
            .skip_while(|word| *word != "via")
            .nth(1)
            .ok_or_else(|| format!("no default route in the session: {route}"))?
            .to_string();
        let host_route = Command::new("ip")
            .args(["-4", "route", "get", "1.1.1.1"])
            .output()?;
        let host_route = String::from_utf8_lossy(&host_route.stdout).into_owned();
        let host_address = host_route
            .split_whitespace()
            .skip_while(|word| *word != "src")
            .nth(1)
            .ok_or_else(|| format!("no source address in `ip route get`: {host_route}"))?
            .to_string();
        for address in [&gateway, &host_address] {
            assert_eq!(
                session_connects(cubbi, "guarded", address, port),
                "refused",
                "with the egress guard the session reached this machine at {address}:{port}"
            );
        }

        // Owners: `guarded` and `a2` are this test's, `b1` and `b2` another owner's. Each
        // owner's sessions reach each other (by name and address); nothing crosses owners.
        let other_owner = format!("{}-b", scope.id);
        let cubbi_b = || {
            engine
                .cubbi()
                .env("CUBBI_DOCKER_HOST", &private)
                .env("CUBBI_OWNER", &other_owner)
        };
        let second = cubbi()
            .args(crate::support::create_args("a2", &[]))
            .run()
            .success();
        assert!(
            !second.stderr().contains("a network of your own"),
            "the change is announced once: {}",
            second.stderr()
        );
        for name in ["b1", "b2"] {
            cubbi_b()
                .args(crate::support::create_args(name, &[]))
                .run()
                .success();
        }
        let a_networks = session_networks(cubbi, "guarded")?;
        let b_networks = session_networks(cubbi_b, "b1")?;
        assert_eq!(a_networks.len(), 1, "{a_networks:?}");
        assert!(a_networks[0].starts_with("cubbi-"), "{a_networks:?}");
        assert_ne!(a_networks, b_networks, "two owners share a network");
        assert_eq!(session_networks(cubbi, "a2")?, a_networks);
        let a2 = session_address(cubbi, "a2")?;
        let b1 = session_address(cubbi_b, "b1")?;
        let b2 = session_address(cubbi_b, "b2")?;
        let guarded = session_address(cubbi, "guarded")?;
        // sshd listens on 22 in every session. The same with the guard off (below): it is the
        // isolation between bridges, not the guard's private ranges, that keeps owners apart.
        let owners_are_apart = |guard: &str| {
            for (who, target, expected) in [
                ("a2 by name", "a2", "open"),
                ("a2 by address", a2.as_str(), "open"),
                ("b1 by address", b1.as_str(), "refused"),
                ("b2 by address", b2.as_str(), "refused"),
            ] {
                assert_eq!(
                    session_connects(cubbi, "guarded", target, 22),
                    expected,
                    "guard {guard}: guarded (owner A) to {who}"
                );
            }
            for (who, target, expected) in [
                ("b2 by name", "b2", "open"),
                ("b2 by address", b2.as_str(), "open"),
                ("guarded by address", guarded.as_str(), "refused"),
                ("a2 by address", a2.as_str(), "refused"),
                ("a2 by name", "a2", "refused"),
            ] {
                assert_eq!(
                    session_connects(cubbi_b, "b1", target, 22),
                    expected,
                    "guard {guard}: b1 (owner B) to {who}"
                );
            }
        };
        owners_are_apart("on");
        // The internet stays reachable from an owner's network: the Debian mirror apt uses.
        let mirror = crate::support::apt_sources::host_mirror(Path::new("/etc/apt"), "bookworm")?;
        let mirror_host = mirror
            .uri
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split(['/', ':']).next())
            .ok_or_else(|| format!("no host in {}", mirror.uri))?
            .to_string();
        assert_eq!(
            session_connects(cubbi, "guarded", &mirror_host, 80),
            "open",
            "the internet ({mirror_host}:80) from the owner's network"
        );
        // Without the guard the same listener answers: it was the guard that kept it out.
        setup(&["--no-egress-guard"])
            .success()
            .stdout_contains("egress guard OFF")
            .stdout_contains("[ok     ] engine");
        for address in [&gateway, &host_address] {
            assert_eq!(
                session_connects(cubbi, "guarded", address, port),
                "open",
                "without the guard {address}:{port} must answer"
            );
        }
        drop(listener);
        owners_are_apart("off");

        for name in ["b1", "b2"] {
            cubbi_b().args(["session", "close", name]).run().success();
        }
        for name in ["a2", "guarded"] {
            cubbi().args(["session", "close", name]).run().success();
        }
        setup(&["--uninstall", "--purge"]).success();
        let left = engine_bridges(&engine.bridge);
        assert!(left.is_empty(), "uninstall left the bridges {left:?}");
        let rules = Command::new("sh")
            .arg("-c")
            .arg("iptables -w -S; iptables -w -t nat -S; ip6tables -w -S")
            .output()?;
        let rules = String::from_utf8_lossy(&rules.stdout).into_owned();
        assert!(
            !rules.contains(&engine.bridge),
            "uninstall left rules for {}:\n{rules}",
            engine.bridge
        );
        Ok(())
    })
}

/// `setup --swarm-init` on a private engine: the engine (not the host's Docker) becomes a
/// swarm manager labelled with its default runtime and cubbi's version, setup prints the join
/// command, a re-run changes nothing and prints it again, a bad token is refused before
/// anything changes, a planned join never shows its token, and `--uninstall` leaves.
fn setup_makes_the_engine_a_labelled_swarm_node_and_uninstall_leaves() -> Result<(), Failed> {
    crate::support::sysbox::require_absent()?;
    let _one_at_a_time = require_root_and_dockerd()?;
    let before = host_docker_fingerprint();
    let engine = PrivateEngine::new("w")?;
    let root = engine.root_arg();
    let gateway = engine.subnet.replace(".0/24", ".1");
    let setup = |extra: &[&str]| {
        engine
            .cubbi()
            .args(["setup", "--engine-root", &root, "--bridge", &engine.bridge])
            .args(engine.address_args())
            .args(["--skip-sysbox", "--no-docker-context", "--unsafe-runc"])
            .args(extra)
            .run()
    };
    let result = (|| -> Result<(), Failed> {
        let first = setup(&["--swarm-init", "--swarm-addr", &gateway])
            .success()
            .stdout_contains("[changed] swarm")
            .stdout();
        let join = format!("cubbi setup --swarm-join {gateway}:2377 --swarm-token SWMTKN-1-");
        assert!(first.contains(&join), "{first}");
        let endpoint = format!("unix://{root}/docker.sock");
        let info = Command::new("docker")
            .args(["-H", &endpoint, "info", "--format"])
            .arg("{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.Swarm.NodeID}}")
            .output()?;
        let info = String::from_utf8_lossy(&info.stdout).into_owned();
        let words: Vec<&str> = info.split_whitespace().collect();
        assert_eq!(words.get(..2), Some(&["active", "true"][..]), "{info}");
        let labels = Command::new("docker")
            .args(["-H", &endpoint, "node", "inspect", words[2], "--format"])
            .arg("{{json .Spec.Labels}}")
            .output()?;
        let labels: serde_json::Value = serde_json::from_slice(&labels.stdout)?;
        assert_eq!(labels["io.cubbi.runtime"], "runc", "{labels}");
        assert_eq!(
            labels["io.cubbi.version"],
            env!("CARGO_PKG_VERSION"),
            "{labels}"
        );

        let doctor = engine
            .cubbi()
            .args(["--json", "doctor", "--engine-root", &root])
            .run()
            .stdout();
        let doctor: serde_json::Value = serde_json::from_str(&doctor)?;
        let swarm = doctor["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|check| check["id"] == "swarm")
            .ok_or(format!("doctor has no swarm check: {doctor}"))?;
        assert_eq!(swarm["status"], "ok", "{swarm}");
        assert!(swarm["finding"].to_string().contains("manager"), "{swarm}");

        let again = setup(&["--swarm-init"])
            .success()
            .stdout_contains("nothing changed")
            .stdout();
        assert!(again.contains(&join), "{again}");

        let token =
            "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx";
        setup(&[
            "--swarm-join",
            "192.0.2.1:2377",
            "--swarm-token",
            "not-a-token",
        ])
        .failure()
        .stderr_contains("SWMTKN-1");
        let planned = engine
            .cubbi()
            .env("CUBBI_SWARM_TOKEN", token)
            .args(["--json", "setup", "--dry-run", "--engine-root", &root])
            .args(["--swarm-join", "192.0.2.1:2377"])
            .run()
            .success()
            .stdout();
        assert!(
            !planned.contains(token),
            "the plan shows the join token: {planned}"
        );

        setup(&["--uninstall"])
            .success()
            .stdout_contains("[changed] swarm");
        Ok(())
    })();
    // The engine's swarm made docker_gwbridge in this namespace; nothing else here has one.
    let _ = Command::new("ip")
        .args(["link", "delete", "docker_gwbridge"])
        .output();
    result?;
    assert_eq!(
        host_docker_fingerprint(),
        before,
        "the host Docker's files changed"
    );
    Ok(())
}
