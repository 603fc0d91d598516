//! Tokens in the system keyring: a real Secret Service (Debian's gnome-keyring) in a private
//! D-Bus session that each test starts under a throwaway HOME, and the real `cubbi` binary.
//! No Docker needed. Without gnome-keyring these tests fail (never skip); under `CI=true`
//! the message says so.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};

use crate::support::cli::Ran;
use crate::support::{Cubbi, TestHome};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        api_token_lives_in_the_keyring_without_sysbox,
        login_lives_in_the_keyring_and_is_refreshed_there_without_sysbox,
        no_session_bus_keeps_the_token_in_a_file_without_sysbox,
        a_locked_keyring_falls_back_to_the_file_without_a_prompt_without_sysbox,
        a_hung_session_bus_falls_back_to_the_file_in_time_without_sysbox,
    ]
}

const TOKEN: &str = "cubbi-keyring-token_5e1d0a";

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true")
}

fn needs(reason: String) -> Failed {
    if ci() {
        format!("CI=true and no Secret Service could be started: {reason}").into()
    } else {
        format!("this test needs gnome-keyring and dbus-daemon (install/test.sh): {reason}").into()
    }
}

/// A private session bus with gnome-keyring's Secret Service on it, its login keyring
/// unlocked with a throwaway password. Both daemons are stopped on drop.
struct SecretService {
    dir: tempfile::TempDir,
    address: String,
    bus: Child,
    keyring: Option<Child>,
}

