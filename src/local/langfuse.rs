//! Agents' traces to Langfuse, which takes OpenTelemetry (OTLP over HTTP) at
//! `<url>/api/public/otel` with basic auth from a project's public and secret key. The user
//! config's `services.langfuse.*` and a service's `[[logging.providers]]` of
//! `type = "langfuse"` parse once into a [`LangfuseExport`]; each session then gets the
//! OpenTelemetry variables of the tools that export it (Claude Code today) in its environment
//! *file* (`/etc/cubbi/env`, 0640 root:agent, read by pam_env at login), never in container
//! env, so `docker inspect` shows no key. The session, owner and image go in as resource
//! attributes, so every trace names where it came from. A Langfuse that is down costs the
//! agent its telemetry, never its boot: nothing waits for it.

use std::collections::BTreeMap;

use base64::Engine;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LangfuseError {
    #[error("the Langfuse URL `{0}` is not an http:// or https:// URL with a host")]
    Url(String),
    #[error(
        "the Langfuse {0} is missing, or holds a space, `#`, `,` or a control character; give \
         the key as Langfuse shows it"
    )]
    Key(&'static str),
}

/// Where and as whom sessions' tools export their telemetry.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "LangfuseKeys")]
pub struct LangfuseExport {
    /// `<url>/api/public/otel`, the OTLP/HTTP base (the exporters add `/v1/traces`, ...).
    endpoint: String,
    /// `base64(public:secret)`.
    basic: String,
}

/// A service's `[[logging.providers]]` of `type = "langfuse"`, as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LangfuseKeys {
    url: String,
    public_key: String,
    secret_key: String,
}

impl TryFrom<LangfuseKeys> for LangfuseExport {
    type Error = LangfuseError;

    fn try_from(keys: LangfuseKeys) -> Result<Self, Self::Error> {
        Self::new(&keys.url, &keys.public_key, &keys.secret_key)
    }
}

impl std::fmt::Debug for LangfuseExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LangfuseExport")
            .field("endpoint", &self.endpoint)
            .field("basic", &"<secret>")
            .finish()
    }
}

fn key_ok(key: &str) -> bool {
    // The value lands in a pam_env line and an OTLP header list: no `#` (a comment there),
    // no `,` (a header separator), nothing invisible.
    !key.is_empty()
        && key.len() <= 512
        && !key
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '#' || c == ',')
}

impl LangfuseExport {
    pub fn new(url: &str, public_key: &str, secret_key: &str) -> Result<Self, LangfuseError> {
        let shown: String = url.chars().filter(|c| !c.is_control()).take(200).collect();
        let parsed = reqwest::Url::parse(url).map_err(|_| LangfuseError::Url(shown.clone()))?;
        if !matches!(parsed.scheme(), "http" | "https")
            || parsed.host_str().is_none_or(str::is_empty)
            || !parsed.username().is_empty()
            || parsed.password().is_some()
            || parsed.query().is_some()
            || url
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '#')
        {
            return Err(LangfuseError::Url(shown));
        }
        if !key_ok(public_key) {
            return Err(LangfuseError::Key("public key"));
        }
        if !key_ok(secret_key) {
            return Err(LangfuseError::Key("secret key"));
        }
        Ok(Self {
            endpoint: format!("{}/api/public/otel", url.trim_end_matches('/')),
            basic: base64::engine::general_purpose::STANDARD
                .encode(format!("{public_key}:{secret_key}")),
        })
    }

    /// The OTLP/HTTP base URL the tools export to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `host:port` of the endpoint, for a reachability check.
    pub fn socket_address(&self) -> Option<(String, u16)> {
        let url = reqwest::Url::parse(&self.endpoint).ok()?;
        Some((url.host_str()?.to_string(), url.port_or_known_default()?))
    }

    /// The session environment that makes Claude Code export its events (logs) and traces
    /// to Langfuse, every record carrying the session, its owner and its image. Values are
    /// pam_env-safe (no `#`, one line): names are RFC 1123, the owner and image are escaped.
    pub fn session_env(&self, owner: &str, session: &str, image: &str) -> BTreeMap<String, String> {
        let attributes = [
            ("cubbi.session", session),
            ("cubbi.owner", owner),
            ("cubbi.image", image),
        ]
        .iter()
        .map(|(key, value)| format!("{key}={}", attribute_value(value)))
        .collect::<Vec<_>>()
        .join(",");
        BTreeMap::from([
            ("CLAUDE_CODE_ENABLE_TELEMETRY".into(), "1".into()),
            ("CLAUDE_CODE_ENHANCED_TELEMETRY_BETA".into(), "1".into()),
            ("OTEL_TRACES_EXPORTER".into(), "otlp".into()),
            ("OTEL_LOGS_EXPORTER".into(), "otlp".into()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/json".into()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), self.endpoint.clone()),
            (
                "OTEL_EXPORTER_OTLP_HEADERS".into(),
                format!("Authorization=Basic {}", self.basic),
            ),
            ("OTEL_RESOURCE_ATTRIBUTES".into(), attributes),
        ])
    }
}

/// A resource attribute value as `OTEL_RESOURCE_ATTRIBUTES` takes it (W3C baggage: `,`, `=`
/// and anything outside printable ASCII percent-encoded), and with `#` encoded for pam_env.
fn attribute_value(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~:/@".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_export_names_the_otel_endpoint_and_basic_auth() {
        let export = LangfuseExport::new("https://lf.example.com/", "pk-lf-1", "sk-lf-2").unwrap();
        assert_eq!(export.endpoint(), "https://lf.example.com/api/public/otel");
        let env = export.session_env("alice", "s1", "cubbi-claude-code");
        let expected = base64::engine::general_purpose::STANDARD.encode("pk-lf-1:sk-lf-2");
        assert_eq!(
            env["OTEL_EXPORTER_OTLP_HEADERS"],
            format!("Authorization=Basic {expected}")
        );
        assert_eq!(
            env["OTEL_RESOURCE_ATTRIBUTES"],
            "cubbi.session=s1,cubbi.owner=alice,cubbi.image=cubbi-claude-code"
        );
        for (key, value) in &env {
            crate::config::env_file::validate(key, value).unwrap();
        }
        assert!(!format!("{export:?}").contains(&expected));
        assert_eq!(
            export.socket_address(),
            Some(("lf.example.com".into(), 443))
        );
    }

    #[test]
    fn hostile_values_are_escaped_or_refused() {
        let export = LangfuseExport::new("http://10.0.0.1:3000", "pk", "sk").unwrap();
        let env = export.session_env("a,b=c#d", "s", "img");
        assert!(env["OTEL_RESOURCE_ATTRIBUTES"].contains("cubbi.owner=a%2Cb%3Dc%23d"));
        for (url, public, secret) in [
            ("ftp://x", "pk", "sk"),
            ("not a url", "pk", "sk"),
            ("https://u:p@x", "pk", "sk"),
            ("https://x", "", "sk"),
            ("https://x", "pk", "s k"),
            ("https://x", "pk", "s#k"),
            ("https://x", "pk\n", "sk"),
        ] {
            assert!(
                LangfuseExport::new(url, public, secret).is_err(),
                "{url} {public} {secret}"
            );
        }
    }
}
