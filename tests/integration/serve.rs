//! `cubbi serve` against real parts: the service in-process on 127.0.0.1:0 with a real token
//! store, the real test dockerd and real system containers, driven by the real clients (the
//! remote backend, the `cubbi -r` binary) and by raw HTTP for what clients never send. One
//! conformance suite runs against the local backend and against the service.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cubbi::api::{Backend, ErrorCode, ExecEvent, LogOptions, Quiet, SessionSpec, SessionState};
use futures_util::StreamExt;
use libtest_mimic::{Failed, Trial};
use serde_json::{Value, json};

use crate::support::service::{TestService, user};
use crate::support::sysbox::SessionRuntime;
use crate::support::{TestHome, docker_test};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        conformance_local_and_remote,
        every_route_needs_a_valid_token,
        users_see_only_their_own_sessions_and_restarts_keep_them,
        bad_requests_are_refused_and_make_nothing,
        cli_drives_the_service_like_the_local_endpoint,
        image_commands_with_r_read_the_services_catalogue,
        the_binary_logs_json_without_tokens_and_stops_on_sigterm,
        https_with_a_private_ca_for_clients_that_trust_it,
        close_takes_exact_names_and_tokens_keep_admins,
        images_outside_the_catalogue_never_boot,
    ]
}

pub(crate) fn spec(name: &str) -> SessionSpec {
    SessionSpec {
        name: Some(name.to_string()),
        image: "base".into(),
        workspace: None,
        project: None,
        run_init: false,
        env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
        volumes: Vec::new(),
        networks: Vec::new(),
        default_network: true,
        memory: "512m".parse().ok(),
        cpus: None,
        pids_limit: None,
        runtime: SessionRuntime::of_this_run().runtime_name().into(),
        unsafe_runc: SessionRuntime::of_this_run().unsafe_runc(),
        ssh_bind: "127.0.0.1".parse().expect("an address"),
        authorized_keys: Vec::new(),
        idle_stop_secs: None,
        mcp: Vec::new(),
        mcp_names: Vec::new(),
        egress: None,
    }
}

/// Stdout, stderr and the exit code of a command run through a backend.
pub(crate) async fn run(
    backend: &dyn Backend,
    id: &str,
    command: &[&str],
) -> Result<(String, String, i32), Failed> {
    let mut events = backend
        .exec(id, command.iter().map(|s| s.to_string()).collect())
        .await?;
    let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
    while let Some(event) = events.next().await {
        match event? {
            ExecEvent::Stdout(data) => out.extend(data),
            ExecEvent::Stderr(data) => err.extend(data),
            ExecEvent::Exit(exit) => code = Some(exit),
        }
    }
    let code = code.ok_or("the exec stream ended without an exit code")?;
    Ok((String::from_utf8(out)?, String::from_utf8(err)?, code))
}

