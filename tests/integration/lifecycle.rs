//! Sessions that pause and come back: `session stop` and `session start` on the harness's
//! dockerd, through the CLI and over HTTP, with real systemd, real sshd and the real OpenSSH
//! client holding the known_hosts file written at create.

use std::process::Command;

use cubbi::api::{Backend, ErrorCode, Quiet, SessionState};
use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::support::dockerd::Dockerd;
use crate::support::service::{TestService, user};
use crate::support::{DockerScope, TestHome, create_args, docker_test};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        stop_and_start_keep_files_port_inner_images_and_host_key,
        stopped_sessions_hold_their_ports_until_closed,
        start_on_a_port_taken_meanwhile_is_refused_and_changes_nothing,
        stop_and_start_over_http_are_the_callers_own,
        a_dockerd_restart_keeps_stopped_and_running_sessions,
        idle_sessions_stop_and_busy_ones_do_not,
    ]
}

fn exec(scope: &DockerScope, home: &TestHome, name: &str, command: &[&str]) -> String {
    let mut args = vec!["session", "exec", name, "--"];
    args.extend(command);
    scope.cubbi(home).args(args).run().success().stdout()
}

/// The session as `--json session list` reports it.
fn listed(scope: &DockerScope, home: &TestHome, name: &str) -> Result<Value, Failed> {
    let out = scope
        .cubbi(home)
        .args(["--json", "session", "list"])
        .run()
        .success()
        .stdout();
    let sessions: Vec<Value> = serde_json::from_str(&out)?;
    sessions
        .into_iter()
        .find(|s| s["name"] == name)
        .ok_or_else(|| format!("`session list` lacks {name}: {out}").into())
}

/// `ssh -F` with the session's own config: its pinned known_hosts, StrictHostKeyChecking yes.
fn strict_ssh(home: &TestHome, name: &str) -> std::io::Result<std::process::Output> {
    Command::new("ssh")
        .arg("-F")
        .arg(home.path().join(format!(".ssh/cubbi.d/{name}.conf")))
        .args([
            "-o",
            "BatchMode=yes",
            &format!("cubbi-{name}"),
            "cat",
            "/var/tmp/kept",
        ])
        .output()
}

