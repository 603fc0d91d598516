//! `cubbi -r NAME` facing a service that lies: a stub on loopback answers session create,
//! show, list and close with hostile JSON, the real binary drives it, and the real OpenSSH
//! client reads whatever cubbi wrote. Nothing may land outside `~/.ssh/cubbi.d`, no directive
//! may reach an OpenSSH file, and no escape sequence may reach the terminal. No Docker needed.

use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::{Failed, Trial};

use crate::support::stub::StubService;
use crate::support::{Cubbi, TestHome};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        hostile_session_answers_are_refused_and_write_nothing_without_sysbox,
        service_text_reaches_the_terminal_without_escapes_without_sysbox,
        remote_runc_needs_the_opt_in_and_warns_without_sysbox,
    ]
}

const TOKEN: &str = "cubbi-stub-token_1";

/// `session create` of `web` on the stub, without connecting.
const CREATE: &[&str] = &[
    "-r",
    "evil",
    "session",
    "create",
    "--image",
    "base",
    "--name",
    "web",
    "--no-connect",
];

/// A home whose remote `evil` is the stub, with a token, and an `~/.ssh/config` that includes
/// cubbi's files as `cubbi` offers it.
fn home_for(stub: &StubService) -> Result<TestHome, Failed> {
    let home = TestHome::new();
    Cubbi::new(&home)
        .args(["remote", "add", "evil", &stub.url])
        .run()
        .success();
    Cubbi::new(&home)
        .args(["-r", "evil", "auth", "--no-verify"])
        .stdin(format!("{TOKEN}\n"))
        .run()
        .success();
    let ssh = home.path().join(".ssh");
    std::fs::create_dir_all(&ssh)?;
    std::fs::write(
        ssh.join("config"),
        format!("Include {}/cubbi.d/*.conf\n", ssh.display()),
    )?;
    Ok(home)
}

fn host_key() -> Result<String, Failed> {
    let key = cubbi::ssh::keys::generate("stub")?;
    Ok(cubbi::ssh::keys::public_openssh(key.public_key())?)
}

