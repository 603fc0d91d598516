//! The warm pool against the run's real dockerd. The first tests use plain `debian:bookworm`
//! containers (`sleep infinity`) carrying member names and labels, to prove the claim's commit
//! (record volume, then Docker's rename by name as the lock) and `cubbi pool status|drain`.
//! The rest boot real system-container members with `pool fill` and claim them through the
//! CLI and the service: a claimed session's conformance, refills, a crash at each claim step,
//! 20 creates at once, a tool image's members holding their owner's data.

use std::collections::BTreeSet;

use bollard::models::ContainerCreateBody;
use cubbi::local::pool::claim::{claim, claimed_sessions};
use cubbi::local::pool::member::{MemberName, member_labels};
use cubbi::local::pool::{ClaimRecord, PoolTargets};
use libtest_mimic::{Failed, Trial};

use crate::support::base_image::BASE_IMAGE;
use crate::support::sysbox::SessionRuntime;
use crate::support::{DockerScope, TestHome, create_args, docker_test, eventually};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        twenty_racing_claims_on_ten_members_take_each_once,
        pool_status_and_drain_read_real_members,
        a_claimed_session_serves_like_a_cold_one_and_the_pool_refills,
        a_tool_images_members_hold_their_owners_data_and_serve_only_them,
        a_crash_at_each_claim_step_leaves_a_member_or_a_session,
        twenty_concurrent_creates_on_a_pool_of_ten_use_each_member_once,
        the_service_claims_refills_and_keeps_claims_across_a_restart,
        the_service_keeps_a_tool_images_members_for_each_owner_who_uses_it,
    ]
}

/// A pool image name of this test alone, so parallel tests never drain or claim each other's.
fn image_of(scope: &DockerScope) -> String {
    scope.id.clone()
}

/// Starts `count` members of `image` (a real container each, labelled for the scope's cleanup).
async fn start_members(scope: &DockerScope, image: &str, count: u16) -> Result<(), Failed> {
    for i in 0..count {
        let mut labels = member_labels(image, BASE_IMAGE, 2300 + i, "127.0.0.1", "k", &[]);
        labels.extend(scope.labels());
        let name = MemberName::fresh(image).container_name();
        scope
            .docker
            .create_container(
                Some(
                    bollard::query_parameters::CreateContainerOptionsBuilder::new()
                        .name(&name)
                        .build(),
                ),
                ContainerCreateBody {
                    image: Some(BASE_IMAGE.into()),
                    cmd: Some(vec!["sleep".into(), "infinity".into()]),
                    labels: Some(labels),
                    ..Default::default()
                },
            )
            .await?;
        scope
            .docker
            .start_container(
                &name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await?;
    }
    Ok(())
}

fn twenty_racing_claims_on_ten_members_take_each_once() -> Result<(), Failed> {
    docker_test("pool-race", |scope| async move {
        let image = image_of(&scope);
        start_members(&scope, &image, 10).await?;
        let claims = (0..20).map(|i| {
            let (docker, image) = (scope.docker.clone(), image.clone());
            let record = ClaimRecord {
                container: String::new(),
                name: format!("pool-race-{}-{i}", std::process::id()),
                owner: scope.id.clone(),
                // Now, as a real claim: a fill elsewhere sweeps records older than 5 minutes.
                created: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64),
                idle_stop_secs: None,
            };
            tokio::spawn(async move { claim(&docker, &image, record).await })
        });
        let outcomes = futures_util::future::join_all(claims).await;
        let mut taken = Vec::new();
        for outcome in outcomes {
            if let Some(record) = outcome?? {
                taken.push(record);
            }
        }
        let sessions = claimed_sessions(&scope.docker).await?;
        // The records are volumes without the scope's label: removed here, before asserting.
        let records = scope
            .docker
            .list_volumes(Some(
                bollard::query_parameters::ListVolumesOptionsBuilder::new()
                    .filters(&std::collections::HashMap::from([(
                        "label",
                        vec![format!("io.cubbi.owner={}", scope.id)],
                    )]))
                    .build(),
            ))
            .await?
            .volumes
            .unwrap_or_default();
        for volume in &records {
            let _ = scope
                .docker
                .remove_volume(
                    &volume.name,
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await;
        }
        assert_eq!(
            records.len(),
            10,
            "one record per claim, none left by the losers"
        );
        assert_eq!(taken.len(), 10, "each member claimed once, ten go cold");
        let members: BTreeSet<&String> = taken.iter().map(|r| &r.container).collect();
        assert_eq!(members.len(), 10, "no member claimed twice");
        let ours: Vec<_> = sessions
            .iter()
            .filter(|(_, labels)| labels.owner == scope.id)
            .collect();
        assert_eq!(
            ours.len(),
            10,
            "every claim reads back as a session of its owner"
        );
        for (id, labels) in ours {
            let inspected = scope.docker.inspect_container(id, None).await?;
            let name = inspected.name.unwrap_or_default();
            assert_eq!(name, format!("/cubbi-{}.booting", labels.name));
        }
        Ok(())
    })
}

fn pool_status_and_drain_read_real_members() -> Result<(), Failed> {
    docker_test("pool-cli", |scope| async move {
        let image = image_of(&scope);
        start_members(&scope, &image, 1).await?;
        let home = TestHome::new();
        scope
            .cubbi(&home)
            .args(["config", "set", &format!("pool.{image}"), "2"])
            .run()
            .success();
        let shown = scope
            .cubbi(&home)
            .args(["--json", "pool", "status"])
            .run()
            .success();
        let rows: serde_json::Value = serde_json::from_str(&shown.stdout())?;
        let row = rows
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["image"] == image.as_str()))
            .ok_or_else(|| format!("no row for {image} in {rows}"))?;
        assert_eq!(row["ready"], 1, "{row}");
        assert_eq!(row["target"], 2, "{row}");
        let refused = scope
            .cubbi(&home)
            .args(["config", "set", &format!("pool.{image}"), "many"])
            .run();
        assert!(!refused.output.status.success(), "a non-number is refused");
        let drained = scope
            .cubbi(&home)
            .args(["--json", "pool", "drain", "--image", &image])
            .run()
            .success();
        let drained: serde_json::Value = serde_json::from_str(&drained.stdout())?;
        assert_eq!(drained["removed"], 1, "{drained}");
        let targets = PoolTargets::default();
        let rows = cubbi::local::pool::ops::status(&scope.docker, &targets, &scope.id).await?;
        assert!(rows.iter().all(|r| r.image != image), "{rows:?}");
        Ok(())
    })
}

