//! A real OpenID provider for the tests: panva's `oidc-provider` (npm) run by Node from
//! `tests/fixtures/oidc-provider` (`install/test.sh` runs `npm ci` there), on 127.0.0.1 on a
//! port the kernel picks, with the device flow, refresh tokens and a `groups` claim read from
//! an accounts file the test rewrites. [`OidcProvider::approve_device`] plays the user's
//! browser: real HTTP form posts through the provider's own pages, with a cookie jar.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use libtest_mimic::Failed;

pub const CLIENT_ID: &str = "cubbi-test";

pub struct OidcProvider {
    /// `http://127.0.0.1:PORT`.
    pub issuer: String,
    /// The client secret in a 0600 file, for `auth.oidc.client_secret_file`.
    pub secret_file: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// What the provider printed (its warnings), for failure messages.
    output: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/oidc-provider")
}

impl OidcProvider {
    /// Starts the provider with `accounts` (`{"alice": {"groups": ["dev"]}, ...}`).
    pub fn start(accounts: &serde_json::Value) -> Result<Self, Failed> {
        Self::start_with_redirect(accounts, None)
    }

    /// [`OidcProvider::start`] with the client allowed the authorization code flow back to
    /// `redirect_uri`.
    pub fn start_with_redirect(
        accounts: &serde_json::Value,
        redirect_uri: Option<&str>,
    ) -> Result<Self, Failed> {
        let fixture = fixture_dir();
        if !fixture.join("node_modules/oidc-provider").is_dir() {
            return Err(format!(
                "the OpenID provider fixture is not installed: run `npm ci --prefix {}` \
                 (install/test.sh does)",
                fixture.display()
            )
            .into());
        }
        let dir = tempfile::tempdir()?;
        let secret: String = (0..32)
            .map(|_| char::from(b'a' + rand::random::<u8>() % 26))
            .collect();
        std::fs::write(
            dir.path().join("client.json"),
            serde_json::to_vec(&serde_json::json!({
                "client_id": CLIENT_ID,
                "client_secret": secret,
                "redirect_uri": redirect_uri,
            }))?,
        )?;
        let secret_file = dir.path().join("client-secret");
        std::fs::write(&secret_file, format!("{secret}\n"))?;
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600))?;
        let provider = Self {
            issuer: String::new(),
            secret_file,
            dir,
            child: None,
            output: Default::default(),
        };
        provider.set_accounts(accounts)?;
        provider.launch()
    }

    fn launch(mut self) -> Result<Self, Failed> {
        let mut child = Command::new("node")
            .arg(fixture_dir().join("provider.mjs"))
            .arg(self.dir.path())
            .current_dir(fixture_dir())
            .env("NODE_ENV", "development")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| format!("cannot run node (Node 20 or later is needed): {err}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let output = std::sync::Arc::clone(&self.output);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut lines) = output.lock() {
                    lines.push(line);
                }
            }
        });
        let (found, listening) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening ") {
                    let _ = found.send(url.trim().to_string());
                }
            }
        });
        self.child = Some(child);
        match listening.recv_timeout(Duration::from_secs(30)) {
            Ok(issuer) => {
                self.issuer = issuer;
                Ok(self)
            }
            Err(_) => Err(format!(
                "the OpenID provider did not start within 30 s: {}",
                self.output_text()
            )
            .into()),
        }
    }

    fn output_text(&self) -> String {
        self.output
            .lock()
            .map(|lines| lines.join("\n"))
            .unwrap_or_default()
    }

    /// Rewrites the accounts file; the provider reads it at every login and refresh.
    pub fn set_accounts(&self, accounts: &serde_json::Value) -> Result<(), Failed> {
        let path = self.dir.path().join("accounts.json");
        let temp = self.dir.path().join("accounts.json.new");
        std::fs::write(&temp, serde_json::to_vec(accounts)?)?;
        std::fs::rename(temp, path)?;
        Ok(())
    }

    /// Stops the provider (for a provider that is down).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Approves the device login at `verification_url` (with or without the user code in
    /// it) as `login`, the way a user does in a browser: enter the code, sign in, consent,
    /// confirm. `user_code` is typed when the page asks for it.
    pub async fn approve_device(
        &self,
        verification_url: &str,
        user_code: &str,
        login: &str,
    ) -> Result<(), Failed> {
        let mut browser = Browser::new()?;
        let mut page = browser.get(verification_url).await?;
        for _ in 0..12 {
            let Some(form) = Form::first_in(&page.body) else {
                let text = page.body.to_lowercase();
                if text.contains("success") {
                    return Ok(());
                }
                return Err(format!("the provider's last page has no form: {}", page.body).into());
            };
            let mut fields = form.fields.clone();
            for (name, value) in &mut fields {
                if value.is_empty() {
                    match name.as_str() {
                        "user_code" => *value = user_code.to_string(),
                        "login" => *value = login.to_string(),
                        "password" => *value = "any password".to_string(),
                        _ => {}
                    }
                }
            }
            let action = page.url.join(&form.action)?;
            page = browser.post(action.as_str(), &fields).await?;
        }
        Err(format!("the approval did not end after 12 pages: {}", page.body).into())
    }
}

