//! MCP servers for agents: what one is ([`McpServer`]), the user's registry of them
//! ([`registry`]), and the files that hand them to each tool in a session ([`tool_config`]).
//!
//! A server is registered once by name (`cubbi mcp add`) and given to sessions by name
//! (`--mcp NAME`, `defaults.mcp`). Everything is checked where it enters ([`McpServer::new`]),
//! so the registry, the session spec and the tool configs only ever hold valid servers.
//! Header values are secrets: they reach a session only in files (0640 root:agent), never
//! in container env, argv or output.

pub mod registry;
pub mod stdio_unit;
pub mod tool_config;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most headers one server may have, and the longest name, URL and header value.
const MAX_HEADERS: usize = 32;
const MAX_NAME: usize = 40;
const MAX_URL: usize = 2048;
const MAX_HEADER_VALUE: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum McpError {
    #[error(
        "MCP server name `{0}`: use 1-40 lowercase letters, digits, `-` or `_`, starting with a \
         letter (tools see it as mcp__NAME__TOOL)"
    )]
    BadName(String),
    #[error("MCP URL `{url}` is not usable: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("header `{0}`: give it as NAME=VALUE")]
    HeaderShape(String),
    #[error("header name `{0}` is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)")]
    HeaderName(String),
    #[error(
        "the value of header `{0}` holds a line break or another control character, or is \
         longer than 4096 bytes; a header is one line"
    )]
    HeaderValue(String),
    #[error("header `{0}` is given twice")]
    DuplicateHeader(String),
    #[error("stdio MCP server: {0}")]
    Command(String),
    #[error("stdio MCP server -e: {0}")]
    Env(String),
    #[error("at most {MAX_HEADERS} headers per MCP server")]
    TooManyHeaders,
    #[error("no MCP server `{0}`; `cubbi mcp list` shows the registered ones")]
    NotFound(String),
    #[error("an MCP server `{0}` is registered already; `cubbi mcp remove {0}` first")]
    Exists(String),
    #[error("MCP server `{0}` is named twice")]
    Duplicate(String),
    #[error("the MCP registry {path}: {reason}")]
    Registry { path: String, reason: String },
}

/// A registered MCP server: a remote one the agent reaches over Streamable HTTP at `url`,
/// or a stdio one ([`Stdio`]) that cubbi runs inside the session (its `url` is then empty
/// until a session gives it a loopback port, see [`tool_config::resolve`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct McpServer {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Sent with every request (e.g. `Authorization`); the values are secrets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdio: Option<Stdio>,
}

/// A stdio MCP server, run as a systemd service inside the session (as `agent`) behind a
/// Streamable HTTP bridge on loopback.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Stdio {
    /// The program and its arguments (in `image`, when one is given; else in the session).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// A Docker image the session's own Docker runs the server from (`docker run -i`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The server's environment; values may be secrets (a file in the session, 0640).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// Debug output (a `-vv` log, a panic) shows header and env names, never their values.
impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("stdio", &self.stdio)
            .finish()
    }
}