/// The tests below share the endpoint's pool of `base` (members belong to no test and any
/// create of a fitting session may claim one), so they take turns.
fn base_pool() -> std::sync::MutexGuard<'static, ()> {
    static BASE_POOL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    BASE_POOL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Members and sessions made from them through the CLI carry no test label: closed and
/// drained when this guard drops, whatever the scenario left, a failed assertion included.
struct LeaveNothing<'a> {
    scope: &'a DockerScope,
    home: &'a TestHome,
    sessions: Vec<String>,
    /// The images whose members are drained (the home owner's and unbound ones).
    images: Vec<&'static str>,
}

impl<'a> LeaveNothing<'a> {
    fn new(scope: &'a DockerScope, home: &'a TestHome, sessions: &[&str]) -> Self {
        let sessions = sessions.iter().map(|s| s.to_string()).collect();
        Self {
            scope,
            home,
            sessions,
            images: vec!["base"],
        }
    }
}

impl Drop for LeaveNothing<'_> {
    fn drop(&mut self) {
        for name in &self.sessions {
            let _ = self
                .scope
                .cubbi(self.home)
                .args(["session", "close", name])
                .run();
        }
        for image in &self.images {
            self.scope
                .cubbi(self.home)
                .args(["pool", "drain", "--image", image])
                .run();
        }
    }
}

/// `session list --json` of the home's owner.
fn session_list(scope: &DockerScope, home: &TestHome) -> String {
    scope
        .cubbi(home)
        .args(["--json", "session", "list"])
        .run()
        .success()
        .stdout()
}

/// The claim's steps, each a `CUBBI_TEST_CRASH_AT=claim:STEP` point.
const CRASH_STEPS: [&str; 5] = ["record", "rename", "applying", "files", "applied"];

/// A CLI home whose config keeps `target` members of `base`, booted with the run's runtime.
fn configure_pool(scope: &DockerScope, home: &TestHome, target: u32) {
    configure_pool_of(scope, home, "base", target, &[]);
}

/// A CLI home whose config keeps `target` members of `image`, booted with the run's runtime,
/// and the `more` settings.
fn configure_pool_of(
    scope: &DockerScope,
    home: &TestHome,
    image: &str,
    target: u32,
    more: &[(&str, &str)],
) {
    let runtime = SessionRuntime::of_this_run();
    let target = target.to_string();
    let key = format!("pool.{image}");
    let mut settings = vec![
        (key.as_str(), target.as_str()),
        ("defaults.runtime", runtime.runtime_name()),
    ];
    settings.extend(more);
    if runtime.unsafe_runc() {
        settings.push(("defaults.allow_unsafe_runc", "true"));
    }
    for (key, value) in settings {
        scope
            .cubbi(home)
            .args(["config", "set", key, value])
            .run()
            .success();
    }
}

