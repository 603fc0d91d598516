//! MCP servers for agents: the registry (`cubbi mcp`), and the real Claude Code in a session
//! calling a real MCP server (the `mcp` SDK, `support::mcp_server`) when the scripted model
//! server asks it to.

use std::os::unix::fs::PermissionsExt;

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::support::mcp_server::{ANSWER, McpServer};
use crate::support::model_server::{ModelServer, Reply};
use crate::support::sysbox::SessionRuntime;
use crate::support::{Cubbi, TestHome, docker_test};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        registry_adds_lists_shows_and_removes_without_printing_secrets,
        bad_servers_are_refused_and_nothing_is_written,
        claude_code_calls_a_remote_mcp_server,
    ]
}

pub(crate) const HEADER_SECRET: &str = "mcp-header-secret-81c2";
pub(crate) const MODEL_SECRET: &str = "sk-fixture-secret-mcp";

fn registry_file(home: &TestHome) -> std::path::PathBuf {
    home.path().join(".config/cubbi/mcp.toml")
}

fn registry_adds_lists_shows_and_removes_without_printing_secrets() -> Result<(), Failed> {
    let home = TestHome::new();
    let cubbi = || Cubbi::new(&home);
    cubbi()
        .args(["mcp", "list"])
        .run()
        .success()
        .stdout_contains("cubbi mcp add");
    cubbi()
        .args([
            "mcp",
            "add",
            "docs",
            "https://mcp.example.com/mcp",
            "--header",
            &format!("Authorization=Bearer {HEADER_SECRET}"),
        ])
        .run()
        .success()
        .stdout_contains("--mcp docs");
    let mode = std::fs::metadata(registry_file(&home))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the registry holds secrets");
    let listed = cubbi()
        .args(["mcp", "list"])
        .run()
        .success()
        .stdout_contains("docs")
        .stdout_contains("https://mcp.example.com/mcp")
        .stdout_contains("Authorization")
        .stdout_lacks(HEADER_SECRET);
    drop(listed);
    let json = cubbi()
        .args(["--json", "mcp", "list"])
        .run()
        .success()
        .stdout_lacks(HEADER_SECRET)
        .stdout();
    let list: Value = serde_json::from_str(&json)?;
    assert_eq!(list[0]["name"], "docs");
    assert_eq!(list[0]["type"], "remote");
    assert_eq!(list[0]["headers"][0], "Authorization");
    let shown = cubbi()
        .args(["--json", "mcp", "show", "docs"])
        .run()
        .success()
        .stdout();
    assert_eq!(
        serde_json::from_str::<Value>(&shown)?["url"],
        list[0]["url"]
    );
    cubbi()
        .args(["mcp", "show", "docs"])
        .run()
        .success()
        .stdout_contains("values set, not shown")
        .stdout_lacks(HEADER_SECRET);
    // A second server under the same name is refused; the first is kept.
    cubbi()
        .args(["mcp", "add", "docs", "https://other.example/mcp"])
        .run()
        .failure()
        .stderr_contains("registered already");
    cubbi()
        .args(["config", "set", "defaults.mcp", "docs"])
        .run()
        .success();
    cubbi()
        .args(["config", "set", "defaults.mcp", "Bad Name"])
        .run()
        .failure()
        .stderr_contains("MCP server name");
    cubbi()
        .args(["mcp", "remove", "docs"])
        .run()
        .success()
        .stderr_contains("defaults.mcp still names docs");
    cubbi()
        .args(["mcp", "show", "docs"])
        .run()
        .failure()
        .stderr_contains("no MCP server `docs`");
    Ok(())
}

fn bad_servers_are_refused_and_nothing_is_written() -> Result<(), Failed> {
    let home = TestHome::new();
    let cases: &[(&[&str], &str)] = &[
        (&["mcp", "add", "docs", "not a url"], "is not usable"),
        (&["mcp", "add", "docs", "ftp://a.example/x"], "http://"),
        (
            &["mcp", "add", "docs", "https://u:p@a.example/x"],
            "--header",
        ),
        (
            &["mcp", "add", "Docs!", "https://a.example/x"],
            "MCP server name",
        ),
        (
            &[
                "mcp",
                "add",
                "docs",
                "https://a.example/x",
                "--header",
                "X-Key=a\nb",
            ],
            "one line",
        ),
        (
            &[
                "mcp",
                "add",
                "docs",
                "https://a.example/x",
                "--header",
                "X-Key",
            ],
            "NAME=VALUE",
        ),
        (&["mcp", "remove", "nothing"], "no MCP server"),
    ];
    for (args, message) in cases {
        Cubbi::new(&home)
            .args(*args)
            .run()
            .failure()
            .stderr_contains(message)
            .stderr_lacks("panicked");
        assert!(
            !registry_file(&home).exists(),
            "{args:?} wrote the registry"
        );
    }
    // A session naming an unknown server is refused before anything is made.
    Cubbi::new(&home)
        .args([
            "run",
            "--image",
            "claude-code",
            "--mcp",
            "nothing",
            "--no-mount",
            "-p",
            "hi",
        ])
        .env("CUBBI_DOCKER_HOST", "unix:///nonexistent/cubbi-test.sock")
        .run()
        .failure()
        .stderr_contains("no MCP server `nothing`");
    Ok(())
}

