//! Snapshots and forks on the harness's dockerd: `session snapshot`, `session fork`, `create
//! --from-snapshot` and `snapshot list|show|rm` through the CLI, and the snapshot routes of
//! the service with another user's snapshots out of reach.

use cubbi::api::{Backend, ErrorCode, Quiet};
use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::support::service::{TestService, user};
use crate::support::sysbox::SessionRuntime;
use crate::support::{DockerScope, TestHome, create_args, docker_test};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        snapshot_then_fork_has_the_files_a_new_key_and_port,
        another_users_snapshots_are_unreachable_over_http,
    ]
}

fn json(scope: &DockerScope, home: &TestHome, args: &[&str]) -> Result<Value, Failed> {
    let mut all = vec!["--json"];
    all.extend(args);
    let out = scope.cubbi(home).args(all).run().success().stdout();
    Ok(serde_json::from_str(&out)?)
}

fn session(scope: &DockerScope, home: &TestHome, name: &str) -> Result<Value, Failed> {
    let sessions = json(scope, home, &["session", "list"])?;
    sessions
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == name).cloned())
        .ok_or_else(|| format!("no session {name}: {sessions}").into())
}

fn exec(scope: &DockerScope, home: &TestHome, name: &str, command: &[&str]) -> String {
    let mut args = vec!["session", "exec", name, "--"];
    args.extend(command);
    scope.cubbi(home).args(args).run().success().stdout()
}

/// Snapshot images are not containers, networks or volumes: the test removes its own.
async fn remove_snapshot_images(scope: &DockerScope) {
    use bollard::query_parameters::{ListImagesOptionsBuilder, RemoveImageOptionsBuilder};
    let mut images = Vec::new();
    for label in [
        format!("io.cubbi.owner={}", scope.id),
        format!("{}={}", crate::support::TEST_LABEL, scope.id),
    ] {
        let filters = std::collections::HashMap::from([("label", vec![label])]);
        images.extend(
            scope
                .docker
                .list_images(Some(
                    ListImagesOptionsBuilder::new().filters(&filters).build(),
                ))
                .await
                .unwrap_or_default(),
        );
    }
    for image in images {
        let options = RemoveImageOptionsBuilder::new().force(true).build();
        let _ = scope
            .docker
            .remove_image(&image.id, Some(options), None)
            .await;
    }
}

fn snapshot_then_fork_has_the_files_a_new_key_and_port() -> Result<(), Failed> {
    docker_test("snap-fork", |scope| async move {
        scope.ensure_base().await?;
        let outcome = fork_scenario(&scope).await;
        // Sessions go first (the harness), then the images they ran from.
        for name in ["snap-src", "snap-copy", "snap-fork"] {
            let _ = scope
                .cubbi(&TestHome::new())
                .args(["session", "close", name])
                .run();
        }
        remove_snapshot_images(&scope).await;
        outcome
    })
}