/// Waits until the background refills that creates announced on stderr (`pid N`) are over,
/// so no fill of this test outlives it.
async fn refills_done(stderrs: &[String]) -> Result<(), Failed> {
    let pids: Vec<String> = stderrs
        .iter()
        .filter_map(|text| {
            let rest = &text[text.find("in the background (pid ")? + 23..];
            Some(rest.chars().take_while(char::is_ascii_digit).collect())
        })
        .collect();
    eventually(std::time::Duration::from_secs(300), || async {
        match pids
            .iter()
            .find(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
        {
            Some(pid) => Err(format!("the refill {pid} is still running")),
            None => Ok(()),
        }
    })
    .await
}

/// Claim records (volumes) naming container `id`.
async fn records_of(scope: &DockerScope, id: &str) -> Result<Vec<String>, Failed> {
    Ok(scope
        .docker
        .list_volumes(None::<bollard::query_parameters::ListVolumesOptions>)
        .await?
        .volumes
        .unwrap_or_default()
        .iter()
        .filter(|v| v.labels.get("io.cubbi.claim-of").map(String::as_str) == Some(id))
        .map(|v| v.name.clone())
        .collect())
}

/// `pool status --json`'s row for `image`: (ready, not ready).
fn pool_row(scope: &DockerScope, home: &TestHome, image: &str) -> Result<(u64, u64), String> {
    let shown = scope.cubbi(home).args(["--json", "pool", "status"]).run();
    let rows: serde_json::Value =
        serde_json::from_str(&shown.stdout()).map_err(|err| err.to_string())?;
    let row = rows
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["image"] == image))
        .ok_or_else(|| format!("no row for {image} in {rows}"))?;
    Ok((
        row["ready"].as_u64().unwrap_or(0),
        row["not_ready"].as_u64().unwrap_or(0),
    ))
}

/// The whole path through the CLI on real Docker: `pool fill` boots real system containers,
/// a fitting `session create` claims one (and says so), the session serves as a cold one does
/// (exec and exit codes, hostname, strict OpenSSH with the pinned key, a secret the agent
/// sees and `docker inspect` does not, the owner's network, list/show), the pool refills in
/// the background, a create with a workspace goes cold and says why at -v, and close removes
/// container and claim record.
fn a_claimed_session_serves_like_a_cold_one_and_the_pool_refills() -> Result<(), Failed> {
    let _one_base_pool = base_pool();
    docker_test("pool-claim", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        configure_pool(&scope, &home, 2);
        let _leave_nothing =
            LeaveNothing::new(&scope, &home, &["pool-a", "pool-cold", "pool-proj"]);
        claim_scenario(&scope, &home).await
    })
}