/// The model asks for the MCP server's tool; Claude Code (started with the `--mcp-config`
/// cubbi wrote) calls it over Streamable HTTP with the registered header; the tool's answer
/// reaches the model and the run's events. The header's secret is in no container env, argv
/// or output, and the session's config file is 0640 root:agent.
fn claude_code_calls_a_remote_mcp_server() -> Result<(), Failed> {
    docker_test("mcp-claude", |scope| async move {
        scope.ensure_image("claude-code").await?;
        let network = format!("cubbi-mcp-{}", scope.id);
        let gateway = scope.bridge_network(&network).await?;
        let mcp = McpServer::start()?;
        let model = ModelServer::start(vec![
            Reply::ToolCall {
                name: "mcp__fixture__lookup_word".into(),
                input: serde_json::json!({ "topic": "greeting" }),
            },
            Reply::Text("The word is in.".into()),
        ])?;
        let home = TestHome::new();
        let workspace = tempfile::tempdir()?;
        std::fs::set_permissions(workspace.path(), std::fs::Permissions::from_mode(0o777))?;
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
        let mut args = crate::mcp::with_runtime_flags(&[
            "run",
            "--stream",
            "--timeout",
            "200s",
            "--image",
            "claude-code",
            "--mcp",
            "fixture",
            "--keep",
            "--name",
            "mcp-claude",
            "--no-default-network",
            "--network",
            &network,
            "-e",
            &format!("ANTHROPIC_API_KEY={MODEL_SECRET}"),
            "-e",
            &format!("ANTHROPIC_BASE_URL=http://{gateway}:{}", model.port),
            "-p",
            "Look up the word for greeting",
        ]);
        args.push(workspace.path().display().to_string());
        let ran = scope.cubbi(&home).args(&args).run();
        let stdout = ran.stdout();
        let (events, result) = crate::mcp::stream_result(&stdout);
        assert_eq!(
            result["is_error"],
            false,
            "{stdout}\n{}\nmodel saw: {:#?}",
            ran.stderr(),
            model
                .recorded()
                .iter()
                .map(|r| r.path.clone())
                .collect::<Vec<_>>()
        );
        let ran = ran.success();
        assert!(!stdout.contains(HEADER_SECRET) && !ran.stderr().contains(HEADER_SECRET));

        // The model was told of the MCP tool (Claude Code may list it as a deferred tool),
        // and the server got the call with its header.
        let first = model.turns()[0].body.to_string();
        assert!(
            first.contains("mcp__fixture__lookup_word"),
            "the model never heard of the MCP tool: {}",
            first.chars().take(3000).collect::<String>()
        );
        let calls = mcp.calls();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0]["args"]["topic"], "greeting");
        let headers = mcp.request_headers();
        assert!(!headers.is_empty());
        assert!(
            headers
                .iter()
                .all(|h| h["authorization"] == format!("Bearer {HEADER_SECRET}")),
            "{headers:?}"
        );
        // The tool's answer is in the run's events and went back to the model.
        let tool_result = events
            .iter()
            .find(|e| e["type"] == "tool_result")
            .ok_or(format!("no tool_result event: {stdout}"))?;
        assert!(
            tool_result["output"]
                .as_str()
                .unwrap_or_default()
                .contains(ANSWER),
            "{tool_result}"
        );
        assert_eq!(tool_result["is_error"], false);
        let last = model.turns().last().cloned().ok_or("no turns")?;
        assert!(last.body.to_string().contains(ANSWER));
        assert_eq!(result["result"], "The word is in.");

        // The secret is in the session's file only: not in Docker's view of the container.
        let inspect = scope
            .docker
            .inspect_container("cubbi-mcp-claude", None)
            .await?;
        let seen = serde_json::to_string(&inspect)?;
        assert!(
            !seen.contains(HEADER_SECRET),
            "docker inspect shows the header"
        );
        let stat = scope
            .cubbi(&home)
            .args([
                "session",
                "exec",
                "mcp-claude",
                "--",
                "stat",
                "-c",
                "%a %U %G",
                "/etc/cubbi/mcp/claude.json",
            ])
            .run()
            .success()
            .stdout();
        assert_eq!(stat.trim(), "640 root agent");
        Ok(())
    })
}

/// `words` as owned arguments, followed by the runtime flags this run's sessions need.
pub(crate) fn with_runtime_flags(words: &[&str]) -> Vec<String> {
    words
        .iter()
        .map(|word| word.to_string())
        .chain(
            SessionRuntime::of_this_run()
                .create_flags()
                .iter()
                .map(|flag| flag.to_string()),
        )
        .collect()
}

/// The events of a `run --stream` (one JSON object a line) and its `result` event (null when
/// there is none).
pub(crate) fn stream_result(stdout: &str) -> (Vec<Value>, Value) {
    let events: Vec<Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let result = events
        .iter()
        .find(|event| event["type"] == "result")
        .cloned()
        .unwrap_or(Value::Null);
    (events, result)
}