impl std::fmt::Debug for Stdio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stdio")
            .field("command", &self.command)
            .field("image", &self.image)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl McpServer {
    /// A server from the user's words: `name`, `url` and `NAME=VALUE` headers, all checked.
    pub fn new(name: &str, url: &str, headers: &[String]) -> Result<Self, McpError> {
        let mut parsed = BTreeMap::new();
        for header in headers {
            let (key, value) = header
                .split_once('=')
                .ok_or_else(|| McpError::HeaderShape(header_label(header)))?;
            if parsed
                .insert(key.trim().to_string(), value.to_string())
                .is_some()
            {
                return Err(McpError::DuplicateHeader(key.trim().to_string()));
            }
        }
        let server = Self {
            name: name.to_string(),
            url: url.to_string(),
            headers: parsed,
            stdio: None,
        };
        server.check()?;
        Ok(server)
    }

    /// A stdio server: `command` (one shell-words string) run in the session, or in `image`
    /// through the session's Docker; `env` as `KEY=VALUE`.
    pub fn stdio(
        name: &str,
        image: Option<&str>,
        command: Option<&str>,
        env: &[String],
    ) -> Result<Self, McpError> {
        let command = match command {
            Some(text) => shell_words::split(text)
                .map_err(|err| McpError::Command(format!("`--command`: {err}")))?,
            None => Vec::new(),
        };
        let mut parsed = BTreeMap::new();
        for item in env {
            let (key, value) =
                crate::config::env_file::parse_assignment(item, |name| std::env::var(name).ok())
                    .map_err(|err| McpError::Env(err.to_string()))?;
            parsed.insert(key, value);
        }
        let server = Self {
            name: name.to_string(),
            url: String::new(),
            headers: BTreeMap::new(),
            stdio: Some(Stdio {
                command,
                image: image.map(str::to_string),
                env: parsed,
            }),
        };
        server.check()?;
        Ok(server)
    }

    /// Every rule, again: a server read from a file or a request is checked like a new one.
    pub fn check(&self) -> Result<(), McpError> {
        check_name(&self.name)?;
        if let Some(stdio) = &self.stdio {
            return check_stdio(stdio, self);
        }
        check_url(&self.url)?;
        if self.headers.len() > MAX_HEADERS {
            return Err(McpError::TooManyHeaders);
        }
        for (key, value) in &self.headers {
            if key.is_empty() || !key.bytes().all(is_token_byte) {
                return Err(McpError::HeaderName(header_label(key)));
            }
            if value.len() > MAX_HEADER_VALUE || value.chars().any(char::is_control) {
                return Err(McpError::HeaderValue(key.clone()));
            }
        }
        Ok(())
    }

    /// What `list` and `show` print: the headers' names only.
    pub fn summary(&self) -> McpSummary {
        McpSummary {
            name: self.name.clone(),
            kind: if self.stdio.is_some() {
                "stdio"
            } else {
                "remote"
            }
            .into(),
            url: self.url.clone(),
            headers: self.headers.keys().cloned().collect(),
            image: self.stdio.as_ref().and_then(|s| s.image.clone()),
            command: self
                .stdio
                .as_ref()
                .map(|s| s.command.clone())
                .unwrap_or_default(),
            env: self
                .stdio
                .as_ref()
                .map(|s| s.env.keys().cloned().collect())
                .unwrap_or_default(),
        }
    }
}

/// A server as shown to people and scripts: never a header's value.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct McpSummary {
    pub name: String,
    /// `remote` or `stdio`.
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    pub headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// The stdio server's variable names (never their values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
}

/// A header as named in a message: its name only (the value may be a secret), without
/// control characters.
fn header_label(text: &str) -> String {
    text.split('=')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect()
}

pub fn check_name(name: &str) -> Result<(), McpError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(McpError::BadName(
            name.chars().filter(|c| !c.is_control()).take(64).collect(),
        ))
    }
}

