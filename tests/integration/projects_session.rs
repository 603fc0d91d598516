//! Sessions of projects (issue #12) against real git servers: a Debian container on the test
//! dockerd serving one bare repository over SSH (sshd, one authorized key) and over HTTP
//! (lighttpd running `git http-backend`, basic auth for `/git/`, none for `/pub/`). Sessions are
//! real Sysbox system containers made by a `LocalBackend` whose `ProjectSource` is a map held
//! by the test (the real store is the `cubbi project` side's).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::Docker;
use cubbi::api::{ApiError, Backend, ExecEvent, LogOptions, Quiet, SessionSpec, SessionState};
use cubbi::local::backend::LocalBackend;
use cubbi::projects::{Credential, ProjectCheckout, ProjectSource};
use futures_util::StreamExt;
use libtest_mimic::{Failed, Trial};

use crate::support::sysbox::SessionRuntime;
use crate::support::{DockerScope, docker_test};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        ssh_key_projects_clone_and_refuse_what_they_must,
        token_projects_and_ad_hoc_urls,
        project_configs_persist_per_project,
        cli_sessions_clone_registered_projects,
        remote_sessions_clone_the_callers_registered_projects,
    ]
}

const SERVER_IMAGE: &str = "cubbi-test-gitserver";
const CRED_DIR: &str = "/home/agent/.ssh/cubbi-project";

/// The git server's image: Debian with sshd, git and lighttpd (apt over the Debian mirror the
/// base image was bootstrapped from), built once per run.
async fn ensure_server_image(docker: &Docker) -> Result<(), Failed> {
    static BUILT: tokio::sync::OnceCell<Result<(), String>> = tokio::sync::OnceCell::const_new();
    let outcome = BUILT
        .get_or_init(|| async {
            let dockerfile = "FROM debian:bookworm\n\
                 RUN apt-get update && apt-get install -y --no-install-recommends \
                 openssh-server git lighttpd && rm -rf /var/lib/apt/lists/*\n";
            let mut context = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_gnu();
            header.set_size(dockerfile.len() as u64);
            header.set_mode(0o644);
            context
                .append_data(&mut header, "Dockerfile", dockerfile.as_bytes())
                .map_err(|e| e.to_string())?;
            let context = context.into_inner().map_err(|e| e.to_string())?;
            let options = bollard::query_parameters::BuildImageOptionsBuilder::new()
                .dockerfile("Dockerfile")
                .t(SERVER_IMAGE)
                .rm(true)
                .build();
            let mut stream =
                docker.build_image(options, None, Some(bollard::body_full(context.into())));
            let mut tail = Vec::new();
            while let Some(item) = stream.next().await {
                let info = item.map_err(|e| format!("building {SERVER_IMAGE}: {e}"))?;
                if let Some(detail) = info.error_detail {
                    return Err(format!(
                        "building {SERVER_IMAGE}: {}\n{}",
                        detail.message.unwrap_or_default(),
                        tail.join("")
                    ));
                }
                if let Some(text) = info.stream {
                    tail.push(text);
                }
            }
            Ok(())
        })
        .await;
    outcome.clone().map_err(Failed::from)
}

/// Sets up the repository (`main`, and `feature` with a `.cubbi/init.sh` that records who ran
/// it), the `git` SSH user with one authorized key, and lighttpd; then runs sshd in the
/// foreground, logging every authentication attempt to the container's stderr.
const SERVER_SCRIPT: &str = r#"
set -e
useradd -m -d /home/git -s /bin/bash git
usermod -p '*' git
install -d -o git -g git -m 700 /home/git/.ssh
printf '%s\n' "$AUTHORIZED_KEY" > /home/git/.ssh/authorized_keys
chown git:git /home/git/.ssh/authorized_keys
chmod 600 /home/git/.ssh/authorized_keys
# The package made host keys at build time; this run's are its own.
rm -f /etc/ssh/ssh_host_*
ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
git config --system safe.directory '*'
work=$(mktemp -d)
cd "$work"
git init -q -b main
git config user.email t@example.com
git config user.name Test
echo main > README
git add README
git commit -qm main
git checkout -q -b feature
mkdir .cubbi
cat > .cubbi/init.sh <<'INIT'
echo "INIT-SCRIPT-RAN uid=$(id -u) url=$CUBBI_PROJECT_URL"
id -u > /home/agent/init-marker
INIT
echo feature > feature.txt
git add -A
git commit -qm feature
git checkout -q -b broken
printf 'echo INIT-BROKEN-RAN\nexit 3\n' > .cubbi/init.sh
git commit -qam broken
git init -q --bare -b main /srv/repo.git
git push -q /srv/repo.git main feature broken
chown -R git:git /srv/repo.git
# The same repository where an scp-like URL (`git@HOST:org/repo.git`) points: relative to the
# git user's home, behind git-shell, as a plain git-over-SSH server has it.
install -d -o git -g git /home/git/org
git clone -q --bare /srv/repo.git /home/git/org/repo.git
chown -R git:git /home/git/org
usermod -s /usr/bin/git-shell git
printf 'tokuser:%s\n' "$HTTP_TOKEN" > /etc/lighttpd/git-users
cat > /etc/lighttpd/git.conf <<'CONF'
server.modules = ("mod_alias", "mod_auth", "mod_authn_file", "mod_cgi", "mod_setenv")
server.document-root = "/var/www/html"
server.port = 80
server.username = "www-data"
server.groupname = "www-data"
server.errorlog = "/var/log/lighttpd/error.log"
auth.backend = "plain"
auth.backend.plain.userfile = "/etc/lighttpd/git-users"
alias.url = ("/git/" => "/usr/lib/git-core/git-http-backend/", "/pub/" => "/usr/lib/git-core/git-http-backend/")
$HTTP["url"] =~ "^/(git|pub)/" {
    cgi.assign = ("" => "")
    setenv.set-environment = ("GIT_PROJECT_ROOT" => "/srv", "GIT_HTTP_EXPORT_ALL" => "1")
}
$HTTP["url"] =~ "^/git/" {
    auth.require = ("" => ("method" => "basic", "realm" => "git", "require" => "valid-user"))
}
CONF
lighttpd -f /etc/lighttpd/git.conf
mkdir -p /run/sshd
touch /ready
exec /usr/sbin/sshd -D -e -o LogLevel=VERBOSE
"#;

