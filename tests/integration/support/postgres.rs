//! A real PostgreSQL server (Debian's `postgresql` package, which install/test.sh installs),
//! started once for the run by `initdb` + `postgres` in a temporary folder: a private unix
//! socket folder and a free loopback port, password (SCRAM) authentication for the `cubbi`
//! superuser, and TLS with a certificate of a private CA ([`Postgres::ca_file`]); the database
//! `tls_only` takes TLS connections only. PostgreSQL refuses to run as root, so under root the folder belongs to the
//! `postgres` user (or `nobody`) and the server runs as that user.
//! Each test gets a database of its own ([`Postgres::database`]).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;

pub struct Postgres {
    pub port: u16,
    /// The password, for the tests' own admin connection; the service reads it from
    /// [`Postgres::password_file`].
    password: String,
    /// A copy of the password only the test process's user can read (mode 0600).
    pub password_file: PathBuf,
    /// The CA the server's certificate (for 127.0.0.1 and localhost) chains to.
    pub ca_file: PathBuf,
    child: Child,
    root: tempfile::TempDir,
}

static SERVER: Mutex<Option<Result<std::sync::Arc<Postgres>, String>>> = Mutex::new(None);

/// The run's server, started on first use. A host without PostgreSQL fails the test (under
/// CI as anywhere): install/test.sh installs it.
pub fn shared() -> Result<std::sync::Arc<Postgres>, Failed> {
    let mut slot = SERVER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if slot.is_none() {
        *slot = Some(Postgres::start().map(std::sync::Arc::new));
    }
    match slot.as_ref() {
        Some(Ok(server)) => Ok(std::sync::Arc::clone(server)),
        Some(Err(err)) => Err(err.clone().into()),
        None => Err("unreachable: the slot was just filled".into()),
    }
}

/// Stops the run's server, if one was started.
pub fn teardown() {
    let mut slot = SERVER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(Ok(server)) = slot.take() {
        match std::sync::Arc::try_unwrap(server) {
            Ok(mut server) => server.stop(),
            Err(_) => eprintln!("postgres: still in use at teardown; left to the OS"),
        }
    }
}

/// The folder of `initdb` and `postgres`: Debian keeps them out of PATH, per major version.
fn bin_dir() -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        "this test needs PostgreSQL: no /usr/lib/postgresql/*/bin/initdb (install Debian's \
         `postgresql` package; install/test.sh does)"
            .to_string()
    })
}

/// The user the server runs as: root may not run it, so `postgres` (or `nobody`) then.
fn server_user() -> Option<nix::unistd::User> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    ["postgres", "nobody"]
        .into_iter()
        .find_map(|name| nix::unistd::User::from_name(name).ok().flatten())
}