impl SecretService {
    fn start() -> Result<Self, Failed> {
        let dir = tempfile::tempdir()?;
        for sub in ["home", "run"] {
            std::fs::create_dir(dir.path().join(sub))?;
            std::fs::set_permissions(dir.path().join(sub), std::fs::Permissions::from_mode(0o700))?;
        }
        let socket = dir.path().join("run/bus");
        let mut bus = private_env(Command::new("dbus-daemon"), dir.path())
            .args(["--session", "--nofork", "--print-address=1"])
            .arg(format!("--address=unix:path={}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| needs(format!("cannot run dbus-daemon: {err}")))?;
        let mut line = String::new();
        if let Some(stdout) = bus.stdout.take() {
            BufReader::new(stdout).read_line(&mut line)?;
        }
        let address = line.trim().to_string();
        if address.is_empty() {
            let _ = bus.kill();
            let _ = bus.wait();
            return Err(needs("dbus-daemon printed no address".into()));
        }
        let mut service = Self {
            dir,
            address,
            bus,
            keyring: None,
        };
        let mut keyring = private_env(Command::new("gnome-keyring-daemon"), service.dir.path())
            .env("DBUS_SESSION_BUS_ADDRESS", &service.address)
            .args([
                "--foreground",
                "--unlock",
                "--components=secrets",
                "--replace",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| needs(format!("cannot run gnome-keyring-daemon: {err}")))?;
        // The login keyring's password, then end of input.
        if let Some(mut stdin) = keyring.stdin.take() {
            stdin.write_all(b"throwaway-password")?;
        }
        service.keyring = Some(keyring);
        service.wait_for_service()?;
        Ok(service)
    }

    /// Waits until `org.freedesktop.secrets` has an owner on the bus.
    fn wait_for_service(&mut self) -> Result<(), Failed> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let output = Command::new("dbus-send")
                .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
                .args([
                    "--session",
                    "--print-reply",
                    "--dest=org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus.NameHasOwner",
                    "string:org.freedesktop.secrets",
                ])
                .output()
                .map_err(|err| needs(format!("cannot run dbus-send: {err}")))?;
            if String::from_utf8_lossy(&output.stdout).contains("boolean true") {
                return Ok(());
            }
            if let Some(keyring) = self.keyring.as_mut()
                && let Some(status) = keyring.try_wait()?
            {
                return Err(needs(format!("gnome-keyring-daemon exited ({status})")));
            }
            if Instant::now() > deadline {
                return Err(needs(
                    "gnome-keyring-daemon did not take org.freedesktop.secrets in 15 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `cubbi` with this session bus.
    fn cubbi(&self, home: &TestHome) -> Cubbi {
        Cubbi::new(home)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .env("CUBBI_NO_KEYRING", "")
    }

    /// Stores `secret` for remote `name`'s `kind` with `secret-tool store`, as another
    /// program would.
    fn store(&self, name: &str, kind: &str, secret: &str) -> Result<(), Failed> {
        let mut child = private_env(Command::new("secret-tool"), self.dir.path())
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .args([
                "store",
                "--label=cubbi test",
                "application",
                "cubbi",
                "remote",
                name,
                "kind",
                kind,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|err| needs(format!("cannot run secret-tool: {err}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(secret.as_bytes())?;
        }
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("secret-tool store failed: {status}").into());
        }
        Ok(())
    }

    /// What `secret-tool lookup` finds for remote `name`'s `kind`, asked of the service
    /// directly (not through cubbi); empty when nothing.
    fn lookup(&self, name: &str, kind: &str) -> Result<String, Failed> {
        let output = private_env(Command::new("secret-tool"), self.dir.path())
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .args([
                "lookup",
                "application",
                "cubbi",
                "remote",
                name,
                "kind",
                kind,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|err| needs(format!("cannot run secret-tool: {err}")))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Drop for SecretService {
    fn drop(&mut self) {
        if let Some(mut keyring) = self.keyring.take() {
            let _ = keyring.kill();
            let _ = keyring.wait();
        }
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

/// A command with HOME and the XDG folders in `dir`, so no daemon touches the real ones.
fn private_env(mut command: Command, dir: &Path) -> Command {
    let home = dir.join("home");
    command
        .env("HOME", &home)
        .env("XDG_RUNTIME_DIR", dir.join("run"))
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("XDG_CACHE_HOME", home.join(".cache"));
    command
}

fn token_file(home: &TestHome, name: &str) -> PathBuf {
    home.path()
        .join(".config/cubbi/credentials")
        .join(format!("{name}.token"))
}

fn list_json(cubbi: Cubbi) -> Result<Vec<serde_json::Value>, Failed> {
    let ran = cubbi.args(["--json", "remote", "list"]).run().success();
    never_shows_token(&ran);
    Ok(serde_json::from_str(&ran.stdout())?)
}

#[track_caller]
fn never_shows_token(ran: &Ran) {
    assert!(
        !ran.stdout().contains(TOKEN) && !ran.stderr().contains(TOKEN),
        "the token was printed:\nstdout:\n{}\nstderr:\n{}",
        ran.stdout(),
        ran.stderr()
    );
}

fn api_token_lives_in_the_keyring_without_sysbox() -> Result<(), Failed> {
    let keyring = SecretService::start()?;
    let home = TestHome::new();
    let service = crate::support::stub::StubService::requiring_token(TOKEN)?;
    service.on("GET", "/v1/sessions", 200, "[]");
    keyring
        .cubbi(&home)
        .args(["remote", "add", "x", &service.url])
        .run()
        .success();

    // A token stored in a file before (no keyring then) moves to the keyring on the next save.
    Cubbi::new(&home)
        .env("CUBBI_NO_KEYRING", "1")
        .args(["-r", "x", "auth"])
        .stdin(format!("{TOKEN}\n"))
        .run()
        .success();
    let path = token_file(&home, "x");
    assert!(path.exists(), "CUBBI_NO_KEYRING=1 must store the file");
    let rows = list_json(Cubbi::new(&home).env("CUBBI_NO_KEYRING", "1"))?;
    assert_eq!(rows[0]["stored_in"], path.display().to_string(), "{rows:?}");
    assert_eq!(keyring.lookup("x", "token")?, "");

    let ran = keyring
        .cubbi(&home)
        .args(["-r", "x", "auth"])
        .stdin(format!("{TOKEN}\n"))
        .run()
        .success()
        .stderr_contains("system keyring")
        .stderr_lacks("warning");
    never_shows_token(&ran);
    assert_eq!(keyring.lookup("x", "token")?, TOKEN);
    assert!(
        !path.exists(),
        "the token file outlived the move to the keyring"
    );

    let rows = list_json(keyring.cubbi(&home))?;
    assert_eq!(rows[0]["stored_in"], "keyring", "{rows:?}");
    assert_eq!(rows[0]["kind"], "api-token", "{rows:?}");
    assert_eq!(rows[0]["token"], true, "{rows:?}");
    let ran = keyring
        .cubbi(&home)
        .args(["remote", "list"])
        .run()
        .success();
    never_shows_token(&ran);
    let row = ran.stdout().lines().nth(1).unwrap_or_default().to_string();
    assert!(row.contains("keyring") && row.starts_with('x'), "{row}");
    // The keyring is the only copy: without it, no token is found.
    let rows = list_json(Cubbi::new(&home).env("DBUS_SESSION_BUS_ADDRESS", ""))?;
    assert_eq!(rows[0]["token"], false, "{rows:?}");

    // A later command authenticates with the token from the keyring (the stub answers 401
    // to anything else).
    let ran = keyring
        .cubbi(&home)
        .args(["-r", "x", "--json", "session", "list"])
        .run()
        .success();
    never_shows_token(&ran);
    assert!(
        service
            .seen()
            .iter()
            .any(|line| line.contains("/v1/sessions")),
        "{:?}",
        service.seen()
    );

    keyring
        .cubbi(&home)
        .args(["-r", "x", "auth", "--logout"])
        .run()
        .success()
        .stderr_contains("forgot the API token");
    assert_eq!(keyring.lookup("x", "token")?, "");
    assert_eq!(list_json(keyring.cubbi(&home))?[0]["token"], false);

    keyring
        .cubbi(&home)
        .args(["-r", "x", "auth"])
        .stdin(format!("{TOKEN}\n"))
        .run()
        .success();
    assert_eq!(keyring.lookup("x", "token")?, TOKEN);
    keyring
        .cubbi(&home)
        .args(["remote", "remove", "x"])
        .run()
        .success()
        .stderr_contains("and its token");
    assert_eq!(keyring.lookup("x", "token")?, "");
    assert!(!path.exists());
    Ok(())
}

fn no_session_bus_keeps_the_token_in_a_file_without_sysbox() -> Result<(), Failed> {
    let home = TestHome::new();
    let service = crate::support::stub::StubService::requiring_token(TOKEN)?;
    service.on("GET", "/v1/sessions", 200, "[]");
    let cubbi = || Cubbi::new(&home).env("DBUS_SESSION_BUS_ADDRESS", "");
    cubbi()
        .args(["remote", "add", "x", &service.url])
        .run()
        .success();
    let ran = cubbi()
        .args(["-r", "x", "auth"])
        .stdin(format!("{TOKEN}\n"))
        .run()
        .success()
        .stderr_lacks("warning");
    never_shows_token(&ran);
    let path = token_file(&home, "x");
    assert_eq!(std::fs::read_to_string(&path)?.trim_end(), TOKEN);
    assert_eq!(
        std::fs::metadata(&path)?.permissions().mode() & 0o777,
        0o600
    );
    let rows = list_json(cubbi())?;
    assert_eq!(rows[0]["stored_in"], path.display().to_string(), "{rows:?}");
    cubbi().args(["-r", "x", "session", "list"]).run().success();
    cubbi()
        .args(["-r", "x", "auth", "--logout"])
        .run()
        .success();
    assert!(!path.exists());
    Ok(())
}

/// A session bus that accepts connections and never answers: every command still finishes
/// in a few seconds, says once that it fell back, and stores the token in the file.
fn a_hung_session_bus_falls_back_to_the_file_in_time_without_sysbox() -> Result<(), Failed> {
    let home = TestHome::new();
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("bus");
    // Connections wait in the backlog, never accepted: the D-Bus handshake never ends.
    let _listener = std::os::unix::net::UnixListener::bind(&socket)?;
    let address = format!("unix:path={}", socket.display());
    let cubbi = || {
        Cubbi::new(&home)
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .env("CUBBI_NO_KEYRING", "")
    };
    Cubbi::new(&home)
        .env("CUBBI_NO_KEYRING", "1")
        .args(["remote", "add", "x", "http://127.0.0.1:9"])
        .run()
        .success();
    let started = Instant::now();
    let ran = cubbi()
        .args(["-r", "x", "auth", "--no-verify"])
        .stdin(format!("{TOKEN}\n"))
        .run()
        .success();
    let took = started.elapsed();
    never_shows_token(&ran);
    assert!(took < Duration::from_secs(10), "auth took {took:?}");
    assert_eq!(
        ran.stderr()
            .matches("cannot use the system keyring")
            .count(),
        1,
        "{}",
        ran.stderr()
    );
    let path = token_file(&home, "x");
    assert_eq!(std::fs::read_to_string(&path)?.trim_end(), TOKEN);
    let started = Instant::now();
    let rows = list_json(cubbi())?;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(rows[0]["stored_in"], path.display().to_string(), "{rows:?}");
    Ok(())
}

/// A login (access and refresh tokens, as JSON) in the keyring: listed as `login` in
/// `keyring`, refreshed when its access token has expired with the new tokens written back to
/// the keyring (no file appears), and forgotten there by `auth --logout`.
fn login_lives_in_the_keyring_and_is_refreshed_there_without_sysbox() -> Result<(), Failed> {
    const OLD_ACCESS: &str = "cubbi-old-access_91c2";
    const OLD_REFRESH: &str = "cubbi-old-refresh_4b7e";
    const NEW_ACCESS: &str = "cubbi-new-access_0d3f";
    const NEW_REFRESH: &str = "cubbi-new-refresh_66a1";
    let keyring = SecretService::start()?;
    let home = TestHome::new();
    let service = crate::support::stub::StubService::start()?;
    service.on("GET", "/v1/sessions", 200, "[]");
    service.on(
        "POST",
        "/auth/refresh",
        200,
        serde_json::json!({
            "access_token": NEW_ACCESS,
            "refresh_token": NEW_REFRESH,
            "token_type": "Bearer",
            "expires_in": 900,
            "refresh_expires_in": 86400,
            "user": "alice",
            "admin": false,
        })
        .to_string(),
    );
    service.on("POST", "/auth/logout", 200, "{}");
    keyring
        .cubbi(&home)
        .args(["remote", "add", "team", &service.url])
        .run()
        .success();
    // Expired access, live refresh token.
    let login = serde_json::json!({
        "user": "alice",
        "access_token": OLD_ACCESS,
        "access_expires": 0,
        "refresh_token": OLD_REFRESH,
        "refresh_expires": 4_000_000_000_i64,
    });
    keyring.store("team", "login", &login.to_string())?;

    let rows = list_json(keyring.cubbi(&home))?;
    assert_eq!(rows[0]["kind"], "login", "{rows:?}");
    assert_eq!(rows[0]["stored_in"], "keyring", "{rows:?}");

    let ran = keyring
        .cubbi(&home)
        .args(["-r", "team", "session", "list"])
        .run()
        .success();
    for token in [OLD_ACCESS, OLD_REFRESH, NEW_ACCESS, NEW_REFRESH] {
        assert!(
            !ran.stdout().contains(token) && !ran.stderr().contains(token),
            "{}",
            ran.stderr()
        );
    }
    let stored: serde_json::Value = serde_json::from_str(&keyring.lookup("team", "login")?)?;
    assert_eq!(
        stored["access_token"], NEW_ACCESS,
        "the refresh was not kept"
    );
    assert_eq!(stored["refresh_token"], NEW_REFRESH);
    let credentials = home.path().join(".config/cubbi/credentials");
    assert!(
        !credentials.join("team.login.json").exists(),
        "a login file appeared beside the keyring"
    );
    assert!(
        service
            .seen()
            .iter()
            .any(|line| line.contains("/auth/refresh")),
        "{:?}",
        service.seen()
    );

    keyring
        .cubbi(&home)
        .args(["-r", "team", "auth", "--logout"])
        .run()
        .success()
        .stderr_contains("logged out of team");
    assert_eq!(keyring.lookup("team", "login")?, "");
    assert_eq!(list_json(keyring.cubbi(&home))?[0]["token"], false);
    Ok(())
}

/// A keyring locked again (it could only be unlocked at a prompt, which cubbi never shows):
/// the token goes to the file, with one warning that says why, and `remote list` says so.
fn a_locked_keyring_falls_back_to_the_file_without_a_prompt_without_sysbox() -> Result<(), Failed> {
    let keyring = SecretService::start()?;
    let output = Command::new("dbus-send")
        .env("DBUS_SESSION_BUS_ADDRESS", &keyring.address)
        .args([
            "--session",
            "--print-reply",
            "--dest=org.freedesktop.secrets",
            "/org/freedesktop/secrets",
            "org.freedesktop.Secret.Service.Lock",
            "array:objpath:/org/freedesktop/secrets/collection/login",
        ])
        .output()?;
    assert!(
        output.status.success(),
        "locking the login keyring: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let home = TestHome::new();
    keyring
        .cubbi(&home)
        .args(["remote", "add", "x", "http://127.0.0.1:9"])
        .run()
        .success();
    let started = Instant::now();
    let ran = keyring
        .cubbi(&home)
        .args(["-r", "x", "auth", "--no-verify"])
        .stdin(format!("{TOKEN}\n"))
        .run()
        .success();
    assert!(started.elapsed() < Duration::from_secs(10));
    never_shows_token(&ran);
    assert_eq!(
        ran.stderr()
            .matches("cannot use the system keyring")
            .count(),
        1,
        "{}",
        ran.stderr()
    );
    assert!(ran.stderr().contains("locked"), "{}", ran.stderr());
    let path = token_file(&home, "x");
    assert_eq!(std::fs::read_to_string(&path)?.trim_end(), TOKEN);
    let rows = list_json(keyring.cubbi(&home))?;
    assert_eq!(rows[0]["stored_in"], path.display().to_string(), "{rows:?}");
    Ok(())
}
