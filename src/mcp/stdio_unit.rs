//! A stdio MCP server inside a session: a systemd unit that runs it as `agent` behind
//! supergateway (npm, in every Node tool image), which speaks Streamable HTTP on one loopback
//! port and the server's stdio to the process it starts. supergateway has no listen-address
//! option, so a preload ([`LOOPBACK_SHIM`]) makes its listener bind 127.0.0.1: the server is
//! the session's own, never its network's. The server's env (secrets maybe) is a file, 0640
//! root:agent, read by systemd.

use super::McpServer;

/// `NODE_OPTIONS=--require` of the bridge: `listen(port, ...)` without a host binds loopback.
/// It drops `NODE_OPTIONS` again, so the MCP server the bridge starts runs unchanged.
pub const LOOPBACK_SHIM: &str = r#"// cubbi: the MCP bridge listens on loopback only (supergateway has no host option).
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' && typeof args[1] !== 'string') {
    args.splice(1, 0, '127.0.0.1');
  }
  return listen.apply(this, args);
};
delete process.env.NODE_OPTIONS;
"#;

/// `/etc/cubbi/mcp/wait-bridges`: waits (at most 20 s) until every stdio server's bridge
/// listens, so a tool started right after boot finds its servers (the units start beside
/// sshd, and a login can come first). Tool wrappers run it; it never fails them.
pub fn wait_script(ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "#!/bin/bash
# cubbi: wait for the session's stdio MCP bridges on loopback.
         for port in {}; do
  for _ in $(seq 100); do
             (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.2
  done
         done
exit 0
",
        ports.join(" ")
    )
}

/// The bridge of one stdio server: its port (from its resolved loopback URL) and command.
pub struct Bridge<'a> {
    server: &'a McpServer,
    port: u16,
    command: String,
}

fn invalid(why: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, why.into())
}

impl<'a> Bridge<'a> {
    /// `server` as [`super::tool_config::resolve`] gave it (its URL names the port).
    pub fn of(server: &'a McpServer) -> std::io::Result<Self> {
        let stdio = server
            .stdio
            .as_ref()
            .ok_or_else(|| invalid("not a stdio server"))?;
        let port = server
            .url
            .strip_prefix("http://127.0.0.1:")
            .and_then(|rest| rest.strip_suffix("/mcp"))
            .and_then(|port| port.parse().ok())
            .ok_or_else(|| invalid("a stdio server without its loopback port"))?;
        let mut argv: Vec<String> = Vec::new();
        if let Some(image) = &stdio.image {
            // The session's own Docker runs the server; its env goes in by name only.
            argv.extend(["docker", "run", "-i", "--rm", "--init"].map(String::from));
            for key in stdio.env.keys() {
                argv.extend(["-e".to_string(), key.clone()]);
            }
            argv.push(image.clone());
        }
        argv.extend(stdio.command.iter().cloned());
        Ok(Self {
            server,
            port,
            command: shell_words::join(&argv),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn unit_name(&self) -> String {
        format!("cubbi-mcp-{}.service", self.server.name)
    }

    /// The script the unit runs (its only `ExecStart`, so no systemd quoting rules apply to
    /// the user's command; the shell quoting is `shell_words`').
    pub fn script(&self) -> String {
        format!(
            "#!/bin/sh\n# cubbi: MCP server {name} (stdio) over Streamable HTTP on \
             127.0.0.1:{port}/mcp.\nNODE_OPTIONS=\"--require {dir}/loopback.cjs\" exec \
             /usr/local/bin/supergateway --stdio {command} --outputTransport streamableHttp \
             --stateful --port {port} --streamableHttpPath /mcp --logLevel info\n",
            name = self.server.name,
            port = self.port,
            dir = super::tool_config::DIR,
            command = shell_words::quote(&self.command),
        )
    }

    pub fn env_file(&self) -> std::io::Result<String> {
        let env = self
            .server
            .stdio
            .as_ref()
            .map(|s| s.env.clone())
            .unwrap_or_default();
        crate::config::env_file::render(&env).map_err(|err| invalid(err.to_string()))
    }

    pub fn unit(&self) -> String {
        format!(
            "[Unit]\nDescription=cubbi MCP server {name} (stdio, Streamable HTTP on \
             127.0.0.1:{port})\nAfter=network.target\n\n[Service]\nUser=agent\nGroup=agent\n\
             WorkingDirectory=-/home/agent/workspace\nEnvironment=HOME=/home/agent\n\
             EnvironmentFile=-/etc/cubbi/env\nEnvironmentFile={dir}/{name}.env\n\
             ExecStart=/bin/sh {dir}/{name}.sh\nRestart=on-failure\nRestartSec=2\n\n\
             [Install]\nWantedBy=multi-user.target\n",
            name = self.server.name,
            port = self.port,
            dir = super::tool_config::DIR,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_quotes_the_command_and_names_its_port() {
        let server = McpServer::stdio(
            "files",
            None,
            Some("node '/w/my server.cjs' --flag 'it''s'"),
            &["TOKEN=s3cret".into()],
        )
        .unwrap();
        let resolved = super::super::tool_config::resolve(&[server]);
        let bridge = Bridge::of(&resolved[0]).unwrap();
        let script = bridge.script();
        assert!(script.contains("--port 8790"), "{script}");
        let line = script.lines().last().unwrap();
        let words = shell_words::split(line).unwrap();
        let stdio = words.iter().position(|w| w == "--stdio").unwrap();
        assert_eq!(
            shell_words::split(&words[stdio + 1]).unwrap(),
            vec!["node", "/w/my server.cjs", "--flag", "its"]
        );
        assert!(!script.contains("s3cret") && !bridge.unit().contains("s3cret"));
        assert_eq!(bridge.env_file().unwrap(), "TOKEN=s3cret\n");
        assert_eq!(bridge.unit_name(), "cubbi-mcp-files.service");
    }

    #[test]
    fn an_image_server_runs_in_the_sessions_docker_with_env_by_name() {
        let server =
            McpServer::stdio("gh", Some("ghcr.io/x/mcp:1"), None, &["GH_TOKEN=t".into()]).unwrap();
        let resolved = super::super::tool_config::resolve(&[server]);
        let bridge = Bridge::of(&resolved[0]).unwrap();
        assert_eq!(
            bridge.command,
            "docker run -i --rm --init -e GH_TOKEN ghcr.io/x/mcp:1"
        );
    }

    #[test]
    fn stdio_refusals() {
        for (image, command, env) in [
            (None, None, vec![]),
            (Some("-bad"), None, vec![]),
            (Some("a b"), None, vec![]),
            (None, Some("a 'unclosed"), vec![]),
            (None, Some("ok"), vec!["1BAD=x".to_string()]),
            (None, Some("ok"), vec!["K=a#b".to_string()]),
        ] {
            assert!(
                McpServer::stdio("s", image, command, &env).is_err(),
                "{image:?} {command:?} {env:?}"
            );
        }
    }
}
