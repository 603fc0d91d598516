//! OpenID Connect login on `cubbi serve` against a real provider (panva's oidc-provider, see
//! support::oidc_provider): the in-process service on 127.0.0.1:0 with a real SQLite store
//! and project store (no Docker: no session is booted; isolation shows on projects), driven
//! through the real `cubbi -r team auth` device login and plain HTTP. The service's log is
//! captured (a subscriber on the test's own single-threaded runtime) and searched for tokens.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cubbi::service::config::{SecretText, ServiceConfig};
use cubbi::service::projects::ServiceProjects;
use cubbi::service::store::{SqliteStore, Store};
use cubbi::service::{RunningService, ServeError};
use libtest_mimic::{Failed, Trial};
use serde_json::{Value, json};

use crate::support::oidc_provider::{CLIENT_ID, OidcProvider};
use crate::support::projects_host::{ProjectsHost, subscriber_into};
use crate::support::{Cubbi, TestHome};

pub fn tests() -> Vec<Trial> {
    // Named *without_sysbox so that they run outside the Sysbox kit: they need neither.
    crate::trials![
        oidc_device_login_refresh_reuse_groups_and_logout_without_sysbox,
        oidc_provider_down_is_a_503_naming_it_without_sysbox,
        oidc_browser_login_pkce_state_cookies_and_csrf_without_sysbox,
    ]
}

struct Service {
    url: String,
    store: Arc<SqliteStore>,
    running: Option<RunningService>,
    state: tempfile::TempDir,
}

impl Service {
    /// The service with `[auth.oidc]` for `provider` plus `extra` lines in that section.
    async fn start(provider: &OidcProvider, extra: &str) -> Result<Self, Failed> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(listener, provider, extra).await
    }

    async fn start_on(
        listener: tokio::net::TcpListener,
        provider: &OidcProvider,
        extra: &str,
    ) -> Result<Self, Failed> {
        let state = tempfile::tempdir()?;
        let text = format!(
            "[auth.oidc]\nissuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\n\
             client_secret_file = \"{}\"\n{extra}\n",
            provider.issuer,
            provider.secret_file.display()
        );
        let mut config = ServiceConfig::parse(&text, Path::new("test.toml"))?;
        config.state_dir = state.path().to_path_buf();
        config.server.shutdown_grace = 2;
        config.projects.storage.key = Some(SecretText("7".repeat(64)));
        let store = Arc::new(SqliteStore::open(&config.state_dir)?);
        let projects = ServiceProjects::open(&config)
            .map_err(|err| Failed::from(format!("projects: {err}")))?;
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
            state,
        })
    }

    async fn stop(&mut self) -> Result<(), Failed> {
        if let Some(running) = self.running.take() {
            running.stop().await?;
        }
        Ok(())
    }
}

