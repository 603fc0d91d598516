//! `cubbi-image.toml`: what an image is, the command a session runs, the environment it
//! declares and the configs it keeps on the data volume.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ImageError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageMetadata {
    pub name: String,
    pub description: String,
    /// Version of the image definition (not of the tool).
    pub version: String,
    /// What a session runs to start the tool.
    pub command: Vec<String>,
    /// Prints the tool's version; used to check a built image.
    pub version_command: Vec<String>,
    /// The tool release the image installs (the `TOOL_VERSION` build argument), so a build
    /// is repeatable and `image list` can say what is inside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_version: Option<String>,
    #[serde(default)]
    pub environment: Vec<EnvironmentDeclaration>,
    #[serde(default)]
    pub persistent_configs: Vec<PersistentConfig>,
    /// How to run one prompt non-interactively (`cubbi run`); absent when the tool cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headless: Option<Headless>,
    /// The names the tool needs when a session's egress is an allow-list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<ImageEgress>,
}

/// `[egress]`: the domains the tool reaches (its model API, its package registry), added to
/// an allow-list unless the create says not to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEgress {
    #[serde(default)]
    pub domains: Vec<crate::egress::DomainRule>,
}

/// The tool's own headless mode. Every option is an argv template where `{value}` stands for
/// the value; an absent option is one the tool lacks, and asking for it is refused.
/// The argv is `command`, then the options, then `resume`, then `prompt`; the prompt itself is
/// written to a file the tool reads on stdin (or where `{prompt_file}` stands), never argv.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Headless {
    pub command: Vec<String>,
    /// Continues the tool's own conversation `{value}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Vec<String>>,
    /// Repeated once per allowed tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_tool: Option<Vec<String>>,
    /// Repeated once per disallowed tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disallowed_tool: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_system_prompt: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<Vec<String>>,
    /// Last words of the argv (`-` for "prompt on stdin", or `{prompt_file}`).
    #[serde(default)]
    pub prompt: Vec<String>,
    /// Which parser reads what the tool prints.
    pub output: OutputFormat,
}

/// What a tool prints in its headless mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    /// Claude Code's `--output-format stream-json`.
    ClaudeStreamJson,
    /// `codex exec --json`.
    CodexJson,
    /// Gemini CLI's `-o stream-json`.
    GeminiStreamJson,
    /// `opencode run --format json`.
    OpencodeJson,
    /// Plain text: the result is what the tool printed, success its exit code.
    Text,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentDeclaration {
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub sensitive: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// A path in the container kept on the per-user data volume, so it survives the session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistentConfig {
    pub source: String,
    pub target: String,
    #[serde(rename = "type")]
    pub kind: PersistentKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PersistentKind {
    File,
    Directory,
}

/// A release number as package managers write them; it lands in a Dockerfile `RUN` line, so
/// nothing a shell would interpret gets through.
fn is_tool_version(version: &str) -> bool {
    !version.is_empty()
        && version.len() <= 64
        && version.starts_with(|c: char| c.is_ascii_alphanumeric())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-+".contains(c))
}

/// Where persistent configs live in the container.
pub const DATA_VOLUME_PATH: &str = "/mnt/agent-data";
/// Where a project session's persistent config volume (one per owner and project) is mounted;
/// its persistent configs live under `CONFIG_VOLUME_PATH/<image name>/` instead of
/// [`DATA_VOLUME_PATH`].
pub const CONFIG_VOLUME_PATH: &str = "/cubbi-config";

impl ImageMetadata {
    /// Parses and checks a `cubbi-image.toml`; `origin` names the file in messages.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ImageError> {
        let invalid = |message: String| ImageError::InvalidMetadata {
            file: origin.to_path_buf(),
            message,
        };
        let metadata: Self = toml::from_str(text).map_err(|err| invalid(err.to_string()))?;
        if !is_image_name(&metadata.name) {
            return Err(invalid(format!(
                "name `{}` must be lowercase letters, digits and `-`",
                metadata.name
            )));
        }
        if metadata.command.is_empty() || metadata.version_command.is_empty() {
            return Err(invalid(
                "command and version_command must not be empty".into(),
            ));
        }
        if let Some(version) = &metadata.tool_version
            && !is_tool_version(version)
        {
            return Err(invalid(format!(
                "tool_version `{version}` must be a release number: letters, digits, `.`, `-`, `+`"
            )));
        }
        for declaration in &metadata.environment {
            if !crate::config::env::is_env_name(&declaration.name) {
                return Err(invalid(format!(
                    "environment name `{}` is not a valid variable name",
                    declaration.name
                )));
            }
        }
        if let Some(headless) = &metadata.headless {
            headless.check().map_err(invalid)?;
        }
        for config in &metadata.persistent_configs {
            if !config.source.starts_with('/') {
                return Err(invalid(format!(
                    "source `{}` must be absolute",
                    config.source
                )));
            }
            let under_volume = config
                .target
                .strip_prefix(DATA_VOLUME_PATH)
                .is_some_and(|rest| rest.starts_with('/') && !rest.contains(".."));
            if !under_volume {
                return Err(invalid(format!(
                    "target `{}` must be under {DATA_VOLUME_PATH}/",
                    config.target
                )));
            }
        }
        Ok(metadata)
    }

    /// The Docker tag a built image gets: `cubbi-<name>`.
    pub fn default_tag(&self) -> String {
        tag_for(&self.name)
    }
}

