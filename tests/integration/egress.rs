//! Egress by name on real parts: a network namespace plays the internet (Debian's dnsmasq as
//! its resolver, Python HTTP servers for `allowed.test`, `sub.allowed.test` and `other.test`
//! on addresses of the benchmark range 198.18.0.0/15), cubbi's resolver runs as the process
//! the engine's unit runs (`cubbi egress resolver`), and a real session (systemd, sshd, an
//! inner dockerd) is held to its allow-list by the kernel: by name, by address, after its
//! root rewrote /etc/resolv.conf, and from an inner `docker run`. Everything the test makes
//! (namespace, veth, nft table) is its own and goes when it ends.

use std::time::Duration;

use libtest_mimic::{Failed, Trial};

use crate::support::internet::{
    ALLOWED, Internet, ONE_AT_A_TIME, OTHER, RESOLVER, engine_bridge, start_resolver,
};
use crate::support::sysbox::UNSAFE_RUNC_FLAGS;
use crate::support::{DockerScope, TestHome, create_args_on, docker_test, eventually};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        a_session_reaches_only_the_names_it_is_allowed,
        a_service_forces_its_allow_list_and_refuses_other_names,
        bad_egress_input_is_refused_and_nothing_is_made,
    ]
}

fn exec(
    scope: &DockerScope,
    home: &TestHome,
    name: &str,
    script: &str,
) -> crate::support::cli::Ran {
    scope
        .cubbi(home)
        .args(["session", "exec", name, "--", "bash", "-c", script])
        .run()
}