/// `program` as the server's user: its own uid and gid, no supplementary groups (std clears
/// them when root sets a uid), so the child is the server itself and gets our signals.
fn as_server_user(user: &Option<nix::unistd::User>, program: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(program);
    if let Some(user) = user {
        command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    command
}

fn chown(path: &Path, user: &Option<nix::unistd::User>) -> Result<(), String> {
    if let Some(user) = user {
        nix::unistd::chown(path, Some(user.uid), Some(user.gid))
            .map_err(|err| format!("chown {}: {err}", path.display()))?;
    }
    Ok(())
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|err| err.to_string())?;
    Ok(listener.local_addr().map_err(|err| err.to_string())?.port())
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|err| format!("{}: {err}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|err| format!("{}: {err}", path.display()))
}

impl Postgres {
    /// A server of the caller's own (for a test that stops it), stopped when dropped.
    pub fn start_private() -> Result<Self, Failed> {
        Ok(Self::start()?)
    }

    fn start() -> Result<Self, String> {
        let bin = bin_dir()?;
        let user = server_user();
        let root = tempfile::Builder::new()
            .prefix("cubbi-test-pg-")
            .tempdir()
            .map_err(|err| err.to_string())?;
        // The server's user must reach its folder through the temp dir.
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|err| err.to_string())?;
        let server_dir = root.path().join("server");
        std::fs::create_dir(&server_dir).map_err(|err| err.to_string())?;
        std::fs::set_permissions(&server_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|err| err.to_string())?;
        chown(&server_dir, &user)?;
        let password: String = {
            let bytes: [u8; 18] = rand::random();
            bytes.iter().map(|byte| format!("{byte:02x}")).collect()
        };
        let initdb_password = server_dir.join("initdb-password");
        write_private(&initdb_password, &password)?;
        chown(&initdb_password, &user)?;
        let password_file = root.path().join("password");
        write_private(&password_file, &format!("{password}\n"))?;

        let data = server_dir.join("data");
        let output = as_server_user(&user, &bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "cubbi", "--auth=scram-sha-256", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync"])
            .arg(format!("--pwfile={}", initdb_password.display()))
            .output()
            .map_err(|err| format!("cannot run initdb: {err}"))?;
        std::fs::remove_file(&initdb_password).map_err(|err| err.to_string())?;
        if !output.status.success() {
            return Err(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        // TLS: a private CA's certificate, the key the server's alone.
        let pki = root.path().join("pki");
        std::fs::create_dir(&pki).map_err(|err| err.to_string())?;
        super::pki::private_ca_and_server_cert(&pki)
            .map_err(|err| err.message().unwrap_or("openssl failed").to_string())?;
        for file in ["server.pem", "server.key"] {
            let target = server_dir.join(file);
            std::fs::copy(pki.join(file), &target).map_err(|err| err.to_string())?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))
                .map_err(|err| err.to_string())?;
            chown(&target, &user)?;
        }
        // First match wins: plain connections to `tls_only` are rejected before the rule
        // initdb wrote lets them in.
        let hba = data.join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).map_err(|err| err.to_string())?;
        std::fs::write(
            &hba,
            format!("hostnossl tls_only all 127.0.0.1/32 reject\n{rules}"),
        )
        .map_err(|err| err.to_string())?;
        let port = free_port()?;
        let log = std::fs::File::create(root.path().join("postgres.log"))
            .map_err(|err| err.to_string())?;
        let child = as_server_user(&user, &bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", server_dir.display()))
            .args([
                "-c",
                "fsync=off",
                "-c",
                "max_connections=300",
                "-c",
                "ssl=on",
            ])
            .arg("-c")
            .arg(format!(
                "ssl_cert_file={}",
                server_dir.join("server.pem").display()
            ))
            .arg("-c")
            .arg(format!(
                "ssl_key_file={}",
                server_dir.join("server.key").display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|err| err.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|err| format!("cannot run postgres: {err}"))?;
        let mut server = Self {
            port,
            password,
            password_file,
            ca_file: pki.join("ca.pem"),
            child,
            root,
        };
        if let Err(err) = server.wait_ready() {
            let log = std::fs::read_to_string(server.root.path().join("postgres.log"))
                .unwrap_or_default();
            server.stop();
            return Err(format!("{err}; its log:\n{log}"));
        }
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| err.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("postgres exited with {status}"));
            }
            match runtime.block_on(self.admin_query("SELECT 1")) {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() > deadline => {
                    return Err(format!("postgres did not answer within 30 s: {err}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn admin_config(&self, database: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user("cubbi")
            .password(self.password.as_str())
            .dbname(database);
        config
    }

    async fn admin_query(&self, statement: &str) -> Result<(), String> {
        let (client, connection) = self
            .admin_config("postgres")
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|err| cubbi::service::pg_store::reason(&err))?;
        let driver = tokio::spawn(connection);
        let result = client
            .batch_execute(statement)
            .await
            .map_err(|err| cubbi::service::pg_store::reason(&err));
        drop(client);
        let _ = driver.await;
        result
    }

    /// A new empty database named after `name` (lowercase letters, digits and `_`), and its
    /// URL (no password: that is in [`Postgres::password_file`]). The server is this run's
    /// alone, so names need no run-unique part.
    pub async fn database(&self, name: &str) -> Result<String, Failed> {
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        // Two queries: a multi-statement one is a transaction, where these may not run.
        self.admin_query(&format!("DROP DATABASE IF EXISTS \"{name}\""))
            .await?;
        self.admin_query(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        Ok(format!("postgres://cubbi@127.0.0.1:{}/{name}", self.port))
    }

    /// Stops the server (a no-op when it has stopped).
    pub fn stop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}
