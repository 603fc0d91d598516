//! `cubbi config` end to end, through the real binary and real files.

use std::os::unix::fs::PermissionsExt;

use libtest_mimic::{Failed, Trial};

use crate::support::{Cubbi, TestHome};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        set_then_get_round_trips_and_file_is_private,
        secrets_are_masked_in_list_and_get,
        unknown_key_is_refused_and_file_unchanged,
        broken_file_is_reported_and_never_overwritten,
        parse_errors_never_print_a_secret,
        env_references_stay_unresolved_in_the_file,
        network_add_list_remove,
        invalid_network_name_is_refused,
        unset_restores_default,
        reset_needs_confirmation,
        list_json_is_machine_readable,
    ]
}

fn set_then_get_round_trips_and_file_is_private() -> Result<(), Failed> {
    let home = TestHome::new();
    Cubbi::new(&home)
        .args(["config", "set", "defaults.image", "claude-code"])
        .run()
        .success();
    Cubbi::new(&home)
        .args(["config", "get", "defaults.image"])
        .run()
        .success()
        .stdout_is("claude-code\n");
    let mode = std::fs::metadata(home.config_file())?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "config.toml must be 0600, is {mode:o}");
    let dir_mode = std::fs::metadata(home.config_file().parent().unwrap())?
        .permissions()
        .mode();
    assert_eq!(
        dir_mode & 0o077,
        0,
        "config dir must not be group/world accessible"
    );
    Ok(())
}

fn secrets_are_masked_in_list_and_get() -> Result<(), Failed> {
    let home = TestHome::new();
    Cubbi::new(&home)
        .args(["config", "set", "openai.api_key", "sk-secret"])
        .run()
        .success();
    Cubbi::new(&home)
        .args(["config", "list"])
        .run()
        .success()
        .stdout_contains("services.openai.api_key")
        .stdout_lacks("sk-secret");
    Cubbi::new(&home)
        .args(["--json", "config", "list"])
        .run()
        .success()
        .stdout_lacks("sk-secret");
    Cubbi::new(&home)
        .args(["config", "get", "services.openai.api_key"])
        .run()
        .success()
        .stdout_lacks("sk-secret");
    Cubbi::new(&home)
        .args(["-vvv", "config", "get", "openai.api_key"])
        .run()
        .success()
        .stdout_lacks("sk-secret");
    let stored = std::fs::read_to_string(home.config_file())?;
    assert!(
        stored.contains("sk-secret"),
        "the key itself is stored: {stored}"
    );
    Ok(())
}

fn unknown_key_is_refused_and_file_unchanged() -> Result<(), Failed> {
    let home = TestHome::new();
    Cubbi::new(&home)
        .args(["config", "set", "ports.end", "2400"])
        .run()
        .success();
    let before = std::fs::read(home.config_file())?;
    Cubbi::new(&home)
        .args(["config", "set", "no.such.key", "1"])
        .run()
        .failure()
        .stderr_contains("no.such.key");
    Cubbi::new(&home)
        .args(["config", "set", "ports.start", "2600"])
        .run()
        .failure()
        .stderr_contains("ports.start must be between 1 and ports.end");
    Cubbi::new(&home)
        .args(["config", "set", "ports.start", "many"])
        .run()
        .failure()
        .stderr_contains("not a port number");
    assert_eq!(
        std::fs::read(home.config_file())?,
        before,
        "a refused set changed the file"
    );
    Ok(())
}

fn broken_file_is_reported_and_never_overwritten() -> Result<(), Failed> {
    let home = TestHome::new();
    let path = home.config_file();
    std::fs::create_dir_all(path.parent().unwrap())?;
    let broken = "[defaults]\nimage = \"base\"\nconnect = yes please\n";
    std::fs::write(&path, broken)?;
    Cubbi::new(&home)
        .args(["config", "set", "defaults.image", "codex"])
        .run()
        .failure()
        .stderr_contains("line 3, column");
    Cubbi::new(&home)
        .args(["config", "list"])
        .run()
        .failure()
        .stderr_contains("line 3");
    assert_eq!(std::fs::read_to_string(&path)?, broken);
    Ok(())
}

/// An unquoted key is a TOML syntax error; toml's own message quotes the line. cubbi's says
/// where and which key, and nothing of the value, for every command that reads the file.
fn parse_errors_never_print_a_secret() -> Result<(), Failed> {
    let home = TestHome::new();
    let path = home.config_file();
    std::fs::create_dir_all(path.parent().unwrap())?;
    for (text, line) in [
        (
            "[services.openai]\napi_key = sk-SECRET123\n",
            "line 2, column",
        ),
        (
            "[services.openai]\napi_key = \"sk-SECRET123\n",
            "line 2, column",
        ),
        ("[defaults]\nconnect = \"sk-SECRET123\"\n", "line 2, column"),
        (
            "[services.openai]\napi_key = \"sk-SECRET123${OOPS\"\n",
            "services.openai.api_key",
        ),
    ] {
        std::fs::write(&path, text)?;
        let commands: &[&[&str]] = if text.contains("OOPS") {
            // Valid TOML: the reference is expanded (and refused) only when a session uses it.
            &[&["session", "create", "--no-connect"]]
        } else {
            &[
                &["config", "list"],
                &["config", "get", "defaults.image"],
                &["-vvv", "config", "set", "defaults.image", "x"],
                &["session", "create", "--no-connect"],
            ]
        };
        for args in commands {
            let ran = Cubbi::new(&home).args(*args).run().failure();
            let output = format!("{}{}", ran.stdout(), ran.stderr());
            assert!(
                !output.contains("SECRET123"),
                "{args:?} on {text:?}: {output}"
            );
            if args[0] == "config" && !text.contains("OOPS") {
                assert!(output.contains(line), "{args:?} on {text:?}: {output}");
            }
        }
    }
    Ok(())
}

