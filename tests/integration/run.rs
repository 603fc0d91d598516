//! `cubbi run`: the real tool CLIs in real sessions against the scripted model server
//! (`support::model_server`), reached through the session network's gateway.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::support::model_server::{
    CACHE_READ_TOKENS, INPUT_TOKENS, ModelServer, OUTPUT_TOKENS, Reply,
};
use crate::support::sysbox::SessionRuntime;
use crate::support::{DockerScope, TestHome, docker_test};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        claude_code_writes_a_file_and_resumes_in_a_new_session,
        claude_code_disallowed_tool_is_refused,
        claude_code_api_error_fails_the_run,
        claude_code_timeout_stops_the_agent_and_keeps_secrets_out_of_sight,
        codex_writes_a_file_and_resumes_in_a_new_session,
        codex_api_error_fails_the_run,
        gemini_writes_a_file_and_resumes_in_a_new_session,
        gemini_api_error_fails_the_run,
        opencode_writes_a_file_and_resumes_in_a_new_session,
        opencode_api_error_fails_the_run,
        aider_edits_a_file_and_refuses_resume,
        bad_requests_are_refused_before_any_session_exists,
    ]
}

const SECRET: &str = "sk-fixture-secret-5d1e";
const PROMPT: &str = "Please write the greeting file";

/// A test's model server, a network of its own whose gateway reaches it, a workspace and a
/// home to run `cubbi` in.
struct Bench {
    scope: DockerScope,
    home: TestHome,
    server: ModelServer,
    network: String,
    gateway: String,
    workspace: tempfile::TempDir,
    image: &'static str,
}

impl Bench {
    async fn new(scope: DockerScope, image: &'static str) -> Result<Self, Failed> {
        scope.ensure_image(image).await?;
        let network = format!("cubbi-run-{}", scope.id);
        let gateway = scope.bridge_network(&network).await?;
        let workspace = tempfile::tempdir()?;
        std::fs::set_permissions(workspace.path(), std::fs::Permissions::from_mode(0o777))?;
        Ok(Self {
            scope,
            home: TestHome::new(),
            server: ModelServer::start(Vec::new())?,
            network,
            gateway,
            workspace,
            image,
        })
    }

    fn env(&self) -> Vec<String> {
        let base = format!("http://{}:{}", self.gateway, self.server.port);
        match self.image {
            "claude-code" => vec![
                format!("ANTHROPIC_API_KEY={SECRET}"),
                format!("ANTHROPIC_BASE_URL={base}"),
            ],
            "gemini" => vec![
                format!("GEMINI_API_KEY={SECRET}"),
                format!("GOOGLE_GEMINI_BASE_URL={base}"),
            ],
            "opencode" => vec![
                format!("OPENAI_API_KEY={SECRET}"),
                format!("OPENAI_BASE_URL={base}/v1"),
                "OPENAI_MODEL=fixture-model".into(),
            ],
            "aider" => vec![
                format!("OPENAI_API_KEY={SECRET}"),
                format!("OPENAI_API_BASE={base}/v1"),
                "AIDER_MODEL=openai/fixture-model".into(),
            ],
            _ => vec![
                format!("OPENAI_API_KEY={SECRET}"),
                format!("OPENAI_BASE_URL={base}/v1"),
            ],
        }
    }

    /// `cubbi --json run` in a new session on the bench, with `extra` flags.
    fn command(&self, extra: &[&str]) -> crate::support::Cubbi {
        let mut args: Vec<String> = vec!["--json".into(), "run".into()];
        // A tool that never gets an answer fails the test instead of hanging it.
        if !extra.contains(&"--timeout") {
            args.extend(["--timeout".into(), "150s".into()]);
        }
        args.extend([
            "--image".into(),
            self.image.into(),
            "--no-default-network".into(),
            "--network".into(),
            self.network.clone(),
        ]);
        for assignment in self.env() {
            args.extend(["-e".into(), assignment]);
        }
        args.extend(
            SessionRuntime::of_this_run()
                .create_flags()
                .iter()
                .map(|flag| flag.to_string()),
        );
        args.extend(extra.iter().map(|word| word.to_string()));
        args.push(self.workspace.path().display().to_string());
        self.scope.cubbi(&self.home).args(args)
    }

