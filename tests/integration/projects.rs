//! `cubbi project ...` end to end through the real binary and real files: secrets never shown
//! or stored in clear, tokens on stdin, concurrent adds, wrong keys and altered files, host
//! keys given or scanned from a real sshd. No Docker needed.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};

use crate::support::cli::Ran;
use crate::support::{Cubbi, TestHome};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        project_ssh_key_is_never_shown_or_stored_in_clear_without_sysbox,
        project_token_from_stdin_is_never_shown_without_sysbox,
        project_token_argument_warns_without_sysbox,
        project_update_and_remove_without_sysbox,
        project_concurrent_adds_all_land_without_sysbox,
        project_wrong_key_is_a_clear_error_without_sysbox,
        project_tampered_file_is_a_clear_error_without_sysbox,
        project_host_key_for_a_custom_host_without_sysbox,
        project_unknown_host_without_terminal_is_refused_without_sysbox,
        project_hostile_urls_are_refused_without_sysbox,
        project_host_key_is_scanned_from_a_real_sshd_without_sysbox,
        project_scanned_key_is_confirmed_on_a_terminal_without_sysbox,
        project_token_typed_on_a_terminal_is_hidden_without_sysbox,
    ]
}

const TOKEN: &str = "glpat-S3cretT0ken_value.42";
const GITHUB_ED25519: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

fn projects_dir(home: &TestHome) -> PathBuf {
    home.path().join(".local/share/cubbi/projects")
}

/// The store's project files.
fn project_files(home: &TestHome) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(projects_dir(home)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

/// A fresh unencrypted ed25519 key written 0600 to `dir/name`: its PEM and its path.
fn write_key(dir: &Path, name: &str) -> Result<(String, PathBuf), Failed> {
    use std::os::unix::fs::PermissionsExt;
    let key = cubbi::ssh::keys::generate("deploy")?;
    let pem = cubbi::ssh::keys::private_openssh(&key)?;
    let path = dir.join(name);
    std::fs::write(&path, &pem)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok((pem, path))
}

/// The lines of a PEM body, long enough that finding one anywhere means the key leaked.
fn secret_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|line| !line.starts_with("-----") && line.len() >= 20)
        .map(str::to_string)
        .collect()
}

/// No stream of `ran` and no file under `root` (except `allowed`) holds any of `secrets`.
#[track_caller]
fn never_contains(ran: &[&Ran], root: &Path, allowed: &[&Path], secrets: &[String]) {
    for ran in ran {
        for secret in secrets {
            assert!(
                !ran.stdout().contains(secret.as_str()) && !ran.stderr().contains(secret.as_str()),
                "a secret was printed:\nstdout:\n{}\nstderr:\n{}",
                ran.stdout(),
                ran.stderr()
            );
        }
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if allowed.contains(&path.as_path()) {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            for secret in secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "{} holds a secret in clear",
                    path.display()
                );
            }
        }
    }
}

fn json(ran: &Ran) -> Result<serde_json::Value, Failed> {
    Ok(serde_json::from_str(&ran.stdout())?)
}

