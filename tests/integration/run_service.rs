//! Agent runs through the service (`POST /v1/runs`, `POST /v1/sessions/{id}/runs`): the real
//! `cubbi serve` on 127.0.0.1, real sessions with the real tool CLIs, and the scripted model
//! server on this host.

use std::time::Duration;

use libtest_mimic::{Failed, Trial};
use serde_json::{Value, json};

use crate::support::model_server::{INPUT_TOKENS, ModelServer, OUTPUT_TOKENS, Reply};
use crate::support::service::{TestService, user};
use crate::support::sysbox::SessionRuntime;
use crate::support::{DockerScope, TestHome, docker_test, eventually};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        claude_code_runs_over_http_as_json_and_ndjson,
        codex_runs_over_http_in_a_kept_session,
        a_client_that_goes_away_stops_the_run_and_its_session,
        bad_run_requests_are_refused_and_leave_nothing,
        cubbi_r_run_goes_through_the_service_and_resumes_in_a_kept_session,
        run_conformance_local_and_remote,
        claude_code_calls_the_callers_mcp_server_through_the_service,
    ]
}

const SECRET: &str = "sk-service-fixture-7c2b";

/// A service whose sessions may join a network whose gateway reaches the model server.
struct RunService {
    service: TestService,
    server: ModelServer,
    network: String,
    gateway: String,
    token: String,
    http: reqwest::Client,
}

impl RunService {
    async fn start(scope: &DockerScope, image: &str, runs_per_user: usize) -> Result<Self, Failed> {
        scope.ensure_image(image).await?;
        let network = format!("cubbi-runs-{}", scope.id);
        let gateway = scope.bridge_network(&network).await?;
        let allowed = network.clone();
        let service = TestService::start(scope, move |config| {
            config.networks.allowed = vec![allowed];
            config.runs.per_user = runs_per_user;
            config.runs.max_timeout = 240;
        })
        .await?;
        let token = service.token(&user(scope, "runner"), false)?;
        Ok(Self {
            service,
            server: ModelServer::start(Vec::new())?,
            network,
            gateway,
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(300))
                .build()?,
        })
    }

    fn base_url(&self) -> String {
        format!("http://{}:{}", self.gateway, self.server.port)
    }

    /// A run request for `image`, pointed at the model server.
    fn body(&self, image: &str, prompt: &str) -> Value {
        let env = match image {
            "claude-code" => json!({
                "ANTHROPIC_API_KEY": SECRET,
                "ANTHROPIC_BASE_URL": self.base_url(),
            }),
            _ => json!({
                "OPENAI_API_KEY": SECRET,
                "OPENAI_BASE_URL": format!("{}/v1", self.base_url()),
            }),
        };
        json!({
            "image": image,
            "prompt": prompt,
            "env": env,
            "networks": [self.network],
            "runtime": SessionRuntime::of_this_run().runtime_name(),
            "timeout": 200,
        })
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.service.url))
            .bearer_auth(&self.token)
    }

    async fn sessions(&self) -> Result<Vec<Value>, Failed> {
        let listed: Value = self
            .http
            .get(format!("{}/v1/sessions", self.service.url))
            .bearer_auth(&self.token)
            .send()
            .await?
            .json()
            .await?;
        Ok(listed.as_array().cloned().unwrap_or_default())
    }
}

fn expect_fixture_usage(result: &Value) {
    assert_eq!(result["usage"]["input_tokens"], INPUT_TOKENS, "{result}");
    assert_eq!(result["usage"]["output_tokens"], OUTPUT_TOKENS, "{result}");
}