fn a_session_reaches_only_the_names_it_is_allowed() -> Result<(), Failed> {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    docker_test("egress", |scope| async move {
        scope.ensure_base().await?;
        let bridge = engine_bridge(&scope).await?;
        let table = format!("cubbi_egress_{bridge}");
        let _internet = Internet::start(&table)?;
        let home = TestHome::new();
        let state = tempfile::tempdir()?;
        let resolver = start_resolver(&scope, &home, state.path(), &bridge);
        let result = async {
            // The resolver marks its folder once it serves; a create checks that mark.
            let mark = state.path().join("resolver.pid");
            eventually(Duration::from_secs(30), || {
                let ready = mark.exists();
                async move { if ready { Ok(()) } else { Err("no resolver.pid yet".into()) } }
            })
            .await?;
            let name = "egress-demo";
            let created = scope
                .cubbi(&home)
                .env("CUBBI_EGRESS_DIR", state.path())
                .args(create_args_on(
                    &UNSAFE_RUNC_FLAGS,
                    name,
                    &["--allow-domain", "allowed.test", "--no-image-domains"],
                ))
                .run()
                .success()
                .stderr();
            assert!(!created.contains("NOT enforced"), "{created}");
            let shown = scope
                .cubbi(&home)
                .args(["--json", "session", "show", name])
                .run()
                .success()
                .stdout();
            let shown: serde_json::Value = serde_json::from_str(&shown)?;
            assert_eq!(shown["egress"]["mode"], "allow-list", "{shown}");
            assert_eq!(shown["egress"]["domains"], serde_json::json!(["allowed.test"]));

            let curl = |target: &str| format!("curl -sS -m 5 -o /dev/null -w '%{{http_code}}' http://{target}/hello.txt");
            // The create returned only once the resolver held the session: from its first
            // command, another address is out of reach and the allowed name resolves.
            let id = shown["id"].as_str().unwrap_or_default();
            assert!(
                state.path().join(format!("{id}.held")).exists(),
                "the create returned before the resolver held session {id}"
            );
            exec(&scope, &home, name, &curl(OTHER)).failure();
            exec(&scope, &home, name, &curl("allowed.test")).success().stdout_is("200");
            exec(&scope, &home, name, &curl("sub.allowed.test")).success().stdout_is("200");
            // Another name does not resolve, and its address is out of reach anyway.
            let lookup = exec(&scope, &home, name, "getent hosts other.test");
            assert!(lookup.code() != Some(0), "other.test resolved: {}", lookup.stdout());
            exec(&scope, &home, name, &curl("other.test")).failure();
            exec(&scope, &home, name, &curl(OTHER)).failure();
            // Root points resolv.conf at the internet's resolver: its port 53 is cubbi's anyway.
            exec(
                &scope,
                &home,
                name,
                &format!("echo 'nameserver {RESOLVER}' | sudo tee /etc/resolv.conf >/dev/null"),
            )
            .success();
            let lookup = exec(&scope, &home, name, "getent hosts other.test");
            assert!(lookup.code() != Some(0), "other.test resolved via {RESOLVER}");
            exec(&scope, &home, name, &curl(OTHER)).failure();
            exec(&scope, &home, name, &curl("allowed.test")).success().stdout_is("200");
            // An inner container is NATed to the session's address: held the same.
            let inner = exec(
                &scope,
                &home,
                name,
                &format!(
                    "set -e; d=$(mktemp -d); mkdir -p $d/bin; cp /bin/bash $d/bin/bash; \
                     for lib in $(ldd /bin/bash | grep -o '/[^ ]*'); do mkdir -p $d$(dirname $lib); cp $lib $d$lib; done; \
                     tar -C $d -c . | sudo docker import - tiny >/dev/null; \
                     sudo docker run --rm tiny /bin/bash -c 'exec 3<>/dev/tcp/{ALLOWED}/80 && echo allowed-ok'; \
                     sudo docker run --rm tiny /bin/bash -c 'timeout 5 bash -c \"exec 3<>/dev/tcp/{OTHER}/80\" && echo other-ok || echo other-refused'"
                ),
            )
            .success()
            .stdout();
            assert!(inner.contains("allowed-ok"), "{inner}");
            assert!(inner.contains("other-refused"), "{inner}");

            // A live --allow opens other.test; --deny closes it again, without a restart.
            scope
                .cubbi(&home)
                .env("CUBBI_EGRESS_DIR", state.path())
                .args(["session", "egress", name, "--allow", "other.test"])
                .run()
                .success();
            eventually(Duration::from_secs(30), || {
                let ran = exec(&scope, &home, name, &curl("other.test"));
                async move {
                    (ran.stdout().trim() == "200")
                        .then_some(())
                        .ok_or(format!("other.test after --allow: {}", ran.stderr()))
                }
            })
            .await?;
            scope
                .cubbi(&home)
                .env("CUBBI_EGRESS_DIR", state.path())
                .args(["session", "egress", name, "--deny", "other.test"])
                .run()
                .success();
            eventually(Duration::from_secs(30), || {
                let ran = exec(&scope, &home, name, &curl(OTHER));
                async move {
                    (ran.code() != Some(0))
                        .then_some(())
                        .ok_or("other.test still reachable after --deny".to_string())
                }
            })
            .await?;
            // show lists what the agent tried.
            let shown = scope
                .cubbi(&home)
                .env("CUBBI_EGRESS_DIR", state.path())
                .args(["session", "show", name])
                .run()
                .success()
                .stdout();
            assert!(shown.contains("denied:") && shown.contains("other.test"), "{shown}");
            // The kernel counted the refused connections (by address, from the inner
            // container), the resolver the refused lookups.
            let shown = scope
                .cubbi(&home)
                .env("CUBBI_EGRESS_DIR", state.path())
                .args(["--json", "session", "show", name])
                .run()
                .success()
                .stdout();
            let shown: serde_json::Value = serde_json::from_str(&shown)?;
            assert!(shown["egress"]["denied_connections"].as_u64() > Some(0), "{shown}");
            assert!(shown["egress"]["denied_lookups"].as_u64() > Some(0), "{shown}");
            // Closed, its files in the egress folder are collected.
            let store = cubbi::egress::store::EgressStore::new(state.path());
            assert!(!store.ids().is_empty(), "no live change or refusal was recorded");
            scope.cubbi(&home).args(["session", "close", name]).run().success();
            cubbi::egress::daemon::collect(&scope.docker, &store).await?;
            assert!(store.ids().is_empty(), "files left: {:?}", store.ids());
            Ok::<(), Failed>(())
        }
        .await;
        drop(resolver);
        result
    })
}

