//! A scripted model server for agent runs: the Anthropic Messages API (SSE), the OpenAI
//! Responses API (SSE), Chat Completions and the Gemini API (`:generateContent`,
//! `:streamGenerateContent?alt=sse`), on all addresses of the host so sessions reach it
//! through their network's gateway. Agent turns (requests that offer tools) take the script's
//! replies in order; other requests (titles, probes) get a plain text. Every request is
//! recorded; every answer reports [`INPUT_TOKENS`] and [`OUTPUT_TOKENS`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use libtest_mimic::Failed;
use serde_json::{Value, json};

pub const INPUT_TOKENS: u64 = 100;
pub const OUTPUT_TOKENS: u64 = 20;
pub const CACHE_READ_TOKENS: u64 = 5;

/// One scripted answer to an agent turn.
#[derive(Debug, Clone)]
pub enum Reply {
    Text(String),
    /// A tool call writing `content` to `path` (absolute, in the session) with the tool the
    /// client offers for it.
    WriteFile {
        path: String,
        content: String,
    },
    /// A call of the tool `name` with `input`, as the client would expect it; a string input
    /// is a call of a custom (free-form) tool of the Responses API.
    ToolCall {
        name: String,
        input: Value,
    },
    /// A call of the offered tool whose name holds `containing` (each tool names MCP tools its
    /// own way: `mcp__S__T`, `S__T`, `S_T`, ...); a text saying so when none is offered.
    CallOffered {
        containing: String,
        input: Value,
    },
    /// An API error (HTTP 400), the answer to every agent turn from then on.
    Error(String),
    /// Never answers.
    Hang,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

#[derive(Default)]
struct Shared {
    script: Mutex<VecDeque<Reply>>,
    recorded: Mutex<Vec<Recorded>>,
    /// Every request is an agent turn, tools offered or not (aider offers none: it edits
    /// files from the text of the answer).
    every_request_a_turn: std::sync::atomic::AtomicBool,
}

pub struct ModelServer {
    pub port: u16,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ModelServer {
    pub fn start(script: Vec<Reply>) -> Result<Self, Failed> {
        let listener = std::net::TcpListener::bind("0.0.0.0:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            script: Mutex::new(script.into()),
            recorded: Mutex::default(),
            every_request_a_turn: Default::default(),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = Arc::clone(&shared);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the model server");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let app = axum::Router::new().fallback(answer).with_state(state);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Ok(Self {
            port,
            shared,
            stop: Some(stop),
        })
    }