fn claude_code_runs_over_http_as_json_and_ndjson() -> Result<(), Failed> {
    docker_test("runs-http-claude", |scope| async move {
        let mut bench = RunService::start(&scope, "claude-code", 4).await?;
        bench
            .server
            .push(Reply::Text("Hello from the fixture".into()));
        let answer = bench
            .post("/v1/runs")
            .json(&bench.body("claude-code", "Say hello"))
            .send()
            .await?;
        let status = answer.status();
        let result: Value = answer.json().await?;
        assert_eq!(status, 200, "{result}");
        assert_eq!(result["result"], "Hello from the fixture", "{result}");
        assert_eq!(result["is_error"], false, "{result}");
        assert!(
            result["session"].is_null(),
            "closed after the run: {result}"
        );
        assert!(result["agent_session_id"].is_string(), "{result}");
        expect_fixture_usage(&result);
        assert!(!result.to_string().contains(SECRET));
        // The service's list follows Docker's events: under load an event of the run's
        // session can land after its close (seen once in a full run), so allow it a moment.
        eventually(Duration::from_secs(10), || {
            let listed = bench.sessions();
            async move {
                let listed = listed.await.map_err(|err| format!("{err:?}"))?;
                listed
                    .is_empty()
                    .then_some(())
                    .ok_or(format!("the run's session is still listed: {listed:?}"))
            }
        })
        .await?;
        // The prompt reached the model, the key only as a header.
        let turns = bench.server.turns();
        assert!(
            turns
                .iter()
                .any(|turn| turn.body.to_string().contains("Say hello"))
        );
        assert!(
            turns
                .iter()
                .all(|turn| !turn.body.to_string().contains(SECRET))
        );

        // NDJSON: events as they come, the result last.
        bench.server.push(Reply::Text("Streamed answer".into()));
        let answer = bench
            .post("/v1/runs")
            .header("accept", "application/x-ndjson")
            .json(&bench.body("claude-code", "Stream please"))
            .send()
            .await?;
        assert_eq!(answer.status(), 200);
        assert_eq!(
            answer
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/x-ndjson")
        );
        let text = answer.text().await?;
        let events: Vec<Value> = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        let last = events.last().ok_or("no events")?;
        assert_eq!(last["type"], "result", "{text}");
        assert_eq!(last["result"], "Streamed answer", "{text}");
        assert!(
            events
                .iter()
                .any(|event| event["type"] == "text" && event["text"] == "Streamed answer"),
            "{text}"
        );
        assert_eq!(
            events.iter().filter(|e| e["type"] == "result").count(),
            1,
            "{text}"
        );
        bench.service.stop().await?;
        Ok(())
    })
}

fn codex_runs_over_http_in_a_kept_session() -> Result<(), Failed> {
    docker_test("runs-http-codex", |scope| async move {
        let mut bench = RunService::start(&scope, "codex", 4).await?;
        bench.server.push(Reply::Text("First codex answer".into()));
        let mut body = bench.body("codex", "First question");
        body["keep"] = json!(true);
        let answer = bench.post("/v1/runs").json(&body).send().await?;
        let status = answer.status();
        let first: Value = answer.json().await?;
        assert_eq!(status, 200, "{first}");
        assert_eq!(first["result"], "First codex answer", "{first}");
        expect_fixture_usage(&first);
        assert!(first["total_cost_usd"].is_null(), "codex reports no cost");
        let session = first["session"]
            .as_str()
            .ok_or("a kept session")?
            .to_string();
        let listed = bench.sessions().await?;
        assert_eq!(listed.len(), 1);

        // The key is in no container env Docker shows.
        let inspected = std::process::Command::new("docker")
            .args(["-H", &scope.endpoint, "inspect"])
            .arg(listed[0]["id"].as_str().ok_or("an id")?)
            .output()?;
        assert!(inspected.status.success());
        assert!(!String::from_utf8_lossy(&inspected.stdout).contains(SECRET));

        // A second run in the same session resumes the conversation.
        bench.server.push(Reply::Text("Second codex answer".into()));
        let answer = bench
            .post(&format!("/v1/sessions/{session}/runs"))
            .json(&json!({
                "prompt": "Second question",
                "resume_session_id": first["agent_session_id"],
            }))
            .send()
            .await?;
        let status = answer.status();
        let second: Value = answer.json().await?;
        assert_eq!(status, 200, "{second}");
        assert_eq!(second["result"], "Second codex answer", "{second}");
        assert_eq!(second["session"], session.as_str());
        let last_turn = bench.server.turns().pop().ok_or("no turn")?;
        assert!(
            last_turn.body.to_string().contains("First question"),
            "the resumed run sends the earlier turns: {}",
            last_turn.body
        );

        // Session options belong to new sessions.
        let refused = bench
            .post(&format!("/v1/sessions/{session}/runs"))
            .json(&json!({"prompt": "x", "env": {"A": "b"}}))
            .send()
            .await?;
        assert_eq!(refused.status(), 400);
        let body: Value = refused.json().await?;
        assert_eq!(body["error"]["code"], "invalid", "{body}");

        let closed = bench
            .http
            .delete(format!("{}/v1/sessions/{session}", bench.service.url))
            .bearer_auth(&bench.token)
            .send()
            .await?;
        assert_eq!(closed.status(), 200);
        bench.service.stop().await?;
        Ok(())
    })
}