fn stop_and_start_keep_files_port_inner_images_and_host_key() -> Result<(), Failed> {
    docker_test("pause-keep", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        let workspace = home.path().join("work");
        std::fs::create_dir_all(&workspace)?;
        // The agent (uid 1000) writes into it from inside.
        std::fs::set_permissions(
            &workspace,
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )?;
        let workspace_arg = workspace.display().to_string();
        let name = "pause-keep";
        scope
            .cubbi(&home)
            .args(create_args(name, &[&workspace_arg]))
            .run()
            .success();
        exec(
            &scope,
            &home,
            name,
            &[
                "bash",
                "-c",
                "set -e; echo in-workspace > made-inside.txt; echo in-var-tmp > /var/tmp/kept; \
                 d=$(mktemp -d); mkdir -p $d/bin; cp /bin/dash $d/bin/sh; \
                 for lib in $(ldd /bin/dash | grep -o '/[^ ]*'); do mkdir -p $d$(dirname $lib); cp $lib $d$lib; done; \
                 tar -C $d -c . | sudo docker import - pause-tiny >/dev/null",
            ],
        );
        let before = listed(&scope, &home, name)?;
        assert_eq!(before["state"], "ready", "{before}");
        let known_hosts = home.path().join(format!(".ssh/cubbi.d/{name}.known_hosts"));
        let pinned = std::fs::read(&known_hosts)?;

        scope
            .cubbi(&home)
            .args(["session", "stop", name])
            .run()
            .success()
            .stderr_contains(&format!("stopped {name}"));
        let stopped = listed(&scope, &home, name)?;
        assert_eq!(stopped["state"], "stopped", "{stopped}");
        assert_eq!(stopped["ssh"]["port"], before["ssh"]["port"]);
        // Stopped means not running: nothing answers on its port.
        let port = before["ssh"]["port"].as_u64().ok_or("no port")? as u16;
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "something still answers on {port} after stop"
        );
        // A stop of a stopped session is refused and changes nothing.
        scope
            .cubbi(&home)
            .args(["session", "stop", name])
            .run()
            .failure()
            .stderr_contains("stopped already");
        assert_eq!(listed(&scope, &home, name)?["state"], "stopped");

        scope
            .cubbi(&home)
            .args(["session", "start", name])
            .run()
            .success()
            .stderr_contains(&format!("started {name}"));
        let after = listed(&scope, &home, name)?;
        assert_eq!(after["state"], "ready", "{after}");
        assert_eq!(after["id"], before["id"], "the same container");
        assert_eq!(after["ssh"], before["ssh"], "the same port and host key");
        assert_eq!(
            std::fs::read(&known_hosts)?,
            pinned,
            "known_hosts must not change"
        );
        // The workspace (a bind mount), the container's own file system and the inner
        // Docker's images (its storage volume) all survived.
        assert_eq!(
            std::fs::read_to_string(workspace.join("made-inside.txt"))?,
            "in-workspace\n"
        );
        assert_eq!(
            exec(&scope, &home, name, &["cat", "made-inside.txt"]),
            "in-workspace\n"
        );
        let inner = exec(
            &scope,
            &home,
            name,
            &[
                "sudo",
                "docker",
                "run",
                "--rm",
                "pause-tiny",
                "/bin/sh",
                "-c",
                "echo inner-ok",
            ],
        );
        assert_eq!(inner.trim(), "inner-ok");
        // Strict OpenSSH with the known_hosts file written at create, not one line more.
        let ssh = strict_ssh(&home, name)?;
        assert!(
            ssh.status.success(),
            "strict ssh after start: {}",
            String::from_utf8_lossy(&ssh.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&ssh.stdout), "in-var-tmp\n");
        assert_eq!(
            exec(&scope, &home, name, &["cat", "/var/lib/cubbi/init-status"]).trim(),
            "done"
        );

        // A start of a running session is refused and changes nothing.
        scope
            .cubbi(&home)
            .args(["session", "start", name])
            .run()
            .failure()
            .stderr_contains("running already");
        assert_eq!(listed(&scope, &home, name)?["state"], "ready");
        Ok(())
    })
}

fn stopped_sessions_hold_their_ports_until_closed() -> Result<(), Failed> {
    docker_test("pause-ports", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        // Two ports of its own, away from the ranges other tests use.
        for (key, value) in [("ports.start", "2486"), ("ports.end", "2487")] {
            scope
                .cubbi(&home)
                .args(["config", "set", key, value])
                .run()
                .success();
        }
        scope
            .cubbi(&home)
            .args(create_args("pause-held", &[]))
            .run()
            .success();
        let held = listed(&scope, &home, "pause-held")?["ssh"]["port"].clone();
        scope
            .cubbi(&home)
            .args(["session", "stop", "pause-held"])
            .run()
            .success();
        scope
            .cubbi(&home)
            .args(create_args("pause-other", &[]))
            .run()
            .success();
        let other = listed(&scope, &home, "pause-other")?["ssh"]["port"].clone();
        assert_ne!(other, held, "a create took a stopped session's port");
        scope
            .cubbi(&home)
            .args(create_args("pause-third", &[]))
            .run()
            .failure()
            .stderr_contains("no free SSH port left in 2486-2487");

        // `close` removes a stopped session, and with it its hold on the port.
        scope
            .cubbi(&home)
            .args(["session", "close", "pause-held"])
            .run()
            .success()
            .stderr_contains("closed pause-held");
        assert!(!home.path().join(".ssh/cubbi.d/pause-held.conf").exists());
        scope
            .cubbi(&home)
            .args(create_args("pause-third", &[]))
            .run()
            .success();
        assert_eq!(
            listed(&scope, &home, "pause-third")?["ssh"]["port"],
            held,
            "the closed session's port is free again"
        );
        Ok(())
    })
}

