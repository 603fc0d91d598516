//! `cubbi remote ...` and `cubbi -r NAME auth` end to end, through the real binary, real files
//! and a real (tiny) HTTP service. No Docker needed.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use libtest_mimic::{Failed, Trial};

use crate::support::cli::Ran;
use crate::support::{Cubbi, TestHome};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        remote_add_list_remove_round_trip_without_sysbox,
        reserved_and_non_http_remotes_are_refused_without_sysbox,
        auth_checks_the_token_with_the_service_without_sysbox,
        auth_refuses_an_unreachable_service_unless_no_verify_without_sysbox,
    ]
}

const GOOD_TOKEN: &str = "cubbi-test-token_7f3a9c";
const WRONG_TOKEN: &str = "cubbi-wrong-token_0000";

/// `cubbi` without a session bus, so these tests keep tokens in files even on a desktop
/// whose keyring would answer (tests/integration/keyring.rs covers the keyring).
fn cubbi(home: &TestHome) -> Cubbi {
    Cubbi::new(home).env("DBUS_SESSION_BUS_ADDRESS", "")
}

fn token_file(home: &TestHome, name: &str) -> PathBuf {
    home.path()
        .join(".config/cubbi/credentials")
        .join(format!("{name}.token"))
}

fn list_json(home: &TestHome) -> Result<Vec<serde_json::Value>, Failed> {
    let ran = cubbi(home)
        .args(["--json", "remote", "list"])
        .run()
        .success();
    Ok(serde_json::from_str(&ran.stdout())?)
}

/// Neither stream of a run may hold a token.
#[track_caller]
fn never_shows_tokens(ran: &Ran) {
    for token in [GOOD_TOKEN, WRONG_TOKEN] {
        assert!(
            !ran.stdout().contains(token) && !ran.stderr().contains(token),
            "a token was printed:\nstdout:\n{}\nstderr:\n{}",
            ran.stdout(),
            ran.stderr()
        );
    }
}

fn remote_add_list_remove_round_trip_without_sysbox() -> Result<(), Failed> {
    let home = TestHome::new();
    cubbi(&home)
        .args(["remote", "list"])
        .run()
        .success()
        .stdout_is("");
    assert_eq!(list_json(&home)?, Vec::<serde_json::Value>::new());
    cubbi(&home)
        .args([
            "remote",
            "add",
            "team",
            "https://cubbi.example/",
            "--default",
        ])
        .run()
        .success()
        .stderr_contains("cubbi -r team auth");
    cubbi(&home)
        .args(["remote", "add", "lab", "http://127.0.0.1:9"])
        .run()
        .success();
    let rows = list_json(&home)?;
    assert_eq!(
        rows,
        vec![
            serde_json::json!({"name": "lab", "url": "http://127.0.0.1:9", "default": false, "token": false}),
            serde_json::json!({"name": "team", "url": "https://cubbi.example", "default": true, "token": false}),
        ]
    );
    let ran = cubbi(&home).args(["remote", "list"]).run().success();
    let lines: Vec<String> = ran.stdout().lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 3, "{}", ran.stdout());
    for column in ["NAME", "URL", "DEFAULT", "TOKEN"] {
        assert!(lines[0].contains(column), "{}", ran.stdout());
    }
    assert!(
        lines[2].contains("team") && lines[2].contains("yes"),
        "{}",
        ran.stdout()
    );

    cubbi(&home)
        .args(["remote", "add", "team", "https://other.example"])
        .run()
        .failure()
        .stderr_contains("--force");
    cubbi(&home)
        .args(["remote", "add", "team", "https://other.example", "--force"])
        .run()
        .success();
    cubbi(&home)
        .args(["config", "get", "remote.endpoints.team.url"])
        .run()
        .success()
        .stdout_is("https://other.example\n");

    cubbi(&home)
        .args(["remote", "remove", "team"])
        .run()
        .success()
        .stderr_contains("remote.default is unset");
    cubbi(&home)
        .args(["config", "get", "remote.default"])
        .run()
        .failure();
    let rows = list_json(&home)?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["name"], "lab");
    cubbi(&home)
        .args(["remote", "remove", "team"])
        .run()
        .failure()
        .stderr_contains("lab");
    Ok(())
}