async fn fork_scenario(scope: &DockerScope) -> Result<(), Failed> {
    let home = TestHome::new();
    scope
        .cubbi(&home)
        .args(create_args("snap-src", &[]))
        .run()
        .success();
    exec(
        scope,
        &home,
        "snap-src",
        &["sh", "-c", "echo in-var-tmp > /var/tmp/kept"],
    );

    // A running session is frozen for the commit, and says so.
    scope
        .cubbi(&home)
        .args(["session", "snapshot", "snap-src", "--name", "snap-one"])
        .run()
        .success()
        .stdout_contains("frozen for the commit");
    let shown = json(scope, &home, &["snapshot", "show", "snap-one"])?;
    assert_eq!(shown["source"], "snap-src", "{shown}");
    assert_eq!(shown["taken"], "frozen", "{shown}");
    assert_eq!(shown["owner"], scope.id.as_str(), "{shown}");
    // A name taken, and a name that is no name: refused, nothing made.
    scope
        .cubbi(&home)
        .args(["session", "snapshot", "snap-src", "--name", "snap-one"])
        .run()
        .failure()
        .stderr_contains("exists already");
    scope
        .cubbi(&home)
        .args(["session", "snapshot", "snap-src", "--name", "../Bad"])
        .run()
        .failure()
        .stderr_contains("not a snapshot name");
    let listed = json(scope, &home, &["snapshot", "list"])?;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");

    let runtime = SessionRuntime::of_this_run().create_flags();
    let mut from = vec![
        "session",
        "create",
        "--from-snapshot",
        "snap-one",
        "--no-connect",
        "--no-mount",
        "--name",
        "snap-copy",
    ];
    from.extend(runtime);
    scope.cubbi(&home).args(from).run().success();
    let mut fork = vec![
        "session",
        "fork",
        "snap-src",
        "--no-connect",
        "--no-mount",
        "--name",
        "snap-fork",
    ];
    fork.extend(runtime);
    scope
        .cubbi(&home)
        .args(fork)
        .run()
        .success()
        .stderr_contains("snapshot snap-src-");

    let source = session(scope, &home, "snap-src")?;
    let copy = session(scope, &home, "snap-copy")?;
    let forked = session(scope, &home, "snap-fork")?;
    for made in [&copy, &forked] {
        assert_eq!(made["state"], "ready", "{made}");
        assert_ne!(made["ssh"]["port"], source["ssh"]["port"], "{made}");
        assert_ne!(made["ssh"]["host_key"], source["ssh"]["host_key"], "{made}");
        assert!(made["workspace"].is_null(), "{made}");
        assert_eq!(
            exec(
                scope,
                &home,
                made["name"].as_str().unwrap_or_default(),
                &["cat", "/var/tmp/kept"]
            ),
            "in-var-tmp\n"
        );
    }
    assert_ne!(copy["ssh"]["port"], forked["ssh"]["port"]);
    assert_eq!(
        exec(scope, &home, "snap-fork", &["hostname"]).trim(),
        "snap-fork"
    );
    // All three run at once, and the fork answers strict OpenSSH with its own new pin.
    assert_eq!(session(scope, &home, "snap-src")?["state"], "ready");
    let ssh = std::process::Command::new("ssh")
        .arg("-F")
        .arg(home.path().join(".ssh/cubbi.d/snap-fork.conf"))
        .args(["-o", "BatchMode=yes", "cubbi-snap-fork", "true"])
        .output()?;
    assert!(
        ssh.status.success(),
        "strict ssh to the fork: {}",
        String::from_utf8_lossy(&ssh.stderr)
    );

    // A stopped session is committed as it is.
    scope
        .cubbi(&home)
        .args(["session", "stop", "snap-src"])
        .run()
        .success();
    let still = json(
        scope,
        &home,
        &["session", "snapshot", "snap-src", "--name", "snap-still"],
    )?;
    assert_eq!(still["taken"], "stopped", "{still}");

    // A snapshot a session runs from stays until that session is closed.
    scope
        .cubbi(&home)
        .args(["snapshot", "rm", "snap-one"])
        .run()
        .failure()
        .stderr_contains("in use");
    scope
        .cubbi(&home)
        .args(["session", "close", "snap-copy"])
        .run()
        .success();
    scope
        .cubbi(&home)
        .args(["snapshot", "rm", "snap-one", "snap-still"])
        .run()
        .success();
    let left: Vec<String> = json(scope, &home, &["snapshot", "list"])?
        .as_array()
        .ok_or("not a list")?
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        left.len(),
        1,
        "only the fork's own snapshot is left: {left:?}"
    );
    assert!(left[0].starts_with("snap-src-"), "{left:?}");
    Ok(())
}

