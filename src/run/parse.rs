//! Per-tool readers of what a headless tool prints: each line in, the events it holds out, and
//! at the end the one normalised [`RunResult`].

use serde_json::Value;

use super::{RunEvent, RunResult, Usage};
use crate::images::metadata::OutputFormat;

/// Reads one tool's output, line by line.
pub struct Parser {
    format: OutputFormat,
    result: RunResult,
    /// Whether the tool printed its own final result (Claude's `result` line).
    finished: bool,
    /// The last text the agent wrote, the result of tools that print no final line.
    last_text: Option<String>,
    /// Plain text output, for [`OutputFormat::Text`]; the assistant's text since the last
    /// tool call, for Gemini's deltas.
    text: String,
    error: Option<String>,
}

impl Parser {
    pub fn new(format: OutputFormat) -> Self {
        Self {
            format,
            result: RunResult::default(),
            finished: false,
            last_text: None,
            text: String::new(),
            error: None,
        }
    }

    /// The events in one line of output (a line that is not JSON is ignored by JSON parsers).
    pub fn line(&mut self, line: &str) -> Vec<RunEvent> {
        if self.format == OutputFormat::Text {
            self.text.push_str(line);
            self.text.push('\n');
            return Vec::new();
        }
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            return Vec::new();
        };
        let events = match self.format {
            OutputFormat::ClaudeStreamJson => self.claude(&value),
            OutputFormat::CodexJson => self.codex(&value),
            OutputFormat::GeminiStreamJson => self.gemini(&value),
            OutputFormat::OpencodeJson => self.opencode(&value),
            OutputFormat::Text => Vec::new(),
        };
        for event in &events {
            if let RunEvent::Text { text } = event {
                self.last_text = Some(text.clone());
            }
        }
        events
    }

    /// The result once the tool exited with `exit_code`; `stderr` explains a failure that
    /// printed no result. `elapsed_ms` stands in for a duration the tool did not report.
    pub fn finish(mut self, exit_code: i32, stderr: &str, elapsed_ms: u64) -> RunResult {
        let mut result = std::mem::take(&mut self.result);
        result.exit_code = Some(exit_code);
        if result.duration_ms == 0 {
            result.duration_ms = elapsed_ms;
        }
        if !self.finished {
            result.result = match self.format {
                OutputFormat::Text => self.text.trim_end().to_string(),
                _ => self.last_text.take().unwrap_or_default(),
            };
        }
        if let Some(error) = self.error.take() {
            result.is_error = true;
            if result.result.is_empty() || !self.finished {
                result.result = error;
            }
        }
        if exit_code != 0 {
            result.is_error = true;
            if result.result.is_empty() {
                result.result = last_lines(stderr, 20);
            }
        }
        result
    }

    /// `claude -p --output-format stream-json --verbose`.
    fn claude(&mut self, value: &Value) -> Vec<RunEvent> {
        let mut events = Vec::new();
        if let Some(id) = value["session_id"].as_str() {
            self.result.agent_session_id = Some(id.to_string());
        }
        match value["type"].as_str() {
            Some("assistant") => {
                for block in content(value) {
                    match block["type"].as_str() {
                        Some("text") => events.push(RunEvent::Text {
                            text: block["text"].as_str().unwrap_or_default().to_string(),
                        }),
                        Some("tool_use") => events.push(RunEvent::ToolUse {
                            id: string(&block["id"]),
                            name: block["name"].as_str().unwrap_or_default().to_string(),
                            input: block["input"].clone(),
                        }),
                        _ => {}
                    }
                }
            }
            Some("user") => {
                for block in content(value) {
                    if block["type"] == "tool_result" {
                        events.push(RunEvent::ToolResult {
                            id: string(&block["tool_use_id"]),
                            output: text_of(&block["content"]),
                            is_error: block["is_error"].as_bool().unwrap_or(false),
                        });
                    }
                }
            }
            Some("result") => {
                self.finished = true;
                let result = &mut self.result;
                result.is_error = value["is_error"].as_bool().unwrap_or(false)
                    || value["subtype"].as_str().is_some_and(|s| s != "success");
                result.result = match value["result"].as_str() {
                    Some(text) => text.to_string(),
                    None => value["subtype"].as_str().unwrap_or_default().to_string(),
                };
                result.num_turns = value["num_turns"].as_u64();
                result.duration_ms = value["duration_ms"].as_u64().unwrap_or(0);
                result.total_cost_usd = value["total_cost_usd"].as_f64();
                let usage = &value["usage"];
                result.usage = Usage {
                    input_tokens: usage["input_tokens"].as_u64(),
                    output_tokens: usage["output_tokens"].as_u64(),
                    cache_read_input_tokens: usage["cache_read_input_tokens"].as_u64(),
                    cache_creation_input_tokens: usage["cache_creation_input_tokens"].as_u64(),
                };
            }
            _ => {}
        }
        events
    }

    /// `codex exec --json`: thread, turn and item events; the result is the last agent
    /// message, usage the sum of the turns'.
    fn codex(&mut self, value: &Value) -> Vec<RunEvent> {
        let mut events = Vec::new();
        match value["type"].as_str() {
            Some("thread.started") => {
                self.result.agent_session_id = string(&value["thread_id"]);
            }
            Some("turn.completed") => {
                let usage = &value["usage"];
                self.result.usage.add(&Usage {
                    input_tokens: usage["input_tokens"].as_u64(),
                    output_tokens: usage["output_tokens"].as_u64(),
                    cache_read_input_tokens: usage["cached_input_tokens"].as_u64(),
                    cache_creation_input_tokens: None,
                });
                *self.result.num_turns.get_or_insert(0) += 1;
            }
            Some("turn.failed") => {
                self.error = Some(text_of(&value["error"]["message"]));
                *self.result.num_turns.get_or_insert(0) += 1;
            }
            // codex 0.169 reports its retries as errors too ("Reconnecting... 2/5 (...)").
            Some("error") => {
                let message = text_of(&value["message"]);
                if !message.starts_with("Reconnecting...") {
                    self.error = Some(message);
                }
            }
            Some(kind @ ("item.started" | "item.completed")) => {
                let item = &value["item"];
                let id = string(&item["id"]);
                let completed = kind == "item.completed";
                match item["type"].as_str() {
                    Some("agent_message") if completed => events.push(RunEvent::Text {
                        text: item["text"].as_str().unwrap_or_default().to_string(),
                    }),
                    Some("command_execution") if completed => {
                        events.push(RunEvent::ToolUse {
                            id: id.clone(),
                            name: "command_execution".into(),
                            input: serde_json::json!({ "command": item["command"] }),
                        });
                        events.push(RunEvent::ToolResult {
                            id,
                            output: text_of(&item["aggregated_output"]),
                            is_error: item["status"] != "completed"
                                || item["exit_code"].as_i64().is_some_and(|code| code != 0),
                        });
                    }
                    Some(name @ ("file_change" | "mcp_tool_call" | "web_search")) if completed => {
                        events.push(RunEvent::ToolUse {
                            id: id.clone(),
                            name: name.to_string(),
                            input: item.clone(),
                        });
                        events.push(RunEvent::ToolResult {
                            id,
                            output: text_of(&item["status"]),
                            is_error: item["status"] == "failed",
                        });
                    }
                    Some("error") if completed => {
                        self.error = Some(text_of(&item["message"]));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        events
    }

    /// `gemini -o stream-json`: `init` (the session id), `message` (assistant text, in deltas),
    /// `tool_use`/`tool_result`, `error`, and a final `result` with the token stats of every
    /// model request (input tokens include the cached ones). No turn count, no cost.
    fn gemini(&mut self, value: &Value) -> Vec<RunEvent> {
        let mut events = Vec::new();
        match value["type"].as_str() {
            Some("init") => {
                self.result.agent_session_id = string(&value["session_id"]);
            }
            Some("message") if value["role"] == "assistant" => {
                let text = value["content"].as_str().unwrap_or_default();
                if value["delta"] != true {
                    self.text.clear();
                }
                self.text.push_str(text);
                if !text.is_empty() {
                    events.push(RunEvent::Text {
                        text: text.to_string(),
                    });
                }
            }
            Some("tool_use") => {
                self.text.clear();
                events.push(RunEvent::ToolUse {
                    id: string(&value["tool_id"]),
                    name: value["tool_name"].as_str().unwrap_or_default().to_string(),
                    input: value["parameters"].clone(),
                });
            }
            Some("tool_result") => {
                let failed = value["status"] != "success";
                let output = if failed && !value["error"].is_null() {
                    text_of(&value["error"]["message"])
                } else {
                    text_of(&value["output"])
                };
                events.push(RunEvent::ToolResult {
                    id: string(&value["tool_id"]),
                    output,
                    is_error: failed,
                });
            }
            Some("error") if value["severity"] != "warning" => {
                self.error = Some(text_of(&value["message"]));
            }
            Some("result") => {
                self.finished = true;
                let result = &mut self.result;
                let stats = &value["stats"];
                result.is_error = value["status"] != "success";
                result.result = if result.is_error {
                    match text_of(&value["error"]["message"]) {
                        message if message.is_empty() => self
                            .error
                            .clone()
                            .unwrap_or_else(|| text_of(&value["status"])),
                        message => message,
                    }
                } else {
                    self.text.clone()
                };
                result.duration_ms = stats["duration_ms"].as_u64().unwrap_or(0);
                result.usage = Usage {
                    input_tokens: stats["input_tokens"].as_u64(),
                    output_tokens: stats["output_tokens"].as_u64(),
                    cache_read_input_tokens: stats["cached"].as_u64(),
                    cache_creation_input_tokens: None,
                };
            }
            _ => {}
        }
        events
    }

    /// `opencode run --format json`: events with a `sessionID` and a `part` each; a step per
    /// model request (`step_finish` carries its tokens and cost), `text`, `tool_use` (the call
    /// and its outcome at once), `error`. The result is the last text.
    fn opencode(&mut self, value: &Value) -> Vec<RunEvent> {
        let mut events = Vec::new();
        if let Some(id) = value["sessionID"].as_str() {
            self.result.agent_session_id = Some(id.to_string());
        }
        let part = &value["part"];
        match value["type"].as_str() {
            Some("text") => events.push(RunEvent::Text {
                text: part["text"].as_str().unwrap_or_default().to_string(),
            }),
            Some("tool_use") => {
                let id = string(&part["callID"]);
                let state = &part["state"];
                events.push(RunEvent::ToolUse {
                    id: id.clone(),
                    name: part["tool"].as_str().unwrap_or_default().to_string(),
                    input: state["input"].clone(),
                });
                let failed = state["status"] == "error";
                events.push(RunEvent::ToolResult {
                    id,
                    output: if failed {
                        text_of(&state["error"])
                    } else {
                        text_of(&state["output"])
                    },
                    is_error: failed,
                });
            }
            Some("step_finish") => {
                let tokens = &part["tokens"];
                self.result.usage.add(&Usage {
                    input_tokens: tokens["input"].as_u64(),
                    output_tokens: tokens["output"].as_u64(),
                    cache_read_input_tokens: tokens["cache"]["read"].as_u64(),
                    cache_creation_input_tokens: tokens["cache"]["write"].as_u64(),
                });
                if let Some(cost) = part["cost"].as_f64() {
                    *self.result.total_cost_usd.get_or_insert(0.0) += cost;
                }
                *self.result.num_turns.get_or_insert(0) += 1;
            }
            Some("error") => {
                let error = &value["error"];
                let message = match text_of(&error["data"]["message"]) {
                    message if message.is_empty() => text_of(&error["name"]),
                    message => message,
                };
                self.error = Some(message);
            }
            _ => {}
        }
        events
    }
}

fn content(value: &Value) -> impl Iterator<Item = &Value> {
    value["message"]["content"].as_array().into_iter().flatten()
}

fn string(value: &Value) -> Option<String> {
    value.as_str().map(str::to_string)
}

/// A string, or the text blocks of a content array, or the JSON of anything else.
fn text_of(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|block| block["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(format: OutputFormat, output: &str, exit_code: i32) -> (Vec<RunEvent>, RunResult) {
        let mut parser = Parser::new(format);
        let events = output.lines().flat_map(|line| parser.line(line)).collect();
        (events, parser.finish(exit_code, "boom\nlast words", 1234))
    }

    /// Claude Code 2.1.331 `-p --output-format stream-json --verbose`, answering the scripted
    /// model server of the integration tests (captured from the real CLI in a session).
    #[test]
    fn claude_stream_json_from_the_real_cli() {
        let output = include_str!("testdata/claude-code-2.1.331-text.ndjson");
        let (events, result) = parse(OutputFormat::ClaudeStreamJson, output, 0);
        assert_eq!(
            events,
            vec![RunEvent::Text {
                text: "Raw.".into()
            }]
        );
        assert_eq!(result.result, "Raw.");
        assert!(!result.is_error);
        assert_eq!(
            result.agent_session_id.as_deref(),
            Some("1de9c877-e406-4a95-8b22-1a0058bb60ae")
        );
        assert_eq!(result.num_turns, Some(1));
        assert_eq!(
            result.usage,
            Usage {
                input_tokens: Some(100),
                output_tokens: Some(20),
                cache_read_input_tokens: Some(5),
                cache_creation_input_tokens: Some(0),
            }
        );
        assert_eq!(result.total_cost_usd, Some(0.0008010000000000001));
        assert_ne!(result.duration_ms, 1234, "the tool's own duration");
        assert_eq!(result.exit_code, Some(0));
    }

    #[test]
    fn claude_tool_calls_become_tool_events() {
        let output = concat!(
            r#"{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t1","name":"Write","input":{"file_path":"/x"}}]},"session_id":"s"}"#,
            "\n",
            r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","is_error":true,"content":"No such tool available: Write"}]},"session_id":"s"}"#,
        );
        let (events, result) = parse(OutputFormat::ClaudeStreamJson, output, 1);
        assert_eq!(
            events[1],
            RunEvent::ToolResult {
                id: Some("t1".into()),
                output: "No such tool available: Write".into(),
                is_error: true,
            }
        );
        assert!(matches!(&events[0], RunEvent::ToolUse { name, .. } if name == "Write"));
        // No result line and a failing exit: the error is the tool's stderr.
        assert!(result.is_error);
        assert_eq!(result.result, "boom\nlast words");
        assert_eq!(result.duration_ms, 1234);
    }

    #[test]
    fn codex_sums_turns_and_reports_no_cost() {
        let output = concat!(
            r#"{"type":"thread.started","thread_id":"th-1"}"#,
            "\nnot json\n",
            // Seen from the real codex 0.169 while it retried a connection.
            r#"{"type":"error","message":"Reconnecting... 2/5 (stream disconnected before completion: WebSocket protocol error: HTTP version must be 1.1 or higher)"}"#,
            "\n",
            r#"{"type":"item.completed","item":{"id":"i1","type":"command_execution","command":"ls","aggregated_output":"a\n","exit_code":0,"status":"completed"}}"#,
            "\n",
            r#"{"type":"item.completed","item":{"id":"i2","type":"agent_message","text":"Done."}}"#,
            "\n",
            r#"{"type":"turn.completed","usage":{"input_tokens":100,"cached_input_tokens":5,"output_tokens":20}}"#,
        );
        let (events, result) = parse(OutputFormat::CodexJson, output, 0);
        assert_eq!(events.len(), 3);
        assert_eq!(result.result, "Done.");
        assert_eq!(result.agent_session_id.as_deref(), Some("th-1"));
        assert_eq!(result.usage.input_tokens, Some(100));
        assert_eq!(result.usage.cache_read_input_tokens, Some(5));
        assert_eq!(result.total_cost_usd, None);
        assert!(!result.is_error);
    }

    #[test]
    fn codex_turn_failure_is_an_error() {
        let output = concat!(
            r#"{"type":"thread.started","thread_id":"th-1"}"#,
            "\n",
            r#"{"type":"turn.failed","error":{"message":"fixture says no"}}"#,
        );
        let (_, result) = parse(OutputFormat::CodexJson, output, 1);
        assert!(result.is_error);
        assert_eq!(result.result, "fixture says no");
    }

    /// Gemini CLI 0.61.0 `-o stream-json --yolo`, answering a scripted Gemini API (a
    /// `write_file` call, then text; a router request before them), captured from the real CLI.
    #[test]
    fn gemini_stream_json_from_the_real_cli() {
        let output = include_str!("testdata/gemini-0.61.0-write-file.ndjson");
        let (events, result) = parse(OutputFormat::GeminiStreamJson, output, 0);
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(matches!(&events[0], RunEvent::ToolUse { name, input, .. }
            if name == "write_file" && input["file_path"] == "/tmp/greet.txt"));
        assert_eq!(
            events[1],
            RunEvent::ToolResult {
                id: Some("write_file__write_file_1796416383948_0".into()),
                output: String::new(),
                is_error: false,
            }
        );
        assert_eq!(result.result, "I wrote greeting.txt.");
        assert!(!result.is_error);
        assert_eq!(
            result.agent_session_id.as_deref(),
            Some("38368569-724d-4143-a47b-b6a8c615ff7d")
        );
        assert_eq!(result.num_turns, None);
        assert_eq!(
            result.usage,
            Usage {
                input_tokens: Some(300),
                output_tokens: Some(60),
                cache_read_input_tokens: Some(15),
                cache_creation_input_tokens: None,
            }
        );
        assert_eq!(result.total_cost_usd, None);
        assert_eq!(result.duration_ms, 191);
    }

    #[test]
    fn gemini_text_deltas_join_and_a_failed_result_is_an_error() {
        let output = concat!(
            r#"{"type":"init","session_id":"g-1","model":"m"}"#,
            "\n",
            r#"{"type":"message","role":"assistant","content":"Hel","delta":true}"#,
            "\n",
            r#"{"type":"message","role":"assistant","content":"lo.","delta":true}"#,
            "\n",
            r#"{"type":"result","status":"success","stats":{"input_tokens":1,"output_tokens":2}}"#,
        );
        let (events, result) = parse(OutputFormat::GeminiStreamJson, output, 0);
        assert_eq!(events.len(), 2);
        assert_eq!(result.result, "Hello.");
        // Gemini CLI 0.61.0 answered by an API error (HTTP 400); it exited 144.
        let failed = concat!(
            r#"{"type":"init","timestamp":"2026-12-04T20:58:07.790Z","session_id":"2bd94061-ff11-4fbc-b636-8961734c6f06","model":"gemini-fixture"}"#,
            "\n",
            r#"{"type":"result","timestamp":"2026-12-04T20:58:07.858Z","status":"error","error":{"type":"unknown","message":"[API Error: {\"error\":{\"code\":400,\"message\":\"fixture says no\",\"status\":\"INVALID_ARGUMENT\"}}]"},"stats":{"total_tokens":0,"input_tokens":0,"output_tokens":0,"cached":0,"input":0,"duration_ms":0,"tool_calls":0}}"#,
        );
        let (_, result) = parse(OutputFormat::GeminiStreamJson, failed, 144);
        assert!(result.is_error);
        assert!(result.result.contains("fixture says no"), "{result:?}");
        assert_eq!(result.exit_code, Some(144));
    }

    /// opencode 1.18.33 `run --format json` with an OpenAI-compatible provider, answering a
    /// scripted Chat Completions API (a `bash` call, then text), captured from the real CLI.
    #[test]
    fn opencode_json_from_the_real_cli() {
        let output = include_str!("testdata/opencode-1.18.33-write-file.ndjson");
        let (events, result) = parse(OutputFormat::OpencodeJson, output, 0);
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(matches!(&events[0], RunEvent::ToolUse { name, id, .. }
            if name == "bash" && id.as_deref() == Some("call_1")));
        assert_eq!(
            events[1],
            RunEvent::ToolResult {
                id: Some("call_1".into()),
                output: "(no output)".into(),
                is_error: false,
            }
        );
        assert_eq!(result.result, "I wrote greeting.txt.");
        assert!(!result.is_error);
        assert_eq!(
            result.agent_session_id.as_deref(),
            Some("ses_dbd3b4bf7ffeC0TjoeEktVqp9c")
        );
        assert_eq!(result.num_turns, Some(2));
        assert_eq!(
            result.usage,
            Usage {
                input_tokens: Some(190),
                output_tokens: Some(40),
                cache_read_input_tokens: Some(10),
                cache_creation_input_tokens: Some(0),
            }
        );
        assert_eq!(result.total_cost_usd, Some(0.0));
        assert_eq!(result.duration_ms, 1234, "opencode reports no duration");
    }

    /// What opencode 1.18.33 printed when its provider had no such model.
    #[test]
    fn opencode_error_event_fails_the_run() {
        let output = r#"{"type":"error","timestamp":1796416552307,"sessionID":"ses_dbd3af257ffeyifozyzYR4mJTB","error":{"name":"UnknownError","data":{"message":"Unexpected server error. Check server logs for details.","ref":"err_50ea3f84"}}}"#;
        let (_, result) = parse(OutputFormat::OpencodeJson, output, 1);
        assert!(result.is_error);
        assert_eq!(
            result.result,
            "Unexpected server error. Check server logs for details."
        );
        assert_eq!(
            result.agent_session_id.as_deref(),
            Some("ses_dbd3af257ffeyifozyzYR4mJTB")
        );
        // And when the API answered HTTP 400 (through the image's OPENAI_BASE_URL wrapper).
        let output = r#"{"type":"error","timestamp":1796417945260,"sessionID":"ses_dbd25880dffeUuf4P7rmSdYfdD","error":{"name":"APIError","data":{"message":"fixture says no","statusCode":400,"isRetryable":false,"responseHeaders":{"content-length":"84","content-type":"application/json"},"responseBody":"{\"error\": {\"code\": 400, \"message\": \"fixture says no\", \"status\": \"INVALID_ARGUMENT\"}}","metadata":{"url":"http://127.0.0.1:18934/v1/chat/completions"}}}}"#;
        let (_, result) = parse(OutputFormat::OpencodeJson, output, 1);
        assert!(result.is_error);
        assert_eq!(result.result, "fixture says no");
    }

    #[test]
    fn text_output_is_the_result_and_the_exit_code_decides() {
        let (events, result) = parse(OutputFormat::Text, "line one\nline two\n", 0);
        assert!(events.is_empty());
        assert_eq!(result.result, "line one\nline two");
        assert!(!result.is_error);
        let (_, failed) = parse(OutputFormat::Text, "partial\n", 2);
        assert!(failed.is_error);
        assert_eq!(failed.exit_code, Some(2));
    }
}
