//! `${VAR}` references in config values, and the mapping from service keys to session env.

use std::collections::BTreeMap;

use super::{Config, ConfigError};

/// Expands `${VAR}` references from the process environment. `$$` stands for a literal `$`.
/// Values are kept unresolved in the file and resolved only here, when they are used.
pub fn expand(value: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| ConfigError::BadReference {
                value: value.to_string(),
                reason: "`${` has no closing `}`".into(),
            })?;
            let name = &body[..end];
            if !is_env_name(name) {
                return Err(ConfigError::BadReference {
                    value: value.to_string(),
                    reason: format!("`{name}` is not a valid environment variable name"),
                });
            }
            let resolved = lookup(name).ok_or_else(|| ConfigError::UnsetVariable {
                name: name.to_string(),
            })?;
            out.push_str(&resolved);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// [`expand`] against the real process environment.
pub fn expand_from_process(value: &str) -> Result<String, ConfigError> {
    expand(value, |name| std::env::var(name).ok())
}

/// POSIX-portable environment variable names: a letter or `_`, then letters, digits or `_`.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The environment a session gets from `[services]`, resolved, before `-e` overrides.
pub fn service_env(
    config: &Config,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let services = &config.services;
    let pairs: [(&[&str], &Option<String>); 7] = [
        (&["OPENAI_API_KEY"], &services.openai.api_key),
        (&["ANTHROPIC_API_KEY"], &services.anthropic.api_key),
        (&["OPENROUTER_API_KEY"], &services.openrouter.api_key),
        (
            &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
            &services.google.api_key,
        ),
        (&["LANGFUSE_URL"], &services.langfuse.url),
        (
            &["LANGFUSE_INIT_PROJECT_PUBLIC_KEY"],
            &services.langfuse.public_key,
        ),
        (
            &["LANGFUSE_INIT_PROJECT_SECRET_KEY"],
            &services.langfuse.secret_key,
        ),
    ];
    let mut env = BTreeMap::new();
    for (names, value) in pairs {
        if let Some(raw) = value {
            let resolved = expand(raw, &lookup)?;
            for name in names {
                env.insert((*name).to_string(), resolved.clone());
            }
        }
    }
    Ok(env)
}

/// Precedence: values given on the command line (`-e`) win over the config file, which wins
/// over built-in defaults (the image's declared defaults, passed as `defaults`).
pub fn merge_session_env(
    defaults: BTreeMap<String, String>,
    from_config: BTreeMap<String, String>,
    from_command_line: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = defaults;
    env.extend(from_config);
    env.extend(from_command_line);
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/me".into()),
            "KEY" => Some("sk-123".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_references_and_keeps_plain_text() {
        assert_eq!(expand("${HOME}/x", lookup).unwrap(), "/home/me/x");
        assert_eq!(expand("a${KEY}b${KEY}", lookup).unwrap(), "ask-123bsk-123");
        assert_eq!(expand("no refs", lookup).unwrap(), "no refs");
        assert_eq!(expand("cost $5 and $$", lookup).unwrap(), "cost $5 and $");
    }

    #[test]
    fn refuses_unset_and_malformed_references() {
        let err = expand("${MISSING}", lookup).unwrap_err();
        assert!(err.to_string().contains("MISSING"), "{err}");
        assert!(expand("${KEY", lookup).is_err());
        assert!(expand("${1BAD}", lookup).is_err());
    }

    #[test]
    fn env_names() {
        assert!(is_env_name("OPENAI_API_KEY"));
        assert!(is_env_name("_x1"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("BAD NAME"));
        assert!(!is_env_name(""));
    }

    #[test]
    fn service_keys_map_to_session_env() {
        let mut config = Config::default();
        config.services.google.api_key = Some("${KEY}".into());
        config.services.openai.api_key = Some("sk-o".into());
        config.services.langfuse.secret_key = Some("ls".into());
        let env = service_env(&config, lookup).unwrap();
        assert_eq!(env["GEMINI_API_KEY"], "sk-123");
        assert_eq!(env["GOOGLE_API_KEY"], "sk-123");
        assert_eq!(env["OPENAI_API_KEY"], "sk-o");
        assert_eq!(env["LANGFUSE_INIT_PROJECT_SECRET_KEY"], "ls");
        assert!(!env.contains_key("ANTHROPIC_API_KEY"));
    }

    #[test]
    fn command_line_wins_over_config_over_defaults() {
        let pair = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        let merged = merge_session_env(
            pair("A", "default"),
            BTreeMap::from([("A".into(), "config".into()), ("B".into(), "config".into())]),
            pair("B", "cli"),
        );
        assert_eq!(merged["A"], "config");
        assert_eq!(merged["B"], "cli");
    }
}
