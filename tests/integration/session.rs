//! Sessions end to end on the harness's dockerd under the run's session runtime (the default,
//! sysbox-runc, where the host has Sysbox; `--runtime runc --unsafe-runc` elsewhere): real
//! systemd, real sshd, the real OpenSSH client. The kill-and-clean-up test always runs the
//! explicit insecure runc mode, whose anonymous inner Docker volume must go too.

use std::process::Command;
use std::time::Duration;

use bollard::query_parameters::CreateContainerOptionsBuilder;
use libtest_mimic::{Failed, Trial};

use crate::support::pty::Terminal;
use crate::support::sysbox::{SessionRuntime, UNSAFE_RUNC_FLAGS};
use crate::support::{DockerScope, TestHome, create_args, create_args_on, docker_test};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        create_boots_systemd_sshd_and_inner_docker,
        secrets_reach_the_agent_but_not_docker_inspect,
        two_port_range_refuses_third_and_leaves_nothing,
        parallel_creates_get_distinct_ports,
        killed_create_leaves_only_what_close_removes,
        refusals_leave_nothing_behind,
        a_taken_name_is_refused_before_anything_is_made,
        parallel_creates_of_one_name_leave_one_working_session,
        limits_are_applied_and_shown,
        another_owners_data_volume_is_refused,
        ambiguous_prefix_lists_candidates,
        connect_is_a_login_shell_on_a_real_terminal,
        project_is_cloned_into_the_workspace,
        plain_cubbi_mounts_the_folder_it_runs_in_but_never_home,
    ]
}

/// `create_args` under the explicit insecure runc mode, whatever the host has.
fn create_args_runc<'a>(name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    create_args_on(&UNSAFE_RUNC_FLAGS, name, extra)
}

async fn session_containers(
    scope: &DockerScope,
) -> Result<Vec<bollard::models::ContainerSummary>, Failed> {
    crate::support::containers_labelled(&scope.docker, &format!("io.cubbi.owner={}", scope.id))
        .await
}

fn exec(scope: &DockerScope, home: &TestHome, name: &str, command: &[&str]) -> String {
    let mut args = vec!["session", "exec", name, "--"];
    args.extend(command);
    scope.cubbi(home).args(args).run().success().stdout()
}

fn create_boots_systemd_sshd_and_inner_docker() -> Result<(), Failed> {
    docker_test("session-boot", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        let workspace = home.path().join("My_Project");
        std::fs::create_dir_all(&workspace)?;
        std::fs::write(workspace.join("hello.txt"), "from the host\n")?;
        let workspace_arg = workspace.display().to_string();
        let ran = scope
            .cubbi(&home)
            .args(create_args("My_Project", &[&workspace_arg]))
            .run()
            .success();
        assert!(ran.stderr().contains("ready"), "{}", ran.stderr());
        assert_eq!(
            ran.stderr().contains("NOT isolated"),
            SessionRuntime::of_this_run().unsafe_runc(),
            "the insecure-mode warning appears exactly under --unsafe-runc: {}",
            ran.stderr()
        );

        let name = "my-project";
        let state = exec(
            &scope,
            &home,
            name,
            &["sudo", "systemctl", "is-system-running", "--wait"],
        );
        assert_eq!(
            state.trim(),
            "running",
            "failed units: {}",
            exec(
                &scope,
                &home,
                name,
                &["systemctl", "--failed", "--no-legend"]
            )
        );
        assert_eq!(exec(&scope, &home, name, &["id", "-u"]).trim(), "1000");
        assert_eq!(exec(&scope, &home, name, &["hostname"]).trim(), name);
        // exec starts in the workspace of a session that has one.
        assert_eq!(
            exec(&scope, &home, name, &["cat", "hello.txt"]),
            "from the host\n"
        );
        assert_eq!(
            exec(&scope, &home, name, &["cat", "/var/lib/cubbi/init-status"]).trim(),
            "done"
        );

        // Docker inside: import a tiny image made from the session's own /bin/sh and run it.
        let inner = exec(
            &scope,
            &home,
            name,
            &[
                "bash",
                "-c",
                "set -e; d=$(mktemp -d); mkdir -p $d/bin; cp /bin/dash $d/bin/sh; \
               for lib in $(ldd /bin/dash | grep -o '/[^ ]*'); do mkdir -p $d$(dirname $lib); cp $lib $d$lib; done; \
               tar -C $d -c . | sudo docker import - tiny >/dev/null; \
               sudo docker run --rm tiny /bin/sh -c 'echo inner-docker-ok'",
            ],
        );
        assert_eq!(inner.trim(), "inner-docker-ok");

        // Exit codes and stderr come through separately.
        let failing = scope
            .cubbi(&home)
            .args([
                "session",
                "exec",
                name,
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 7",
            ])
            .run();
        assert_eq!(failing.output.status.code(), Some(7));
        assert_eq!(failing.stdout(), "out\n");
        assert!(failing.stderr().contains("err"), "{}", failing.stderr());

        // OpenSSH with the written config verifies the pinned key on the first connection.
        let config = home.path().join(format!(".ssh/cubbi.d/{name}.conf"));
        let ssh = Command::new("ssh")
            .env("HOME", home.path())
            .args(["-F"])
            .arg(&config)
            .args([
                "-o",
                "BatchMode=yes",
                &format!("cubbi-{name}"),
                "echo",
                "openssh-ok",
            ])
            .output()?;
        assert!(
            ssh.status.success(),
            "ssh failed: {}",
            String::from_utf8_lossy(&ssh.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&ssh.stdout).trim(), "openssh-ok");

        let listed = scope
            .cubbi(&home)
            .args(["--json", "session", "list"])
            .run()
            .success();
        let sessions: serde_json::Value = serde_json::from_str(&listed.stdout())?;
        assert_eq!(sessions[0]["name"], name);
        assert_eq!(sessions[0]["state"], "ready");
        scope
            .cubbi(&home)
            .args(["session", "show", "my-pro"])
            .run()
            .success()
            .stdout_contains("init:       done");

        scope
            .cubbi(&home)
            .args(["session", "close", name])
            .run()
            .success();
        assert!(
            session_containers(&scope).await?.is_empty(),
            "container left after close"
        );
        assert!(!config.exists(), "ssh config left after close");
        let pin = home.path().join(format!(".ssh/cubbi.d/{name}.known_hosts"));
        assert!(!pin.exists(), "pinned host key left after close");
        Ok(())
    })
}

