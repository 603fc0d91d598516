//! Projects on `cubbi serve` (`/v1/projects`): the in-process service on 127.0.0.1:0 with a
//! real SQLite database, driven over raw HTTP (answers validated against the served OpenAPI
//! document) and through `cubbi -r test project ...`. None of these boot a session, so the
//! service runs on a host without Docker: only its project store is real.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use cubbi::service::config::{SecretText, ServiceConfig};
use cubbi::service::projects::ServiceProjects;
use cubbi::service::store::{SqliteStore, Store};
use cubbi::service::{RunningService, ServeError};
use libtest_mimic::{Failed, Trial};
use serde_json::{Value, json};

use crate::support::projects_host::{ProjectsHost, subscriber_into};
use crate::support::{Cubbi, TestHome};

pub fn tests() -> Vec<Trial> {
    // Named *without_sysbox so that they run outside the Sysbox kit: they need neither.
    crate::trials![
        projects_crud_over_http_per_user_and_no_secret_leaks_without_sysbox,
        projects_wrong_storage_key_on_restart_is_a_clear_error_without_sysbox,
        projects_per_user_are_capped_without_sysbox,
        projects_cli_drives_the_service_like_the_local_store_without_sysbox,
    ]
}

const TOKEN: &str = "glpat-S3cretT0ken_value.42";
const HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

/// Every log line of this test process, whichever test wrote it.
fn log_buffer() -> Arc<Mutex<Vec<u8>>> {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUFFER
        .get_or_init(|| {
            let buffer = Arc::new(Mutex::new(Vec::new()));
            let subscriber = subscriber_into(&buffer);
            // Another test may have set one first; then nothing is captured and the log
            // checks below see an empty log, which the test asserts against.
            let _ = tracing::subscriber::set_global_default(subscriber);
            buffer
        })
        .clone()
}

struct Service {
    url: String,
    store: Arc<SqliteStore>,
    running: Option<RunningService>,
    config: ServiceConfig,
}

impl Service {
    async fn start(config: ServiceConfig) -> Result<Self, Failed> {
        let store = Arc::new(SqliteStore::open(&config.state_dir)?);
        let projects = ServiceProjects::open(&config)
            .map_err(|err| Failed::from(format!("projects: {err}")))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let running = cubbi::service::start(
            listener,
            ProjectsHost { projects },
            Arc::clone(&store) as Arc<dyn Store>,
            &config,
        )
        .map_err(|err: ServeError| Failed::from(err.to_string()))?;
        Ok(Self {
            url: format!("http://{}", running.address),
            store,
            running: Some(running),
            config,
        })
    }

    fn token(&self, user: &str) -> Result<String, Failed> {
        Ok(self.store.issue_token(user, Some(false))?.1)
    }

    async fn stop(&mut self) -> Result<(), Failed> {
        if let Some(running) = self.running.take() {
            running.stop().await?;
        }
        Ok(())
    }
}

fn config(state: &std::path::Path, key_byte: &str) -> ServiceConfig {
    let mut config = ServiceConfig {
        state_dir: state.to_path_buf(),
        ..ServiceConfig::default()
    };
    config.server.shutdown_grace = 2;
    config.projects.storage.key = Some(SecretText(key_byte.repeat(32)));
    config
}

fn runtime() -> Result<tokio::runtime::Runtime, Failed> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// The OpenAPI document the service serves, to validate answers against.
struct Document(Value);

impl Document {
    fn check(&self, method: &str, path: &str, status: u16, body: &Value) -> Result<(), Failed> {
        let schema = &self.0["paths"][path][method]["responses"][status.to_string()]["content"]["application/json"]
            ["schema"];
        if schema.is_null() {
            return Err(
                format!("the document has no {status} JSON answer for {method} {path}").into(),
            );
        }
        let mut rooted = schema.clone();
        rooted["components"] = self.0["components"].clone();
        let validator = jsonschema::validator_for(&rooted)
            .map_err(|err| format!("{method} {path} {status}: {err}"))?;
        validator
            .validate(body)
            .map_err(|err| format!("{method} {path} {status}: {err}; body {body}"))?;
        Ok(())
    }
}