    fn run(&self, extra: &[&str]) -> (crate::support::cli::Ran, Value) {
        let ran = self.command(extra).run();
        let result = serde_json::from_str(ran.stdout().trim()).unwrap_or(Value::Null);
        (ran, result)
    }
}

/// The `--model` a run of `image` needs, if any: Gemini CLI's default ("auto") first asks a
/// router model which model to use, a request more than the scripted turns.
fn model_of(image: &str) -> Option<&'static str> {
    (image == "gemini").then_some("gemini-fixture")
}

/// The model API each tool calls the fixture with.
fn api_of(image: &str) -> &'static str {
    match image {
        "claude-code" => "/v1/messages",
        "gemini" => "/v1beta/models/gemini-fixture:streamGenerateContent",
        "codex" => "/v1/responses",
        _ => "/v1/chat/completions",
    }
}

fn expect_usage(image: &str, result: &Value, turns: u64) {
    // opencode counts input tokens without the cached ones; the others as the API reports.
    let input = if image == "opencode" {
        INPUT_TOKENS - CACHE_READ_TOKENS
    } else {
        INPUT_TOKENS
    };
    assert_eq!(result["usage"]["input_tokens"], input * turns, "{result}");
    assert_eq!(
        result["usage"]["output_tokens"],
        OUTPUT_TOKENS * turns,
        "{result}"
    );
    assert_eq!(
        result["usage"]["cache_read_input_tokens"],
        CACHE_READ_TOKENS * turns,
        "{result}"
    );
}

fn write_script(server: &ModelServer) {
    server.push(Reply::WriteFile {
        path: "/home/agent/workspace/greeting.txt".into(),
        content: "hello from the fixture".into(),
    });
    server.push(Reply::Text("I wrote greeting.txt.".into()));
}

/// The agent turn's request, as JSON text, holds what the earlier run said.
fn assert_resumed(server: &ModelServer) {
    let turns = server.turns();
    let last = turns.last().expect("a turn after the resume");
    let body = last.body.to_string();
    assert!(
        body.contains("I wrote greeting.txt.") && body.contains(PROMPT),
        "the resumed turn lacks the earlier conversation: {body}"
    );
}

