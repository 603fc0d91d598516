//! `cubbi data export|import`: the owner's agent data volume through the real binary, the
//! real dockerd and real sessions of a tool image.

use std::os::unix::fs::PermissionsExt;

use libtest_mimic::{Failed, Trial};

use cubbi::api::Backend;

use crate::support::service::{TestService, user};
use crate::support::sysbox::SessionRuntime;
use crate::support::{TestHome, docker_test};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        export_then_import_into_a_new_owner_keeps_files_and_modes,
        service_data_is_the_callers_own,
    ]
}

/// The entries of a tar: path, mode and uid.
fn entries(archive: &[u8]) -> Result<Vec<(String, u32, u64)>, Failed> {
    let mut found = Vec::new();
    for entry in tar::Archive::new(archive).entries()? {
        let entry = entry?;
        found.push((
            entry.path()?.display().to_string(),
            entry.header().mode()?,
            entry.header().uid()?,
        ));
    }
    Ok(found)
}

/// A tar whose one entry is written exactly as given (the tar crate's builder would refuse
/// the hostile ones).
fn raw_tar(path: &str, kind: tar::EntryType, link: &str) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(0);
    header.set_mode(0o644);
    let old = header.as_old_mut();
    old.name[..path.len()].copy_from_slice(path.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, std::io::empty()).expect("a tar");
    builder.into_inner().expect("a tar")
}

fn export_then_import_into_a_new_owner_keeps_files_and_modes() -> Result<(), Failed> {
    docker_test("data-export-import", |scope| async move {
        scope.ensure_image("claude-code").await?;
        let home = TestHome::new();
        let other = format!("{}-b", scope.id);
        let as_owner = |owner: &str| scope.cubbi(&home).env("CUBBI_OWNER", owner);
        let create = |owner: &str, name: &str| {
            let mut args = vec![
                "session",
                "create",
                "--image",
                "claude-code",
                "--no-connect",
                "--no-mount",
                "--name",
                name,
            ];
            args.extend(SessionRuntime::of_this_run().create_flags());
            as_owner(owner).args(args).run().success();
        };
        let exec = |owner: &str, name: &str, script: &str| {
            as_owner(owner)
                .args(["session", "exec", name, "--", "sh", "-c", script])
                .run()
                .success()
                .stdout()
        };

        // Owner A's agent logs in: a credentials file only the agent may read.
        create(&scope.id, "data-a");
        exec(
            &scope.id,
            "data-a",
            "printf token-a > ~/.claude/.credentials.json && chmod 600 ~/.claude/.credentials.json",
        );
        let dir = tempfile::tempdir()?;
        let exported = dir.path().join("a.tar");
        as_owner(&scope.id)
            .args(["data", "export", "--image", "claude-code"])
            .arg(&exported)
            .run()
            .success()
            .stderr_contains("exported to");
        let mode = std::fs::metadata(&exported)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "an export holds credentials");
        let archive = std::fs::read(&exported)?;
        let listed = entries(&archive)?;
        assert!(
            listed.contains(&("claude-code/.claude/.credentials.json".into(), 0o600, 1000)),
            "{listed:?}"
        );

        // Owner B imports it and finds it in a new session, with its mode.
        as_owner(&other)
            .args(["data", "import"])
            .arg(&exported)
            .run()
            .success()
            .stderr_contains("imported from");
        create(&other, "data-b");
        let seen = exec(
            &other,
            "data-b",
            "stat -c '%a %U' ~/.claude/.credentials.json; cat ~/.claude/.credentials.json",
        );
        assert_eq!(seen, "600 agent\ntoken-a");

        // Hostile archives are refused whole, and B's data is as it was.
        for (name, archive, why) in [
            (
                "climb.tar",
                raw_tar("claude-code/../../../etc/x", tar::EntryType::Regular, ""),
                "climbs out",
            ),
            (
                "abs.tar",
                raw_tar("/etc/cron.d/x", tar::EntryType::Regular, ""),
                "absolute",
            ),
            (
                "link.tar",
                raw_tar("claude-code/.claude/out", tar::EntryType::Symlink, "/etc"),
                "outside the archive",
            ),
            (
                "dev.tar",
                raw_tar("claude-code/.claude/dev", tar::EntryType::Char, ""),
                "device file",
            ),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, archive)?;
            as_owner(&other)
                .args(["data", "import"])
                .arg(&path)
                .run()
                .failure()
                .stderr_contains(why)
                .stderr_contains("nothing was written");
        }
        let again = dir.path().join("b.tar");
        let summary = as_owner(&other)
            .args(["--json", "data", "export"])
            .arg(&again)
            .run()
            .success()
            .stdout();
        let summary: serde_json::Value = serde_json::from_str(summary.trim())?;
        assert_eq!(
            summary["tools"],
            serde_json::json!(["claude-code"]),
            "{summary}"
        );
        let listed = entries(&std::fs::read(&again)?)?;
        assert!(
            listed
                .iter()
                .all(|(path, _, _)| !path.ends_with("/out") && !path.ends_with("/dev")),
            "{listed:?}"
        );

        // --from-host: the user's own ~/.codex, with its modes.
        std::fs::create_dir_all(home.path().join(".codex"))?;
        let config = home.path().join(".codex/config.toml");
        std::fs::write(&config, "model = \"fixture\"\n")?;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640))?;
        let ran = as_owner(&other)
            .args(["--json", "data", "import", "--from-host"])
            .run()
            .success()
            .stderr_contains(".codex -> codex/.codex");
        let summary: serde_json::Value = serde_json::from_str(ran.stdout().trim())?;
        assert_eq!(summary["files"], 1, "{summary}");
        let codex = dir.path().join("codex.tar");
        as_owner(&other)
            .args(["data", "export", "--image", "codex"])
            .arg(&codex)
            .run()
            .success();
        let listed = entries(&std::fs::read(&codex)?)?;
        assert!(
            listed.contains(&("codex/.codex/config.toml".into(), 0o640, 1000)),
            "{listed:?}"
        );

        // B's session, network and volume carry B's owner label, which the scope does not
        // clean.
        as_owner(&other)
            .args(["session", "close", "data-b"])
            .run()
            .success();
        scope.remove_owner(&other).await;
        Ok(())
    })
}

