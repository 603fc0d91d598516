//! Human output on a real terminal: every table fits the width it is printed to (columns
//! shrink, long text wraps inside its cell) with no blank line inside; piped, `doctor` leads
//! with what needs action and ends with what to run next.

use std::time::Duration;

use libtest_mimic::{Failed, Trial};

use crate::support::pty::Terminal;
use crate::support::sysbox::SessionRuntime;
use crate::support::{Cubbi, TestHome, docker_test};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        tables_fit_terminals_of_80_and_100_columns,
        doctor_leads_with_what_needs_action,
    ]
}

/// Runs `cubbi` on a terminal `cols` wide and returns the lines it showed.
fn on_terminal(cubbi: Cubbi, cols: u16) -> Result<Vec<String>, String> {
    let mut term = Terminal::spawn(cubbi.into_command(), 40, cols).map_err(|e| e.to_string())?;
    term.wait(Duration::from_secs(180))?;
    // The reader thread may still be draining the last bytes.
    std::thread::sleep(Duration::from_millis(200));
    Ok(term
        .transcript()
        .split('\n')
        .map(|line| line.trim_end_matches('\r').to_string())
        .collect())
}

/// No line wider than `cols`, no blank line before the last one, and `header` shown.
fn assert_fits(what: &str, lines: &[String], cols: u16, header: &str) -> Result<(), Failed> {
    let shown = lines.join("\n");
    if !lines.iter().any(|line| line.contains(header)) {
        return Err(format!("{what} at {cols}: no {header:?} header:\n{shown}").into());
    }
    let last = lines
        .iter()
        .rposition(|line| !line.trim().is_empty())
        .unwrap_or(0);
    for (number, line) in lines.iter().enumerate() {
        let width = line.chars().count();
        if width > usize::from(cols) {
            return Err(format!(
                "{what} at {cols}: line {number} is {width} wide:\n{line}\n---\n{shown}"
            )
            .into());
        }
        if number < last && line.trim().is_empty() {
            return Err(format!("{what} at {cols}: blank line {number}:\n{shown}").into());
        }
    }
    Ok(())
}

fn tables_fit_terminals_of_80_and_100_columns() -> Result<(), Failed> {
    docker_test("tables-fit", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        // A session whose workspace path is long enough to need wrapping.
        let project = home
            .path()
            .join("a-rather-long-folder-name-for-projects/and-another-level-below-it/the-app");
        std::fs::create_dir_all(&project)?;
        scope
            .cubbi(&home)
            .current_dir(&project)
            .args(["--image", "base", "--no-connect"])
            .args(SessionRuntime::of_this_run().create_flags())
            .run()
            .success();
        for cols in [80u16, 100] {
            for (args, header) in [
                (&["doctor"][..], "REMEDY"),
                (&["image", "list"], "DESCRIPTION"),
                (&["session", "list"], "WORKSPACE"),
                (&["config", "list"], "KEY"),
            ] {
                let cubbi = scope.cubbi(&home).env("TERM", "xterm").args(args);
                let lines = tokio::task::spawn_blocking(move || on_terminal(cubbi, cols))
                    .await?
                    .map_err(Failed::from)?;
                assert_fits(&args.join(" "), &lines, cols, header)?;
            }
        }
        // Piped, a table keeps its natural width: the workspace is one unbroken cell.
        scope
            .cubbi(&home)
            .args(["session", "list"])
            .run()
            .success()
            .stdout_contains(&project.canonicalize()?.display().to_string());
        scope
            .cubbi(&home)
            .args(["session", "close", "the-app"])
            .run()
            .success();
        Ok(())
    })
}

fn doctor_leads_with_what_needs_action() -> Result<(), Failed> {
    let home = TestHome::new();
    // An endpoint nobody listens on: the socket checks fail, whatever the host.
    let ran = Cubbi::new(&home)
        .args([
            "--endpoint",
            "unix:///nonexistent/cubbi-test.sock",
            "doctor",
        ])
        .run();
    let stdout = ran.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    let rank = |status: &str| match status {
        "fail" => Some(0),
        "warn" => Some(1),
        "ok" => Some(2),
        _ => None,
    };
    let ranks: Vec<u8> = lines
        .iter()
        .filter_map(|line| line.split_whitespace().next().and_then(rank))
        .collect();
    assert!(ranks.contains(&0), "no check failed:\n{stdout}");
    assert!(
        ranks.windows(2).all(|pair| pair[0] <= pair[1]),
        "not fail, then warn, then ok:\n{stdout}"
    );
    let last = lines.last().copied().unwrap_or_default();
    assert!(last.starts_with("next: "), "no next step last:\n{stdout}");
    assert_eq!(ran.code(), Some(1), "{}", ran.stderr());
    Ok(())
}
