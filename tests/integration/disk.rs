//! The service's disk limit on a real engine whose storage enforces one (the btrfs driver on a
//! loop-mounted btrfs the test makes; this kernel has XFS without quota support, so the
//! overlay2-on-XFS path is covered by unit tests only), and its refusal to start where the
//! engine's storage cannot honour a configured `limits.disk`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cubbi::api::ExecEvent;
use cubbi::api::wire::ExecLine;
use libtest_mimic::{Failed, Trial};
use serde_json::{Value, json};

use crate::support::dockerd::Dockerd;
use crate::support::service::{TestService, user};
use crate::support::sysbox::SessionRuntime;
use crate::support::{DockerScope, docker_test};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        a_session_on_a_btrfs_engine_is_held_to_limits_disk,
        a_disk_limit_the_engine_cannot_honour_stops_the_service,
    ]
}

/// A loop-mounted btrfs, unmounted (and its loop device let go) when dropped.
struct LoopBtrfs {
    point: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopBtrfs {
    fn new(size: &str) -> Result<Self, Failed> {
        let dir = tempfile::Builder::new().prefix("cubbi-btrfs-").tempdir()?;
        let image = dir.path().join("fs.img");
        let point = dir.path().join("mnt");
        std::fs::create_dir(&point)?;
        run(Command::new("truncate").args(["-s", size]).arg(&image))?;
        run(Command::new("mkfs.btrfs").arg("-q").arg(&image)).map_err(|err| {
            format!(
                "{} (install/test.sh installs btrfs-progs, which has mkfs.btrfs)",
                err.message().unwrap_or("mkfs.btrfs failed")
            )
        })?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&point))?;
        Ok(Self { point, _dir: dir })
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        // -d frees the loop device too; -l in case a failed test left something inside.
        let _ = Command::new("umount")
            .args(["-l", "-d"])
            .arg(&self.point)
            .status();
    }
}