/// The scenarios every backend passes the same way.
async fn conformance(backend: &dyn Backend, name: &str) -> Result<(), Failed> {
    let session = backend.create(spec(name), &Quiet).await?;
    assert_eq!(session.state, SessionState::Ready);
    assert!(
        (2300..=2500).contains(&session.ssh.port),
        "{:?}",
        session.ssh
    );
    assert!(session.ssh.host_key.starts_with("ssh-ed25519 "));

    let listed = backend.list().await?;
    let mine = listed
        .iter()
        .find(|s| s.name == name)
        .ok_or("create's session is not listed")?;
    assert_eq!(mine.state, SessionState::Ready);
    assert_eq!(mine.ssh.port, session.ssh.port);
    let shown = backend.get(name).await?;
    assert_eq!(shown.id, session.id);
    assert_eq!(shown.ssh.host_key, session.ssh.host_key);

    let (out, err, code) = run(
        backend,
        name,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    )
    .await?;
    assert_eq!((out.as_str(), err.as_str(), code), ("out\n", "err\n", 3));
    let (out, _, code) = run(
        backend,
        name,
        &[
            "sh",
            "-c",
            "whoami; printenv GREETING || cat ~/.cubbi-env 2>/dev/null | head -0",
        ],
    )
    .await?;
    assert_eq!(code, 0);
    assert!(out.starts_with("agent\n"), "{out}");

    // Another key, authorized through connect, logs in (real sshd, pinned host key).
    let other = cubbi::ssh::keys::generate("second-device")?;
    let other_public = cubbi::ssh::keys::public_openssh(other.public_key())?;
    let reached = backend.connect(name, &other_public).await?;
    assert_eq!(reached.ssh.host_key, session.ssh.host_key);
    let target = cubbi::ssh::client::SshTarget {
        address: format!("{}:{}", reached.ssh.host, reached.ssh.port),
        user: reached.ssh.user.clone(),
        client_key: Arc::new(other),
        host_key: cubbi::ssh::keys::parse_public(&reached.ssh.host_key)?,
    };
    let ssh = cubbi::ssh::client::SshSession::connect(&target, Duration::from_secs(20)).await?;
    let mut events = ssh.exec(&["whoami".to_string()], None).await?;
    let mut said = Vec::new();
    while let Some(event) = events.next().await {
        if let ExecEvent::Stdout(data) = event {
            said.extend(data);
        }
    }
    assert_eq!(String::from_utf8(said)?, "agent\n");
    let err = backend
        .connect(name, "ssh-ed25519 AAAA\nfrom=\"*\" ssh-ed25519 BBBB")
        .await
        .err()
        .ok_or("a two-line key was accepted")?;
    assert_eq!(err.code(), ErrorCode::Invalid, "{err}");

    // Refusals leave nothing: a bad env name and a taken name.
    let before = backend.list().await?.len();
    let mut bad = spec(&format!("{name}-bad"));
    bad.env.insert("1BAD".into(), "x".into());
    let err = backend
        .create(bad, &Quiet)
        .await
        .err()
        .ok_or("a bad env name was accepted")?;
    assert_eq!(err.code(), ErrorCode::Invalid, "{err}");
    let err = backend
        .create(spec(name), &Quiet)
        .await
        .err()
        .ok_or("a taken name was accepted")?;
    assert_eq!(err.code(), ErrorCode::Conflict, "{err}");
    assert_eq!(backend.list().await?.len(), before);

    // Logs follow: a line printed now arrives, and the stream ends when the session does.
    let mut logs = backend
        .logs(
            name,
            LogOptions {
                follow: true,
                tail: Some(0),
            },
        )
        .await?;
    let marker = format!("cubbi-marker-{}", std::process::id());
    // The journal is the session's console (runtime/init follows it to Docker's log). The
    // stream attaches on its first read, so the marker is logged until it shows up.
    let seen = tokio::time::timeout(Duration::from_secs(60), async {
        let mut text = String::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                chunk = logs.next() => match chunk {
                    Some(chunk) => {
                        text += &chunk?.text;
                        if text.contains(&marker) {
                            return Ok::<bool, Failed>(true);
                        }
                    }
                    None => return Ok(false),
                },
                _ = tick.tick() => {
                    let (_, _, code) = run(backend, name, &["logger", marker.as_str()]).await?;
                    assert_eq!(code, 0);
                }
            }
        }
    })
    .await
    .map_err(|_| "the marker never arrived on the followed logs")??;
    assert!(seen, "the log stream ended before the marker");

    let closed = backend.close(name).await?;
    assert_eq!(closed.id, session.id);
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = logs.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the followed logs did not end when the session closed"
    );
    let err = backend
        .get(name)
        .await
        .err()
        .ok_or("a closed session is still found")?;
    assert_eq!(err.code(), ErrorCode::NotFound);
    assert!(backend.list().await?.iter().all(|s| s.name != name));
    Ok(())
}

fn conformance_local_and_remote() -> Result<(), Failed> {
    docker_test("serve-conformance", |scope| async move {
        scope.ensure_base().await?;
        let local = crate::support::local_backend(&scope, None)?;
        conformance(&local, "conf-local").await?;

        let mut service = TestService::start(&scope, |_| {}).await?;
        let token = service.token(&user(&scope, "alice"), false)?;
        let remote = service.client(&token)?;
        conformance(&remote, "conf-remote").await?;
        service.stop().await
    })
}

/// The OpenAPI document the service serves, to validate responses against.
struct Document(Value);

impl Document {
    async fn fetch(
        http: &reqwest::Client,
        service: &TestService,
        token: &str,
    ) -> Result<Self, Failed> {
        let response = http
            .get(format!("{}/v1/openapi.json", service.url))
            .bearer_auth(token)
            .send()
            .await?;
        assert_eq!(response.status(), 200);
        Ok(Self(response.json().await?))
    }

    /// Fails unless `body` is what the document says `method path` answers with `status`.
    fn check(&self, method: &str, path: &str, status: u16, body: &Value) -> Result<(), Failed> {
        let operation = &self.0["paths"][path][method];
        let schema =
            &operation["responses"][status.to_string()]["content"]["application/json"]["schema"];
        if schema.is_null() {
            return Err(
                format!("the document has no {status} JSON answer for {method} {path}").into(),
            );
        }
        let mut rooted = schema.clone();
        rooted["components"] = self.0["components"].clone();
        let validator = jsonschema::validator_for(&rooted)
            .map_err(|err| format!("{method} {path} {status}: {err}"))?;
        if let Err(err) = validator.validate(body) {
            return Err(format!("{method} {path} {status}: {err}; body {body}").into());
        }
        Ok(())
    }
}

