//! Each tool's own MCP configuration, written into a session before it starts.
//!
//! The files go to [`DIR`] (0750 root:agent, files 0640 root:agent, like `/etc/cubbi/env`):
//! outside the persistent tool folders, so a header secret never lands in the owner's data
//! volume and a session without `--mcp` has no stale server. Each tool is pointed there:
//! - Claude Code: `--mcp-config /etc/cubbi/mcp/claude.json`, added by the image's `claude`
//!   wrapper when the file exists (`images/claude-code/claude-wrapper.sh`);
//! - Gemini CLI: `GEMINI_CLI_SYSTEM_SETTINGS_PATH` (its system settings layer) at `gemini.json`;
//! - opencode: `OPENCODE_CONFIG` at `opencode.json` (merged with its other configs);
//! - Codex: the image's `codex` wrapper passes `-c mcp_servers.NAME={url, env_http_headers}`
//!   from `codex.args` and exports the header values from `codex.env` ([`codex_args`]), so no
//!   secret is in an argv; `codex.toml` holds the same as a `config.toml` fragment.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::McpServer;
use crate::local::upload::AGENT_UID;

/// Where a session's MCP configuration lives.
pub const DIR: &str = "/etc/cubbi/mcp";

/// The first loopback port of the session's stdio servers' bridges (one port each, in order).
pub const FIRST_STDIO_PORT: u16 = 8790;

/// The servers as the session's tools reach them: a stdio server at its bridge on loopback.
pub fn resolve(servers: &[McpServer]) -> Vec<McpServer> {
    let mut port = FIRST_STDIO_PORT;
    servers
        .iter()
        .map(|server| {
            let mut server = server.clone();
            if server.stdio.is_some() {
                server.url = format!("http://127.0.0.1:{port}/mcp");
                port += 1;
            }
            server
        })
        .collect()
}

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
        // Gemini CLI looks for its system defaults beside the system settings unless told:
        // keep the image's (they pick API-key auth).
        (
            "GEMINI_CLI_SYSTEM_DEFAULTS_PATH".to_string(),
            "/etc/gemini-cli/system-defaults.json".to_string(),
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

/// Codex's servers as `-c mcp_servers.NAME={...}` values (`codex.args`, one a line) for the
/// image's `codex` wrapper, and the header values as variables (`codex.env`) that the values
/// name through `env_http_headers`: no secret in an argv.
pub fn codex_args(servers: &[McpServer]) -> (String, String) {
    let mut args = String::new();
    let mut env = std::collections::BTreeMap::new();
    for server in servers {
        let mut table = toml::Table::new();
        table.insert("url".into(), toml::Value::String(server.url.clone()));
        let mut headers = toml::Table::new();
        for (index, name) in server.headers.keys().enumerate() {
            let variable = format!(
                "CUBBI_MCP_{}_{index}",
                server.name.to_ascii_uppercase().replace('-', "_")
            );
            env.insert(variable.clone(), server.headers[name].clone());
            headers.insert(name.clone(), toml::Value::String(variable));
        }
        if !headers.is_empty() {
            table.insert("env_http_headers".into(), toml::Value::Table(headers));
        }
        args.push_str(&format!(
            "mcp_servers.{}={}\n",
            server.name,
            toml::Value::Table(table)
        ));
    }
    let env = crate::config::env_file::render(&env).unwrap_or_default();
    (args, env)
}

/// The tar archive (extracted at `/`) of every tool's file; `None` without servers.
pub fn archive(servers: &[McpServer]) -> std::io::Result<Option<Vec<u8>>> {
    if servers.is_empty() {
        return Ok(None);
    }
    let servers = &resolve(servers);
    let pretty = |value: Value| serde_json::to_string_pretty(&value).unwrap_or_default() + "\n";
    let mut files = vec![
        ("claude.json".to_string(), pretty(claude(servers)), 0o640),
        ("gemini.json".to_string(), pretty(gemini(servers)), 0o640),
        (
            "opencode.json".to_string(),
            pretty(opencode(servers)),
            0o640,
        ),
        ("codex.toml".to_string(), codex(servers), 0o640),
    ];
    let (codex_args, codex_env) = codex_args(servers);
    files.push(("codex.args".to_string(), codex_args, 0o640));
    files.push(("codex.env".to_string(), codex_env, 0o640));
    let stdio: Vec<&McpServer> = servers.iter().filter(|s| s.stdio.is_some()).collect();
    if !stdio.is_empty() {
        files.push((
            "loopback.cjs".to_string(),
            super::stdio_unit::LOOPBACK_SHIM.to_string(),
            0o644,
        ));
    }
    let ports: Vec<u16> = stdio
        .iter()
        .filter_map(|s| super::stdio_unit::Bridge::of(s).ok().map(|b| b.port()))
        .collect();
    if !ports.is_empty() {
        files.push((
            "wait-bridges".to_string(),
            super::stdio_unit::wait_script(&ports),
            0o755,
        ));
    }
    let mut units = Vec::new();
    for server in stdio {
        let bridge = super::stdio_unit::Bridge::of(server)?;
        files.push((format!("{}.sh", server.name), bridge.script(), 0o750));
        files.push((format!("{}.env", server.name), bridge.env_file()?, 0o640));
        units.push((bridge.unit_name(), bridge.unit()));
    }
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
    for (name, contents, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(AGENT_UID);
        header.set_mtime(now);
        header.set_size(contents.len() as u64);
        builder.append_data(&mut header, format!("{dir}/{name}"), contents.as_bytes())?;
    }
    // Each stdio server's unit, enabled (a systemd boot reads them before anything starts).
    for (unit, contents) in units {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(now);
        header.set_size(contents.len() as u64);
        builder.append_data(
            &mut header,
            format!("etc/systemd/system/{unit}"),
            contents.as_bytes(),
        )?;
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_mode(0o777);
        link.set_uid(0);
        link.set_gid(0);
        link.set_mtime(now);
        link.set_size(0);
        builder.append_link(
            &mut link,
            format!("etc/systemd/system/multi-user.target.wants/{unit}"),
            format!("/etc/systemd/system/{unit}"),
        )?;
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
        let (args, env) = codex_args(&s);
        assert_eq!(
            args,
            "mcp_servers.docs={ env_http_headers = { Authorization = \"CUBBI_MCP_DOCS_0\" }, url = \"http://10.0.0.1:8000/mcp\" }\n"
        );
        assert!(!args.contains("t0k"));
        assert!(env.starts_with("CUBBI_MCP_DOCS_0=Bearer t0k"), "{env}");
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
        assert_eq!(seen, 7);
        assert!(archive_is_none_without_servers());
    }

    fn archive_is_none_without_servers() -> bool {
        archive(&[]).unwrap().is_none()
    }
}
