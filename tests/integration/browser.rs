//! The web page in a real browser: headless Chromium (the system's /usr/bin/chromium, driven
//! by playwright-core from tests/fixtures/browser/drive.mjs) against the real `cubbi serve` on
//! 127.0.0.1:0 and a real OpenID provider (tests/fixtures/oidc-provider). The driver signs in
//! through the provider's pages, sees the form say a failed `/v1/images` (a 503 it fakes with
//! `page.route`) and an empty `/v1/runtimes`, checks the Runtime choice is exactly what the
//! service allows, creates a session from the form, uses its terminal (42,
//! resize, reload back into the same shell), signs in again in another tab with a pasted API
//! token (into the same shell, through a ticket), opens another user's session (a 404 page and a
//! refused WebSocket), tries a cross-origin WebSocket, saves a screenshot and closes the
//! session from the list; the test then asks the API whether the session is gone.
//!
//! Without Chromium, Node or the fixture the test is listed as ignored, except under
//! `CI=true`, where it fails saying what is missing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use cubbi::api::{Backend, Quiet};
use cubbi::service::config::ServiceConfig;
use libtest_mimic::{Failed, Trial};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::docker_test;
use crate::support::oidc_provider::{CLIENT_ID, OidcProvider};
use crate::support::service::{TestService, user};
use crate::support::sysbox::SessionRuntime;

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser scenario (a session boots in it).
const DRIVER_TIMEOUT: Duration = Duration::from_secs(600);

pub fn tests() -> Vec<Trial> {
    let ci = std::env::var("CI").is_ok_and(|value| value == "true");
    crate::trials![browser_signs_in_creates_uses_and_closes_a_session]
        .into_iter()
        .map(|trial| {
            // Elsewhere than CI a host without a browser lists the test as ignored (never a
            // silent pass); under CI the test runs and fails naming what is missing.
            let ignored = !ci && missing().is_some();
            trial.with_ignored_flag(ignored)
        })
        .collect()
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/browser")
}

/// What this host lacks for the test, if anything.
fn missing() -> Option<String> {
    let mut lacking = Vec::new();
    if !Path::new(CHROMIUM).is_file() {
        lacking.push(format!(
            "{CHROMIUM} (Debian's `chromium` package; install/test.sh installs it)"
        ));
    }
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|status| status.success()) {
        lacking.push("node (Node 20 or later)".to_string());
    }
    if !fixture_dir()
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        lacking.push(format!(
            "playwright-core in {0} (`npm ci --prefix {0}`; install/test.sh runs it)",
            fixture_dir().display()
        ));
    }
    let provider = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/oidc-provider/node_modules/oidc-provider");
    if !provider.is_dir() {
        lacking.push(format!(
            "the OpenID provider fixture ({}; install/test.sh runs npm ci there)",
            provider.display()
        ));
    }
    (!lacking.is_empty()).then(|| lacking.join(", "))
}

/// Where the test's screenshot goes (kept after the run).
fn artifacts_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("test-artifacts")
        .join("browser")
}

/// The driver's output: each line as it came, and its exit status. `on_line` sees each line as
/// it comes.
async fn drive(
    envs: &[(&str, String)],
    mut on_line: impl FnMut(&str) -> Result<(), Failed>,
) -> Result<(Vec<String>, bool), Failed> {
    let mut command = tokio::process::Command::new("node");
    command
        .arg(fixture_dir().join("drive.mjs"))
        .current_dir(fixture_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in envs {
        command.env(name, value);
    }
    let mut child = command
        .spawn()
        .map_err(|err| format!("cannot run node: {err}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let errors = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(format!("stderr: {line}"));
        }
        seen
    });
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let outcome = tokio::time::timeout(DRIVER_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            // As it comes, so a slow step shows where it is.
            eprintln!("browser: {line}");
            on_line(&line)?;
            seen.push(line);
        }
        Ok::<_, Failed>(child.wait().await?)
    })
    .await;
    let status = match outcome {
        Ok(status) => status?,
        Err(_) => {
            seen.push(format!(
                "the driver did not finish within {DRIVER_TIMEOUT:?}"
            ));
            return Ok((seen, false));
        }
    };
    seen.extend(errors.await.unwrap_or_default());
    Ok((seen, status.success()))
}