/// A raw request's status and JSON body, checked against the document.
async fn call(
    http: &reqwest::Client,
    document: &Document,
    (method, template, path): (&str, &str, &str),
    token: Option<&str>,
    body: Option<Value>,
    base: &str,
) -> Result<(u16, Value), Failed> {
    let mut request = http.request(method.to_uppercase().parse()?, format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    document.check(method, template, status, &body)?;
    Ok((status, body))
}

fn every_route_needs_a_valid_token() -> Result<(), Failed> {
    docker_test("serve-auth", |scope| async move {
        let mut service = TestService::start(&scope, |_| {}).await?;
        let token = service.token(&user(&scope, "alice"), false)?;
        let revoked = service.token(&user(&scope, "alice"), false)?;
        let revoked_id = revoked
            .split('_')
            .nth(1)
            .ok_or("a token without an id")?
            .to_string();
        assert!(service.store.revoke(&revoked_id)?);
        let http = reqwest::Client::new();
        let document = Document::fetch(&http, &service, &token).await?;
        // Every operation the document names, with each `{param}` filled in: a route cannot
        // be documented without needing a token (only /healthz is open, and the /auth/
        // routes, which are how a caller gets a token: tests/integration/oidc.rs).
        let mut routes = Vec::new();
        for (template, methods) in document.0["paths"].as_object().ok_or("no paths")? {
            // The web page and its assets are public files (no data): the page signs in itself.
            if template == "/healthz"
                || template.starts_with("/auth/")
                || template == "/"
                || template.starts_with("/assets/")
            {
                continue;
            }
            let concrete = template
                .split('/')
                .map(|part| if part.starts_with('{') { "x" } else { part })
                .collect::<Vec<_>>()
                .join("/");
            for method in methods.as_object().ok_or("no methods")?.keys() {
                routes.push((method.clone(), template.clone(), concrete.clone()));
            }
        }
        assert!(
            routes.len() >= 15,
            "the document lists {} operations",
            routes.len()
        );
        for (method, template, concrete) in &routes {
            let route = (method.as_str(), template.as_str(), concrete.as_str());
            for bad in [
                None,
                Some("garbage"),
                Some("cubbi_000000000000_AAAA"),
                Some(revoked.as_str()),
            ] {
                let (status, body) =
                    call(&http, &document, route, bad, Some(json!({})), &service.url).await?;
                assert_eq!(status, 401, "{route:?} with {bad:?}");
                assert_eq!(body["error"]["code"], "unauthorized", "{route:?}");
                let text = body.to_string();
                assert!(!text.contains(&revoked), "the token came back in an error");
            }
        }
        let health: Value = http
            .get(format!("{}/healthz", service.url))
            .send()
            .await?
            .json()
            .await?;
        document.check("get", "/healthz", 200, &health)?;
        assert_eq!(health["status"], "ok");
        let (status, images) = call(
            &http,
            &document,
            ("get", "/v1/images", "/v1/images"),
            Some(&token),
            None,
            &service.url,
        )
        .await?;
        assert_eq!(status, 200);
        assert!(
            images
                .as_array()
                .is_some_and(|all| all.iter().any(|i| i["name"] == "base"))
        );
        let (status, _) = call(
            &http,
            &document,
            ("get", "/v1/images/{name}", "/v1/images/base"),
            Some(&token),
            None,
            &service.url,
        )
        .await?;
        assert_eq!(status, 200);
        let (status, _) = call(
            &http,
            &document,
            ("get", "/v1/images/{name}", "/v1/images/nope"),
            Some(&token),
            None,
            &service.url,
        )
        .await?;
        assert_eq!(status, 404);
        service.stop().await
    })
}

fn users_see_only_their_own_sessions_and_restarts_keep_them() -> Result<(), Failed> {
    docker_test("serve-users", |scope| async move {
        scope.ensure_base().await?;
        let mut service = TestService::start(&scope, |_| {}).await?;
        let alice_name = user(&scope, "alice");
        let alice = service.token(&alice_name, false)?;
        let bob = service.token(&user(&scope, "bob"), false)?;
        let admin = service.token(&user(&scope, "admin"), true)?;
        let http = reqwest::Client::new();
        let document = Document::fetch(&http, &service, &alice).await?;
        let base = service.url.clone();

        let (status, created) = call(
            &http,
            &document,
            ("post", "/v1/sessions", "/v1/sessions"),
            Some(&alice),
            Some(json!({"image": "base", "name": "iso-a", "memory": "512m",
                "runtime": SessionRuntime::of_this_run().runtime_name()})),
            &base,
        )
        .await?;
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["owner"], alice_name.as_str());
        let id = created["id"].as_str().ok_or("no id")?.to_string();

        // Bob: the session does not exist for him, whatever he asks.
        let (status, listed) = call(
            &http,
            &document,
            ("get", "/v1/sessions", "/v1/sessions"),
            Some(&bob),
            None,
            &base,
        )
        .await?;
        assert_eq!(status, 200);
        assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
        let key =
            cubbi::ssh::keys::public_openssh(cubbi::ssh::keys::generate("bob")?.public_key())?;
        for target in ["iso-a", &id[..12], id.as_str()] {
            let probes = [
                (
                    "get",
                    "/v1/sessions/{id}",
                    format!("/v1/sessions/{target}"),
                    None,
                ),
                (
                    "post",
                    "/v1/sessions/{id}/connect",
                    format!("/v1/sessions/{target}/connect"),
                    Some(json!({"public_key": key})),
                ),
                (
                    "post",
                    "/v1/sessions/{id}/exec",
                    format!("/v1/sessions/{target}/exec"),
                    Some(json!({"command": ["true"]})),
                ),
                (
                    "get",
                    "/v1/sessions/{id}/logs",
                    format!("/v1/sessions/{target}/logs"),
                    None,
                ),
                (
                    "delete",
                    "/v1/sessions/{id}",
                    format!("/v1/sessions/{target}"),
                    None,
                ),
            ];
            for (method, template, path, body) in probes {
                let (status, answer) = call(
                    &http,
                    &document,
                    (method, template, &path),
                    Some(&bob),
                    body,
                    &base,
                )
                .await?;
                assert_eq!(status, 404, "bob {method} {path}: {answer}");
                assert_eq!(answer["error"]["code"], "not_found");
            }
        }
        // Alice's session is untouched and works; the admin sees it as hers.
        let remote = service.client(&alice)?;
        let (out, _, code) = run(&remote, "iso-a", &["echo", "still here"]).await?;
        assert_eq!((out.as_str(), code), ("still here\n", 0));
        let (status, all) = call(
            &http,
            &document,
            (
                "get",
                "/v1/sessions",
                &format!("/v1/sessions?owner={alice_name}"),
            ),
            Some(&admin),
            None,
            &base,
        )
        .await?;
        assert_eq!(status, 200);
        assert!(
            all.as_array().is_some_and(|all| all
                .iter()
                .any(|s| s["id"] == id.as_str() && s["owner"] == alice_name.as_str())),
            "{all}"
        );

        // A follow stream open when the service stops ends, and the stop takes less than the grace.
        let follow = http
            .get(format!("{base}/v1/sessions/iso-a/logs?follow=true"))
            .bearer_auth(&alice)
            .send()
            .await?;
        assert_eq!(follow.status(), 200);
        let mut body = follow.bytes_stream();
        let stopping = Instant::now();
        service.stop().await?;
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(_)) = body.next().await {}
        })
        .await;
        assert!(drained.is_ok(), "the log stream outlived the service");
        assert!(
            stopping.elapsed() < Duration::from_secs(service.config.server.shutdown_grace + 3),
            "stop took {:?}",
            stopping.elapsed()
        );

        // A new service on the same state: the session again, same port and host key.
        let again = TestService::restart(&scope, &service).await?;
        let remote = again.client(&alice)?;
        let shown = remote.get("iso-a").await?;
        assert_eq!(shown.id, id);
        assert_eq!(
            u64::from(shown.ssh.port),
            created["ssh"]["port"].as_u64().ok_or("no port")?
        );
        assert_eq!(
            shown.ssh.host_key,
            created["ssh"]["host_key"].as_str().ok_or("no key")?
        );
        assert_eq!(shown.state, SessionState::Ready);
        remote.close("iso-a").await?;
        let mut again = again;
        again.stop().await
    })
}