fn reserved_and_non_http_remotes_are_refused_without_sysbox() -> Result<(), Failed> {
    let home = TestHome::new();
    cubbi(&home)
        .args(["remote", "add", "local", "http://127.0.0.1:9"])
        .run()
        .failure()
        .stderr_contains("reserved");
    cubbi(&home)
        .args(["remote", "add", "files", "ftp://cubbi.example"])
        .run()
        .failure()
        .stderr_contains("http");
    assert_eq!(list_json(&home)?, Vec::<serde_json::Value>::new());
    cubbi(&home)
        .args(["remote", "add", "lan", "http://cubbi.example"])
        .run()
        .success()
        .stderr_contains("clear text");
    let ran = cubbi(&home)
        .args(["remote", "add", "loop", "http://localhost:8080"])
        .run()
        .success();
    assert!(!ran.stderr().contains("clear text"), "{}", ran.stderr());
    cubbi(&home)
        .args(["-r", "lan", "remote", "list"])
        .run()
        .failure()
        .stderr_contains("acts on this machine only");
    cubbi(&home)
        .args(["auth"])
        .stdin(format!("{GOOD_TOKEN}\n"))
        .run()
        .failure()
        .stderr_contains("cubbi -r NAME auth");
    let ran = cubbi(&home)
        .args(["-r", "nowhere", "auth"])
        .stdin(format!("{GOOD_TOKEN}\n"))
        .run()
        .failure()
        .stderr_contains("lan");
    never_shows_tokens(&ran);
    Ok(())
}

fn auth_checks_the_token_with_the_service_without_sysbox() -> Result<(), Failed> {
    let home = TestHome::new();
    // The service's part of `auth`: `GET /v1/sessions` is 200 for the right token, else 401.
    let service = crate::support::stub::StubService::requiring_token(GOOD_TOKEN)?;
    service.on("GET", "/v1/sessions", 200, "[]");
    cubbi(&home)
        .args(["remote", "add", "x", &service.url])
        .run()
        .success();

    let ran = cubbi(&home)
        .args(["-r", "x", "auth"])
        .stdin(format!("{WRONG_TOKEN}\n"))
        .run()
        .failure()
        .stderr_contains("refused this token");
    never_shows_tokens(&ran);
    assert!(
        !token_file(&home, "x").exists(),
        "a refused token was saved"
    );

    let ran = cubbi(&home)
        .args(["-r", "x", "auth"])
        .stdin(format!("{GOOD_TOKEN}\n"))
        .run()
        .success()
        .stderr_contains("token for x saved");
    never_shows_tokens(&ran);
    let path = token_file(&home, "x");
    assert_eq!(std::fs::read_to_string(&path)?.trim_end(), GOOD_TOKEN);
    let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "token file must be 0600, is {mode:o}");
    let dir_mode = std::fs::metadata(path.parent().unwrap())?
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        dir_mode, 0o700,
        "credentials dir must be 0700, is {dir_mode:o}"
    );

    let ran = cubbi(&home).args(["remote", "list"]).run().success();
    never_shows_tokens(&ran);
    let row = ran.stdout().lines().nth(1).unwrap_or_default().to_string();
    assert!(
        row.starts_with('x') && row.trim_end().ends_with("yes"),
        "{row}"
    );
    let rows = list_json(&home)?;
    assert_eq!(rows[0]["token"], true);
    assert_eq!(rows[0]["stored_in"], path.display().to_string(), "{rows:?}");

    // Wider permissions are refused, with the fix, rather than the token used.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    let ran = cubbi(&home)
        .args(["remote", "list"])
        .run()
        .failure()
        .stderr_contains("chmod 600");
    never_shows_tokens(&ran);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;

    let ran = cubbi(&home)
        .args(["remote", "remove", "x"])
        .run()
        .success()
        .stderr_contains("and its token");
    never_shows_tokens(&ran);
    assert!(!path.exists(), "the token outlived its remote");
    Ok(())
}

fn auth_refuses_an_unreachable_service_unless_no_verify_without_sysbox() -> Result<(), Failed> {
    let home = TestHome::new();
    // A port that was just free: nothing listens there any more.
    let url = format!("http://{}", TcpListener::bind("127.0.0.1:0")?.local_addr()?);
    cubbi(&home)
        .args(["remote", "add", "gone", &url])
        .run()
        .success();
    let ran = cubbi(&home)
        .args(["-r", "gone", "auth"])
        .stdin(format!("{GOOD_TOKEN}\n"))
        .run()
        .failure()
        .stderr_contains("cannot reach")
        .stderr_contains(&url);
    never_shows_tokens(&ran);
    assert!(!token_file(&home, "gone").exists());
    let ran = cubbi(&home)
        .args(["-r", "gone", "auth", "--no-verify"])
        .stdin(format!("{GOOD_TOKEN}\n"))
        .run()
        .success();
    never_shows_tokens(&ran);
    assert!(token_file(&home, "gone").exists());
    let ran = cubbi(&home)
        .args(["-r", "gone", "auth", "--no-verify"])
        .stdin("two words\n")
        .run()
        .failure()
        .stderr_contains("whitespace");
    assert!(!ran.stderr().contains("two words"), "{}", ran.stderr());
    Ok(())
}