fn run(command: &mut Command) -> Result<String, Failed> {
    let output = command.output()?;
    if !output.status.success() {
        return Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Copies `cubbi-base` from the run's engine into `to` (no registry here).
pub(crate) fn copy_base_image(from: &str, to: &str) -> Result<(), Failed> {
    run(Command::new("sh").args([
        "-c",
        r#"docker -H "$1" save cubbi-base | docker -H "$2" load -q"#,
        "copy",
        from,
        to,
    ]))?;
    Ok(())
}

fn a_session_on_a_btrfs_engine_is_held_to_limits_disk() -> Result<(), Failed> {
    docker_test("disk-btrfs", |scope| async move {
        scope.ensure_base().await?;
        let btrfs = LoopBtrfs::new("8G")?;
        let data_root = btrfs.point.join("data");
        let engine = Dockerd::start_private(Some(&data_root), &["--storage-driver=btrfs"])?;
        let outcome = on_the_btrfs_engine(&scope, &engine.endpoint).await;
        if outcome.is_err() {
            eprintln!("the btrfs engine's log:\n{}", engine.log_tail());
        }
        engine.stop();
        drop(btrfs);
        outcome
    })
}

async fn on_the_btrfs_engine(scope: &DockerScope, endpoint: &str) -> Result<(), Failed> {
    copy_base_image(&scope.endpoint, endpoint)?;
    let btrfs_scope = DockerScope {
        docker: cubbi::docker::connect(endpoint).await?,
        endpoint: endpoint.to_string(),
        id: scope.id.clone(),
    };
    let mut service = TestService::start(&btrfs_scope, |config| {
        config.limits.disk = "200m".parse().ok();
    })
    .await?;
    let token = service.token(&user(scope, "alice"), false)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(180))
        .build()?;
    let created = http
        .post(format!("{}/v1/sessions", service.url))
        .bearer_auth(&token)
        .json(&json!({"image": "base", "name": "filler",
            "runtime": SessionRuntime::of_this_run().runtime_name()}))
        .send()
        .await?;
    let status = created.status();
    let created: Value = created.json().await?;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().ok_or("no id")?.to_string();

    // btrfs counts the image in a container's size: the service adds it, so the session
    // may write the 200 MiB it was promised.
    let image_size: u64 = run(Command::new("docker").args([
        "-H",
        endpoint,
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        "cubbi-base",
    ]))?
    .trim()
    .parse()?;
    let inspected: Value = serde_json::from_str(&run(Command::new("docker").args([
        "-H",
        endpoint,
        "inspect",
        "--format",
        "{{json .HostConfig.StorageOpt}}",
        &id,
    ]))?)?;
    assert_eq!(
        inspected,
        json!({"size": ((200u64 << 20) + image_size).to_string()})
    );

    let exec = |command: &str| {
        let http = http.clone();
        let url = format!("{}/v1/sessions/filler/exec", service.url);
        let token = token.clone();
        let command = command.to_string();
        async move {
            let answer = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"command": ["sh", "-c", command]}))
                .send()
                .await?
                .text()
                .await?;
            let mut output = String::new();
            let mut code = None;
            for line in answer.lines().filter(|line| !line.trim().is_empty()) {
                let line: ExecLine = serde_json::from_str(line)?;
                match line.into_event()? {
                    ExecEvent::Stdout(bytes) | ExecEvent::Stderr(bytes) => {
                        output.push_str(&String::from_utf8_lossy(&bytes))
                    }
                    ExecEvent::Exit(exit) => code = Some(exit),
                }
            }
            Ok::<_, Failed>((output, code.ok_or(format!("no exit code in {answer}"))?))
        }
    };
    // Past the limit, the session's own writes fail with the file system's error.
    let (output, code) = exec("dd if=/dev/zero of=/home/agent/fill bs=1M count=400 2>&1").await?;
    assert_ne!(code, 0, "400 MiB fit a 200 MiB limit: {output}");
    assert!(
        output.contains("No space left on device") || output.contains("Disk quota exceeded"),
        "{output}"
    );
    // Below it, and after freeing space, writes work.
    let (output, code) =
        exec("rm -f /home/agent/fill && dd if=/dev/zero of=/home/agent/fill bs=1M count=100 2>&1")
            .await?;
    assert_eq!(code, 0, "{output}");

    let closed = http
        .delete(format!("{}/v1/sessions/filler", service.url))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(closed.status(), 200);
    service.stop().await?;
    Ok(())
}

/// The run's own engine is overlay2 on a file system without project quotas (a test host's
/// data root is in /tmp), so a configured disk limit stops `cubbi serve` at start, saying why.
fn a_disk_limit_the_engine_cannot_honour_stops_the_service() -> Result<(), Failed> {
    docker_test("disk-refused", |scope| async move {
        let data_root: Value = serde_json::from_str(&run(Command::new("docker").args([
            "-H",
            &scope.endpoint,
            "info",
            "--format",
            "{{json .DockerRootDir}}",
        ]))?)?;
        let data_root = data_root.as_str().ok_or("no data root")?;
        let mounts = std::fs::read_to_string("/proc/self/mounts")?;
        let on_quota_xfs = mounts.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3
                && fields[2] == "xfs"
                && fields[3].contains("quota")
                && Path::new(data_root).starts_with(fields[1])
        });
        let driver = run(Command::new("docker").args([
            "-H",
            &scope.endpoint,
            "info",
            "--format",
            "{{.Driver}}",
        ]))?;
        if on_quota_xfs || driver.trim() != "overlay2" {
            return Err(format!(
                "the run's engine ({}) can limit disk; this test needs one that cannot",
                driver.trim()
            )
            .into());
        }
        let refused = TestService::start(&scope, |config| {
            config.limits.disk = "1g".parse().ok();
        })
        .await;
        let Err(refused) = refused else {
            return Err("a service with an impossible limits.disk started".into());
        };
        let message = format!("{refused:?}");
        assert!(
            message.contains("limits.disk is set, but") && message.contains("XFS"),
            "{message}"
        );
        Ok(())
    })
}
