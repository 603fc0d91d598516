//! The keys `cubbi config get/set/unset` accept: their dotted paths, value kinds and help.

use super::{ConfigError, TableFormat};

/// What a key holds, which decides how a command-line value is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Bool,
    Port,
    PositiveNumber,
    PositiveInteger,
    NetworkList,
    NetworkName,
    Url,
    PathList,
    /// One entry a line (known_hosts lines hold commas and spaces).
    LineList,
    /// Names of registered MCP servers, comma-separated.
    McpList,
    OneOf(&'static [&'static str]),
    /// Comma-separated egress rules (`NAME`, `=NAME`).
    DomainList,
}

/// One settable key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// Dotted path, e.g. `services.openai.api_key`.
    pub path: String,
    pub kind: Kind,
    pub help: &'static str,
}

impl KeySpec {
    /// Secrets are masked whenever a value is shown.
    pub fn is_secret(&self) -> bool {
        is_secret_key(&self.path)
    }
}

/// Keys whose values must never be printed.
pub fn is_secret_key(path: &str) -> bool {
    let leaf = path.rsplit('.').next().unwrap_or(path);
    leaf.ends_with("api_key") || leaf.ends_with("secret_key") || leaf.ends_with("token")
}

const SERVICES: &[&str] = &["anthropic", "openai", "openrouter", "google", "langfuse"];

const STATIC_KEYS: &[(&str, Kind, &str)] = &[
    ("defaults.image", Kind::Text, "image a new session boots"),
    ("defaults.connect", Kind::Bool, "connect right after create"),
    (
        "defaults.mount_local",
        Kind::Bool,
        "mount the current directory as workspace",
    ),
    (
        "defaults.networks",
        Kind::NetworkList,
        "extra networks every session joins",
    ),
    (
        "defaults.memory",
        Kind::Text,
        "memory limit, e.g. 4g (default: half the host's)",
    ),
    (
        "defaults.cpus",
        Kind::PositiveNumber,
        "CPU limit (default: half the host's)",
    ),
    (
        "defaults.pids_limit",
        Kind::PositiveInteger,
        "most processes a session may run (default 4096)",
    ),
    ("defaults.runtime", Kind::Text, "OCI runtime for sessions"),
    (
        "defaults.mcp",
        Kind::McpList,
        "registered MCP servers (cubbi mcp add) every local session gets",
    ),
    (
        "defaults.allow_unsafe_runc",
        Kind::Bool,
        "allow runc without Sysbox (no isolation)",
    ),
    (
        "defaults.egress",
        Kind::OneOf(&["allow-list", "open", "none"]),
        "what sessions reach: allow-list, open or none",
    ),
    (
        "defaults.allowed_domains",
        Kind::DomainList,
        "names sessions may reach (NAME covers subdomains, =NAME alone)",
    ),
    (
        "defaults.pool_refill",
        Kind::OneOf(&["background", "manual"]),
        "after a create takes a pool member: refill in the background, or manual (cubbi pool fill)",
    ),
    (
        "services.anthropic.api_key",
        Kind::Text,
        "sets ANTHROPIC_API_KEY in sessions",
    ),
    (
        "services.openai.api_key",
        Kind::Text,
        "sets OPENAI_API_KEY in sessions",
    ),
    (
        "services.openrouter.api_key",
        Kind::Text,
        "sets OPENROUTER_API_KEY in sessions",
    ),
    (
        "services.google.api_key",
        Kind::Text,
        "sets GEMINI_API_KEY and GOOGLE_API_KEY",
    ),
    (
        "services.langfuse.url",
        Kind::Url,
        "sets LANGFUSE_URL; with both keys, agents export OpenTelemetry there",
    ),
    (
        "services.langfuse.public_key",
        Kind::Text,
        "sets LANGFUSE_INIT_PROJECT_PUBLIC_KEY",
    ),
    (
        "services.langfuse.secret_key",
        Kind::Text,
        "sets LANGFUSE_INIT_PROJECT_SECRET_KEY",
    ),
    (
        "docker.endpoint",
        Kind::Text,
        "Docker socket (default: the cubbi endpoint)",
    ),
    (
        "docker.network",
        Kind::NetworkName,
        "one network every session joins instead of its owner's own",
    ),
    ("ports.start", Kind::Port, "first SSH port sessions may get"),
    ("ports.end", Kind::Port, "last SSH port sessions may get"),
    (
        "remote.default",
        Kind::Text,
        "remote endpoint used when -r is not given",
    ),
    (
        "projects.known_hosts",
        Kind::LineList,
        "extra known_hosts lines for git hosts, one a line",
    ),
    (
        "logging.fluentd",
        Kind::Text,
        "Fluentd receiver sessions log to as well, tcp://HOST:PORT",
    ),
    ("ui.colors", Kind::Bool, "colored output"),
    (
        "ui.table_format",
        Kind::OneOf(TableFormat::NAMES),
        "plain, ascii, utf8 or markdown",
    ),
];