fn secrets_reach_the_agent_but_not_docker_inspect() -> Result<(), Failed> {
    docker_test("session-secrets", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        scope
            .cubbi(&home)
            .args(["config", "set", "openai.api_key", "sk-config-secret-123"])
            .run()
            .success();
        scope
            .cubbi(&home)
            .args(create_args(
                "secrets",
                &["-e", "MY_TOKEN=cli-secret-456", "-e", "PLAIN=visible"],
            ))
            .run()
            .success();
        let seen = exec(
            &scope,
            &home,
            "secrets",
            &["sh", "-c", "echo $OPENAI_API_KEY $MY_TOKEN $PLAIN"],
        );
        assert_eq!(seen.trim(), "sk-config-secret-123 cli-secret-456 visible");
        let mode = exec(
            &scope,
            &home,
            "secrets",
            &["stat", "-c", "%a %U %G", "/etc/cubbi/env"],
        );
        assert_eq!(mode.trim(), "640 root agent");

        let containers = session_containers(&scope).await?;
        let id = containers[0].id.clone().ok_or("no id")?;
        let inspected = scope.docker.inspect_container(&id, None).await?;
        let inspect_json = serde_json::to_string(&inspected)?;
        for secret in ["sk-config-secret-123", "cli-secret-456"] {
            assert!(
                !inspect_json.contains(secret),
                "{secret} visible in docker inspect"
            );
        }
        let logs = scope
            .cubbi(&home)
            .args(["session", "logs", "secrets"])
            .run()
            .success();
        for secret in ["sk-config-secret-123", "cli-secret-456"] {
            assert!(!logs.stdout().contains(secret) && !logs.stderr().contains(secret));
        }
        let verbose = scope
            .cubbi(&home)
            .args(["-vvv", "--json", "session", "show", "secrets"])
            .run()
            .success();
        assert!(
            !verbose.stdout().contains("cli-secret-456")
                && !verbose.stderr().contains("cli-secret-456")
        );
        // The most verbose create there is: the upload of keys and env must not be logged.
        let traced = scope
            .cubbi(&home)
            .env("RUST_LOG", "trace")
            .args(create_args(
                "traced",
                &["-e", "TRACED_SECRET=trace-secret-789"],
            ))
            .run()
            .success();
        assert!(
            traced.stderr().contains("TRACE"),
            "RUST_LOG=trace had no effect"
        );
        for output in [traced.stdout(), traced.stderr()] {
            assert!(
                !output.contains("trace-secret-789"),
                "secret in -vvv output"
            );
            assert!(
                !output.contains("OPENSSH PRIVATE KEY"),
                "host key in -vvv output"
            );
        }
        Ok(())
    })
}

fn two_port_range_refuses_third_and_leaves_nothing() -> Result<(), Failed> {
    docker_test("session-ports", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        // A range of its own, away from the ports parallel tests use.
        scope
            .cubbi(&home)
            .args(["config", "set", "ports.start", "2490"])
            .run()
            .success();
        scope
            .cubbi(&home)
            .args(["config", "set", "ports.end", "2491"])
            .run()
            .success();
        // Another test may hold a port of the range: count what is left for us.
        scope
            .cubbi(&home)
            .args(create_args("first", &[]))
            .run()
            .success();
        scope
            .cubbi(&home)
            .args(create_args("second", &[]))
            .run()
            .success();
        scope
            .cubbi(&home)
            .args(create_args("third", &[]))
            .run()
            .failure()
            .stderr_contains("no free SSH port left in 2490-2491");
        let names: Vec<String> = session_containers(&scope)
            .await?
            .iter()
            .filter_map(|c| c.labels.as_ref()?.get("io.cubbi.name").cloned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(!names.contains(&"third".to_string()));
        assert!(!home.path().join(".ssh/cubbi.d/third.conf").exists());
        Ok(())
    })
}

