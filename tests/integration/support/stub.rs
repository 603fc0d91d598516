//! A stand-in service on loopback that answers every request from a table the test fills: for
//! clients facing a service that lies (hostile JSON), one connection at a time, no Docker.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use libtest_mimic::Failed;

/// `(method, path)` → `(status, JSON body)`; what the table lacks answers 404.
pub type Answers = Vec<((String, String), (u16, String))>;

pub struct StubService {
    pub url: String,
    address: SocketAddr,
    answers: Arc<Mutex<Answers>>,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StubService {
    pub fn start() -> Result<Self, Failed> {
        Self::serve(None)
    }

    /// A stub that answers 401 to every request without `Authorization: Bearer TOKEN`.
    pub fn requiring_token(token: &str) -> Result<Self, Failed> {
        Self::serve(Some(token.to_string()))
    }

    fn serve(token: Option<String>) -> Result<Self, Failed> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let answers: Arc<Mutex<Answers>> = Arc::default();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (table, log, stopping) = (Arc::clone(&answers), Arc::clone(&seen), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let _ = answer(stream, token.as_deref(), &table, &log);
                }
            }
        });
        Ok(Self {
            url: format!("http://{address}"),
            address,
            answers,
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// Every `METHOD PATH` the stub was asked, in order.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// From now on, `method path` answers `status` with `body`.
    pub fn on(&self, method: &str, path: &str, status: u16, body: impl Into<String>) {
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers.retain(|((m, p), _)| !(m == method && p == path));
        answers.push(((method.into(), path.into()), (status, body.into())));
    }
}

fn answer(
    stream: TcpStream,
    token: Option<&str>,
    table: &Mutex<Answers>,
    seen: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut length = 0usize;
    let mut authorized = token.is_none();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
            && token.is_some()
        {
            // The scheme is case-insensitive, the token is not.
            authorized = value.trim().split_once(' ').is_some_and(|(scheme, given)| {
                scheme.eq_ignore_ascii_case("bearer") && Some(given) == token
            });
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts
        .next()
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(format!("{method} {path}"));
    let unauthorized = (
        401,
        r#"{"error":{"code":"unauthorized","message":"stub: no valid token"}}"#.to_string(),
    );
    let (status, body) = if !authorized {
        unauthorized
    } else {
        table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|((m, p), _)| *m == method && *p == path)
            .map(|(_, answer)| answer.clone())
            .unwrap_or((
                404,
                r#"{"error":{"code":"not_found","message":"stub: no answer"}}"#.into(),
            ))
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

impl Drop for StubService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.address);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
