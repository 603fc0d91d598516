//! Reads a git host's SSH host key once, at `project add`, for its owner to confirm: a key
//! exchange up to the server's key, then the connection is dropped (nothing is sent in
//! the clear, no login is tried).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::PublicKey;

use super::ProjectError;
use super::known_hosts::HostKey;

/// How long a scan may take.
pub const SCAN_TIMEOUT: Duration = Duration::from_secs(10);

struct Capture {
    key: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for Capture {
    type Error = russh::Error;

    /// Records the offered key and refuses it, which ends the connection at once.
    async fn check_server_key(
        &mut self,
        offered: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        if let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = offered
            && let Ok(mut slot) = self.key.lock()
        {
            *slot = Some(key.clone());
        }
        Ok(false)
    }
}

/// The host key `host:port` presents, within `timeout`.
pub async fn scan(host: &str, port: u16, timeout: Duration) -> Result<HostKey, ProjectError> {
    let address = format!("{host}:{port}");
    let failed = |reason: String| ProjectError::HostScan {
        address: address.clone(),
        reason,
    };
    let slot = Arc::new(Mutex::new(None));
    let handler = Capture { key: slot.clone() };
    let config = Arc::new(client::Config {
        inactivity_timeout: Some(timeout),
        ..Default::default()
    });
    let outcome =
        tokio::time::timeout(timeout, client::connect(config, (host, port), handler)).await;
    let captured = slot.lock().ok().and_then(|mut slot| slot.take());
    match (captured, outcome) {
        (Some(key), _) => Ok(HostKey::from_public(&key)),
        (None, Err(_)) => Err(failed(format!(
            "no SSH key exchange within {} s",
            timeout.as_secs()
        ))),
        (None, Ok(Err(russh::Error::UnknownKey))) => Err(failed(
            "the server offered a host certificate, which is not supported; give the key with \
             --host-key"
                .into(),
        )),
        (None, Ok(Err(err))) => Err(failed(err.to_string())),
        (None, Ok(Ok(_))) => Err(failed("the server offered no host key".into())),
    }
}