fn a_client_that_goes_away_stops_the_run_and_its_session() -> Result<(), Failed> {
    docker_test("runs-http-gone", |scope| async move {
        let mut bench = RunService::start(&scope, "claude-code", 1).await?;
        bench.server.push(Reply::Hang);
        let request = bench
            .post("/v1/runs")
            .json(&bench.body("claude-code", "Never answered"))
            .send();
        let pending = tokio::spawn(request);
        eventually(Duration::from_secs(180), || async {
            if bench.server.turns().is_empty() {
                Err("the agent has not asked the model yet".to_string())
            } else {
                Ok(())
            }
        })
        .await?;
        // While it runs, the caller's one run slot is taken.
        let second = bench
            .post("/v1/runs")
            .json(&bench.body("claude-code", "A second run"))
            .send()
            .await?;
        assert_eq!(second.status(), 429);
        // The client goes away.
        pending.abort();
        eventually(Duration::from_secs(60), || async {
            match bench.sessions().await {
                Ok(sessions) if sessions.is_empty() => Ok(()),
                Ok(sessions) => Err(format!("{} sessions still there", sessions.len())),
                Err(err) => Err(format!("{err:?}")),
            }
        })
        .await?;
        // The slot is free again: a run is taken (and answered by the script).
        bench.server.push(Reply::Text("after".into()));
        let third = bench
            .post("/v1/runs")
            .json(&bench.body("claude-code", "A third run"))
            .send()
            .await?;
        let status = third.status();
        let result: Value = third.json().await?;
        assert_eq!(status, 200, "{result}");
        assert_eq!(result["result"], "after", "{result}");
        bench.service.stop().await?;
        Ok(())
    })
}

fn bad_run_requests_are_refused_and_leave_nothing() -> Result<(), Failed> {
    docker_test("runs-http-bad", |scope| async move {
        let mut bench = RunService::start(&scope, "claude-code", 4).await?;
        let mut cases = Vec::new();
        let mut empty = bench.body("claude-code", "   ");
        cases.push(("empty prompt", empty.take()));
        cases.push(("no headless mode", bench.body("base", "hello")));
        let mut negative = bench.body("claude-code", "hello");
        negative["max_turns"] = json!(-1);
        cases.push(("negative max_turns", negative));
        let mut unknown = bench.body("claude-code", "hello");
        unknown["colour"] = json!("blue");
        cases.push(("unknown field", unknown));
        let mut too_long = bench.body("claude-code", "hello");
        too_long["timeout"] = json!(100_000);
        cases.push(("timeout over runs.max_timeout", too_long));
        let mut no_image = bench.body("claude-code", "hello");
        no_image.as_object_mut().ok_or("an object")?.remove("image");
        cases.push(("no image", no_image));
        for (what, body) in cases {
            let answer = bench.post("/v1/runs").json(&body).send().await?;
            let status = answer.status();
            let body: Value = answer.json().await?;
            assert_eq!(status, 400, "{what}: {body}");
            assert!(body["error"]["message"].is_string(), "{what}: {body}");
        }
        assert!(bench.sessions().await?.is_empty(), "nothing was created");
        assert!(bench.server.recorded().is_empty(), "no model was asked");
        bench.service.stop().await?;
        Ok(())
    })
}

