//! `cubbi setup` against real systemd: inside a system container booted from `cubbi-base`
//! (systemd as PID 1, a system bus, its own docker.service on /var/run/docker.sock), the real
//! cubbi binary installs the dedicated endpoint as `cubbi-docker.service` over D-Bus. The tests
//! read the unit's state back over D-Bus (busctl), prove a re-run restarts nothing, that
//! `--uninstall` takes it all down, that the container's own dockerd — a real "host Docker" —
//! keeps answering throughout, and that the egress guard keeps containers on the dedicated
//! endpoint off the machine's private addresses.
//!
//! The system container is made here (not with `cubbi session create`) so that
//! /var/lib/cubbi-docker and /var/lib/docker are volumes: both dockerds then get overlay2 on a
//! real filesystem instead of the container's own overlayfs.

use std::process::{Command, Output};
use std::time::Duration;

use libtest_mimic::{Failed, Trial};

use crate::support::{DockerScope, docker_test, eventually};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        setup_drives_the_unit_over_dbus_and_leaves_the_host_docker_alone,
        egress_guard_keeps_containers_off_private_addresses,
        setup_service_runs_cubbi_serve_hardened_as_its_own_user,
    ]
}

const UNIT_PATH: &str = "/org/freedesktop/systemd1/unit/cubbi_2ddocker_2eservice";
const DEDICATED: &str = "unix:///var/run/cubbi-docker.sock";
const OWN: &str = "unix:///var/run/docker.sock";

/// A booted `cubbi-base` container with the cubbi binary at /usr/local/bin/cubbi.
struct SystemContainer {
    endpoint: String,
    id: String,
}

impl SystemContainer {
    async fn boot(scope: &DockerScope) -> Result<Self, Failed> {
        use bollard::models::{ContainerCreateBody, HostConfig};
        use bollard::query_parameters::CreateContainerOptionsBuilder;
        scope.ensure_base().await?;
        let mut host = HostConfig::default();
        cubbi::local::runtime::apply_unsafe_runc(&mut host);
        let body = ContainerCreateBody {
            image: Some("cubbi-base".into()),
            labels: Some(scope.labels()),
            host_config: Some(host),
            volumes: Some(vec![
                "/var/lib/cubbi-docker".to_string(),
                "/var/lib/docker".to_string(),
            ]),
            ..Default::default()
        };
        let created = scope
            .docker
            .create_container(Some(CreateContainerOptionsBuilder::new().build()), body)
            .await?;
        scope.docker.start_container(&created.id, None).await?;
        let container = Self {
            endpoint: scope.endpoint.clone(),
            id: created.id,
        };
        container.wait_for_boot().await?;
        let copied = Command::new("docker")
            .args(["-H", &container.endpoint, "cp", env!("CARGO_BIN_EXE_cubbi")])
            .arg(format!("{}:/usr/local/bin/cubbi", container.id))
            .output()?;
        assert!(
            copied.status.success(),
            "docker cp of the cubbi binary failed: {}",
            text(&copied.stderr)
        );
        Ok(container)
    }