/// Every fixed key, in display order.
pub fn static_keys() -> impl Iterator<Item = KeySpec> {
    STATIC_KEYS.iter().map(|(path, kind, help)| KeySpec {
        path: (*path).to_string(),
        kind: *kind,
        help,
    })
}

/// The key for a remote endpoint's URL, `remote.endpoints.NAME.url`.
pub fn remote_endpoint_key(name: &str) -> KeySpec {
    KeySpec {
        path: format!("remote.endpoints.{name}.url"),
        kind: Kind::Url,
        help: "URL of a cubbi service",
    }
}

/// The key for an image's pool size, `pool.IMAGE`.
pub fn pool_key(image: &str) -> KeySpec {
    KeySpec {
        path: format!("pool.{image}"),
        kind: Kind::PositiveInteger,
        help: "booted members kept ready for this image (at most 64)",
    }
}

/// Resolves what a user typed (`openai.api_key` is short for `services.openai.api_key`).
pub fn lookup(key: &str) -> Result<KeySpec, ConfigError> {
    let unknown = || ConfigError::UnknownKey {
        key: key.to_string(),
    };
    let full = match key.split_once('.') {
        Some((first, _)) if SERVICES.contains(&first) => format!("services.{key}"),
        _ => key.to_string(),
    };
    if let Some(spec) = static_keys().find(|spec| spec.path == full) {
        return Ok(spec);
    }
    if static_keys().any(|spec| spec.path.starts_with(&format!("{full}."))) {
        return Err(ConfigError::NotALeaf { key: full });
    }
    let parts: Vec<&str> = full.split('.').collect();
    match parts.as_slice() {
        ["remote", "endpoints", name, "url"] => {
            validate_remote_name(name)?;
            Ok(remote_endpoint_key(name))
        }
        ["pool", image] if crate::local::pool::targets::valid_image_name(image) => {
            Ok(pool_key(image))
        }
        ["pool", ..] => Err(ConfigError::InvalidValue {
            key: full.clone(),
            reason: "pool sizes are set as pool.IMAGE, with a cubbi image name".into(),
        }),
        ["remote", "endpoints", ..] => Err(ConfigError::InvalidValue {
            key: full.clone(),
            reason: "remote endpoints are set as remote.endpoints.NAME.url".into(),
        }),
        _ => Err(unknown()),
    }
}