fn browser_signs_in_creates_uses_and_closes_a_session() -> Result<(), Failed> {
    if let Some(lacking) = missing() {
        return Err(format!("the browser test cannot run: this host lacks {lacking}").into());
    }
    docker_test("browser", |scope| async move {
        let started = Instant::now();
        scope.ensure_image("base").await?;
        let runtime = SessionRuntime::of_this_run();

        // The service's URL first: the provider is told where its callback is.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let callback = format!("{base}/auth/callback");
        let alice = user(&scope, "alice");
        let bob = user(&scope, "bob");
        let provider = OidcProvider::start_with_redirect(
            &json!({ alice.clone(): {"groups": ["dev"]} }),
            Some(&callback),
        )?;
        let auth = ServiceConfig::parse(
            &format!(
                "[auth.oidc]\nissuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\n\
                 client_secret_file = \"{}\"\nredirect_url = \"{callback}\"\n",
                provider.issuer,
                provider.secret_file.display()
            ),
            Path::new("browser-test.toml"),
        )?
        .auth;
        let mut service = TestService::start_on(&scope, listener, |config| {
            config.auth = auth;
        })
        .await?;
        assert_eq!(service.url, base);

        // Bob's session, whose id Alice puts in the URL.
        let bob_token = service.token(&bob, false)?;
        let bobs = service
            .client(&bob_token)?
            .create(crate::serve::spec("not-alices"), &Quiet)
            .await?;

        // Alice's API token for the page's token sign-in, made once her OpenID login has
        // claimed her name (the service refuses a login for a name an API token user has),
        // into a 0600 file the driver waits for.
        let secrets = tempfile::tempdir()?;
        let token_file = secrets.path().join("token");
        let mut alice_token = None;
        let (lines, passed) = drive(
            &[
                ("CUBBI_TOKEN_FILE", token_file.display().to_string()),
                ("CUBBI_URL", service.url.clone()),
                ("CUBBI_LOGIN", alice.clone()),
                ("CUBBI_IMAGE", "base".to_string()),
                (
                    "CUBBI_RUNTIME",
                    match runtime {
                        SessionRuntime::Sysbox => String::new(),
                        SessionRuntime::UnsafeRunc => "runc".to_string(),
                    },
                ),
                // What GET /v1/runtimes offers here: Sysbox where the engine has it, else runc,
                // which the test service allows only on a host without Sysbox.
                ("CUBBI_RUNTIMES", runtime.runtime_name().to_string()),
                ("CUBBI_OTHER_SESSION", bobs.id.clone()),
                ("CUBBI_ARTIFACTS", artifacts_dir().display().to_string()),
                ("CUBBI_CHROMIUM", CHROMIUM.to_string()),
            ],
            |line| {
                if line == "ok: sign in through the OpenID provider" {
                    let token = service.token(&alice, false)?;
                    let temp = secrets.path().join("token.new");
                    std::fs::write(&temp, &token)?;
                    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))?;
                    std::fs::rename(&temp, &token_file)?;
                    alice_token = Some(token);
                }
                Ok(())
            },
        )
        .await?;
        let transcript = lines.join("\n");
        if !passed {
            return Err(format!("the browser scenario failed:\n{transcript}").into());
        }
        let created = lines
            .iter()
            .find_map(|line| line.strip_prefix("session: "))
            .ok_or_else(|| format!("the driver named no session:\n{transcript}"))?
            .to_string();
        if let Some(path) = lines
            .iter()
            .find_map(|line| line.strip_prefix("screenshot: "))
        {
            println!("browser: the screenshot of the page with its terminal: {path}");
        }

        // The API, as Alice, no longer has the session the page closed.
        let alice_token = alice_token.ok_or("the driver never said Alice signed in")?;
        let alices = service.client(&alice_token)?;
        let listed = alices.list().await?;
        assert!(
            listed.iter().all(|session| session.id != created),
            "the page closed session {created}, yet the API still lists it: {listed:?}"
        );
        let gone = alices.get(&created).await;
        assert!(
            gone.is_err(),
            "the page closed session {created}, yet the API still shows it: {gone:?}"
        );

        service.client(&bob_token)?.close(&bobs.id).await?;
        service.stop().await?;
        drop(provider);
        println!("browser: the whole scenario took {:.0?}", started.elapsed());
        Ok(())
    })
}