    /// `systemctl is-system-running --wait` as root; the bus may not answer for the first moments.
    async fn wait_for_boot(&self) -> Result<(), Failed> {
        let mut last = String::new();
        for _ in 0..120 {
            let out = self.exec(&["systemctl", "is-system-running", "--wait"]);
            let state = text(&out.stdout).trim().to_string();
            if state == "running" {
                return Ok(());
            }
            if state == "degraded" {
                let failed = self.exec(&["systemctl", "--failed", "--no-legend"]);
                return Err(format!(
                    "the system container booted degraded: {}",
                    text(&failed.stdout)
                )
                .into());
            }
            last = format!("{state} {}", text(&out.stderr));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(format!("systemd inside the container never finished booting: {last}").into())
    }

    fn exec(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .args(["-H", &self.endpoint, "exec", &self.id])
            .args(args)
            .output()
            .expect("docker exec runs")
    }

    fn sh(&self, script: &str) -> Output {
        self.exec(&["bash", "-c", script])
    }

    /// Runs `script` as root inside and returns its stdout; a failure fails the test.
    #[track_caller]
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "inside the system container `{script}` failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `cubbi ARGS` as root inside, with its output for the assertion messages.
    fn cubbi(&self, args: &[&str]) -> (bool, String) {
        let mut full = vec!["/usr/local/bin/cubbi"];
        full.extend(args);
        let out = self.exec(&full);
        (
            out.status.success(),
            format!(
                "cubbi {}\nexit {:?}\nstdout:\n{}\nstderr:\n{}",
                args.join(" "),
                out.status.code(),
                text(&out.stdout),
                text(&out.stderr)
            ),
        )
    }

    /// A property of cubbi-docker.service, read over D-Bus from systemd itself: busctl prints
    /// `s "active"` or `t 1700000000000000`; this returns the value without its type.
    #[track_caller]
    fn unit_property(&self, property: &str) -> String {
        let out = self.ok(&format!(
            "busctl get-property org.freedesktop.systemd1 {UNIT_PATH} \
             org.freedesktop.systemd1.Unit {property}"
        ));
        let value = out.trim();
        value
            .split_once(' ')
            .map(|(_, value)| value.trim_matches('"').to_string())
            .unwrap_or_else(|| value.to_string())
    }

    /// cubbi-egress.service's state, file state, load state and command line.
    fn egress_unit(&self) -> String {
        self.ok(
            "systemctl show cubbi-egress -p ActiveState -p UnitFileState -p LoadState \
             -p ExecStart",
        )
    }

    /// Whether `docker -H ENDPOINT info` answers inside, and the daemon's ID when it does.
    fn docker_id(&self, endpoint: &str) -> Option<String> {
        let out = self.exec(&[
            "timeout",
            "30",
            "docker",
            "-H",
            endpoint,
            "info",
            "--format",
            "{{.ID}} {{.DockerRootDir}}",
        ]);
        out.status
            .success()
            .then(|| text(&out.stdout).trim().to_string())
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn setup_drives_the_unit_over_dbus_and_leaves_the_host_docker_alone() -> Result<(), Failed> {
    docker_test("setup-systemd", |scope| async move {
        let sc = SystemContainer::boot(&scope).await?;
        let own_before = sc
            .docker_id(OWN)
            .expect("the system container's own dockerd answers on /var/run/docker.sock");
        let own_config = sc.ok("sha256sum /etc/docker/daemon.json");
        let own_invocation = sc.ok("systemctl show -p InvocationID --value docker.service");

        let (ok, first) = sc.cubbi(&["setup", "--skip-sysbox", "--no-docker-context"]);
        assert!(ok, "first setup failed: {first}");
        assert!(first.contains("engine mode: systemd"), "{first}");
        assert!(first.contains("[changed]"), "{first}");

        assert_eq!(sc.unit_property("ActiveState"), "active");
        assert_eq!(sc.unit_property("SubState"), "running");
        assert_eq!(sc.unit_property("UnitFileState"), "enabled");
        assert_eq!(
            sc.unit_property("FragmentPath"),
            "/etc/systemd/system/cubbi-docker.service"
        );
        let invocation = sc.unit_property("InvocationID");
        let entered = sc.unit_property("ActiveEnterTimestamp");
        assert_ne!(entered, "0", "an active unit has an ActiveEnterTimestamp");

        let dedicated = sc
            .docker_id(DEDICATED)
            .unwrap_or_else(|| panic!("the dedicated socket does not answer after: {first}"));
        assert!(
            dedicated.ends_with("/var/lib/cubbi-docker"),
            "the dedicated engine's data-root: {dedicated}"
        );
        assert_ne!(
            dedicated, own_before,
            "the dedicated endpoint is a separate daemon"
        );
        // The egress resolver beside it, on the bridge's gateway, its table in nftables.
        assert!(first.contains("egress-resolver"), "{first}");
        let egress = sc.egress_unit();
        assert!(egress.contains("ActiveState=active"), "{egress}\n{first}");
        assert!(egress.contains("UnitFileState=enabled"), "{egress}");
        assert!(
            egress.contains("egress resolver --listen 10.") && egress.contains("--bridge cubbi0"),
            "{egress}"
        );
        let table = || async {
            let out = sc.sh("nft list table ip cubbi_egress_cubbi0");
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "no egress table: {}\n{}",
                    text(&out.stderr),
                    sc.ok("journalctl -u cubbi-egress --no-pager | tail -n 20")
                ))
            }
        };
        eventually(Duration::from_secs(30), table).await?;
        let egress_invocation = sc.ok("systemctl show -p InvocationID --value cubbi-egress");
        let group = sc.ok("stat -c %G /var/run/cubbi-docker.sock");
        assert_eq!(group.trim(), "cubbi", "the socket belongs to group cubbi");
        assert_eq!(
            sc.docker_id(OWN).as_deref(),
            Some(own_before.as_str()),
            "the container's own dockerd still answers, the same daemon"
        );

        // Again: nothing to do, and the unit is not restarted.
        let (ok, second) = sc.cubbi(&["setup", "--skip-sysbox", "--no-docker-context"]);
        assert!(ok, "second setup failed: {second}");
        assert!(
            second.contains("nothing changed"),
            "a re-run must say it changed nothing: {second}"
        );
        assert!(
            !second.contains("[changed]"),
            "a re-run changed a step: {second}"
        );
        assert_eq!(
            sc.unit_property("InvocationID"),
            invocation,
            "re-run restarted the unit"
        );
        assert_eq!(sc.unit_property("ActiveEnterTimestamp"), entered);
        assert_eq!(sc.unit_property("ActiveState"), "active");
        assert_eq!(
            sc.ok("systemctl show -p InvocationID --value cubbi-egress"),
            egress_invocation,
            "re-run restarted the egress resolver"
        );

        // An upstream given: the resolver's unit is rewritten and restarted, the engine kept.
        let (ok, upstream) = sc.cubbi(&[
            "setup",
            "--skip-sysbox",
            "--no-docker-context",
            "--dns-upstream",
            "192.0.2.53",
        ]);
        assert!(ok, "setup --dns-upstream failed: {upstream}");
        let egress = sc.egress_unit();
        assert!(egress.contains("--upstream 192.0.2.53:53"), "{egress}");
        assert!(
            egress.contains("ActiveState=active"),
            "{egress}\n{upstream}"
        );
        assert_eq!(sc.unit_property("InvocationID"), invocation, "{upstream}");
        let (ok, bad) = sc.cubbi(&["setup", "--dns-upstream", "resolver.example"]);
        assert!(!ok && bad.contains("is not an address"), "{bad}");

        // Uninstall: the unit is stopped, disabled and gone; the data-root stays.
        let (ok, removed) = sc.cubbi(&["setup", "--uninstall"]);
        assert!(ok, "uninstall failed: {removed}");
        assert_eq!(sc.unit_property("ActiveState"), "inactive", "{removed}");
        assert_eq!(sc.unit_property("LoadState"), "not-found", "{removed}");
        assert_eq!(sc.unit_property("UnitFileState"), "", "{removed}");
        assert_eq!(
            sc.docker_id(DEDICATED),
            None,
            "the dedicated socket still answers after uninstall"
        );
        let egress = sc.egress_unit();
        assert!(
            egress.contains("LoadState=not-found"),
            "{egress}\n{removed}"
        );
        assert!(
            !sc.sh("nft list table ip cubbi_egress_cubbi0")
                .status
                .success(),
            "uninstall left the egress table"
        );
        let leftovers = sc.ok("ls -d /etc/systemd/system/cubbi-docker.service \
             /etc/systemd/system/multi-user.target.wants/cubbi-docker.service \
             /etc/systemd/system/cubbi-egress.service \
             /etc/cubbi/docker/daemon.json /var/run/cubbi-docker.sock 2>/dev/null || true");
        assert_eq!(leftovers.trim(), "", "uninstall left files behind");
        sc.ok("test -d /var/lib/cubbi-docker/image");
        let bridge = sc.sh("ip link show cubbi0");
        assert!(!bridge.status.success(), "the cubbi0 bridge is still there");

        // The container's own Docker was never touched: same daemon, config, unit invocation.
        assert_eq!(sc.docker_id(OWN).as_deref(), Some(own_before.as_str()));
        assert_eq!(sc.ok("sha256sum /etc/docker/daemon.json"), own_config);
        assert_eq!(
            sc.ok("systemctl show -p InvocationID --value docker.service"),
            own_invocation,
            "docker.service was restarted"
        );
        Ok(())
    })
}