/// One raw request; its answer checked against the document and kept for the leak check.
struct Client<'a> {
    http: reqwest::Client,
    base: &'a str,
    document: Document,
    seen: Mutex<Vec<String>>,
}

impl Client<'_> {
    async fn call(
        &self,
        (method, template, path): (&str, &str, &str),
        token: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), Failed> {
        let mut request = self
            .http
            .request(
                method.to_uppercase().parse()?,
                format!("{}{path}", self.base),
            )
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(text.clone());
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        self.document.check(method, template, status, &body)?;
        Ok((status, body))
    }
}

/// Long lines of the key's PEM body: finding one anywhere means the key leaked.
fn secret_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|line| !line.starts_with("-----") && line.len() >= 20)
        .map(str::to_string)
        .collect()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

fn projects_crud_over_http_per_user_and_no_secret_leaks_without_sysbox() -> Result<(), Failed> {
    let logs = log_buffer();
    let state = tempfile::tempdir()?;
    let key = cubbi::ssh::keys::generate("deploy")?;
    let pem = cubbi::ssh::keys::private_openssh(&key)?;
    runtime()?.block_on(async {
        let mut service = Service::start(config(state.path(), "ab")).await?;
        let alice = service.token("alice")?;
        let bob = service.token("bob")?;
        let http = reqwest::Client::new();
        let document: Value = http
            .get(format!("{}/v1/openapi.json", service.url))
            .bearer_auth(&alice)
            .send()
            .await?
            .json()
            .await?;
        let base = service.url.clone();
        let client = Client {
            http,
            base: &base,
            document: Document(document),
            seen: Mutex::new(Vec::new()),
        };
        const LIST: (&str, &str, &str) = ("post", "/v1/projects", "/v1/projects");
        let one =
            |method: &'static str, path: &'static str| (method, "/v1/projects/{reference}", path);

        // No token, no projects.
        let response = client
            .http
            .get(format!("{}/v1/projects", service.url))
            .send()
            .await?;
        assert_eq!(response.status(), 401);

        let (status, added) = client
            .call(
                LIST,
                &alice,
                Some(json!({"url": "git@github.com:Org/Repo.git", "credential": {"ssh_key": pem}})),
            )
            .await?;
        assert_eq!(status, 201, "{added}");
        assert_eq!(added["id"], "github.com/Org/Repo");
        assert_eq!(added["name"], "repo");
        assert_eq!(added["credential"]["kind"], "ssh_key");
        assert!(
            added["credential"]["fingerprint"]
                .as_str()
                .is_some_and(|f| f.starts_with("SHA256:"))
        );
        let (status, tokened) = client
            .call(
                LIST,
                &alice,
                Some(json!({"url": "https://gitlab.com/team/app", "name": "app",
                    "token_user": "oauth2", "credential": {"token": TOKEN}, "branch": "dev"})),
            )
            .await?;
        assert_eq!(status, 201, "{tokened}");
        assert_eq!(
            tokened["credential"],
            json!({"kind": "token", "username": "oauth2", "token": "set"})
        );

        // An SSH host the service knows no key of: the caller must bring it.
        let custom = "ssh://git@git.example.com:2222/o/r";
        let (status, refused) = client
            .call(
                LIST,
                &alice,
                Some(json!({"url": custom, "credential": {"ssh_key": pem}})),
            )
            .await?;
        assert_eq!(status, 400, "{refused}");
        assert_eq!(refused["error"]["code"], "invalid");
        assert!(
            refused["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("host_keys") && m.contains("never scans")),
            "{refused}"
        );
        let (status, with_key) = client
            .call(
                LIST,
                &alice,
                Some(
                    json!({"url": custom, "credential": {"ssh_key": pem}, "host_keys": [HOST_KEY]}),
                ),
            )
            .await?;
        assert_eq!(status, 201, "{with_key}");
        assert_eq!(with_key["host_keys"][0]["source"], "project");
        assert_eq!(with_key["host_keys"][0]["host"], "[git.example.com]:2222");

        // Refusals, each with its stable code.
        for (body, status, code) in [
            (json!({"url": "github.com/Org/Repo"}), 409, "conflict"),
            (
                json!({"url": "github.com/other/x", "name": "app"}),
                409,
                "conflict",
            ),
            (json!({"url": "file:///etc/passwd"}), 400, "invalid"),
            (
                json!({"url": "github.com/o/n", "name": "Bad Name"}),
                400,
                "invalid",
            ),
            (
                json!({"url": "github.com/o/n", "surprise": 1}),
                400,
                "invalid",
            ),
            (
                json!({"url": "github.com/o/n", "credential": {"token": "has space"}}),
                400,
                "invalid",
            ),
            (
                json!({"url": "github.com/o/n", "credential": {"ssh_key": "not a key"}}),
                400,
                "invalid",
            ),
            (
                json!({"url": "github.com/o/n", "credential": {"password": TOKEN}}),
                400,
                "invalid",
            ),
            (
                json!({"url": "github.com/o/n", "credential": TOKEN}),
                400,
                "invalid",
            ),
        ] {
            let (got, answer) = client.call(LIST, &alice, Some(body.clone())).await?;
            assert_eq!(
                (got, answer["error"]["code"].as_str()),
                (status, Some(code)),
                "{body}: {answer}"
            );
        }

        let (status, listed) = client
            .call(("get", "/v1/projects", "/v1/projects"), &alice, None)
            .await?;
        assert_eq!(status, 200);
        let names: Vec<&str> = listed
            .as_array()
            .ok_or("a list")?
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(names, vec!["app", "r", "repo"]);

        for path in ["/v1/projects/github.com%2FOrg%2FRepo", "/v1/projects/repo"] {
            let (status, shown) = client.call(one("get", path), &alice, None).await?;
            assert_eq!(
                (status, &shown["id"]),
                (200, &json!("github.com/Org/Repo")),
                "{path}"
            );
            // Another user: as if it did not exist, by id and by name.
            let (status, hidden) = client.call(one("get", path), &bob, None).await?;
            assert_eq!(
                (status, &hidden["error"]["code"]),
                (404, &json!("not_found")),
                "{path}"
            );
            let (status, _) = client
                .call(one("put", path), &bob, Some(json!({"name": "mine"})))
                .await?;
            assert_eq!(status, 404);
            let (status, _) = client.call(one("delete", path), &bob, None).await?;
            assert_eq!(status, 404);
        }
        let (status, bobs) = client
            .call(("get", "/v1/projects", "/v1/projects"), &bob, None)
            .await?;
        assert_eq!((status, bobs), (200, json!([])));
        // Bob may register the same repository under the same name: it is his own.
        let (status, _) = client
            .call(LIST, &bob, Some(json!({"url": "github.com/Org/Repo"})))
            .await?;
        assert_eq!(status, 201);

        let (status, renamed) = client
            .call(
                one("put", "/v1/projects/repo"),
                &alice,
                Some(json!({"name": "renamed", "branch": "main"})),
            )
            .await?;
        assert_eq!(
            (status, &renamed["name"], &renamed["branch"]),
            (200, &json!("renamed"), &json!("main")),
            "{renamed}"
        );
        let (status, taken) = client
            .call(
                one("put", "/v1/projects/renamed"),
                &alice,
                Some(json!({"name": "app"})),
            )
            .await?;
        assert_eq!((status, &taken["error"]["code"]), (409, &json!("conflict")));
        let (status, retoken) = client
            .call(
                one("put", "/v1/projects/app"),
                &alice,
                Some(json!({"credential": {"token": format!("{TOKEN}-2")}, "branch": null})),
            )
            .await?;
        assert_eq!(status, 200, "{retoken}");
        assert_eq!(
            retoken["credential"]["username"], "oauth2",
            "a new token keeps its user"
        );
        assert_eq!(retoken["branch"], Value::Null);
        let (status, public) = client
            .call(
                one("put", "/v1/projects/app"),
                &alice,
                Some(json!({"credential": null})),
            )
            .await?;
        assert_eq!(
            (status, &public["credential"]["kind"]),
            (200, &json!("none"))
        );

        let (status, removed) = client
            .call(one("delete", "/v1/projects/renamed"), &alice, None)
            .await?;
        assert_eq!(
            (status, &removed["id"]),
            (200, &json!("github.com/Org/Repo"))
        );
        let (status, _) = client
            .call(one("get", "/v1/projects/renamed"), &alice, None)
            .await?;
        assert_eq!(status, 404);
        // Bob's project of the same id is untouched.
        let (status, _) = client
            .call(
                one("get", "/v1/projects/github.com%2FOrg%2FRepo"),
                &bob,
                None,
            )
            .await?;
        assert_eq!(status, 200);

        service.stop().await?;
        // Secrets went up and never came down: not in any answer, not in the log, not in
        // the database in clear.
        let seen = client
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n");
        let log = logs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert!(
            contains(&log, "/v1/projects"),
            "the service's log was not captured, so it proves nothing"
        );
        let mut database = std::fs::read(state.path().join("cubbi.db"))?;
        database.extend(std::fs::read(state.path().join("cubbi.db-wal")).unwrap_or_default());
        let mut secrets = secret_lines(&pem);
        secrets.push(TOKEN.to_string());
        // The key's armour, in clear, would be a key stored unsealed (answers may name the
        // format in a hint, so only the database is checked for it).
        assert!(
            !contains(&database, "PRIVATE KEY"),
            "cubbi.db holds a key in clear"
        );
        for secret in &secrets {
            assert!(
                !seen.contains(secret.as_str()),
                "an answer holds a secret: {secret}"
            );
            assert!(!contains(&log, secret), "the log holds a secret: {secret}");
            assert!(
                !contains(&database, secret),
                "cubbi.db holds a secret in clear: {secret}"
            );
        }
        Ok(())
    })
}

/// `limits.projects_per_user`: past it an add is a 429 naming the limit, and nothing is added.
fn projects_per_user_are_capped_without_sysbox() -> Result<(), Failed> {
    let state = tempfile::tempdir()?;
    runtime()?.block_on(async {
        let mut config = config(state.path(), "cd");
        config.limits.projects_per_user = 1;
        let mut service = Service::start(config).await?;
        let alice = service.token("alice")?;
        let http = reqwest::Client::new();
        let add = |url: &'static str| {
            http.post(format!("{}/v1/projects", service.url))
                .bearer_auth(&alice)
                .json(&json!({ "url": url }))
                .send()
        };
        assert_eq!(add("https://gitlab.com/team/one").await?.status(), 201);
        let refused = add("https://gitlab.com/team/two").await?;
        assert_eq!(refused.status(), 429);
        let body: Value = refused.json().await?;
        assert_eq!(body["error"]["code"], "quota", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("limits.projects_per_user")),
            "{body}"
        );
        let listed: Value = http
            .get(format!("{}/v1/projects", service.url))
            .bearer_auth(&alice)
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
        service.stop().await
    })
}