/// The gateway of the engine's network `name`.
async fn gateway_of(scope: &DockerScope, name: &str) -> Result<String, Failed> {
    let network = scope
        .docker
        .inspect_network(
            name,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await?;
    Ok(network
        .ipam
        .and_then(|ipam| ipam.config)
        .and_then(|configs| configs.into_iter().find_map(|c| c.gateway))
        .ok_or_else(|| format!("the network {name} has no gateway"))?)
}

/// `pool fill` through the CLI, which must say `says` (`IMAGE: N booted`).
fn fill_says(scope: &DockerScope, home: &TestHome, says: &str) {
    let filled = scope
        .cubbi(home)
        .env("CUBBI_READY_TIMEOUT", "180")
        .args(["pool", "fill"])
        .run()
        .success();
    assert!(filled.stderr().contains(says), "{}", filled.stderr());
}

async fn claim_scenario(scope: &DockerScope, home: &TestHome) -> Result<(), Failed> {
    fill_says(scope, home, "base: 2 booted");
    assert_eq!(pool_row(scope, home, "base")?, (2, 0), "two members ready");
    let members = crate::support::containers_labelled(&scope.docker, "io.cubbi.pool=base").await?;
    assert_eq!(members.len(), 2);
    assert!(
        members.iter().all(|m| m
            .labels
            .as_ref()
            .is_some_and(|l| !l.contains_key("io.cubbi.owner"))),
        "members have no owner"
    );

    let created = scope
        .cubbi(home)
        .args(["-v"])
        .args(create_args("pool-a", &["-e", "POOL_SECRET=s3cr3t-pool"]))
        .run()
        .success();
    assert!(
        created.stderr().contains("from the warm pool"),
        "the create says it claimed: {}",
        created.stderr()
    );
    let refill = vec![created.stderr()];
    let exec = |command: &[&str]| {
        let mut args = vec!["session", "exec", "pool-a", "--"];
        args.extend(command);
        scope.cubbi(home).args(args).run()
    };
    assert_eq!(exec(&["hostname"]).success().stdout().trim(), "pool-a");
    // The member's inner dockerd put its bridge at the gateway of the network that holds its
    // subnet on the engine, so no network a claim joins can overlap it.
    let gateway = gateway_of(scope, cubbi::local::pool::POOL_INNER_NETWORK).await?;
    eventually(std::time::Duration::from_secs(120), || async {
        let shown = exec(&["ip", "-4", "-o", "addr", "show", "docker0"]).stdout();
        if shown.contains(&format!("inet {gateway}/")) {
            Ok(())
        } else {
            Err(format!("docker0 is {shown:?}, not at {gateway}"))
        }
    })
    .await?;
    assert_eq!(exec(&["sh", "-c", "exit 7"]).code(), Some(7));
    assert_eq!(
        exec(&["printenv", "POOL_SECRET"]).success().stdout().trim(),
        "s3cr3t-pool"
    );
    assert_eq!(
        exec(&["cat", "/var/lib/cubbi/init-status"])
            .success()
            .stdout()
            .trim(),
        "done"
    );
    let shown = scope
        .cubbi(home)
        .args(["--json", "session", "show", "pool-a"])
        .run()
        .success();
    let shown: serde_json::Value = serde_json::from_str(&shown.stdout())?;
    assert_eq!(shown["state"], "ready", "{shown}");
    assert_eq!(shown["pool"], true, "{shown}");
    assert_eq!(shown["owner"], scope.id.as_str(), "{shown}");
    let networks = shown["networks"].to_string();
    assert!(
        networks.contains(&format!("cubbi-{}", scope.id)) || networks.contains(&scope.id),
        "on the owner's network: {networks}"
    );
    let id = shown["id"].as_str().ok_or("no id")?.to_string();
    let inspected = scope.docker.inspect_container(&id, None).await?;
    assert!(
        !format!("{inspected:?}").contains("s3cr3t-pool"),
        "the secret is not in docker inspect"
    );
    let listed = session_list(scope, home);
    assert!(listed.contains("\"pool-a\""), "{listed}");

    // Its console, as a cold session's: the journal, followed to the container's log, has the
    // member's boot (cubbi-init's line), and no secret.
    let logs = scope
        .cubbi(home)
        .args(["session", "logs", "pool-a"])
        .run()
        .success()
        .stdout();
    assert!(
        logs.contains("cubbi-init: done"),
        "the session's console: {logs}"
    );
    assert!(!logs.contains("s3cr3t-pool"), "no secret in the logs");

    // Real OpenSSH, strict about the pinned host key, through the conf cubbi wrote.
    let ssh = std::process::Command::new("ssh")
        .env("HOME", home.path())
        .args([
            "-F",
            &home
                .path()
                .join(".ssh/cubbi.d/pool-a.conf")
                .display()
                .to_string(),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "cubbi-pool-a",
            "echo strict-ok",
        ])
        .output()?;
    assert_eq!(
        String::from_utf8_lossy(&ssh.stdout).trim(),
        "strict-ok",
        "{}",
        String::from_utf8_lossy(&ssh.stderr)
    );

    // The background refill puts the pool back to its target.
    refills_done(&refill).await?;
    assert_eq!(pool_row(scope, home, "base")?, (2, 0), "refilled");

    // A project is cloned into a claimed session as into a cold one (cubbi-project runs again
    // once the claim's files are in): from `git daemon` on the pool network's gateway.
    project_clone_in_a_claimed_session(scope, home).await?;

    // A workspace cannot be given to a running container: cold, and -v says why.
    let folder = home.path().join("work");
    std::fs::create_dir_all(&folder)?;
    let folder = folder.display().to_string();
    let mut cold_args = create_args("pool-cold", &[]);
    cold_args.retain(|arg| *arg != "--no-mount");
    cold_args.push(&folder);
    let cold = scope
        .cubbi(home)
        .args(["-v"])
        .args(cold_args)
        .run()
        .success();
    assert!(
        cold.stderr().contains("mounts a host folder"),
        "{}",
        cold.stderr()
    );
    assert!(
        !cold.stderr().contains("from the warm pool;"),
        "{}",
        cold.stderr()
    );

    scope
        .cubbi(home)
        .args(["session", "close", "pool-a"])
        .run()
        .success();
    let gone = scope.docker.inspect_container(&id, None).await;
    assert!(gone.is_err(), "the claimed container is removed");
    let records = scope
        .docker
        .list_volumes(None::<bollard::query_parameters::ListVolumesOptions>)
        .await?;
    let left: Vec<String> = records
        .volumes
        .unwrap_or_default()
        .iter()
        .filter(|v| v.labels.get("io.cubbi.claim-of") == Some(&id))
        .map(|v| v.name.clone())
        .collect();
    assert!(left.is_empty(), "close removes the claim record: {left:?}");
    Ok(())
}

/// A tool image keeps its config in the owner's data volume, which Docker cannot add to a
/// running container: its members boot with the filling owner's. On real Docker: the member
/// holds that volume and no owner; another owner neither sees it in `pool status` nor claims
/// it; the owner's create claims it, and what the agent writes to its config (a symlink into
/// the volume) is in the next session of that owner, a cold one.
fn a_tool_images_members_hold_their_owners_data_and_serve_only_them() -> Result<(), Failed> {
    docker_test("pool-tool", |scope| async move {
        scope.ensure_image("claude-code").await?;
        let home = TestHome::new();
        configure_pool_of(
            &scope,
            &home,
            "claude-code",
            1,
            &[("defaults.pool_refill", "manual")],
        );
        let other = format!("{}-other", scope.id);
        let mut leave_nothing = LeaveNothing::new(&scope, &home, &["tool-a", "tool-b"]);
        leave_nothing.images = vec!["claude-code"];
        let outcome = tool_scenario(&scope, &home, &other).await;
        let _ = scope
            .cubbi(&home)
            .env("CUBBI_OWNER", &other)
            .args(["session", "close", "tool-other"])
            .run();
        scope.remove_owner(&other).await;
        outcome
    })
}

async fn tool_scenario(scope: &DockerScope, home: &TestHome, other: &str) -> Result<(), Failed> {
    let create = |owner: &str, name: &'static str| {
        let mut args = vec!["-v"];
        args.extend(create_args(name, &[]));
        let image = args.iter().position(|arg| *arg == "base").unwrap_or(0);
        args[image] = "claude-code";
        scope
            .cubbi(home)
            .env("CUBBI_OWNER", owner)
            .args(args)
            .run()
            .success()
    };
    fill_says(scope, home, "claude-code: 1 booted");
    let members =
        crate::support::containers_labelled(&scope.docker, "io.cubbi.pool=claude-code").await?;
    let ours: Vec<_> = members
        .iter()
        .filter(|m| {
            m.labels
                .as_ref()
                .and_then(|l| l.get("io.cubbi.pool.data-owner"))
                == Some(&scope.id)
        })
        .collect();
    assert_eq!(ours.len(), 1, "{members:?}");
    let member = ours[0].id.clone().ok_or("no id")?;
    let inspected = scope.docker.inspect_container(&member, None).await?;
    let labels = inspected.config.and_then(|c| c.labels).unwrap_or_default();
    assert!(
        !labels.contains_key("io.cubbi.owner"),
        "the member is no owner's session"
    );
    let mounts = inspected.mounts.unwrap_or_default();
    let data = mounts
        .iter()
        .find(|m| m.destination.as_deref() == Some("/mnt/agent-data"))
        .ok_or_else(|| format!("no data volume in {mounts:?}"))?;
    let volume = scope
        .docker
        .inspect_volume(data.name.as_deref().unwrap_or_default())
        .await?;
    assert_eq!(
        volume.labels.get("io.cubbi.owner"),
        Some(&scope.id),
        "the member holds its owner's data volume"
    );

    // Another owner: not in their status, not claimed by their create (cold, and -v says so).
    let theirs = scope
        .cubbi(home)
        .env("CUBBI_OWNER", other)
        .args(["--json", "pool", "status"])
        .run()
        .success()
        .stdout();
    let rows: serde_json::Value = serde_json::from_str(&theirs)?;
    let row = rows
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["image"] == "claude-code"))
        .ok_or_else(|| format!("no claude-code row in {rows}"))?;
    assert_eq!(row["ready"], 0, "another owner's status: {rows}");
    let cold = create(other, "tool-other");
    assert!(
        cold.stderr().contains("has no ready member"),
        "{}",
        cold.stderr()
    );
    assert_eq!(pool_row(scope, home, "claude-code")?, (1, 0), "still ours");

    // The owner's create claims it, and the agent's config lives in the owner's volume.
    let claimed = create(&scope.id, "tool-a");
    assert!(
        claimed.stderr().contains("from the warm pool"),
        "{}",
        claimed.stderr()
    );
    let exec = |name: &str, script: &str| {
        scope
            .cubbi(home)
            .args(["session", "exec", name, "--", "sh", "-c", script])
            .run()
            .success()
            .stdout()
    };
    assert_eq!(
        exec("tool-a", "readlink ~/.claude").trim(),
        "/mnt/agent-data/claude-code/.claude"
    );
    exec("tool-a", "printf kept > ~/.claude/pool-marker");
    scope
        .cubbi(home)
        .args(["session", "close", "tool-a"])
        .run()
        .success();
    let next = create(&scope.id, "tool-b");
    assert!(
        next.stderr().contains("has no ready member"),
        "the pool of one was used, and refills are manual: {}",
        next.stderr()
    );
    assert_eq!(exec("tool-b", "cat ~/.claude/pool-marker"), "kept");
    Ok(())
}