fn bad_requests_are_refused_and_make_nothing() -> Result<(), Failed> {
    docker_test("serve-refusals", |scope| async move {
        scope.ensure_base().await?;
        let mut service =
            TestService::start(&scope, |config| config.limits.sessions_per_user = 1).await?;
        let alice = service.token(&user(&scope, "alice"), false)?;
        let http = reqwest::Client::new();
        let document = Document::fetch(&http, &service, &alice).await?;
        let base = service.url.clone();
        let create = ("post", "/v1/sessions", "/v1/sessions");
        // The runtimes a create may ask for: Sysbox where the engine has it, runc only where
        // the service allows it (the test service does on a host without Sysbox alone).
        let runtime = SessionRuntime::of_this_run();
        let (status, offered) = call(
            &http,
            &document,
            ("get", "/v1/runtimes", "/v1/runtimes"),
            Some(&alice),
            None,
            &base,
        )
        .await?;
        assert_eq!(status, 200, "{offered}");
        assert_eq!(offered["runtimes"], json!([runtime.runtime_name()]));
        if runtime == SessionRuntime::UnsafeRunc {
            // Sysbox on an engine without it: a 503 saying what a service user can do, not
            // the local CLI's flags.
            let (status, refused) = call(
                &http,
                &document,
                create,
                Some(&alice),
                Some(json!({"image": "base", "runtime": "sysbox-runc"})),
                &base,
            )
            .await?;
            assert_eq!(status, 503, "{refused}");
            assert_eq!(refused["error"]["code"], "unavailable");
            let message = refused["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("no `sysbox-runc` runtime")
                    && message.contains("choose the runtime `runc`")
                    && !message.contains("--unsafe-runc"),
                "{message}"
            );
        }
        for (body, status, why) in [
            (json!({"image": 5}), 400, "wrong type"),
            (
                json!({"image": "base", "privileged": true}),
                400,
                "unknown field",
            ),
            (json!({"name": "x"}), 400, "missing image"),
            (json!({"image": "base", "name": "!!!"}), 400, "bad name"),
            (
                json!({"image": "base", "env": {"A B": "x"}}),
                400,
                "bad env",
            ),
            (json!({"image": "base", "runtime": "kata"}), 400, "runtime"),
            (
                json!({"image": "base", "volumes": [{"host": "/etc", "container": "/mnt"}]}),
                400,
                "host path",
            ),
            (
                json!({"image": "base", "networks": ["host"]}),
                400,
                "network",
            ),
            (
                json!({"image": "base", "public_key": "ssh-ed25519 AAAA\ncommand=\"x\" ssh-rsa"}),
                400,
                "bad key",
            ),
            (json!({"image": "../../etc"}), 400, "bad image"),
        ] {
            let (got, answer) =
                call(&http, &document, create, Some(&alice), Some(body), &base).await?;
            assert_eq!(got, status, "{why}: {answer}");
            assert_eq!(answer["error"]["code"], "invalid", "{why}");
        }
        // runc is refused by a service that does not allow it (the suite's own service allows
        // it on a host without Sysbox, where its sessions run under runc).
        let mut strict =
            TestService::start(&scope, |config| config.allow_unsafe_runc = false).await?;
        let (got, answer) = call(
            &http,
            &document,
            create,
            Some(&strict.token(&user(&scope, "alice"), false)?),
            Some(json!({"image": "base", "runtime": "runc"})),
            &strict.url,
        )
        .await?;
        assert_eq!(got, 400, "runc on a Sysbox-only service: {answer}");
        assert_eq!(answer["error"]["code"], "invalid");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|message| message.contains("Sysbox only")),
            "{answer}"
        );
        strict.stop().await?;
        // Malformed JSON and an oversized body, as raw bytes.
        let raw = |bytes: Vec<u8>| {
            http.post(format!("{base}/v1/sessions"))
                .bearer_auth(&alice)
                .header("content-type", "application/json")
                .body(bytes)
                .send()
        };
        let malformed = raw(b"{\"image\": ".to_vec()).await?;
        assert_eq!(malformed.status(), 400);
        let body: Value = malformed.json().await?;
        document.check("post", "/v1/sessions", 400, &body)?;
        let huge = raw(format!(
            "{{\"image\": \"base\", \"name\": \"{}\"}}",
            "a".repeat(1024 * 1024)
        )
        .into_bytes())
        .await?;
        assert_eq!(huge.status(), 413);
        let body: Value = huge.json().await?;
        document.check("post", "/v1/sessions", 413, &body)?;
        assert_eq!(body["error"]["code"], "too_large");
        for bad in ["a%2Fb", "..", "x%20y", "%00"] {
            let (status, answer) = call(
                &http,
                &document,
                ("get", "/v1/sessions/{id}", &format!("/v1/sessions/{bad}")),
                Some(&alice),
                None,
                &base,
            )
            .await?;
            assert!(status == 400 || status == 404, "{bad}: {status} {answer}");
        }
        let labelled = crate::support::containers_labelled(
            &scope.docker,
            &format!("{}={}", crate::support::TEST_LABEL, scope.id),
        )
        .await?;
        assert!(
            labelled.is_empty(),
            "refused creates left containers: {}",
            labelled.len()
        );

        // The quota: one session, the second is a 429 naming the limit.
        let (status, first) = call(
            &http,
            &document,
            create,
            Some(&alice),
            Some(json!({"image": "base", "name": "quota-1", "memory": "512m",
                "runtime": SessionRuntime::of_this_run().runtime_name()})),
            &base,
        )
        .await?;
        assert_eq!(status, 201, "{first}");
        let (status, second) = call(
            &http,
            &document,
            create,
            Some(&alice),
            Some(json!({"image": "base", "name": "quota-2",
                "runtime": SessionRuntime::of_this_run().runtime_name()})),
            &base,
        )
        .await?;
        assert_eq!(status, 429, "{second}");
        assert!(
            second["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("sessions_per_user"))
        );
        let labelled = crate::support::containers_labelled(
            &scope.docker,
            &format!("{}={}", crate::support::TEST_LABEL, scope.id),
        )
        .await?;
        assert_eq!(labelled.len(), 1);
        service.stop().await
    })
}