fn a_service_forces_its_allow_list_and_refuses_other_names() -> Result<(), Failed> {
    use cubbi::api::{Backend, ErrorCode, Quiet};
    use cubbi::egress::{EgressChange, EgressRequest};

    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());

    docker_test("egress-serve", |scope| async move {
        scope.ensure_base().await?;
        let bridge = engine_bridge(&scope).await?;
        let table = format!("cubbi_egress_{bridge}");
        let _internet = Internet::start(&table)?;
        let home = TestHome::new();
        let state = tempfile::tempdir()?;
        let resolver = start_resolver(&scope, &home, state.path(), &bridge);
        let result = async {
            let mut service = crate::support::service::TestService::start(&scope, |config| {
                config.egress = toml::from_str(
                    r#"
                    force_allow_list = true
                    always = ["=allowed.test"]
                    allowed = ["allowed.test"]
                    never = ["other.test"]
                    "#,
                )
                .expect("an [egress] section");
                config.egress.resolver_dir = Some(state.path().to_path_buf());
            })
            .await?;
            let owner = crate::support::service::user(&scope, "egress");
            let token = service.token(&owner, false)?;
            let backend = service.client(&token)?;

            // Asking for a name outside the service's list: 400, code egress_domain, named.
            let mut forbidden = crate::serve::spec(&crate::support::service::user(&scope, "eg-x"));
            forbidden.egress = Some(EgressRequest {
                domains: vec!["other.test".parse()?],
                ..Default::default()
            });
            let err = backend
                .create(forbidden, &Quiet)
                .await
                .err()
                .ok_or("other.test was accepted")?;
            assert_eq!(err.code(), ErrorCode::EgressDomain, "{err}");
            assert!(err.to_string().contains("other.test"), "{err}");
            let answer = reqwest::Client::new()
                .post(format!("{}/v1/sessions", service.url))
                .bearer_auth(&token)
                .json(&serde_json::json!({"image": "base", "egress": {"domains": ["sub.allowed.test", "x.other.test"]}}))
                .send()
                .await?;
            assert_eq!(answer.status().as_u16(), 400);
            let body: serde_json::Value = answer.json().await?;
            assert_eq!(body["error"]["code"], "egress_domain", "{body}");
            assert!(body.to_string().contains("x.other.test"), "{body}");
            let none_left = crate::support::containers_labelled(
                &scope.docker,
                &format!("io.cubbi.owner={owner}"),
            )
            .await?;
            assert!(none_left.is_empty(), "a refused create left a container");

            // A request that says nothing is held to the forced list (=allowed.test alone).
            let name = crate::support::service::user(&scope, "eg");
            let session = backend.create(crate::serve::spec(&name), &Quiet).await?;
            let shown = backend.get(&session.id).await?;
            let egress = shown.egress.ok_or("the service's session shows no egress")?;
            assert_eq!(egress.domains, vec!["=allowed.test".parse()?]);
            let curl = |target: &str| {
                vec![
                    "curl".to_string(),
                    "-sS".into(),
                    "-m".into(),
                    "5".into(),
                    "-o".into(),
                    "/dev/null".into(),
                    "-w".into(),
                    "%{http_code}".into(),
                    format!("http://{target}/hello.txt"),
                ]
            };
            let run = |command: Vec<String>| {
                let backend = &backend;
                let id = session.id.clone();
                async move {
                    let words: Vec<&str> = command.iter().map(String::as_str).collect();
                    crate::serve::run(backend, &id, &words).await
                }
            };
            eventually(Duration::from_secs(60), || {
                let attempt = run(curl("allowed.test"));
                async move {
                    let (out, err, _) = attempt.await.map_err(|e| format!("{e:?}"))?;
                    (out.trim() == "200")
                        .then_some(())
                        .ok_or(format!("allowed.test: {out} {err}"))
                }
            })
            .await?;
            let (_, _, code) = run(curl("sub.allowed.test")).await?;
            assert_ne!(code, 0, "=allowed.test let sub.allowed.test through");
            let (_, _, code) = run(curl("other.test")).await?;
            assert_ne!(code, 0, "other.test was reachable by name");
            let (_, _, code) = run(curl(OTHER)).await?;
            assert_ne!(code, 0, "other.test was reachable by address");

            // A live change through the service, held to the same [egress] rules.
            let change = |allow: &[&str], deny: &[&str]| -> Result<EgressChange, Failed> {
                Ok(EgressChange {
                    allow: allow.iter().map(|n| n.parse()).collect::<Result<_, _>>()?,
                    deny: deny.iter().map(|n| n.parse()).collect::<Result<_, _>>()?,
                })
            };
            for (refused, why) in [
                (change(&["other.test"], &[])?, "other.test"),
                (change(&[], &["=allowed.test"])?, "always"),
            ] {
                let err = backend
                    .change_egress(&session.id, refused)
                    .await
                    .err()
                    .ok_or("a live change outside [egress] was accepted")?;
                assert_eq!(err.code(), ErrorCode::EgressDomain, "{err}");
                assert!(err.to_string().contains(why), "{err}");
            }
            let stranger = service.client(&service.token(&crate::support::service::user(&scope, "eg-y"), false)?)?;
            let err = stranger
                .change_egress(&session.id, change(&["sub.allowed.test"], &[])?)
                .await
                .err()
                .ok_or("another user changed the session's egress")?;
            assert_eq!(err.code(), ErrorCode::NotFound, "{err}");
            let view = backend
                .change_egress(&session.id, change(&["sub.allowed.test"], &[])?)
                .await?;
            assert!(view.domains.contains(&"sub.allowed.test".parse()?), "{view:?}");
            eventually(Duration::from_secs(30), || {
                let attempt = run(curl("sub.allowed.test"));
                async move {
                    let (out, err, _) = attempt.await.map_err(|e| format!("{e:?}"))?;
                    (out.trim() == "200")
                        .then_some(())
                        .ok_or(format!("sub.allowed.test after --allow: {out} {err}"))
                }
            })
            .await?;
            backend
                .change_egress(&session.id, change(&[], &["sub.allowed.test"])?)
                .await?;
            eventually(Duration::from_secs(30), || {
                let attempt = run(curl("sub.allowed.test"));
                async move {
                    let (out, _, code) = attempt.await.map_err(|e| format!("{e:?}"))?;
                    (code != 0)
                        .then_some(())
                        .ok_or(format!("sub.allowed.test still reachable after --deny: {out}"))
                }
            })
            .await?;
            let shown = backend.get(&session.id).await?;
            assert_eq!(
                shown.egress.map(|egress| egress.domains),
                Some(vec!["=allowed.test".parse()?])
            );
            backend.close(&session.id).await?;
            service.stop().await?;
            Ok::<(), Failed>(())
        }
        .await;
        drop(resolver);
        result
    })
}

