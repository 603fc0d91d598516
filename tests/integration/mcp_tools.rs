//! MCP servers in sessions, beyond Claude Code and a remote server (`mcp.rs`): a stdio server
//! run inside the session behind its loopback bridge, and Gemini CLI and opencode calling a
//! real MCP server from the configuration cubbi wrote for them.

use std::os::unix::fs::PermissionsExt;

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::mcp::{HEADER_SECRET, MODEL_SECRET};
use crate::support::mcp_server::{ANSWER, McpServer};
use crate::support::model_server::{ModelServer, Reply};
use crate::support::sysbox::SessionRuntime;
use crate::support::{TestHome, docker_test};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        claude_code_calls_a_stdio_mcp_server_run_in_the_session,
        gemini_calls_a_remote_mcp_server,
        opencode_calls_a_remote_mcp_server,
        codex_calls_a_remote_mcp_server,
    ]
}

const STDIO_WORD: &str = "stdio-word-secret-55d";

/// A stdio MCP server (the official Node SDK, `tests/fixtures/mcp-server/stdio-server.cjs`)
/// registered with `--command` and `-e`: cubbi runs it inside the session as a systemd service
/// behind supergateway on loopback; Claude Code calls its tool, the server records the call
/// in the workspace and answers with its env's word. The bridge answers on loopback only, and
/// the env value is in no container env.
fn claude_code_calls_a_stdio_mcp_server_run_in_the_session() -> Result<(), Failed> {
    docker_test("mcp-stdio", |scope| async move {
        scope.ensure_image("claude-code").await?;
        let network = format!("cubbi-mcps-{}", scope.id);
        let gateway = scope.bridge_network(&network).await?;
        let model = ModelServer::start(vec![
            Reply::ToolCall {
                name: "mcp__local__lookup_word".into(),
                input: serde_json::json!({ "topic": "stdio" }),
            },
            Reply::Text("Looked it up.".into()),
        ])?;
        let home = TestHome::new();
        let workspace = tempfile::tempdir()?;
        std::fs::set_permissions(workspace.path(), std::fs::Permissions::from_mode(0o777))?;
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/mcp-server/stdio-server.cjs");
        std::fs::copy(&script, workspace.path().join("stdio-server.cjs"))?;
        scope
            .cubbi(&home)
            .args([
                "mcp",
                "add",
                "local",
                "--command",
                "node /home/agent/workspace/stdio-server.cjs",
                "-e",
                &format!("FIXTURE_WORD={STDIO_WORD}"),
                "-e",
                "FIXTURE_RECORD=/home/agent/workspace/calls.jsonl",
            ])
            .run()
            .success();
        scope
            .cubbi(&home)
            .args(["mcp", "list"])
            .run()
            .success()
            .stdout_contains("stdio")
            .stdout_contains("node /home/agent/workspace/stdio-server.cjs")
            .stdout_lacks(STDIO_WORD);
        let mut args = crate::mcp::with_runtime_flags(&[
            "run",
            "--stream",
            "--timeout",
            "200s",
            "--image",
            "claude-code",
            "--mcp",
            "local",
            "--keep",
            "--name",
            "mcp-stdio",
            "--no-default-network",
            "--network",
            &network,
            "-e",
            &format!("ANTHROPIC_API_KEY={MODEL_SECRET}"),
            "-e",
            &format!("ANTHROPIC_BASE_URL=http://{gateway}:{}", model.port),
            "-p",
            "Look up the stdio word",
        ]);
        args.push(workspace.path().display().to_string());
        let ran = scope.cubbi(&home).args(&args).run();
        let stdout = ran.stdout();
        let (events, result) = crate::mcp::stream_result(&stdout);
        if result["is_error"] != false {
            let logs = scope
                .cubbi(&home)
                .args(["session", "exec", "mcp-stdio", "--", "sh", "-c",
                       "systemctl status cubbi-mcp-local --no-pager; journalctl -u cubbi-mcp-local --no-pager | tail -30"])
                .run();
            return Err(format!(
                "the run failed: {stdout}\n{}\nbridge: {}{}",
                ran.stderr(),
                logs.stdout(),
                logs.stderr()
            )
            .into());
        }
        ran.success();
        let recorded = std::fs::read_to_string(workspace.path().join("calls.jsonl"))
            .map_err(|err| format!("the stdio server recorded no call: {err}"))?;
        let calls: Vec<Value> = recorded
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert_eq!(calls.len(), 1, "{recorded}");
        assert_eq!(calls[0]["args"]["topic"], "stdio");
        let tool_result = events
            .iter()
            .find(|e| e["type"] == "tool_result")
            .ok_or(format!("no tool_result event: {stdout}"))?;
        assert!(
            tool_result["output"]
                .as_str()
                .unwrap_or_default()
                .contains(STDIO_WORD),
            "{tool_result}"
        );
        assert_eq!(result["result"], "Looked it up.");

        // The bridge is the session's own: nothing answers on its port from the network.
        let inspect = scope
            .docker
            .inspect_container("cubbi-mcp-stdio", None)
            .await?;
        let address = inspect
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .and_then(|n| n.get(&network))
            .and_then(|e| e.ip_address.clone())
            .ok_or("the session has no address on the test network")?;
        let port = cubbi::mcp::tool_config::FIRST_STDIO_PORT;
        let reached = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            tokio::net::TcpStream::connect((address.as_str(), port)),
        )
        .await;
        assert!(
            !matches!(reached, Ok(Ok(_))),
            "the bridge answers on {address}:{port}"
        );
        let seen = serde_json::to_string(&inspect)?;
        assert!(
            !seen.contains(STDIO_WORD),
            "docker inspect shows the server's env"
        );
        Ok(())
    })
}