/// `GET /healthz` from inside: curl where the image has it, else bash's /dev/tcp.
const HEALTHZ: &str = "if command -v curl >/dev/null; then \
       curl -fsS --max-time 5 http://127.0.0.1:3000/healthz; \
     else exec 3<>/dev/tcp/127.0.0.1/3000 && \
       printf 'GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 && timeout 5 cat <&3; fi";

/// `cubbi setup --service` on top of the engine: the cubbi-serve user in group cubbi, the
/// default config root:cubbi-serve 0640, the hardened unit active and answering /healthz; a
/// re-run changes nothing and `--uninstall` takes the unit away.
fn setup_service_runs_cubbi_serve_hardened_as_its_own_user() -> Result<(), Failed> {
    docker_test("setup-serve", |scope| async move {
        let sc = SystemContainer::boot(&scope).await?;
        let (ok, setup) = sc.cubbi(&["setup", "--skip-sysbox", "--no-docker-context", "--service"]);
        // What setup made before the service had to answer is checked first, so a service that
        // does not come up still shows which of these held.
        let id = sc.ok("id cubbi-serve");
        assert!(
            id.contains("(cubbi)"),
            "cubbi-serve is not in group cubbi: {id}
{setup}"
        );
        assert!(id.contains("(cubbi-serve)"), "{id}");
        let shell = sc.ok("getent passwd cubbi-serve | cut -d: -f7");
        assert_eq!(shell.trim(), "/usr/sbin/nologin");
        let config = sc.ok("stat -c '%a %U:%G' /etc/cubbi/service.toml");
        assert_eq!(config.trim(), "640 root:cubbi-serve", "{setup}");
        sc.ok("grep -qx 'port = 3000' /etc/cubbi/service.toml");
        let hardening = sc.ok(
            "systemctl show cubbi-serve -p NoNewPrivileges -p ProtectSystem -p ProtectHome \
             -p PrivateTmp -p User -p SupplementaryGroups -p CapabilityBoundingSet \
             -p FragmentPath -p UnitFileState",
        );
        for wanted in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "User=cubbi-serve",
            "SupplementaryGroups=cubbi",
            "CapabilityBoundingSet=\n",
            "FragmentPath=/etc/systemd/system/cubbi-serve.service",
            "UnitFileState=enabled",
        ] {
            assert!(
                format!("{hardening}\n").contains(wanted),
                "`{wanted}` missing from:\n{hardening}\n{setup}"
            );
        }
        let exec = sc.ok("systemctl show cubbi-serve -p ExecStart --value");
        assert!(
            exec.contains("/usr/local/bin/cubbi serve --config /etc/cubbi/service.toml"),
            "{exec}"
        );

        // Needs `cubbi serve`: the service up, as its user, answering /healthz.
        let journal = || sc.ok("journalctl -u cubbi-serve --no-pager | tail -n 30");
        assert!(ok, "setup --service failed: {setup}\n{}", journal());
        assert!(setup.contains("serve-health"), "{setup}");
        let active = sc.sh("systemctl is-active cubbi-serve");
        assert_eq!(text(&active.stdout).trim(), "active", "{}", journal());
        let pid = sc.ok("systemctl show -p MainPID --value cubbi-serve");
        let owner = sc.ok(&format!("stat -c %U /proc/{}", pid.trim()));
        assert_eq!(
            owner.trim(),
            "cubbi-serve",
            "the service runs as its own user"
        );
        let state_dir = sc.ok("stat -c '%a %U' /var/lib/cubbi");
        assert_eq!(state_dir.trim(), "700 cubbi-serve");
        let health = sc.ok(HEALTHZ);
        assert!(
            health.replace(' ', "").contains(r#""status":"ok""#),
            "/healthz: {health}"
        );
        let (_, doctor) = sc.cubbi(&["doctor"]);
        assert!(
            doctor
                .lines()
                .any(|line| line.contains("serve") && line.contains("ok")),
            "{doctor}"
        );

        // Again: nothing changes, the service is not restarted, and a hand-edited config stays.
        sc.ok("echo '# mine' >> /etc/cubbi/service.toml");
        let invocation = sc.ok("systemctl show -p InvocationID --value cubbi-serve");
        let (ok, again) = sc.cubbi(&["setup", "--skip-sysbox", "--no-docker-context", "--service"]);
        assert!(ok, "{again}");
        assert!(again.contains("nothing changed"), "{again}");
        assert_eq!(
            sc.ok("systemctl show -p InvocationID --value cubbi-serve"),
            invocation
        );
        sc.ok("tail -n 1 /etc/cubbi/service.toml | grep -qx '# mine'");

        // Uninstall: the unit goes, the user and config stay (no --purge).
        let (ok, removed) = sc.cubbi(&["setup", "--uninstall"]);
        assert!(ok, "{removed}");
        sc.ok("test ! -e /etc/systemd/system/cubbi-serve.service");
        let after = sc.sh("systemctl is-active cubbi-serve");
        assert_ne!(text(&after.stdout).trim(), "active", "{removed}");
        sc.ok("id cubbi-serve && test -e /etc/cubbi/service.toml");
        Ok(())
    })
}