fn cli_drives_the_service_like_the_local_endpoint() -> Result<(), Failed> {
    docker_test("serve-cli", |scope| async move {
        scope.ensure_base().await?;
        let mut service = TestService::start(&scope, |_| {}).await?;
        let token = service.token(&user(&scope, "carol"), false)?;
        let home = Arc::new(TestHome::new());
        let blocking = |args: Vec<String>| {
            let home = Arc::clone(&home);
            tokio::task::spawn_blocking(move || crate::support::Cubbi::new(&home).args(args).run())
        };
        let setup_home = Arc::clone(&home);
        let (url, setup_token) = (service.url.clone(), token.clone());
        tokio::task::spawn_blocking(move || {
            crate::support::Cubbi::new(&setup_home)
                .args(["remote", "add", "test", &url])
                .run()
                .success();
            crate::support::Cubbi::new(&setup_home)
                .args(["-r", "test", "auth"])
                .stdin(format!("{setup_token}\n"))
                .run()
                .success();
        })
        .await?;
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        blocking(
            args(&[
                "-r",
                "test",
                "session",
                "create",
                "--image",
                "base",
                "--name",
                "cli-r",
                "--no-connect",
                "--memory",
                "512m",
            ])
            .into_iter()
            .chain(args(SessionRuntime::of_this_run().create_flags()))
            .collect(),
        )
        .await?
        .success();
        blocking(args(&["-r", "test", "session", "list"]))
            .await?
            .success()
            .stdout_contains("cli-r");
        let listed = blocking(args(&["-r", "test", "--json", "session", "list"]))
            .await?
            .success();
        let sessions: Value = serde_json::from_str(&listed.stdout())?;
        assert_eq!(sessions.as_array().map(Vec::len), Some(1));
        let ran = blocking(args(&[
            "-r",
            "test",
            "session",
            "exec",
            "cli-r",
            "--",
            "sh",
            "-c",
            "echo hi; exit 7",
        ]))
        .await?;
        assert_eq!(ran.code(), Some(7), "{}", ran.stderr());
        assert_eq!(ran.stdout(), "hi\n");
        // OpenSSH with strict checking, through the files create wrote.
        let ssh_home = Arc::clone(&home);
        let ssh = tokio::task::spawn_blocking(move || {
            std::process::Command::new("ssh")
                .env("HOME", ssh_home.path())
                .arg("-F")
                .arg(ssh_home.path().join(".ssh/cubbi.d/cli-r.conf"))
                .args([
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "StrictHostKeyChecking=yes",
                    "cubbi-cli-r",
                    "whoami",
                ])
                .output()
        })
        .await??;
        assert!(
            ssh.status.success(),
            "{}",
            String::from_utf8_lossy(&ssh.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&ssh.stdout), "agent\n");
        // A folder of this machine is refused for a remote session, and nothing is made.
        let dir = home.path().to_string_lossy().to_string();
        blocking(args(&["-r", "test", &dir, "--no-connect"]))
            .await?
            .failure()
            .stderr_contains("cannot be mounted");
        blocking(args(&["-r", "test", "session", "show", "nope"]))
            .await?
            .failure()
            .stderr_contains("nope");
        blocking(args(&["-r", "test", "session", "close", "cli-r"]))
            .await?
            .success();
        let left = blocking(args(&["-r", "test", "--json", "session", "list"]))
            .await?
            .success();
        assert_eq!(left.stdout().trim(), "[]");
        assert!(!home.path().join(".ssh/cubbi.d/cli-r.conf").exists());
        service.stop().await
    })
}

