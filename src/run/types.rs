//! What a run takes and gives: the request, the one normalised result every tool's output
//! becomes, and the events of `--stream` (one NDJSON shape for every tool).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One prompt for a tool's headless mode, and the options the tool may or may not have.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub prompt: String,
    /// The tool's own conversation id (`agent_session_id` of an earlier result).
    #[serde(default)]
    pub resume: Option<String>,
    #[serde(default)]
    pub allowed_tools: Vec<String>,
    #[serde(default)]
    pub disallowed_tools: Vec<String>,
    #[serde(default)]
    pub append_system_prompt: Option<String>,
    #[serde(default)]
    pub max_turns: Option<u32>,
    #[serde(default)]
    pub model: Option<String>,
    /// Stop the agent after this long; the result is then an error.
    #[serde(default, with = "seconds")]
    pub timeout: Option<Duration>,
}

mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => s.serialize_some(&duration.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let seconds = Option::<f64>::deserialize(d)?;
        seconds
            .map(|s| {
                Duration::try_from_secs_f64(s).map_err(|_| {
                    serde::de::Error::custom("timeout must be a non-negative number of seconds")
                })
            })
            .transpose()
    }
}

/// Tokens as the tool counted them; `None` where it does not say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
    pub cache_creation_input_tokens: Option<u64>,
}

impl Usage {
    /// Adds `other` in; a count either side knows stays known.
    pub fn add(&mut self, other: &Usage) {
        fn sum(a: &mut Option<u64>, b: Option<u64>) {
            if let Some(b) = b {
                *a = Some(a.unwrap_or(0) + b);
            }
        }
        sum(&mut self.input_tokens, other.input_tokens);
        sum(&mut self.output_tokens, other.output_tokens);
        sum(
            &mut self.cache_read_input_tokens,
            other.cache_read_input_tokens,
        );
        sum(
            &mut self.cache_creation_input_tokens,
            other.cache_creation_input_tokens,
        );
    }
}

/// The one result of a run, whatever the tool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunResult {
    /// The agent's final answer (or, on error, what went wrong).
    pub result: String,
    pub is_error: bool,
    /// The tool's conversation id, for `--resume`; `None` when the tool has none.
    pub agent_session_id: Option<String>,
    pub num_turns: Option<u64>,
    pub duration_ms: u64,
    pub usage: Usage,
    /// `None` when the tool does not report a cost.
    pub total_cost_usd: Option<f64>,
    /// The tool's exit code; `None` when it was stopped (timeout, Ctrl-C).
    pub exit_code: Option<i32>,
    /// The cubbi session the run used; `None` once it was closed.
    pub session: Option<String>,
}

/// One event of a run's stream, printed as one NDJSON line by `cubbi run --stream`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunEvent {
    /// Text the agent wrote.
    Text { text: String },
    /// The agent called a tool.
    ToolUse {
        id: Option<String>,
        name: String,
        input: serde_json::Value,
    },
    /// What a tool call gave back.
    ToolResult {
        id: Option<String>,
        output: String,
        is_error: bool,
    },
    /// The end: the normalised result.
    Result(#[schema(inline)] RunResult),
}