/// A container on the dedicated endpoint, on `network`, tries TCP to `address:22` (sshd listens
/// there) and prints the first bytes it reads, or fails.
fn probe_from_dedicated(sc: &SystemContainer, network: &str, address: &str) -> Output {
    sc.sh(&format!(
        "timeout 60 docker -H {DEDICATED} run --rm --runtime runc --network {network} probe \
         /bin/bash -c 'exec 3<>/dev/tcp/{address}/22 && head -c 4 <&3'"
    ))
}

fn assert_reaches(sc: &SystemContainer, network: &str, address: &str, why: &str) {
    let out = probe_from_dedicated(sc, network, address);
    assert_eq!(
        text(&out.stdout),
        "SSH-",
        "{why}: {address}:22 must be reachable from {network}: {}\n{}",
        text(&out.stderr),
        sc.ok("iptables -w -S; iptables -w -t nat -S")
    );
}

fn assert_refused(sc: &SystemContainer, network: &str, address: &str) {
    let out = probe_from_dedicated(sc, network, address);
    assert!(
        !out.status.success() && text(&out.stdout).is_empty(),
        "with the egress guard, {address}:22 must be unreachable from {network} on the dedicated \
         endpoint, but it answered {:?}\n{}",
        text(&out.stdout),
        sc.ok("iptables -w -S; iptables -w -t nat -S")
    );
    assert_ne!(
        out.status.code(),
        Some(124),
        "the connection from {network} to {address} must be refused at once, not time out"
    );
}