fn the_binary_logs_json_without_tokens_and_stops_on_sigterm() -> Result<(), Failed> {
    docker_test("serve-binary", |scope| async move {
        let state = tempfile::tempdir()?;
        let config = state.path().join("service.toml");
        std::fs::write(
            &config,
            "[server]\nshutdown_grace = 3\n[ssh]\nbind = \"127.0.0.1\"\n",
        )?;
        let token = tokio::task::spawn_blocking({
            let dir = state.path().to_path_buf();
            move || {
                crate::support::Cubbi::new(&TestHome::new())
                    .args(["serve", "token", "create", "--user", "dave", "--state-dir"])
                    .args([dir.as_os_str()])
                    .run()
            }
        })
        .await?
        .success()
        .stdout()
        .trim()
        .to_string();
        let service =
            crate::support::service::ServeProcess::start(&scope, &config, state.path()).await?;
        let address = service.address.clone();
        let http = reqwest::Client::new();
        let health = http.get(format!("http://{address}/healthz")).send().await?;
        assert_eq!(health.status(), 200);
        let listed = http
            .get(format!("http://{address}/v1/sessions"))
            .bearer_auth(&token)
            .send()
            .await?;
        assert_eq!(listed.status(), 200);
        let refused = http
            .get(format!("http://{address}/v1/sessions"))
            .bearer_auth("cubbi_0123456789ab_secretsecretsecretsecretsecretsecretsecretsec")
            .send()
            .await?;
        assert_eq!(refused.status(), 401);

        let all = service.stop_within(Duration::from_secs(6)).await?;
        assert!(all.contains("/v1/sessions"), "no request was logged: {all}");
        assert!(
            all.contains("dave"),
            "the request's user was not logged: {all}"
        );
        assert!(
            !all.contains(&token) && !all.contains("secretsecret"),
            "a token reached the log"
        );
        Ok(())
    })
}