/// The model's key and base URL for `image`, and the flags its run needs.
fn tool_env(image: &str, base: &str) -> (Vec<String>, Vec<&'static str>) {
    match image {
        "gemini" => (
            vec![
                format!("GEMINI_API_KEY={MODEL_SECRET}"),
                format!("GOOGLE_GEMINI_BASE_URL={base}"),
            ],
            vec!["--model", "gemini-fixture"],
        ),
        _ => (
            vec![
                format!("OPENAI_API_KEY={MODEL_SECRET}"),
                format!("OPENAI_BASE_URL={base}/v1"),
                "OPENAI_MODEL=fixture-model".into(),
            ],
            vec![],
        ),
    }
}

/// The model's call of the MCP tool. Codex offers MCP tools inside its code mode: its `exec`
/// tool runs JavaScript in which every tool, the MCP server's too, is `tools.NAME(...)`.
fn first_call(image: &str) -> Reply {
    if image == "codex" {
        return Reply::ToolCall {
            name: "exec".into(),
            input: Value::String(
                "const answer = await tools.mcp__fixture__lookup_word({ topic: \"greeting\" });\n\
                 text(JSON.stringify(answer));\n"
                    .into(),
            ),
        };
    }
    Reply::CallOffered {
        containing: "lookup_word".into(),
        input: serde_json::json!({ "topic": "greeting" }),
    }
}

/// Gemini CLI (system settings at `GEMINI_CLI_SYSTEM_SETTINGS_PATH`) and opencode
/// (`OPENCODE_CONFIG`) read the MCP configuration cubbi wrote, offer the server's tool to the
/// model under their own name for it, and call it with the registered header.
fn remote_mcp_with(image: &'static str, name: &'static str) -> Result<(), Failed> {
    docker_test(name, move |scope| async move {
        scope.ensure_image(image).await?;
        let network = format!("cubbi-mcpt-{}", scope.id);
        let gateway = scope.bridge_network(&network).await?;
        let mcp = McpServer::start()?;
        let model = ModelServer::start(vec![
            first_call(image),
            Reply::Text("The word is in.".into()),
        ])?;
        let home = TestHome::new();
        scope
            .cubbi(&home)
            .args([
                "mcp",
                "add",
                "fixture",
                &format!("http://{gateway}:{}/mcp", mcp.port),
                "--header",
                &format!("Authorization=Bearer {HEADER_SECRET}"),
            ])
            .run()
            .success();
        let (env, flags) = tool_env(image, &format!("http://{gateway}:{}", model.port));
        let mut args: Vec<String> = [
            "--json",
            "run",
            "--timeout",
            "200s",
            "--image",
            image,
            "--mcp",
            "fixture",
            "--name",
            name,
            "--no-mount",
            "--no-default-network",
            "--network",
            &network,
            "-p",
            "Look up the word for greeting",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for assignment in env {
            args.extend(["-e".to_string(), assignment]);
        }
        args.extend(flags.iter().map(|f| f.to_string()));
        args.extend(
            SessionRuntime::of_this_run()
                .create_flags()
                .iter()
                .map(|flag| flag.to_string()),
        );
        let ran = scope.cubbi(&home).args(&args).run();
        let result: Value = serde_json::from_str(ran.stdout().trim()).unwrap_or(Value::Null);
        let offered: Vec<String> = model
            .turns()
            .first()
            .map(|t| t.body.to_string().chars().take(400).collect())
            .into_iter()
            .collect();
        assert_eq!(
            result["is_error"],
            false,
            "{}\n{result}\nfirst turn: {offered:?}",
            ran.stderr()
        );
        let calls = mcp.calls();
        assert_eq!(
            calls.len(),
            1,
            "{calls:?}; the model saw: {:?}; the MCP server got {} requests; tools: {:?}",
            model
                .turns()
                .iter()
                .map(|t| t.body.to_string().contains("lookup_word"))
                .collect::<Vec<_>>(),
            mcp.request_headers().len(),
            model
                .turns()
                .first()
                .map(|t| {
                    let text = t.body.to_string();
                    let mut seen: Vec<String> = ["fixture", "tool_search", "mcp__", "search"]
                        .iter()
                        .filter(|w| text.contains(*w))
                        .map(|w| w.to_string())
                        .collect();
                    seen.extend(
                        t.body["input"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|i| i["type"].to_string()),
                    );
                    seen
                })
                .unwrap_or_default()
        );
        assert_eq!(calls[0]["args"]["topic"], "greeting");
        assert!(
            mcp.request_headers()
                .iter()
                .all(|h| h["authorization"] == format!("Bearer {HEADER_SECRET}"))
        );
        let last = model.turns().last().cloned().ok_or("no turns")?;
        assert!(
            last.body.to_string().contains(ANSWER),
            "the answer never reached the model"
        );
        assert!(!ran.stdout().contains(HEADER_SECRET) && !ran.stderr().contains(HEADER_SECRET));
        Ok(())
    })
}

fn gemini_calls_a_remote_mcp_server() -> Result<(), Failed> {
    remote_mcp_with("gemini", "mcp-gemini")
}

fn opencode_calls_a_remote_mcp_server() -> Result<(), Failed> {
    remote_mcp_with("opencode", "mcp-opencode")
}

fn codex_calls_a_remote_mcp_server() -> Result<(), Failed> {
    remote_mcp_with("codex", "mcp-codex")
}
