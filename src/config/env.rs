//! `${VAR}` references in config values, and the mapping from service keys to session env.

use std::collections::BTreeMap;

use super::{Config, ConfigError};

/// Expands `${VAR}` references in the value of config key `key`. `$$` stands for a literal
/// `$`. Values are kept unresolved in the file and resolved only here, when they are used.
/// Errors name the key, never the value (it may be a secret).
pub fn expand(
    key: &str,
    value: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
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
                key: key.to_string(),
                reason: "`${` has no closing `}`".into(),
            })?;
            let name = &body[..end];
            if !is_env_name(name) {
                return Err(ConfigError::BadReference {
                    key: key.to_string(),
                    reason: "the name between `${` and `}` is not a valid environment variable \
                             name (letters, digits and `_`, not starting with a digit); write \
                             `$$` for a literal `$`"
                        .into(),
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

pub use super::env_file::is_env_name;

/// The environment a session gets from `[services]`, resolved, before `-e` overrides.
pub fn service_env(
    config: &Config,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let services = &config.services;
    let pairs: [(&str, &[&str], &Option<String>); 7] = [
        (
            "services.openai.api_key",
            &["OPENAI_API_KEY"],
            &services.openai.api_key,
        ),
        (
            "services.anthropic.api_key",
            &["ANTHROPIC_API_KEY"],
            &services.anthropic.api_key,
        ),
        (
            "services.openrouter.api_key",
            &["OPENROUTER_API_KEY"],
            &services.openrouter.api_key,
        ),
        (
            "services.google.api_key",
            &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
            &services.google.api_key,
        ),
        (
            "services.langfuse.url",
            &["LANGFUSE_URL"],
            &services.langfuse.url,
        ),
        (
            "services.langfuse.public_key",
            &["LANGFUSE_INIT_PROJECT_PUBLIC_KEY"],
            &services.langfuse.public_key,
        ),
        (
            "services.langfuse.secret_key",
            &["LANGFUSE_INIT_PROJECT_SECRET_KEY"],
            &services.langfuse.secret_key,
        ),
    ];
    let mut env = BTreeMap::new();
    for (key, names, value) in pairs {
        if let Some(raw) = value {
            let resolved = expand(key, raw, &lookup)?;
            for name in names {
                env.insert((*name).to_string(), resolved.clone());
            }
        }
    }
    Ok(env)
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
        let expand = |value| expand("k", value, lookup);
        assert_eq!(expand("${HOME}/x").unwrap(), "/home/me/x");
        assert_eq!(expand("a${KEY}b${KEY}").unwrap(), "ask-123bsk-123");
        assert_eq!(expand("no refs").unwrap(), "no refs");
        assert_eq!(expand("cost $5 and $$").unwrap(), "cost $5 and $");
    }

    #[test]
    fn refuses_unset_and_malformed_references() {
        let err = expand("k", "${MISSING}", lookup).unwrap_err();
        assert!(err.to_string().contains("MISSING"), "{err}");
        assert!(expand("k", "${KEY", lookup).is_err());
        assert!(expand("k", "${1BAD}", lookup).is_err());
    }

    #[test]
    fn reference_errors_name_the_key_never_the_value() {
        for value in ["sk-SECRET123${KEY", "sk-SECRET123${1x}", "${sk-SECRET123}"] {
            let err = expand("services.openai.api_key", value, lookup)
                .unwrap_err()
                .to_string();
            assert!(!err.contains("SECRET123"), "{err}");
            assert!(err.contains("services.openai.api_key"), "{err}");
        }
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
}
