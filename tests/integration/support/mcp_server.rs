//! A real MCP server for the tests: `tests/fixtures/mcp-server/server.py`, the PyPI `mcp`
//! SDK's `MCPServer` with one tool (`lookup_word`) over Streamable HTTP on all addresses of
//! the host, so sessions reach it through their network's gateway. It records every HTTP
//! request's headers and every tool call. The SDK is in a venv install/test.sh makes
//! (`CUBBI_TEST_MCP_PYTHON`, default `~/.cache/cubbi-test/mcp/bin/python`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use libtest_mimic::Failed;
use serde_json::Value;

/// What the tool answers (the test looks for it in the agent's tool result).
pub const ANSWER: &str = "cubbi-mcp-7f3a";

pub struct McpServer {
    pub port: u16,
    child: Child,
    record: PathBuf,
    _dir: tempfile::TempDir,
}

fn python() -> Result<PathBuf, Failed> {
    let path = std::env::var_os("CUBBI_TEST_MCP_PYTHON")
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|cache| cache.join("cubbi-test/mcp/bin/python")))
        .ok_or("no cache folder for the MCP SDK's venv")?;
    if !path.exists() {
        return Err(format!(
            "the MCP SDK's python is missing at {}: run install/test.sh (it makes the venv) or \
             set CUBBI_TEST_MCP_PYTHON",
            path.display()
        )
        .into());
    }
    Ok(path)
}

impl McpServer {
    pub fn start() -> Result<Self, Failed> {
        let dir = tempfile::tempdir()?;
        let record = dir.path().join("calls.jsonl");
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp-server/server.py");
        let mut child = Command::new(python()?)
            .arg(&script)
            .arg(&record)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout from the MCP server")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("port ") {
                    let _ = tx.send(port.trim().parse::<u16>().ok());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(port)) => Ok(Self {
                port,
                child,
                record,
                _dir: dir,
            }),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("the MCP server did not say its port: {other:?}").into())
            }
        }
    }

    fn entries(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The tool calls, as `{"tool", "args"}`.
    pub fn calls(&self) -> Vec<Value> {
        self.entries()
            .into_iter()
            .filter(|e| e.get("tool").is_some())
            .collect()
    }

    /// Every HTTP request's headers.
    pub fn request_headers(&self) -> Vec<Value> {
        self.entries()
            .into_iter()
            .filter_map(|e| e.get("headers").cloned())
            .collect()
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
