//! SSH through the service alone: a real `cubbi serve` in `ssh.mode = "proxy"`, a real session,
//! and real OpenSSH run with the session's SSH port dropped for it (an iptables rule matching
//! the group the client runs with), so only the HTTP port carries `ssh`, `scp` and `ssh -L`
//! via `cubbi ssh-proxy`. And the log's follow stream over a WebSocket.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use cubbi::api::{Backend, Quiet};
use cubbi::service::config::SshMode;
use futures_util::StreamExt;
use libtest_mimic::{Failed, Trial};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::service::{TestService, user};
use crate::support::{Cubbi, TestHome, docker_test};

pub fn tests() -> Vec<Trial> {
    crate::trials![
        openssh_scp_and_forwards_go_through_the_service_alone,
        logs_follow_over_a_websocket_and_refuse_others,
        ssh_proxy_refuses_what_a_hostile_service_sends,
    ]
}

/// An iptables rule that drops TCP to `port` from processes of group `gid`, removed on drop.
/// In the `raw` table, so it sees the port before Docker's NAT rewrites it.
struct Blocked {
    rule: Vec<String>,
}

impl Blocked {
    fn port(port: u16, gid: u32) -> Result<Self, Failed> {
        let rule: Vec<String> = [
            "OUTPUT",
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-m",
            "owner",
            "--gid-owner",
            &gid.to_string(),
            "-j",
            "DROP",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let added = std::process::Command::new("iptables")
            .args(["-w", "-t", "raw", "-I"])
            .args(&rule)
            .output()?;
        if !added.status.success() {
            return Err(format!(
                "cannot block the SSH port with iptables: {}",
                String::from_utf8_lossy(&added.stderr)
            )
            .into());
        }
        Ok(Self { rule })
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        let _ = std::process::Command::new("iptables")
            .args(["-w", "-t", "raw", "-D"])
            .args(&self.rule)
            .output();
    }
}

/// A group no other test runs as, for the rule to match.
fn test_gid() -> u32 {
    47_000 + std::process::id() % 10_000
}

/// `program` as the test user, in group `gid` alone, with the home whose cubbi config and
/// token the ProxyCommand reads, trusting the service's private CA.
fn as_client(home: &TestHome, ca: &Path, gid: u32, program: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("setpriv");
    command
        .args(["--regid", &gid.to_string(), "--clear-groups", program])
        .env("CUBBI_CA_CERT", ca)
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join(".config"))
        .env("XDG_DATA_HOME", home.path().join(".local/share"))
        .env_remove("CUBBI_DOCKER_HOST")
        .env_remove("RUST_LOG")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .kill_on_drop(true);
    command
}

