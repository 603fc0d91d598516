//! The command tree as a user meets it: help, version, completions.

use libtest_mimic::{Failed, Trial};

use crate::support::{Cubbi, TestHome};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        help_lists_commands_and_global_flags,
        every_subcommand_has_help,
        completions_for_bash,
        man_page_for_man,
        remote_flag_is_refused_where_it_cannot_apply,
        unknown_command_is_a_usage_error,
        network_docker_endpoints_are_refused,
        env_file_refusals_name_line_and_key_never_the_value,
    ]
}

fn help_lists_commands_and_global_flags() -> Result<(), Failed> {
    let home = TestHome::new();
    let ran = Cubbi::new(&home).args(["--help"]).run().success();
    for needle in [
        "config",
        "completions",
        "--remote",
        "--json",
        "--verbose",
        "--endpoint",
    ] {
        assert!(
            ran.stdout().contains(needle),
            "help lacks {needle}:\n{}",
            ran.stdout()
        );
    }
    Ok(())
}

fn every_subcommand_has_help() -> Result<(), Failed> {
    let home = TestHome::new();
    for path in [
        &["config"][..],
        &["config", "set"],
        &["config", "get"],
        &["config", "list"],
        &["config", "unset"],
        &["config", "reset"],
        &["config", "network"],
        &["config", "network", "add"],
        &["remote"],
        &["remote", "add"],
        &["remote", "list"],
        &["remote", "remove"],
        &["auth"],
        &["completions"],
        &["man"],
    ] {
        let ran = Cubbi::new(&home)
            .args(path)
            .args(["--help"])
            .run()
            .success();
        assert!(
            ran.stdout().starts_with(|c: char| c.is_uppercase()),
            "{path:?}: {}",
            ran.stdout()
        );
        assert!(
            ran.stdout().contains("Usage: cubbi"),
            "{path:?}: {}",
            ran.stdout()
        );
    }
    Ok(())
}

fn completions_for_bash() -> Result<(), Failed> {
    let home = TestHome::new();
    Cubbi::new(&home)
        .args(["completions", "bash"])
        .run()
        .success()
        .stdout_contains("complete -F _cubbi")
        .stdout_contains("config");
    Ok(())
}

fn man_page_for_man() -> Result<(), Failed> {
    let home = TestHome::new();
    Cubbi::new(&home)
        .args(["man"])
        .run()
        .success()
        .stdout_contains(".TH cubbi")
        .stdout_contains("session");
    Ok(())
}

fn remote_flag_is_refused_where_it_cannot_apply() -> Result<(), Failed> {
    let home = TestHome::new();
    Cubbi::new(&home)
        .args(["-r", "team", "config", "list"])
        .run()
        .failure()
        .stderr_contains("acts on this machine only");
    Ok(())
}

fn unknown_command_is_a_usage_error() -> Result<(), Failed> {
    let home = TestHome::new();
    Cubbi::new(&home)
        .args(["frobnicate"])
        .run()
        .failure()
        .stderr_contains("neither a cubbi command nor an existing folder");
    let ran = Cubbi::new(&home)
        .args(["config", "frobnicate"])
        .run()
        .failure();
    assert_eq!(ran.output.status.code(), Some(2));
    Ok(())
}

/// Over TCP the session archive (host key, env file) would cross the network in the clear:
/// refused before anything connects, from the flag, the variable and the config alike.
fn network_docker_endpoints_are_refused() -> Result<(), Failed> {
    let home = TestHome::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let endpoint = format!("tcp://{}", listener.local_addr()?);
    Cubbi::new(&home)
        .args(["--endpoint", &endpoint, "session", "list"])
        .run()
        .failure()
        .stderr_contains("refusing the network Docker endpoint")
        .stderr_contains("unix://");
    Cubbi::new(&home)
        .env(
            "CUBBI_DOCKER_HOST",
            format!("http://{}", listener.local_addr()?),
        )
        .args(["session", "list"])
        .run()
        .failure()
        .stderr_contains("refusing the network Docker endpoint");
    Cubbi::new(&home)
        .args(["config", "set", "docker.endpoint", &endpoint])
        .run()
        .success();
    Cubbi::new(&home)
        .args(["session", "list"])
        .run()
        .failure()
        .stderr_contains("refusing the network Docker endpoint");
    listener.set_nonblocking(true)?;
    assert!(
        listener.accept().is_err(),
        "cubbi connected to a refused endpoint"
    );
    Ok(())
}

fn env_file_refusals_name_line_and_key_never_the_value() -> Result<(), Failed> {
    let home = TestHome::new();
    let file = home.path().join("session.env");
    for (text, needle) in [
        ("A=1\nsk-SECRET123\n", "line 2: expected KEY=VALUE"),
        (
            "A=1\nTOKEN=SECRET123#x\n",
            "line 2: the value of `TOKEN` contains `#`",
        ),
        (
            "TOKEN=\"SECRET123\n",
            "line 1: the value of `TOKEN` starts with a quote",
        ),
    ] {
        std::fs::write(&file, text)?;
        let ran = Cubbi::new(&home)
            .args(["session", "create", "--no-connect", "--env-file"])
            .args([file.to_str().ok_or("path")?])
            .run()
            .failure()
            .stderr_contains(needle);
        assert!(!ran.stderr().contains("SECRET123"), "{}", ran.stderr());
    }
    let ran = Cubbi::new(&home)
        .args([
            "session",
            "create",
            "--no-connect",
            "-e",
            "TOKEN=SECRET123\\",
        ])
        .run()
        .failure()
        .stderr_contains("`TOKEN` ends with");
    assert!(!ran.stderr().contains("SECRET123"), "{}", ran.stderr());
    Ok(())
}