fn check_url(url: &str) -> Result<(), McpError> {
    let shown: String = url.chars().filter(|c| !c.is_control()).take(200).collect();
    let bad = |reason: &str| McpError::BadUrl {
        url: shown.clone(),
        reason: reason.to_string(),
    };
    if url.len() > MAX_URL {
        return Err(bad("longer than 2048 bytes"));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("it holds spaces or control characters"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|err| bad(&format!("{err}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("give an http:// or https:// URL (Streamable HTTP)"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("it names no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad(
            "credentials do not belong in the URL; give them with --header",
        ));
    }
    Ok(())
}

fn check_stdio(stdio: &Stdio, server: &McpServer) -> Result<(), McpError> {
    let refuse = |why: &str| McpError::Command(why.to_string());
    if !server.url.is_empty() || !server.headers.is_empty() {
        return Err(refuse(
            "give either a URL (remote) or --image/--command (stdio), not both",
        ));
    }
    if stdio.command.is_empty() && stdio.image.is_none() {
        return Err(refuse("give --command CMD, --image IMAGE or both"));
    }
    if stdio.command.len() > 256 || stdio.command.iter().map(String::len).sum::<usize>() > 8192 {
        return Err(refuse("the command is longer than 256 words or 8 KiB"));
    }
    if stdio.command.first().is_some_and(String::is_empty)
        || stdio.command.iter().any(|word| word.contains('\0'))
    {
        return Err(refuse("the command holds an empty word or a NUL"));
    }
    if stdio
        .command
        .iter()
        .any(|w| w.chars().any(|c| c == '\n' || c == '\r'))
    {
        return Err(refuse("the command holds a line break"));
    }
    if let Some(image) = &stdio.image {
        let ok = !image.is_empty()
            && image.len() <= 255
            && !image.starts_with('-')
            && image
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c));
        if !ok {
            return Err(refuse(&format!(
                "`{}` is not a Docker image reference",
                image
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(100)
                    .collect::<String>()
            )));
        }
    }
    if stdio.env.len() > 64 {
        return Err(McpError::Env("at most 64 variables".into()));
    }
    for (key, value) in &stdio.env {
        crate::config::env_file::validate(key, value)
            .map_err(|err| McpError::Env(err.to_string()))?;
    }
    Ok(())
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The servers `names` pick from `known`, in order, each once.
pub fn pick(known: &[McpServer], names: &[String]) -> Result<Vec<McpServer>, McpError> {
    let mut picked: Vec<McpServer> = Vec::new();
    for name in names {
        check_name(name)?;
        if picked.iter().any(|s| &s.name == name) {
            return Err(McpError::Duplicate(name.clone()));
        }
        let server = known
            .iter()
            .find(|s| &s.name == name)
            .ok_or_else(|| McpError::NotFound(name.clone()))?;
        picked.push(server.clone());
    }
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_server_is_taken() {
        let server = McpServer::new(
            "docs",
            "https://mcp.example.com/mcp",
            &["Authorization=Bearer abc=def".into()],
        )
        .unwrap();
        assert_eq!(server.headers["Authorization"], "Bearer abc=def");
        assert_eq!(server.summary().headers, vec!["Authorization"]);
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("Docs", "https://a.example/mcp", &[]),
            ("1docs", "https://a.example/mcp", &[]),
            ("do cs", "https://a.example/mcp", &[]),
            ("", "https://a.example/mcp", &[]),
            ("docs", "not a url", &[]),
            ("docs", "a.example/mcp", &[]),
            ("docs", "ftp://a.example/mcp", &[]),
            ("docs", "file:///etc/passwd", &[]),
            ("docs", "https://user:pw@a.example/mcp", &[]),
            ("docs", "https://a.example/mcp\n", &[]),
            ("docs", "https://a.example/mcp", &["X-Key=a\nb"]),
            ("docs", "https://a.example/mcp", &["X-Key=a\rb"]),
            ("docs", "https://a.example/mcp", &["X Key=a"]),
            ("docs", "https://a.example/mcp", &["X-Key"]),
            ("docs", "https://a.example/mcp", &["=v"]),
            ("docs", "https://a.example/mcp", &["A=1", "A=2"]),
        ];
        for (name, url, headers) in cases {
            let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
            let err = McpServer::new(name, url, &headers).unwrap_err();
            assert!(
                !err.to_string().contains("\n"),
                "{name} {url:?}: one line: {err}"
            );
        }
    }

    #[test]
    fn debug_output_names_secrets_without_their_values() {
        let remote = McpServer::new("docs", "https://a.example", &["X-Key=sekrit".into()]).unwrap();
        let stdio = McpServer::stdio("s", None, Some("run"), &["TOKEN=hidden".into()]).unwrap();
        let shown = format!("{remote:?} {stdio:?}");
        assert!(
            shown.contains("X-Key") && shown.contains("TOKEN"),
            "{shown}"
        );
        assert!(
            !shown.contains("sekrit") && !shown.contains("hidden"),
            "{shown}"
        );
    }

    #[test]
    fn a_refused_header_never_shows_its_value() {
        let err =
            McpServer::new("docs", "https://a.example", &["X-Key=sekrit\nx".into()]).unwrap_err();
        assert!(!err.to_string().contains("sekrit"), "{err}");
    }

    #[test]
    fn pick_keeps_order_and_refuses_unknown_and_twice() {
        let known = vec![
            McpServer::new("a", "http://a.example", &[]).unwrap(),
            McpServer::new("b", "http://b.example", &[]).unwrap(),
        ];
        let picked = pick(&known, &["b".into(), "a".into()]).unwrap();
        assert_eq!(picked[0].name, "b");
        assert_eq!(
            pick(&known, &["c".into()]),
            Err(McpError::NotFound("c".into()))
        );
        assert_eq!(
            pick(&known, &["a".into(), "a".into()]),
            Err(McpError::Duplicate("a".into()))
        );
    }
}