async fn project_clone_in_a_claimed_session(
    scope: &DockerScope,
    home: &TestHome,
) -> Result<(), Failed> {
    use crate::session::git;
    let repos = tempfile::tempdir()?;
    let work = repos.path().join("work");
    std::fs::create_dir(&work)?;
    git(&work, &["init", "-q", "-b", "main"])?;
    std::fs::write(work.join("README"), "cloned into a pool member\n")?;
    git(&work, &["add", "README"])?;
    git(&work, &["commit", "-q", "-m", "main"])?;
    git(repos.path(), &["clone", "-q", "--bare", "work", "repo.git"])?;
    let gateway = gateway_of(scope, cubbi::local::pool::POOL_NETWORK).await?;
    let port = std::net::TcpListener::bind((gateway.as_str(), 0))?
        .local_addr()?
        .port();
    // In a group of its own: `git daemon` runs `git-daemon` as a child, which must not
    // outlive the test (it holds the test's stdout open).
    let mut daemon = std::process::Command::new("git");
    std::os::unix::process::CommandExt::process_group(&mut daemon, 0);
    let mut daemon = daemon
        .args([
            "daemon",
            "--reuseaddr",
            "--export-all",
            &format!("--listen={gateway}"),
            &format!("--port={port}"),
            &format!("--base-path={}", repos.path().display()),
        ])
        .arg(repos.path())
        .spawn()?;
    let url = format!("git://{gateway}:{port}/repo.git");
    let outcome = async {
        let created = scope
            .cubbi(home)
            .args(create_args("pool-proj", &["--project", &url]))
            .run()
            .success();
        assert!(
            created.stderr().contains("from the warm pool"),
            "a project create claims: {}",
            created.stderr()
        );
        refills_done(&[created.stderr()]).await?;
        let read = |path: &'static str| {
            scope
                .cubbi(home)
                .args(["session", "exec", "pool-proj", "--", "cat", path])
                .run()
        };
        eventually(std::time::Duration::from_secs(60), || async {
            let status = read("/var/lib/cubbi/project-status").stdout();
            match status.trim() {
                "done" => Ok(()),
                other => Err(format!("project status {other:?}")),
            }
        })
        .await?;
        assert_eq!(
            read("/home/agent/workspace/README").success().stdout(),
            "cloned into a pool member\n"
        );
        Ok::<(), Failed>(())
    }
    .await;
    if let Ok(group) = i32::try_from(daemon.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(group),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let _ = daemon.wait();
    let _ = scope
        .cubbi(home)
        .args(["session", "close", "pool-proj"])
        .run();
    outcome
}