fn strict(conf: &Path) -> Vec<String> {
    vec![
        "-F".into(),
        conf.display().to_string(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
    ]
}

fn check(what: &str, output: &Output) -> Result<String, Failed> {
    if !output.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn openssh_scp_and_forwards_go_through_the_service_alone() -> Result<(), Failed> {
    docker_test("ssh-proxy", |scope| async move {
        scope.ensure_image("base").await?;
        // HTTPS with a private CA, as a shared host serves it.
        let pki = tempfile::tempdir()?;
        crate::support::pki::private_ca_and_server_cert(pki.path())?;
        let (cert, key) = (pki.path().join("server.pem"), pki.path().join("server.key"));
        let ca = pki.path().join("ca.pem");
        let mut service = TestService::start(&scope, |config| {
            config.ssh.mode = SshMode::Proxy;
            config.server.tls_cert = Some(cert);
            config.server.tls_key = Some(key);
        })
        .await?;
        assert!(service.url.starts_with("https://"), "{}", service.url);
        let alice = service.token(&user(&scope, "alice"), false)?;
        let home = TestHome::new();
        let cli = |args: Vec<String>, stdin: Option<String>| {
            let cubbi = Cubbi::new(&home).env("CUBBI_CA_CERT", &ca).args(args);
            match stdin {
                Some(input) => cubbi.stdin(input),
                None => cubbi,
            }
            .run_async()
        };
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        cli(args(&["remote", "add", "test", &service.url]), None)
            .await?
            .success();
        cli(args(&["-r", "test", "auth"]), Some(format!("{alice}\n")))
            .await?
            .success();
        let name = user(&scope, "tunnel");
        let mut create = args(&["-r", "test"]);
        create.extend(args(&crate::support::create_args(&name, &[])));
        cli(create, None).await?.success();

        let shown = cli(
            args(&["-r", "test", "--json", "session", "show", &name]),
            None,
        )
        .await?
        .success()
        .stdout();
        let session: cubbi::api::Session = serde_json::from_str(&shown)?;
        assert!(session.ssh.proxy, "the service says SSH goes through it");
        let shown: serde_json::Value = serde_json::from_str(&shown)?;
        let printed = shown["ssh_command"].as_str().ok_or("no ssh_command")?;
        assert!(
            printed.contains(&format!(
                "ProxyCommand=cubbi -r test ssh-proxy {}",
                session.id
            )),
            "{printed}"
        );
        let conf = home.path().join(format!(".ssh/cubbi.d/{name}.conf"));
        let text = std::fs::read_to_string(&conf)?;
        assert!(
            text.contains(&format!("    HostKeyAlias cubbi-{name}\n"))
                && text.contains(&format!(" -r test ssh-proxy {}\n", session.id)),
            "the config goes through cubbi ssh-proxy: {text}"
        );

        // Without the CA the tunnel is refused (TLS is checked as for every request).
        let untrusting = Cubbi::new(&home)
            .args(["-r", "test", "ssh-proxy", &session.id])
            .run_async()
            .await?
            .failure()
            .stdout_is("");
        assert!(
            untrusting.stderr().contains("certificate"),
            "{}",
            untrusting.stderr()
        );

        // No such session of this user's: one line on stderr, nothing on stdout (OpenSSH's
        // side of the pipe), a non-zero exit.
        let refused = cli(args(&["-r", "test", "ssh-proxy", "nosuch"]), None)
            .await?
            .failure()
            .stdout_is("");
        let stderr = refused.stderr();
        assert!(
            stderr.starts_with("error: ") && stderr.trim_end().lines().count() == 1,
            "{stderr:?}"
        );

        let gid = test_gid();
        let _blocked = Blocked::port(session.ssh.port, gid)?;
        let port = session.ssh.port.to_string();
        let direct = as_client(&home, &ca, gid, "ssh")
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=3",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-p",
                &port,
                "agent@127.0.0.1",
                "true",
            ])
            .output()
            .await?;
        let said = String::from_utf8_lossy(&direct.stderr);
        assert!(
            !direct.status.success() && said.contains("timed out"),
            "the session's SSH port must be unreachable for the client: {said}"
        );

        let alias = format!("cubbi-{name}");
        let ran = as_client(&home, &ca, gid, "ssh")
            .args(strict(&conf))
            .args([alias.as_str(), "echo $((6*7)); whoami"])
            .output()
            .await?;
        assert_eq!(check("ssh through the proxy", &ran)?, "42\nagent\n");

        // scp both ways, a file of 2 MiB so the relay carries many messages.
        let up = home.path().join("up.bin");
        let payload: Vec<u8> = (0..2 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&up, &payload)?;
        let ran = as_client(&home, &ca, gid, "scp")
            .args(strict(&conf))
            .arg(&up)
            .arg(format!("{alias}:/tmp/up.bin"))
            .output()
            .await?;
        check("scp up", &ran)?;
        let down = home.path().join("down.bin");
        let ran = as_client(&home, &ca, gid, "scp")
            .args(strict(&conf))
            .arg(format!("{alias}:/tmp/up.bin"))
            .arg(&down)
            .output()
            .await?;
        check("scp down", &ran)?;
        assert!(std::fs::read(&down)? == payload, "the file came back whole");

        // rsync of a folder up and back, over the same ssh config (its ProxyCommand).
        let shell = strict(&conf).join(" ");
        let shell = format!("ssh {shell}");
        let tree = home.path().join("tree");
        std::fs::create_dir_all(tree.join("nested/deeper"))?;
        std::fs::write(tree.join("top.txt"), "at the top\n")?;
        std::fs::write(tree.join("nested/deeper/blob.bin"), &payload[..512 * 1024])?;
        std::fs::write(tree.join("nested/note.txt"), "rsync-$((6*7))\n")?;
        let rsync = |from: String, to: String| {
            let mut command = as_client(&home, &ca, gid, "rsync");
            command.args(["-a", "--delete", "-e", &shell, &from, &to]);
            command
        };
        let ran = rsync(
            format!("{}/", tree.display()),
            format!("{alias}:/tmp/rsynced/"),
        )
        .output()
        .await?;
        check("rsync up", &ran)?;
        let ran = as_client(&home, &ca, gid, "ssh")
            .args(strict(&conf))
            .args([alias.as_str(), "cat /tmp/rsynced/nested/note.txt"])
            .output()
            .await?;
        assert_eq!(check("read what rsync sent", &ran)?, "rsync-$((6*7))\n");
        let back = home.path().join("back");
        let ran = rsync(
            format!("{alias}:/tmp/rsynced/"),
            format!("{}/", back.display()),
        )
        .output()
        .await?;
        check("rsync down", &ran)?;
        for file in ["top.txt", "nested/deeper/blob.bin", "nested/note.txt"] {
            assert!(
                std::fs::read(back.join(file))? == std::fs::read(tree.join(file))?,
                "{file} came back whole through rsync"
            );
        }

        // `cubbi session connect` goes the same way (russh over the tunnel), in a real PTY.
        let mut connect = std::process::Command::new("setpriv");
        connect
            .args(["--regid", &gid.to_string(), "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_cubbi"))
            .args(["-r", "test", "session", "connect", &name])
            .env("CUBBI_CA_CERT", &ca)
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join(".config"))
            .env("XDG_DATA_HOME", home.path().join(".local/share"))
            .env("TERM", "xterm")
            .env_remove("RUST_LOG")
            .env_remove("DBUS_SESSION_BUS_ADDRESS");
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            const STEP: Duration = Duration::from_secs(30);
            let mut term = crate::support::pty::Terminal::spawn(connect, 40, 120)
                .map_err(|err| err.to_string())?;
            term.send("echo via-$((3+4))\r")?;
            term.expect("via-7", STEP)?;
            term.send("exit 3\r")?;
            let status = term.wait(STEP)?;
            if status.code() != Some(3) {
                return Err(format!(
                    "connect ended with {status}:\n{}",
                    term.transcript()
                ));
            }
            Ok(())
        })
        .await?
        .map_err(Failed::from)?;

        // A server in the session (one line per connection), reached with `ssh -L`.
        let ran = as_client(&home, &ca, gid, "ssh")
            .args(strict(&conf))
            .args([
                alias.as_str(),
                "nohup systemd-socket-activate -l 127.0.0.1:8099 -a --inetd \
                 sh -c 'echo forwarded-$((6*7))' >/dev/null 2>&1 </dev/null &",
            ])
            .output()
            .await?;
        check("start a server in the session", &ran)?;
        let local = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut forward = as_client(&home, &ca, gid, "ssh")
            .args(strict(&conf))
            .args([
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-L",
                &format!("127.0.0.1:{local}:127.0.0.1:8099"),
                alias.as_str(),
            ])
            .stdin(std::process::Stdio::null())
            .spawn()?;
        crate::support::eventually(Duration::from_secs(30), || async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", local))
                .await
                .map_err(|err| err.to_string())?;
            let mut text = String::new();
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut text))
                .await
                .map_err(|_| "no answer".to_string())?
                .map_err(|err| err.to_string())?;
            if text.trim() == "forwarded-42" {
                Ok(())
            } else {
                Err(format!("the forward gave {text:?}"))
            }
        })
        .await?;
        forward.kill().await?;

        cli(args(&["-r", "test", "session", "close", &session.id]), None)
            .await?
            .success();
        service.stop().await?;
        Ok(())
    })
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn open_ws(
    service: &TestService,
    path: &str,
    extra: &[(&'static str, String)],
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let address = service.url.trim_start_matches("http://").to_string();
    let mut request = format!("ws://{address}{path}").into_client_request()?;
    for (name, value) in extra {
        request
            .headers_mut()
            .insert(*name, value.parse().expect("a header value"));
    }
    let tcp = tokio::net::TcpStream::connect(&address).await?;
    Ok(tokio_tungstenite::client_async(request, tcp).await?.0)
}

fn status_of(err: tokio_tungstenite::tungstenite::Error) -> Option<u16> {
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => Some(response.status().as_u16()),
        _ => None,
    }
}

/// Reads log lines until one contains `wanted`, logging `wanted` in the session every second
/// meanwhile (the journal is the session's console; the stream attaches on its first read).
async fn read_log_until(
    socket: &mut Socket,
    client: &cubbi::remote::client::RemoteBackend,
    id: &str,
    wanted: &str,
) -> Result<(), Failed> {
    let mut seen = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            tokio::select! {
                message = socket.next() => match message {
                    Some(message) => {
                        if let Message::Text(text) = message? {
                            let line: serde_json::Value = serde_json::from_str(&text)?;
                            let text = line["text"].as_str().ok_or("not a text line")?.to_string();
                            if text.contains(wanted) {
                                return Ok::<bool, Failed>(true);
                            }
                            seen.push(text);
                        }
                    }
                    None => return Ok(false),
                },
                _ = tick.tick() => {
                    let mut events = client
                        .exec(id, vec!["logger".into(), wanted.to_string()])
                        .await?;
                    while events.next().await.is_some() {}
                }
            }
        }
    })
    .await;
    match found {
        Ok(Ok(true)) => Ok(()),
        other => Err(format!(
            "`{wanted}` never came in the log ({other:?}); it showed {} lines, the last {:?}",
            seen.len(),
            seen.last()
        )
        .into()),
    }
}