fn bad_egress_input_is_refused_and_nothing_is_made() -> Result<(), Failed> {
    docker_test("egress-bad", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        let refused = |extra: Vec<String>| {
            let mut args: Vec<String> = create_args_on(&UNSAFE_RUNC_FLAGS, "egress-bad", &[])
                .into_iter()
                .map(str::to_string)
                .collect();
            args.extend(extra);
            scope.cubbi(&home).args(args).run().failure().stderr()
        };
        let err = refused(vec!["--allow-domain".into(), "a.*.test".into()]);
        assert!(err.contains("wildcard"), "{err}");
        let err = refused(vec!["--allow-domain".into(), "not a name".into()]);
        assert!(err.contains("not a DNS name"), "{err}");
        let err = refused(vec!["--allow-domain".into(), "198.18.94.12".into()]);
        assert!(err.contains("address"), "{err}");
        // With no resolver marking its folder, a restricted session is made but the user is
        // told that nothing enforces its policy.
        let no_resolver = tempfile::tempdir()?;
        let warned = scope
            .cubbi(&home)
            .env("CUBBI_EGRESS_DIR", no_resolver.path())
            .args(create_args_on(
                &UNSAFE_RUNC_FLAGS,
                "egress-unenforced",
                &["--egress", "none"],
            ))
            .run()
            .success()
            .stderr();
        assert!(
            warned.contains("NOT enforced") && warned.contains("cubbi egress unit"),
            "{warned}"
        );
        scope
            .cubbi(&home)
            .args(["session", "close", "egress-unenforced"])
            .run()
            .success();
        let err = refused(vec!["--egress".into(), "closed".into()]);
        assert!(err.contains("allow-list, open or none"), "{err}");
        let many: Vec<String> = (0..=cubbi::egress::MAX_DOMAINS)
            .flat_map(|n| ["--allow-domain".to_string(), format!("n{n}.test")])
            .collect();
        let err = refused(many);
        assert!(err.contains("over the limit"), "{err}");
        let made = crate::support::containers_labelled(
            &scope.docker,
            &format!("io.cubbi.owner={}", scope.id),
        )
        .await?;
        assert!(
            made.is_empty(),
            "a refused create made {} containers",
            made.len()
        );
        // A live change of a session that is not there is refused too.
        let err = scope
            .cubbi(&home)
            .args(["session", "egress", "nobody-here", "--allow", "a.test"])
            .run()
            .failure()
            .stderr();
        assert!(err.contains("nobody-here"), "{err}");
        Ok(())
    })
}