fn start_on_a_port_taken_meanwhile_is_refused_and_changes_nothing() -> Result<(), Failed> {
    docker_test("pause-taken", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        let name = "pause-taken";
        scope
            .cubbi(&home)
            .args(create_args(name, &[]))
            .run()
            .success();
        scope
            .cubbi(&home)
            .args(["session", "stop", name])
            .run()
            .success();
        let port = listed(&scope, &home, name)?["ssh"]["port"]
            .as_u64()
            .ok_or("no port")? as u16;
        // Another program, which knows nothing of cubbi's lock, binds the kept port.
        let squatter = std::net::TcpListener::bind(("127.0.0.1", port))?;
        scope
            .cubbi(&home)
            .args(["session", "start", name])
            .run()
            .failure()
            .stderr_contains(&format!("port {port}"))
            .stderr_contains("taken by another program");
        let still = listed(&scope, &home, name)?;
        assert_eq!(still["state"], "stopped", "{still}");
        assert_eq!(still["ssh"]["port"], port);
        let names =
            crate::support::containers_labelled(&scope.docker, &format!("io.cubbi.name={name}"))
                .await?
                .into_iter()
                .flat_map(|c| c.names.unwrap_or_default())
                .collect::<Vec<_>>();
        assert_eq!(
            names,
            vec![format!("/cubbi-{name}")],
            "renamed by a refused start"
        );

        drop(squatter);
        scope
            .cubbi(&home)
            .args(["session", "start", name])
            .run()
            .success();
        assert_eq!(listed(&scope, &home, name)?["state"], "ready");
        Ok(())
    })
}

fn stop_and_start_over_http_are_the_callers_own() -> Result<(), Failed> {
    docker_test("pause-http", |scope| async move {
        scope.ensure_base().await?;
        let mut service = TestService::start(&scope, |_| {}).await?;
        let (bob, eve) = (user(&scope, "bob"), user(&scope, "eve"));
        let (bob_token, eve_token) = (service.token(&bob, false)?, service.token(&eve, false)?);
        let name = user(&scope, "paused");
        let bob_client = service.client(&bob_token)?;
        let session = bob_client.create(crate::serve::spec(&name), &Quiet).await?;

        // Another user's session is a 404, and stays as it was.
        let http = reqwest::Client::new();
        for action in ["stop", "start"] {
            let answer = http
                .post(format!("{}/v1/sessions/{name}/{action}", service.url))
                .bearer_auth(&eve_token)
                .send()
                .await?;
            assert_eq!(answer.status().as_u16(), 404, "eve's {action}");
        }
        let eve_client = service.client(&eve_token)?;
        let err = eve_client.stop(&name).await.err().ok_or("eve stopped it")?;
        assert_eq!(err.code(), ErrorCode::NotFound, "{err}");
        assert_eq!(bob_client.get(&name).await?.state, SessionState::Ready);

        let stopped = bob_client.stop(&name).await?;
        assert_eq!(stopped.state, SessionState::Stopped);
        assert_eq!(bob_client.get(&name).await?.state, SessionState::Stopped);
        let listed = bob_client.list().await?;
        assert!(
            listed
                .iter()
                .any(|s| s.name == name && s.state == SessionState::Stopped),
            "{listed:?}"
        );
        let answer = http
            .post(format!("{}/v1/sessions/{name}/stop", service.url))
            .bearer_auth(&bob_token)
            .send()
            .await?;
        assert_eq!(answer.status().as_u16(), 409, "a second stop");

        let started = bob_client.start(&name).await?;
        assert_eq!(started.state, SessionState::Ready);
        assert_eq!(started.ssh.port, session.ssh.port);
        assert_eq!(started.ssh.host_key, session.ssh.host_key);
        let err = bob_client.start(&name).await.err().ok_or("started twice")?;
        assert_eq!(err.code(), ErrorCode::Conflict, "{err}");
        assert_eq!(bob_client.get(&name).await?.state, SessionState::Ready);
        let mut events = bob_client.exec(&name, vec!["true".into()]).await?;
        use futures_util::StreamExt;
        let mut exit = None;
        while let Some(event) = events.next().await {
            if let cubbi::api::ExecEvent::Exit(code) = event? {
                exit = Some(code);
            }
        }
        assert_eq!(exit, Some(0), "exec after start");
        bob_client.close(&name).await?;

        // The same through `cubbi -r`, whose ssh files then reach the session after a start.
        let home = TestHome::new();
        let cli = |args: Vec<String>, stdin: Option<String>| {
            let cubbi = crate::support::Cubbi::new(&home).args(args);
            match stdin {
                Some(input) => cubbi.stdin(input),
                None => cubbi,
            }
            .run_async()
        };
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        cli(args(&["remote", "add", "test", &service.url]), None)
            .await?
            .success();
        cli(
            args(&["-r", "test", "auth"]),
            Some(format!("{bob_token}\n")),
        )
        .await?
        .success();
        let cli_name = user(&scope, "cli-paused");
        let mut create = args(&["-r", "test"]);
        create.extend(args(&crate::support::create_args(&cli_name, &[])));
        create.retain(|arg| arg != "--no-mount");
        cli(create, None).await?.success();
        let remote = |list: &[&str]| {
            let mut all = args(&["-r", "test", "session"]);
            all.extend(args(list));
            all
        };
        cli(
            remote(&[
                "exec",
                &cli_name,
                "--",
                "sh",
                "-c",
                "echo in-var-tmp > /var/tmp/kept",
            ]),
            None,
        )
        .await?
        .success();
        cli(remote(&["stop", &cli_name]), None)
            .await?
            .success()
            .stderr_contains(&format!("stopped {cli_name}"));
        cli(remote(&["stop", &cli_name]), None)
            .await?
            .failure()
            .stderr_contains("stopped already");
        cli(remote(&["start", &cli_name]), None)
            .await?
            .success()
            .stderr_contains(&format!("started {cli_name}"));
        let ssh = strict_ssh(&home, &cli_name)?;
        assert!(
            ssh.status.success(),
            "strict ssh after a remote start: {}",
            String::from_utf8_lossy(&ssh.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&ssh.stdout), "in-var-tmp\n");
        cli(remote(&["close", &cli_name]), None).await?.success();
        service.stop().await?;
        Ok(())
    })
}

