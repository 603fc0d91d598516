//! What Sysbox promises, shown on real sessions (the Sysbox group: these run only where Sysbox
//! is, and are named as not run elsewhere): a session under the default runtime
//! (sysbox-runc) maps its root to an unprivileged host uid, cannot read a root-only host file
//! bound into it, sees Sysbox's virtualised /proc and /sys, and runs an inner Docker whose
//! containers the engine never sees. The same probes under `--unsafe-runc` show what that
//! mode gives up.

use std::os::unix::fs::PermissionsExt;

use bollard::query_parameters::ListContainersOptionsBuilder;
use libtest_mimic::{Failed, Trial};

use crate::support::{DockerScope, TestHome, docker_test, sysbox};

pub fn tests() -> Vec<Trial> {
    let mut tests = crate::trials![unsafe_runc_session_shows_what_it_gives_up];
    tests.extend(crate::sysbox_trials![
        default_runtime_session_is_isolated,
        verify_smoke_needs_no_prior_image,
    ]);
    tests
}

/// What one session shows about its isolation.
struct Findings {
    /// `/proc/self/uid_map` as root in the session: (inside, outside, count).
    root_map: (u64, u64, u64),
    /// Whether `sudo cat` of a 0600 host-root file bound into the session worked.
    root_reads_host_secret: bool,
    /// Mount points under /proc and /sys that sysbox-fs serves (FUSE).
    virtualised: Vec<String>,
    /// The inner dockerd's storage driver.
    inner_driver: String,
}

const SECRET: &str = "only-host-root-reads-this";

fn exec(scope: &DockerScope, home: &TestHome, name: &str, script: &str) -> String {
    scope
        .cubbi(home)
        .args(["session", "exec", name, "--", "bash", "-c", script])
        .run()
        .success()
        .stdout()
}

/// Creates a session with a root-only host file bound in, and reads what it shows.
fn probe(scope: &DockerScope, home: &TestHome, name: &str, extra: &[&str]) -> Findings {
    let secret_dir = home.path().join("host-root-only");
    std::fs::create_dir_all(&secret_dir).expect("secret dir");
    let secret = secret_dir.join("secret");
    std::fs::write(&secret, SECRET).expect("secret file");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("0600");
    let bind = format!("{}:/mnt/host-secret:ro", secret.display());
    // `extra` names the runtime; none is the endpoint's default.
    let args = crate::support::create_args_on(extra, name, &["-v", &bind]);
    let created = scope.cubbi(home).args(args).run().success();
    let warned = created.stderr().contains("NOT isolated");
    assert_eq!(
        warned,
        !extra.is_empty(),
        "the create warning must appear exactly under --unsafe-runc:\n{}",
        created.stderr()
    );

    let state = exec(
        scope,
        home,
        name,
        "sudo systemctl is-system-running --wait; systemctl --failed --no-legend --plain",
    );
    assert_eq!(state.trim(), "running", "systemd state and failed units");

    let map = exec(scope, home, name, "sudo cat /proc/self/uid_map");
    let numbers: Vec<u64> = map
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 3, "uid_map: {map:?}");

    let read = exec(
        scope,
        home,
        name,
        "sudo cat /mnt/host-secret 2>/dev/null || echo refused",
    );
    let virtualised = exec(
        scope,
        home,
        name,
        "awk '$5 ~ \"^/(proc|sys)\" && $0 ~ / - fuse/ {print $5}' /proc/self/mountinfo | sort -u",
    );
    let inner_driver = exec(
        scope,
        home,
        name,
        "docker info --format '{{.Driver}}' 2>/dev/null",
    );
    Findings {
        root_map: (numbers[0], numbers[1], numbers[2]),
        root_reads_host_secret: read.contains(SECRET),
        virtualised: virtualised.lines().map(str::to_string).collect(),
        inner_driver: inner_driver.trim().to_string(),
    }
}