/// Turns a command-line string into the TOML value the key holds.
pub fn parse_value(spec: &KeySpec, raw: &str) -> Result<toml_edit::Value, ConfigError> {
    let invalid = |reason: String| ConfigError::InvalidValue {
        key: spec.path.clone(),
        reason,
    };
    Ok(match spec.kind {
        Kind::Text => {
            if raw.contains('\n') || raw.contains('\0') {
                return Err(invalid("must be one line".into()));
            }
            if raw.contains("${") {
                super::env::expand(&spec.path, raw, |_| Some(String::new()))?;
            }
            raw.into()
        }
        Kind::Bool => match raw.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => true.into(),
            "false" | "no" | "off" | "0" => false.into(),
            _ => return Err(invalid(format!("`{raw}` is not true or false"))),
        },
        Kind::Port => match raw.parse::<u16>() {
            Ok(port) if port > 0 => i64::from(port).into(),
            _ => return Err(invalid(format!("`{raw}` is not a port number (1-65535)"))),
        },
        Kind::PositiveNumber => match raw.parse::<f64>() {
            Ok(n) if n > 0.0 && n.is_finite() => n.into(),
            _ => return Err(invalid(format!("`{raw}` is not a positive number"))),
        },
        Kind::PositiveInteger => match raw.parse::<i64>() {
            Ok(n) if n > 0 => n.into(),
            _ => return Err(invalid(format!("`{raw}` is not a positive whole number"))),
        },
        Kind::NetworkList => {
            let mut array = toml_edit::Array::new();
            for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                validate_network_name(name)?;
                array.push(name);
            }
            array.into()
        }
        Kind::PathList => {
            let mut array = toml_edit::Array::new();
            for path in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                validate_absolute_path(&spec.path, path)?;
                array.push(path);
            }
            array.into()
        }
        Kind::LineList => {
            let mut array = toml_edit::Array::new();
            for line in raw.lines().map(str::trim).filter(|s| !s.is_empty()) {
                if line.contains('\0') {
                    return Err(invalid("must not hold NUL characters".into()));
                }
                array.push(line);
            }
            array.into()
        }
        Kind::McpList => {
            let mut array = toml_edit::Array::new();
            for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                crate::mcp::check_name(name).map_err(|err| invalid(err.to_string()))?;
                array.push(name);
            }
            array.into()
        }
        Kind::DomainList => {
            let names: Vec<&str> = raw
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            let rules = crate::egress::policy::parse_rules(&names)
                .map_err(|err| invalid(err.to_string()))?;
            let mut array = toml_edit::Array::new();
            for rule in rules {
                array.push(rule.to_string());
            }
            array.into()
        }
        Kind::NetworkName => {
            validate_network_name(raw)?;
            raw.into()
        }
        Kind::Url => {
            validate_url(&spec.path, raw)?;
            raw.into()
        }
        Kind::OneOf(choices) => {
            if !choices.contains(&raw) {
                return Err(invalid(format!(
                    "`{raw}` is not one of {}",
                    choices.join(", ")
                )));
            }
            raw.into()
        }
    })
}

/// Docker's rule for network names, `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, with a sane length cap.
pub fn validate_network_name(name: &str) -> Result<(), ConfigError> {
    let refuse = |reason: &str| ConfigError::InvalidNetworkName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return Err(refuse("it is empty")),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err(refuse("it must start with a letter or digit"));
        }
        Some(_) => {}
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(refuse("only letters, digits, `_`, `.` and `-` are allowed"));
    }
    if name.len() > 128 {
        return Err(refuse("it is longer than 128 characters"));
    }
    Ok(())
}

/// The name `-r` takes for the local endpoint, so no remote may be called that.
pub const LOCAL_REMOTE_NAME: &str = "local";

/// Names of remote endpoints: short identifiers usable with `-r NAME`.
pub fn validate_remote_name(name: &str) -> Result<(), ConfigError> {
    if name == LOCAL_REMOTE_NAME {
        return Err(ConfigError::InvalidValue {
            key: format!("remote.endpoints.{name}"),
            reason: format!(
                "`{LOCAL_REMOTE_NAME}` is reserved for the local endpoint; pick another remote name"
            ),
        });
    }
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::InvalidValue {
            key: format!("remote.endpoints.{name}"),
            reason: "a remote name uses only letters, digits, `-` and `_` (at most 63)".into(),
        })
    }
}

