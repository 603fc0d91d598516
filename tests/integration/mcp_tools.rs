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
        claude_code_calls_a_stdio_mcp_server_from_an_image_in_the_sessions_docker,
    ]
}

const STDIO_WORD: &str = "stdio-word-secret-55d";

/// What a stdio MCP test needs: a network whose gateway reaches the model server, which asks
/// for `mcp__SERVER__lookup_word`, and a workspace holding the stdio fixture.
struct StdioBench {
    network: String,
    gateway: String,
    model: ModelServer,
    home: TestHome,
    workspace: tempfile::TempDir,
}

impl StdioBench {
    async fn start(
        scope: &crate::support::DockerScope,
        tag: &str,
        server: &str,
        topic: &str,
    ) -> Result<Self, Failed> {
        scope.ensure_image("claude-code").await?;
        let network = format!("cubbi-{tag}-{}", scope.id);
        let gateway = scope.bridge_network(&network).await?;
        let model = ModelServer::start(vec![
            Reply::ToolCall {
                name: format!("mcp__{server}__lookup_word"),
                input: serde_json::json!({ "topic": topic }),
            },
            Reply::Text("Looked it up.".into()),
        ])?;
        let workspace = tempfile::tempdir()?;
        std::fs::set_permissions(workspace.path(), std::fs::Permissions::from_mode(0o777))?;
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/mcp-server/stdio-server.cjs");
        std::fs::copy(&script, workspace.path().join("stdio-server.cjs"))?;
        Ok(Self {
            network,
            gateway,
            model,
            home: TestHome::new(),
            workspace,
        })
    }
}

/// A stdio MCP server (the official Node SDK, `tests/fixtures/mcp-server/stdio-server.cjs`)
/// registered with `--command` and `-e`: cubbi runs it inside the session as a systemd service
/// behind supergateway on loopback; Claude Code calls its tool, the server records the call
/// in the workspace and answers with its env's word. The bridge answers on loopback only, and
/// the env value is in no container env.
fn claude_code_calls_a_stdio_mcp_server_run_in_the_session() -> Result<(), Failed> {
    docker_test("mcp-stdio", |scope| async move {
        let StdioBench {
            network,
            gateway,
            model,
            home,
            workspace,
        } = StdioBench::start(&scope, "mcps", "local", "stdio").await?;
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

/// Builds, inside a session, an image of Node, the MCP SDK the image already has and the
/// stdio fixture, with the session's own Docker (no registry is reachable from a session
/// here, so it is imported rather than pulled).
const BUILD_FIXTURE_IMAGE: &str = r#"set -e
d=$(mktemp -d)
node=$(readlink -f "$(command -v node)")
mkdir -p "$d/usr/local/bin" "$d/srv" "$d/usr/local/lib/node_modules" "$d/tmp"
cp "$node" "$d/usr/local/bin/node"
for lib in $(ldd "$node" | grep -o '/[^ ]*'); do mkdir -p "$d$(dirname "$lib")"; cp -L "$lib" "$d$lib"; done
cp -a /usr/local/lib/node_modules/supergateway "$d/usr/local/lib/node_modules/"
cp /home/agent/workspace/stdio-server.cjs "$d/srv/"
tar -C "$d" -c . | sudo docker import - cubbi-mcp-fixture:1 >/dev/null
sudo docker image inspect cubbi-mcp-fixture:1 >/dev/null
echo imported"#;

/// `cubbi mcp add NAME --image IMG --command CMD`: the session's own Docker runs the stdio
/// server (`docker run -i --rm --init`) behind the loopback bridge, and Claude Code calls it.
fn claude_code_calls_a_stdio_mcp_server_from_an_image_in_the_sessions_docker() -> Result<(), Failed>
{
    docker_test("mcp-image", |scope| async move {
        let StdioBench {
            network,
            gateway,
            model,
            home,
            workspace,
        } = StdioBench::start(&scope, "mcpi", "boxed", "image").await?;
        scope
            .cubbi(&home)
            .args([
                "mcp",
                "add",
                "boxed",
                "--image",
                "cubbi-mcp-fixture:1",
                "--command",
                "/usr/local/bin/node /srv/stdio-server.cjs",
                "-e",
                &format!("FIXTURE_WORD={STDIO_WORD}"),
                "-e",
                "FIXTURE_RECORD=/tmp/calls.jsonl",
            ])
            .run()
            .success();
        let mut create = crate::mcp::with_runtime_flags(&[
            "session",
            "create",
            "--no-connect",
            "--image",
            "claude-code",
            "--mcp",
            "boxed",
            "--name",
            "mcp-image",
            "--no-default-network",
            "--network",
            &network,
            "-e",
            &format!("ANTHROPIC_API_KEY={MODEL_SECRET}"),
            "-e",
            &format!("ANTHROPIC_BASE_URL=http://{gateway}:{}", model.port),
        ]);
        create.push(workspace.path().display().to_string());
        scope.cubbi(&home).args(&create).run().success();
        scope
            .cubbi(&home)
            .args([
                "session",
                "exec",
                "mcp-image",
                "--",
                "bash",
                "-c",
                BUILD_FIXTURE_IMAGE,
            ])
            .run()
            .success()
            .stdout_contains("imported");
        let ran = scope
            .cubbi(&home)
            .args([
                "run",
                "--stream",
                "--timeout",
                "200s",
                "--session",
                "mcp-image",
                "-p",
                "Look up the image word",
            ])
            .run();
        let stdout = ran.stdout();
        let (events, result) = crate::mcp::stream_result(&stdout);
        if result["is_error"] != false {
            let logs = scope
                .cubbi(&home)
                .args(["session", "exec", "mcp-image", "--", "sh", "-c",
                       "systemctl status cubbi-mcp-boxed --no-pager; journalctl -u cubbi-mcp-boxed --no-pager | tail -30"])
                .run();
            return Err(format!(
                "the run failed: {stdout}\n{}\nbridge: {}{}",
                ran.stderr(),
                logs.stdout(),
                logs.stderr()
            )
            .into());
        }
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
        let inspect = scope
            .docker
            .inspect_container("cubbi-mcp-image", None)
            .await?;
        assert!(
            !serde_json::to_string(&inspect)?.contains(STDIO_WORD),
            "docker inspect shows the server's env"
        );
        Ok(())
    })
}
