//! `cubbi serve token ...` end to end: the real binary on a private state folder, no Docker.

use std::os::unix::fs::PermissionsExt;

use libtest_mimic::{Failed, Trial};

use crate::support::{Cubbi, TestHome};

pub fn tests() -> Vec<Trial> {
    // Named *without_sysbox so that it runs outside the Sysbox kit: it needs neither.
    crate::trials![tokens_create_list_revoke_without_sysbox]
}

fn tokens_create_list_revoke_without_sysbox() -> Result<(), Failed> {
    let home = TestHome::new();
    let parent = tempfile::tempdir()?;
    let state_dir = parent.path().join("state");
    let state = state_dir.to_str().ok_or("a UTF-8 temp path")?;

    let created = Cubbi::new(&home)
        .args([
            "serve",
            "token",
            "create",
            "--user",
            "alice",
            "--state-dir",
            state,
        ])
        .run()
        .success()
        .stderr_contains("shown once")
        .stderr_contains("give it to alice");
    let stdout = created.stdout();
    let token = stdout.strip_suffix('\n').ok_or("a line on stdout")?;
    assert!(
        token.starts_with("cubbi_") && !token.contains(char::is_whitespace),
        "stdout must be the token alone: {stdout:?}"
    );
    assert!(
        !created.stderr().contains(token),
        "the token is printed on stdout only"
    );
    let id = token
        .strip_prefix("cubbi_")
        .and_then(|rest| rest.split('_').next())
        .ok_or("a token id")?
        .to_string();
    let mode = std::fs::metadata(state_dir.join("cubbi.db"))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "cubbi.db mode {mode:o}");

    // --state-dir before the subcommand works too (it is global to `serve token`).
    Cubbi::new(&home)
        .args([
            "serve",
            "token",
            "--state-dir",
            state,
            "create",
            "--user",
            "bob",
        ])
        .args(["--admin"])
        .run()
        .success();

    let listed = Cubbi::new(&home)
        .args(["--json", "serve", "token", "list", "--state-dir", state])
        .run()
        .success()
        .stdout_lacks(token);
    let records: serde_json::Value = serde_json::from_str(&listed.stdout())?;
    let records = records.as_array().ok_or("a JSON array")?;
    assert_eq!(records.len(), 2, "{records:?}");
    let alice = &records[0];
    assert_eq!(alice["id"], id.as_str());
    assert_eq!(alice["user"], "alice");
    assert_eq!(alice["admin"], false);
    assert!(alice["revoked"].is_null(), "{alice}");
    assert_eq!(records[1]["user"], "bob");
    assert_eq!(records[1]["admin"], true);

    Cubbi::new(&home)
        .args(["serve", "token", "list", "--state-dir", state])
        .run()
        .success()
        .stdout_contains("ID")
        .stdout_contains("LAST USED")
        .stdout_contains(&id)
        .stdout_contains("alice")
        .stdout_contains("active")
        .stdout_lacks(token);

    Cubbi::new(&home)
        .args(["serve", "token", "revoke", &id, "--state-dir", state])
        .run()
        .success()
        .stdout_is("");
    Cubbi::new(&home)
        .args(["serve", "token", "list", "--state-dir", state])
        .run()
        .success()
        .stdout_contains("revoked");
    let listed = Cubbi::new(&home)
        .args(["--json", "serve", "token", "list", "--state-dir", state])
        .run()
        .success();
    let records: serde_json::Value = serde_json::from_str(&listed.stdout())?;
    assert!(records[0]["revoked"].is_i64(), "{records}");
    assert!(records[1]["revoked"].is_null(), "{records}");

    Cubbi::new(&home)
        .args(["serve", "token", "revoke", &id, "--state-dir", state])
        .run()
        .failure()
        .stderr_contains("no unrevoked token");
    Cubbi::new(&home)
        .args([
            "serve",
            "token",
            "revoke",
            "000000000000",
            "--state-dir",
            state,
        ])
        .run()
        .failure()
        .stderr_contains("no unrevoked token");

    Cubbi::new(&home)
        .args([
            "serve",
            "token",
            "create",
            "--user",
            "Eve Admin",
            "--state-dir",
            state,
        ])
        .run()
        .failure()
        .stdout_is("")
        .stderr_contains("not allowed");
    let listed = Cubbi::new(&home)
        .args(["--json", "serve", "token", "list", "--state-dir", state])
        .run()
        .success();
    let records: serde_json::Value = serde_json::from_str(&listed.stdout())?;
    assert_eq!(records.as_array().map(Vec::len), Some(2), "{records}");

    // Admin is the user's: another token for bob without a flag keeps bob an admin, and
    // only `--no-admin` demotes him (every token of his).
    let create_for_bob = |flags: &[&str]| {
        Cubbi::new(&home)
            .args(["serve", "token", "create", "--user", "bob"])
            .args(["--state-dir", state])
            .args(flags)
            .run()
    };
    let admin_of_bob = || -> Result<Vec<bool>, Failed> {
        let listed = Cubbi::new(&home)
            .args(["--json", "serve", "token", "list", "--state-dir", state])
            .run()
            .success();
        let records: serde_json::Value = serde_json::from_str(&listed.stdout())?;
        Ok(records
            .as_array()
            .ok_or("a JSON array")?
            .iter()
            .filter(|record| record["user"] == "bob")
            .map(|record| record["admin"] == true)
            .collect())
    };
    create_for_bob(&[])
        .success()
        .stderr_contains("for bob (admin)");
    assert_eq!(admin_of_bob()?, vec![true, true]);
    create_for_bob(&["--no-admin"])
        .success()
        .stderr_lacks("(admin)");
    assert_eq!(admin_of_bob()?, vec![false, false, false]);
    create_for_bob(&["--admin", "--no-admin"])
        .failure()
        .stderr_contains("cannot be used with");
    assert_eq!(admin_of_bob()?.len(), 3, "a refused create issues nothing");

    Cubbi::new(&home)
        .args([
            "-r",
            "somewhere",
            "serve",
            "token",
            "list",
            "--state-dir",
            state,
        ])
        .run()
        .failure()
        .stderr_contains("drop `-r somewhere`");
    Ok(())
}