/// The host Docker's own NAT chain: a second dockerd with iptables on would re-create it empty.
/// A LAN neighbour (the `cubbi-t1` namespace) that routes the engine's pool via this host
/// cannot open a connection to a session's listener, even where FORWARD's policy is ACCEPT (a
/// host with no other Docker): CUBBI-FWD's last rule drops it. The same connection succeeds
/// with that rule taken out, so the probe can see a way in when there is one.
fn assert_no_way_in_from_the_lan(sc: &SystemContainer) {
    sc.ok(&format!(
        "docker -H {DEDICATED} run -d -i --runtime runc --network probe-net --name inbound probe \
         /bin/bash -c 'read line' >/dev/null"
    ));
    let pid = sc.ok(&format!(
        "docker -H {DEDICATED} inspect -f '{{{{.State.Pid}}}}' inbound"
    ));
    let address = sc
        .ok(&format!(
            "docker -H {DEDICATED} inspect -f \
             '{{{{range .NetworkSettings.Networks}}}}{{{{.IPAddress}}}}{{{{end}}}}' inbound"
        ))
        .trim()
        .to_string();
    // A listener in the session's network namespace: the host's sshd, entered with nsenter.
    sc.ok(&format!(
        "nsenter -t {} -n /usr/sbin/sshd -p 2222 -o PidFile=none",
        pid.trim()
    ));
    let banner = sc.ok(&format!("exec 3<>/dev/tcp/{address}/2222 && head -c 4 <&3"));
    assert_eq!(
        banner, "SSH-",
        "the session's listener answers from the host"
    );
    sc.ok("iptables -w -P FORWARD ACCEPT && \
           ip -n cubbi-t1 route replace 10.214.0.0/16 via 172.31.250.1");
    let from_lan = format!(
        "ip netns exec cubbi-t1 timeout 3 bash -c 'exec 3<>/dev/tcp/{address}/2222 && head -c 4 <&3'"
    );
    let blocked = sc.sh(&from_lan);
    assert!(
        !blocked.status.success(),
        "a LAN neighbour reached a session's listener at {address}:2222: {}",
        text(&blocked.stdout)
    );
    sc.ok("iptables -w -D CUBBI-FWD-cubbi0 -o cubbi0+ -j DROP");
    let open = sc.sh(&from_lan);
    sc.ok("iptables -w -A CUBBI-FWD-cubbi0 -o cubbi0+ -j DROP");
    assert_eq!(
        text(&open.stdout),
        "SSH-",
        "without the DROP the neighbour gets in, so the probe works"
    );
    sc.ok(&format!("docker -H {DEDICATED} rm -f inbound >/dev/null"));
}

