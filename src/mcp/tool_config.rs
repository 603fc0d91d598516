//! Each tool's own MCP configuration, written into a session before it starts.
//!
//! The files go to [`DIR`] (0750 root:agent, files 0640 root:agent, like `/etc/cubbi/env`):
//! outside the persistent tool folders, so a header secret never lands in the owner's data
//! volume and a session without `--mcp` has no stale server. Each tool is pointed there:
//! - Claude Code: `--mcp-config /etc/cubbi/mcp/claude.json`, added by the image's `claude`
//!   wrapper when the file exists (`images/claude-code/claude-wrapper.sh`);
//! - Gemini CLI: `GEMINI_CLI_SYSTEM_SETTINGS_PATH` (its system settings layer) at `gemini.json`;
//! - opencode: `OPENCODE_CONFIG` at `opencode.json` (merged with its other configs);
//! - Codex: `codex.toml` holds `[mcp_servers]` as Codex's `config.toml` takes them (a file to
//!   read or merge; the image's wrapper does not load it yet).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::McpServer;
use crate::local::upload::AGENT_UID;

/// Where a session's MCP configuration lives.
pub const DIR: &str = "/etc/cubbi/mcp";

/// The variables that point tools at [`DIR`]; they carry no secret.
pub fn session_env(servers: &[McpServer]) -> BTreeMap<String, String> {
    if servers.is_empty() {
        return BTreeMap::new();
    }
    BTreeMap::from([
        (
            "GEMINI_CLI_SYSTEM_SETTINGS_PATH".to_string(),
            format!("{DIR}/gemini.json"),
        ),
        (
            "OPENCODE_CONFIG".to_string(),
            format!("{DIR}/opencode.json"),
        ),
        ("CUBBI_MCP_SERVERS".to_string(), names(servers)),
    ])
}

fn names(servers: &[McpServer]) -> String {
    servers
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Claude Code's `--mcp-config` file.
pub fn claude(servers: &[McpServer]) -> Value {
    let entries: serde_json::Map<String, Value> = servers
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                json!({ "type": "http", "url": s.url, "headers": s.headers }),
            )
        })
        .collect();
    json!({ "mcpServers": entries })
}

/// Gemini CLI's `settings.json` `mcpServers` (`httpUrl` is its Streamable HTTP transport).
pub fn gemini(servers: &[McpServer]) -> Value {
    let entries: serde_json::Map<String, Value> = servers
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                json!({ "httpUrl": s.url, "headers": s.headers }),
            )
        })
        .collect();
    json!({ "mcpServers": entries })
}

/// opencode's config `mcp` section.
pub fn opencode(servers: &[McpServer]) -> Value {
    let entries: serde_json::Map<String, Value> = servers
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                json!({ "type": "remote", "url": s.url, "headers": s.headers, "enabled": true }),
            )
        })
        .collect();
    json!({ "$schema": "https://opencode.ai/config.json", "mcp": entries })
}

/// Codex's `config.toml` `[mcp_servers.NAME]` tables (`url`, `http_headers`).
pub fn codex(servers: &[McpServer]) -> String {
    let mut root = toml::Table::new();
    let mut tables = toml::Table::new();
    for server in servers {
        let mut table = toml::Table::new();
        table.insert("url".into(), toml::Value::String(server.url.clone()));
        if !server.headers.is_empty() {
            let headers: toml::Table = server
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
                .collect();
            table.insert("http_headers".into(), toml::Value::Table(headers));
        }
        tables.insert(server.name.clone(), toml::Value::Table(table));
    }
    root.insert("mcp_servers".into(), toml::Value::Table(tables));
    toml::to_string(&root).unwrap_or_default()
}

/// The tar archive (extracted at `/`) of every tool's file; `None` without servers.
pub fn archive(servers: &[McpServer]) -> std::io::Result<Option<Vec<u8>>> {
    if servers.is_empty() {
        return Ok(None);
    }
    let pretty = |value: Value| serde_json::to_string_pretty(&value).unwrap_or_default() + "\n";
    let files = [
        ("claude.json", pretty(claude(servers))),
        ("gemini.json", pretty(gemini(servers))),
        ("opencode.json", pretty(opencode(servers))),
        ("codex.toml", codex(servers)),
    ];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o750);
    header.set_uid(0);
    header.set_gid(AGENT_UID);
    header.set_mtime(now);
    header.set_size(0);
    let dir = DIR.trim_start_matches('/');
    builder.append_data(&mut header, format!("{dir}/"), std::io::empty())?;
    for (name, contents) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o640);
        header.set_uid(0);
        header.set_gid(AGENT_UID);
        header.set_mtime(now);
        header.set_size(contents.len() as u64);
        builder.append_data(&mut header, format!("{dir}/{name}"), contents.as_bytes())?;
    }
    builder.into_inner().map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers() -> Vec<McpServer> {
        vec![
            McpServer::new(
                "docs",
                "http://10.0.0.1:8000/mcp",
                &["Authorization=Bearer t0k\"en".into()],
            )
            .unwrap(),
        ]
    }

    #[test]
    fn each_tool_gets_its_own_shape() {
        let s = servers();
        assert_eq!(claude(&s)["mcpServers"]["docs"]["type"], "http");
        assert_eq!(
            claude(&s)["mcpServers"]["docs"]["headers"]["Authorization"],
            "Bearer t0k\"en"
        );
        assert_eq!(
            gemini(&s)["mcpServers"]["docs"]["httpUrl"],
            "http://10.0.0.1:8000/mcp"
        );
        assert_eq!(opencode(&s)["mcp"]["docs"]["type"], "remote");
        let codex: toml::Table = toml::from_str(&codex(&s)).unwrap();
        assert_eq!(
            codex["mcp_servers"]["docs"]["http_headers"]["Authorization"].as_str(),
            Some("Bearer t0k\"en")
        );
        assert!(session_env(&[]).is_empty());
        assert!(!session_env(&s).values().any(|v| v.contains("t0k")));
    }

    #[test]
    fn the_archive_is_private_to_root_and_the_agent() {
        let bytes = archive(&servers()).unwrap().unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = 0;
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            assert_eq!(header.uid().unwrap(), 0);
            assert_eq!(header.gid().unwrap(), AGENT_UID);
            let mode = header.mode().unwrap();
            assert!(mode == 0o640 || mode == 0o750, "{mode:o}");
            seen += 1;
        }
        assert_eq!(seen, 5);
        assert!(archive_is_none_without_servers());
    }

    fn archive_is_none_without_servers() -> bool {
        archive(&[]).unwrap().is_none()
    }
}