/// `CUBBI_TEST_CRASH_AT` aborts the create after each claim step. Before the rename the
/// container is still a member (held by its record, so not ready, and no session is listed);
/// from the rename on it is a session, listed, that `close` removes with its record. Never
/// both, never neither.
fn a_crash_at_each_claim_step_leaves_a_member_or_a_session() -> Result<(), Failed> {
    let _one_base_pool = base_pool();
    docker_test("pool-crash", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        configure_pool(&scope, &home, 1);
        let names = CRASH_STEPS.map(|step| format!("crash-{step}"));
        let _leave_nothing =
            LeaveNothing::new(&scope, &home, &names.each_ref().map(String::as_str));
        crash_scenario(&scope, &home).await
    })
}

async fn crash_scenario(scope: &DockerScope, home: &TestHome) -> Result<(), Failed> {
    for step in CRASH_STEPS {
        scope
            .cubbi(home)
            .args(["pool", "drain", "--image", "base"])
            .run()
            .success();
        scope
            .cubbi(home)
            .env("CUBBI_READY_TIMEOUT", "180")
            .args(["pool", "fill"])
            .run()
            .success();
        let members =
            crate::support::containers_labelled(&scope.docker, "io.cubbi.pool=base").await?;
        let [member] = members.as_slice() else {
            return Err(format!(
                "one member before the crash at {step}, not {}",
                members.len()
            )
            .into());
        };
        let id = member.id.clone().ok_or("a member without an id")?;
        let name = format!("crash-{step}");
        let crashed = scope
            .cubbi(home)
            .env("CUBBI_TEST_CRASH_AT", format!("claim:{step}"))
            .args(create_args(&name, &[]))
            .run();
        assert_eq!(
            crashed.code(),
            None,
            "aborted at {step}: {}",
            crashed.stderr()
        );
        let listed = session_list(scope, home);
        let container = scope.docker.inspect_container(&id, None).await?;
        let container_name = container.name.unwrap_or_default();
        let records = records_of(scope, &id).await?;
        assert_eq!(records.len(), 1, "the claim's record is there after {step}");
        if step == "record" {
            assert!(
                container_name.starts_with("/cubbi-pool.base."),
                "still a member after {step}: {container_name}"
            );
            assert!(!listed.contains(&name), "no session after {step}: {listed}");
            assert_eq!(
                pool_row(scope, home, "base")?,
                (0, 1),
                "a held member is not ready"
            );
        } else {
            assert_eq!(
                container_name,
                format!("/cubbi-{name}.booting"),
                "after {step}"
            );
            assert!(listed.contains(&name), "a session after {step}: {listed}");
            scope
                .cubbi(home)
                .args(["session", "close", &name])
                .run()
                .success();
            assert!(
                scope.docker.inspect_container(&id, None).await.is_err(),
                "close removes the container after {step}"
            );
            assert!(
                records_of(scope, &id).await?.is_empty(),
                "close removes the record after {step}"
            );
        }
    }
    Ok(())
}

/// 20 creates at once against 10 members: each member serves at most one session, every
/// member is claimed (a create goes cold only when none is left), and the 20 sessions are
/// distinct and ready.
fn twenty_concurrent_creates_on_a_pool_of_ten_use_each_member_once() -> Result<(), Failed> {
    let _one_base_pool = base_pool();
    docker_test("pool-twenty", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        configure_pool(&scope, &home, 10);
        // No refill while the creates run, so exactly the ten members can be claimed.
        scope
            .cubbi(&home)
            .args(["config", "set", "defaults.pool_refill", "manual"])
            .run()
            .success();
        let names: Vec<String> = (0..20).map(|i| format!("pt{i}")).collect();
        let each: Vec<&str> = names.iter().map(String::as_str).collect();
        let _leave_nothing = LeaveNothing::new(&scope, &home, &each);
        twenty_scenario(&scope, &home, &names).await
    })
}

