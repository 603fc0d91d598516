//! `cubbi serve` against real parts: the service in-process on 127.0.0.1:0 with a real token
//! store, the real test dockerd and real system containers, driven by the real clients (the
//! remote backend, the `cubbi -r` binary) and by raw HTTP for what clients never send. One
//! conformance suite runs against the local backend and against the service.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cubbi::api::{
    ApiError, Backend, ErrorCode, ExecEvent, LogOptions, Quiet, SessionSpec, SessionState,
};
use cubbi::local::backend::{LocalBackend, LocalOptions};
use cubbi::service::store::Store;
use futures_util::StreamExt;
use libtest_mimic::{Failed, Trial};
use serde_json::{Value, json};

use crate::support::service::{TestService, user};
use crate::support::{DockerScope, TestHome, docker_test};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        conformance_local_and_remote,
        every_route_needs_a_valid_token,
        users_see_only_their_own_sessions_and_restarts_keep_them,
        bad_requests_are_refused_and_make_nothing,
        cli_drives_the_service_like_the_local_endpoint,
    ]
}

fn spec(name: &str) -> SessionSpec {
    SessionSpec {
        name: Some(name.to_string()),
        image: "base".into(),
        workspace: None,
        project: None,
        env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
        volumes: Vec::new(),
        networks: Vec::new(),
        default_network: true,
        memory: Some("512m".into()),
        cpus: None,
        pids_limit: None,
        runtime: "sysbox-runc".into(),
        unsafe_runc: false,
        ssh_bind: "127.0.0.1".parse().expect("an address"),
        authorized_keys: Vec::new(),
    }
}

/// Stdout, stderr and the exit code of a command run through a backend.
async fn run(
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
    // The journal is the session's console (runtime/init follows it to Docker's log).
    let (_, _, code) = run(backend, name, &["logger", marker.as_str()]).await?;
    assert_eq!(code, 0);
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        let mut text = String::new();
        while let Some(chunk) = logs.next().await {
            text += &chunk?.text;
            if text.contains(&marker) {
                return Ok::<bool, ApiError>(true);
            }
        }
        Ok(false)
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

fn local_backend(scope: &DockerScope) -> Result<LocalBackend, Failed> {
    let key = cubbi::ssh::keys::generate("test")?;
    Ok(LocalBackend::new(
        scope.docker.clone(),
        LocalOptions {
            owner: scope.id.clone(),
            all_owners: false,
            index: None,
            ports: Default::default(),
            default_network: "cubbi-network".into(),
            client_key: Arc::new(key),
            ssh_files: None,
            port_lock: crate::support::port_lock().ok_or("no run folder for the port lock")?,
            lock_timeout: Duration::from_secs(60),
            engine_socket: None,
            ready_timeout: Duration::from_secs(120),
            extra_labels: scope.labels(),
        },
    ))
}

fn conformance_local_and_remote() -> Result<(), Failed> {
    docker_test("serve-conformance", |scope| async move {
        scope.ensure_base().await?;
        crate::support::sysbox::require()?;
        let local = local_backend(&scope)?;
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
        let routes = [
            ("get", "/v1/sessions", "/v1/sessions"),
            ("post", "/v1/sessions", "/v1/sessions"),
            ("get", "/v1/sessions/{id}", "/v1/sessions/x"),
            ("delete", "/v1/sessions/{id}", "/v1/sessions/x"),
            (
                "post",
                "/v1/sessions/{id}/connect",
                "/v1/sessions/x/connect",
            ),
            ("post", "/v1/sessions/{id}/exec", "/v1/sessions/x/exec"),
            ("get", "/v1/sessions/{id}/logs", "/v1/sessions/x/logs"),
            ("get", "/v1/images", "/v1/images"),
            ("get", "/v1/images/{name}", "/v1/images/base"),
            ("get", "/v1/openapi.json", "/v1/openapi.json"),
        ];
        for route in routes {
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
        crate::support::sysbox::require()?;
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
            Some(json!({"image": "base", "name": "iso-a", "memory": "512m"})),
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
        crate::support::sysbox::require()?;
        let mut service =
            TestService::start(&scope, |config| config.limits.sessions_per_user = 1).await?;
        let alice = service.token(&user(&scope, "alice"), false)?;
        let http = reqwest::Client::new();
        let document = Document::fetch(&http, &service, &alice).await?;
        let base = service.url.clone();
        let create = ("post", "/v1/sessions", "/v1/sessions");
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
            (json!({"image": "base", "runtime": "runc"}), 400, "runc"),
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
            Some(json!({"image": "base", "name": "quota-1", "memory": "512m"})),
            &base,
        )
        .await?;
        assert_eq!(status, 201, "{first}");
        let (status, second) = call(
            &http,
            &document,
            create,
            Some(&alice),
            Some(json!({"image": "base", "name": "quota-2"})),
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
        crate::support::sysbox::require()?;
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
        blocking(args(&[
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
        ]))
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