fn project_ssh_key_is_never_shown_or_stored_in_clear_without_sysbox() -> Result<(), Failed> {
    let home = TestHome::new();
    let keys = tempfile::tempdir()?;
    let (pem, key_path) = write_key(keys.path(), "deploy")?;
    let add = Cubbi::new(&home)
        .args(["project", "add", "git@github.com:Org/Repo.git", "--ssh-key"])
        .arg(&key_path)
        .args(["--branch", "main"])
        .run()
        .success()
        .stderr_contains("added project repo (github.com/Org/Repo)");
    let list = Cubbi::new(&home).args(["project", "list"]).run().success();
    let list_json = Cubbi::new(&home)
        .args(["--json", "project", "list"])
        .run()
        .success();
    let show = Cubbi::new(&home)
        .args(["project", "show", "https://github.com/Org/Repo"])
        .run()
        .success()
        .stdout_contains("url:         git@github.com:Org/Repo.git")
        .stdout_contains("public key:  ssh-ed25519 ")
        .stdout_contains("github.com ssh-ed25519 SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU (shipped with cubbi)");
    let show_json = Cubbi::new(&home)
        .args(["--json", "project", "show", "repo"])
        .run()
        .success();
    let shown = json(&show_json)?;
    let expected = russh::keys::PrivateKey::from_openssh(&pem)?
        .public_key()
        .fingerprint(russh::keys::ssh_key::HashAlg::Sha256)
        .to_string();
    assert_eq!(shown["credential"]["kind"], "ssh_key");
    assert_eq!(shown["credential"]["fingerprint"], expected.as_str());
    assert_eq!(shown["branch"], "main");
    assert_eq!(shown["id"], "github.com/Org/Repo");
    assert_eq!(
        json(&list_json)?[0]["credential"]["fingerprint"],
        expected.as_str()
    );
    assert!(list.stdout().contains(&expected), "{}", list.stdout());
    never_contains(
        &[&add, &list, &list_json, &show, &show_json],
        home.path(),
        &[],
        &secret_lines(&pem),
    );
    let files = project_files(&home);
    assert_eq!(files.len(), 1, "{files:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&files[0])?.permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(projects_dir(&home))?.permissions().mode() & 0o777,
        0o700
    );
    let key_file = home.path().join(".config/cubbi/project.key");
    assert_eq!(
        std::fs::metadata(&key_file)?.permissions().mode() & 0o777,
        0o600
    );

    // An encrypted key is refused with a clear word.
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "a passphrase", "-f"])
        .arg(keys.path().join("locked"))
        .stdout(Stdio::null())
        .status();
    if status.is_ok_and(|status| status.success()) {
        Cubbi::new(&home)
            .args(["project", "add", "github.com/org/locked", "--ssh-key"])
            .arg(keys.path().join("locked"))
            .run()
            .failure()
            .stderr_contains("unencrypted deploy key");
    } else if ci() {
        return Err(
            "CI=true and ssh-keygen is missing (install/test.sh installs openssh-client)".into(),
        );
    }
    Ok(())
}

fn project_token_from_stdin_is_never_shown_without_sysbox() -> Result<(), Failed> {
    let home = TestHome::new();
    let add = Cubbi::new(&home)
        .args([
            "project",
            "add",
            "https://gitlab.com/group/sub/tok.git",
            "--token-stdin",
            "--token-user",
            "oauth2",
        ])
        .stdin(format!("{TOKEN}\n"))
        .run()
        .success();
    assert!(!add.stderr().contains("warning"), "{}", add.stderr());
    let show = Cubbi::new(&home)
        .args(["project", "show", "tok"])
        .run()
        .success()
        .stdout_contains("token:       set")
        .stdout_contains("url:         https://gitlab.com/group/sub/tok.git");
    let show_json = Cubbi::new(&home)
        .args(["--json", "project", "show", "gitlab.com/group/sub/tok"])
        .run()
        .success();
    let shown = json(&show_json)?;
    assert_eq!(
        shown["credential"],
        serde_json::json!({"kind": "token", "username": "oauth2", "token": "set"})
    );
    assert_eq!(shown["host_keys"], serde_json::json!([]));
    let list = Cubbi::new(&home)
        .args(["--json", "project", "list"])
        .run()
        .success();
    never_contains(
        &[&add, &show, &show_json, &list],
        home.path(),
        &[],
        &[TOKEN.into()],
    );
    // An empty stdin is no token.
    Cubbi::new(&home)
        .args([
            "project",
            "add",
            "https://gitlab.com/group/other",
            "--token-stdin",
        ])
        .stdin("")
        .run()
        .failure()
        .stderr_contains("invalid token: it is empty");
    Ok(())
}

fn project_token_argument_warns_without_sysbox() -> Result<(), Failed> {
    let home = TestHome::new();
    let add = Cubbi::new(&home)
        .args([
            "project",
            "add",
            "github.com/org/argtoken",
            "--token",
            TOKEN,
        ])
        .run()
        .success()
        .stderr_contains("shell history")
        .stderr_contains("--token-stdin");
    never_contains(&[&add], home.path(), &[], &[TOKEN.into()]);
    Ok(())
}