async fn twenty_scenario(
    scope: &DockerScope,
    home: &TestHome,
    names: &[String],
) -> Result<(), Failed> {
    scope
        .cubbi(home)
        .env("CUBBI_READY_TIMEOUT", "300")
        .args(["pool", "fill"])
        .run()
        .success();
    assert_eq!(pool_row(scope, home, "base")?.0, 10, "ten members ready");
    let members: BTreeSet<String> =
        crate::support::containers_labelled(&scope.docker, "io.cubbi.pool=base")
            .await?
            .into_iter()
            .filter_map(|c| c.id)
            .collect();
    let children: Vec<_> = names
        .iter()
        .map(|name| {
            scope
                .cubbi(home)
                .env("CUBBI_READY_TIMEOUT", "300")
                .args(create_args(name, &[]))
                .spawn()
        })
        .collect();
    let mut stderrs = Vec::new();
    for child in children {
        let output = child.wait_with_output()?;
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "a concurrent create failed: {stderr}"
        );
        stderrs.push(stderr);
    }
    assert!(
        stderrs
            .iter()
            .all(|e| !e.contains("in the background (pid ")),
        "no refill with defaults.pool_refill = manual: {stderrs:?}"
    );
    let said_manual = stderrs
        .iter()
        .filter(|e| {
            e.contains("not refilled (defaults.pool_refill = manual): run `cubbi pool fill`")
        })
        .count();
    assert_eq!(
        said_manual, 10,
        "each claim says how to refill: {stderrs:?}"
    );
    let listed = session_list(scope, home);
    let sessions: Vec<serde_json::Value> = serde_json::from_str(&listed)?;
    let ours: Vec<&serde_json::Value> = sessions
        .iter()
        .filter(|s| names.iter().any(|n| s["name"] == n.as_str()))
        .collect();
    assert_eq!(ours.len(), 20, "twenty sessions: {listed}");
    let ids: BTreeSet<&str> = ours.iter().filter_map(|s| s["id"].as_str()).collect();
    let ports: BTreeSet<u64> = ours
        .iter()
        .filter_map(|s| s["ssh"]["port"].as_u64())
        .collect();
    assert_eq!(
        (ids.len(), ports.len()),
        (20, 20),
        "distinct containers and ports"
    );
    assert!(ours.iter().all(|s| s["state"] == "ready"), "{listed}");
    let claimed: Vec<&str> = ours
        .iter()
        .filter(|s| s["pool"] == true)
        .filter_map(|s| s["id"].as_str())
        .collect();
    let claimed_members: BTreeSet<&str> = claimed.iter().copied().collect();
    assert_eq!(
        (claimed.len(), claimed_members.len()),
        (10, 10),
        "ten claims, each of a different member: {claimed:?}"
    );
    assert!(
        claimed.iter().all(|id| members.contains(*id)),
        "every claim took a member of the full pool: {claimed:?} of {members:?}"
    );
    let cold = ours.iter().filter(|s| s["pool"] != true).count();
    assert_eq!(cold, 10, "the other ten booted cold: {listed}");
    assert_eq!(pool_row(scope, home, "base")?.0, 0, "the pool is empty");
    Ok(())
}

/// The service keeps its pool full in the background, a remote create claims a member, and a
/// restarted service still lists the claimed session (read back from member labels and the
/// claim record) while its pool is full again.
fn the_service_claims_refills_and_keeps_claims_across_a_restart() -> Result<(), Failed> {
    let _one_base_pool = base_pool();
    docker_test("pool-serve", |scope| async move {
        scope.ensure_base().await?;
        let targets: PoolTargets = serde_json::from_value(serde_json::json!({ "base": 2 }))?;
        let mut service = crate::support::service::TestService::start(&scope, |config| {
            config.pool = targets.clone();
        })
        .await?;
        let outcome = service_scenario(&scope, &mut service, &targets).await;
        service.stop().await?;
        // Members the service booted carry the test's label: the scope's cleanup removes them.
        outcome
    })
}

/// A service's pool serves every owner, and a tool image's member holds one owner's data: the
/// service keeps the image's target for each owner who created such a session lately. Alice's
/// first create boots cold and brings her a member, her next create claims it (her agent's
/// config in her volume), and Bob's create never takes hers.
fn the_service_keeps_a_tool_images_members_for_each_owner_who_uses_it() -> Result<(), Failed> {
    docker_test("pool-serve-tool", |scope| async move {
        scope.ensure_image("claude-code").await?;
        let targets: PoolTargets = serde_json::from_value(serde_json::json!({ "claude-code": 1 }))?;
        let mut service = crate::support::service::TestService::start(&scope, |config| {
            config.pool = targets.clone();
        })
        .await?;
        let outcome = service_tool_scenario(&scope, &service).await;
        service.stop().await?;
        // Members and data volumes carry the test's label: the scope's cleanup removes them.
        outcome
    })
}