fn projects_wrong_storage_key_on_restart_is_a_clear_error_without_sysbox() -> Result<(), Failed> {
    let state = tempfile::tempdir()?;
    runtime()?.block_on(async {
        let mut service = Service::start(config(state.path(), "11")).await?;
        let alice = service.token("alice")?;
        let answer = reqwest::Client::new()
            .post(format!("{}/v1/projects", service.url))
            .bearer_auth(&alice)
            .json(&json!({"url": "github.com/o/r", "credential": {"token": TOKEN}}))
            .send()
            .await?;
        assert_eq!(answer.status(), 201);
        service.stop().await?;
        let mut wrong = service.config.clone();
        wrong.projects.storage.key = Some(SecretText("22".repeat(32)));
        let err = match Service::start(wrong).await {
            Ok(_) => return Err("the service started with the wrong key".into()),
            Err(err) => err,
        };
        let message = format!("{err:?}");
        assert!(
            message.contains("projects.storage.key")
                && message.contains("does not open the credentials")
                && !message.contains("22222222"),
            "{message}"
        );
        // The right key still opens everything.
        let mut service = Service::start(service.config.clone()).await?;
        let listed: Value = reqwest::Client::new()
            .get(format!("{}/v1/projects", service.url))
            .bearer_auth(&alice)
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(listed[0]["credential"]["token"], "set");
        service.stop().await
    })
}

