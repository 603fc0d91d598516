//! Sessions' output to Fluentd: a receiver of the Forward protocol (MessagePack over TCP) run
//! here, the real dockerd's fluentd log driver, real sessions.

use std::io::Read;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libtest_mimic::{Failed, Trial};

use crate::support::{TestHome, create_args, docker_test, eventually};

pub fn tests() -> Vec<Trial> {
    crate::trials![session_output_reaches_fluentd_tagged_and_logs_still_work]
}

/// (tag, the record's `log` field) of every event a Forward client sent.
type Events = Arc<Mutex<Vec<(String, String)>>>;

/// A Forward-protocol receiver on all addresses: each connection is read as a stream of
/// MessagePack values, `[tag, time, record, ...]` (message mode) or `[tag, [[time, record],
/// ...], ...]` (forward mode).
fn receiver() -> Result<(u16, Events), Failed> {
    let listener = TcpListener::bind("0.0.0.0:0")?;
    let port = listener.local_addr()?.port();
    let events: Events = Arc::default();
    let shared = Arc::clone(&events);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let events = Arc::clone(&shared);
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(stream.take(64 << 20));
                while let Ok(value) = rmpv::decode::read_value(&mut reader) {
                    record(&value, &events);
                }
            });
        }
    });
    Ok((port, events))
}

fn record(value: &rmpv::Value, events: &Events) {
    let Some(items) = value.as_array() else {
        return;
    };
    let Some(tag) = items.first().and_then(|tag| tag.as_str()) else {
        return;
    };
    let log_of = |record: &rmpv::Value| {
        record.as_map().and_then(|pairs| {
            pairs
                .iter()
                .find(|(key, _)| key.as_str() == Some("log"))
                .and_then(|(_, value)| value.as_str().map(str::to_string))
        })
    };
    let mut found = Vec::new();
    match items.get(1) {
        Some(rmpv::Value::Array(entries)) => {
            for entry in entries {
                if let Some(log) = entry.as_array().and_then(|e| e.get(1)).and_then(log_of) {
                    found.push(log);
                }
            }
        }
        Some(_) => found.extend(items.get(2).and_then(log_of)),
        None => {}
    }
    let mut events = events.lock().unwrap_or_else(|p| p.into_inner());
    events.extend(found.into_iter().map(|log| (tag.to_string(), log)));
}

fn session_output_reaches_fluentd_tagged_and_logs_still_work() -> Result<(), Failed> {
    docker_test("logging-fluentd", |scope| async move {
        scope.ensure_base().await?;
        let home = TestHome::new();
        let (port, events) = receiver()?;
        let config = |value: &str| {
            scope
                .cubbi(&home)
                .args(["config", "set", "logging.fluentd", value])
                .run()
                .success();
        };

        // A bad address is refused at create, naming the key, and nothing is made.
        config("udp://127.0.0.1:24224");
        scope
            .cubbi(&home)
            .args(create_args("fluent-bad", &[]))
            .run()
            .failure()
            .stderr_contains("logging.fluentd")
            .stderr_contains("only tcp:// is supported");
        let left =
            crate::support::containers_labelled(&scope.docker, "io.cubbi.name=fluent-bad").await?;
        assert!(left.is_empty(), "a refused create left {left:?}");

        config(&format!("tcp://127.0.0.1:{port}"));
        scope
            .cubbi(&home)
            .args(create_args("fluent-on", &[]))
            .run()
            .success();
        let marker = format!("fluent-marker-{}", scope.id);
        scope
            .cubbi(&home)
            .args([
                "session",
                "exec",
                "fluent-on",
                "--",
                "logger",
                "-t",
                "cubbi-test",
                &marker,
            ])
            .run()
            .success();
        let tag = format!("cubbi.{}.fluent-on", scope.id.replace('.', "_"));
        eventually(Duration::from_secs(30), || {
            let events = Arc::clone(&events);
            let (marker, tag) = (marker.clone(), tag.clone());
            async move {
                let seen = events.lock().map_err(|e| e.to_string())?.clone();
                match seen.iter().find(|(_, log)| log.contains(&marker)) {
                    Some((got, _)) if *got == tag => Ok(()),
                    Some((got, _)) => Err(format!("tagged {got}, not {tag}")),
                    None => Err(format!("not among {} events", seen.len())),
                }
            }
        })
        .await?;
        // Docker's dual logging: `session logs` still has it.
        scope
            .cubbi(&home)
            .args(["session", "logs", "fluent-on"])
            .run()
            .success()
            .stdout_contains(&marker);

        assert_eq!(doctor_fluentd(&scope, &home)?, "ok");

        // A receiver that is not there never holds up a session; doctor warns.
        let closed = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        config(&format!("tcp://127.0.0.1:{closed}"));
        scope
            .cubbi(&home)
            .args(create_args("fluent-down", &[]))
            .run()
            .success();
        assert_eq!(doctor_fluentd(&scope, &home)?, "warn");
        Ok(())
    })
}

/// The status of doctor's `fluentd` check (doctor's other checks may fail on a test host).
fn doctor_fluentd(scope: &crate::support::DockerScope, home: &TestHome) -> Result<String, Failed> {
    let ran = scope.cubbi(home).args(["--json", "doctor"]).run();
    let report: serde_json::Value = serde_json::from_str(ran.stdout().trim())?;
    report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|check| check["id"] == "fluentd"))
        .and_then(|check| check["status"].as_str())
        .map(str::to_string)
        .ok_or_else(|| format!("no fluentd check in {report}").into())
}