/// A daemon of the test's own on a data root that outlives it, restarted as a host reboot
/// would stop it: the stopped session stays stopped, the running one comes back under its
/// restart policy, and both keep their files and ports.
fn a_dockerd_restart_keeps_stopped_and_running_sessions() -> Result<(), Failed> {
    docker_test("pause-restart", |scope| async move {
        scope.ensure_base().await?;
        let data = tempfile::Builder::new()
            .prefix("cubbi-pause-data-")
            .tempdir_in("/var/tmp")?;
        let engine = Dockerd::start_private(Some(data.path()), &[])?;
        let (outcome, engine) = across_a_restart(&scope, engine, data.path()).await;
        if let Some(engine) = engine {
            if outcome.is_err() {
                eprintln!("the restarted engine's log:\n{}", engine.log_tail());
            }
            engine.stop();
        }
        outcome
    })
}

async fn across_a_restart(
    scope: &DockerScope,
    engine: Dockerd,
    data_root: &std::path::Path,
) -> (Result<(), Failed>, Option<Dockerd>) {
    let home = TestHome::new();
    let before = async {
        crate::disk::copy_base_image(&scope.endpoint, &engine.endpoint)?;
        let own = on(scope, &engine.endpoint).await?;
        // Ports of its own: the run's lock does not see this daemon's labels.
        for (key, value) in [("ports.start", "2482"), ("ports.end", "2484")] {
            own.cubbi(&home)
                .args(["config", "set", key, value])
                .run()
                .success();
        }
        for name in ["pause-up", "pause-down"] {
            own.cubbi(&home)
                .args(create_args(name, &[]))
                .run()
                .success();
            exec(
                &own,
                &home,
                name,
                &["sh", "-c", "echo in-var-tmp > /var/tmp/kept"],
            );
        }
        own.cubbi(&home)
            .args(["session", "stop", "pause-down"])
            .run()
            .success();
        let ports = (
            listed(&own, &home, "pause-up")?["ssh"]["port"].clone(),
            listed(&own, &home, "pause-down")?["ssh"]["port"].clone(),
        );
        Ok::<_, Failed>(ports)
    }
    .await;
    let ports = match before {
        Ok(ports) => ports,
        Err(err) => return (Err(err), Some(engine)),
    };
    let engine = match engine.restart_on(data_root) {
        Ok(engine) => engine,
        Err(err) => return (Err(err.into()), None),
    };
    let after = async {
        let own = on(scope, &engine.endpoint).await?;
        assert_eq!(listed(&own, &home, "pause-down")?["state"], "stopped");
        assert_eq!(listed(&own, &home, "pause-down")?["ssh"]["port"], ports.1);
        // The running one is booted again by its restart policy; its sshd answers soon.
        crate::support::eventually(std::time::Duration::from_secs(60), || {
            let ran = own
                .cubbi(&home)
                .args(["session", "exec", "pause-up", "--", "cat", "/var/tmp/kept"])
                .run();
            async move {
                match ran.code() {
                    Some(0) => Ok(()),
                    _ => Err(ran.stderr()),
                }
            }
        })
        .await?;
        let up = listed(&own, &home, "pause-up")?;
        assert_eq!(up["state"], "ready", "{up}");
        assert_eq!(up["ssh"]["port"], ports.0);
        own.cubbi(&home)
            .args(["session", "start", "pause-down"])
            .run()
            .success();
        assert_eq!(
            exec(&own, &home, "pause-down", &["cat", "/var/tmp/kept"]),
            "in-var-tmp\n"
        );
        assert_eq!(
            exec(&own, &home, "pause-up", &["cat", "/var/tmp/kept"]),
            "in-var-tmp\n"
        );
        let ssh = strict_ssh(&home, "pause-down")?;
        assert!(
            ssh.status.success(),
            "strict ssh after the restart: {}",
            String::from_utf8_lossy(&ssh.stderr)
        );
        Ok::<_, Failed>(())
    }
    .await;
    (after, Some(engine))
}