/// `server.tls_cert`/`tls_key` make the service speak HTTPS: clients trusting the private CA
/// (reqwest with it as a root, the binary with CUBBI_CA_CERT) get through, the others fail
/// the handshake, and plain HTTP to the port gets no answer. No session is booted.
fn https_with_a_private_ca_for_clients_that_trust_it() -> Result<(), Failed> {
    docker_test("serve-tls", |scope| async move {
        let pki = tempfile::tempdir()?;
        crate::support::pki::private_ca_and_server_cert(pki.path())?;
        let (cert, key) = (pki.path().join("server.pem"), pki.path().join("server.key"));
        let mut service = TestService::start(&scope, |config| {
            config.server.tls_cert = Some(cert);
            config.server.tls_key = Some(key);
        })
        .await?;
        assert!(
            service.url.starts_with("https://127.0.0.1:"),
            "{}",
            service.url
        );
        let ca_path = pki.path().join("ca.pem");
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca_path)?)?;
        let trusting = reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()?;
        let healthz = format!("{}/healthz", service.url);
        let answer = trusting.get(&healthz).send().await?;
        assert_eq!(answer.status(), 200);

        let untrusting = reqwest::Client::new();
        let refused = untrusting.get(&healthz).send().await;
        assert!(refused.is_err(), "a client without the CA got {refused:?}");

        let plain = format!("{}/healthz", service.url.replacen("https://", "http://", 1));
        let plain_answer = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()?
            .get(&plain)
            .send()
            .await;
        assert!(
            plain_answer.is_err(),
            "plain HTTP to the TLS port got {plain_answer:?}"
        );

        // The server still answers after the failed handshakes.
        assert_eq!(trusting.get(&healthz).send().await?.status(), 200);

        let token = service.token(&user(&scope, "tls"), false)?;
        let home = Arc::new(TestHome::new());
        let (url, ca_env) = (service.url.clone(), ca_path.clone());
        let listed = tokio::task::spawn_blocking(move || {
            let cubbi = || crate::support::Cubbi::new(&home).env("CUBBI_CA_CERT", &ca_env);
            cubbi().args(["remote", "add", "t", &url]).run().success();
            cubbi()
                .args(["-r", "t", "auth"])
                .stdin(format!("{token}\n"))
                .run()
                .success();
            cubbi()
                .args(["-r", "t", "--json", "session", "list"])
                .run()
                .success()
                .stdout()
        })
        .await?;
        let sessions: Value = serde_json::from_str(&listed)?;
        assert_eq!(sessions, json!([]));
        service.stop().await?;
        Ok(())
    })
}

/// `DELETE /v1/sessions/w` must not close `web2…` (only an exact name or id closes), and a
/// token made for an admin without `--admin` must not demote them.
fn close_takes_exact_names_and_tokens_keep_admins() -> Result<(), Failed> {
    docker_test("serve-exact", |scope| async move {
        scope.ensure_base().await?;
        let mut service = TestService::start(&scope, |_| {}).await?;
        let (bob, ada) = (user(&scope, "bob"), user(&scope, "ada"));
        let bob_token = service.token(&bob, false)?;
        let ada_token = service.token(&ada, true)?;
        let name = user(&scope, "web2");
        let backend = service.client(&bob_token)?;
        let session = backend.create(spec(&name), &Quiet).await?;

        let http = reqwest::Client::new();
        for prefix in ["w", "web", "web2", &session.id[..6], &session.id[..11]] {
            let answer = http
                .delete(format!("{}/v1/sessions/{prefix}", service.url))
                .bearer_auth(&bob_token)
                .send()
                .await?;
            assert_eq!(answer.status().as_u16(), 404, "DELETE {prefix}");
            let body: Value = answer.json().await?;
            assert_eq!(body["error"]["code"], "not_found", "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("never a prefix")),
                "{body}"
            );
        }
        let err = backend
            .close("web")
            .await
            .err()
            .ok_or("`web` closed a session")?;
        assert_eq!(err.code(), ErrorCode::NotFound, "{err}");
        let still = backend.get(&name).await?;
        assert_eq!(still.state, SessionState::Ready, "a prefix closed {name}");

        // A new token for ada without --admin, as `cubbi serve token create` makes it.
        let state = service.config.state_dir.clone();
        let made = tokio::task::spawn_blocking(move || {
            crate::support::Cubbi::new(&TestHome::new())
                .args(["serve", "token", "create", "--user", &ada, "--state-dir"])
                .arg(&state)
                .run()
        })
        .await?
        .success()
        .stderr_contains("(admin)");
        let new_token = made.stdout().trim().to_string();
        for token in [&ada_token, &new_token] {
            let seen = service.client(token)?.list().await?;
            assert!(
                seen.iter().any(|s| s.name == name),
                "ada lost admin: {token} sees {:?}",
                seen.iter().map(|s| &s.name).collect::<Vec<_>>()
            );
        }

        // The exact name does close.
        let closed = backend.close(&name).await?;
        assert_eq!(closed.id, session.id);
        assert!(backend.list().await?.iter().all(|s| s.id != session.id));
        service.stop().await?;
        Ok(())
    })
}