fn parallel_creates_get_distinct_ports() -> Result<(), Failed> {
    docker_test("session-parallel", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        let count = 20;
        let children: Vec<_> = (0..count)
            .map(|i| {
                scope
                    .cubbi(&home)
                    .env("CUBBI_READY_TIMEOUT", "240")
                    .env("CUBBI_LOCK_TIMEOUT", "240")
                    .args(
                        create_args(&format!("par{i}"), &[])
                            .iter()
                            .map(|s| s.to_string())
                            .collect::<Vec<_>>(),
                    )
                    .spawn()
            })
            .collect();
        for child in children {
            let output = child.wait_with_output()?;
            assert!(
                output.status.success(),
                "a parallel create failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let listed = scope
            .cubbi(&home)
            .args(["--json", "session", "list"])
            .run()
            .success();
        let sessions: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout())?;
        assert_eq!(sessions.len(), count);
        let ports: std::collections::BTreeSet<u64> = sessions
            .iter()
            .filter_map(|s| s["ssh"]["port"].as_u64())
            .collect();
        assert_eq!(ports.len(), count, "ports are not distinct: {ports:?}");
        assert!(
            sessions.iter().all(|s| s["state"] == "ready"),
            "{sessions:?}"
        );
        scope
            .cubbi(&home)
            .args(["session", "close", "--all"])
            .run()
            .success();
        assert!(session_containers(&scope).await?.is_empty());
        Ok(())
    })
}

/// Where `killed_create_leaves_only_what_close_removes` interrupts a create.
#[derive(Debug, Clone, Copy, PartialEq)]
enum KillPoint {
    /// Before it has made anything in Docker.
    BeforeCreate,
    /// As soon as its container exists (created, not started).
    AfterContainerCreate,
    /// As soon as its container runs (booting, not ready).
    AfterStart,
}

/// This test's sessions named `name`, as Docker has them.
async fn containers_named(
    scope: &DockerScope,
    name: &str,
) -> Result<Vec<bollard::models::ContainerSummary>, Failed> {
    Ok(session_containers(scope)
        .await?
        .into_iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get("io.cubbi.name"))
                .is_some_and(|n| n == name)
        })
        .collect())
}

/// The ssh files cubbi writes for a session (either layout: one known_hosts for all, or one
/// per session beside the conf).
fn ssh_leftovers(home: &TestHome, name: &str) -> Vec<String> {
    let mut left = Vec::new();
    if let Ok(entries) = std::fs::read_dir(home.path().join(".ssh/cubbi.d")) {
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with(&format!("{name}.")) {
                left.push(file);
            }
        }
    }
    let known =
        std::fs::read_to_string(home.path().join(".config/cubbi/known_hosts")).unwrap_or_default();
    left.extend(
        known
            .lines()
            .filter(|line| {
                line.split_whitespace()
                    .any(|w| w == format!("cubbi-{name}"))
            })
            .map(str::to_string),
    );
    left
}

fn killed_create_leaves_only_what_close_removes() -> Result<(), Failed> {
    docker_test("session-killed", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        for point in [
            KillPoint::BeforeCreate,
            KillPoint::AfterContainerCreate,
            KillPoint::AfterStart,
        ] {
            let name = format!("killed-{}", format!("{point:?}").to_lowercase());
            let mut child = scope
                .cubbi(&home)
                .args(create_args_runc(&name, &[]))
                .spawn();
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let reached = match point {
                    KillPoint::BeforeCreate => Ok(true),
                    KillPoint::AfterContainerCreate => containers_named(&scope, &name)
                        .await
                        .map(|found| !found.is_empty()),
                    KillPoint::AfterStart => containers_named(&scope, &name).await.map(|found| {
                        found
                            .iter()
                            .any(|c| c.state.as_ref().is_some_and(|s| s.to_string() == "running"))
                    }),
                };
                let reached = match reached {
                    Ok(reached) => reached,
                    Err(err) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(err);
                    }
                };
                if reached {
                    break;
                }
                if std::time::Instant::now() >= deadline || child.try_wait()?.is_some() {
                    let _ = child.kill();
                    let output = child.wait_with_output()?;
                    return Err(format!(
                        "{point:?} never reached: {}",
                        String::from_utf8_lossy(&output.stderr)
                    )
                    .into());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let killed = child.kill();
            child.wait()?;
            killed?;

            // A request the killed create had in flight (a rollback's remove after a start that
            // lost its port to a parallel test) still completes in dockerd: wait until what is
            // left stops changing before looking at it.
            let ids = |found: &[bollard::models::ContainerSummary]| {
                found.iter().map(|c| c.id.clone()).collect::<Vec<_>>()
            };
            let mut containers = containers_named(&scope, &name).await?;
            let seen_at_kill = containers.len();
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let again = containers_named(&scope, &name).await?;
                let settled = ids(&again) == ids(&containers);
                containers = again;
                if settled {
                    break;
                }
            }
            // Killed mid-rollback, the container it had goes (the rollback's remove was sent);
            // otherwise it stays, for list to show and close to remove.
            let rolled_back = seen_at_kill == 1 && containers.is_empty();
            if point != KillPoint::BeforeCreate && !rolled_back {
                assert_eq!(containers.len(), 1, "{point:?}: the container must stay");
            }
            let listed = scope
                .cubbi(&home)
                .args(["--json", "session", "list"])
                .run()
                .success();
            let sessions: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout())?;
            let shown = sessions
                .iter()
                .filter(|s| s["name"] == name.as_str())
                .count();
            assert_eq!(
                shown,
                containers.len(),
                "{point:?}: list must show every leftover container"
            );
            // The anonymous volumes of the leftover (the inner Docker's storage under runc).
            let mut anonymous = Vec::new();
            for container in &containers {
                let id = container.id.clone().ok_or("no id")?;
                let inspected = scope.docker.inspect_container(&id, None).await?;
                for mount in inspected.mounts.unwrap_or_default() {
                    if mount.destination.as_deref() == Some("/var/lib/docker") {
                        anonymous.extend(mount.name);
                    }
                }
            }
            if point != KillPoint::BeforeCreate && !rolled_back {
                assert!(
                    !anonymous.is_empty(),
                    "{point:?}: no inner Docker volume seen"
                );
            }
            if !containers.is_empty() {
                scope
                    .cubbi(&home)
                    .args(["session", "close", &name])
                    .run()
                    .success();
            }
            assert!(
                containers_named(&scope, &name).await?.is_empty(),
                "{point:?}: close left the container"
            );
            for volume in anonymous {
                assert!(
                    scope.docker.inspect_volume(&volume).await.is_err(),
                    "{point:?}: close left volume {volume}"
                );
            }
            let left = ssh_leftovers(&home, &name);
            assert!(left.is_empty(), "{point:?}: ssh files left: {left:?}");
        }
        Ok(())
    })
}