/// Over HTTP each caller reaches only their own data volume: what alice imports, bob's export
/// does not hold; a hostile archive is refused by the service too (sent raw, past the client).
fn service_data_is_the_callers_own() -> Result<(), Failed> {
    docker_test("data-service", |scope| async move {
        scope.ensure_base().await?;
        let mut service = TestService::start(&scope, |_| {}).await?;
        let alice = service.client(&service.token(&user(&scope, "alice"), false)?)?;
        let bob_token = service.token(&user(&scope, "bob"), false)?;
        let bob = service.client(&bob_token)?;
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o600);
        builder.append_data(&mut header, "codex/.codex/auth.json", &b"alice"[..])?;
        let archive = builder.into_inner()?;
        let imported = alice.import_data(archive).await?;
        assert_eq!(imported.tools, ["codex"]);
        let (mine, summary) = alice.export_data(None).await?;
        assert_eq!(summary.files, 1);
        assert!(
            entries(&mine)?
                .iter()
                .any(|(path, mode, _)| path == "codex/.codex/auth.json" && *mode == 0o600)
        );
        let (theirs, summary) = bob.export_data(None).await?;
        assert_eq!(summary.files, 0, "{:?}", entries(&theirs)?);
        let missing = bob.export_data(Some("codex")).await.unwrap_err();
        assert!(missing.to_string().contains("no agent data"), "{missing}");

        let hostile = reqwest::Client::new()
            .post(format!("{}/v1/data", service.url))
            .bearer_auth(&bob_token)
            .header("content-type", "application/octet-stream")
            .body(raw_tar("../../x", tar::EntryType::Regular, ""))
            .send()
            .await?;
        assert_eq!(hostile.status(), 400);
        let body: serde_json::Value = hostile.json().await?;
        assert_eq!(body["error"]["code"], "invalid", "{body}");
        let (_, summary) = bob.export_data(None).await?;
        assert_eq!(summary.files, 0);
        service.stop().await?;
        for who in ["alice", "bob"] {
            scope.remove_owner(&user(&scope, who)).await;
        }
        Ok(())
    })
}
