//! Images: `cubbi image` commands, what the base image holds and how it boots, a tool image,
//! and the refusals.

use std::io::Read;
use std::process::Command;

use futures_util::TryStreamExt;
use libtest_mimic::{Failed, Trial};

use crate::support::sysbox::SessionRuntime;
use crate::support::{TestHome, docker_test};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        list_and_inspect_know_every_image,
        base_image_layers_hold_no_host_keys,
        base_boots_systemd_and_sshd_refuses_password_and_root,
        booting_without_cubbi_keys_generates_unique_ones,
        every_tool_image_boots_a_session_with_its_pinned_release,
        unknown_image_lists_the_known_ones,
        bad_metadata_names_file_line_and_field,
        build_failure_shows_the_failing_step,
    ]
}

fn list_and_inspect_know_every_image() -> Result<(), Failed> {
    docker_test("image-list", |scope| async move {
        let home = TestHome::new();
        let listed = scope
            .cubbi(&home)
            .args(["--json", "image", "list"])
            .run()
            .success();
        let rows: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout())?;
        let names: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
        for expected in [
            "base",
            "claude-code",
            "codex",
            "gemini",
            "opencode",
            "aider",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {names:?}"
            );
        }
        assert_eq!(names[0], "base");
        scope
            .cubbi(&home)
            .args(["image", "inspect", "claude-code"])
            .run()
            .success()
            .stdout_contains("ANTHROPIC_API_KEY")
            .stdout_contains("/mnt/agent-data/");
        Ok(())
    })
}

fn base_image_layers_hold_no_host_keys() -> Result<(), Failed> {
    docker_test("image-layers", |scope| async move {
        scope.ensure_base().await?;
        let image: Vec<u8> = scope
            .docker
            .export_image("cubbi-base")
            .map_ok(|chunk| chunk.to_vec())
            .try_concat()
            .await?;
        let mut outer = tar::Archive::new(image.as_slice());
        let mut layers = 0;
        for entry in outer.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.display().to_string();
            if !path.ends_with("layer.tar") {
                continue;
            }
            layers += 1;
            let mut layer = Vec::new();
            entry.read_to_end(&mut layer)?;
            for file in tar::Archive::new(layer.as_slice()).entries()? {
                let file = file?;
                let name = file.path()?.display().to_string();
                assert!(
                    !name.contains("etc/ssh/ssh_host_"),
                    "host key {name} baked into {path}"
                );
            }
        }
        assert!(layers > 1, "no layers found in the saved image");
        Ok(())
    })
}

fn base_boots_systemd_and_sshd_refuses_password_and_root() -> Result<(), Failed> {
    docker_test("image-boot", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        scope
            .cubbi(&home)
            .args(crate::support::create_args("boot", &[]))
            .run()
            .success();
        let pid1 = scope
            .cubbi(&home)
            .args(["session", "exec", "boot", "--", "cat", "/proc/1/comm"])
            .run()
            .success();
        assert_eq!(pid1.stdout().trim(), "systemd");
        let listed = scope
            .cubbi(&home)
            .args(["--json", "session", "list"])
            .run()
            .success();
        let sessions: serde_json::Value = serde_json::from_str(&listed.stdout())?;
        let port = sessions[0]["ssh"]["port"]
            .as_u64()
            .ok_or("no port")?
            .to_string();
        let known_hosts = home.path().join(".ssh/cubbi.d/boot.known_hosts");
        let key = home.path().join(".config/cubbi/id_cubbi");
        let ssh = |user: &str, extra: &[&str]| {
            Command::new("ssh")
                .args([
                    "-p",
                    &port,
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "StrictHostKeyChecking=yes",
                ])
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
                .args(extra)
                .arg(format!("{user}@127.0.0.1"))
                .arg("true")
                .output()
        };
        let agent = ssh("agent", &["-i", &key.display().to_string()])?;
        assert!(
            agent.status.success(),
            "agent with key: {}",
            String::from_utf8_lossy(&agent.stderr)
        );
        let root = ssh("root", &["-i", &key.display().to_string()])?;
        assert!(!root.status.success(), "root must be refused");
        let password = ssh(
            "agent",
            &[
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "PreferredAuthentications=password,keyboard-interactive",
            ],
        )?;
        assert!(!password.status.success(), "password auth must be refused");
        let offered = String::from_utf8_lossy(&password.stderr);
        assert!(
            offered.contains("publickey") && !offered.contains("password,"),
            "{offered}"
        );
        Ok(())
    })
}

fn booting_without_cubbi_keys_generates_unique_ones() -> Result<(), Failed> {
    docker_test("image-hostkeys", |scope| async move {
        use bollard::models::{ContainerCreateBody, HostConfig};
        use bollard::query_parameters::CreateContainerOptionsBuilder;
        scope.ensure_base().await?;
        let mut keys = Vec::new();
        for _ in 0..2 {
            let mut host = HostConfig::default();
            cubbi::local::runtime::apply_unsafe_runc(&mut host);
            let body = ContainerCreateBody {
                image: Some("cubbi-base".into()),
                labels: Some(scope.labels()),
                host_config: Some(host),
                ..Default::default()
            };
            let created = scope
                .docker
                .create_container(Some(CreateContainerOptionsBuilder::new().build()), body)
                .await?;
            scope.docker.start_container(&created.id, None).await?;
            let mut key = String::new();
            for _ in 0..100 {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                let out = Command::new("docker")
                    .args([
                        "-H",
                        &scope.endpoint,
                        "exec",
                        &created.id,
                        "cat",
                        "/etc/ssh/ssh_host_ed25519_key.pub",
                    ])
                    .output()?;
                if out.status.success() {
                    key = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    break;
                }
            }
            assert!(
                key.starts_with("ssh-ed25519 "),
                "no host key generated: {key:?}"
            );
            keys.push(key);
        }
        assert_ne!(keys[0], keys[1], "two boots share a host key");
        Ok(())
    })
}