fn project_update_and_remove_without_sysbox() -> Result<(), Failed> {
    let home = TestHome::new();
    let keys = tempfile::tempdir()?;
    let (pem, key_path) = write_key(keys.path(), "deploy")?;
    Cubbi::new(&home)
        .args(["project", "add", "github.com/org/app"])
        .run()
        .success();
    let shown = json(
        &Cubbi::new(&home)
            .args(["--json", "project", "show", "app"])
            .run()
            .success(),
    )?;
    assert_eq!(shown["credential"]["kind"], "none");
    assert_eq!(shown["url"], "https://github.com/org/app.git");
    assert!(!home.path().join(".config/cubbi/project.key").exists());

    Cubbi::new(&home)
        .args([
            "project",
            "update",
            "app",
            "--name",
            "web",
            "--branch",
            "dev",
            "--ssh-key",
        ])
        .arg(&key_path)
        .run()
        .success();
    let shown = json(
        &Cubbi::new(&home)
            .args(["--json", "project", "show", "web"])
            .run()
            .success(),
    )?;
    assert_eq!(shown["name"], "web");
    assert_eq!(shown["branch"], "dev");
    assert_eq!(shown["url"], "ssh://git@github.com/org/app.git");
    assert_eq!(shown["credential"]["kind"], "ssh_key");
    Cubbi::new(&home)
        .args(["project", "show", "app"])
        .run()
        .failure()
        .stderr_contains("no project matches `app`");

    let update = Cubbi::new(&home)
        .args([
            "project",
            "update",
            "git@github.com:org/app",
            "--no-branch",
            "--token-stdin",
        ])
        .stdin(format!("{TOKEN}\n"))
        .run()
        .success();
    let shown = json(
        &Cubbi::new(&home)
            .args(["--json", "project", "show", "web"])
            .run()
            .success(),
    )?;
    assert_eq!(shown["branch"], serde_json::Value::Null);
    assert_eq!(shown["url"], "https://github.com/org/app.git");
    assert_eq!(shown["credential"]["kind"], "token");
    let mut secrets = secret_lines(&pem);
    secrets.push(TOKEN.into());
    never_contains(&[&update], home.path(), &[], &secrets);

    Cubbi::new(&home)
        .args(["project", "update", "web"])
        .run()
        .failure()
        .stderr_contains("nothing to change");
    Cubbi::new(&home)
        .args(["project", "add", "gitlab.com/x/y", "--name", "web"])
        .run()
        .failure()
        .stderr_contains("taken");
    Cubbi::new(&home)
        .args(["project", "add", "https://github.com/org/app.git"])
        .run()
        .failure()
        .stderr_contains("already registered");

    Cubbi::new(&home)
        .args(["project", "remove", "web"])
        .run()
        .success()
        .stderr_contains("removed project web");
    assert!(project_files(&home).is_empty());
    Cubbi::new(&home)
        .args(["project", "remove", "web"])
        .run()
        .failure()
        .stderr_contains("no project matches");
    Cubbi::new(&home)
        .args(["--json", "project", "list"])
        .run()
        .success()
        .stdout_is("[]\n");
    Ok(())
}