/// Where a browser login ended: the last URL, its body, the cookies the browser holds and
/// every `Set-Cookie` line it was sent.
pub struct BrowserOutcome {
    pub url: String,
    pub body: String,
    pub cookies: HashMap<String, String>,
    pub set_cookie_lines: Vec<String>,
}

impl OidcProvider {
    /// Logs in as `login` from `authorize_url` the way a browser does (sign in, consent),
    /// following the provider's redirect back to the service's callback.
    /// `cookies` are what the browser already holds (the service's login cookie).
    pub async fn approve_browser(
        &self,
        authorize_url: &str,
        login: &str,
        cookies: &[(String, String)],
    ) -> Result<BrowserOutcome, Failed> {
        let mut browser = Browser::new()?;
        browser.cookies.extend(cookies.iter().cloned());
        let mut page = browser.get(authorize_url).await?;
        for _ in 0..12 {
            let Some(form) = Form::first_in(&page.body) else {
                return Ok(BrowserOutcome {
                    url: page.url.to_string(),
                    body: page.body,
                    cookies: browser.cookies,
                    set_cookie_lines: browser.set_cookie_lines,
                });
            };
            let mut fields = form.fields.clone();
            for (name, value) in &mut fields {
                if value.is_empty() {
                    match name.as_str() {
                        "login" => *value = login.to_string(),
                        "password" => *value = "any password".to_string(),
                        _ => {}
                    }
                }
            }
            let action = page.url.join(&form.action)?;
            page = browser.post(action.as_str(), &fields).await?;
        }
        Err(format!(
            "the browser login did not end after 12 pages: {}",
            page.body
        )
        .into())
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Page {
    url: reqwest::Url,
    body: String,
}

/// A browser's worth of HTTP: cookies kept by name, redirects followed by hand (so cookies
/// set on a redirect are kept).
struct Browser {
    http: reqwest::Client,
    cookies: HashMap<String, String>,
    set_cookie_lines: Vec<String>,
}

impl Browser {
    fn new() -> Result<Self, Failed> {
        Ok(Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(20))
                .build()?,
            cookies: HashMap::new(),
            set_cookie_lines: Vec::new(),
        })
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all(reqwest::header::SET_COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            self.set_cookie_lines.push(text.to_string());
            let Some((name, rest)) = text.split_once('=') else {
                continue;
            };
            let value = rest.split(';').next().unwrap_or_default().to_string();
            let gone = text.to_lowercase().contains("expires=thu, 01 jan 1970");
            if value.is_empty() || gone {
                self.cookies.remove(name.trim());
            } else {
                self.cookies.insert(name.trim().to_string(), value);
            }
        }
    }

    async fn get(&mut self, url: &str) -> Result<Page, Failed> {
        let request = self.http.get(url);
        self.send(request).await
    }

    async fn post(&mut self, url: &str, fields: &[(String, String)]) -> Result<Page, Failed> {
        let request = self.http.post(url).header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
        let body: String = fields
            .iter()
            .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
            .collect::<Vec<_>>()
            .join("&");
        self.send(request.body(body)).await
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Result<Page, Failed> {
        let mut response = request
            .header(reqwest::header::COOKIE, self.cookie_header())
            .send()
            .await?;
        for _ in 0..10 {
            self.keep_cookies(&response);
            if !response.status().is_redirection() {
                break;
            }
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .ok_or("a redirect without a location")?;
            let next = response.url().join(location)?;
            response = self
                .http
                .get(next)
                .header(reqwest::header::COOKIE, self.cookie_header())
                .send()
                .await?;
        }
        let url = response.url().clone();
        let status = response.status();
        let body = response.text().await?;
        if !status.is_success() {
            return Err(format!("the provider answered {status} at {url}: {body}").into());
        }
        Ok(Page { url, body })
    }
}

/// `application/x-www-form-urlencoded` escaping.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            b' ' => "+".to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The first POST form of a page: its action and its inputs' names and values.
#[derive(Debug, Clone)]
struct Form {
    action: String,
    fields: Vec<(String, String)>,
}

impl Form {
    fn first_in(html: &str) -> Option<Self> {
        let start = html.find("<form")?;
        let end = html[start..]
            .find("</form>")
            .map_or(html.len(), |at| start + at);
        let form = &html[start..end];
        let tag_end = form.find('>')?;
        let action = attribute(&form[..tag_end], "action").unwrap_or_default();
        let mut fields = Vec::new();
        let mut rest = &form[tag_end..];
        while let Some(at) = rest.find("<input") {
            let tag = &rest[at..];
            let close = tag.find('>').unwrap_or(tag.len());
            let tag_text = &tag[..close];
            if let Some(name) = attribute(tag_text, "name") {
                fields.push((name, attribute(tag_text, "value").unwrap_or_default()));
            }
            rest = &tag[close..];
        }
        Some(Self { action, fields })
    }
}

/// The value of `name="..."` in a tag, with the few entities these pages use decoded.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let normalized = tag.replace(['\n', '\t'], " ");
    let start = normalized.find(&needle)? + needle.len();
    let end = normalized[start..].find('"')? + start;
    Some(
        normalized[start..end]
            .replace("&amp;", "&")
            .replace("&#x2F;", "/")
            .replace("&#x3D;", "=")
            .replace("&quot;", "\"")
            .replace("&#39;", "'"),
    )
}