/// Every tool image builds with the release its metadata pins, boots as a session under the
/// run's session runtime (sysbox-runc where Sysbox is) to `running` with no failed unit, and
/// its tool prints that release as `agent`.
fn every_tool_image_boots_a_session_with_its_pinned_release() -> Result<(), Failed> {
    docker_test("image-tool", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        let listed = scope
            .cubbi(&home)
            .args(["--json", "image", "list"])
            .run()
            .success();
        let rows: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout())?;
        let tools: Vec<(String, String)> = rows
            .iter()
            .filter(|row| row["name"] != "base")
            .map(|row| {
                (
                    row["name"].as_str().unwrap_or_default().to_string(),
                    row["tool_version"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        assert!(tools.len() >= 5, "{tools:?}");
        for (name, version) in &tools {
            assert!(!version.is_empty(), "{name} pins no release");
            scope
                .cubbi(&home)
                .args(["image", "build", name])
                .run()
                .success();
            let session = format!("tool-{name}");
            scope
                .cubbi(&home)
                .args([
                    "session",
                    "create",
                    "--image",
                    name,
                    "--no-connect",
                    "--no-mount",
                    "--name",
                    &session,
                ])
                .args(SessionRuntime::of_this_run().create_flags())
                .run()
                .success();
            let exec = |script: &str| {
                scope
                    .cubbi(&home)
                    .args(["session", "exec", &session, "--", "bash", "-lc", script])
                    .run()
                    .success()
                    .stdout()
            };
            let state = exec(
                "sudo systemctl is-system-running --wait; systemctl --failed --no-legend --plain",
            );
            assert_eq!(state.trim(), "running", "{name}: state and failed units");
            let metadata = crate::support::images::metadata_of(&scope.endpoint, name)?;
            let printed = exec(&shell_words::join(&metadata));
            assert!(
                printed.contains(version.as_str()),
                "{name}: `{}` printed {printed:?}, not the pinned {version}",
                metadata.join(" ")
            );
            scope
                .cubbi(&home)
                .args(["session", "close", &session])
                .run()
                .success();
        }
        Ok(())
    })
}

fn unknown_image_lists_the_known_ones() -> Result<(), Failed> {
    let home = TestHome::new();
    crate::support::Cubbi::new(&home)
        .args([
            "--endpoint",
            "unix:///nonexistent.sock",
            "image",
            "inspect",
            "nope",
        ])
        .run()
        .failure()
        .stderr_contains("unknown image `nope`")
        .stderr_contains("claude-code");
    Ok(())
}

fn bad_metadata_names_file_line_and_field() -> Result<(), Failed> {
    docker_test("image-bad-metadata", |scope| async move {
        let home = TestHome::new();
        let dir = home.path().join("custom");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("Dockerfile"), "FROM debian:bookworm\n")?;
        std::fs::write(
            dir.join("cubbi-image.toml"),
            "name = \"custom\"\ndescription = \"x\"\nversion = \"1\"\ncommand = [\"bash\"]\nversion_command = [\"bash\", \"--version\"]\ncolour = \"blue\"\n",
        )?;
        let dir_arg = dir.display().to_string();
        scope
            .cubbi(&home)
            .args(["image", "build", "--from", &dir_arg])
            .run()
            .failure()
            .stderr_contains("cubbi-image.toml")
            .stderr_contains("line 6")
            .stderr_contains("colour");
        Ok(())
    })
}

fn build_failure_shows_the_failing_step() -> Result<(), Failed> {
    docker_test("image-build-failure", |scope| async move {
        let home = TestHome::new();
        let dir = home.path().join("broken");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("Dockerfile"),
            "FROM debian:bookworm\nRUN echo the-step-said-this && false\n",
        )?;
        std::fs::write(
            dir.join("cubbi-image.toml"),
            "name = \"broken\"\ndescription = \"x\"\nversion = \"1\"\ncommand = [\"bash\"]\nversion_command = [\"bash\", \"--version\"]\n",
        )?;
        let dir_arg = dir.display().to_string();
        let ran = scope
            .cubbi(&home)
            .args([
                "image",
                "build",
                "--from",
                &dir_arg,
                "--base",
                "debian:bookworm",
                "--tag",
                &format!("broken-{}", scope.id),
            ])
            .run()
            .failure()
            .stderr_contains("Step 2/")
            .stderr_contains("the-step-said-this");
        assert!(
            !ran.stderr().contains("stack backtrace"),
            "{}",
            ran.stderr()
        );
        Ok(())
    })
}
