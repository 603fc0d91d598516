//! The client side of `cubbi serve`: the backend over HTTP (and, beside it, the remotes the
//! user configured and their tokens).

pub mod client;
mod data;
pub mod keyring;
pub mod login;
mod mcp;
pub mod projects;
pub mod remotes;
pub mod runs;
pub mod tunnel;

use std::path::PathBuf;

/// The environment variable naming a PEM file of extra CA certificates to trust for services,
/// beside the system's roots: for a service whose certificate comes from a private CA.
pub const CA_CERT_ENV: &str = "CUBBI_CA_CERT";

#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    #[error("cannot read {path} (from {CA_CERT_ENV}): {source}")]
    ReadCa {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} (from {CA_CERT_ENV}) holds no usable PEM certificate: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("cannot set up HTTP: {0}")]
    Build(String),
}

/// Builds `builder` after adding the certificates in `$CUBBI_CA_CERT` (when set) as extra
/// roots. Every client that talks to a service goes through here, so `cubbi -r NAME auth` and
/// the commands after it trust the same CAs.
pub fn http_client(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, HttpClientError> {
    let ca = std::env::var_os(CA_CERT_ENV)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from);
    http_client_with_ca(builder, ca.as_deref())
}

/// [`http_client`] with the extra CA file given rather than read from the environment.
pub fn http_client_with_ca(
    builder: reqwest::ClientBuilder,
    ca: Option<&std::path::Path>,
) -> Result<reqwest::Client, HttpClientError> {
    let mut builder = builder;
    if let Some(path) = ca {
        let path = path.to_path_buf();
        let pem = std::fs::read(&path).map_err(|source| HttpClientError::ReadCa {
            path: path.clone(),
            source,
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| HttpClientError::BadCa {
                path: path.clone(),
                reason: err.to_string(),
            })?;
        // An empty bundle would silently trust nothing extra; say so instead.
        if certs.is_empty() {
            return Err(HttpClientError::BadCa {
                path,
                reason: "no -----BEGIN CERTIFICATE----- block in it".into(),
            });
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|err| HttpClientError::Build(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let err =
            http_client_with_ca(reqwest::Client::builder(), Some(&missing)).expect_err("missing");
        assert!(err.to_string().contains("missing.pem"), "{err}");
        assert!(err.to_string().contains(CA_CERT_ENV), "{err}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").expect("write");
        let err =
            http_client_with_ca(reqwest::Client::builder(), Some(&garbage)).expect_err("garbage");
        assert!(matches!(err, HttpClientError::BadCa { .. }), "{err:?}");
        assert!(err.to_string().contains("garbage.pem"), "{err}");
    }

    #[test]
    fn no_ca_file_builds_a_client() {
        http_client_with_ca(reqwest::Client::builder(), None).expect("a client");
    }
}