fn project_concurrent_adds_all_land_without_sysbox() -> Result<(), Failed> {
    let home = TestHome::new();
    let children: Vec<Child> = (0..8)
        .map(|i| {
            Cubbi::new(&home)
                .args([
                    "project".to_string(),
                    "add".into(),
                    format!("github.com/org{i}/repo{i}"),
                    "--token".into(),
                    format!("{TOKEN}{i}"),
                ])
                .spawn()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output()?;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let listed = json(
        &Cubbi::new(&home)
            .args(["--json", "project", "list"])
            .run()
            .success(),
    )?;
    let mut ids: Vec<String> = listed
        .as_array()
        .ok_or("list --json is not an array")?
        .iter()
        .map(|project| project["id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    let expected: Vec<String> = (0..8)
        .map(|i| format!("github.com/org{i}/repo{i}"))
        .collect();
    assert_eq!(ids, expected);
    assert_eq!(project_files(&home).len(), 8);
    Ok(())
}

fn project_wrong_key_is_a_clear_error_without_sysbox() -> Result<(), Failed> {
    let home = TestHome::new();
    let key_a = "11".repeat(32);
    let key_b = "22".repeat(32);
    Cubbi::new(&home)
        .args(["project", "add", "github.com/org/keyed", "--token-stdin"])
        .env("CUBBI_PROJECT_KEY", &key_a)
        .stdin(TOKEN)
        .run()
        .success();
    assert!(!home.path().join(".config/cubbi/project.key").exists());
    let file = project_files(&home)
        .pop()
        .ok_or("no project file was written")?;
    let ran = Cubbi::new(&home)
        .args(["project", "list"])
        .env("CUBBI_PROJECT_KEY", &key_b)
        .run()
        .failure()
        .stderr_contains(&format!("cannot decrypt credentials in {}", file.display()))
        .stderr_contains("wrong key (CUBBI_PROJECT_KEY)");
    assert_eq!(ran.code(), Some(1));
    // Without the variable there is no key: an error naming the key file, which is not
    // created behind the user's back.
    Cubbi::new(&home)
        .args(["project", "show", "keyed"])
        .run()
        .failure()
        .stderr_contains("project.key does not exist");
    assert!(!home.path().join(".config/cubbi/project.key").exists());
    Cubbi::new(&home)
        .args(["project", "list"])
        .env("CUBBI_PROJECT_KEY", "not-a-key")
        .run()
        .failure()
        .stderr_contains("invalid CUBBI_PROJECT_KEY");
    // The right key still opens it: nothing was reset.
    let base64_a = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([0x11u8; 32])
    };
    Cubbi::new(&home)
        .args(["project", "show", "keyed"])
        .env("CUBBI_PROJECT_KEY", base64_a)
        .run()
        .success()
        .stdout_contains("token:       set");
    Ok(())
}

fn project_tampered_file_is_a_clear_error_without_sysbox() -> Result<(), Failed> {
    let home = TestHome::new();
    Cubbi::new(&home)
        .args(["project", "add", "github.com/org/tamper", "--token-stdin"])
        .stdin(TOKEN)
        .run()
        .success();
    let file = project_files(&home)
        .pop()
        .ok_or("no project file was written")?;
    let text = std::fs::read_to_string(&file)?;
    let start = text.find("sealed = \"").ok_or("no sealed credential")? + 20;
    let mut bytes = text.clone().into_bytes();
    bytes[start] = if bytes[start] == b'A' { b'B' } else { b'A' };
    std::fs::write(&file, &bytes)?;
    Cubbi::new(&home)
        .args(["project", "show", "tamper"])
        .run()
        .failure()
        .stderr_contains(&format!("cannot decrypt credentials in {}", file.display()))
        .stderr_contains("altered");
    std::fs::write(&file, &text[..text.len() / 2])?;
    Cubbi::new(&home)
        .args(["project", "list"])
        .run()
        .failure()
        .stderr_contains(&file.display().to_string());
    Ok(())
}

fn project_host_key_for_a_custom_host_without_sysbox() -> Result<(), Failed> {
    let home = TestHome::new();
    let keys = tempfile::tempdir()?;
    let (_, key_path) = write_key(keys.path(), "deploy")?;
    Cubbi::new(&home)
        .args([
            "project",
            "add",
            "ssh://git@git.example.com:2222/org/repo",
            "--ssh-key",
        ])
        .arg(&key_path)
        .args(["--host-key", GITHUB_ED25519])
        .run()
        .success();
    let shown = json(
        &Cubbi::new(&home)
            .args(["--json", "project", "show", "git.example.com:2222/org/repo"])
            .run()
            .success(),
    )?;
    assert_eq!(
        shown["host_keys"],
        serde_json::json!([{
            "host": "[git.example.com]:2222",
            "key": GITHUB_ED25519,
            "fingerprint": "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU",
            "source": "project",
        }])
    );
    assert_eq!(shown["url"], "ssh://git@git.example.com:2222/org/repo.git");
    // A known_hosts line for another host is refused.
    Cubbi::new(&home)
        .args([
            "project",
            "add",
            "git@other.example.com:org/repo",
            "--host-key",
        ])
        .arg(format!("git.example.com {GITHUB_ED25519}"))
        .run()
        .failure()
        .stderr_contains("not other.example.com");
    // A host in projects.known_hosts needs nothing more.
    Cubbi::new(&home)
        .args(["config", "set", "projects.known_hosts"])
        .arg(format!("other.example.com {GITHUB_ED25519}"))
        .run()
        .success();
    Cubbi::new(&home)
        .args([
            "project",
            "add",
            "git@other.example.com:org/repo",
            "--name",
            "other",
        ])
        .run()
        .success();
    Cubbi::new(&home)
        .args(["project", "show", "git@other.example.com:org/repo"])
        .run()
        .success()
        .stdout_contains("(projects.known_hosts)");
    Ok(())
}

fn project_unknown_host_without_terminal_is_refused_without_sysbox() -> Result<(), Failed> {
    let home = TestHome::new();
    let keys = tempfile::tempdir()?;
    let (_, key_path) = write_key(keys.path(), "deploy")?;
    let started = Instant::now();
    Cubbi::new(&home)
        .args([
            "project",
            "add",
            "git@git.example.com:org/repo",
            "--ssh-key",
        ])
        .arg(&key_path)
        .run()
        .failure()
        .stderr_contains("--host-key")
        .stderr_contains("nothing was saved");
    // Refused before any scan: no network wait.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(project_files(&home).is_empty());
    Cubbi::new(&home)
        .args(["--json", "project", "list"])
        .run()
        .success()
        .stdout_is("[]\n");
    Ok(())
}

fn project_hostile_urls_are_refused_without_sysbox() -> Result<(), Failed> {
    let home = TestHome::new();
    for url in [
        "file:///etc/passwd",
        "ext::sh",
        "/srv/git/repo",
        "github.com/org/../etc",
        "--upload-pack=touch",
    ] {
        Cubbi::new(&home)
            .args(["project", "add", "--", url])
            .run()
            .failure()
            .stderr_contains("invalid repository URL");
    }
    let ran = Cubbi::new(&home)
        .args([
            "project",
            "add",
            "https://me:hunter2secret@github.com/org/repo",
        ])
        .run()
        .failure()
        .stderr_contains("--token-stdin");
    assert!(!ran.stderr().contains("hunter2secret"), "{}", ran.stderr());
    Cubbi::new(&home)
        .args([
            "project",
            "add",
            "github.com/org/repo",
            "--name",
            "Bad Name",
        ])
        .run()
        .failure()
        .stderr_contains("invalid project name");
    assert!(project_files(&home).is_empty());
    Ok(())
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true")
}

/// A throwaway sshd on 127.0.0.1, stopped on drop.
struct Sshd {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    host_key_fingerprint: String,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sshd {
    fn start() -> Result<Self, Failed> {
        use std::os::unix::fs::PermissionsExt;
        let sshd = Path::new("/usr/sbin/sshd");
        if !sshd.exists() {
            return Err(if ci() {
                "CI=true and /usr/sbin/sshd is missing (install/test.sh installs openssh-server)"
                    .into()
            } else {
                "this test needs /usr/sbin/sshd (apt-get install openssh-server; install/test.sh \
                 does it)"
                    .into()
            });
        }
        // sshd running as root insists on its privilege separation folder.
        let run_sshd = Path::new("/run/sshd");
        if nix::unistd::Uid::effective().is_root() && !run_sshd.exists() {
            std::fs::create_dir_all(run_sshd)?;
            std::fs::set_permissions(run_sshd, std::fs::Permissions::from_mode(0o755))?;
        }
        let dir = tempfile::tempdir()?;
        let host_key = cubbi::ssh::keys::generate("test-host")?;
        let host_key_path = dir.path().join("host_ed25519");
        std::fs::write(
            &host_key_path,
            cubbi::ssh::keys::private_openssh(&host_key)?,
        )?;
        std::fs::set_permissions(&host_key_path, std::fs::Permissions::from_mode(0o600))?;
        let fingerprint = host_key
            .public_key()
            .fingerprint(russh::keys::ssh_key::HashAlg::Sha256)
            .to_string();
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut child = Command::new(sshd)
            .arg("-D")
            .arg("-e")
            .args(["-f", "/dev/null"])
            .arg("-h")
            .arg(&host_key_path)
            .args(["-p", &port.to_string()])
            .args(["-o", "ListenAddress=127.0.0.1"])
            .arg("-o")
            .arg(format!("PidFile={}", dir.path().join("sshd.pid").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                let mut err = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    use std::io::Read;
                    let _ = stderr.read_to_string(&mut err);
                }
                return Err(format!("sshd exited ({status}): {err}").into());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("sshd did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            child,
            port,
            _dir: dir,
            host_key_fingerprint: fingerprint,
        })
    }
}

fn project_host_key_is_scanned_from_a_real_sshd_without_sysbox() -> Result<(), Failed> {
    let sshd = Sshd::start()?;
    let home = TestHome::new();
    let keys = tempfile::tempdir()?;
    let (_, key_path) = write_key(keys.path(), "deploy")?;
    let url = format!("ssh://git@127.0.0.1:{}/org/repo", sshd.port);
    Cubbi::new(&home)
        .args(["project", "add", &url, "--ssh-key"])
        .arg(&key_path)
        .arg("--yes")
        .run()
        .success()
        .stderr_contains(&format!(
            "[127.0.0.1]:{} presents a ssh-ed25519 key with fingerprint {}",
            sshd.port, sshd.host_key_fingerprint
        ));
    let shown = json(
        &Cubbi::new(&home)
            .args(["--json", "project", "show", &url])
            .run()
            .success(),
    )?;
    let host_keys = shown["host_keys"].as_array().ok_or("no host_keys")?;
    assert_eq!(host_keys.len(), 1, "{shown}");
    assert_eq!(
        host_keys[0]["fingerprint"],
        sshd.host_key_fingerprint.as_str()
    );
    assert_eq!(
        host_keys[0]["host"],
        format!("[127.0.0.1]:{}", sshd.port).as_str()
    );
    assert_eq!(host_keys[0]["source"], "project");
    // Nothing listens here any more once sshd is gone: the scan fails clearly.
    let port = sshd.port;
    drop(sshd);
    Cubbi::new(&home)
        .args([
            "project",
            "add",
            &format!("ssh://git@127.0.0.1:{port}/org/other"),
            "--yes",
        ])
        .run()
        .failure()
        .stderr_contains("cannot scan the SSH host key");
    Ok(())
}

fn project_scanned_key_is_confirmed_on_a_terminal_without_sysbox() -> Result<(), Failed> {
    use crate::support::pty::Terminal;
    let sshd = Sshd::start()?;
    let home = TestHome::new();
    let keys = tempfile::tempdir()?;
    let (_, key_path) = write_key(keys.path(), "deploy")?;
    let pattern = format!("[127.0.0.1]:{}", sshd.port);
    // Declined: nothing is stored.
    let url = format!("ssh://git@127.0.0.1:{}/org/declined", sshd.port);
    let command = Cubbi::new(&home)
        .args(["project", "add", &url, "--ssh-key"])
        .arg(&key_path)
        .into_command();
    let mut term = Terminal::spawn(command, 24, 200)?;
    term.expect(&sshd.host_key_fingerprint, Duration::from_secs(15))?;
    term.expect("[y/N]", Duration::from_secs(5))?;
    term.send("n\r")?;
    let status = term.wait(Duration::from_secs(15))?;
    assert!(!status.success(), "{}", term.transcript());
    // The reader thread may not have copied the last lines yet when the process exits.
    term.expect("nothing was saved", Duration::from_secs(5))?;
    assert!(project_files(&home).is_empty());
    // Confirmed: stored with exactly that key.
    let url = format!("ssh://git@127.0.0.1:{}/org/confirmed", sshd.port);
    let command = Cubbi::new(&home)
        .args(["project", "add", &url, "--ssh-key"])
        .arg(&key_path)
        .into_command();
    let mut term = Terminal::spawn(command, 24, 200)?;
    term.expect(
        &format!("Trust this key for {pattern}?"),
        Duration::from_secs(15),
    )?;
    term.send("y\r")?;
    let status = term.wait(Duration::from_secs(15))?;
    assert!(status.success(), "{}", term.transcript());
    let shown = json(
        &Cubbi::new(&home)
            .args(["--json", "project", "show", "confirmed"])
            .run()
            .success(),
    )?;
    assert_eq!(
        shown["host_keys"][0]["fingerprint"],
        sshd.host_key_fingerprint.as_str()
    );
    assert_eq!(shown["host_keys"][0]["host"], pattern.as_str());
    Ok(())
}

fn project_token_typed_on_a_terminal_is_hidden_without_sysbox() -> Result<(), Failed> {
    use crate::support::pty::Terminal;
    let home = TestHome::new();
    let command = Cubbi::new(&home)
        .args(["project", "add", "github.com/org/typed", "--token-stdin"])
        .into_command();
    let mut term = Terminal::spawn(command, 24, 120)?;
    term.expect("token (input hidden): ", Duration::from_secs(15))?;
    term.send(&format!("{TOKEN}\r"))?;
    let status = term.wait(Duration::from_secs(15))?;
    assert!(status.success(), "{}", term.transcript());
    assert!(!term.transcript().contains(TOKEN), "{}", term.transcript());
    Cubbi::new(&home)
        .args(["project", "show", "typed"])
        .run()
        .success()
        .stdout_contains("token:       set");
    never_contains(&[], home.path(), &[], &[TOKEN.into()]);
    Ok(())
}