/// `-v` of a harmless host folder onto `target` (not /tmp: the harness's dockerd has its
/// socket there).
fn tmp_mount(target: &str) -> String {
    format!("/usr/share/doc:{target}")
}

fn refusals_leave_nothing_behind() -> Result<(), Failed> {
    docker_test("session-refusals", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        let workspace = home.path().join("ws");
        std::fs::create_dir(&workspace)?;
        let workspace_arg = workspace.display().to_string();
        // A socket of any name is refused, not only the ones called docker*.
        let socket = home.path().join("notes.txt");
        let _listener = std::os::unix::net::UnixListener::bind(&socket)?;
        let socket_arg = socket.display().to_string();
        // The folder holding the endpoint's socket.
        let engine_socket = scope
            .endpoint
            .strip_prefix("unix://")
            .ok_or("the harness's endpoint is a unix socket")?;
        let engine_dir = std::path::Path::new(engine_socket)
            .parent()
            .ok_or("socket has a folder")?
            .display()
            .to_string();
        let m_home = tmp_mount("/home/agent");
        let m_home_slash = tmp_mount("/home//agent/");
        let m_ssh = tmp_mount("/etc/ssh");
        let m_root = tmp_mount("/srv/..");
        let m_run = tmp_mount("/run/x");
        let m_workspace = tmp_mount("/home/agent/workspace/");
        let m_engine = format!("{engine_dir}:/srv/engine");
        let m_socket = format!("{socket_arg}:/srv/s");
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (create_args("!!!", &[]), "nothing usable as a session name"),
            (
                create_args("bad-env", &["-e", "BAD NAME=1"]),
                "not a valid environment variable name",
            ),
            (create_args("newline", &["-e", "X=a\nY=b"]), "line break"),
            (
                create_args("relative", &["-v", "relative/path:/x"]),
                "must be absolute",
            ),
            (
                create_args("missing", &["-v", "/nonexistent/cubbi:/x"]),
                "cannot be used",
            ),
            (
                create_args(
                    "socket",
                    &["-v", "/var/run/docker.sock:/var/run/docker.sock"],
                ),
                "docker.sock",
            ),
            (
                [
                    &[
                        "session",
                        "create",
                        "--image",
                        "no-such-image",
                        "--no-connect",
                        "--no-mount",
                    ][..],
                    SessionRuntime::of_this_run().create_flags(),
                ]
                .concat(),
                "unknown image `no-such-image`",
            ),
            (
                create_args("net", &["--network", "no-such-net"]),
                "network `no-such-net` does not exist",
            ),
            (
                vec![
                    "session",
                    "create",
                    "--image",
                    "base",
                    "--no-connect",
                    "--no-mount",
                    "--runtime",
                    "runc",
                ],
                "--unsafe-runc",
            ),
            (
                create_args("mem", &["--memory", "lots"]),
                "not a memory size",
            ),
            (
                create_args("pids", &["--pids-limit", "5"]),
                "pids limit 5 is out of range",
            ),
            (
                create_args("over-home", &["-v", &m_home]),
                "refusing to mount over `/home/agent`",
            ),
            (
                create_args("over-home-slash", &["-v", &m_home_slash]),
                "refusing to mount over",
            ),
            (
                create_args("over-ssh", &["-v", &m_ssh]),
                "refusing to mount over `/etc/ssh`",
            ),
            (
                create_args("over-root", &["-v", &m_root]),
                "refusing to mount over",
            ),
            (
                create_args("over-run", &["-v", &m_run]),
                "refusing to mount over",
            ),
            (
                create_args("twice", &[&workspace_arg, "-v", &m_workspace]),
                "two mounts on `/home/agent/workspace`",
            ),
            (
                create_args("any-socket", &["-v", &m_socket]),
                "it is a socket",
            ),
            (
                create_args("engine-dir", &["-v", &m_engine]),
                "refusing to mount",
            ),
            (
                create_args("root-workspace", &["/"]),
                "refusing to mount `/`",
            ),
        ];
        for (args, expected) in cases {
            let ran = scope.cubbi(&home).args(&args).run().failure();
            let stderr = ran.stderr();
            assert!(
                stderr.contains(expected),
                "{args:?}: expected {expected:?} in {stderr}"
            );
            assert_eq!(
                stderr.matches("error:").count(),
                1,
                "one message, not a cascade: {stderr}"
            );
        }
        assert!(
            session_containers(&scope).await?.is_empty(),
            "a refused create left a container"
        );
        assert!(
            !home.path().join(".ssh/cubbi.d").exists()
                || std::fs::read_dir(home.path().join(".ssh/cubbi.d"))?
                    .next()
                    .is_none(),
            "a refused create left ssh files"
        );
        Ok(())
    })
}

