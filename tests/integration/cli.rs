//! The command tree as a user meets it: help, version, completions.

use libtest_mimic::{Failed, Trial};

use crate::support::{Cubbi, TestHome};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        help_lists_commands_and_global_flags,
        every_subcommand_has_help,
        completions_for_bash,
        remote_flag_is_refused_where_it_cannot_apply,
        unknown_command_is_a_usage_error,
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
        &["completions"],
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