/// With `images = []` (the default) a service boots its catalogue's images only: an image of
/// the engine named by its id prefix is refused, and nothing is created.
fn images_outside_the_catalogue_never_boot() -> Result<(), Failed> {
    docker_test("serve-catalogue", |scope| async move {
        scope.ensure_base().await?;
        let mut service = TestService::start(&scope, |_| {}).await?;
        assert!(service.config.images.is_empty(), "the default catalogue");
        let token = service.token(&user(&scope, "eve"), false)?;
        let id = scope
            .docker
            .inspect_image("cubbi-base")
            .await?
            .id
            .ok_or("cubbi-base has no id")?;
        let prefix = id.trim_start_matches("sha256:")[..12].to_string();
        let runtime = SessionRuntime::of_this_run().runtime_name();
        let http = reqwest::Client::new();
        for image in [prefix.as_str(), "cubbi-base"] {
            let answer = http
                .post(format!("{}/v1/sessions", service.url))
                .bearer_auth(&token)
                .json(&json!({"image": image, "name": "rogue", "runtime": runtime}))
                .send()
                .await?;
            let status = answer.status().as_u16();
            let body: Value = answer.json().await?;
            assert_eq!(status, 400, "{image}: {body}");
            assert_eq!(body["error"]["code"], "invalid", "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("does not offer")),
                "{body}"
            );
        }
        assert!(
            service.client(&token)?.list().await?.is_empty(),
            "a session was made"
        );
        service.stop().await?;
        Ok(())
    })
}

/// `cubbi -r NAME image list` and `image inspect` show the service's images; `image build`
/// stays local and says so.
fn image_commands_with_r_read_the_services_catalogue() -> Result<(), Failed> {
    docker_test("serve-images", |scope| async move {
        scope.ensure_base().await?;
        let mut service = TestService::start(&scope, |_| {}).await?;
        let token = service.token(&user(&scope, "erin"), false)?;
        let url = service.url.clone();
        tokio::task::spawn_blocking(move || -> Result<(), Failed> {
            let home = TestHome::new();
            let cubbi = || crate::support::Cubbi::new(&home);
            cubbi()
                .args(["remote", "add", "test", &url])
                .run()
                .success();
            cubbi()
                .args(["-r", "test", "auth"])
                .stdin(format!("{token}\n"))
                .run()
                .success();
            let listed = cubbi()
                .args(["-r", "test", "--json", "image", "list"])
                .run()
                .success();
            let images: Value = serde_json::from_str(&listed.stdout())?;
            let base = images
                .as_array()
                .and_then(|all| all.iter().find(|image| image["name"] == "base"))
                .ok_or_else(|| format!("no base in {images}"))?;
            assert_eq!(base["built"], json!(true), "{images}");
            assert_eq!(base["tag"], json!("cubbi-base"), "{images}");
            let table = cubbi()
                .args(["-r", "test", "image", "list"])
                .run()
                .success()
                .stdout();
            let base_row = table
                .lines()
                .find(|line| line.starts_with("base "))
                .ok_or_else(|| format!("no base row:\n{table}"))?;
            assert!(base_row.contains(" yes "), "{table}");
            cubbi()
                .args(["-r", "test", "image", "inspect", "base"])
                .run()
                .success()
                .stdout_contains("name:        base")
                .stdout_contains("built:       yes, on `test`");
            let inspected = cubbi()
                .args(["-r", "test", "--json", "image", "inspect", "base"])
                .run()
                .success();
            let inspected: Value = serde_json::from_str(&inspected.stdout())?;
            assert_eq!(inspected["metadata"]["name"], json!("base"), "{inspected}");
            cubbi()
                .args(["-r", "test", "image", "inspect", "nope"])
                .run()
                .failure()
                .stderr_contains("no image of that name");
            cubbi()
                .args(["-r", "test", "image", "build", "base"])
                .run()
                .failure()
                .stderr_contains("builds on this machine only");
            Ok(())
        })
        .await??;
        service.stop().await
    })
}
