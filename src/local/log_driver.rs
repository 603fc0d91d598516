//! Sessions' console output sent to Fluentd (the Forward protocol) with Docker's own `fluentd`
//! log driver: the user config's `logging.fluentd` locally, a service's `[[logging.providers]]`
//! of `type = "fluentd"`. Docker keeps a local copy too (dual logging), so `session logs` works
//! as before; the driver runs async, so a receiver that is down never holds up a session.

use std::collections::HashMap;

use bollard::models::HostConfigLogConfig;

/// Where a Fluentd receiver listens: `tcp://HOST:PORT` (or `HOST:PORT`), parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FluentdAddress {
    host: String,
    port: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{given}` is not a Fluentd address: {why} (expected tcp://HOST:PORT, e.g. tcp://logs.example.com:24224)"
)]
pub struct FluentdAddressError {
    given: String,
    why: &'static str,
}

impl std::str::FromStr for FluentdAddress {
    type Err = FluentdAddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let refuse = |why| FluentdAddressError {
            given: text.chars().take(200).collect(),
            why,
        };
        let rest = match text.split_once("://") {
            Some(("tcp", rest)) => rest,
            Some(_) => return Err(refuse("only tcp:// is supported")),
            None => text,
        };
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| refuse("no port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port
            .parse()
            .ok()
            .filter(|port| *port > 0)
            .ok_or_else(|| refuse("the port is not 1 to 65535"))?;
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
        if !host_ok {
            return Err(refuse("the host is not a name or an IP address"));
        }
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for FluentdAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "tcp://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "tcp://{}:{}", self.host, self.port)
        }
    }
}

impl<'de> serde::Deserialize<'de> for FluentdAddress {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl FluentdAddress {
    /// `host:port`, for a TCP connect (doctor's check).
    pub fn socket_address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The container's log configuration: every line tagged `cubbi.OWNER.SESSION`, sent
    /// without blocking the session, retried in the background while the receiver is away.
    pub fn log_config(&self, owner: &str, session: &str) -> HostConfigLogConfig {
        let tag = format!("cubbi.{}.{}", tag_part(owner), tag_part(session));
        HostConfigLogConfig {
            typ: Some("fluentd".into()),
            config: Some(HashMap::from([
                ("fluentd-address".into(), self.to_string()),
                ("tag".into(), tag),
                ("fluentd-async".into(), "true".into()),
                ("mode".into(), "non-blocking".into()),
            ])),
        }
    }
}

/// A tag part: Fluentd routes on `.`-separated words, so an owner such as `john.doe` must not
/// add one; Docker's tag is a Go template, so no `{`.
fn tag_part(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_tcp_host_and_port() {
        let address: FluentdAddress = "tcp://logs.example.com:24224".parse().unwrap();
        assert_eq!(address.to_string(), "tcp://logs.example.com:24224");
        assert_eq!(
            "127.0.0.1:24224"
                .parse::<FluentdAddress>()
                .unwrap()
                .socket_address(),
            "127.0.0.1:24224"
        );
        assert_eq!(
            "tcp://[::1]:24224"
                .parse::<FluentdAddress>()
                .unwrap()
                .to_string(),
            "tcp://[::1]:24224"
        );
        for bad in [
            "udp://h:1",
            "tcp://h",
            "tcp://h:0",
            "tcp://h:99999",
            "tcp://:24224",
            "tcp://a b:1",
            "tcp://h{{.ID}}:1",
        ] {
            let err = bad.parse::<FluentdAddress>().unwrap_err();
            assert!(
                err.to_string().contains("is not a Fluentd address"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn tags_name_owner_and_session_in_two_words() {
        let address: FluentdAddress = "tcp://h:24224".parse().unwrap();
        let config = address
            .log_config("john.doe", "web-{{.ID}}")
            .config
            .unwrap();
        assert_eq!(config["tag"], "cubbi.john_doe.web-___ID__");
        assert_eq!(config["fluentd-async"], "true");
        assert_eq!(config["fluentd-address"], "tcp://h:24224");
    }
}