fn a_taken_name_is_refused_before_anything_is_made() -> Result<(), Failed> {
    docker_test("session-taken-name", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        // A container cubbi did not make holds the name a session would take when ready.
        let name = format!("taken-{}", std::process::id());
        let options = CreateContainerOptionsBuilder::new()
            .name(&format!("cubbi-{name}"))
            .build();
        let body = bollard::models::ContainerCreateBody {
            image: Some("debian:bookworm".into()),
            cmd: Some(vec!["true".into()]),
            labels: Some(scope.labels()),
            ..Default::default()
        };
        scope.docker.create_container(Some(options), body).await?;
        let started = std::time::Instant::now();
        scope
            .cubbi(&home)
            .args(create_args(&name, &[]))
            .run()
            .failure()
            .stderr_contains(&format!("a container named cubbi-{name} exists already"));
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "refused only after booting: {:?}",
            started.elapsed()
        );
        assert!(session_containers(&scope).await?.is_empty());
        assert!(ssh_leftovers(&home, &name).is_empty());
        Ok(())
    })
}

fn parallel_creates_of_one_name_leave_one_working_session() -> Result<(), Failed> {
    docker_test("session-same-name", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        // The first command makes the client key; parallel first runs would each make one
        // (a race of src/ssh/keys.rs, outside this test's subject).
        scope.cubbi(&home).args(["session", "list"]).run().success();
        let children: Vec<_> = (0..4)
            .map(|_| {
                scope
                    .cubbi(&home)
                    .env("CUBBI_READY_TIMEOUT", "240")
                    .env("CUBBI_LOCK_TIMEOUT", "240")
                    .args(create_args("twin", &[]))
                    .spawn()
            })
            .collect();
        let mut succeeded = 0;
        for child in children {
            let output = child.wait_with_output()?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            if output.status.success() {
                succeeded += 1;
            } else {
                assert!(stderr.contains("exists already"), "{stderr}");
            }
        }
        assert_eq!(succeeded, 1, "exactly one create of a name wins");
        assert_eq!(containers_named(&scope, "twin").await?.len(), 1);
        // The winner's ssh files survived the losers: OpenSSH verifies and logs in.
        let config = home.path().join(".ssh/cubbi.d/twin.conf");
        let ssh = Command::new("ssh")
            .env("HOME", home.path())
            .arg("-F")
            .arg(&config)
            .args(["-o", "BatchMode=yes", "cubbi-twin", "echo", "twin-ok"])
            .output()?;
        assert!(
            ssh.status.success(),
            "ssh failed: {}",
            String::from_utf8_lossy(&ssh.stderr)
        );
        Ok(())
    })
}