/// A running git server on its own network.
struct GitServer {
    /// Its container name, which is also its host name on `network`.
    host: String,
    network: String,
    /// `HOST ssh-ed25519 ...`
    known_host: String,
}

async fn start_server(
    scope: &DockerScope,
    authorized_key: &str,
    token: &str,
) -> Result<GitServer, Failed> {
    ensure_server_image(&scope.docker).await?;
    let network = format!("psess-{}", scope.id);
    scope.bridge_network(&network).await?;
    // A dotted name: the project store takes full host names only (`org/repo` is no host).
    let host = format!("gitsrv-{}.test", scope.id);
    let body = bollard::models::ContainerCreateBody {
        image: Some(SERVER_IMAGE.into()),
        cmd: Some(vec!["bash".into(), "-c".into(), SERVER_SCRIPT.into()]),
        env: Some(vec![
            format!("AUTHORIZED_KEY={authorized_key}"),
            format!("HTTP_TOKEN={token}"),
        ]),
        labels: Some(scope.labels()),
        host_config: Some(bollard::models::HostConfig {
            network_mode: Some(network.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = bollard::query_parameters::CreateContainerOptionsBuilder::new()
        .name(&host)
        .build();
    scope.docker.create_container(Some(options), body).await?;
    scope.docker.start_container(&host, None).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = scope
            .docker
            .inspect_container(&host, None)
            .await?
            .state
            .and_then(|state| state.running)
            == Some(true);
        if !running {
            return Err(format!(
                "the git server stopped while setting up:\n{}",
                server_log(scope, &host).await
            )
            .into());
        }
        if root_exec(&scope.docker, &host, &["test", "-f", "/ready"])
            .await?
            .1
            == 0
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the git server never got ready:\n{}",
                server_log(scope, &host).await
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (public, _) = root_exec(
        &scope.docker,
        &host,
        &["cat", "/etc/ssh/ssh_host_ed25519_key.pub"],
    )
    .await?;
    let mut words = public.split_whitespace();
    let known_host = format!(
        "{host} {} {}",
        words.next().ok_or("no host key type")?,
        words.next().ok_or("no host key")?
    );
    Ok(GitServer {
        host,
        network,
        known_host,
    })
}

/// The git server's sshd log (its stderr) so far.
async fn server_log(scope: &DockerScope, host: &str) -> String {
    let options = bollard::query_parameters::LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .build();
    scope
        .docker
        .logs(host, Some(options))
        .filter_map(|chunk| async move { chunk.ok().map(|c| c.to_string()) })
        .collect::<String>()
        .await
}

/// Output and exit code of a command run as root with `docker exec`.
async fn root_exec(
    docker: &Docker,
    container: &str,
    cmd: &[&str],
) -> Result<(String, i64), Failed> {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    let exec = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(cmd.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await?;
    let mut text = String::new();
    if let StartExecResults::Attached { mut output, .. } = docker.start_exec(&exec.id, None).await?
    {
        while let Some(chunk) = output.next().await {
            text.push_str(&chunk?.to_string());
        }
    }
    let code = docker.inspect_exec(&exec.id).await?.exit_code.unwrap_or(-1);
    Ok((text, code))
}

/// The registered projects of the test's owner, by reference.
struct Projects(HashMap<String, ProjectCheckout>);

#[async_trait]
impl ProjectSource for Projects {
    async fn checkout(&self, reference: &str) -> Result<Option<ProjectCheckout>, ApiError> {
        Ok(self.0.get(reference).cloned())
    }
}

fn backend(scope: &DockerScope, projects: Projects) -> Result<LocalBackend, Failed> {
    crate::support::local_backend(scope, Some(Arc::new(projects)))
}

fn spec(name: &str, project: Option<&str>, network: &str) -> SessionSpec {
    SessionSpec {
        name: Some(name.to_string()),
        image: "base".into(),
        workspace: None,
        project: project.map(str::to_string),
        run_init: false,
        env: BTreeMap::new(),
        volumes: Vec::new(),
        networks: vec![network.to_string()],
        default_network: false,
        memory: "512m".parse().ok(),
        cpus: None,
        pids_limit: None,
        runtime: SessionRuntime::of_this_run().runtime_name().into(),
        unsafe_runc: SessionRuntime::of_this_run().unsafe_runc(),
        ssh_bind: "127.0.0.1".parse().expect("an address"),
        authorized_keys: Vec::new(),
        idle_stop_secs: None,
        mcp: Vec::new(),
        mcp_names: Vec::new(),
        egress: None,
    }
}

fn checkout(
    id: &str,
    url: &str,
    credential: Option<Credential>,
    known_hosts: &[&str],
) -> ProjectCheckout {
    ProjectCheckout {
        id: id.into(),
        url: url.into(),
        branch: Some("feature".into()),
        credential,
        known_hosts: known_hosts.iter().map(|s| s.to_string()).collect(),
        registered: true,
    }
}

/// Stdout and exit code of a command run as `agent` over SSH.
async fn run(
    backend: &LocalBackend,
    name: &str,
    command: &[&str],
) -> Result<(String, i32), Failed> {
    let mut events = backend
        .exec(name, command.iter().map(|s| s.to_string()).collect())
        .await?;
    let (mut out, mut code) = (Vec::new(), None);
    while let Some(event) = events.next().await {
        match event? {
            ExecEvent::Stdout(data) => out.extend(data),
            ExecEvent::Stderr(_) => {}
            ExecEvent::Exit(exit) => code = Some(exit),
        }
    }
    Ok((String::from_utf8(out)?, code.ok_or("no exit code")?))
}

async fn sh(backend: &LocalBackend, name: &str, script: &str) -> Result<String, Failed> {
    let (out, code) = run(backend, name, &["sh", "-c", script]).await?;
    if code != 0 {
        return Err(format!("`{script}` in {name} exited {code}: {out}").into());
    }
    Ok(out)
}

/// The project status once the clone (and init.sh) finished.
async fn project_status(backend: &LocalBackend, name: &str) -> Result<String, Failed> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let session = backend.get(name).await?;
        if let Some(status) = session.project_status {
            return Ok(status);
        }
        if Instant::now() > deadline {
            return Err(format!("{name}: no project status after 120 s").into());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until `list` (one `docker ps`, through the health check) shows `init-failed`, and
/// checks `get` says so too.
async fn expect_init_failed(backend: &LocalBackend, name: &str) -> Result<(), Failed> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = backend.list().await?;
        let state = listed.iter().find(|s| s.name == name).map(|s| s.state);
        if state == Some(SessionState::InitFailed) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{name} is {state:?} in list, not init-failed").into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(backend.get(name).await?.state, SessionState::InitFailed);
    Ok(())
}

/// Everything a secret could leak through: `docker inspect` (env, labels, cmd, all of it),
/// the session's logs, and every process's arguments inside the session.
async fn assert_nowhere(
    scope: &DockerScope,
    backend: &LocalBackend,
    name: &str,
    secret: &str,
) -> Result<(), Failed> {
    let session = backend.get(name).await?;
    let inspect = scope.docker.inspect_container(&session.id, None).await?;
    let inspect = serde_json::to_string(&inspect)?;
    assert!(
        !inspect.contains(secret),
        "{name}: the secret is in docker inspect"
    );
    let logs = logs(backend, name).await?;
    assert!(
        !logs.contains(secret),
        "{name}: the secret is in the session's logs"
    );
    let (ps, _) = root_exec(&scope.docker, &session.id, &["ps", "-eww", "-o", "args"]).await?;
    assert!(
        !ps.contains(secret),
        "{name}: the secret is in a process's arguments"
    );
    let (env, _) = root_exec(&scope.docker, &session.id, &["cat", "/etc/cubbi/env"]).await?;
    assert!(
        !env.contains(secret),
        "{name}: the secret is in the session env"
    );
    Ok(())
}

async fn logs(backend: &LocalBackend, name: &str) -> Result<String, Failed> {
    let mut stream = backend.logs(name, LogOptions::default()).await?;
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        text.push_str(&chunk?.text);
    }
    Ok(text)
}

/// The longest line of a key file: a piece of its secret part.
fn key_body(private: &str) -> String {
    private
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .max_by_key(|line| line.len())
        .unwrap_or_default()
        .to_string()
}

fn ssh_key_projects_clone_and_refuse_what_they_must() -> Result<(), Failed> {
    docker_test("psess-ssh", |scope| async move {
        scope.ensure_base().await?;
        let key = cubbi::ssh::keys::generate("project")?;
        let private = cubbi::ssh::keys::private_openssh(&key)?;
        let public = cubbi::ssh::keys::public_openssh(key.public_key())?;
        let server = start_server(&scope, &public, "unused-token").await?;
        let url = format!("ssh://git@{}/srv/repo.git", server.host);
        let wrong = cubbi::ssh::keys::private_openssh(&cubbi::ssh::keys::generate("wrong")?)?;
        let other_host_key =
            cubbi::ssh::keys::public_openssh(cubbi::ssh::keys::generate("other")?.public_key())?;
        let other_known = format!("{} {other_host_key}", server.host);
        let ssh_key = |k: &str| {
            Some(Credential::SshKey {
                private_key: k.to_string(),
            })
        };
        let projects = Projects(HashMap::from([
            (
                "good".to_string(),
                checkout("h/srv/good", &url, ssh_key(&private), &[&server.known_host]),
            ),
            (
                "wrongkey".to_string(),
                checkout(
                    "h/srv/wrongkey",
                    &url,
                    ssh_key(&wrong),
                    &[&server.known_host],
                ),
            ),
            (
                "scplike".to_string(),
                checkout(
                    "h/srv/scplike",
                    &format!("git@{}:org/repo.git", server.host),
                    ssh_key(&private),
                    &[&server.known_host],
                ),
            ),
            (
                "unknownhost".to_string(),
                checkout("h/srv/unknown", &url, ssh_key(&private), &[&other_known]),
            ),
        ]));
        let backend = backend(&scope, projects)?;

        // The right key: cloned on `feature`, init.sh ran as the agent, later git works.
        backend
            .create(spec("ssh-good", Some("good"), &server.network), &Quiet)
            .await?;
        assert_eq!(project_status(&backend, "ssh-good").await?, "done");
        assert_eq!(
            sh(
                &backend,
                "ssh-good",
                "git -C workspace branch --show-current"
            )
            .await?
            .trim(),
            "feature"
        );
        assert_eq!(
            sh(&backend, "ssh-good", "cat workspace/feature.txt").await?,
            "feature\n"
        );
        assert_eq!(
            sh(
                &backend,
                "ssh-good",
                "cat init-marker; stat -c %u init-marker"
            )
            .await?,
            "1000\n1000\n"
        );
        assert_eq!(
            sh(
                &backend,
                "ssh-good",
                "find workspace -printf '%U:%G\\n' | sort -u"
            )
            .await?
            .trim(),
            "1000:1000"
        );
        assert_eq!(
            sh(&backend, "ssh-good", "stat -c '%U %a' .ssh/cubbi-project .ssh/cubbi-project/id_key .ssh/cubbi-project/known_hosts").await?,
            "agent 700\nagent 600\nagent 600\n"
        );
        assert!(
            sh(
                &backend,
                "ssh-good",
                "git -C workspace config core.sshCommand"
            )
            .await?
            .contains("-i /home/agent/.ssh/cubbi-project/id_key")
        );
        sh(
            &backend,
            "ssh-good",
            "cd workspace && git pull -q && git fetch -q origin main",
        )
        .await?;
        assert_eq!(
            sh(
                &backend,
                "ssh-good",
                "printf '%s %s' \"$CUBBI_PROJECT_URL\" \"$CUBBI_PROJECT_TYPE\""
            )
            .await?,
            format!("{url} git")
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !logs(&backend, "ssh-good")
            .await?
            .contains("INIT-SCRIPT-RAN uid=1000")
        {
            if Instant::now() > deadline {
                return Err("init.sh's output never reached the session's logs".into());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_nowhere(&scope, &backend, "ssh-good", &key_body(&private)).await?;
        backend.close("ssh-good").await?;

        // An scp-like URL is cloned as written: relative to the git user's home on a server
        // that is sshd and git-shell, nothing more (read as /org/repo.git it is not there).
        backend
            .create(spec("ssh-scp", Some("scplike"), &server.network), &Quiet)
            .await?;
        assert_eq!(project_status(&backend, "ssh-scp").await?, "done");
        assert_eq!(
            sh(
                &backend,
                "ssh-scp",
                "cat workspace/feature.txt; git -C workspace remote get-url origin"
            )
            .await?,
            format!("feature\ngit@{}:org/repo.git\n", server.host)
        );
        backend.close("ssh-scp").await?;

        // A key the server does not know: init-failed, with why, and the key is gone.
        backend
            .create(spec("ssh-wrong", Some("wrongkey"), &server.network), &Quiet)
            .await?;
        let status = project_status(&backend, "ssh-wrong").await?;
        assert!(
            status.starts_with("failed: git clone (exit 128): ")
                && status.contains("Permission denied"),
            "{status}"
        );
        expect_init_failed(&backend, "ssh-wrong").await?;
        assert_eq!(
            run(&backend, "ssh-wrong", &["test", "-e", CRED_DIR])
                .await?
                .1,
            1,
            "credentials cut"
        );
        assert!(
            server_log(&scope, &server.host).await.contains("publickey"),
            "the wrong key was tried"
        );
        assert_nowhere(&scope, &backend, "ssh-wrong", &key_body(&wrong)).await?;
        backend.close("ssh-wrong").await?;

        // A host key that is not the pinned one: refused before the key is offered.
        let attempts_before = server_log(&scope, &server.host)
            .await
            .matches("publickey")
            .count();
        backend
            .create(
                spec("ssh-unknown", Some("unknownhost"), &server.network),
                &Quiet,
            )
            .await?;
        let status = project_status(&backend, "ssh-unknown").await?;
        assert!(status.contains("unknown host key"), "{status}");
        expect_init_failed(&backend, "ssh-unknown").await?;
        assert_eq!(
            run(&backend, "ssh-unknown", &["test", "-e", CRED_DIR])
                .await?
                .1,
            1,
            "credentials cut"
        );
        assert_eq!(
            server_log(&scope, &server.host)
                .await
                .matches("publickey")
                .count(),
            attempts_before,
            "no key was offered to a host with an unknown key"
        );
        assert_eq!(sh(&backend, "ssh-unknown", "ls -A workspace").await?, "");
        backend.close("ssh-unknown").await?;
        Ok(())
    })
}

fn token_projects_and_ad_hoc_urls() -> Result<(), Failed> {
    docker_test("psess-http", |scope| async move {
        scope.ensure_base().await?;
        let token = format!(
            "tok{}x{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        );
        let server = start_server(&scope, "ssh-ed25519 AAAAunused", &token).await?;
        let url = format!("http://{}/git/repo.git", server.host);
        let public_url = format!("http://{}/pub/repo.git", server.host);
        let token_of = |t: &str| {
            Some(Credential::Token {
                username: "tokuser".into(),
                token: t.into(),
            })
        };
        let projects = Projects(HashMap::from([
            (
                "tok".to_string(),
                checkout("h/git/tok", &url, token_of(&token), &[]),
            ),
            (
                "badtok".to_string(),
                checkout("h/git/badtok", &url, token_of("not-the-token"), &[]),
            ),
            (
                "broken".to_string(),
                ProjectCheckout {
                    branch: Some("broken".into()),
                    ..checkout("h/git/broken", &url, token_of(&token), &[])
                },
            ),
        ]));
        let backend = backend(&scope, projects)?;

        backend
            .create(spec("http-good", Some("tok"), &server.network), &Quiet)
            .await?;
        assert_eq!(project_status(&backend, "http-good").await?, "done");
        assert_eq!(
            sh(
                &backend,
                "http-good",
                "cat workspace/feature.txt; cat init-marker"
            )
            .await?,
            "feature\n1000\n"
        );
        assert_eq!(
            sh(
                &backend,
                "http-good",
                "git -C workspace remote get-url origin"
            )
            .await?
            .trim(),
            url
        );
        let (config, _) = run(&backend, "http-good", &["cat", "workspace/.git/config"]).await?;
        assert!(!config.contains(&token), "the token is in .git/config");
        assert_eq!(
            sh(
                &backend,
                "http-good",
                "stat -c '%U %a' .ssh/cubbi-project/git-credentials"
            )
            .await?,
            "agent 600\n"
        );
        sh(
            &backend,
            "http-good",
            "cd workspace && git fetch -q origin main",
        )
        .await?;
        assert_nowhere(&scope, &backend, "http-good", &token).await?;
        backend.close("http-good").await?;

        backend
            .create(spec("http-bad", Some("badtok"), &server.network), &Quiet)
            .await?;
        let status = project_status(&backend, "http-bad").await?;
        assert!(
            status.starts_with("failed: git clone") && status.contains("Authentication failed"),
            "{status}"
        );
        expect_init_failed(&backend, "http-bad").await?;
        assert_eq!(
            run(&backend, "http-bad", &["test", "-e", CRED_DIR])
                .await?
                .1,
            1,
            "credentials cut"
        );
        backend.close("http-bad").await?;

        // A registered project whose init.sh fails: init-failed, the script's output in the
        // logs, and the token gone from the session.
        backend
            .create(spec("http-broken", Some("broken"), &server.network), &Quiet)
            .await?;
        assert_eq!(
            project_status(&backend, "http-broken").await?,
            "failed: .cubbi/init.sh (exit 3)"
        );
        expect_init_failed(&backend, "http-broken").await?;
        assert_eq!(
            run(&backend, "http-broken", &["test", "-e", CRED_DIR])
                .await?
                .1,
            1,
            "credentials cut"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !logs(&backend, "http-broken")
            .await?
            .contains("INIT-BROKEN-RAN")
        {
            if Instant::now() > deadline {
                return Err("the failing init.sh's output is not in the logs".into());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_nowhere(&scope, &backend, "http-broken", &token).await?;
        backend.close("http-broken").await?;

        // An ad-hoc URL: cloned, but its init.sh is anyone's code and runs only when asked.
        let adhoc = format!("{public_url}#feature");
        backend
            .create(spec("adhoc", Some(&adhoc), &server.network), &Quiet)
            .await?;
        assert_eq!(project_status(&backend, "adhoc").await?, "done");
        assert_eq!(
            sh(&backend, "adhoc", "cat workspace/feature.txt").await?,
            "feature\n"
        );
        assert_eq!(
            run(&backend, "adhoc", &["test", "-e", "init-marker"])
                .await?
                .1,
            1,
            "init.sh ran"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !logs(&backend, "adhoc")
            .await?
            .contains("not running .cubbi/init.sh (ad-hoc URL; --run-init runs it)")
        {
            if Instant::now() > deadline {
                return Err("the skipped init.sh is not in the logs".into());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        backend.close("adhoc").await?;

        let mut asked = spec("adhoc-init", Some(&adhoc), &server.network);
        asked.run_init = true;
        backend.create(asked, &Quiet).await?;
        assert_eq!(project_status(&backend, "adhoc-init").await?, "done");
        assert_eq!(
            sh(&backend, "adhoc-init", "cat init-marker").await?,
            "1000\n"
        );
        backend.close("adhoc-init").await?;
        Ok(())
    })
}

fn project_configs_persist_per_project() -> Result<(), Failed> {
    docker_test("psess-persist", |scope| async move {
        scope.ensure_base().await?;
        let server = start_server(&scope, "ssh-ed25519 AAAAunused", "unused").await?;
        let url = format!("http://{}/pub/repo.git", server.host);
        let projects = Projects(HashMap::from([
            ("p".to_string(), checkout("example.org/p", &url, None, &[])),
            ("q".to_string(), checkout("example.org/q", &url, None, &[])),
        ]));
        let backend = backend(&scope, projects)?;

        backend
            .create(spec("p-one", Some("p"), &server.network), &Quiet)
            .await?;
        assert_eq!(
            sh(
                &backend,
                "p-one",
                "printf '%s %s' \"$CUBBI_CONFIG_DIR\" \"$CUBBI_IMAGE_CONFIG_DIR\""
            )
            .await?,
            "/cubbi-config /cubbi-config/base"
        );
        sh(
            &backend,
            "p-one",
            "echo remembered > /cubbi-config/memory.txt",
        )
        .await?;
        backend.close("p-one").await?;

        backend
            .create(spec("p-two", Some("p"), &server.network), &Quiet)
            .await?;
        assert_eq!(
            sh(&backend, "p-two", "cat /cubbi-config/memory.txt").await?,
            "remembered\n"
        );
        backend.close("p-two").await?;

        backend
            .create(spec("q-one", Some("q"), &server.network), &Quiet)
            .await?;
        assert_eq!(
            run(
                &backend,
                "q-one",
                &["test", "-e", "/cubbi-config/memory.txt"]
            )
            .await?
            .1,
            1
        );
        backend.close("q-one").await?;

        backend
            .create(spec("none", None, &server.network), &Quiet)
            .await?;
        let (found, _) = run(
            &backend,
            "none",
            &[
                "sh",
                "-c",
                "ls /cubbi-config 2>&1; grep -rl remembered /mnt/agent-data 2>/dev/null; true",
            ],
        )
        .await?;
        assert!(
            !found.contains("memory.txt") && !found.contains("remembered"),
            "{found}"
        );
        assert!(
            found.contains("No such file"),
            "no /cubbi-config without a project: {found}"
        );
        backend.close("none").await?;

        let volume = scope
            .docker
            .inspect_volume(&cubbi::local::naming::config_volume_name(
                &scope.id,
                "example.org/p",
            ))
            .await?;
        assert_eq!(
            volume.labels.get("io.cubbi.project").map(String::as_str),
            Some("example.org/p")
        );
        assert_eq!(volume.labels.get("io.cubbi.owner"), Some(&scope.id));
        Ok(())
    })
}

/// A deploy key the git server accepts, written 0600 into a test home, and the server's host
/// key as `--host-key` takes it.
struct DeployKey {
    file: std::path::PathBuf,
    private: String,
    host_key: String,
}

async fn server_with_deploy_key(
    scope: &DockerScope,
    home: &crate::support::TestHome,
) -> Result<(GitServer, DeployKey), Failed> {
    let key = cubbi::ssh::keys::generate("project")?;
    let private = cubbi::ssh::keys::private_openssh(&key)?;
    let public = cubbi::ssh::keys::public_openssh(key.public_key())?;
    let server = start_server(scope, &public, "unused-token").await?;
    let file = home.path().join("deploy_key");
    std::fs::write(&file, &private)?;
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let host_key = server
        .known_host
        .split_once(' ')
        .map(|(_, key)| key.to_string())
        .ok_or("no host key")?;
    Ok((
        server,
        DeployKey {
            file,
            private,
            host_key,
        },
    ))
}

/// The whole local path through the binary: `cubbi project add` seals the key in the real
/// store, `session create --project NAME -vvv` finds it there, the clone and init.sh run, and
/// neither the verbose output nor `session show` carries the key. An ad-hoc URL needs
/// `--run-init` for its init.sh.
fn cli_sessions_clone_registered_projects() -> Result<(), Failed> {
    docker_test("psess-cli", |scope| async move {
        scope.ensure_base().await?;
        let home = crate::support::TestHome::new();
        let (server, deploy) = server_with_deploy_key(&scope, &home).await?;
        let (key_file, private, host_key) = (deploy.file, deploy.private, deploy.host_key);
        let url = format!("ssh://git@{}/srv/repo.git", server.host);
        scope
            .cubbi(&home)
            .args([
                "project", "add", &url, "--name", "repo", "--branch", "feature",
            ])
            .arg("--ssh-key")
            .arg(&key_file)
            .args(["--host-key", &host_key])
            .run()
            .success();
        let created = scope
            .cubbi(&home)
            .args([
                "-vvv",
                "session",
                "create",
                "--image",
                "base",
                "--no-connect",
            ])
            .args(["--name", "cli-repo", "--project", "repo"])
            .args(SessionRuntime::of_this_run().create_flags())
            .args(["--network", &server.network])
            .run()
            .success();
        let body = key_body(&private);
        assert!(
            !created.stdout().contains(&body) && !created.stderr().contains(&body),
            "the private key is in -vvv output"
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        let shown = loop {
            let shown = scope
                .cubbi(&home)
                .args(["--json", "session", "show", "cli-repo"])
                .run()
                .success()
                .stdout();
            if shown.contains("\"project_status\"") || Instant::now() > deadline {
                break shown;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert!(shown.contains("\"project_status\": \"done\""), "{shown}");
        assert!(!shown.contains(&body), "the private key is in session show");
        let exec = |script: &str| {
            scope
                .cubbi(&home)
                .args(["session", "exec", "cli-repo", "--", "bash", "-c", script])
                .run()
                .success()
                .stdout()
        };
        assert_eq!(exec("git -C workspace branch --show-current"), "feature\n");
        assert_eq!(exec("cat init-marker"), "1000\n");
        assert_eq!(
            exec("printenv CUBBI_PROJECT_URL CUBBI_PROJECT_TYPE CUBBI_CONFIG_DIR"),
            format!("{url}\ngit\n/cubbi-config\n")
        );

        // A name nobody registered is refused before anything is made.
        scope
            .cubbi(&home)
            .args(["session", "create", "--image", "base", "--no-connect"])
            .args(["--name", "cli-nosuch", "--project", "nosuch"])
            .run()
            .failure()
            .stderr_contains("no project `nosuch` is registered");
        assert!(
            crate::support::containers_labelled(
                &scope.docker,
                &format!("io.cubbi.owner={}", scope.id)
            )
            .await?
            .iter()
            .all(|c| !format!("{:?}", c.names).contains("cli-nosuch")),
            "a refused create left a container"
        );

        // The same repository over HTTP without credentials, not registered: init.sh runs only
        // with --run-init.
        let ad_hoc = format!("http://{}/pub/repo.git#feature", server.host);
        for (name, extra, marker) in [
            ("cli-adhoc", None, "absent"),
            ("cli-adhoc-init", Some("--run-init"), "present"),
        ] {
            scope
                .cubbi(&home)
                .args(["session", "create", "--image", "base", "--no-connect"])
                .args(["--name", name, "--project", &ad_hoc])
                .args(SessionRuntime::of_this_run().create_flags())
                .args(["--network", &server.network])
                .args(extra)
                .run()
                .success();
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let done = scope
                    .cubbi(&home)
                    .args(["--json", "session", "show", name])
                    .run()
                    .success()
                    .stdout()
                    .contains("\"project_status\": \"done\"");
                if done {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("{name}: the clone never finished").into());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let found = scope
                .cubbi(&home)
                .args(["session", "exec", name, "--", "bash", "-c"])
                .arg("test -e init-marker && echo present || echo absent")
                .run()
                .success()
                .stdout();
            assert_eq!(found.trim(), marker, "{name}");
        }
        for name in ["cli-repo", "cli-adhoc", "cli-adhoc-init"] {
            scope
                .cubbi(&home)
                .args(["session", "close", name])
                .run()
                .success();
        }
        Ok(())
    })
}

/// The same through `cubbi serve`: the project registered with `cubbi -r test project add` is
/// sealed in the service's database under the caller's name, and `cubbi -r test session create
/// --project NAME` clones it with that key on the service's endpoint. Another user of the same
/// service has no such project.
fn remote_sessions_clone_the_callers_registered_projects() -> Result<(), Failed> {
    docker_test("psess-remote", |scope| async move {
        scope.ensure_base().await?;
        let home = Arc::new(crate::support::TestHome::new());
        let (server, deploy) = server_with_deploy_key(&scope, &home).await?;
        let (key_file, private, host_key) = (deploy.file, deploy.private, deploy.host_key);
        let network = server.network.clone();
        let mut service = crate::support::service::TestService::start(&scope, |config| {
            // The git server's network, which sessions join to reach it.
            config.networks.allowed = vec![network];
        })
        .await?;
        // The service runs on this runtime: the binary is run off it.
        let cubbi = |args: Vec<String>, stdin: Option<String>| {
            let home = Arc::clone(&home);
            tokio::task::spawn_blocking(move || {
                let mut command = crate::support::Cubbi::new(&home).args(args);
                if let Some(input) = stdin {
                    command = command.stdin(input);
                }
                command.run()
            })
        };
        let words = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let alice = service.token(&crate::support::service::user(&scope, "alice"), false)?;
        let bob = service.token(&crate::support::service::user(&scope, "bob"), false)?;
        for (remote, token) in [("test", &alice), ("bob", &bob)] {
            cubbi(words(&["remote", "add", remote, &service.url]), None)
                .await?
                .success();
            cubbi(words(&["-r", remote, "auth"]), Some(format!("{token}\n")))
                .await?
                .success();
        }
        let url = format!("ssh://git@{}/srv/repo.git", server.host);
        let key_path = key_file.display().to_string();
        cubbi(
            words(&[
                "-r",
                "test",
                "project",
                "add",
                &url,
                "--name",
                "repo",
                "--branch",
                "feature",
                "--ssh-key",
                &key_path,
                "--host-key",
                &host_key,
            ]),
            None,
        )
        .await?
        .success();
        let created = cubbi(
            words(&[
                "-r",
                "test",
                "-vvv",
                "session",
                "create",
                "--image",
                "base",
                "--no-connect",
                "--name",
                "remote-repo",
                "--project",
                "repo",
                "--network",
                &server.network,
            ])
            .into_iter()
            .chain(words(SessionRuntime::of_this_run().create_flags()))
            .collect(),
            None,
        )
        .await?
        .success();
        let body = key_body(&private);
        assert!(
            !created.stdout().contains(&body) && !created.stderr().contains(&body),
            "the private key is in -vvv output"
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        let shown = loop {
            let shown = cubbi(
                words(&["-r", "test", "--json", "session", "show", "remote-repo"]),
                None,
            )
            .await?
            .success()
            .stdout();
            if shown.contains("\"project_status\"") || Instant::now() > deadline {
                break shown;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert!(shown.contains("\"project_status\": \"done\""), "{shown}");
        let marker = cubbi(
            words(&[
                "-r",
                "test",
                "session",
                "exec",
                "remote-repo",
                "--",
                "bash",
                "-c",
                "git -C workspace branch --show-current; cat init-marker",
            ]),
            None,
        )
        .await?
        .success()
        .stdout();
        assert_eq!(marker, "feature\n1000\n");
        // Bob's projects are his own: alice's `repo` is not one of them.
        let listed = cubbi(words(&["-r", "bob", "--json", "project", "list"]), None)
            .await?
            .success()
            .stdout();
        assert!(!listed.contains("srv/repo"), "{listed}");
        cubbi(words(&["-r", "bob", "project", "show", "repo"]), None)
            .await?
            .failure();
        cubbi(
            words(&["-r", "test", "session", "close", "remote-repo"]),
            None,
        )
        .await?
        .success();
        service.stop().await?;
        Ok(())
    })
}