pub fn validate_absolute_path(key: &str, path: &str) -> Result<(), ConfigError> {
    if path.starts_with('/') && !path.contains('\n') {
        Ok(())
    } else {
        Err(ConfigError::InvalidValue {
            key: key.to_string(),
            reason: format!("`{path}` is not an absolute path"),
        })
    }
}

pub fn validate_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !url.chars().any(char::is_whitespace) => Ok(()),
        _ => Err(ConfigError::InvalidValue {
            key: key.to_string(),
            reason: format!("`{url}` is not an http:// or https:// URL"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorthand_expands_to_services() {
        assert_eq!(
            lookup("openai.api_key").unwrap().path,
            "services.openai.api_key"
        );
        assert_eq!(
            lookup("langfuse.url").unwrap().path,
            "services.langfuse.url"
        );
        assert_eq!(lookup("defaults.image").unwrap().path, "defaults.image");
    }

    #[test]
    fn unknown_and_section_keys_are_refused() {
        assert!(matches!(
            lookup("no.such.key"),
            Err(ConfigError::UnknownKey { .. })
        ));
        assert!(matches!(
            lookup("defaults"),
            Err(ConfigError::NotALeaf { .. })
        ));
        assert!(matches!(
            lookup("services.openai"),
            Err(ConfigError::NotALeaf { .. })
        ));
        assert!(lookup("remote.endpoints.bad name.url").is_err());
        assert!(lookup("remote.endpoints.local.url").is_err());
        assert_eq!(
            lookup("remote.endpoints.team.url").unwrap().path,
            "remote.endpoints.team.url"
        );
        assert_eq!(lookup("pool.claude-code").unwrap().path, "pool.claude-code");
        assert!(lookup("pool.Bad/Image").is_err());
        assert!(lookup("pool.base.extra").is_err());
    }

    #[test]
    fn secrets_are_recognised() {
        assert!(is_secret_key("services.openai.api_key"));
        assert!(is_secret_key("services.langfuse.secret_key"));
        assert!(is_secret_key("remote.endpoints.x.token"));
        assert!(!is_secret_key("services.langfuse.public_key"));
        assert!(!is_secret_key("defaults.image"));
    }

    #[test]
    fn values_are_parsed_by_kind() {
        let port = lookup("ports.start").unwrap();
        assert_eq!(parse_value(&port, "2400").unwrap().as_integer(), Some(2400));
        assert!(parse_value(&port, "0").is_err());
        assert!(parse_value(&port, "70000").is_err());
        let flag = lookup("defaults.connect").unwrap();
        assert_eq!(parse_value(&flag, "no").unwrap().as_bool(), Some(false));
        assert!(parse_value(&flag, "maybe").is_err());
        let nets = lookup("defaults.networks").unwrap();
        assert_eq!(
            parse_value(&nets, "a, b")
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert!(parse_value(&nets, "a,-b").is_err());
        let format = lookup("ui.table_format").unwrap();
        assert!(parse_value(&format, "utf8").is_ok());
        assert!(parse_value(&format, "fancy").is_err());
        let pids = lookup("defaults.pids_limit").unwrap();
        assert_eq!(parse_value(&pids, "512").unwrap().as_integer(), Some(512));
        assert!(parse_value(&pids, "1.5").is_err());
        assert!(parse_value(&pids, "0").is_err());
        let text = lookup("defaults.image").unwrap();
        assert!(parse_value(&text, "a\nb").is_err());
        assert!(parse_value(&text, "${UNCLOSED").is_err());
    }

    #[test]
    fn network_names_follow_docker() {
        for good in ["cubbi-network", "a", "n1.x_y-z"] {
            assert!(validate_network_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "has space", "a/b", "ü"] {
            assert!(validate_network_name(bad).is_err(), "{bad}");
        }
    }
}