fn writes_a_file_and_resumes(image: &'static str, name: &str) -> Result<(), Failed> {
    docker_test(name, move |scope| async move {
        let bench = Bench::new(scope, image).await?;
        write_script(&bench.server);
        let mut args = vec!["-p", PROMPT];
        if let Some(model) = model_of(image) {
            args.extend(["--model", model]);
        }
        let (ran, result) = bench.run(&args);
        let seen: Vec<String> = bench
            .server
            .recorded()
            .iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r.path,
                    r.body.to_string().chars().take(300).collect::<String>()
                )
            })
            .collect();
        assert_eq!(
            result["is_error"],
            false,
            "{}\nrequests: {seen:#?}",
            ran.stderr()
        );
        let ran = ran.success();
        assert_eq!(result["result"], "I wrote greeting.txt.");
        assert_eq!(result["exit_code"], 0);
        assert_eq!(result["session"], Value::Null, "closed after the run");
        expect_usage(image, &result, 2);
        let written = std::fs::read_to_string(bench.workspace.path().join("greeting.txt"))?;
        assert_eq!(written.trim(), "hello from the fixture");
        assert!(!ran.stdout().contains(SECRET) && !ran.stderr().contains(SECRET));
        let id = result["agent_session_id"]
            .as_str()
            .ok_or(format!("no agent_session_id in {result}"))?
            .to_string();
        // The key reached the tool through the session's environment file.
        let first = &bench.server.turns()[0];
        assert_eq!(first.path, api_of(image));
        let auth: Vec<&str> = first
            .headers
            .iter()
            .filter(|(k, _)| k == "x-api-key" || k == "authorization" || k == "x-goog-api-key")
            .map(|(_, v)| v.as_str())
            .collect();
        assert!(auth.iter().any(|v| v.contains(SECRET)), "{auth:?}");

        bench.server.push(Reply::Text("Resumed.".into()));
        let mut args = vec![
            "-p",
            "And again",
            "--resume",
            &id,
            "--keep",
            "--name",
            "kept",
        ];
        if let Some(model) = model_of(image) {
            args.extend(["--model", model]);
        }
        let (ran, resumed) = bench.run(&args);
        ran.success();
        assert_eq!(resumed["result"], "Resumed.");
        assert_eq!(resumed["session"], "kept");
        assert_resumed(&bench.server);

        // The tool's own output, read by cubbi's parser for this image (printed, so a run's log
        // holds real output for the parser's unit tests).
        bench.server.push(Reply::Text("Raw.".into()));
        let metadata = cubbi::images::Catalog::embedded()?
            .get(image)?
            .metadata
            .clone();
        let headless = metadata.headless.clone().ok_or("no [headless]")?;
        let argv = cubbi::run::argv::build(
            &metadata,
            &cubbi::run::RunRequest {
                prompt: "hi".into(),
                model: model_of(image).map(str::to_string),
                ..Default::default()
            },
            "/dev/null",
        )?;
        let line = format!("echo hi | {}", shell_words::join(&argv));
        let raw = bench
            .scope
            .cubbi(&bench.home)
            .args(["session", "exec", "kept", "--", "sh", "-c", &line])
            .run()
            .success()
            .stdout();
        eprintln!("--- raw {image} output ---\n{raw}--- end ---");
        let mut parser = cubbi::run::parse::Parser::new(headless.output);
        for line in raw.lines() {
            parser.line(line);
        }
        let parsed = parser.finish(0, "", 0);
        assert_eq!(parsed.result, "Raw.", "{parsed:?}");
        assert_eq!(
            parsed.usage.output_tokens,
            Some(OUTPUT_TOKENS),
            "{parsed:?}"
        );
        Ok(())
    })
}

fn claude_code_writes_a_file_and_resumes_in_a_new_session() -> Result<(), Failed> {
    writes_a_file_and_resumes("claude-code", "run-claude")
}

fn codex_writes_a_file_and_resumes_in_a_new_session() -> Result<(), Failed> {
    writes_a_file_and_resumes("codex", "run-codex")
}

fn gemini_writes_a_file_and_resumes_in_a_new_session() -> Result<(), Failed> {
    writes_a_file_and_resumes("gemini", "run-gemini")
}

fn opencode_writes_a_file_and_resumes_in_a_new_session() -> Result<(), Failed> {
    writes_a_file_and_resumes("opencode", "run-opencode")
}