    /// Every request so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.shared
            .recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The recorded agent turns (requests offering tools, or every request after
    /// [`ModelServer::every_request_a_turn`]).
    pub fn turns(&self) -> Vec<Recorded> {
        let every = self.every();
        self.recorded()
            .into_iter()
            .filter(|r| every || offers_tools(&r.body))
            .collect()
    }

    /// Makes every request an agent turn, for a client that offers no tools: a
    /// [`Reply::WriteFile`] is then answered with the file in aider's "whole" edit format.
    pub fn every_request_a_turn(&self) {
        self.shared
            .every_request_a_turn
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn every(&self) -> bool {
        self.shared
            .every_request_a_turn
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn push(&self, reply: Reply) {
        self.shared
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(reply);
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn offers_tools(body: &Value) -> bool {
    !offered_tools(body).is_empty()
}

/// The names of the tools a request offers: its `tools`, and those Codex sends in an
/// `additional_tools` input item, grouped in namespaces.
fn offered_tools(body: &Value) -> Vec<String> {
    fn collect(tools: &Value, names: &mut Vec<String>) {
        for tool in tools.as_array().into_iter().flatten() {
            if tool["type"] == "namespace" {
                collect(&tool["tools"], names);
            } else if let Some(name) = tool["name"].as_str().or(tool["function"]["name"].as_str()) {
                names.push(name.to_string());
            }
        }
    }
    let mut names = Vec::new();
    collect(&body["tools"], &mut names);
    // The Gemini API: `tools: [{ functionDeclarations: [...] }]`.
    for tool in body["tools"].as_array().into_iter().flatten() {
        collect(&tool["functionDeclarations"], &mut names);
    }
    for item in body["input"].as_array().into_iter().flatten() {
        if item["type"] == "additional_tools" {
            collect(&item["tools"], &mut names);
        }
    }
    names
}

#[derive(Clone, Copy, PartialEq)]
enum Api {
    Anthropic,
    Responses,
    Chat,
    Gemini,
}

async fn answer(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let headers = request
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let bytes = axum::body::to_bytes(request.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    shared
        .recorded
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Recorded {
            path: path.clone(),
            headers,
            body: body.clone(),
        });
    if path.ends_with("/count_tokens") {
        return json_response(StatusCode::OK, json!({ "input_tokens": INPUT_TOKENS }));
    }
    if path.ends_with(":countTokens") {
        return json_response(StatusCode::OK, json!({ "totalTokens": INPUT_TOKENS }));
    }
    // `/v1beta/models/{model}:streamGenerateContent` (`?alt=sse`) or `:generateContent`.
    let gemini_stream = path.ends_with(":streamGenerateContent");
    let api = if path.ends_with("/messages") {
        Api::Anthropic
    } else if path.ends_with("/responses") {
        Api::Responses
    } else if path.ends_with("/chat/completions") {
        Api::Chat
    } else if gemini_stream || path.ends_with(":generateContent") {
        Api::Gemini
    } else {
        return json_response(StatusCode::NOT_FOUND, json!({ "error": "not found" }));
    };
    let every = shared
        .every_request_a_turn
        .load(std::sync::atomic::Ordering::SeqCst);
    let reply = if every || offers_tools(&body) {
        let mut script = shared.script.lock().unwrap_or_else(|p| p.into_inner());
        let reply = script
            .pop_front()
            .unwrap_or_else(|| Reply::Text("(the script has no more replies)".into()));
        // A failing API keeps failing: a client that tries again gets the error again.
        if matches!(reply, Reply::Error(_)) {
            script.push_front(reply.clone());
        }
        reply
    } else {
        Reply::Text("Scripted title".into())
    };
    let reply = match reply {
        Reply::Hang => {
            std::future::pending::<()>().await;
            unreachable!("pending never completes")
        }
        Reply::Error(message) if api == Api::Gemini => {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({ "error": { "code": 400, "message": message, "status": "INVALID_ARGUMENT" } }),
            );
        }
        Reply::Error(message) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({ "type": "error", "error": { "type": "invalid_request_error", "message": message, "code": "invalid_request_error" } }),
            );
        }
        Reply::WriteFile { path, content } => write_call(api, &body, &path, &content),
        Reply::CallOffered { containing, input } => {
            match offered_tools(&body)
                .into_iter()
                .find(|name| name.contains(&containing))
            {
                Some(name) => Reply::ToolCall { name, input },
                None => Reply::Text(format!("no offered tool holds {containing}")),
            }
        }
        other => other,
    };
    let stream = body["stream"].as_bool().unwrap_or(false);
    match api {
        Api::Anthropic => anthropic(&reply, stream),
        Api::Responses => responses(&reply),
        Api::Chat => chat(&reply, stream),
        Api::Gemini => gemini(&reply, gemini_stream),
    }
}

/// The file-writing tool the client offers, called the way that tool takes its input.
fn write_call(api: Api, body: &Value, path: &str, content: &str) -> Reply {
    let offered = offered_tools(body);
    let names: Vec<&str> = offered.iter().map(String::as_str).collect();
    let shell = format!("printf '%s' '{content}' > '{path}'");
    if names.is_empty() {
        // No tools: the file in aider's "whole" edit format (its name relative to the
        // workspace, where aider runs).
        let name = path.rsplit('/').next().unwrap_or(path);
        return Reply::Text(format!("I wrote {name}.\n\n{name}\n```\n{content}\n```\n"));
    }
    let (name, input) = if api == Api::Gemini && names.contains(&"write_file") {
        (
            "write_file",
            json!({ "file_path": path, "content": content }),
        )
    } else if api == Api::Gemini {
        ("run_shell_command", json!({ "command": shell }))
    } else if api == Api::Anthropic && names.contains(&"Write") {
        ("Write", json!({ "file_path": path, "content": content }))
    } else if api == Api::Responses && names.contains(&"exec") && names.contains(&"wait") {
        // Codex's `exec` runs JavaScript that calls its other tools.
        let command = Value::String(shell.clone()).to_string();
        (
            "exec",
            Value::String(format!(
                "const out = await tools.exec_command({{cmd: {command}}});\ntext(out);"
            )),
        )
    } else if names.contains(&"exec_command") {
        ("exec_command", json!({ "cmd": shell }))
    } else if api == Api::Chat && names.contains(&"bash") {
        // opencode's shell tool.
        (
            "bash",
            json!({ "command": shell, "description": "Write the file" }),
        )
    } else if names.contains(&"shell_command") {
        ("shell_command", json!({ "command": shell }))
    } else {
        ("shell", json!({ "command": ["bash", "-lc", shell] }))
    };
    Reply::ToolCall {
        name: name.into(),
        input,
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("a response")
}

fn sse(events: Vec<(Option<&str>, Value)>) -> Response {
    let mut text = String::new();
    for (name, data) in events {
        if let Some(name) = name {
            text.push_str(&format!("event: {name}\n"));
        }
        text.push_str(&format!("data: {data}\n\n"));
    }
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(text))
        .expect("a response")
}

fn id() -> String {
    format!("{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

fn anthropic(reply: &Reply, stream: bool) -> Response {
    let usage = json!({
        "input_tokens": INPUT_TOKENS,
        "output_tokens": OUTPUT_TOKENS,
        "cache_read_input_tokens": CACHE_READ_TOKENS,
        "cache_creation_input_tokens": 0,
    });
    let (block, stop_reason) = match reply {
        Reply::ToolCall { name, input } => (
            json!({ "type": "tool_use", "id": format!("toolu_{}", id()), "name": name, "input": input }),
            "tool_use",
        ),
        Reply::Text(text) => (json!({ "type": "text", "text": text }), "end_turn"),
        other => unreachable!("answered before: {other:?}"),
    };
    let message = json!({
        "id": format!("msg_{}", id()), "type": "message", "role": "assistant",
        "model": "fixture-model", "content": [block.clone()], "stop_reason": stop_reason,
        "stop_sequence": null, "usage": usage,
    });
    if !stream {
        return json_response(StatusCode::OK, message);
    }
    let mut start = message.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    let (opened, delta) = if block["type"] == "tool_use" {
        let mut opened = block.clone();
        opened["input"] = json!({});
        (
            opened,
            json!({ "type": "input_json_delta", "partial_json": block["input"].to_string() }),
        )
    } else {
        (
            json!({ "type": "text", "text": "" }),
            json!({ "type": "text_delta", "text": block["text"] }),
        )
    };
    sse(vec![
        (
            Some("message_start"),
            json!({ "type": "message_start", "message": start }),
        ),
        (
            Some("content_block_start"),
            json!({ "type": "content_block_start", "index": 0, "content_block": opened }),
        ),
        (
            Some("content_block_delta"),
            json!({ "type": "content_block_delta", "index": 0, "delta": delta }),
        ),
        (
            Some("content_block_stop"),
            json!({ "type": "content_block_stop", "index": 0 }),
        ),
        (
            Some("message_delta"),
            json!({ "type": "message_delta", "delta": { "stop_reason": stop_reason, "stop_sequence": null }, "usage": usage }),
        ),
        (Some("message_stop"), json!({ "type": "message_stop" })),
    ])
}

fn responses(reply: &Reply) -> Response {
    let response_id = format!("resp_{}", id());
    let item = match reply {
        Reply::ToolCall {
            name,
            input: Value::String(source),
        } => json!({
            "type": "custom_tool_call", "id": format!("ctc_{}", id()), "call_id": format!("call_{}", id()),
            "name": name, "input": source, "status": "completed",
        }),
        Reply::ToolCall { name, input } => json!({
            "type": "function_call", "id": format!("fc_{}", id()), "call_id": format!("call_{}", id()),
            "name": name, "arguments": input.to_string(), "status": "completed",
        }),
        Reply::Text(text) => json!({
            "type": "message", "id": format!("msg_{}", id()), "role": "assistant", "status": "completed",
            "content": [{ "type": "output_text", "text": text, "annotations": [] }],
        }),
        other => unreachable!("answered before: {other:?}"),
    };
    let mut events = vec![(
        Some("response.created"),
        json!({ "type": "response.created", "response": { "id": response_id, "status": "in_progress" } }),
    )];
    if let Reply::Text(text) = reply {
        events.push((
            Some("response.output_text.delta"),
            json!({ "type": "response.output_text.delta", "item_id": item["id"], "output_index": 0, "content_index": 0, "delta": text }),
        ));
    }
    events.push((
        Some("response.output_item.done"),
        json!({ "type": "response.output_item.done", "output_index": 0, "item": item }),
    ));
    events.push((
        Some("response.completed"),
        json!({ "type": "response.completed", "response": {
            "id": response_id, "status": "completed", "output": [item],
            "usage": {
                "input_tokens": INPUT_TOKENS, "input_tokens_details": { "cached_tokens": CACHE_READ_TOKENS },
                "output_tokens": OUTPUT_TOKENS, "output_tokens_details": { "reasoning_tokens": 0 },
                "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
            },
        } }),
    ));
    sse(events)
}

fn chat(reply: &Reply, stream: bool) -> Response {
    let usage = json!({
        "prompt_tokens": INPUT_TOKENS, "completion_tokens": OUTPUT_TOKENS,
        "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
        "prompt_tokens_details": { "cached_tokens": CACHE_READ_TOKENS },
    });
    let (message, finish) = match reply {
        Reply::ToolCall { name, input } => (
            json!({ "role": "assistant", "content": null, "tool_calls": [{
                "index": 0, "id": format!("call_{}", id()), "type": "function",
                "function": { "name": name, "arguments": input.to_string() },
            }] }),
            "tool_calls",
        ),
        Reply::Text(text) => (json!({ "role": "assistant", "content": text }), "stop"),
        other => unreachable!("answered before: {other:?}"),
    };
    let completion_id = format!("chatcmpl-{}", id());
    if !stream {
        return json_response(
            StatusCode::OK,
            json!({ "id": completion_id, "object": "chat.completion", "created": 0, "model": "fixture-model",
                    "choices": [{ "index": 0, "message": message, "finish_reason": finish }], "usage": usage }),
        );
    }
    let chunk = |delta: Value, finish: Value, usage: Value| {
        json!({ "id": completion_id, "object": "chat.completion.chunk", "created": 0, "model": "fixture-model",
                "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }], "usage": usage })
    };
    let mut text = String::new();
    for data in [
        chunk(message, Value::Null, Value::Null),
        chunk(json!({}), json!(finish), usage),
    ] {
        text.push_str(&format!("data: {data}\n\n"));
    }
    text.push_str("data: [DONE]\n\n");
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(text))
        .expect("a response")
}

fn gemini(reply: &Reply, stream: bool) -> Response {
    let part = match reply {
        Reply::ToolCall { name, input } => {
            json!({ "functionCall": { "name": name, "args": input } })
        }
        Reply::Text(text) => json!({ "text": text }),
        other => unreachable!("answered before: {other:?}"),
    };
    let response = json!({
        "candidates": [{
            "content": { "role": "model", "parts": [part] },
            "finishReason": "STOP", "index": 0,
        }],
        "usageMetadata": {
            "promptTokenCount": INPUT_TOKENS, "candidatesTokenCount": OUTPUT_TOKENS,
            "cachedContentTokenCount": CACHE_READ_TOKENS,
            "totalTokenCount": INPUT_TOKENS + OUTPUT_TOKENS,
        },
        "modelVersion": "fixture-model",
        "responseId": id(),
    });
    if stream {
        sse(vec![(None, response)])
    } else {
        json_response(StatusCode::OK, response)
    }
}