/// `cubbi -r NAME run` is `POST /v1/runs` with the CLI's options: a run closed afterwards, a
/// kept one streamed, a resumed run in the kept session with the prompt on stdin, and a
/// local folder refused before anything reaches the service.
fn cubbi_r_run_goes_through_the_service_and_resumes_in_a_kept_session() -> Result<(), Failed> {
    docker_test("runs-cli-remote", |scope| async move {
        let mut bench = RunService::start(&scope, "claude-code", 4).await?;
        let home = TestHome::new();
        let cli = |args: Vec<String>, stdin: Option<String>| {
            let cubbi = crate::support::Cubbi::new(&home).args(args);
            match stdin {
                Some(input) => cubbi.stdin(input),
                None => cubbi,
            }
            .run_async()
        };
        let words = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        cli(words(&["remote", "add", "svc", &bench.service.url]), None)
            .await?
            .success();
        cli(
            words(&["-r", "svc", "auth"]),
            Some(format!("{}\n", bench.token)),
        )
        .await?
        .success();
        let base_url = bench.base_url();
        let new_run = |extra: &[&str]| {
            let mut args = words(&["-r", "svc", "--json", "run", "--image", "claude-code"]);
            args.extend(words(&["--no-mount", "--timeout", "200s", "--network"]));
            args.push(bench.network.clone());
            args.extend(words(&["-e", &format!("ANTHROPIC_API_KEY={SECRET}")]));
            args.extend(words(&["-e", &format!("ANTHROPIC_BASE_URL={base_url}")]));
            args.extend(words(SessionRuntime::of_this_run().create_flags()));
            args.extend(words(extra));
            args
        };

        bench.server.push(Reply::Text("Remote answer".into()));
        let ran = cli(new_run(&["-p", "Remote question"]), None).await?;
        let result: Value = serde_json::from_str(ran.stdout().trim()).unwrap_or(Value::Null);
        assert!(ran.output.status.success(), "{}", ran.stderr());
        assert_eq!(result["result"], "Remote answer", "{result}");
        assert!(result["session"].is_null(), "closed: {result}");
        expect_fixture_usage(&result);
        assert!(
            bench.sessions().await?.is_empty(),
            "the run's session is closed"
        );

        // Kept and streamed: events, then one result naming the session.
        bench.server.push(Reply::Text("Kept answer".into()));
        let mut kept_args = new_run(&["--keep", "--stream", "-p", "Kept question"]);
        kept_args.retain(|word| word != "--json");
        let ran = cli(kept_args, None).await?;
        assert!(ran.output.status.success(), "{}", ran.stderr());
        let events: Vec<Value> = ran
            .stdout()
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        let last = events.last().ok_or("no events")?;
        assert_eq!(last["type"], "result", "{events:?}");
        assert_eq!(last["result"], "Kept answer", "{last}");
        assert!(
            events.iter().any(|e| e["type"] == "text"),
            "a text event before the result: {events:?}"
        );
        let session = last["session"]
            .as_str()
            .ok_or("a kept session")?
            .to_string();
        let agent_session = last["agent_session_id"]
            .as_str()
            .ok_or("an agent session id")?
            .to_string();
        assert_eq!(bench.sessions().await?.len(), 1);

        // In the kept session, resumed, the prompt on stdin.
        bench.server.push(Reply::Text("Resumed answer".into()));
        let ran = cli(
            words(&[
                "-r",
                "svc",
                "--json",
                "run",
                "--session",
                &session,
                "--resume",
                &agent_session,
                "-p",
                "-",
            ]),
            Some("Follow-up question".into()),
        )
        .await?;
        let result: Value = serde_json::from_str(ran.stdout().trim()).unwrap_or(Value::Null);
        assert!(ran.output.status.success(), "{}", ran.stderr());
        assert_eq!(result["result"], "Resumed answer", "{result}");
        assert_eq!(result["session"], session.as_str(), "{result}");
        let last_turn = bench.server.turns().pop().ok_or("no turn")?;
        let sent = last_turn.body.to_string();
        assert!(
            sent.contains("Follow-up question") && sent.contains("Kept question"),
            "the resumed run sends the earlier turns: {sent}"
        );

        // A folder of this machine cannot go to the service: refused, nothing made.
        let folder = tempfile::tempdir()?;
        let mut with_folder = new_run(&["-p", "x"]);
        with_folder.retain(|word| word != "--no-mount");
        with_folder.push(folder.path().display().to_string());
        let ran = cli(with_folder, None).await?;
        assert!(!ran.output.status.success());
        assert!(
            ran.stderr()
                .contains("cannot be mounted into a remote session"),
            "{}",
            ran.stderr()
        );
        assert_eq!(bench.sessions().await?.len(), 1, "nothing new was made");
        cli(words(&["-r", "svc", "session", "close", &session]), None)
            .await?
            .success();
        bench.service.stop().await?;
        Ok(())
    })
}

/// Where the run scenario runs: the local backend (the CLI's `cubbi run`) or the service
/// (`POST /v1/sessions/{id}/runs` through the client).
enum Runner<'a> {
    Local {
        backend: &'a cubbi::local::backend::LocalBackend,
        key: std::sync::Arc<russh::keys::PrivateKey>,
    },
    Remote(&'a cubbi::remote::client::RemoteBackend),
}