fn session(name: &str, host: &str, user: &str, host_key: &str) -> serde_json::Value {
    serde_json::json!({
        "id": "0123456789abcdef", "name": name, "image": "base", "owner": "alice",
        "state": "ready", "created": 0, "workspace": null, "command": [],
        "ssh": {"host": host, "port": 2222, "user": user, "host_key": host_key},
    })
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// What `ssh -G` makes of `cubbi-NAME` through the user's config: OpenSSH evaluates every
/// Host and Match block for it, `Match exec` included.
fn ssh_g(home: &TestHome, name: &str) -> Result<String, Failed> {
    let output = Command::new("ssh")
        .arg("-G")
        .arg("-F")
        .arg(home.path().join(".ssh/config"))
        .arg(format!("cubbi-{name}"))
        .env("HOME", home.path())
        .output()
        .map_err(|err| format!("ssh (openssh-client) must be installed: {err}"))?;
    assert!(
        output.status.success(),
        "ssh -G failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn hostile_session_answers_are_refused_and_write_nothing_without_sysbox() -> Result<(), Failed> {
    let stub = StubService::start()?;
    let home = home_for(&stub)?;
    let key = host_key()?;
    let marker = home.path().join("pwned");
    let ssh_files = home.path().join(".ssh/cubbi.d");

    // Files a traversing name would hit: `~/.ssh/cubbi.d/../../.config/x/cubbi.conf`.
    let victim = home.path().join(".config/x");
    std::fs::create_dir_all(&victim)?;
    for file in ["cubbi.conf", "cubbi.known_hosts"] {
        std::fs::write(victim.join(file), "the user's own file\n")?;
    }
    let before: Vec<PathBuf> = files_under(home.path());

    let hostile = [
        (
            session("../../.config/x/cubbi", "127.0.0.1", "agent", &key),
            "not a session name",
        ),
        (
            session(
                "web",
                &format!("127.0.0.1\nMatch exec \"touch {}\"", marker.display()),
                "agent",
                &key,
            ),
            "SSH host",
        ),
        (
            session(
                "web",
                "127.0.0.1",
                &format!("agent\n    ProxyCommand touch {}", marker.display()),
                &key,
            ),
            "SSH user",
        ),
        (
            session(
                "web",
                "127.0.0.1",
                "agent",
                &format!("{key}\nHost *\n  ProxyCommand touch {}", marker.display()),
            ),
            "host key",
        ),
    ];
    for (answer, says) in &hostile {
        let body = answer.to_string();
        stub.on("POST", "/v1/sessions", 201, body.clone());
        stub.on("GET", "/v1/sessions/web", 200, body.clone());
        stub.on("POST", "/v1/sessions/web/connect", 200, body.clone());
        stub.on("DELETE", "/v1/sessions/web", 200, body.clone());
        stub.on("GET", "/v1/sessions", 200, format!("[{body}]"));
        for args in [
            CREATE,
            &["-r", "evil", "session", "close", "web"],
            &["-r", "evil", "session", "show", "web"],
            &["-r", "evil", "session", "list"],
        ] {
            Cubbi::new(&home)
                .args(args)
                .run()
                .failure()
                .stderr_contains("refuses to use")
                .stderr_contains(says);
        }
        // Nothing written: no OpenSSH file for the session, none outside cubbi.d.
        let now = files_under(home.path());
        let added: Vec<&PathBuf> = now.iter().filter(|path| !before.contains(path)).collect();
        assert!(
            added
                .iter()
                .all(|path| !path.starts_with(&ssh_files) && !path.starts_with(&victim)),
            "cubbi wrote {added:?} for {answer}"
        );
        for file in ["cubbi.conf", "cubbi.known_hosts"] {
            assert_eq!(
                std::fs::read_to_string(victim.join(file))?,
                "the user's own file\n",
                "{file} outside cubbi.d was touched"
            );
        }
        // OpenSSH, reading the user's config with cubbi's Include, runs nothing injected.
        let resolved = ssh_g(&home, "web")?;
        assert!(!marker.exists(), "an injected command ran for {answer}");
        assert!(
            resolved
                .lines()
                .all(|line| !line.starts_with("proxycommand ") || line == "proxycommand none"),
            "{resolved}"
        );
    }

    // Each refusal came from an answer: the client did ask the service.
    let seen = stub.seen();
    for request in [
        "POST /v1/sessions",
        "DELETE /v1/sessions/web",
        "GET /v1/sessions/web",
        "GET /v1/sessions",
    ] {
        assert!(
            seen.iter().any(|s| s == request),
            "{request} never sent: {seen:?}"
        );
    }

    // The same stub, honest: cubbi writes its two files in cubbi.d, and OpenSSH reads exactly
    // the values sent.
    let honest = session("web", "127.0.0.1", "agent", &key).to_string();
    stub.on("POST", "/v1/sessions", 201, honest.clone());
    stub.on("DELETE", "/v1/sessions/web", 200, honest);
    Cubbi::new(&home).args(CREATE).run().success();
    let mut written: Vec<PathBuf> = files_under(&ssh_files);
    written.sort();
    assert_eq!(
        written,
        vec![
            ssh_files.join("web.conf"),
            ssh_files.join("web.known_hosts")
        ]
    );
    let resolved = ssh_g(&home, "web")?;
    for expected in [
        "hostname 127.0.0.1",
        "port 2222",
        "user agent",
        "stricthostkeychecking true",
    ] {
        assert!(
            resolved.lines().any(|line| line == expected),
            "{expected}: {resolved}"
        );
    }
    assert!(!marker.exists());
    Cubbi::new(&home)
        .args(["-r", "evil", "session", "close", "web"])
        .run()
        .success();
    assert!(
        files_under(&ssh_files).is_empty(),
        "close removes both files"
    );
    Ok(())
}

fn service_text_reaches_the_terminal_without_escapes_without_sysbox() -> Result<(), Failed> {
    let stub = StubService::start()?;
    let home = home_for(&stub)?;
    let key = host_key()?;
    let mut answer = session("web", "127.0.0.1", "agent", &key);
    answer["owner"] = "al\u{1b}]0;owned\u{7}ice".into();
    answer["init_status"] = "done\u{1b}[2J\rfake: line".into();
    answer["project_status"] = "\u{9b}31mfailed".into();
    answer["image"] = "base\u{1b}[8m".into();
    stub.on("GET", "/v1/sessions/web", 200, answer.to_string());
    stub.on("GET", "/v1/sessions", 200, format!("[{answer}]"));
    stub.on(
        "DELETE",
        "/v1/sessions/web",
        409,
        r#"{"error":{"code":"conflict","message":"busy\u001b[2J\u001b]0;title\u0007 now"}}"#,
    );
    let no_controls = |text: &str| {
        text.chars()
            .filter(|c| c.is_control() && *c != '\n')
            .collect::<Vec<char>>()
    };
    let shown = Cubbi::new(&home)
        .args(["-r", "evil", "session", "show", "web"])
        .run()
        .success()
        .stdout_contains("al\\u{1b}]0;owned\\u{7}ice")
        .stdout_contains("done\\u{1b}[2J\\u{d}fake: line");
    assert_eq!(
        no_controls(&shown.stdout()),
        Vec::<char>::new(),
        "{}",
        shown.stdout()
    );
    let listed = Cubbi::new(&home)
        .args(["-r", "evil", "session", "list"])
        .run()
        .success();
    assert_eq!(
        no_controls(&listed.stdout()),
        Vec::<char>::new(),
        "{}",
        listed.stdout()
    );
    let refused = Cubbi::new(&home)
        .args(["-r", "evil", "session", "close", "web"])
        .run()
        .failure()
        .stderr_contains("busy\\u{1b}[2J");
    assert_eq!(
        no_controls(&refused.stderr()),
        Vec::<char>::new(),
        "{}",
        refused.stderr()
    );
    Ok(())
}

/// `-r X --runtime runc` is refused before any request unless `--unsafe-runc` is given, as
/// locally, and the unsafe warning is printed when it is.
fn remote_runc_needs_the_opt_in_and_warns_without_sysbox() -> Result<(), Failed> {
    let stub = StubService::start()?;
    let home = home_for(&stub)?;
    let key = host_key()?;
    stub.on(
        "POST",
        "/v1/sessions",
        201,
        session("web", "127.0.0.1", "agent", &key).to_string(),
    );
    let create = [CREATE, &["--runtime", "runc"]].concat();
    Cubbi::new(&home)
        .args(&create)
        .run()
        .failure()
        .stderr_contains("--unsafe-runc");
    Cubbi::new(&home)
        .args(&create)
        .args(["--ssh-bind", "0.0.0.0"])
        .arg("--unsafe-runc")
        .run()
        .failure()
        .stderr_contains("--ssh-bind 0.0.0.0");
    assert!(
        !stub.seen().iter().any(|s| s == "POST /v1/sessions"),
        "a refused create reached the service: {:?}",
        stub.seen()
    );
    Cubbi::new(&home)
        .args(&create)
        .arg("--unsafe-runc")
        .run()
        .success()
        .stderr_contains("NOT isolated from the host");
    assert!(stub.seen().iter().any(|s| s == "POST /v1/sessions"));
    Ok(())
}