fn api_error_fails(image: &'static str, name: &str) -> Result<(), Failed> {
    docker_test(name, move |scope| async move {
        let bench = Bench::new(scope, image).await?;
        bench.server.push(Reply::Error("fixture says no".into()));
        let mut args = vec!["-p", PROMPT];
        if let Some(model) = model_of(image) {
            args.extend(["--model", model]);
        }
        let (ran, result) = bench.run(&args);
        ran.failure();
        assert_eq!(result["is_error"], true, "{result}");
        // The model's error ended the run, not the test's timeout.
        assert!(
            !bench.server.turns().is_empty(),
            "the tool never asked the model"
        );
        assert!(
            !result["result"]
                .as_str()
                .unwrap_or_default()
                .contains("timed out"),
            "{result}"
        );
        // These two tools pass the API's message on.
        if matches!(image, "gemini" | "opencode") {
            assert!(
                result["result"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("fixture says no"),
                "{result}"
            );
        }
        Ok(())
    })
}

fn claude_code_api_error_fails_the_run() -> Result<(), Failed> {
    api_error_fails("claude-code", "run-claude-error")
}

fn codex_api_error_fails_the_run() -> Result<(), Failed> {
    api_error_fails("codex", "run-codex-error")
}

fn gemini_api_error_fails_the_run() -> Result<(), Failed> {
    api_error_fails("gemini", "run-gemini-error")
}

fn opencode_api_error_fails_the_run() -> Result<(), Failed> {
    api_error_fails("opencode", "run-opencode-error")
}

/// aider offers the model no tools: it applies the edit in the answer's text ("whole" format).
/// It prints no JSON, so the result is its output; it has no conversation to resume.
fn aider_edits_a_file_and_refuses_resume() -> Result<(), Failed> {
    docker_test("run-aider", |scope| async move {
        let bench = Bench::new(scope.clone(), "aider").await?;
        bench.server.every_request_a_turn();
        bench.server.push(Reply::WriteFile {
            path: "/home/agent/workspace/greeting.txt".into(),
            content: "hello from the fixture".into(),
        });
        let (ran, result) = bench.run(&["-p", PROMPT]);
        assert_eq!(result["is_error"], false, "{}\n{result}", ran.stderr());
        let ran = ran.success();
        let text = result["result"].as_str().unwrap_or_default();
        assert!(text.contains("I wrote greeting.txt."), "{result}");
        assert!(text.contains("Applied edit to greeting.txt"), "{result}");
        assert_eq!(result["exit_code"], 0);
        assert_eq!(result["agent_session_id"], Value::Null, "{result}");
        assert_eq!(result["total_cost_usd"], Value::Null, "{result}");
        let written = std::fs::read_to_string(bench.workspace.path().join("greeting.txt"))?;
        assert_eq!(written.trim(), "hello from the fixture");
        assert!(!ran.stdout().contains(SECRET) && !ran.stderr().contains(SECRET));
        let turns = bench.server.turns();
        assert_eq!(turns.len(), 1, "one request");
        assert_eq!(turns[0].path, api_of("aider"));
        assert_eq!(turns[0].body["model"], "fixture-model");
        assert!(turns[0].body.to_string().contains(PROMPT));
        assert!(
            turns[0]
                .headers
                .iter()
                .any(|(k, v)| k == "authorization" && v.contains(SECRET))
        );

        let (ran, _) = bench.run(&["-p", "And again", "--resume", "anything"]);
        ran.failure().stderr_contains("aider has no --resume");
        assert_eq!(
            bench.server.turns().len(),
            1,
            "the refused run asked the model"
        );
        let made = crate::support::containers_labelled(
            &scope.docker,
            &format!("io.cubbi.owner={}", scope.id),
        )
        .await?;
        assert!(made.is_empty(), "left behind: {made:?}");
        Ok(())
    })
}

fn claude_code_disallowed_tool_is_refused() -> Result<(), Failed> {
    docker_test("run-claude-deny", |scope| async move {
        let bench = Bench::new(scope, "claude-code").await?;
        write_script(&bench.server);
        let (ran, result) = bench.run(&["-p", PROMPT, "--disallowed-tools", "Write", "--stream"]);
        let stdout = ran.success().stdout();
        let offered: Vec<String> = bench.server.turns()[0].body["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|tool| tool["name"].as_str().map(str::to_string))
            .collect();
        assert!(!offered.contains(&"Write".to_string()), "{offered:?}");
        let events: Vec<Value> = stdout
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        let refused = events
            .iter()
            .find(|event| event["type"] == "tool_result")
            .ok_or(format!("no tool_result in {stdout}"))?;
        assert_eq!(refused["is_error"], true, "{refused}");
        assert!(
            !bench.workspace.path().join("greeting.txt").exists(),
            "the disallowed Write ran"
        );
        assert_eq!(
            events.last().map(|e| &e["type"]),
            Some(&Value::from("result"))
        );
        assert_eq!(
            result,
            Value::Null,
            "--stream prints events, not one object"
        );
        Ok(())
    })
}

fn claude_code_timeout_stops_the_agent_and_keeps_secrets_out_of_sight() -> Result<(), Failed> {
    docker_test("run-claude-timeout", |scope| async move {
        let bench = Bench::new(scope.clone(), "claude-code").await?;
        bench.server.push(Reply::Hang);
        let child = bench
            .command(&["-p", PROMPT, "--timeout", "40s", "--keep", "--name", "hang"])
            .spawn();
        // While the agent waits for the model: nothing in any process's argv, nor in the
        // container's configuration, shows the prompt or the key. (The child is waited for
        // whatever these checks find.)
        let checked = async {
            crate::support::eventually(Duration::from_secs(120), || async {
                if bench.server.turns().is_empty() {
                    return Err("the agent has not asked the model yet".into());
                }
                Ok(())
            })
            .await?;
            let containers = crate::support::containers_labelled(
                &scope.docker,
                &format!("io.cubbi.owner={}", scope.id),
            )
            .await?;
            let id = containers
                .first()
                .and_then(|c| c.id.clone())
                .ok_or("no session container")?;
            let inspected = scope.docker.inspect_container(&id, None).await?;
            let config = serde_json::to_string(&inspected)?;
            assert!(!config.contains(SECRET), "the key is in docker inspect");
            let listing = docker_exec(&scope, &id, &["ps", "-eo", "args"]).await?;
            assert!(listing.contains("claude"), "{listing}");
            assert!(!listing.contains(SECRET), "{listing}");
            assert!(!listing.contains(PROMPT), "{listing}");
            Ok::<String, Failed>(id)
        }
        .await;
        let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
        let id = checked?;
        assert!(!output.status.success());
        let result: Value = serde_json::from_slice(&output.stdout)?;
        assert_eq!(result["is_error"], true, "{result}");
        assert_eq!(result["exit_code"], Value::Null, "{result}");
        assert!(
            result["result"]
                .as_str()
                .unwrap_or_default()
                .contains("timed out"),
            "{result}"
        );
        assert_eq!(result["session"], "hang", "kept");
        let after = docker_exec(&scope, &id, &["ps", "-eo", "args"]).await?;
        assert!(
            !after.contains("claude -p"),
            "the agent still runs:\n{after}"
        );
        Ok(())
    })
}

fn bad_requests_are_refused_before_any_session_exists() -> Result<(), Failed> {
    docker_test("run-refusals", |scope| async move {
        let home = TestHome::new();
        let refusals: [(&[&str], &str); 4] = [
            (
                &["--image", "codex", "-p", "hi", "--max-turns", "2"],
                "codex has no --max-turns",
            ),
            (
                &["--image", "base", "-p", "hi"],
                "image `base` has no [headless] section",
            ),
            (
                &["--image", "claude-code", "-p", "  "],
                "the prompt is empty",
            ),
            (
                &["--image", "claude-code", "-p", "hi", "--max-turns", "-1"],
                "unexpected argument",
            ),
        ];
        for (args, message) in refusals {
            let mut all = vec!["run", "--no-mount"];
            all.extend(args);
            scope
                .cubbi(&home)
                .args(all)
                .run()
                .failure()
                .stderr_contains(message);
        }
        let made = crate::support::containers_labelled(
            &scope.docker,
            &format!("io.cubbi.owner={}", scope.id),
        )
        .await?;
        assert!(made.is_empty(), "{made:?}");
        Ok(())
    })
}

async fn docker_exec(scope: &DockerScope, id: &str, command: &[&str]) -> Result<String, Failed> {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    use futures_util::StreamExt;
    let exec = scope
        .docker
        .create_exec(
            id,
            CreateExecOptions {
                cmd: Some(command.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await?;
    let mut text = String::new();
    if let StartExecResults::Attached { mut output, .. } =
        scope.docker.start_exec(&exec.id, None).await?
    {
        while let Some(chunk) = output.next().await {
            text.push_str(&chunk?.to_string());
        }
    }
    Ok(text)
}