fn limits_are_applied_and_shown() -> Result<(), Failed> {
    docker_test("session-limits", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        // A data volume of the old naming, labelled with exactly this owner, is kept.
        let legacy = cubbi::local::naming::legacy_data_volume_name(&scope.id);
        let mut labels = scope.labels();
        labels.insert("io.cubbi.owner".into(), scope.id.clone());
        scope
            .docker
            .create_volume(bollard::models::VolumeCreateRequest {
                name: Some(legacy.clone()),
                labels: Some(labels),
                ..Default::default()
            })
            .await?;
        let host_memory = cubbi::local::limits::host_memory()?;
        scope
            .cubbi(&home)
            .args(create_args("plain", &[]))
            .run()
            .success();
        scope
            .cubbi(&home)
            .args(create_args(
                "limited",
                &["--pids-limit", "100", "--memory", "512m"],
            ))
            .run()
            .success();
        for (name, pids, memory) in [
            ("plain", 4096, host_memory / 2),
            ("limited", 100, 512 * 1024 * 1024),
        ] {
            let id = containers_named(&scope, name).await?[0]
                .id
                .clone()
                .ok_or("no id")?;
            let inspected = scope.docker.inspect_container(&id, None).await?;
            let host = inspected.host_config.ok_or("no HostConfig")?;
            assert_eq!(host.pids_limit, Some(pids), "{name}");
            assert_eq!(host.memory, Some(memory), "{name}");
            assert_eq!(host.memory_swap, Some(2 * memory), "{name}");
            let shown = scope
                .cubbi(&home)
                .args(["--json", "session", "show", name])
                .run()
                .success();
            let session: serde_json::Value = serde_json::from_str(&shown.stdout())?;
            assert_eq!(session["resources"]["pids_limit"], pids, "{session}");
            assert_eq!(session["resources"]["memory"], memory, "{session}");
            let mounts = inspected.mounts.unwrap_or_default();
            assert!(
                mounts
                    .iter()
                    .any(|m| m.name.as_deref() == Some(legacy.as_str())),
                "{name} does not use the owner's existing data volume: {mounts:?}"
            );
        }
        scope
            .cubbi(&home)
            .args(["session", "show", "limited"])
            .run()
            .success()
            .stdout_contains("limits:     memory 0.5 GiB (+0.5 GiB swap)")
            .stdout_contains("100 processes");
        Ok(())
    })
}

fn another_owners_data_volume_is_refused() -> Result<(), Failed> {
    docker_test("session-volume-owner", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        // `NAME.x` and `NAME_x` once shared one volume; now each has its own, and a volume of
        // one's name that someone else owns is refused, not shared.
        let me = format!("{}.x", scope.id);
        let volume = cubbi::local::naming::data_volume_name(&me);
        assert_ne!(
            volume,
            cubbi::local::naming::data_volume_name(&format!("{}_x", scope.id))
        );
        let mut labels = scope.labels();
        labels.insert("io.cubbi.owner".into(), "someone-else".into());
        scope
            .docker
            .create_volume(bollard::models::VolumeCreateRequest {
                name: Some(volume.clone()),
                labels: Some(labels),
                ..Default::default()
            })
            .await?;
        scope
            .cubbi(&home)
            .env("CUBBI_OWNER", &me)
            .args(create_args("stolen", &[]))
            .run()
            .failure()
            .stderr_contains(&format!(
                "the data volume {volume} belongs to `someone-else`"
            ));
        let volume_now = scope.docker.inspect_volume(&volume).await?;
        assert_eq!(
            volume_now.labels.get("io.cubbi.owner").map(String::as_str),
            Some("someone-else")
        );
        let left =
            crate::support::containers_labelled(&scope.docker, "io.cubbi.name=stolen").await?;
        assert!(left.is_empty(), "a refused create left a container");
        // The owner's network (shared by all of an owner's sessions, so kept) is labelled
        // with that owner, not this test.
        scope.remove_owner(&me).await;
        Ok(())
    })
}

fn ambiguous_prefix_lists_candidates() -> Result<(), Failed> {
    docker_test("session-prefix", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        scope
            .cubbi(&home)
            .args(create_args("alpha-one", &[]))
            .run()
            .success();
        scope
            .cubbi(&home)
            .args(create_args("alpha-two", &[]))
            .run()
            .success();
        scope
            .cubbi(&home)
            .args(["session", "show", "alpha"])
            .run()
            .failure()
            .stderr_contains("matches several sessions")
            .stderr_contains("alpha-one")
            .stderr_contains("alpha-two");
        scope
            .cubbi(&home)
            .args(["session", "show", "nope"])
            .run()
            .failure()
            .stderr_contains("no session matches");
        scope
            .cubbi(&home)
            .args(["session", "close", "alpha-one", "alpha-two"])
            .run()
            .success();
        Ok(())
    })
}

fn connect_is_a_login_shell_on_a_real_terminal() -> Result<(), Failed> {
    docker_test("session-connect", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        scope
            .cubbi(&home)
            .args(create_args("tty", &[]))
            .run()
            .success();

        // A pipe is no terminal: a clear refusal, not a hang or a garbled session.
        scope
            .cubbi(&home)
            .args(["session", "connect", "tty"])
            .stdin("echo hi\n")
            .run()
            .failure()
            .stderr_contains("stdin is not a terminal")
            .stderr_contains("cubbi session exec tty -- CMD");

        let command = scope
            .cubbi(&home)
            .env("TERM", "xterm")
            .args(["session", "connect", "tty"])
            .into_command();
        tokio::task::spawn_blocking(move || drive_connect(command))
            .await?
            .map_err(Failed::from)
    })
}