fn env_references_stay_unresolved_in_the_file() -> Result<(), Failed> {
    let home = TestHome::new();
    Cubbi::new(&home)
        .args(["config", "set", "anthropic.api_key", "${MY_ANTHROPIC_KEY}"])
        .env("MY_ANTHROPIC_KEY", "sk-ant-real")
        .run()
        .success();
    let stored = std::fs::read_to_string(home.config_file())?;
    assert!(stored.contains("${MY_ANTHROPIC_KEY}"), "{stored}");
    assert!(!stored.contains("sk-ant-real"), "{stored}");
    Cubbi::new(&home)
        .args(["config", "get", "anthropic.api_key"])
        .run()
        .success()
        .stdout_is("${MY_ANTHROPIC_KEY}\n");
    Ok(())
}

fn network_add_list_remove() -> Result<(), Failed> {
    let home = TestHome::new();
    Cubbi::new(&home)
        .args(["config", "network", "add", "team-net"])
        .run()
        .success();
    Cubbi::new(&home)
        .args(["config", "network", "add", "db.internal"])
        .run()
        .success();
    Cubbi::new(&home)
        .args(["config", "network", "list"])
        .run()
        .success()
        .stdout_is("team-net\ndb.internal\n");
    Cubbi::new(&home)
        .args(["config", "network", "remove", "team-net"])
        .run()
        .success();
    Cubbi::new(&home)
        .args(["--json", "config", "network", "list"])
        .run()
        .success()
        .stdout_contains("\"db.internal\"")
        .stdout_lacks("team-net");
    Cubbi::new(&home)
        .args(["config", "network", "remove", "team-net"])
        .run()
        .failure()
        .stderr_contains("not in defaults.networks");
    Ok(())
}

fn invalid_network_name_is_refused() -> Result<(), Failed> {
    let home = TestHome::new();
    for bad in ["bad name", "-leading", "a/b", ""] {
        Cubbi::new(&home)
            .args(["config", "network", "add", "--", bad])
            .run()
            .failure()
            .stderr_contains("not a valid Docker network name");
    }
    assert!(
        !home.config_file().exists(),
        "a refused add wrote the config"
    );
    Ok(())
}

fn unset_restores_default() -> Result<(), Failed> {
    let home = TestHome::new();
    Cubbi::new(&home)
        .args(["config", "set", "ports.start", "2400"])
        .run()
        .success();
    Cubbi::new(&home)
        .args(["config", "unset", "ports.start"])
        .run()
        .success();
    Cubbi::new(&home)
        .args(["config", "get", "ports.start"])
        .run()
        .success()
        .stdout_is("2300\n");
    // docker.network has no default: each owner's sessions get a network of their own.
    Cubbi::new(&home)
        .args(["config", "set", "docker.network", "other"])
        .run()
        .success();
    Cubbi::new(&home)
        .args(["config", "unset", "docker.network"])
        .run()
        .success();
    Cubbi::new(&home)
        .args(["config", "get", "docker.network"])
        .run()
        .failure()
        .stderr_contains("not set");
    Ok(())
}

fn reset_needs_confirmation() -> Result<(), Failed> {
    let home = TestHome::new();
    Cubbi::new(&home)
        .args(["config", "set", "defaults.image", "codex"])
        .run()
        .success();
    Cubbi::new(&home)
        .args(["config", "reset"])
        .stdin("y\n")
        .run()
        .failure()
        .stderr_contains("--yes");
    Cubbi::new(&home)
        .args(["config", "get", "defaults.image"])
        .run()
        .success()
        .stdout_is("codex\n");
    Cubbi::new(&home)
        .args(["config", "reset", "--yes"])
        .run()
        .success();
    Cubbi::new(&home)
        .args(["config", "get", "defaults.image"])
        .run()
        .success()
        .stdout_is("base\n");
    Ok(())
}

fn list_json_is_machine_readable() -> Result<(), Failed> {
    let home = TestHome::new();
    Cubbi::new(&home)
        .args(["config", "set", "ports.start", "2350"])
        .run()
        .success();
    let ran = Cubbi::new(&home)
        .args(["--json", "config", "list"])
        .run()
        .success();
    let rows: serde_json::Value = serde_json::from_str(&ran.stdout())?;
    let start = rows
        .as_array()
        .and_then(|rows| rows.iter().find(|row| row["key"] == "ports.start"))
        .ok_or("ports.start missing from JSON")?;
    assert_eq!(start["value"], 2350);
    assert_eq!(start["source"], "file");
    Ok(())
}