impl Runner<'_> {
    fn backend(&self) -> &dyn cubbi::api::Backend {
        match self {
            Runner::Local { backend, .. } => *backend,
            Runner::Remote(backend) => *backend,
        }
    }

    async fn run(
        &self,
        session: &str,
        request: &cubbi::run::RunRequest,
    ) -> Result<cubbi::run::RunResult, Failed> {
        let mut events = Vec::new();
        let mut on_event = |event: &cubbi::run::RunEvent| events.push(event.clone());
        let result = match self {
            Runner::Local { backend, key } => {
                let image = cubbi::api::Backend::get(*backend, session).await?.image;
                let metadata = cubbi::run::tool_metadata(&image)?;
                cubbi::run::run(
                    *backend,
                    std::sync::Arc::clone(key),
                    session,
                    &metadata,
                    request,
                    std::future::pending(),
                    &mut on_event,
                )
                .await?
            }
            Runner::Remote(backend) => {
                let body = cubbi::remote::runs::run_body(None, request, false)?;
                backend.run(Some(session), &body, &mut on_event).await?
            }
        };
        if !result.is_error {
            assert!(
                events
                    .iter()
                    .any(|event| matches!(event, cubbi::run::RunEvent::Text { .. })),
                "a text event before the result: {events:?}"
            );
        }
        Ok(result)
    }
}

/// The run scenario every backend passes the same way: a tool call that writes a file, a
/// resume that sends the earlier turns, and a model error that fails the run.
async fn run_scenario(
    runner: Runner<'_>,
    server: &ModelServer,
    spec: cubbi::api::SessionSpec,
) -> Result<(), Failed> {
    let name = spec.name.clone().ok_or("a named spec")?;
    runner.backend().create(spec, &cubbi::api::Quiet).await?;
    server.push(Reply::WriteFile {
        path: "/home/agent/conformance.txt".into(),
        content: "written by the agent".into(),
    });
    server.push(Reply::Text("Wrote it.".into()));
    let request = |prompt: &str| cubbi::run::RunRequest {
        prompt: prompt.into(),
        timeout: Some(Duration::from_secs(200)),
        ..Default::default()
    };
    let first = runner
        .run(&name, &request("Write the conformance file"))
        .await?;
    assert!(!first.is_error, "{first:?}");
    assert_eq!(first.result, "Wrote it.");
    assert_eq!(first.session.as_deref(), Some(name.as_str()));
    assert_eq!(first.exit_code, Some(0));
    assert_eq!(
        first.usage.input_tokens,
        Some(2 * INPUT_TOKENS),
        "two turns"
    );
    let (written, _, code) = crate::serve::run(
        runner.backend(),
        &name,
        &["cat", "/home/agent/conformance.txt"],
    )
    .await?;
    assert_eq!((written.as_str(), code), ("written by the agent", 0));

    server.push(Reply::Text("Resumed.".into()));
    let mut resume = request("And now?");
    resume.resume = first.agent_session_id.clone();
    let second = runner.run(&name, &resume).await?;
    assert_eq!(second.result, "Resumed.", "{second:?}");
    let last_turn = server.turns().pop().ok_or("no turn")?;
    assert!(
        last_turn
            .body
            .to_string()
            .contains("Write the conformance file"),
        "the resumed run sends the earlier turns"
    );

    server.push(Reply::Error("the fixture refuses".into()));
    let failed = runner.run(&name, &request("Fail please")).await?;
    assert!(failed.is_error, "{failed:?}");
    assert_ne!(failed.exit_code, Some(0), "{failed:?}");
    runner.backend().close(&name).await?;
    Ok(())
}