fn logs_follow_over_a_websocket_and_refuse_others() -> Result<(), Failed> {
    docker_test("ws-logs", |scope| async move {
        scope.ensure_image("base").await?;
        let mut service = TestService::start(&scope, |_| {}).await?;
        let alice = service.token(&user(&scope, "alice"), false)?;
        let bob = service.token(&user(&scope, "bob"), false)?;
        let client = service.client(&alice)?;
        let session = client.create(crate::serve::spec("ws-logs"), &Quiet).await?;
        let id = session.id.clone();
        let answer: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/v1/sessions/{id}/tickets", service.url))
            .bearer_auth(&alice)
            .json(&json!({"purpose": "logs"}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let ticket = answer["ticket"].as_str().ok_or("no ticket")?.to_string();
        let mut socket = open_ws(
            &service,
            &format!("/v1/sessions/{id}/logs/ws?ticket={ticket}&tail=5"),
            &[],
        )
        .await?;

        // A line written to the journal after the socket opened comes through it.
        read_log_until(&mut socket, &client, &id, "ws-log-mark-42").await?;
        drop(socket);

        // The ticket was for logs, once; a bearer of another user gets 404; another origin 403.
        let spent = open_ws(
            &service,
            &format!("/v1/sessions/{id}/logs/ws?ticket={ticket}"),
            &[],
        )
        .await;
        assert_eq!(spent.err().and_then(status_of), Some(401));
        let path = format!("/v1/sessions/{id}/logs/ws");
        let other = open_ws(
            &service,
            &path,
            &[("authorization", format!("Bearer {bob}"))],
        )
        .await;
        assert_eq!(other.err().and_then(status_of), Some(404));
        let cross = open_ws(
            &service,
            &path,
            &[
                ("authorization", format!("Bearer {alice}")),
                ("origin", "http://evil.example".into()),
            ],
        )
        .await;
        assert_eq!(cross.err().and_then(status_of), Some(403));
        let mine = open_ws(
            &service,
            &path,
            &[("authorization", format!("Bearer {alice}"))],
        )
        .await;
        assert!(mine.is_ok(), "the owner's bearer token opens it");

        client.close(&id).await?;
        service.stop().await?;
        Ok(())
    })
}

/// What the hostile service does once `/ssh` is upgraded.
#[derive(Clone, Copy)]
enum Hostile {
    /// A greeting, then a close: the only bytes stdout may carry.
    Greets,
    /// A text message with a terminal escape.
    Text,
    /// One binary message over the client's bound.
    Huge,
}

/// A service on loopback (axum, no Docker) whose ticket route gives `ticket` and whose tunnel
/// does `hostile`; its base URL.
async fn hostile_service(ticket: &'static str, hostile: Hostile) -> Result<String, Failed> {
    use axum::extract::ws::{Message as WsMessage, WebSocketUpgrade};
    let app = axum::Router::new()
        .route(
            "/v1/sessions/{id}/tickets",
            axum::routing::post(move || async move {
                axum::Json(json!({"ticket": ticket, "expires_in": 30}))
            }),
        )
        .route(
            "/v1/sessions/{id}/ssh",
            axum::routing::get(move |upgrade: WebSocketUpgrade| async move {
                upgrade.on_upgrade(move |mut socket| async move {
                    let message = match hostile {
                        Hostile::Greets => {
                            WsMessage::Binary(b"SSH-2.0-hostile\r\n".to_vec().into())
                        }
                        Hostile::Text => WsMessage::Text("\u{1b}]0;owned\u{7}".into()),
                        Hostile::Huge => WsMessage::Binary(vec![b'A'; 8 << 20].into()),
                    };
                    let _ = socket.send(message).await;
                    let _ = socket.send(WsMessage::Close(None)).await;
                    // Held open until the client goes.
                    while let Some(Ok(_)) = socket.recv().await {}
                })
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{address}"))
}

/// `cubbi -r evil ssh-proxy web` against `url`, its stdin held open: (exit code, stdout, stderr).
async fn proxy_against(url: &str) -> Result<(Option<i32>, Vec<u8>, String), Failed> {
    let home = TestHome::new();
    Cubbi::new(&home)
        .args(["remote", "add", "evil", url])
        .run_async()
        .await?
        .success();
    Cubbi::new(&home)
        .args(["-r", "evil", "auth", "--no-verify"])
        .stdin("cubbi-stub-token_1\n")
        .run_async()
        .await?
        .success();
    let mut command = tokio::process::Command::from(
        Cubbi::new(&home)
            .args(["-r", "evil", "ssh-proxy", "web"])
            .into_command(),
    );
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let _stdin = child.stdin.take();
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .map_err(|_| "ssh-proxy never ended")??;
    Ok((
        output.status.code(),
        output.stdout,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

fn ssh_proxy_refuses_what_a_hostile_service_sends() -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (code, stdout, stderr) =
            proxy_against(&hostile_service("good-ticket_1", Hostile::Greets).await?).await?;
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(stdout, b"SSH-2.0-hostile\r\n");

        let cases = [
            ("good-ticket_1", Hostile::Text, "not SSH bytes"),
            ("good-ticket_1", Hostile::Huge, "the SSH tunnel broke"),
            (
                "../../x?y=1\nHost *",
                Hostile::Greets,
                "ticket this client refuses",
            ),
        ];
        for (ticket, hostile, said) in cases {
            let (code, stdout, stderr) =
                proxy_against(&hostile_service(ticket, hostile).await?).await?;
            assert_eq!(code, Some(1), "{stderr}");
            assert!(stdout.is_empty(), "nothing of it reached stdout");
            assert!(
                stderr.starts_with("error: ")
                    && stderr.contains(said)
                    && stderr.trim_end().lines().count() == 1
                    && !stderr.contains('\u{1b}')
                    && !stderr.contains("panicked"),
                "{stderr:?}"
            );
        }
        Ok(())
    })
}