/// Runs `test` on a single-threaded runtime whose log goes to the returned buffer: every
/// task of the service runs on this thread, so its whole log is captured.
fn with_captured_log(
    test: impl std::future::Future<Output = Result<(), Failed>>,
) -> Result<String, Failed> {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let subscriber = subscriber_into(&buffer);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tracing::subscriber::with_default(subscriber, || runtime.block_on(test))?;
    let bytes = buffer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A CLI user: their home, and a `$BROWSER` that writes the URL it is asked to open into a
/// file instead (so the test plays the browser).
struct User {
    home: TestHome,
    opened: PathBuf,
    browser: PathBuf,
}

impl User {
    fn new(service: &Service) -> Result<Self, Failed> {
        let home = TestHome::new();
        let opened = home.path().join("opened-url");
        let browser = home.path().join("browser.sh");
        std::fs::write(
            &browser,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$1\" > '{}'\n",
                opened.display()
            ),
        )?;
        std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755))?;
        Cubbi::new(&home)
            .args(["remote", "add", "team", &service.url])
            .run()
            .success();
        Ok(Self {
            home,
            opened,
            browser,
        })
    }

    fn cubbi(&self) -> Cubbi {
        Cubbi::new(&self.home).env("BROWSER", &self.browser)
    }

    fn login_file(&self) -> PathBuf {
        self.home
            .path()
            .join(".config/cubbi/credentials/team.login.json")
    }

    fn stored(&self) -> Result<Value, Failed> {
        Ok(serde_json::from_slice(&std::fs::read(self.login_file())?)?)
    }

    /// Runs a CLI command off the runtime's thread (the service runs on it).
    async fn run(
        &self,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<crate::support::cli::Ran, Failed> {
        let mut cubbi = self.cubbi().args(args);
        if let Some(input) = stdin {
            cubbi = cubbi.stdin(input);
        }
        Ok(tokio::task::spawn_blocking(move || cubbi.run()).await?)
    }

    /// `cubbi -r team auth`, approved at the provider as `login`.
    async fn log_in(
        &self,
        provider: &OidcProvider,
        login: &str,
    ) -> Result<crate::support::cli::Ran, Failed> {
        let _ = std::fs::remove_file(&self.opened);
        let cubbi = self.cubbi().args(["-r", "team", "auth"]);
        let running = tokio::task::spawn_blocking(move || cubbi.run());
        let mut url = None;
        for _ in 0..150 {
            if let Ok(text) = std::fs::read_to_string(&self.opened)
                && !text.trim().is_empty()
            {
                url = Some(text.trim().to_string());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let url = url.ok_or("the CLI opened no browser within 15 s")?;
        let user_code = url
            .split("user_code=")
            .nth(1)
            .map(|code| code.replace("%2D", "-"))
            .unwrap_or_default();
        provider.approve_device(&url, &user_code, login).await?;
        let ran = tokio::time::timeout(Duration::from_secs(60), running)
            .await
            .map_err(|_| "the CLI did not finish the login within 60 s")??;
        Ok(ran)
    }
}

fn accounts(bob_groups: &[&str]) -> Value {
    json!({
        "alice": {"groups": ["dev", "admins"]},
        "bob": {"groups": bob_groups},
        "carol": {"groups": ["dev"]},
    })
}

fn oidc_device_login_refresh_reuse_groups_and_logout_without_sysbox() -> Result<(), Failed> {
    let provider = OidcProvider::start(&accounts(&["dev"]))?;
    let secret = std::fs::read_to_string(&provider.secret_file)?
        .trim()
        .to_string();
    let seen_tokens: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&seen_tokens);
    let log = with_captured_log(async move {
        let mut service = Service::start(
            &provider,
            "allowed_groups = [\"dev\"]\nadmin_groups = [\"admins\"]\naccess_lifetime = 3",
        )
        .await?;
        let http = reqwest::Client::new();
        let remember = |stored: &Value| {
            if let Ok(mut tokens) = seen.lock() {
                for key in ["access_token", "refresh_token"] {
                    if let Some(token) = stored[key].as_str() {
                        tokens.push(token.to_string());
                    }
                }
            }
        };

        // How to log in, for anyone.
        let config: Value = http
            .get(format!("{}/auth/config", service.url))
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(
            config["oidc"]["issuer"],
            provider.issuer.as_str(),
            "{config}"
        );
        assert_eq!(config["oidc"]["flows"], json!(["device"]));

        // Alice and bob log in with the device flow through the provider's own pages.
        let alice = User::new(&service)?;
        let ran = alice.log_in(&provider, "alice").await?;
        let ran = ran
            .success()
            .stderr_contains("enter the code")
            .stderr_contains("logged in to team as alice (admin)");
        let stored = alice.stored()?;
        remember(&stored);
        for key in ["access_token", "refresh_token"] {
            let token = stored[key].as_str().ok_or("a token in the login file")?;
            assert!(!ran.stderr().contains(token) && !ran.stdout().contains(token));
        }
        let mode = std::fs::metadata(alice.login_file())?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the login file's mode");
        let listed = alice
            .run(&["--json", "remote", "list"], None)
            .await?
            .success();
        let rows: Value = serde_json::from_str(&listed.stdout())?;
        assert_eq!(rows[0]["kind"], "login", "{rows}");
        assert_eq!(
            rows[0]["stored_in"],
            alice.login_file().display().to_string().as_str(),
            "{rows}"
        );

        let bob = User::new(&service)?;
        bob.log_in(&provider, "bob")
            .await?
            .success()
            .stderr_contains("logged in to team as bob")
            .stderr_lacks("(admin)");
        remember(&bob.stored()?);

        // Isolation: alice's project is hers alone. Every command refreshes first (the
        // access token lives 3 s, under the CLI's 30 s margin).
        alice
            .run(
                &[
                    "-r",
                    "team",
                    "project",
                    "add",
                    "https://gitlab.com/team/app",
                    "--name",
                    "app",
                    "--token-stdin",
                    "--token-user",
                    "oauth2",
                ],
                Some("glpat-NotARealToken_1234\n"),
            )
            .await?
            .success();
        remember(&alice.stored()?);
        alice
            .run(&["-r", "team", "project", "list"], None)
            .await?
            .success()
            .stdout_contains("app");
        bob.run(&["-r", "team", "project", "list"], None)
            .await?
            .success()
            .stderr_contains("no projects");
        remember(&bob.stored()?);

        // An expired access token is refused by the service; the CLI refreshes it unasked.
        let before = alice.stored()?;
        remember(&before);
        tokio::time::sleep(Duration::from_secs(4)).await;
        let old_access = before["access_token"].as_str().ok_or("an access token")?;
        let refused = http
            .get(format!("{}/v1/projects", service.url))
            .bearer_auth(old_access)
            .send()
            .await?;
        assert_eq!(refused.status(), 401, "an expired access token");
        alice
            .run(&["-r", "team", "project", "list"], None)
            .await?
            .success()
            .stdout_contains("app");
        let after = alice.stored()?;
        remember(&after);
        assert_ne!(after["access_token"], before["access_token"]);
        assert_ne!(after["refresh_token"], before["refresh_token"]);

        // Reusing a refresh token revokes its whole family: refresh once by hand, then the
        // CLI (which still holds the spent token) reuses it.
        let spent = after["refresh_token"].as_str().ok_or("a refresh token")?;
        let rotated: Value = http
            .post(format!("{}/auth/refresh", service.url))
            .json(&json!({"refresh_token": spent}))
            .send()
            .await?
            .json()
            .await?;
        remember(&rotated);
        let fresh_access = rotated["access_token"]
            .as_str()
            .ok_or("a rotated access token")?;
        let ok = http
            .get(format!("{}/v1/projects", service.url))
            .bearer_auth(fresh_access)
            .send()
            .await?;
        assert_eq!(ok.status(), 200);
        tokio::time::sleep(Duration::from_secs(1)).await;
        alice
            .run(&["-r", "team", "project", "list"], None)
            .await?
            .failure()
            .stderr_contains("already used")
            .stderr_contains("cubbi -r team auth");
        let revoked = http
            .get(format!("{}/v1/projects", service.url))
            .bearer_auth(fresh_access)
            .send()
            .await?;
        assert_eq!(
            revoked.status(),
            401,
            "the family's newest access token is revoked too"
        );
        assert!(!alice.login_file().exists(), "the ended login is forgotten");

        // A group change takes effect at the next refresh: bob leaves `dev`.
        provider.set_accounts(&accounts(&["guests"]))?;
        tokio::time::sleep(Duration::from_secs(4)).await;
        bob.run(&["-r", "team", "project", "list"], None)
            .await?
            .failure()
            .stderr_contains("not in any of the groups");

        // Logout: alice logs in again, then out; her tokens are dead.
        alice
            .log_in(&provider, "alice")
            .await?
            .success()
            .stderr_contains("logged in to team as alice");
        let first = alice.stored()?;
        remember(&first);
        // Logging in again ends the login made before.
        alice
            .log_in(&provider, "alice")
            .await?
            .success()
            .stderr_lacks("could not be revoked");
        let replaced = http
            .post(format!("{}/auth/refresh", service.url))
            .json(&json!({"refresh_token": first["refresh_token"]}))
            .send()
            .await?;
        assert_eq!(replaced.status(), 401, "the replaced login's refresh token");
        let stored = alice.stored()?;
        remember(&stored);
        alice
            .run(&["-r", "team", "auth", "--logout"], None)
            .await?
            .success()
            .stderr_contains("logged out of team");
        assert!(!alice.login_file().exists());
        for key in ["access_token", "refresh_token"] {
            let token = stored[key].as_str().ok_or("a token")?;
            let status = if key == "access_token" {
                http.get(format!("{}/v1/projects", service.url))
                    .bearer_auth(token)
                    .send()
                    .await?
                    .status()
            } else {
                http.post(format!("{}/auth/refresh", service.url))
                    .json(&json!({"refresh_token": token}))
                    .send()
                    .await?
                    .status()
            };
            assert_eq!(status, 401, "{key} after logout");
        }

        // The provider's refresh tokens are sealed in the database, never kept as given.
        let db = rusqlite::Connection::open(service.state.path().join("cubbi.db"))?;
        let sealed: Vec<String> = db
            .prepare(
                "SELECT provider_refresh FROM oidc_families WHERE provider_refresh IS NOT NULL",
            )?
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        assert!(
            sealed.len() >= 3,
            "{} families with a provider token",
            sealed.len()
        );
        for value in &sealed {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD.decode(value)?;
            // A 24-byte nonce and a 16-byte tag around the token.
            assert!(bytes.len() > 40, "not sealed: {} bytes", bytes.len());
        }
        drop(db);

        // API tokens keep working beside the logins.
        let (_, api) = service.store.issue_token("carol", Some(false))?;
        if let Ok(mut tokens) = seen.lock() {
            tokens.push(api.clone());
        }
        let ok = http
            .get(format!("{}/v1/projects", service.url))
            .bearer_auth(&api)
            .send()
            .await?;
        assert_eq!(ok.status(), 200);
        service.stop().await?;
        Ok(())
    })?;
    let tokens = seen_tokens.lock().map(|t| t.clone()).unwrap_or_default();
    assert!(tokens.len() >= 10, "{} tokens seen", tokens.len());
    assert!(
        log.contains("logged in with OpenID Connect"),
        "the log was captured: {log}"
    );
    for token in tokens.iter().chain([&secret]) {
        assert!(
            !log.contains(token.as_str()),
            "a token or secret is in the service's log"
        );
    }
    Ok(())
}

fn oidc_provider_down_is_a_503_naming_it_without_sysbox() -> Result<(), Failed> {
    let mut provider = OidcProvider::start(&accounts(&["dev"]))?;
    with_captured_log(async move {
        let mut service = Service::start(&provider, "admin_groups = [\"admins\"]").await?;
        let http = reqwest::Client::new();
        // Up: a device login starts.
        let started = http
            .post(format!("{}/auth/login", service.url))
            .json(&json!({"flow": "device"}))
            .send()
            .await?;
        assert_eq!(started.status(), 200);
        let started: Value = started.json().await?;
        assert!(
            started["user_code"].is_string() && started["handle"].is_string(),
            "{started}"
        );
        // A login approved at the provider arrives at the next poll (or the one after).
        let url = started["verification_uri_complete"]
            .as_str()
            .ok_or("a complete verification URI")?;
        let code = started["user_code"].as_str().ok_or("a user code")?;
        provider.approve_device(url, code, "bob").await?;
        let mut tokens = Value::Null;
        for _ in 0..30 {
            let polled = http
                .post(format!("{}/auth/login/poll", service.url))
                .json(&json!({"handle": started["handle"]}))
                .send()
                .await?;
            let status = polled.status();
            let body: Value = polled.json().await?;
            if status == 200 {
                tokens = body;
                break;
            }
            assert_eq!(status, 202, "{body}");
            assert_eq!(body["status"], "pending");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(tokens["user"], "bob", "{tokens}");
        // Handed out once.
        let again = http
            .post(format!("{}/auth/login/poll", service.url))
            .json(&json!({"handle": started["handle"]}))
            .send()
            .await?;
        assert_eq!(again.status(), 404);
        assert_eq!(tokens["admin"], false, "{tokens}");

        // Admin follows admin_groups at the next refresh.
        let mut promoted = accounts(&["dev"]);
        promoted["bob"]["groups"] = json!(["dev", "admins"]);
        provider.set_accounts(&promoted)?;
        let refreshed: Value = http
            .post(format!("{}/auth/refresh", service.url))
            .json(&json!({"refresh_token": tokens["refresh_token"]}))
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(refreshed["admin"], true, "{refreshed}");
        assert_ne!(refreshed["refresh_token"], tokens["refresh_token"]);
        let tokens = refreshed;

        // Down: a login and a refresh answer 503 with a body naming the provider.
        provider.stop();
        for (path, body) in [
            ("/auth/login", json!({"flow": "device"})),
            (
                "/auth/refresh",
                json!({"refresh_token": tokens["refresh_token"]}),
            ),
        ] {
            let answer = http
                .post(format!("{}{path}", service.url))
                .json(&body)
                .send()
                .await?;
            assert_eq!(answer.status(), 503, "{path}");
            let error: Value = answer.json().await?;
            assert_eq!(error["error"]["code"], "unavailable", "{error}");
            let message = error["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(&provider.issuer), "{path}: {message}");
        }
        // The refresh token was not spent by the failed refresh: the family still stands.
        let access = tokens["access_token"].as_str().ok_or("an access token")?;
        let ok = http
            .get(format!("{}/v1/projects", service.url))
            .bearer_auth(access)
            .send()
            .await?;
        assert_eq!(ok.status(), 200);
        service.stop().await?;
        Ok(())
    })?;
    Ok(())
}

fn oidc_browser_login_pkce_state_cookies_and_csrf_without_sysbox() -> Result<(), Failed> {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let secrets = Arc::clone(&seen);
    let log = with_captured_log(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let callback = format!("{base}/auth/callback");
        let provider = OidcProvider::start_with_redirect(&accounts(&["dev"]), Some(&callback))?;
        let mut service = Service::start_on(
            listener,
            &provider,
            &format!("redirect_url = \"{callback}\"\nallowed_groups = [\"dev\"]"),
        )
        .await?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let config: Value = http
            .get(format!("{}/auth/config", service.url))
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(
            config["oidc"]["flows"],
            json!(["device", "browser"]),
            "{config}"
        );

        // The authorize URL carries PKCE (S256), a state and a nonce.
        // Starting a login gives the authorize URL, and the browser a cookie binding the
        // callback to it.
        let start = |http: reqwest::Client, url: String| async move {
            let answer = http
                .post(format!("{url}/auth/login"))
                .json(&json!({"flow": "browser"}))
                .send()
                .await?;
            let cookie = answer
                .headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|value| value.to_str().ok())
                .find_map(|line| line.strip_prefix("cubbi_login="))
                .and_then(|rest| rest.split(';').next())
                .ok_or("a cubbi_login cookie")?
                .to_string();
            let started: Value = answer.json().await?;
            let authorize = started["authorize_url"]
                .as_str()
                .ok_or("an authorize URL")?
                .to_string();
            Ok::<_, Failed>((authorize, vec![("cubbi_login".to_string(), cookie)]))
        };
        let (authorize, login_cookie) = start(http.clone(), service.url.clone()).await?;
        for part in [
            "code_challenge=",
            "code_challenge_method=S256",
            "state=",
            "nonce=",
        ] {
            assert!(authorize.contains(part), "{part} missing: {authorize}");
        }

        // Alice logs in in the browser; the callback sets the login cookies.
        let outcome = provider
            .approve_browser(&authorize, "alice", &login_cookie)
            .await?;
        let session: Value = serde_json::from_str(&outcome.body)
            .map_err(|err| format!("{err}: {}", outcome.body))?;
        assert_eq!(session["user"], "alice", "{session}");
        assert!(
            session.get("access_token").is_none(),
            "no token in the body"
        );
        let access = outcome
            .cookies
            .get("cubbi_access")
            .ok_or("the access cookie")?;
        let csrf = outcome.cookies.get("cubbi_csrf").ok_or("the CSRF cookie")?;
        let access_line = outcome
            .set_cookie_lines
            .iter()
            .find(|line| line.starts_with("cubbi_access="))
            .ok_or("a Set-Cookie for the access token")?;
        assert!(
            access_line.contains("HttpOnly") && access_line.contains("SameSite=Strict"),
            "{access_line}"
        );
        assert!(!access_line.contains("Secure"), "plain http: {access_line}");
        let cookies = format!("cubbi_access={access}; cubbi_csrf={csrf}");

        // The cookie authenticates reads; changes need the CSRF header too.
        let read = http
            .get(format!("{}/v1/projects", service.url))
            .header("cookie", &cookies)
            .send()
            .await?;
        assert_eq!(read.status(), 200);
        let forged = http
            .post(format!("{}/v1/projects", service.url))
            .header("cookie", &cookies)
            .json(&json!({}))
            .send()
            .await?;
        assert_eq!(forged.status(), 401);
        let body: Value = forged.json().await?;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("X-CSRF-Token"),
            "{body}"
        );
        let with_header = http
            .post(format!("{}/v1/projects", service.url))
            .header("cookie", &cookies)
            .header("x-csrf-token", csrf.as_str())
            .json(&json!({}))
            .send()
            .await?;
        assert_eq!(
            with_header.status(),
            400,
            "past the CSRF check, refused as a bad body"
        );

        // A callback with a state this service did not make, or a replayed one, is refused.
        // (The login cookie matches the state each time, so the state itself is refused.)
        let used_state = reqwest::Url::parse(&outcome.url)?
            .query_pairs()
            .find(|(name, _)| name == "state")
            .map(|(_, value)| value.into_owned())
            .ok_or("a state in the callback URL")?;
        for (url, state) in [
            (
                format!("{}/auth/callback?code=abc&state=forged", service.url),
                "forged".to_string(),
            ),
            (outcome.url.clone(), used_state),
        ] {
            let answer = http
                .get(&url)
                .header("cookie", format!("cubbi_login={state}"))
                .send()
                .await?;
            assert_eq!(answer.status(), 400, "{url}");
            let body: Value = answer.json().await?;
            assert_eq!(body["error"]["code"], "invalid", "{body}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("state is unknown"), "{message}");
        }

        // A callback in a browser that did not start the login (login CSRF) is refused.
        let (authorize, _) = start(http.clone(), service.url.clone()).await?;
        let Err(err) = provider.approve_browser(&authorize, "alice", &[]).await else {
            return Err("a callback without the login cookie was accepted".into());
        };
        let message = err.message().unwrap_or_default().to_string();
        assert!(message.contains("did not start this login"), "{message}");

        // Logout by cookie needs the CSRF header too; then the cookie is dead.
        let refused = http
            .post(format!("{}/auth/logout", service.url))
            .header("cookie", &cookies)
            .send()
            .await?;
        assert_eq!(refused.status(), 401);
        let out = http
            .post(format!("{}/auth/logout", service.url))
            .header("cookie", &cookies)
            .header("x-csrf-token", csrf.as_str())
            .send()
            .await?;
        assert_eq!(out.status(), 200);
        let cleared: Vec<String> = out
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|value| value.to_str().ok().map(String::from))
            .collect();
        assert!(
            cleared
                .iter()
                .any(|line| line.starts_with("cubbi_access=;") && line.contains("Max-Age=0")),
            "{cleared:?}"
        );
        let after = http
            .get(format!("{}/v1/projects", service.url))
            .header("cookie", &cookies)
            .send()
            .await?;
        assert_eq!(after.status(), 401);

        // carol already exists as an API-token user: her provider identity is refused, not
        // merged into that user.
        let (_, carols_api_token) = service.store.issue_token("carol", Some(false))?;
        let (authorize, login_cookie) = start(http.clone(), service.url.clone()).await?;
        let refused = provider
            .approve_browser(&authorize, "carol", &login_cookie)
            .await;
        let Err(err) = refused else {
            return Err("carol's login was accepted over an existing user".into());
        };
        let message = err.message().unwrap_or_default().to_string();
        assert!(
            message.contains("409") && message.contains("never merged"),
            "{message}"
        );
        let still = http
            .get(format!("{}/v1/projects", service.url))
            .bearer_auth(&carols_api_token)
            .send()
            .await?;
        assert_eq!(still.status(), 200, "the API token user is untouched");
        service.stop().await?;
        let code = reqwest::Url::parse(&outcome.url)?
            .query_pairs()
            .find(|(name, _)| name == "code")
            .map(|(_, value)| value.into_owned())
            .ok_or("a code in the callback URL")?;
        if let Ok(mut secrets) = secrets.lock() {
            secrets.extend([access.clone(), csrf.clone(), code]);
            secrets.extend(outcome.cookies.get("cubbi_refresh").cloned());
        }
        Ok(())
    })?;
    let secrets = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(secrets.len(), 4, "the login's secrets were collected");
    assert!(
        log.contains("logged in with OpenID Connect"),
        "the log was captured: {log}"
    );
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "a token, code or cookie is in the service's log"
        );
    }
    Ok(())
}