fn another_users_snapshots_are_unreachable_over_http() -> Result<(), Failed> {
    docker_test("snap-http", |scope| async move {
        scope.ensure_base().await?;
        let mut service = TestService::start(&scope, |config| {
            config.limits.snapshots_per_user = 3;
        })
        .await?;
        let (bob, eve) = (user(&scope, "bob"), user(&scope, "eve"));
        let (bob_token, eve_token) = (service.token(&bob, false)?, service.token(&eve, false)?);
        let bob_client = service.client(&bob_token)?;
        let eve_client = service.client(&eve_token)?;
        let name = user(&scope, "snapped");
        let source = bob_client.create(crate::serve::spec(&name), &Quiet).await?;
        crate::serve::run(
            &bob_client,
            &name,
            &["sh", "-c", "echo kept > /var/tmp/kept"],
        )
        .await?;
        let snap = user(&scope, "bobs");
        let made = bob_client.snapshot(&name, Some(snap.clone())).await?;
        assert_eq!(made.owner, bob, "owners as the service names them");
        assert_eq!(made.source, name);

        assert!(eve_client.snapshots().await?.is_empty());
        let err = eve_client
            .remove_snapshot(&snap)
            .await
            .err()
            .ok_or("eve removed bob's snapshot")?;
        assert_eq!(err.code(), ErrorCode::NotFound, "{err}");
        let http = reqwest::Client::new();
        let answer = http
            .post(format!("{}/v1/sessions/{name}/snapshot", service.url))
            .bearer_auth(&eve_token)
            .json(&serde_json::json!({}))
            .send()
            .await?;
        assert_eq!(
            answer.status().as_u16(),
            404,
            "eve's snapshot of bob's session"
        );
        let answer = http
            .post(format!("{}/v1/sessions/{name}/snapshot", service.url))
            .bearer_auth(&bob_token)
            .json(&serde_json::json!({"name": snap}))
            .send()
            .await?;
        assert_eq!(answer.status().as_u16(), 409, "a name bob has already");

        // A session from bob's snapshot: its files, a new host key and port.
        let copy = user(&scope, "copy");
        let mut copy_spec = crate::serve::spec(&copy);
        copy_spec.image = "ignored-for-snapshots".into();
        let copied = bob_client
            .create_with(copy_spec, Some(snap.clone()), &Quiet)
            .await?;
        let (kept, _, code) =
            crate::serve::run(&bob_client, &copy, &["cat", "/var/tmp/kept"]).await?;
        assert_eq!((kept.as_str(), code), ("kept\n", 0));
        assert_ne!(copied.ssh.host_key, source.ssh.host_key);
        assert_ne!(copied.ssh.port, source.ssh.port);
        // Eve cannot boot it, nor find it.
        let answer = http
            .post(format!("{}/v1/sessions", service.url))
            .bearer_auth(&eve_token)
            .json(&serde_json::json!({"snapshot": snap, "runtime": SessionRuntime::of_this_run().runtime_name()}))
            .send()
            .await?;
        assert_eq!(answer.status().as_u16(), 404, "eve booting bob's snapshot");
        let both = http
            .post(format!("{}/v1/sessions", service.url))
            .bearer_auth(&bob_token)
            .json(&serde_json::json!({"snapshot": snap, "image": "base"}))
            .send()
            .await?;
        assert_eq!(both.status().as_u16(), 400, "image and snapshot at once");

        // `cubbi -r NAME session fork` through the CLI: a second snapshot, and its session.
        let home = TestHome::new();
        scope
            .cubbi(&home)
            .args(["remote", "add", "svc", &service.url])
            .run()
            .success();
        scope
            .cubbi(&home)
            .args(["-r", "svc", "auth"])
            .stdin(format!("{bob_token}\n"))
            .run()
            .success();
        let forked = user(&scope, "forked");
        let mut fork = vec![
            "-r",
            "svc",
            "session",
            "fork",
            name.as_str(),
            "--no-connect",
        ];
        fork.extend(["--no-mount", "--name", forked.as_str()]);
        fork.extend(SessionRuntime::of_this_run().create_flags());
        scope.cubbi(&home).args(fork).run().success();
        let (kept, _, _) =
            crate::serve::run(&bob_client, &forked, &["cat", "/var/tmp/kept"]).await?;
        assert_eq!(kept, "kept\n");

        // The third is the last the limit allows.
        bob_client.snapshot(&name, None).await?;
        let err = bob_client
            .snapshot(&name, None)
            .await
            .err()
            .ok_or("a fourth snapshot past limits.snapshots_per_user")?;
        assert_eq!(err.code(), ErrorCode::Quota, "{err}");
        assert!(err.to_string().contains("snapshots_per_user"), "{err}");

        bob_client.close(&copy).await?;
        bob_client.close(&forked).await?;
        let mine = bob_client.snapshots().await?;
        assert_eq!(mine.len(), 3, "{mine:?}");
        let removed = bob_client.remove_snapshot(&snap).await?;
        assert_eq!(removed.name, snap);
        for other in bob_client.snapshots().await? {
            bob_client.remove_snapshot(&other.name).await?;
        }
        assert!(bob_client.snapshots().await?.is_empty());
        bob_client.close(&name).await?;
        service.stop().await?;
        remove_snapshot_images(&scope).await;
        Ok(())
    })
}