fn projects_cli_drives_the_service_like_the_local_store_without_sysbox() -> Result<(), Failed> {
    let state = tempfile::tempdir()?;
    let home = Arc::new(TestHome::new());
    let keys = tempfile::tempdir()?;
    let key = cubbi::ssh::keys::generate("deploy")?;
    let pem = cubbi::ssh::keys::private_openssh(&key)?;
    let key_path = keys.path().join("deploy");
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)?
            .write_all(pem.as_bytes())?;
    }
    let key_arg = key_path.to_str().ok_or("a UTF-8 path")?.to_string();
    runtime()?.block_on(async {
        let mut service = Service::start(config(state.path(), "33")).await?;
        let token = service.token("carol")?;
        let url = service.url.clone();
        let cli_home = Arc::clone(&home);
        let outcome = tokio::task::spawn_blocking(move || -> Result<(), Failed> {
            let cubbi = || Cubbi::new(&cli_home);
            cubbi()
                .args(["remote", "add", "test", &url])
                .run()
                .success();
            cubbi()
                // The test host serves no sessions, which `auth` would check.
                .args(["-r", "test", "auth", "--no-verify"])
                .stdin(format!("{token}\n"))
                .run()
                .success();
            let r = |args: &[&str]| {
                let mut all = vec!["-r", "test", "project"];
                all.extend_from_slice(args);
                cubbi().args(all)
            };
            r(&["list"]).run().success().stderr_contains("no projects");
            let added = r(&["add", "git@github.com:Org/Repo.git", "--ssh-key", &key_arg])
                .run()
                .success()
                .stderr_contains("added project repo (github.com/Org/Repo)");
            r(&[
                "add",
                "https://gitlab.com/team/app",
                "--name",
                "app",
                "--token-stdin",
                "--token-user",
                "oauth2",
            ])
            .stdin(format!("{TOKEN}\n"))
            .run()
            .success();
            r(&["add", "github.com/Org/Repo"])
                .run()
                .failure()
                .stderr_contains("already registered");
            // An unknown SSH host without a terminal: refused on the client, nothing sent.
            r(&["add", "ssh://git@git.example.com:2222/o/r"])
                .run()
                .failure()
                .stderr_contains("--host-key");
            r(&[
                "add",
                "ssh://git@git.example.com:2222/o/r",
                "--host-key",
                HOST_KEY,
            ])
            .run()
            .success();
            let listed = r(&["list"])
                .run()
                .success()
                .stdout_contains("app")
                .stdout_contains("repo");
            let json = cubbi()
                .args(["-r", "test", "--json", "project", "list"])
                .run()
                .success();
            let projects: Value = serde_json::from_str(&json.stdout())?;
            assert_eq!(projects.as_array().map(Vec::len), Some(3), "{projects}");
            assert_eq!(projects[0]["credential"]["token"], "set");
            let shown = r(&["show", "github.com/Org/Repo"])
                .run()
                .success()
                .stdout_contains("public key:  ssh-ed25519")
                .stdout_contains("stored on:   the cubbi service `test`");
            let shown_json = cubbi()
                .args(["-r", "test", "--json", "project", "show", "r"])
                .run()
                .success();
            let custom: Value = serde_json::from_str(&shown_json.stdout())?;
            assert_eq!(custom["host_keys"][0]["source"], "project");
            r(&["update", "repo", "--name", "renamed", "--branch", "main"])
                .run()
                .success()
                .stderr_contains("updated project renamed");
            r(&["update", "renamed", "--name", "app"])
                .run()
                .failure()
                .stderr_contains("taken");
            r(&["remove", "renamed"])
                .run()
                .success()
                .stderr_contains("removed project renamed");
            r(&["show", "renamed"])
                .run()
                .failure()
                .stderr_contains("no project matches");
            // Nothing was stored on this machine.
            assert!(!cli_home.path().join(".local/share/cubbi/projects").exists());
            let mut output = String::new();
            for ran in [&added, &listed, &json, &shown, &shown_json] {
                output.push_str(&ran.stdout());
                output.push_str(&ran.stderr());
            }
            for secret in secret_lines(&pem).iter().map(String::as_str).chain([TOKEN]) {
                assert!(!output.contains(secret), "the CLI printed a secret");
            }
            Ok(())
        })
        .await?;
        service.stop().await?;
        outcome
    })
}
