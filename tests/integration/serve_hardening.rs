//! What a hostile client or a hostile session can do to a real `cubbi serve` on 127.0.0.1:
//! connections that say nothing cannot lock everyone out, a session whose root replaced
//! `/usr/bin/sh` cannot make a status read grow the service or hang it (an admin can still list
//! and close it), and one user cannot hold more streams than the cap.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};
use serde_json::{Value, json};

use crate::support::docker_test;
use crate::support::service::{TestService, user};
use crate::support::sysbox::SessionRuntime;

pub fn tests() -> Vec<Trial> {
    crate::trials![
        silent_connections_cannot_lock_out_others,
        a_hostile_session_shell_cannot_grow_or_hang_the_service,
    ]
}

/// Resident memory of this process (the service runs in it), in bytes.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Past the connection cap, idle connections are held off and closed after the header timeout,
/// so a real request gets through; a client that dribbles its request head is cut off.
fn silent_connections_cannot_lock_out_others() -> Result<(), Failed> {
    docker_test("serve-silent", |scope| async move {
        let mut service = TestService::start(&scope, |config| {
            config.server.max_connections = 8;
            config.server.header_timeout = 2;
        })
        .await?;
        let address = service.url.trim_start_matches("http://").to_string();
        // Four times the cap, none of them saying anything.
        let mut silent = Vec::new();
        for _ in 0..32 {
            silent.push(std::net::TcpStream::connect(&address)?);
        }
        let started = Instant::now();
        let answer = reqwest::Client::new()
            .get(format!("{}/healthz", service.url))
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        assert_eq!(answer.status(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "healthz took {:?} behind 32 silent connections",
            started.elapsed()
        );

        // A request head sent a byte a second is never finished: the server closes it.
        let mut dribble = std::net::TcpStream::connect(&address)?;
        dribble.set_read_timeout(Some(Duration::from_secs(1)))?;
        let started = Instant::now();
        let mut closed = false;
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaa" {
            if dribble.write_all(&[*byte]).is_err() {
                closed = true;
                break;
            }
            let mut buffer = [0u8; 512];
            match dribble.read(&mut buffer) {
                // EOF, or hyper's 408 before it closes.
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(_) => {
                    closed = true;
                    break;
                }
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
            if started.elapsed() > Duration::from_secs(40) {
                break;
            }
        }
        assert!(
            closed,
            "a request head dribbled for {:?} was never cut off",
            started.elapsed()
        );
        drop(silent);
        service.stop().await
    })
}

/// Root in a session replaces `/usr/bin/sh` with something that prints for ever, then with
/// something that never exits. Reads of the session stay bounded in time and memory, an admin
/// lists and closes it, and the per-user stream cap holds.
fn a_hostile_session_shell_cannot_grow_or_hang_the_service() -> Result<(), Failed> {
    docker_test("serve-hostile-shell", |scope| async move {
        scope.ensure_base().await?;
        let mut service = TestService::start(&scope, |config| {
            config.server.streams_per_user = 1;
        })
        .await?;
        let alice_name = user(&scope, "alice");
        let alice = service.token(&alice_name, false)?;
        let admin = service.token(&user(&scope, "admin"), true)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?;
        let base = service.url.clone();
        let created = http
            .post(format!("{base}/v1/sessions"))
            .bearer_auth(&alice)
            .json(&json!({"image": "base", "name": "hog", "memory": "512m",
                "runtime": SessionRuntime::of_this_run().runtime_name()}))
            .send()
            .await?;
        assert_eq!(created.status(), 201);
        let created: Value = created.json().await?;
        let id = created["id"].as_str().ok_or("no id")?.to_string();

        // The stream cap: one followed log stream is open, a second is refused.
        let first = http
            .get(format!("{base}/v1/sessions/hog/logs?follow=true"))
            .bearer_auth(&alice)
            .send()
            .await?;
        assert_eq!(first.status(), 200);
        let second = http
            .get(format!("{base}/v1/sessions/hog/logs?follow=true"))
            .bearer_auth(&alice)
            .send()
            .await?;
        assert_eq!(second.status(), 429);
        let body: Value = second.json().await?;
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("server.streams_per_user")),
            "{body}"
        );
        drop(first);
        crate::support::eventually(Duration::from_secs(10), || async {
            let again = http
                .get(format!("{base}/v1/sessions/hog/logs?tail=1"))
                .bearer_auth(&alice)
                .send()
                .await
                .map_err(|err| err.to_string())?;
            if again.status() == 200 {
                Ok(())
            } else {
                Err(format!(
                    "a stream after the first ended: {}",
                    again.status()
                ))
            }
        })
        .await?;

        let replace_shell = |body: &'static str| {
            format!(
                "set -e; [ -x /usr/local/bin/realsh ] || cp /usr/bin/dash /usr/local/bin/realsh; \
                 rm -f /usr/bin/sh; printf '#!/usr/local/bin/realsh\\n{body}\\n' > /usr/bin/sh; \
                 chmod 755 /usr/bin/sh"
            )
        };
        for (hostile, what) in [
            ("exec yes", "prints for ever"),
            ("exec sleep 100000", "never exits"),
        ] {
            let script = replace_shell(hostile);
            // As the session's root, straight through Docker (its sshd is not the point).
            let replaced = std::process::Command::new("docker")
                .args([
                    "-H",
                    &scope.endpoint,
                    "exec",
                    &id,
                    "/usr/bin/dash",
                    "-c",
                    &script,
                ])
                .output()?;
            assert!(
                replaced.status.success(),
                "replacing the session's sh ({what}): {}",
                String::from_utf8_lossy(&replaced.stderr)
            );
            let before = resident_bytes();
            let started = Instant::now();
            let shown = http
                .get(format!("{base}/v1/sessions/hog"))
                .bearer_auth(&alice)
                .send()
                .await?;
            let took = started.elapsed();
            assert_eq!(shown.status(), 200, "show with a shell that {what}");
            assert!(
                took < Duration::from_secs(15),
                "show took {took:?} with a shell that {what}"
            );
            let grew = resident_bytes().saturating_sub(before);
            assert!(
                grew < 200 * 1024 * 1024,
                "the service grew by {} MiB reading a session whose shell {what}",
                grew / (1024 * 1024)
            );
            // Authorizing a key runs the shell too: refused in bounded time, not hung.
            let started = Instant::now();
            let connected = http
                .post(format!("{base}/v1/sessions/hog/connect"))
                .bearer_auth(&alice)
                .json(&json!({"public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"}))
                .send()
                .await?;
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "connect took {:?} with a shell that {what}",
                started.elapsed()
            );
            assert!(
                connected.status().is_client_error() || connected.status().is_server_error(),
                "connect with a shell that {what}: {}",
                connected.status()
            );
        }

        // The admin lists every session and closes this one, in bounded time.
        let started = Instant::now();
        let listed = http
            .get(format!("{base}/v1/sessions?owner={alice_name}"))
            .bearer_auth(&admin)
            .send()
            .await?;
        assert_eq!(listed.status(), 200);
        let listed: Value = listed.json().await?;
        assert!(
            listed
                .as_array()
                .is_some_and(|all| all.iter().any(|s| s["name"] == "hog")),
            "{listed}"
        );
        let closed = http
            .delete(format!("{base}/v1/sessions/hog"))
            .bearer_auth(&admin)
            .send()
            .await?;
        assert_eq!(closed.status(), 200, "{}", closed.text().await?);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the admin's list and close took {:?}",
            started.elapsed()
        );
        service.stop().await
    })
}