fn run_conformance_local_and_remote() -> Result<(), Failed> {
    docker_test("runs-conformance", |scope| async move {
        let bench = RunService::start(&scope, "claude-code", 4).await?;
        let network = bench.network.clone();
        let spec = |name: &str, base_url: String| {
            let mut spec = crate::serve::spec(name);
            spec.image = "claude-code".into();
            spec.networks = vec![network.clone()];
            spec.env = std::collections::BTreeMap::from([
                ("ANTHROPIC_API_KEY".to_string(), SECRET.to_string()),
                ("ANTHROPIC_BASE_URL".to_string(), base_url),
            ]);
            spec
        };
        let key = std::sync::Arc::new(cubbi::ssh::keys::generate("test")?);
        let local = crate::support::local_backend_with_key(&scope, None, key.clone())?;
        run_scenario(
            Runner::Local {
                backend: &local,
                key,
            },
            &bench.server,
            spec(&user(&scope, "run-local"), bench.base_url()),
        )
        .await?;

        // A fresh script for the service: the error above answers every turn from then on.
        let server = ModelServer::start(Vec::new())?;
        let mut bench = bench;
        bench.server = server;
        let remote = bench.service.client(&bench.token)?;
        run_scenario(
            Runner::Remote(&remote),
            &bench.server,
            spec(&user(&scope, "run-remote"), bench.base_url()),
        )
        .await?;
        bench.service.stop().await?;
        Ok(())
    })
}

/// MCP servers on the service are the caller's own: registered with the remote client
/// (`cubbi -r NAME mcp add`), shown without the header's value, a 404 to anyone else, and
/// given by name to a run (`"mcp": [NAME]` in `POST /v1/runs`). The real Claude Code in the
/// run's session calls the real MCP server, which gets the header.
fn claude_code_calls_the_callers_mcp_server_through_the_service() -> Result<(), Failed> {
    use crate::mcp::HEADER_SECRET;
    use crate::support::mcp_server::{ANSWER, McpServer};
    docker_test("runs-mcp", |scope| async move {
        let bench = RunService::start(&scope, "claude-code", 4).await?;
        let mcp = McpServer::start()?;
        let owner = bench.service.client(&bench.token)?;
        let server = cubbi::mcp::McpServer::new(
            "fixture",
            &format!("http://{}:{}/mcp", bench.gateway, mcp.port),
            &[format!("Authorization=Bearer {HEADER_SECRET}")],
        )?;
        let added = owner.mcp_add(&server).await?;
        assert_eq!(added.headers, ["Authorization"]);
        let listed = serde_json::to_string(&owner.mcp_list().await?)?;
        assert!(
            listed.contains("fixture") && !listed.contains(HEADER_SECRET),
            "{listed}"
        );
        let again = owner
            .mcp_add(&server)
            .await
            .err()
            .ok_or("a second add was accepted")?;
        assert_eq!(again.code(), cubbi::api::ErrorCode::Conflict, "{again}");

        // Another user: no such server, and a run naming it is refused before a session.
        let stranger_token = bench.service.token(&user(&scope, "stranger"), false)?;
        let stranger = bench.service.client(&stranger_token)?;
        let hidden = stranger
            .mcp_show("fixture")
            .await
            .err()
            .ok_or("another user saw it")?;
        assert_eq!(hidden.code(), cubbi::api::ErrorCode::NotFound, "{hidden}");
        assert!(stranger.mcp_list().await?.is_empty());
        let mut body = bench.body("claude-code", "Look up the word for greeting");
        body["mcp"] = json!(["fixture"]);
        let refused = bench
            .http
            .post(format!("{}/v1/runs", bench.service.url))
            .bearer_auth(&stranger_token)
            .json(&body)
            .send()
            .await?;
        assert_eq!(refused.status(), 400);
        assert!(refused.text().await?.contains("fixture"));

        bench.server.push(Reply::ToolCall {
            name: "mcp__fixture__lookup_word".into(),
            input: json!({ "topic": "greeting" }),
        });
        bench.server.push(Reply::Text("The word is in.".into()));
        let answer = bench.post("/v1/runs").json(&body).send().await?;
        let status = answer.status();
        let result: Value = answer.json().await?;
        assert_eq!(status, 200, "{result}");
        assert_eq!(result["is_error"], false, "{result}");
        assert_eq!(result["result"], "The word is in.", "{result}");
        assert!(!result.to_string().contains(HEADER_SECRET));
        let calls = mcp.calls();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0]["args"]["topic"], "greeting");
        assert!(
            mcp.request_headers()
                .iter()
                .all(|h| h["authorization"] == format!("Bearer {HEADER_SECRET}")),
            "{:?}",
            mcp.request_headers()
        );
        let last = bench.server.turns().last().cloned().ok_or("no turns")?;
        assert!(last.body.to_string().contains(ANSWER));

        let removed = owner.mcp_remove("fixture").await?;
        assert_eq!(removed.name, "fixture");
        assert!(owner.mcp_list().await?.is_empty());
        Ok(())
    })
}