/// As `agent`, imports a tiny image made from the session's own shell, runs it once in the
/// foreground and leaves one running, named `name`; returns what the foreground run printed.
fn inner_docker_run(scope: &DockerScope, home: &TestHome, session: &str, name: &str) -> String {
    exec(
        scope,
        home,
        session,
        &format!(
            "set -e; d=$(mktemp -d); mkdir -p $d/bin; cp /bin/dash $d/bin/sh; \
             cp /bin/sleep $d/bin/sleep; \
             for lib in $( (ldd /bin/dash; ldd /bin/sleep) | grep -o '/[^ ]*' | sort -u); do \
               mkdir -p $d$(dirname $lib); cp $lib $d$lib; done; \
             tar -C $d -c . | docker import - tiny >/dev/null; \
             docker run --rm tiny /bin/sh -c 'echo inner-docker-ok'; \
             docker run -d --name {name} tiny /bin/sleep 600 >/dev/null"
        ),
    )
}

async fn engine_container_names(scope: &DockerScope) -> Result<Vec<String>, Failed> {
    let all = scope
        .docker
        .list_containers(Some(ListContainersOptionsBuilder::new().all(true).build()))
        .await?;
    Ok(all
        .into_iter()
        .flat_map(|c| c.names.unwrap_or_default())
        .map(|n| n.trim_start_matches('/').to_string())
        .collect())
}

fn default_runtime_session_is_isolated() -> Result<(), Failed> {
    sysbox::require()?;
    docker_test("sysbox-isolated", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        let findings = probe(&scope, &home, "isolated", &[]);

        let (inside, outside, count) = findings.root_map;
        assert_eq!(inside, 0, "uid_map starts at root");
        assert!(
            outside >= 65536 && count <= 65536,
            "root in the session must map to an unprivileged host range, got {:?}",
            findings.root_map
        );
        assert!(
            !findings.root_reads_host_secret,
            "the session's root read a 0600 file of host root"
        );
        for path in ["/proc/sys", "/proc/uptime", "/sys/kernel"] {
            assert!(
                findings.virtualised.iter().any(|p| p == path),
                "{path} is not served by sysbox-fs: {:?}",
                findings.virtualised
            );
        }
        assert_eq!(findings.inner_driver, "overlay2", "inner Docker storage");

        let marker = format!("inner-{}", std::process::id());
        let printed = inner_docker_run(&scope, &home, "isolated", &marker);
        assert_eq!(printed.trim(), "inner-docker-ok");
        let names = engine_container_names(&scope).await?;
        assert!(
            !names.iter().any(|n| n.contains(&marker)),
            "the engine sees the session's inner container: {names:?}"
        );
        // The inner one does run, seen from inside.
        let inside_ps = exec(&scope, &home, "isolated", "docker ps --format '{{.Names}}'");
        assert!(inside_ps.contains(&marker), "{inside_ps}");
        Ok(())
    })
}

fn unsafe_runc_session_shows_what_it_gives_up() -> Result<(), Failed> {
    docker_test("sysbox-unsafe", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        let findings = probe(&scope, &home, "unsafe", &sysbox::UNSAFE_RUNC_FLAGS);
        assert_eq!(
            findings.root_map,
            (0, 0, 4_294_967_295),
            "under runc the session's root is host root"
        );
        assert!(
            findings.root_reads_host_secret,
            "under runc the session's root reads host-root files bound into it"
        );
        assert!(
            findings.virtualised.is_empty(),
            "nothing virtualises /proc or /sys under runc: {:?}",
            findings.virtualised
        );
        // /var/lib/docker is an anonymous volume (a host filesystem) under runc, and
        // sysbox-mgr's own folder under Sysbox: overlay2 works on both, never vfs.
        assert_eq!(findings.inner_driver, "overlay2", "inner Docker storage");
        Ok(())
    })
}

/// setup's verify runs its smoke container from the probe image cubbi makes itself: on an
/// endpoint with no cubbi image at all, root maps to an unprivileged host uid.
fn verify_smoke_needs_no_prior_image() -> Result<(), Failed> {
    sysbox::require()?;
    docker_test("sysbox-smoke", |scope| async move {
        let check = cubbi::doctor::verify::smoke(&scope.docker).await;
        assert_eq!(check.status, cubbi::doctor::Status::Ok, "{check:?}");
        assert!(
            check.finding.contains("container root is host uid")
                && check.finding.contains(cubbi::doctor::uid_probe::REPOSITORY),
            "{}",
            check.finding
        );
        // The smoke container is removed again.
        let left = crate::support::containers_labelled(&scope.docker, "io.cubbi.smoke").await?;
        assert!(left.is_empty(), "{left:?}");
        Ok(())
    })
}