async fn service_tool_scenario(
    scope: &DockerScope,
    service: &crate::support::service::TestService,
) -> Result<(), Failed> {
    use cubbi::api::Backend;
    // The owners whose data this service's members of claude-code hold (whether each is
    // ready): members carry the service's labels, so another test's are not counted.
    let ours = scope.labels();
    let holders = || async {
        let members =
            crate::support::containers_labelled(&scope.docker, "io.cubbi.pool=claude-code")
                .await
                .map_err(|e| format!("{e:?}"))?;
        Ok::<Vec<(bool, Option<String>)>, String>(
            members
                .iter()
                .filter(|m| MemberName::of_container(m).is_some())
                .filter(|m| {
                    ours.iter()
                        .all(|(k, v)| m.labels.as_ref().and_then(|l| l.get(k)) == Some(v))
                })
                .map(|m| {
                    let ready = MemberName::of_container(m).is_some_and(|(_, booting)| !booting)
                        && m.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING);
                    let owner = m
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("io.cubbi.pool.data-owner").cloned());
                    (ready, owner)
                })
                .collect(),
        )
    };
    // Three fills (every 2 s) with nobody using the image: no member for anyone.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert_eq!(holders().await?, Vec::new(), "no member before any use");

    let tool = |name: &str| {
        let mut spec = crate::serve::spec(name);
        spec.image = "claude-code".into();
        spec
    };
    let alice = crate::support::service::user(scope, "alice");
    let alices = service.client(&service.token(&alice, false)?)?;
    let first = alices.create(tool("tool-1"), &cubbi::api::Quiet).await?;
    assert!(!first.pool, "her first create boots cold: {first:?}");
    let her_member = || async {
        match holders().await?.as_slice() {
            [(true, Some(_))] => Ok(()),
            other => Err(format!("the members are {other:?}")),
        }
    };
    eventually(std::time::Duration::from_secs(240), her_member).await?;
    let hers = holders().await?[0].1.clone().ok_or("no holder")?;

    let second = alices.create(tool("tool-2"), &cubbi::api::Quiet).await?;
    assert!(second.pool, "her next create claims her member: {second:?}");
    let (out, _, code) =
        crate::serve::run(&alices, &second.id, &["sh", "-c", "readlink ~/.claude"]).await?;
    assert_eq!(
        (out.trim(), code),
        ("/mnt/agent-data/claude-code/.claude", 0)
    );

    let bob = crate::support::service::user(scope, "bob");
    let bobs = service.client(&service.token(&bob, false)?)?;
    // Wait for Alice's refill, so a member is ready while Bob creates.
    eventually(std::time::Duration::from_secs(240), her_member).await?;
    let his = bobs.create(tool("tool-3"), &cubbi::api::Quiet).await?;
    assert!(
        !his.pool,
        "Bob's create never takes Alice's member: {his:?}"
    );
    let after = holders().await?;
    assert!(
        after
            .iter()
            .any(|(ready, owner)| *ready && owner.as_ref() == Some(&hers)),
        "Alice's member is still there: {after:?}"
    );
    for (client, id) in [
        (&alices, &first.id),
        (&alices, &second.id),
        (&bobs, &his.id),
    ] {
        client.close(id).await?;
    }
    Ok(())
}

async fn service_scenario(
    scope: &DockerScope,
    service: &mut crate::support::service::TestService,
    targets: &PoolTargets,
) -> Result<(), Failed> {
    use cubbi::api::Backend;
    let full = || async {
        let rows = cubbi::local::pool::ops::status(&scope.docker, targets, "")
            .await
            .map_err(|e| e.to_string())?;
        match rows.iter().find(|r| r.image == "base") {
            Some(row) if row.ready == 2 => Ok(()),
            other => Err(format!("the pool is {other:?}")),
        }
    };
    eventually(std::time::Duration::from_secs(240), full).await?;
    let alice = crate::support::service::user(scope, "alice");
    let client = service.client(&service.token(&alice, false)?)?;
    let created = client
        .create(crate::serve::spec("pooled"), &cubbi::api::Quiet)
        .await?;
    assert!(
        created.pool,
        "the remote create claimed a member: {created:?}"
    );
    let (out, _, code) = crate::serve::run(&client, &created.id, &["hostname"]).await?;
    assert_eq!((out.trim(), code), ("pooled", 0));
    eventually(std::time::Duration::from_secs(240), full).await?;

    service.stop().await?;
    *service = crate::support::service::TestService::restart(scope, service).await?;
    let client = service.client(&service.token(&alice, false)?)?;
    let listed = client.list().await?;
    let found = listed
        .iter()
        .find(|s| s.id == created.id)
        .ok_or_else(|| format!("the claimed session is listed after a restart: {listed:?}"))?;
    assert_eq!(found.state, cubbi::api::SessionState::Ready);
    assert!(found.pool);
    let bob = crate::support::service::user(scope, "bob");
    let other = service.client(&service.token(&bob, false)?)?;
    assert!(
        other.get(&created.id).await.is_err(),
        "another user does not see the claimed session"
    );
    eventually(std::time::Duration::from_secs(60), full).await?;
    client.close(&created.id).await?;
    assert!(
        records_of(scope, &created.id).await?.is_empty(),
        "close removes the record"
    );
    Ok(())
}
