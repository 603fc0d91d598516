//! The Swarm backend on a real 3-node Swarm ([`SwarmCluster`]): forming and leaving it with
//! `cubbi setup`, and the service with `[backend] kind = "swarm"` in-process against node 1,
//! driven through the remote backend.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cubbi::api::{Backend, ErrorCode, LogOptions, Quiet, Session, SessionSpec, SessionState};
use futures_util::StreamExt;
use libtest_mimic::{Failed, Trial};

use crate::engine::require_root_and_dockerd;
use crate::support::docker_test;
use crate::support::service::{TestService, user};
use crate::support::swarm_cluster::*;

pub fn tests() -> Vec<Trial> {
    crate::trials![
        three_engines_in_network_namespaces_form_a_labelled_swarm,
        a_swarm_backend_serves_sessions_across_nodes,
    ]
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