/// Types into `cubbi session connect` on a 40x120 terminal, resizes it, and exits with 5.
fn drive_connect(command: Command) -> Result<(), String> {
    const STEP: Duration = Duration::from_secs(30);
    let mut term = Terminal::spawn(command, 40, 120).map_err(|err| err.to_string())?;
    let cooked = term.termios()?;
    // The echo of what is typed shows `$((40+2))`; only the shell's output shows 42.
    term.send("echo ready-$((40+2))\r")?;
    term.expect("ready-42", STEP)?;
    term.send("shopt -q login_shell && echo login-$((1+1)); id -u\r")?;
    term.expect("login-2", STEP)?;
    term.expect("1000", STEP)?;
    term.send("stty size\r")?;
    term.expect("40 120", STEP)?;

    // The kernel sends cubbi SIGWINCH; cubbi passes the new size on to the remote terminal.
    // A command typed right after the resize may reach sshd before the window change, so
    // ask again until the new size shows (or the deadline passes).
    term.resize(30, 100)?;
    let deadline = std::time::Instant::now() + STEP;
    loop {
        term.send("stty size\r")?;
        match term.expect("30 100", Duration::from_secs(2)) {
            Ok(()) => break,
            Err(err) if std::time::Instant::now() >= deadline => {
                return Err(format!("the resize never reached the session: {err}"));
            }
            Err(_) => {}
        }
    }

    term.send("exit 5\r")?;
    let status = term.wait(STEP)?;
    if status.code() != Some(5) {
        return Err(format!(
            "cubbi exited with {status}, not 5; terminal:\n{}",
            term.transcript()
        ));
    }
    // Raw mode is undone on the way out.
    let restored = term.termios()?;
    if restored.local_flags != cooked.local_flags || restored.input_flags != cooked.input_flags {
        return Err(format!(
            "the terminal was left changed: {:?} / {:?} instead of {:?} / {:?}",
            restored.local_flags, restored.input_flags, cooked.local_flags, cooked.input_flags
        ));
    }
    Ok(())
}