impl Headless {
    /// Each option template takes its value exactly once; the command is not empty.
    fn check(&self) -> Result<(), String> {
        if self.command.is_empty() {
            return Err("headless.command must not be empty".into());
        }
        let options = [
            ("resume", &self.resume),
            ("allowed_tool", &self.allowed_tool),
            ("disallowed_tool", &self.disallowed_tool),
            ("append_system_prompt", &self.append_system_prompt),
            ("max_turns", &self.max_turns),
            ("model", &self.model),
        ];
        for (name, template) in options {
            if let Some(template) = template {
                let uses = template
                    .iter()
                    .filter(|word| word.contains("{value}"))
                    .count();
                if uses != 1 {
                    return Err(format!(
                        "headless.{name} must hold `{{value}}` exactly once, in one word"
                    ));
                }
            }
        }
        Ok(())
    }
}

pub fn tag_for(name: &str) -> String {
    format!("cubbi-{name}")
}

pub fn is_image_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "claude-code"
description = "Claude Code"
version = "1"
command = ["claude"]
version_command = ["claude", "--version"]

[[environment]]
name = "ANTHROPIC_API_KEY"
description = "Anthropic API key"
sensitive = true

[[persistent_configs]]
source = "/home/agent/.claude"
target = "/mnt/agent-data/claude-code/.claude"
type = "directory"
"#;

    fn parse(text: &str) -> Result<ImageMetadata, ImageError> {
        ImageMetadata::parse(text, Path::new("images/x/cubbi-image.toml"))
    }

    #[test]
    fn parses_a_full_file() {
        let metadata = parse(GOOD).unwrap();
        assert_eq!(metadata.default_tag(), "cubbi-claude-code");
        assert!(metadata.environment[0].sensitive);
        assert!(!metadata.environment[0].required);
        assert_eq!(
            metadata.persistent_configs[0].kind,
            PersistentKind::Directory
        );
    }

    #[test]
    fn tool_versions_are_release_numbers_only() {
        let pinned = GOOD.replace(
            "version = \"1\"\n",
            "version = \"1\"\ntool_version = \"2.1.0-beta.1+b2\"\n",
        );
        assert_eq!(
            parse(&pinned).unwrap().tool_version.as_deref(),
            Some("2.1.0-beta.1+b2")
        );
        for bad in ["1.0; curl x | sh", "$(id)", "", "-rf", "1 2"] {
            let text = GOOD.replace(
                "version = \"1\"\n",
                &format!("version = \"1\"\ntool_version = \"{bad}\"\n"),
            );
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("tool_version"), "{bad}: {err}");
        }
    }

    /// Every tool image pins the release it installs; the Dockerfile takes it.
    #[test]
    fn every_tool_image_pins_its_release() {
        let catalog = crate::images::Catalog::embedded().unwrap();
        for image in catalog.all() {
            if image.metadata.name == "base" {
                assert_eq!(image.metadata.tool_version, None);
                continue;
            }
            assert!(
                image.metadata.tool_version.is_some(),
                "{} has no tool_version",
                image.metadata.name
            );
        }
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let text = GOOD.replace("sensitive = true", "sensitive = true\nsecret = 1");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("images/x/cubbi-image.toml"), "{err}");
        assert!(err.contains("line 12"), "{err}");
        assert!(err.contains("secret"), "{err}");
    }

    #[test]
    fn headless_templates_take_their_value_once() {
        let good = format!(
            "{GOOD}\n[headless]\ncommand = [\"claude\", \"-p\"]\nmodel = [\"--model\", \"{{value}}\"]\noutput = \"claude-stream-json\"\n"
        );
        let headless = parse(&good).unwrap().headless.unwrap();
        assert_eq!(headless.model.unwrap(), ["--model", "{value}"]);
        assert_eq!(headless.resume, None);
        let missing = good.replace("\"{value}\"", "\"x\"");
        let err = parse(&missing).unwrap_err().to_string();
        assert!(err.contains("headless.model"), "{err}");
        let unknown = good.replace("claude-stream-json", "xml");
        assert!(parse(&unknown).is_err());
        let empty = good.replace("[\"claude\", \"-p\"]", "[]");
        assert!(
            parse(&empty)
                .unwrap_err()
                .to_string()
                .contains("headless.command")
        );
    }

    #[test]
    fn missing_field_is_named() {
        let text = GOOD.replace("version = \"1\"\n", "");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("missing field `version`"), "{err}");
    }

    #[test]
    fn refuses_bad_names_and_paths() {
        assert!(parse(&GOOD.replace("\"claude-code\"", "\"Claude Code\"")).is_err());
        assert!(parse(&GOOD.replace("[\"claude\"]", "[]")).is_err());
        assert!(parse(&GOOD.replace("/mnt/agent-data/claude-code", "/etc")).is_err());
        assert!(
            parse(&GOOD.replace("/mnt/agent-data/claude-code", "/mnt/agent-data/../x")).is_err()
        );
        assert!(parse(&GOOD.replace("\"ANTHROPIC_API_KEY\"", "\"BAD NAME\"")).is_err());
        assert!(parse(&GOOD.replace("\"directory\"", "\"socket\"")).is_err());
    }
}