fn own_docker_nat(sc: &SystemContainer) -> String {
    sc.ok("iptables -w -t nat -S DOCKER")
}

fn egress_guard_keeps_containers_off_private_addresses() -> Result<(), Failed> {
    docker_test("setup-egress", |scope| async move {
        let sc = SystemContainer::boot(&scope).await?;
        // Listeners: sshd on an address of the machine itself (put on `lo`, since the dummy
        // module may not be loaded; reached through INPUT), and a second sshd in a network
        // namespace behind a veth pair, both on a private network (172.31.250.2) and on a
        // public one (198.51.100.2, standing in for the internet), reached through FORWARD.
        sc.ok("ip address add 192.168.250.1/32 dev lo");
        sc.ok("ip netns add cubbi-t1 && \
               ip link add cubbi-t1h type veth peer name cubbi-t1n && \
               ip link set cubbi-t1n netns cubbi-t1 && \
               ip address add 172.31.250.1/30 dev cubbi-t1h && \
               ip address add 198.51.100.1/30 dev cubbi-t1h && \
               ip address add 100.64.250.1/30 dev cubbi-t1h && ip link set cubbi-t1h up && \
               ip -n cubbi-t1 address add 172.31.250.2/30 dev cubbi-t1n && \
               ip -n cubbi-t1 address add 198.51.100.2/30 dev cubbi-t1n && \
               ip -n cubbi-t1 address add 100.64.250.2/30 dev cubbi-t1n && \
               ip -n cubbi-t1 link set cubbi-t1n up && ip -n cubbi-t1 link set lo up && \
               ip -n cubbi-t1 route add default via 172.31.250.1 && \
               ip netns exec cubbi-t1 /usr/sbin/sshd -p 22 -o PidFile=none");
        for address in [
            "192.168.250.1",
            "172.31.250.2",
            "198.51.100.2",
            "100.64.250.2",
        ] {
            let banner = sc.ok(&format!("exec 3<>/dev/tcp/{address}/22 && head -c 4 <&3"));
            assert_eq!(banner, "SSH-", "the listener on {address} answers locally");
        }
        // An image made from the container's own bash and its libs, for both engines.
        let image = "set -e; d=$(mktemp -d); mkdir -p $d/bin $d/usr/bin; cp /bin/bash $d/bin/bash; \
             cp /usr/bin/head $d/usr/bin/head; \
             for lib in $(ldd /bin/bash /usr/bin/head | grep -o '/[^ :]*' | sort -u); do \
               mkdir -p $d$(dirname $lib); cp $lib $d$lib; done; \
             tar -C $d -c . | docker -H ENDPOINT import - probe >/dev/null";
        sc.ok(&image.replace("ENDPOINT", OWN));
        // The host Docker publishes a port: its DNAT rule lives in the shared DOCKER chain.
        sc.ok(&format!(
            "docker -H {OWN} run -d -i -p 127.0.0.1:18080:80 probe /bin/bash -c 'read line'"
        ));
        let own_nat = own_docker_nat(&sc);
        assert!(own_nat.contains("18080"), "{own_nat}");

        let (ok, setup) = sc.cubbi(&["setup", "--skip-sysbox", "--no-docker-context"]);
        assert!(ok, "setup failed: {setup}");
        assert!(setup.contains("firewall"), "{setup}");
        assert!(setup.contains("egress guard on"), "{setup}");
        assert_eq!(
            own_docker_nat(&sc),
            own_nat,
            "starting the dedicated engine changed the host Docker's NAT rules"
        );
        sc.ok("iptables -w -S CUBBI-EGRESS-cubbi0");
        let forward = sc.ok("iptables -w -S CUBBI-FWD-cubbi0");
        assert!(
            forward
                .trim_end()
                .ends_with("-A CUBBI-FWD-cubbi0 -o cubbi0+ -j DROP"),
            "new connections into the bridges must be dropped last: {forward}"
        );
        // Fail closed: without its script the unit does not start the engine.
        sc.ok("mv /etc/cubbi/docker/firewall.sh /root/firewall.sh");
        let restart = sc.sh("systemctl restart cubbi-docker.service");
        assert!(
            !restart.status.success(),
            "the engine started without its firewall script"
        );
        let journal = sc.ok("journalctl -u cubbi-docker.service --no-pager | tail -n 20");
        assert!(
            journal.contains("does not start without its firewall"),
            "{journal}"
        );
        sc.ok("mv /root/firewall.sh /etc/cubbi/docker/firewall.sh && \
               systemctl reset-failed cubbi-docker.service; \
               systemctl restart cubbi-docker.service");
        sc.ok(&image.replace("ENDPOINT", DEDICATED));
        // What `cubbi-network` is on this engine: a bridge named with the engine bridge's prefix.
        sc.ok(&format!(
            "docker -H {DEDICATED} network create -o com.docker.network.bridge.name=cubbi0n \
             probe-net >/dev/null"
        ));
        let gateway = sc
            .ok("ip -4 -o address show cubbi0 | awk '{print $4}' | cut -d/ -f1")
            .trim()
            .to_string();
        for network in ["bridge", "probe-net"] {
            // NAT and forwarding are cubbi's (dockerd runs without iptables) and they work.
            assert_reaches(&sc, network, "198.51.100.2", "the internet stays reachable");
            // Carrier-grade NAT (Tailscale, a cloud's metadata) is refused like RFC 1918.
            for address in [
                "192.168.250.1",
                "172.31.250.2",
                "100.64.250.2",
                gateway.as_str(),
            ] {
                assert_refused(&sc, network, address);
            }
        }
        let (ok, doctor) = sc.cubbi(&["doctor"]);
        assert!(doctor.contains("firewall"), "{ok} {doctor}");
        assert!(
            doctor
                .lines()
                .any(|line| line.contains("firewall") && line.contains("ok")),
            "{doctor}"
        );

        assert_no_way_in_from_the_lan(&sc);

        // Uninstall takes the rules away ...
        let (ok, removed) = sc.cubbi(&["setup", "--uninstall"]);
        assert!(ok, "uninstall failed: {removed}");
        let rules = sc.ok("iptables -w -S; iptables -w -t nat -S; ip6tables -w -S");
        assert!(!rules.contains("CUBBI"), "{rules}");
        sc.ok("test ! -e /etc/cubbi/docker/firewall.sh");
        for bridge in ["cubbi0", "cubbi0n"] {
            let left = sc.sh(&format!("ip link show {bridge}"));
            assert!(!left.status.success(), "uninstall left the bridge {bridge}");
        }
        // ... and the endpoint brought back without the guard reaches every listener: it was
        // the guard, not the network, that kept them out.
        let (ok, unguarded) = sc.cubbi(&[
            "setup",
            "--skip-sysbox",
            "--no-docker-context",
            "--no-egress-guard",
        ]);
        assert!(ok, "setup --no-egress-guard failed: {unguarded}");
        assert!(unguarded.contains("egress guard OFF"), "{unguarded}");
        for address in [
            "192.168.250.1",
            "172.31.250.2",
            "198.51.100.2",
            "100.64.250.2",
        ] {
            assert_reaches(&sc, "bridge", address, "without the guard");
        }
        assert_eq!(own_docker_nat(&sc), own_nat);
        Ok(())
    })
}
