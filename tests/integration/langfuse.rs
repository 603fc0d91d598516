//! Langfuse: the real Claude Code in a session exports its OpenTelemetry (OTLP/HTTP) to the
//! `services.langfuse.url` of the user config, with basic auth from the keys and the cubbi
//! session, owner and image as resource attributes; the keys are in no container env. The
//! receiver is `support::otlp_receiver` (a real Langfuse needs images no registry here has).
//! A Langfuse that is down never stops a session or a run.

use std::time::Duration;

use base64::Engine;
use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::support::model_server::{ModelServer, Reply};
use crate::support::otlp_receiver::OtlpReceiver;
use crate::support::{DockerScope, TestHome, docker_test, eventually};

pub fn tests() -> Vec<Trial> {
    crate::trials![claude_code_exports_traces_to_langfuse_with_the_session_attributes]
}

const PUBLIC_KEY: &str = "pk-lf-fixture-3c1";
const SECRET_KEY: &str = "sk-lf-fixture-9e77";

fn run_args(network: &str, model: &str, name: &str) -> Vec<String> {
    crate::mcp::with_runtime_flags(&[
        "--json",
        "run",
        "--timeout",
        "200s",
        "--image",
        "claude-code",
        "--keep",
        "--name",
        name,
        "--no-default-network",
        "--network",
        network,
        "--no-mount",
        "-e",
        "ANTHROPIC_API_KEY=sk-fixture-langfuse",
        "-e",
        &format!("ANTHROPIC_BASE_URL={model}"),
        "-p",
        "Say hello",
    ])
}

fn set_langfuse(scope: &DockerScope, home: &TestHome, url: &str) {
    for (key, value) in [
        ("services.langfuse.url", url),
        ("services.langfuse.public_key", PUBLIC_KEY),
        ("services.langfuse.secret_key", SECRET_KEY),
    ] {
        scope
            .cubbi(home)
            .args(["config", "set", key, value])
            .run()
            .success();
    }
}

fn claude_code_exports_traces_to_langfuse_with_the_session_attributes() -> Result<(), Failed> {
    docker_test("langfuse-claude", |scope| async move {
        scope.ensure_image("claude-code").await?;
        let network = format!("cubbi-lf-{}", scope.id);
        let gateway = scope.bridge_network(&network).await?;
        let model = ModelServer::start(vec![
            Reply::Text("Hello.".into()),
            Reply::Text("Hello again.".into()),
        ])?;
        let model_url = format!("http://{gateway}:{}", model.port);
        let home = TestHome::new();

        // A Langfuse that is down: the session boots and the run succeeds all the same.
        let dead = std::net::TcpListener::bind("0.0.0.0:0")?;
        let dead_port = dead.local_addr()?.port();
        drop(dead);
        set_langfuse(&scope, &home, &format!("http://{gateway}:{dead_port}"));
        let ran = scope
            .cubbi(&home)
            .args(run_args(&network, &model_url, "lf-down"))
            .run();
        let result: Value = serde_json::from_str(ran.stdout().trim()).unwrap_or(Value::Null);
        assert_eq!(result["is_error"], false, "{}\n{result}", ran.stderr());
        let ran = ran.success();
        // ... and says before the create that the traces are lost.
        assert!(
            ran.stderr().contains("Langfuse at") && ran.stderr().contains("does not answer"),
            "{}",
            ran.stderr()
        );

        // A Langfuse that answers gets the run's telemetry.
        let receiver = OtlpReceiver::start()?;
        set_langfuse(
            &scope,
            &home,
            &format!("http://{gateway}:{}", receiver.port),
        );
        let ran = scope
            .cubbi(&home)
            .args(run_args(&network, &model_url, "lf-up"))
            .run();
        let result: Value = serde_json::from_str(ran.stdout().trim()).unwrap_or(Value::Null);
        assert_eq!(result["is_error"], false, "{}\n{result}", ran.stderr());
        let ran = ran.success();
        assert!(
            !ran.stderr().contains("does not answer"),
            "{}",
            ran.stderr()
        );
        assert!(!ran.stdout().contains(SECRET_KEY) && !ran.stderr().contains(SECRET_KEY));

        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{PUBLIC_KEY}:{SECRET_KEY}"))
        );
        eventually(Duration::from_secs(60), || {
            let exports = receiver.exports();
            let basic = basic.clone();
            let owner = scope.id.clone();
            async move {
                let ours: Vec<_> = exports
                    .iter()
                    .filter(|e| e.path.starts_with("/api/public/otel/v1/"))
                    .collect();
                if ours.is_empty() {
                    return Err(format!(
                        "no OTLP export under /api/public/otel yet: {:?}",
                        exports.iter().map(|e| &e.path).collect::<Vec<_>>()
                    ));
                }
                for export in &ours {
                    if export.header("authorization") != Some(basic.as_str()) {
                        return Err(format!(
                            "{} came with authorization {:?}",
                            export.path,
                            export.header("authorization")
                        ));
                    }
                }
                let tagged = ours.iter().any(|e| {
                    let text = e.text();
                    text.contains("cubbi.session")
                        && text.contains("lf-up")
                        && text.contains("cubbi.owner")
                        && text.contains(&owner)
                        && text.contains("cubbi.image")
                        && text.contains("cubbi-claude-code")
                });
                if !tagged {
                    return Err(format!(
                        "no export carries the session's attributes: {}",
                        ours[0].text().chars().take(2000).collect::<String>()
                    ));
                }
                Ok(())
            }
        })
        .await?;
        let paths: Vec<String> = receiver.exports().iter().map(|e| e.path.clone()).collect();
        eprintln!("OTLP exports: {paths:?}");

        // The keys reached the session in its env file, not in Docker's view of it.
        let inspect = scope.docker.inspect_container("cubbi-lf-up", None).await?;
        let seen = serde_json::to_string(&inspect)?;
        assert!(!seen.contains(SECRET_KEY), "docker inspect shows the key");
        assert!(!seen.contains(&basic[6..]), "docker inspect shows the auth");
        Ok(())
    })
}
