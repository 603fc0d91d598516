//! A request and an image's `[headless]` section make the tool's argv; an option the tool lacks
//! is refused, naming the tool.

use crate::images::metadata::{Headless, ImageMetadata};

use super::RunRequest;

/// Where the prompt file's path goes in an argv template.
pub const PROMPT_FILE: &str = "{prompt_file}";

/// Why a request cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("image `{0}` has no [headless] section, so `cubbi run` cannot drive it")]
    NotHeadless(String),
    #[error("{tool} has no {option}")]
    Unsupported { tool: String, option: &'static str },
    #[error("{0} must not be empty")]
    EmptyValue(&'static str),
}

/// The image's headless mode, or why there is none.
pub fn headless(metadata: &ImageMetadata) -> Result<&Headless, RequestError> {
    metadata
        .headless
        .as_ref()
        .ok_or_else(|| RequestError::NotHeadless(metadata.name.clone()))
}

/// Checks `request` against what the tool can do, without running anything.
pub fn check(metadata: &ImageMetadata, request: &RunRequest) -> Result<(), RequestError> {
    build(metadata, request, "/dev/null").map(|_| ())
}

/// The tool's argv for `request`, with `prompt_file` where the template asks for the prompt.
pub fn build(
    metadata: &ImageMetadata,
    request: &RunRequest,
    prompt_file: &str,
) -> Result<Vec<String>, RequestError> {
    let headless = headless(metadata)?;
    if request.prompt.trim().is_empty() {
        return Err(RequestError::EmptyPrompt);
    }
    let tool = metadata.name.as_str();
    let option = |template: &Option<Vec<String>>, name: &'static str, value: &str| {
        if value.is_empty() {
            return Err(RequestError::EmptyValue(name));
        }
        let template = template.as_ref().ok_or(RequestError::Unsupported {
            tool: tool.to_string(),
            option: name,
        })?;
        Ok(fill(template, value))
    };
    let mut argv = headless.command.clone();
    for allowed in &request.allowed_tools {
        argv.extend(option(&headless.allowed_tool, "--allowed-tools", allowed)?);
    }
    for disallowed in &request.disallowed_tools {
        argv.extend(option(
            &headless.disallowed_tool,
            "--disallowed-tools",
            disallowed,
        )?);
    }
    if let Some(text) = &request.append_system_prompt {
        argv.extend(option(
            &headless.append_system_prompt,
            "--append-system-prompt",
            text,
        )?);
    }
    if let Some(turns) = request.max_turns {
        argv.extend(option(
            &headless.max_turns,
            "--max-turns",
            &turns.to_string(),
        )?);
    }
    if let Some(model) = &request.model {
        argv.extend(option(&headless.model, "--model", model)?);
    }
    if let Some(id) = &request.resume {
        argv.extend(option(&headless.resume, "--resume", id)?);
    }
    argv.extend(
        headless
            .prompt
            .iter()
            .map(|word| word.replace(PROMPT_FILE, prompt_file)),
    );
    Ok(argv)
}

fn fill(template: &[String], value: &str) -> Vec<String> {
    template
        .iter()
        .map(|word| word.replace("{value}", value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::Catalog;

    fn image(name: &str) -> ImageMetadata {
        Catalog::embedded()
            .unwrap()
            .get(name)
            .unwrap()
            .metadata
            .clone()
    }

    fn request(prompt: &str) -> RunRequest {
        RunRequest {
            prompt: prompt.into(),
            ..Default::default()
        }
    }

    #[test]
    fn claude_gets_every_option_and_never_the_prompt() {
        let argv = build(
            &image("claude-code"),
            &RunRequest {
                prompt: "secret plan".into(),
                resume: Some("abc".into()),
                allowed_tools: vec!["Read".into(), "Bash(git:*)".into()],
                disallowed_tools: vec!["Write".into()],
                append_system_prompt: Some("be brief".into()),
                max_turns: Some(3),
                model: Some("m1".into()),
                timeout: None,
            },
            "/tmp/p",
        )
        .unwrap();
        let line = argv.join(" ");
        assert!(line.starts_with("claude -p --output-format stream-json --verbose"));
        for expected in [
            "--allowedTools Read --allowedTools Bash(git:*)",
            "--disallowedTools Write",
            "--append-system-prompt be brief",
            "--max-turns 3",
            "--model m1",
            "--resume abc",
        ] {
            assert!(line.contains(expected), "{expected} not in {line}");
        }
        assert!(!line.contains("secret plan"), "{line}");
    }

    #[test]
    fn codex_resumes_with_its_subcommand_and_refuses_what_it_lacks() {
        let codex = image("codex");
        let argv = build(
            &codex,
            &RunRequest {
                resume: Some("t-1".into()),
                model: Some("m".into()),
                ..request("hi")
            },
            "/tmp/p",
        )
        .unwrap();
        let line = argv.join(" ");
        assert!(line.starts_with("codex exec"), "{line}");
        assert!(line.ends_with("--model m resume t-1 -"), "{line}");
        for (refused, option) in [
            (
                RunRequest {
                    max_turns: Some(2),
                    ..request("hi")
                },
                "--max-turns",
            ),
            (
                RunRequest {
                    allowed_tools: vec!["x".into()],
                    ..request("hi")
                },
                "--allowed-tools",
            ),
        ] {
            let err = check(&codex, &refused).unwrap_err().to_string();
            assert_eq!(err, format!("codex has no {option}"));
        }
    }

    #[test]
    fn gemini_opencode_and_aider_take_what_they_have() {
        let gemini = build(
            &image("gemini"),
            &RunRequest {
                resume: Some("g-1".into()),
                model: Some("m".into()),
                ..request("secret plan")
            },
            "/tmp/p",
        )
        .unwrap()
        .join(" ");
        assert_eq!(
            gemini,
            "gemini -o stream-json --yolo --skip-trust -m m -r g-1"
        );
        let opencode = build(
            &image("opencode"),
            &RunRequest {
                resume: Some("ses_1".into()),
                model: Some("cubbi/m".into()),
                ..request("secret plan")
            },
            "/tmp/p",
        )
        .unwrap()
        .join(" ");
        assert_eq!(opencode, "opencode run --format json -m cubbi/m -s ses_1");
        let aider = image("aider");
        let line = build(&aider, &request("secret plan"), "/tmp/p")
            .unwrap()
            .join(" ");
        assert!(line.starts_with("aider --yes-always"), "{line}");
        assert!(line.ends_with("--message-file /tmp/p"), "{line}");
        assert!(!line.contains("secret plan"), "{line}");
        let err = check(
            &aider,
            &RunRequest {
                resume: Some("x".into()),
                ..request("hi")
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "aider has no --resume");
        for name in ["gemini", "opencode", "aider"] {
            let err = check(
                &image(name),
                &RunRequest {
                    max_turns: Some(2),
                    ..request("hi")
                },
            )
            .unwrap_err();
            assert_eq!(err.to_string(), format!("{name} has no --max-turns"));
        }
    }

    #[test]
    fn empty_prompts_and_images_without_headless_are_refused() {
        assert_eq!(
            check(&image("claude-code"), &request("  \n")),
            Err(RequestError::EmptyPrompt)
        );
        assert_eq!(
            check(&image("base"), &request("hi")),
            Err(RequestError::NotHeadless("base".into()))
        );
        let err = check(
            &image("claude-code"),
            &RunRequest {
                model: Some(String::new()),
                ..request("hi")
            },
        )
        .unwrap_err();
        assert_eq!(err, RequestError::EmptyValue("--model"));
    }
}