/// git on the host, without the host's or the user's git config.
pub(crate) fn git(dir: &std::path::Path, args: &[&str]) -> Result<String, Failed> {
    let output = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(args)
        .output()
        .map_err(|err| format!("git is needed on the host (install/test.sh installs it): {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The project status `session show` reports once the clone has finished (it runs beside
/// sshd, so a ready session may still be cloning).
async fn project_status(
    scope: &DockerScope,
    home: &TestHome,
    name: &str,
) -> Result<String, Failed> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let shown = scope
            .cubbi(home)
            .args(["--json", "session", "show", name])
            .run()
            .success();
        let session: serde_json::Value = serde_json::from_str(&shown.stdout())?;
        if let Some(status) = session["project_status"].as_str() {
            return Ok(status.to_string());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("no project status after 60 s: {session}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn project_is_cloned_into_the_workspace() -> Result<(), Failed> {
    docker_test("session-project", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        // A repository with `main` and a `feature` branch one commit ahead, served read-only
        // into the sessions from a bind mount as file:///srv/repo.git.
        let repos = tempfile::tempdir()?;
        let work = repos.path().join("work");
        let bare = repos.path().join("repo.git");
        std::fs::create_dir(&work)?;
        git(&work, &["init", "-q", "-b", "main"])?;
        std::fs::write(work.join("README"), "on main\n")?;
        git(&work, &["add", "README"])?;
        git(&work, &["commit", "-q", "-m", "main"])?;
        git(&work, &["checkout", "-q", "-b", "feature"])?;
        std::fs::write(work.join("feature.txt"), "on feature\n")?;
        git(&work, &["add", "feature.txt"])?;
        git(&work, &["commit", "-q", "-m", "feature"])?;
        let feature_commit = git(&work, &["rev-parse", "HEAD"])?;
        git(
            repos.path(),
            &["init", "-q", "--bare", "-b", "main", "repo.git"],
        )?;
        git(&work, &["push", "-q", "../repo.git", "main", "feature"])?;
        // Owned by the agent's uid, as a repository of a host user 1000 would be: git refuses
        // to serve one owned by someone else ("detected dubious ownership"), and that
        // protection is not cubbi's to switch off.
        let chowned = Command::new("chown")
            .args(["-R", "1000:1000"])
            .arg(&bare)
            .status()?;
        assert!(chowned.success(), "chown of the test repository failed");
        let mount = format!("{}:/srv/repo.git:ro", bare.display());

        scope
            .cubbi(&home)
            .args(create_args(
                "proj",
                &["-v", &mount, "--project", "file:///srv/repo.git#feature"],
            ))
            .run()
            .success();
        assert_eq!(project_status(&scope, &home, "proj").await?, "done");
        assert_eq!(
            exec(&scope, &home, "proj", &["cat", "workspace/feature.txt"]),
            "on feature\n"
        );
        assert_eq!(
            exec(
                &scope,
                &home,
                "proj",
                &["git", "-C", "workspace", "rev-parse", "HEAD"]
            )
            .trim(),
            feature_commit
        );
        assert_eq!(
            exec(
                &scope,
                &home,
                "proj",
                &["git", "-C", "workspace", "branch", "--show-current"]
            )
            .trim(),
            "feature"
        );
        let owners = exec(
            &scope,
            &home,
            "proj",
            &[
                "sh",
                "-c",
                "find /home/agent/workspace -printf '%U:%G\\n' | sort -u",
            ],
        );
        assert_eq!(owners.trim(), "1000:1000", "owners in the workspace");
        scope
            .cubbi(&home)
            .args(["session", "show", "proj"])
            .run()
            .success()
            .stdout_contains("project:    done");

        // A repository that does not exist: the session still comes up (the clone never
        // holds up boot), and `session show` says what went wrong.
        scope
            .cubbi(&home)
            .args(create_args(
                "badproj",
                &["-v", &mount, "--project", "file:///srv/missing.git"],
            ))
            .run()
            .success();
        let failed = project_status(&scope, &home, "badproj").await?;
        assert!(
            failed.starts_with("failed: git clone (exit 128): fatal:")
                && failed.contains("does not appear to be a git repository"),
            "{failed}"
        );
        scope
            .cubbi(&home)
            .args(["session", "show", "badproj"])
            .run()
            .success()
            .stdout_contains("project:    failed: git clone");
        assert_eq!(
            exec(&scope, &home, "badproj", &["ls", "-A", "workspace"]),
            ""
        );

        // The shorthand `cubbi GIT_URL`: named after the repository, default branch.
        scope
            .cubbi(&home)
            .args([
                "--image",
                "base",
                "--no-connect",
                "--volume",
                &mount,
                "file:///srv/repo.git",
            ])
            .args(SessionRuntime::of_this_run().create_flags())
            .run()
            .success();
        assert_eq!(project_status(&scope, &home, "repo").await?, "done");
        assert_eq!(
            exec(&scope, &home, "repo", &["cat", "workspace/README"]),
            "on main\n"
        );
        assert_eq!(
            exec(&scope, &home, "repo", &["ls", "workspace"]).trim(),
            "README"
        );
        Ok(())
    })
}

/// Plain `cubbi` mounts the folder it runs in and names the session after it; `exec` starts
/// there. In `$HOME`, or a folder holding it, it refuses, says what to do, and makes nothing.
fn plain_cubbi_mounts_the_folder_it_runs_in_but_never_home() -> Result<(), Failed> {
    docker_test("session-mount-local", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        let project = home.path().join("src/My-App");
        std::fs::create_dir_all(&project)?;
        std::fs::write(project.join("marker.txt"), "from the project\n")?;
        let plain = |dir: &std::path::Path| {
            scope
                .cubbi(&home)
                .current_dir(dir)
                .args(["--image", "base", "--no-connect"])
                .args(SessionRuntime::of_this_run().create_flags())
        };

        let above = home.path().parent().ok_or("HOME has a parent")?;
        for (dir, why) in [
            (home.path(), "it is your home folder"),
            (above, "it holds your home folder"),
        ] {
            plain(dir)
                .run()
                .failure()
                .stderr_contains("refusing to mount the current folder")
                .stderr_contains(why)
                .stderr_contains("cd into a project folder")
                .stderr_contains("--no-mount");
        }
        assert!(
            session_containers(&scope).await?.is_empty(),
            "a refused create left a container"
        );
        assert!(
            !home.path().join(".ssh/cubbi.d").exists(),
            "a refused create wrote ssh files"
        );

        let ran = plain(&project).run().success();
        let shown = project.canonicalize()?;
        ran.stderr_contains("session my-app ready")
            .stderr_contains(&format!(
                "workspace: {} mounted at /home/agent/workspace",
                shown.display()
            ));
        assert_eq!(
            exec(&scope, &home, "my-app", &["pwd"]).trim(),
            "/home/agent/workspace"
        );
        assert_eq!(
            exec(&scope, &home, "my-app", &["cat", "marker.txt"]),
            "from the project\n"
        );
        scope
            .cubbi(&home)
            .args(["session", "list"])
            .run()
            .success()
            .stdout_contains("my-app")
            .stdout_contains(&shown.display().to_string());
        // connect's shell starts there too, and is still a login shell.
        let command = scope
            .cubbi(&home)
            .env("TERM", "xterm")
            .args(["session", "connect", "my-app"])
            .into_command();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            const STEP: Duration = Duration::from_secs(30);
            let mut term = Terminal::spawn(command, 40, 120).map_err(|err| err.to_string())?;
            // The echo of what is typed shows `$((1+1))`; only the shell's output shows 2.
            term.send("echo cwd-$((1+1))=$PWD\r")?;
            term.expect("cwd-2=/home/agent/workspace", STEP)?;
            term.send("shopt -q login_shell && echo login-$((2+2))\r")?;
            term.expect("login-4", STEP)?;
            term.send("exit 3\r")?;
            let status = term.wait(STEP)?;
            if status.code() != Some(3) {
                return Err(format!(
                    "connect ended with {status}:\n{}",
                    term.transcript()
                ));
            }
            Ok(())
        })
        .await?
        .map_err(Failed::from)?;
        scope
            .cubbi(&home)
            .args(["session", "close", "my-app"])
            .run()
            .success();
        Ok(())
    })
}