/// `scope` with its owner, on another daemon.
async fn on(scope: &DockerScope, endpoint: &str) -> Result<DockerScope, Failed> {
    Ok(DockerScope {
        docker: cubbi::docker::connect(endpoint).await?,
        endpoint: endpoint.to_string(),
        id: scope.id.clone(),
    })
}

fn state_of(sessions: &Value, name: &str) -> String {
    sessions
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == name))
        .map(|s| s["state"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// `--idle-stop`: a session nobody is connected to is stopped by the next `session list`
/// (and boots again with `start`); one with an `exec` running is not. A service with
/// `limits.idle_stop` stops its idle sessions by itself.
fn idle_sessions_stop_and_busy_ones_do_not() -> Result<(), Failed> {
    docker_test("idle-stop", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        for name in ["idle-a", "idle-b"] {
            scope
                .cubbi(&home)
                .args(create_args(name, &["--idle-stop", "3s"]))
                .run()
                .success();
        }
        let mut busy = scope
            .cubbi(&home)
            .args(["session", "exec", "idle-b", "--", "sleep", "25"])
            .spawn();
        tokio::time::sleep(std::time::Duration::from_secs(8)).await;
        let listed = scope.cubbi(&home).args(["--json", "session", "list"]).run();
        let _ = busy.kill();
        let _ = busy.wait();
        let listed = listed
            .success()
            .stderr_contains("stopped idle session idle-a");
        let sessions: Value = serde_json::from_str(&listed.stdout())?;
        assert_eq!(state_of(&sessions, "idle-a"), "stopped", "{sessions}");
        assert_eq!(state_of(&sessions, "idle-b"), "ready", "busy: {sessions}");
        scope
            .cubbi(&home)
            .args(["session", "start", "idle-a"])
            .run()
            .success();
        assert_eq!(exec(&scope, &home, "idle-a", &["echo", "back"]), "back\n");

        // A service stops its own idle sessions, without anyone listing them.
        let mut service = TestService::start(&scope, |config| {
            config.limits.idle_stop = 3;
        })
        .await?;
        let client = service.client(&service.token(&user(&scope, "idler"), false)?)?;
        let name = user(&scope, "served-idle");
        client.create(crate::serve::spec(&name), &Quiet).await?;
        crate::support::eventually(std::time::Duration::from_secs(30), || {
            let client = &client;
            let name = name.clone();
            async move {
                let session = client.get(&name).await.map_err(|e| e.to_string())?;
                match session.state {
                    SessionState::Stopped => Ok(()),
                    state => Err(format!("still {state:?}")),
                }
            }
        })
        .await?;
        client.close(&name).await?;
        service.stop().await?;
        Ok(())
    })
}
